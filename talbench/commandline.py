"""One command-line style for `talbench` and the pipeline's stage commands (components/*.py).

Both lay out their help alike (usage, what the command does, the files it writes, every option with
its help and default), answer `--version` alike, and report a usage mistake as one `error: ...`
line with exit status 2, as every other bad input (talbench.errors). Light on purpose: a stage
parses its arguments before any heavy import (torch, mlflow).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any, NoReturn

from talbench.errors import BAD_INPUT

# the options both CLIs share, described once
PARAMS_HELP = "params.yaml holding the dataset registry and the experiments (default: ./params.yaml)."
OUTPUTS_HELP = "Folder of the experiments' outputs: one subfolder per experiment."
DATA_ROOT_HELP = "Data folder (default: data.root of params.yaml)."
VERSION_HELP = "Show the version (and git commit) and exit."
HELP_HELP = "Show this message and exit."

_METAVARS = {Path: "<path>", int: "<int>", float: "<float>", str: "<str>"}


def version_line() -> str:
    """`talbench 0.1.0 (git 2390c6d)`: the installed package's version, and the commit of the checkout
    it runs from (`-dirty` with uncommitted changes), which is what a result was made with."""
    from talbench import __version__

    commit = _git_commit(Path(__file__).resolve().parents[1])
    return f"talbench {__version__}" + (f" (git {commit})" if commit else "")


def _git_commit(root: Path) -> str | None:
    if not (root / ".git").exists():  # an installed copy, not a checkout
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=10"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):  # no git on this machine
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def usage_error(command: str, message: str) -> str:
    """The one line both CLIs print for a mistake in the command line itself."""
    return f"error: {command}: {message.strip().rstrip('.')}; see '{command} --help'"


class _Layout(argparse.HelpFormatter):
    """argparse's help in `talbench`'s layout: `Usage:`, `<type>` placeholders, `[default: x]`."""

    def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, "Usage: ")

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            text += f"  [default: {action.default}]"
        return text


class _Version(argparse.Action):
    """--version, resolved only when asked (it runs git)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        print(version_line())
        parser.exit()


class StageParser(argparse.ArgumentParser):
    """The argument parser of a pipeline stage, `components/<stage>.py`.

    `writes` says which files the stage writes; it ends the help, as the `Writes:` paragraph of
    the `talbench` commands. Options taking a value show their type as `<path>`, `<int>` ...
    """

    def __init__(self, stage: str, description: str, writes: str) -> None:
        super().__init__(prog=f"python components/{stage}.py", description=description, epilog=f"Writes: {writes}",
                         formatter_class=_Layout, add_help=False)
        self._positionals.title, self._optionals.title = "Arguments", "Options"
        self.add_argument("--help", action="help", help=HELP_HELP)
        self.add_argument("--version", action=_Version, nargs=0, help=VERSION_HELP)

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        takes_value = kwargs.get("action") in (None, "store") and names and str(names[0]).startswith("-")
        if takes_value and "metavar" not in kwargs:
            kwargs["metavar"] = _METAVARS[kwargs.get("type", str)]
        return super().add_argument(*names, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(usage_error(self.prog, message), file=sys.stderr)
        sys.exit(BAD_INPUT)
