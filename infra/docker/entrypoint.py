#!/opt/venv/bin/python
"""The talbench image's entrypoint (installed as /usr/local/bin/talbench-entrypoint).

    IMAGE stage NAME         run stage NAME (e.g. train@thumos14-i3d) of the project in the working
                             folder: its command from the stage graph of ./dvc.yaml and ./params.yaml
    IMAGE COMMAND [ARG ...]  run COMMAND as given, e.g. `python components/train.py thumos14-i3d` or
                             `python -m talbench.runners stage WORKSPACE NAME` (Airflow's runners)
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

USAGE = __doc__.split("\n\n", 1)[1].rstrip()


def stage_command(name: str, folder: Path) -> list[str]:
    """The command of stage `name` in `folder`'s stage graph, as the runners run it."""
    from talbench.errors import InputError
    from talbench.io import read_yaml_mapping
    from talbench.orchestration import stage_argv
    from talbench.pipeline import stage_graph

    graph = stage_graph(read_yaml_mapping(folder / "params.yaml"), folder / "dvc.yaml")
    for stage in graph:
        if stage.name == name:
            return stage_argv(stage)
    names = ", ".join(stage.name for stage in graph[:6])
    raise InputError(folder / "dvc.yaml", name, "stage", f"no such stage; the graph has {len(graph)}, e.g. {names}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"Usage:\n{USAGE}", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "stage":
        if len(argv) != 2:
            print(f"error: talbench-entrypoint: `stage` takes one stage name, got {len(argv) - 1}", file=sys.stderr)
            return 2
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
