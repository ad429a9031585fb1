"""Atomic writes: a reader (or a later pipeline stage) never sees half a file, half a folder, or
half of a stage's outputs.

- `atomic_path`: one file or one folder, built under a temporary name and renamed into place.
- `staged_outputs`: all of a stage's outputs, built in a staging folder and committed together;
  a commit cut short by a kill is finished by the next `recover_outputs` (every stage calls it
  first), so the outputs on disk are always the earlier complete set or the new complete set.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from talbench.errors import InputError, OutputError

STAGING_PREFIX = ".staging-"
COMMIT_MARK = "COMMIT"  # written last into a staging folder: its outputs are complete


def check_output_file(path: str | Path, option: str = "out") -> Path:
    """Refuse, before any work, an output path that would replace a folder or a special file."""
    path = Path(path)
    if path.is_dir() or (path.exists() and not path.is_file()):
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise InputError(path, "-", option, f"{kind} is there: refusing to replace it; name a file")
    _check_parent_writable(path)
    return path


def _check_parent_writable(path: Path) -> None:
    parent = path.parent
    while not parent.exists():  # the nearest folder that exists is the one we must be able to write
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(path, "-", "path", f"{parent} is a file, not a folder")
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise OutputError(path, OSError(errno.EROFS, f"{parent} is on a read-only file system"))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(path, OSError(errno.EACCES, f"no permission to write in {parent}"))


def _is_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _check_kind(new: Path, target: Path) -> None:
    """A folder never replaces a file, nor a file a folder: that is a wrong path, refused."""
    if (target.exists() or target.is_symlink()) and _is_dir(new) != _is_dir(target):
        what = "a folder" if _is_dir(target) else "a file"
        raise InputError(target, "-", "path", f"{what} is there: refusing to replace it with {'a folder' if _is_dir(new) else 'a file'}")


def _replace(new: Path, target: Path, aside: Path, exchange: bool = True) -> None:
    """Put `new` at `target`; the folder it replaces ends up at `aside` for the caller to delete.

    With `exchange` a folder replaces a folder in one step where the OS allows it; without, the
    old one moves aside first, so that `new` still existing always means "not yet placed".
    """
    _check_kind(new, target)
    if not _is_dir(target):
        os.replace(new, target)
    elif exchange and _exchange(new, target):
        new.rename(aside)
    else:
        target.rename(aside)
        new.rename(target)


@contextlib.contextmanager
def _writing(work: Path, target: Path) -> Iterator[None]:
    """An OSError while the body writes into `work` (no file named, or one inside it) is an OutputError
    for `target`; errors about other files (an input the body reads) pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None or str(exc.filename).startswith(str(work)):
            raise OutputError(target, exc) from None
        raise


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `target`, on error it is removed.

    Works for files and folders alike: whatever the body creates at the yielded path is
    renamed into place in one step, so an earlier good `target` survives any failure.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target.parent, f".{target.name}.")
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
    except OSError as exc:
        raise OutputError(target, exc) from None
    tmp = work / "new"
    try:
        with _writing(work, target):
            yield tmp
        try:
            _replace(tmp, target, work / "old")
        except OSError as exc:
            raise OutputError(target, exc) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remove_stale_temporaries(folder: Path, prefix: str) -> None:
    """Remove `<prefix><pid>.*` work folders whose process is gone (a kill -9 leaves them behind)."""
    for work in folder.glob(f"{glob.escape(prefix)}*"):
        pid = work.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(work, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys off: the order is meaningful to readers)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# -- a stage's outputs, committed together ------------------------------------------------------


def staging_dir(folder: Path, stage: str) -> Path:
    return folder / f"{STAGING_PREFIX}{stage}"


@contextlib.contextmanager
def staged_outputs(folder: str | Path, stage: str) -> Iterator[Path]:
    """Yield an empty staging folder inside `folder`; what the body leaves there replaces, name by
    name, the entries of `folder` together when the body succeeds. On error nothing changes.
    """
    folder = Path(folder)
    recover_outputs(folder, stage)
    staging = staging_dir(folder, stage)
    try:
        (staging / "new").mkdir(parents=True)
    except OSError as exc:
        raise OutputError(folder, exc) from None
    try:
        with _writing(staging, folder):
            yield staging / "new"
        for name in os.listdir(staging / "new"):
            _check_kind(staging / "new" / name, folder / name)
        try:
            (staging / COMMIT_MARK).write_text("\n".join(sorted(os.listdir(staging / "new"))) + "\n")
        except OSError as exc:
            raise OutputError(folder, exc) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _finish(folder, staging)


def _finish(folder: Path, staging: Path) -> None:
    """Move every staged entry into `folder` (idempotent: a rerun continues where a kill stopped)."""
    new, old = staging / "new", staging / "old"
    try:
        old.mkdir(exist_ok=True)
        for name in sorted(os.listdir(new)) if new.is_dir() else []:
            _replace(new / name, folder / name, old / name, exchange=False)
        (staging / COMMIT_MARK).unlink()  # first: a kill while cleaning up leaves unmarked leftovers only
    except OSError as exc:
        raise OutputError(folder, exc) from None
    shutil.rmtree(staging, ignore_errors=True)


def recover_outputs(folder: str | Path, stage: str | None = None) -> None:
    """Finish the commits a kill interrupted in `folder` (their outputs were complete), and drop
    `stage`'s unfinished staging (another stage's may still be in the making)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for staging in sorted(folder.glob(f"{STAGING_PREFIX}*")):
        if (staging / COMMIT_MARK).is_file():
            _finish(folder, staging)
        elif staging == staging_dir(folder, stage or ""):
            shutil.rmtree(staging, ignore_errors=True)


def read_yaml_mapping(path: str | Path, missing: str = "file not found") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; anything else is one InputError line."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise InputError(path, "-", "-", missing) from None
    except IsADirectoryError:
        raise InputError(path, "-", "-", "a folder, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, "-", "-", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise InputError(path, "-", "-", f"not valid YAML: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise InputError(path, "-", "-", "nested too deeply to read") from None
    if not isinstance(data, dict):
        raise InputError(path, "-", "-", "expected a mapping at the top level")
    return data


def file_md5(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
