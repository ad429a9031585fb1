"""Atomic writes: a reader (or a later pipeline stage) never sees half a file or half a folder."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `target`, on error it is removed.

    Works for files and folders alike: whatever the body creates at the yielded path is
    renamed into place in one step, so an earlier good `target` survives any failure.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent)) / "new"
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            old = tmp.parent / "old"
            target.rename(old)
            tmp.rename(target)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (sorted keys off: the order is meaningful to readers)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_yaml_mapping(path: str | Path, missing: str = "file not found") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; anything else is one InputError line."""
    import yaml

    from talbench.errors import InputError

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise InputError(path, "-", "-", missing) from None
    except yaml.YAMLError as exc:
        raise InputError(path, "-", "-", f"not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise InputError(path, "-", "-", "expected a mapping at the top level")
    return data


def file_md5(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
