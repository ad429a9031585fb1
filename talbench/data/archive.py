"""Safe, all-or-nothing unpacking of dataset archives (zip and tar, any compression).

Everything the member list can tell is checked before anything is written: paths, types, links,
names the filesystem can hold, duplicates, the declared unpacked size (against the free space and
against the archive's own size: a zip bomb) and the folders and files the caller requires.
"""

from __future__ import annotations

import gzip
import lzma
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath

from talbench.errors import InputError
from talbench.io import atomic_path, remove_stale_temporaries

# Real feature archives unpack to ~1-3x their size (float32 features compress little) and the
# twins are stored zips (~1x); 100x leaves room for annotation-heavy archives and stops bombs.
MAX_UNPACK_RATIO = 100.0
DISK_RESERVE_BYTES = 64 << 20  # left free after unpacking, for everything else on that disk
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)  # what zipfile reads
ZIP_METHOD_NAMES = {6: "implode", 9: "deflate64", 93: "zstandard", 95: "xz", 98: "PPMd", 99: "AES encryption"}
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")  # gzip, bzip2, xz
SPECIAL_TYPES = {
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket",
}
TAR_SPECIAL_TYPES = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK, tarfile.FIFOTYPE: stat.S_IFIFO}
STAGING_PREFIX = ".unpack."
# Errors a damaged archive raises while it is read (gzip and bz2 raise OSErrors without an errno).
CORRUPT = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile)


@dataclass(frozen=True)
class Member:
    name: str  # as stored, for messages
    path: str  # normalized, relative to the target folder; "" is the folder itself
    kind: str  # "file", "dir", "symlink" or "hardlink"
    size: int = 0  # declared bytes
    target: str = ""  # links: the normalized path linked to, relative to the target folder


def unpack_size_problem(declared: int, archive_bytes: int, free_bytes: int, max_ratio: float) -> str | None:
    """Why `declared` unpacked bytes are refused, or None: over `max_ratio` x the archive, or over the free space."""
    if declared > max_ratio * archive_bytes:
        return (
            f"the archive declares {_size(declared)} unpacked, more than {max_ratio:g}x its own "
            f"{_size(archive_bytes)} (a zip bomb?); data.max_unpack_ratio in params.yaml sets the limit"
        )
    if declared + DISK_RESERVE_BYTES > free_bytes:
        return (
            f"unpacking needs {_size(declared)} plus {_size(DISK_RESERVE_BYTES)} to spare, "
            f"but only {_size(free_bytes)} are free on that disk"
        )
    return None


def _size(n: float) -> str:
    units = ("bytes", "KB", "MB", "GB", "TB")
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} bytes" if i == 0 else f"{n:.1f} {units[i]}"


def archive_members(archive: Path, size_problem: Callable[[int], str | None]) -> list[Member]:
    """Every member, each checked on its own; `size_problem(total declared bytes)` is asked after each.

    A tar is read header by header, so a bomb is refused before its data is decompressed.
    """
    members: list[Member] = []
    total = 0
    for member in _zip_members(archive) if _sniff(archive) == "zip" else _tar_members(archive):
        members.append(member)
        total += member.size
        if problem := size_problem(total):
            raise InputError(archive, member.name, "size", problem)
    if not any(m.path for m in members):
        raise InputError(archive, "-", "members", "the archive holds no files")
    return members


def _sniff(archive: Path) -> str:
    """'zip' or 'tar', after refusing files that are plainly neither."""
    with open(archive, "rb") as f:
        head = f.read(512)
    if not head:
        raise InputError(archive, "-", "format", "neither a zip nor a readable tar archive: the file is empty")
    if zipfile.is_zipfile(archive):
        return "zip"
    if head.lstrip()[:1] == b"<" and b"html" in head.lower():
        raise InputError(
            archive, "-", "format", "neither a zip nor a readable tar archive: it is a web page (HTML), not the archive"
        )
    if head.startswith(b"PK\x03\x04"):  # starts as a zip, but its central directory is gone
        raise InputError(archive, "-", "content", "archive is corrupt or truncated (a zip without its central directory)")
    return "tar"


def _zip_members(archive: Path) -> Iterator[Member]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except CORRUPT as exc:
        raise InputError(archive, "-", "content", f"archive is corrupt or truncated ({_one_line(exc)})") from None
    except NotImplementedError as exc:  # e.g. a newer zip version than zipfile reads
        raise InputError(archive, "-", "format", f"a zip feature that cannot be read here ({_one_line(exc)})") from None
    for info in infos:
        path = _member_path(archive, info.filename)
        mode = stat.S_IFMT(info.external_attr >> 16)
        if mode == stat.S_IFLNK:
            raise InputError(archive, info.filename, "type", "symbolic link in zip archive: refusing to unpack")
        if mode in SPECIAL_TYPES:
            raise InputError(archive, info.filename, "type", f"{SPECIAL_TYPES[mode]} in the archive: refusing to unpack")
        if info.flag_bits & 0x1:
            raise InputError(archive, info.filename, "encryption", "the member is encrypted (password-protected)")
        if info.compress_type not in ZIP_METHODS:
            known = ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
            raise InputError(
                archive, info.filename, "compression",
                f"method {info.compress_type} ({known}) is not supported; supported: stored, deflate, bzip2, lzma",
            )
        kind = "dir" if info.is_dir() else "file"
        _check_not_empty(archive, info.filename, path, kind)
        yield Member(info.filename, path, kind, info.file_size)


def _tar_members(archive: Path) -> Iterator[Member]:
    last = "-"
    try:
        with tarfile.open(archive) as tf:
            for info in tf:
                yield _tar_member(archive, info)
                last = info.name
    except (*CORRUPT, OSError) as exc:
        detail = "; ".join(line.strip(" :-") for line in _text(exc).splitlines() if line.strip(" :-"))
        with open(archive, "rb") as f:
            head = f.read(6)
        if last == "-" and not head.startswith(COMPRESSED_MAGIC):  # not even compressed: no archive at all
            raise InputError(archive, "-", "format", f"neither a zip nor a readable tar archive ({detail})") from None
        where = "" if last == "-" else " in or after this member"
        raise InputError(archive, last, "content", f"archive is corrupt or truncated{where} ({detail})") from None


def _tar_member(archive: Path, info: tarfile.TarInfo) -> Member:
    path = _member_path(archive, info.name)
    if not (info.isfile() or info.isdir() or info.issym() or info.islnk()):
        what = SPECIAL_TYPES.get(TAR_SPECIAL_TYPES.get(info.type, 0), "a special file")
        raise InputError(archive, info.name, "type", f"{what} in the archive: refusing to unpack")
    if info.issym() or info.islnk():
        base = PurePosixPath(path).parent if info.issym() else PurePosixPath()
        target = "/".join(_normalize(base / info.linkname.replace("\\", "/")))
        if PurePosixPath(info.linkname).is_absolute() or target == "..":
            raise InputError(archive, info.name, "link", f"link target '{info.linkname}' escapes the target folder")
        return Member(info.name, path, "symlink" if info.issym() else "hardlink", target=target)
    kind = "dir" if info.isdir() else "file"
    _check_not_empty(archive, info.name, path, kind)
    return Member(info.name, path, kind, info.size if kind == "file" else 0)


def _member_path(archive: Path, name: str) -> str:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise InputError(archive, name, "path", "absolute path in archive: refusing to unpack")
    if ".." in path.parts:
        raise InputError(archive, name, "path", "path escapes the target folder ('..'): refusing to unpack")
    if "\\" in name:
        raise InputError(archive, name, "path", "backslash in the member name (a Windows path?); archives separate folders with '/'")
    return "/".join(path.parts)


def _check_not_empty(archive: Path, name: str, path: str, kind: str) -> None:
    # a folder named '.' is the target folder itself (tar's './'); a file cannot be
    if not path and kind != "dir":
        raise InputError(archive, name or "''", "path", "empty member name: a file needs a name")


def _normalize(path: PurePosixPath) -> list[str]:
    """The path's parts with '.' and '..' resolved; ['..'] when it climbs out."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return [".."]
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return parts


def _text(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _one_line(exc: BaseException) -> str:
    return " ".join(_text(exc).split())


def check_tree(archive: Path, members: list[Member], dest: Path) -> None:
    """Refuse what would fail or go wrong half-way: names too long, duplicates, files that are
    also folders, links that chain, dangle or point forward, and a top-level entry that would
    replace a folder in `dest` with a file or a file with a folder."""
    name_max, path_max, prefix = _name_limits(dest)
    first: dict[str, int] = {}
    for i, m in enumerate(members):
        if any(len(os.fsencode(part)) > name_max for part in m.path.split("/")):
            raise InputError(archive, m.name, "path", f"a name in this path is longer than the filesystem's {name_max} bytes")
        if prefix + len(os.fsencode(m.path)) >= path_max:
            raise InputError(archive, m.name, "path", f"unpacked under {dest} the path would exceed the filesystem's {path_max} bytes")
        if m.path in first and not (m.kind == "dir" and members[first[m.path]].kind == "dir"):
            raise InputError(archive, m.name, "path", "duplicate member name: the archive holds this path twice")
        first.setdefault(m.path, i)
    folders = _folders(members)
    for m in members:
        if m.kind != "dir" and m.path in folders:
            raise InputError(archive, m.name, "path", f"is a {m.kind} but also the folder of '{folders[m.path]}'")
    for i, m in enumerate(members):
        if m.kind in ("symlink", "hardlink"):
            _check_link(archive, m, members, first, folders, i)
    for top in sorted({m.path.split("/")[0] for m in members if m.path}):
        _check_replaceable(archive, top, dest / top, top in folders)


def _check_replaceable(archive: Path, top: str, there: Path, is_folder: bool) -> None:
    # each top-level entry replaces its old version whole: a folder never replaces a file, nor a file a folder
    was_folder = there.is_dir() and not there.is_symlink()
    if (there.exists() or there.is_symlink()) and was_folder != is_folder:
        what, new = ("a folder", "a file") if was_folder else ("a file", "a folder")
        raise InputError(archive, top, "path", f"{there} is {what} but the archive holds {new} there: refusing to replace it")


def _check_link(archive: Path, m: Member, members: list[Member], first: dict[str, int], folders: dict[str, str], i: int) -> None:
    j = first.get(m.target)
    if j is not None and members[j].kind in ("symlink", "hardlink"):
        raise InputError(archive, m.name, "link", f"link target '{m.target}' is itself a link: link chains are refused")
    if m.kind == "hardlink" and (j is None or j > i or members[j].kind != "file"):
        raise InputError(archive, m.name, "link", f"hard link to '{m.target}', which is not a file stored before it in the archive")
    if j is None and m.target not in folders and m.target:
        raise InputError(archive, m.name, "link", f"link target '{m.target}' is not in the archive")


def _folders(members: list[Member]) -> dict[str, str]:
    """Every folder the members need, explicit or implied, with one member inside it."""
    folders: dict[str, str] = {}
    for m in members:
        parts = m.path.split("/") if m.path else []
        for n in range(1, len(parts)):
            folders.setdefault("/".join(parts[:n]), m.path)
        if m.kind == "dir":
            folders.setdefault(m.path, m.path)
    return folders


def _name_limits(dest: Path) -> tuple[int, int, int]:
    """NAME_MAX and PATH_MAX of dest's filesystem, and the bytes the staging folder puts before a member."""
    existing = _existing(dest)
    name_max, path_max = (os.pathconf(existing, key) for key in ("PC_NAME_MAX", "PC_PATH_MAX"))
    staging = dest.absolute() / f"{STAGING_PREFIX}XXXXXXXX"
    return name_max, path_max, len(os.fsencode(staging)) + 1


def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_required(archive: Path, members: list[Member], required: Mapping[str, str], item: str) -> None:
    """Each path of `required` (a folder ends with '/') must be in the archive; its value is the field that names it."""
    files = {m.path for m in members if m.kind != "dir"}
    folders = _folders(members)
    for path, field in required.items():
        is_folder = path.endswith("/")
        if "/".join(_normalize(PurePosixPath(path))) not in (folders if is_folder else files):
            tops = sorted({p.split("/")[0] for p in files | set(folders) if p})
            listing = ", ".join(tops[:5]) + (", ..." if len(tops) > 5 else "")
            what = "folder" if is_folder else "file"
            raise InputError(archive, item, field, f"the archive has no '{path}' {what} (its top-level entries: {listing})")


def safe_extract(
    archive: str | Path,
    dest: str | Path,
    *,
    required: Mapping[str, str] | None = None,
    item: str = "-",
    max_ratio: float = MAX_UNPACK_RATIO,
) -> list[Path]:
    """Unpack `archive` into `dest`; each top-level entry replaces its old version in one rename.

    Everything is checked before anything is written (see `check_tree`, `unpack_size_problem`,
    `check_required`, reported for `item`) and unpacked into a temporary folder first, so a bad
    or truncated archive leaves `dest` exactly as it was. Returns the top-level paths.
    """
    archive, dest = Path(archive), Path(dest)
    size_problem = partial(
        unpack_size_problem,
        archive_bytes=archive.stat().st_size,
        free_bytes=shutil.disk_usage(_existing(dest)).free,
        max_ratio=max_ratio,
    )
    members = archive_members(archive, size_problem)
    check_tree(archive, members, dest)
    check_required(archive, members, required or {}, item)
    dest.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest, STAGING_PREFIX)  # what a killed earlier unpack left behind
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}.", dir=dest))
    try:
        _unpack(archive, staging)
        placed = []
        for entry in sorted(staging.iterdir()):
            with atomic_path(dest / entry.name) as tmp:
                entry.rename(tmp)
            placed.append(dest / entry.name)
        return placed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(archive: Path, staging: Path) -> None:
    """Member by member, so a failure names its member; zipfile writes no more than a member declares."""
    current = "-"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    current = info.filename
                    zf.extract(info, staging)
        else:
            with tarfile.open(archive) as tf:
                for info in tf:
                    current = info.name
                    tf.extract(info, staging, filter="data")
    except (*CORRUPT, NotImplementedError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:  # writing failed: disk full, permissions
            raise InputError(archive, current, "unpack", f"cannot write it: {exc.strerror}") from None
        raise InputError(archive, current, "content", f"archive is corrupt or truncated ({_one_line(exc)})") from None
