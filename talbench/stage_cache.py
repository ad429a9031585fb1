"""A content-addressed store of stage outputs: a benchmark triggered again redoes nothing.

DVC's run cache does this for `dvc repro` inside one repository. Airflow runs each DAG run in a
workspace of its own, with stages of one run in parallel, where DVC's per-repository lock forbids
`dvc repro`. So this keeps DVC's key (the stage's command, the values of its params and the
content of its deps) and stores the stage's outputs under it, shared by every workspace under one
root. Outputs are stored and restored as hard links (read-only): the stages replace their outputs
by renames and never write into them, so a link is never changed under another workspace's feet.

A stage whose effects reach beyond its outputs (evaluate logs to MLflow; report reads MLflow) says
`meta: {reuse: false}` in dvc.yaml and always runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from talbench.io import atomic_path, remove_stale_temporaries
from talbench.pipeline import Stage, lookup

FORMAT = 1  # bump when the key or the entry's layout changes
# what DVC ignores in this project (.dvcignore) and what the stages leave while they work
IGNORED_DIRS = {"__pycache__", ".train-partial"}
IGNORED_PREFIXES = (".staging-", ".unpack.", ".talbench-tmp")


def stage_key(stage: Stage, workspace: Path, project: Path, params: Mapping[str, Any]) -> str | None:
    """The stage's key, or None when it cannot be reused (a dep is missing: the stage will say why)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT, "cmd": stage.cmd,
                              "params": {p: _param(params, p) for p in stage.params}}, sort_keys=True).encode())
    for dep in stage.deps:
        path = workspace / dep if (workspace / dep).exists() else project / dep
        if not path.exists():
            return None
        digest.update(f"\0dep {dep}\0".encode())
        for relative, content in _contents(path):
            digest.update(f"{relative}\0{content}\0".encode())
    return digest.hexdigest()


def restore(cache: Path, key: str, stage: Stage, workspace: Path) -> bool:
    """Put the cached outputs of `key` into the workspace (each replacing what is there); False if none are cached."""
    entry = cache / key[:2] / key
    if not (entry / "stage.json").is_file():
        return False
    for out in stage.outs:
        stored = entry / "outs" / out
        if not stored.exists():  # an entry from a stage whose outputs changed since: not this stage's
            return False
    for out in stage.outs:
        target = workspace / out
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            _link_copy(entry / "outs" / out, tmp)
    return True


def save(cache: Path, key: str, stage: Stage, workspace: Path) -> bool:
    """Store the stage's outputs under `key`; False (nothing stored) if one is missing or the key is stored already."""
    entry = cache / key[:2] / key
    if (entry / "stage.json").is_file() or not all((workspace / out).exists() for out in stage.outs):
        return False
    entry.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(entry.parent, f".{key}.")
    work = Path(tempfile.mkdtemp(prefix=f".{key}.{os.getpid()}.", dir=entry.parent))
    try:
        for out in stage.outs:
            stored = work / "new" / "outs" / out
            stored.parent.mkdir(parents=True, exist_ok=True)
            _link_copy(workspace / out, stored, read_only=True)
        record = {"stage": stage.name, "cmd": stage.cmd, "outs": list(stage.outs), "saved": time.time()}
        (work / "new" / "stage.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            os.rename(work / "new", entry)  # never replaces: a workspace may be restoring from it
        except OSError:  # another workspace stored the same key first
            return False
        return True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _param(params: Mapping[str, Any], dotted: str) -> Any:
    try:
        return lookup(dict(params), dotted)
    except (KeyError, IndexError, TypeError):
        return None


def _contents(path: Path) -> Iterator[tuple[str, str]]:
    """(relative path, sha256) of the file, or of every file under the folder, in a fixed order."""
    if path.is_file():
        yield "", _file_hash(path)
        return
    for folder, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_DIRS and not d.startswith(IGNORED_PREFIXES))
        for name in sorted(files):
            if not name.endswith(".pyc") and not name.startswith(IGNORED_PREFIXES):
                file = Path(folder) / name
                yield file.relative_to(path).as_posix(), _file_hash(file)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _link_copy(source: Path, target: Path, read_only: bool = False) -> None:
    """Copy a file or folder as hard links (a plain copy across file systems)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        if read_only:
            os.chmod(dst, stat.S_IMODE(os.stat(dst).st_mode) & ~0o222)

    if source.is_dir():
        shutil.copytree(source, target, copy_function=link, symlinks=False)
    else:
        link(str(source), str(target))
