"""Safe, all-or-nothing unpacking of dataset archives (zip and tar, any compression)."""

from __future__ import annotations

import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from talbench.errors import InputError
from talbench.io import atomic_path


def _check_member(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InputError(archive, name, "path", "absolute path in archive: refusing to unpack")
    if ".." in path.parts:
        raise InputError(archive, name, "path", "path escapes the target folder ('..'): refusing to unpack")


def archive_members(archive: Path) -> list[str]:
    """Member names, after checking every one: no absolute paths, no '..', no links out of the tree."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
        for info in infos:
            _check_member(archive, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise InputError(archive, info.filename, "type", "symbolic link in zip archive: refusing to unpack")
        return [i.filename for i in infos]
    with open(archive, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # starts as a zip, but its central directory is gone
            raise InputError(archive, "-", "content", "archive is corrupt or truncated (a zip without its central directory)")
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
    except tarfile.TarError as exc:
        detail = "; ".join(line.strip(" :-") for line in str(exc).splitlines() if line.strip(" :-"))
        raise InputError(archive, "-", "format", f"neither a zip nor a readable tar archive ({detail})") from None
    for m in members:
        _check_member(archive, m.name)
        if m.issym() or m.islnk():
            target = PurePosixPath(m.name).parent / m.linkname if m.issym() else PurePosixPath(m.linkname)
            if PurePosixPath(m.linkname).is_absolute() or ".." in PurePosixPath(*_normalize(target)).parts:
                raise InputError(archive, m.name, "link", f"link target '{m.linkname}' escapes the target folder")
        elif not (m.isfile() or m.isdir()):
            raise InputError(archive, m.name, "type", "device, fifo or other special file in archive")
    return [m.name for m in members]


def _normalize(path: PurePosixPath) -> list[str]:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return [".."]
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return parts or ["."]


def safe_extract(archive: str | Path, dest: str | Path) -> list[Path]:
    """Unpack `archive` into `dest`; each top-level entry replaces its old version in one rename.

    Everything is checked before anything is written and unpacked into a temporary folder first,
    so a bad or truncated archive leaves `dest` exactly as it was. Returns the top-level paths.
    """
    archive, dest = Path(archive), Path(dest)
    archive_members(archive)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".unpack.", dir=dest))
    try:
        try:
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(staging)
            else:
                with tarfile.open(archive) as tf:
                    tf.extractall(staging, filter="data")
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise InputError(archive, "-", "content", f"archive is corrupt or truncated ({exc})") from None
        placed = []
        for entry in sorted(staging.iterdir()):
            with atomic_path(dest / entry.name) as tmp:
                entry.rename(tmp)
            placed.append(dest / entry.name)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)
