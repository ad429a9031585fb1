#!/opt/venv/bin/python
"""The talbench image's entrypoint (installed as /usr/local/bin/talbench-entrypoint).

    IMAGE stage NAME         run stage NAME (e.g. train@thumos14-i3d) of the project in the working
                             folder: its command from the stage graph of ./dvc.yaml and ./params.yaml
    IMAGE dvc-stage NAME     the same with the data from the DVC remote (S3) instead of a mount, in a
                             checkout of the project: pull the outputs of the stages NAME reads,
                             `dvc repro --single-item NAME` (it records dvc.lock), push its outputs
    IMAGE COMMAND [ARG ...]  run COMMAND as given, e.g. `python components/train.py thumos14-i3d` or
                             `python -m talbench.runners stage WORKSPACE NAME` (Airflow's runners)
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

USAGE = __doc__.split("\n\n", 1)[1].rstrip()


def find_stage(name: str, folder: Path) -> tuple[Any, list[Any]]:
    """Stage `name` of `folder`'s stage graph, and the graph."""
    from talbench.errors import InputError
    from talbench.io import read_yaml_mapping
    from talbench.pipeline import stage_graph

    graph = stage_graph(read_yaml_mapping(folder / "params.yaml"), folder / "dvc.yaml")
    for stage in graph:
        if stage.name == name:
            return stage, graph
    names = ", ".join(stage.name for stage in graph[:6])
    raise InputError(folder / "dvc.yaml", name, "stage", f"no such stage; the graph has {len(graph)}, e.g. {names}")


def stage_command(name: str, folder: Path) -> list[str]:
    """The command of stage `name` in `folder`'s stage graph, as the runners run it."""
    from talbench.orchestration import stage_argv

    return stage_argv(find_stage(name, folder)[0])


def dvc_commands(name: str, folder: Path) -> list[list[str]]:
    """DVC's commands that run stage `name` with its inputs from the remote and its outputs sent there."""
    from talbench.pipeline import upstream

    stage, graph = find_stage(name, folder)
    inputs = [other.name for other in upstream(graph, stage)]
    return [*([["dvc", "pull", *inputs]] if inputs else []), ["dvc", "repro", "--single-item", name], ["dvc", "push", name]]


def run_dvc_stage(name: str) -> int:
    from talbench.errors import exit_status

    commands: list[list[str]] = []
    status = exit_status(lambda: commands.extend(dvc_commands(name, Path.cwd())))
    for command in commands if not status else []:
        print(f"$ {shlex.join(command)}", flush=True)
        if code := subprocess.run(command).returncode:
            print(f"error: talbench-entrypoint: {shlex.join(command)}: exit {code} (DVC's message is above)", file=sys.stderr)
            return code
    return status


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"Usage:\n{USAGE}", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in ("stage", "dvc-stage") and len(argv) != 2:
        print(f"error: talbench-entrypoint: `{argv[0]}` takes one stage name, got {len(argv) - 1}", file=sys.stderr)
        return 2
    if argv[0] == "dvc-stage":
        return run_dvc_stage(argv[1])
    if argv[0] == "stage":
        from talbench.errors import exit_status

        command: list[str] = []
        status = exit_status(lambda: command.extend(stage_command(argv[1], Path.cwd())))
        if status:
            return status
        print(f"$ {shlex.join(command)}", flush=True)
        argv = command
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"error: talbench-entrypoint: {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
