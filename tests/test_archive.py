import io
import tarfile
import zipfile

import pytest

from talbench.data.archive import safe_extract
from talbench.errors import InputError


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path, build):
    with tarfile.open(path, "w:gz") as tf:
        build(tf)
    return path


def _add(tf, name, data=b"x", **kw):
    info = tarfile.TarInfo(name)
    for k, v in kw.items():
        setattr(info, k, v)
    info.size = 0 if kw.get("type") in (tarfile.SYMTYPE, tarfile.LNKTYPE) else len(data)
    tf.addfile(info, None if info.size == 0 else io.BytesIO(data))


def test_unpacks_and_replaces_whole_folders(tmp_path):
    dest = tmp_path / "data"
    safe_extract(_zip(tmp_path / "a.zip", {"ds/ann.json": "{}", "ds/old.npy": "1"}), dest)
    safe_extract(_zip(tmp_path / "b.zip", {"ds/ann.json": "[]"}), dest)
    assert (dest / "ds/ann.json").read_text() == "[]"
    assert not (dest / "ds/old.npy").exists()  # no stale files mixed into the new version
    assert sorted(p.name for p in dest.iterdir()) == ["ds"]


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "ds/../../evil.txt"])
def test_escaping_paths_are_refused_and_nothing_is_written(tmp_path, name):
    dest = tmp_path / "data"
    safe_extract(_zip(tmp_path / "good.zip", {"ds/keep.txt": "good"}), dest)
    bad = _zip(tmp_path / "bad.zip", {"ds/a.txt": "a", name: "evil"})
    with pytest.raises(InputError) as err:
        safe_extract(bad, dest)
    assert "bad.zip" in str(err.value) and "evil.txt" in str(err.value) and "path" in str(err.value)
    assert (dest / "ds/keep.txt").read_text() == "good"
    assert not (dest / "ds/a.txt").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_tar_links_escaping_the_folder_are_refused(tmp_path):
    bad = _tar(tmp_path / "bad.tar.gz", lambda tf: (_add(tf, "ds/f.txt"), _add(tf, "ds/link", type=tarfile.SYMTYPE, linkname="../../etc/passwd")))
    with pytest.raises(InputError, match="ds/link: field 'link'"):
        safe_extract(bad, tmp_path / "data")
    ok = _tar(tmp_path / "ok.tar.gz", lambda tf: (_add(tf, "ds/f.txt", b"hi"), _add(tf, "ds/alias", type=tarfile.SYMTYPE, linkname="f.txt")))
    safe_extract(ok, tmp_path / "data")
    assert (tmp_path / "data/ds/alias").read_text() == "hi"


def test_truncated_archive_leaves_destination_untouched(tmp_path):
    dest = tmp_path / "data"
    safe_extract(_zip(tmp_path / "good.zip", {"ds/keep.txt": "good"}), dest)
    whole = _zip(tmp_path / "whole.zip", {"ds/big.bin": b"\x01" * 100_000, "ds/keep.txt": "new"}).read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match="cut.zip: -: field 'content': archive is corrupt or truncated") as caught:
        safe_extract(cut, dest)
    assert "\n" not in str(caught.value)
    assert (dest / "ds/keep.txt").read_text() == "good"
    assert [p.name for p in dest.iterdir()] == ["ds"]


def test_neither_zip_nor_tar_is_one_clear_line(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"<html>rate limit exceeded</html>")
    with pytest.raises(InputError, match="junk.tar.gz: -: field 'format': neither a zip nor a readable tar archive") as caught:
        safe_extract(junk, tmp_path / "data")
    assert "\n" not in str(caught.value) and not str(caught.value).endswith(":")
    assert not (tmp_path / "data").exists()
