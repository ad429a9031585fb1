"""The one error type for bad user input.

Every message names the file, the item inside it (a video id, a dataset name, a key)
and the field, so a user can go straight to the offending line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


class InputError(Exception):
    """Raised for malformed input files or arguments; the CLI prints it as one line and exits 2."""

    def __init__(self, path: str | Path, item: str, field: str, problem: str) -> None:
        self.path = str(path)
        self.item = item
        self.field = field
        self.problem = problem
        super().__init__(f"{self.path}: {item}: field '{field}': {problem}")


def exit_status(body: Callable[[], object]) -> int:
    """Run a command's body: 0, or for bad input one `error: ...` line on stderr and 2."""
    try:
        body()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
