"""Bad archives as a user meets them: through the fetch stage command, with data.source real and a
file:// mirror whose md5 params.yaml records. Each must end in one `error:` line naming file, item
and field, exit status 2, the earlier dataset byte-identical and nothing left behind."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import random
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from talbench.data.archive import DISK_RESERVE_BYTES, safe_extract, unpack_size_problem
from talbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
ANNOTATIONS = "thumos/annotations/thumos14.json"
GOOD = {ANNOTATIONS: b'{"database": {}}', "thumos/i3d_features/video_1.npy": b"\x93NUMPY" + bytes(range(256))}

_spec = importlib.util.spec_from_file_location("fetch_component", ROOT / "components/fetch.py")
assert _spec is not None and _spec.loader is not None
fetch_component = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fetch_component)


class Stage:
    """A project in tmp_path: params.yaml whose thumos14 archive is `publish`ed through file://."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp, self.capsys = tmp, capsys
        self.params, self.data = tmp / "params.yaml", tmp / "data"
        self.archives, self.dataset = self.data / "real/archives", self.data / "real/thumos14"

    def publish(self, archive: Path, **data: object) -> None:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"] = {"source": "real", "root": str(self.data), **data}
        params["datasets"]["thumos14"]["archive"] = {
            "name": "thumos.zip", "md5": hashlib.md5(archive.read_bytes()).hexdigest(), "mirrors": [archive.as_uri()],
        }
        self.params.write_text(yaml.safe_dump(params, sort_keys=False))

    def run(self) -> tuple[int, list[str]]:
        code = fetch_component.main(["thumos14", "--params", str(self.params), "--data-root", str(self.data)])
        return code, self.capsys.readouterr().err.splitlines()


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every path under `folder`, hidden ones too: a file's bytes, a folder, a link's target."""
    def entry(p: Path) -> bytes | str:
        return f"-> {os.readlink(p)}" if p.is_symlink() else "dir" if p.is_dir() else p.read_bytes()
    return {str(p.relative_to(folder)): entry(p) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Stage:
    """The stage with a good thumos14 already fetched and unpacked."""
    stage = Stage(tmp_path, capsys)
    stage.publish(make_zip(tmp_path / "mirror/good.zip", GOOD))
    assert stage.run() == (0, [])
    assert (stage.dataset / ANNOTATIONS).read_bytes() == GOOD[ANNOTATIONS]
    return stage


def assert_refused(stage: Stage, item: str, field: str, problem: str) -> str:
    """Run the stage on what was published; return its one error line after checking it."""
    before = snapshot(stage.dataset)
    code, err = stage.run()
    assert code == 2, err
    assert len(err) == 1, err
    (line,) = err
    assert line.startswith(f"error: {stage.archives / 'thumos.zip'}: {item}: field '{field}': "), line
    assert problem in line, line
    assert snapshot(stage.dataset) == before  # byte-identical, no staging folder or temporary name
    assert sorted(p.name for p in stage.archives.iterdir()) == ["thumos.zip"]  # no .part
    assert sorted(p.name for p in stage.data.iterdir()) == ["real"]
    assert sorted(p.name for p in (stage.data / "real").iterdir()) == ["archives", "thumos14"]
    return line


# --- building archives -------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def zip_with(path: Path, info: zipfile.ZipInfo, data: bytes = b"x") -> Path:
    """GOOD plus one member written from `info` (its mode bits, its compression)."""
    make_zip(path, GOOD)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr(info, data)
    return path


# Offsets of fields in a zip's local header (PK\3\4) and central directory entry (PK\1\2).
LOCAL = {"flags": 6, "method": 8, "crc": 14, "size": 22}
CENTRAL = {"flags": 8, "method": 10, "crc": 16, "size": 24}


def patch_last_member(path: Path, **fields: int) -> Path:
    """Rewrite header fields of the zip's last member in both headers: lie about it."""
    data = bytearray(path.read_bytes())
    for signature, offsets in ((b"PK\x03\x04", LOCAL), (b"PK\x01\x02", CENTRAL)):
        at = data.rindex(signature)
        for name, value in fields.items():
            fmt = "<I" if name in ("crc", "size") else "<H"
            struct.pack_into(fmt, data, at + offsets[name], value)
    path.write_bytes(bytes(data))
    return path


def make_tar(path: Path, *members: tarfile.TarInfo, files: dict[str, bytes] = GOOD, compression: str = "gz") -> Path:
    """A compressed tar of `files` then `members` (links, special files: no data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, f"w:{compression}") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in members:
            tf.addfile(info)
    return path


def tar_entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def cut(path: Path, keep: Callable[[int], int]) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    return path


def device(name: str, kind: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    info.external_attr = (kind | 0o644) << 16
    return info


# --- the registry's layout, checked from the member list -------------------------------------


def test_an_archive_without_the_root_folder_is_refused_before_unpacking(stage: Stage, tmp_path: Path) -> None:
    # the old check came after unpacking: a wrong-case root was unpacked beside the old data, and
    # the stage reported success with the stale dataset in place
    wrong = {name.replace("thumos/", "THUMOS/"): data for name, data in GOOD.items()}
    stage.publish(make_zip(tmp_path / "mirror/wrong-root.zip", wrong | {"THUMOS/big.bin": bytes(1 << 20)}))
    line = assert_refused(stage, "thumos14", "root", "the archive has no 'thumos/' folder")
    assert "top-level entries: THUMOS" in line


def test_an_archive_without_the_annotation_file_is_refused(stage: Stage, tmp_path: Path) -> None:
    stage.publish(make_zip(tmp_path / "mirror/no-annotations.zip", {"thumos/i3d_features/video_1.npy": b"x"}))
    assert_refused(stage, "thumos14", "tasks.action.annotations", f"the archive has no '{ANNOTATIONS}' file")


def test_an_annotation_path_that_is_a_folder_is_refused(stage: Stage, tmp_path: Path) -> None:
    stage.publish(make_zip(tmp_path / "mirror/folder.zip", {f"{ANNOTATIONS}/x.json": b"{}"}))
    assert_refused(stage, "thumos14", "tasks.action.annotations", f"no '{ANNOTATIONS}' file")


# --- how much an archive may expand to ----------------------------------------------------------


def test_a_zip_bomb_is_refused_by_its_ratio_and_the_ratio_is_a_parameter(stage: Stage, tmp_path: Path) -> None:
    zeros = {"thumos/zeros.bin": bytes(20 << 20)}  # deflates about 1000:1
    bomb = make_zip(tmp_path / "mirror/bomb.zip", GOOD | zeros, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < 50_000
    stage.publish(bomb)
    assert_refused(stage, "thumos/zeros.bin", "size", "more than 100x its own")
    stage.publish(bomb, max_unpack_ratio=5000)
    assert stage.run() == (0, [])
    assert (stage.dataset / "thumos/zeros.bin").stat().st_size == 20 << 20


@pytest.mark.parametrize("ratio", [0, -1, "big", True])
def test_a_bad_max_unpack_ratio_is_refused(stage: Stage, tmp_path: Path, ratio: object) -> None:
    stage.publish(make_zip(tmp_path / "mirror/good2.zip", GOOD), max_unpack_ratio=ratio)
    before = snapshot(stage.data)
    code, err = stage.run()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {stage.params}: data: field 'max_unpack_ratio': expected a number > 0"), err
    assert snapshot(stage.data) == before


def test_a_null_max_unpack_ratio_is_the_default(stage: Stage, tmp_path: Path) -> None:
    stage.publish(make_zip(tmp_path / "mirror/bomb.zip", GOOD | {"thumos/zeros.bin": bytes(1 << 20)}, zipfile.ZIP_DEFLATED), max_unpack_ratio=None)
    assert_refused(stage, "thumos/zeros.bin", "size", "more than 100x its own")


@pytest.mark.parametrize(
    ("declared", "archive", "free", "ratio", "problem"),
    [
        (1_000, 1_000, 10**12, 100.0, None),
        (100_000, 1_000, 10**12, 100.0, None),  # exactly the ratio
        (100_001, 1_000, 10**12, 100.0, "more than 100x its own 1.0 KB"),
        (3_000_000_000, 1_000_000_000, 10**12, 2.5, "declares 3.0 GB unpacked, more than 2.5x"),
        (10**9, 10**9, 10**9 + DISK_RESERVE_BYTES, 100.0, None),
        (10**9, 10**9, 10**9 + DISK_RESERVE_BYTES - 1, 100.0, "only 1.1 GB are free"),
        (0, 22, 0, 100.0, "needs 0 bytes plus 67.1 MB to spare"),
    ],
)
def test_unpack_size_problem(declared: int, archive: int, free: int, ratio: float, problem: str | None) -> None:
    found = unpack_size_problem(declared, archive, free, ratio)
    assert found == problem if problem is None else found is not None and problem in found


def test_a_zip_member_lying_about_its_size_writes_no_more_than_declared(stage: Stage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 400
    lie = patch_last_member(make_zip(tmp_path / "mirror/lie.zip", GOOD | {"thumos/x.bin": data}), size=1000)
    stage.publish(lie)
    # zipfile stops at the declared size, then checks the CRC, which was of the whole data
    assert_refused(stage, "thumos/x.bin", "content", "archive is corrupt or truncated (Bad CRC-32 for file 'thumos/x.bin')")
    # with the CRC of what it declares, the lie is consistent: exactly the declared bytes appear
    consistent = patch_last_member(make_zip(tmp_path / "mirror/lie2.zip", GOOD | {"thumos/x.bin": data}), size=1000, crc=zlib.crc32(data[:1000]))
    stage.publish(consistent)
    assert stage.run() == (0, [])
    assert (stage.dataset / "thumos/x.bin").read_bytes() == data[:1000]


# --- members that cannot or must not be unpacked ------------------------------------------------

DEEP = "/".join(["d" * 200] * 21)  # 4221 bytes: over Linux's PATH_MAX of 4096

ZIP_CASES: list[tuple[str, dict[str, bytes], str, str, str]] = [
    ("duplicate", {ANNOTATIONS: b"{}"}, ANNOTATIONS, "path", "duplicate member name"),
    ("file-and-folder", {"thumos/annotations": b"x"}, "thumos/annotations", "path", f"is a file but also the folder of '{ANNOTATIONS}'"),
    ("long-name", {f"thumos/{'a' * 256}.npy": b"x"}, f"thumos/{'a' * 256}.npy", "path", "longer than the filesystem's 255 bytes"),
    ("long-path", {f"thumos/{DEEP}": b"x"}, f"thumos/{DEEP}", "path", "would exceed the filesystem's 4096 bytes"),
    ("backslash", {"thumos\\annotations\\extra.json": b"x"}, "thumos\\annotations\\extra.json", "path", "backslash in the member name"),
    ("windows-absolute", {"C:\\evil.txt": b"x"}, "C:\\evil.txt", "path", "absolute path in archive"),
    ("dot", {".": b"x"}, ".", "path", "empty member name"),
]


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
@pytest.mark.parametrize(("case", "extra", "item", "field", "problem"), ZIP_CASES, ids=[c[0] for c in ZIP_CASES])
def test_bad_zip_members(stage: Stage, tmp_path: Path, case: str, extra: dict[str, bytes], item: str, field: str, problem: str) -> None:
    path = tmp_path / f"mirror/{case}.zip"
    make_zip(path, GOOD)
    with zipfile.ZipFile(path, "a") as zf:  # appended: a duplicate name would replace the first in a dict
        for name, data in extra.items():
            zf.writestr(name, data)
    stage.publish(path)
    assert_refused(stage, item, field, problem)


@pytest.mark.parametrize(
    ("kind", "what"),
    [(stat.S_IFCHR, "a character device"), (stat.S_IFBLK, "a block device"), (stat.S_IFIFO, "a FIFO (named pipe)"), (stat.S_IFSOCK, "a socket")],
)
def test_zip_special_files_are_refused(stage: Stage, tmp_path: Path, kind: int, what: str) -> None:
    stage.publish(zip_with(tmp_path / "mirror/device.zip", device("thumos/dev", kind)))
    assert_refused(stage, "thumos/dev", "type", f"{what} in the archive")


def test_an_encrypted_zip_member_is_refused(stage: Stage, tmp_path: Path) -> None:
    stage.publish(patch_last_member(make_zip(tmp_path / "mirror/enc.zip", GOOD | {"thumos/secret": b"x"}), flags=0x1))
    assert_refused(stage, "thumos/secret", "encryption", "the member is encrypted")


@pytest.mark.parametrize(("method", "name"), [(99, "AES encryption"), (9, "deflate64"), (42, "unknown")])
def test_an_unsupported_zip_method_is_refused(stage: Stage, tmp_path: Path, method: int, name: str) -> None:
    stage.publish(patch_last_member(make_zip(tmp_path / "mirror/m.zip", GOOD | {"thumos/x": b"x"}), method=method))
    assert_refused(stage, "thumos/x", "compression", f"method {method} ({name}) is not supported")


def test_bzip2_and_lzma_zips_are_unpacked(stage: Stage, tmp_path: Path) -> None:
    for method in (zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        stage.publish(make_zip(tmp_path / f"mirror/{method}.zip", GOOD, method))
        assert stage.run() == (0, [])
        assert (stage.dataset / ANNOTATIONS).read_bytes() == GOOD[ANNOTATIONS]


TAR_CASES: list[tuple[str, list[tarfile.TarInfo], str, str, str]] = [
    ("chain", [tar_entry("thumos/l1", tarfile.SYMTYPE, "i3d_features/video_1.npy"), tar_entry("thumos/l2", tarfile.SYMTYPE, "l1")],
     "thumos/l2", "link", "link target 'thumos/l1' is itself a link"),
    ("hard-to-symlink", [tar_entry("thumos/l1", tarfile.SYMTYPE, "i3d_features"), tar_entry("thumos/h", tarfile.LNKTYPE, "thumos/l1")],
     "thumos/h", "link", "is itself a link"),
    ("hard-to-missing", [tar_entry("thumos/h", tarfile.LNKTYPE, "thumos/missing.npy")],
     "thumos/h", "link", "hard link to 'thumos/missing.npy', which is not a file stored before it"),
    ("hard-to-folder", [tar_entry("thumos/h", tarfile.LNKTYPE, "thumos/annotations")], "thumos/h", "link", "hard link to 'thumos/annotations'"),
    ("dangling", [tar_entry("thumos/l", tarfile.SYMTYPE, "nowhere.npy")], "thumos/l", "link", "link target 'thumos/nowhere.npy' is not in the archive"),
    ("escaping", [tar_entry("thumos/l", tarfile.SYMTYPE, "../../x")], "thumos/l", "link", "escapes the target folder"),
    ("fifo", [tar_entry("thumos/pipe", tarfile.FIFOTYPE)], "thumos/pipe", "type", "a FIFO (named pipe) in the archive"),
    ("char-device", [tar_entry("thumos/tty", tarfile.CHRTYPE)], "thumos/tty", "type", "a character device in the archive"),
    ("block-device", [tar_entry("thumos/sda", tarfile.BLKTYPE)], "thumos/sda", "type", "a block device in the archive"),
    ("link-as-folder", [tar_entry("thumos/feats", tarfile.SYMTYPE, "i3d_features"), tar_entry("thumos/feats/v.npy", tarfile.REGTYPE)],
     "thumos/feats", "path", "is a symlink but also the folder of 'thumos/feats/v.npy'"),
    ("empty-name", [tar_entry("", tarfile.REGTYPE)], "''", "path", "empty member name"),
]


@pytest.mark.parametrize(("case", "members", "item", "field", "problem"), TAR_CASES, ids=[c[0] for c in TAR_CASES])
def test_bad_tar_members(stage: Stage, tmp_path: Path, case: str, members: list[tarfile.TarInfo], item: str, field: str, problem: str) -> None:
    stage.publish(make_tar(tmp_path / f"mirror/{case}.tar.gz", *members))
    assert_refused(stage, item, field, problem)


def test_a_tar_made_with_dot_slash_and_links_inside_is_unpacked(stage: Stage, tmp_path: Path) -> None:
    files = {f"./{name}": data for name, data in GOOD.items()} | {"./thumos/..notes": b"n"}  # '..notes' climbs nowhere
    links = [tar_entry("./thumos/alias.npy", tarfile.SYMTYPE, "i3d_features/video_1.npy"),
             tar_entry("./thumos/copy.npy", tarfile.LNKTYPE, "./thumos/i3d_features/video_1.npy"),
             tar_entry("./thumos/notes", tarfile.SYMTYPE, "..notes")]
    archive = make_tar(tmp_path / "mirror/dot.tar.gz", tar_entry("./", tarfile.DIRTYPE), *links, files=files)
    stage.publish(archive)
    assert stage.run() == (0, [])
    unpacked = stage.dataset / "thumos"
    assert (unpacked / "alias.npy").read_bytes() == (unpacked / "copy.npy").read_bytes() == GOOD["thumos/i3d_features/video_1.npy"]
    assert (unpacked / "notes").read_bytes() == b"n"


# --- files that are not (whole) archives --------------------------------------------------------


def test_a_truncated_tar_gz_names_the_last_member_read(stage: Stage, tmp_path: Path) -> None:
    big = {ANNOTATIONS: b"{}", "thumos/i3d_features/a.npy": os.urandom(200_000), "thumos/i3d_features/b.npy": os.urandom(200_000)}
    stage.publish(cut(make_tar(tmp_path / "mirror/cut.tar.gz", files=big), lambda n: n * 3 // 4))
    # b.npy's header was read whole, its data was cut
    assert_refused(stage, "thumos/i3d_features/b.npy", "content", "archive is corrupt or truncated in or after this member")


def test_a_tar_gz_cut_in_its_first_block_is_truncated_not_unknown(stage: Stage, tmp_path: Path) -> None:
    stage.publish(cut(make_tar(tmp_path / "mirror/cut.tar.gz"), lambda n: 30))
    assert_refused(stage, "-", "content", "archive is corrupt or truncated (")


def test_a_zip_cut_before_its_central_directory(stage: Stage, tmp_path: Path) -> None:
    stage.publish(cut(make_zip(tmp_path / "mirror/cut.zip", GOOD | {"thumos/x": os.urandom(50_000)}), lambda n: n // 2))
    assert_refused(stage, "-", "content", "archive is corrupt or truncated (a zip without its central directory)")


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        (b"", "format", "the file is empty"),
        (b"<!DOCTYPE html>\n<html><body>Sign in to download</body></html>", "format", "it is a web page (HTML)"),
        (b"just some bytes that are not an archive" * 20, "format", "neither a zip nor a readable tar archive"),
        (b"PK\x05\x06" + bytes(18), "members", "the archive holds no files"),  # an empty zip
    ],
    ids=["empty-file", "html", "junk", "empty-zip"],
)
def test_files_that_are_no_archive(stage: Stage, tmp_path: Path, content: bytes, field: str, problem: str) -> None:
    (tmp_path / "mirror/not.zip").write_bytes(content)
    stage.publish(tmp_path / "mirror/not.zip")
    assert_refused(stage, "-", field, problem)


def test_an_empty_tar_is_refused(stage: Stage, tmp_path: Path) -> None:
    stage.publish(make_tar(tmp_path / "mirror/empty.tar.gz", tar_entry("./", tarfile.DIRTYPE), files={}))
    assert_refused(stage, "-", "members", "the archive holds no files")


# --- the download side: nothing left in the data folder -----------------------------------------


def test_a_missing_mirror_leaves_no_part_file(stage: Stage, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "mirror/gone.zip", GOOD | {"thumos/new": b"x"})
    stage.publish(archive)
    archive.unlink()
    before = snapshot(stage.data)
    code, err = stage.run()
    assert code == 2 and len(err) == 2  # the mirror's own failure, then the error
    assert err[1].startswith(f"error: {stage.archives / 'thumos.zip'}: thumos14: field 'mirrors': every mirror")
    assert snapshot(stage.data) == before


def test_an_md5_mismatch_keeps_only_the_bad_md5_file(stage: Stage, tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "mirror/v2.zip", GOOD | {"thumos/new": b"x"})
    stage.publish(archive)
    make_zip(archive, GOOD | {"thumos/new": b"tampered"})
    before = snapshot(stage.dataset)
    code, err = stage.run()
    assert code == 2 and len(err) == 1 and "field 'md5'" in err[0]
    assert snapshot(stage.dataset) == before
    assert sorted(p.name for p in stage.archives.iterdir()) == ["thumos.zip.bad-md5"]


# --- any damage: one line, never a traceback ----------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "gz", "bz2", "xz"])
def test_randomly_damaged_archives_end_in_one_line_or_unpack(tmp_path: Path, kind: str) -> None:
    files = {ANNOTATIONS: b'{"database": {}}' * 20, "thumos/a.npy": os.urandom(2000), "thumos/b.npy": bytes(3000)}
    if kind == "zip":
        good = make_zip(tmp_path / "a.zip", files, zipfile.ZIP_DEFLATED)
    else:
        good = make_tar(tmp_path / f"a.tar.{kind}", files=files, compression=kind)
    original, rng = good.read_bytes(), random.Random(kind)
    dest, damaged = tmp_path / "data", tmp_path / "damaged"
    for _ in range(30):
        data = bytearray(original)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        else:
            for at in rng.sample(range(len(data)), 3):
                data[at] = rng.randrange(256)
        damaged.write_bytes(bytes(data))
        try:
            safe_extract(damaged, dest)
        except InputError as exc:
            assert "\n" not in str(exc)
        assert not dest.exists() or not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_a_file_where_the_dataset_holds_a_folder_is_refused_before_unpacking(stage: Stage, tmp_path: Path) -> None:
    stage.publish(make_zip(tmp_path / "mirror/v1.zip", GOOD | {"extras/readme.txt": b"r"}))
    assert stage.run() == (0, [])
    stage.publish(make_zip(tmp_path / "mirror/v2.zip", GOOD | {"extras": b"x"}))
    assert_refused(stage, "extras", "path", f"{stage.dataset / 'extras'} is a folder but the archive holds a file there")


def test_the_stage_command_itself_refuses_in_one_line(stage: Stage, tmp_path: Path) -> None:
    stage.publish(make_zip(tmp_path / "mirror/no-root.zip", {"other/x.json": b"{}"}))
    before = snapshot(stage.data)
    command = [sys.executable, str(ROOT / "components/fetch.py"), "thumos14", "--params", str(stage.params), "--data-root", str(stage.data)]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.splitlines() == [
        f"error: {stage.archives / 'thumos.zip'}: thumos14: field 'root': the archive has no 'thumos/' folder (its top-level entries: other)"
    ]
    assert {k: v for k, v in snapshot(stage.data).items() if k != "real/archives/thumos.zip"} == {
        k: v for k, v in before.items() if k != "real/archives/thumos.zip"
    }
