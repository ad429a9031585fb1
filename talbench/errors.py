"""The error types a user sees, and the one place where errors become exit codes.

Every message names the file, the item inside it (a video id, a dataset name, a key)
and the field, so a user can go straight to the offending line.

Exit codes: 0 done; 2 bad input (arguments, params, configs, data, checkpoints: fix the input);
3 the system refused (no permission, read-only or full disk: fix the machine); 130 interrupted.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path

BAD_INPUT = 2
SYSTEM = 3
INTERRUPTED = 130

_ADVICE = {
    errno.ENOSPC: "free some space and run again",
    errno.EDQUOT: "free some space (disk quota) and run again",
    errno.EFBIG: "the file is larger than this system allows",
    errno.EACCES: "check the permissions of the folder",
    errno.EPERM: "check the permissions of the folder",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.ENAMETOOLONG: "choose a shorter path",
}


class InputError(Exception):
    """Raised for malformed input files or arguments; the CLI prints it as one line and exits 2."""

    def __init__(self, path: str | Path, item: str, field: str, problem: str) -> None:
        self.path = _one_line(str(path))
        self.item = _one_line(str(item))
        self.field = _one_line(str(field))
        self.problem = _one_line(str(problem))
        super().__init__(f"{self.path}: {self.item}: field '{self.field}': {self.problem}")


def _one_line(text: str) -> str:
    """The promise is one line: a value or a library message spanning several is joined."""
    return " ".join(text.split("\n")) if "\n" in text else text


class OutputError(Exception):
    """The system refused to write an output (permissions, read-only or full disk): exit 3."""

    def __init__(self, path: str | Path, cause: OSError) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: -: field 'output': cannot write ({cause.strerror or cause}){_advice(cause)}")


def _advice(exc: OSError) -> str:
    """'; what to do', where we know what to do about this error."""
    advice = _ADVICE.get(exc.errno or 0)
    return f"; {advice}" if advice else ""


def _system_line(exc: OSError) -> str:
    path = exc.filename if exc.filename is not None else "-"
    return f"{path}: -: field '-': {exc.strerror or exc}{_advice(exc)}"


def exit_status(body: Callable[[], object]) -> int:
    """Run a command's body and map what a user can act on to one `error: ...` line and an exit code.

    Anything else is a bug in talbench and keeps its traceback (exit 1).
    """
    try:
        body()
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return SYSTEM
    except OSError as exc:
        if exc.errno not in _ADVICE:
            raise
        print(f"error: {_system_line(exc)}", file=sys.stderr)
        return SYSTEM
    except KeyboardInterrupt:
        print("error: interrupted; outputs are as they were before this run", file=sys.stderr)
        return INTERRUPTED
    return 0
