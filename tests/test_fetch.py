"""The fetch stage against real servers on 127.0.0.1: an HTTP server in a thread and moto_server."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from s3server import MotoServer
from talbench.data.fetch import DownloadError, download, drive_file_id, fetch_archive, prepare_dataset
from talbench.data.registry import ArchiveSpec, Registry, load_params, load_registry
from talbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, large enough to be cut half-way


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class ArchiveServer(ThreadingHTTPServer):
    """Serves `files` by URL path, with Range support; can drop or fail a path's next request."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.fail_once: set[str] = set()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class RangeHandler(BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        if self.path in srv.fail_once:
            srv.fail_once.discard(self.path)
            self.send_error(500)
            return
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if (match := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))) and int(match[1]) < len(data):
            start = int(match[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/html" if self.path.endswith(".html") else "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.path in srv.drop_once:
            # announce the whole body, send half, close: the client sees a cut transfer
            srv.drop_once.discard(self.path)
            body = body[: len(body) // 2]
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[ArchiveServer]:
    srv = ArchiveServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto")) as server:
        yield server


def make_zip(path: Path, members: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


# --- download: http(s) -------------------------------------------------------------------------


def test_http_download(server: ArchiveServer, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = download(server.url("/a.bin"), tmp_path / "a.bin", expected_md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]  # no .part left behind


def test_cut_transfer_resumes_with_a_range_request(server: ArchiveServer, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    server.drop_once.add("/a.bin")
    dest = download(server.url("/a.bin"), tmp_path / "a.bin", expected_md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    (first, _), (second, resume) = server.requests
    assert first == second == "/a.bin"
    assert resume is not None and (match := re.fullmatch(r"bytes=(\d+)-", resume))
    assert 0 < int(match[1]) < len(PAYLOAD)  # asked only for what was missing


def test_server_error_is_retried(server: ArchiveServer, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    server.fail_once.add("/a.bin")
    dest = download(server.url("/a.bin"), tmp_path / "a.bin", progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests) == 2


def test_not_found_is_not_retried(server: ArchiveServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(server.url("/missing.bin"), tmp_path / "a.bin", progress=False)
    assert len(server.requests) == 1
    assert not list(tmp_path.iterdir())


# --- mirrors -----------------------------------------------------------------------------------


def test_failed_mirror_falls_through_to_the_next(
    server: ArchiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files["/b/thumos.zip"] = PAYLOAD
    spec = ArchiveSpec("thumos.zip", md5(PAYLOAD), (server.url("/a/thumos.zip"), server.url("/b/thumos.zip")))
    path = fetch_archive(spec, tmp_path, dataset="thumos14", progress=False)
    assert path == tmp_path / "thumos.zip" and path.read_bytes() == PAYLOAD
    assert [p for p, _ in server.requests] == ["/a/thumos.zip", "/b/thumos.zip"]
    (line,) = capsys.readouterr().err.splitlines()
    assert server.url("/a/thumos.zip") in line and "HTTP 404" in line
    # an archive already there with the right md5 is not downloaded again
    assert fetch_archive(spec, tmp_path, dataset="thumos14", progress=False) == path
    assert len(server.requests) == 2


def test_a_web_page_instead_of_the_file_falls_through(server: ArchiveServer, tmp_path: Path) -> None:
    server.files["/s/share.html"] = b"<html>sign in to download</html>"
    server.files["/thumos.zip"] = PAYLOAD
    spec = ArchiveSpec("thumos.zip", md5(PAYLOAD), (server.url("/s/share.html"), server.url("/thumos.zip")))
    assert fetch_archive(spec, tmp_path, progress=False).read_bytes() == PAYLOAD
    assert not (tmp_path / "thumos.zip.bad-md5").exists()


def test_every_mirror_failing_names_each_mirror_and_reason(server: ArchiveServer, tmp_path: Path) -> None:
    missing = (tmp_path / "nowhere.zip").as_uri()
    spec = ArchiveSpec("thumos.zip", md5(PAYLOAD), (server.url("/thumos.zip"), missing))
    with pytest.raises(InputError) as err:
        fetch_archive(spec, tmp_path / "data", dataset="thumos14", progress=False)
    message = str(err.value)
    assert "thumos.zip" in message and "thumos14" in message and "mirrors" in message
    assert f"{server.url('/thumos.zip')} (HTTP 404" in message
    assert f"{missing} (" in message and "No such file" in message


def test_file_mirror(tmp_path: Path) -> None:
    source = tmp_path / "src" / "thumos.zip"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    spec = ArchiveSpec("thumos.zip", md5(PAYLOAD), (source.as_uri(),))
    assert fetch_archive(spec, tmp_path / "data", progress=False).read_bytes() == PAYLOAD


def test_s3_mirror_through_moto_server(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in moto.env().items():  # boto3's own settings, as a user sets them
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="tal-data")
    s3.put_object(Bucket="tal-data", Key="archives/thumos.zip", Body=PAYLOAD)
    spec = ArchiveSpec("thumos.zip", md5(PAYLOAD), ("s3://tal-data/archives/missing.zip", "s3://tal-data/archives/thumos.zip"))
    assert fetch_archive(spec, tmp_path / "data", progress=False).read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="404"):
        download("s3://tal-data/archives/missing.zip", tmp_path / "x.zip", progress=False)


# --- Google Drive ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "file_id"),
    [
        ("https://drive.google.com/file/d/1zt2eoldshf99vJMDuu8jqxda55dCyhZP/view", "1zt2eoldshf99vJMDuu8jqxda55dCyhZP"),
        ("https://drive.google.com/file/d/1VW8px1Nz9A17i0wMVUfxh6YsPCLVqL-S/view?usp=sharing", "1VW8px1Nz9A17i0wMVUfxh6YsPCLVqL-S"),
        ("https://drive.google.com/open?id=16239kUT2Z-j6S6PXIT1b_31OJi35QW_o", "16239kUT2Z-j6S6PXIT1b_31OJi35QW_o"),
        ("https://drive.google.com/uc?export=download&id=1Z4U_dLuu6_cV5NBIrSzsSDOOj2Uar85X", "1Z4U_dLuu6_cV5NBIrSzsSDOOj2Uar85X"),
        ("https://docs.google.com/uc?id=abc-DEF_123", "abc-DEF_123"),
        ("https://drive.google.com/drive/folders", None),
        ("https://uwmadison.box.com/s/glpuxadymf3gd01m1cj6g5c3bn39qbgr", None),
    ],
)
def test_drive_file_id(url: str, file_id: str | None) -> None:
    assert drive_file_id(url) == file_id


def test_drive_links_go_through_gdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Google cannot be reached from the test machine, so this is the one stand-in: a gdown.download
    # that writes the file where it is told to, recording how it was called.
    import gdown

    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        Path(kwargs["output"]).write_bytes(PAYLOAD)
        return kwargs["output"]

    monkeypatch.setattr(gdown, "download", fake_download)
    url = "https://drive.google.com/file/d/1zt2eoldshf99vJMDuu8jqxda55dCyhZP/view"
    dest = download(url, tmp_path / "thumos.zip", expected_md5=md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    (call,) = calls
    assert call["id"] == "1zt2eoldshf99vJMDuu8jqxda55dCyhZP" and call["quiet"] is True
    assert call["output"] != str(dest)  # written under a temporary name, renamed when complete


# --- prepare_dataset with the real source ------------------------------------------------------


def real_params(tmp_path: Path, archive: Path) -> tuple[Registry, dict[str, Any]]:
    """A params.yaml with source real whose thumos14 archive is `archive`, served by file://."""
    params = yaml.safe_load(PARAMS.read_text())
    params["data"] = {"source": "real", "root": str(tmp_path / "data")}
    params["datasets"]["thumos14"]["archive"] = {"name": "thumos.zip", "md5": md5(archive.read_bytes()), "mirrors": [archive.as_uri()]}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return load_registry(path), load_params(path)[1]


def prepare_thumos(tmp_path: Path, archive: Path) -> Path:
    return prepare_dataset("thumos14", *real_params(tmp_path, archive), progress=False)


@pytest.fixture
def unpacked(tmp_path: Path) -> Path:
    """A good thumos14 already fetched and unpacked under tmp_path/data/real."""
    good = make_zip(tmp_path / "mirror/good.zip", {"thumos/annotations/thumos14.json": "good"})
    root = prepare_thumos(tmp_path, good)
    assert root == tmp_path / "data/real/thumos14/thumos"
    assert (root / "annotations/thumos14.json").read_text() == "good"
    return root


def test_md5_mismatch_keeps_the_file_aside_and_unpacks_nothing(unpacked: Path, tmp_path: Path) -> None:
    release = make_zip(tmp_path / "mirror/v2.zip", {"thumos/annotations/thumos14.json": "v2"})
    registry, params = real_params(tmp_path, release)
    # the registry records the release's md5, but the mirror now serves something else
    tampered = make_zip(tmp_path / "mirror/v2.zip", {"thumos/annotations/thumos14.json": "tampered", "thumos/extra": "x"})
    with pytest.raises(InputError) as err:
        prepare_dataset("thumos14", registry, params, progress=False)
    archive = tmp_path / "data/real/archives/thumos.zip"
    bad = tmp_path / "data/real/archives/thumos.zip.bad-md5"
    assert err.value.path == str(archive) and err.value.item == "thumos14" and err.value.field == "md5"
    assert f"got {md5(tampered.read_bytes())}" in str(err.value) and str(bad) in str(err.value)
    assert bad.read_bytes() == tampered.read_bytes() and not archive.exists()
    assert (unpacked / "annotations/thumos14.json").read_text() == "good"
    assert not (unpacked / "extra").exists()


def test_truncated_archive_fails_to_unpack_and_leaves_earlier_data(unpacked: Path, tmp_path: Path) -> None:
    whole = make_zip(tmp_path / "mirror/whole.zip", {"thumos/annotations/thumos14.json": "new" * 1000})
    truncated = tmp_path / "mirror/truncated.zip"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(InputError) as err:
        prepare_thumos(tmp_path, truncated)  # its md5 is recorded: the download itself is fine
    assert "thumos.zip" in str(err.value) and err.value.field in ("format", "content")
    assert (unpacked / "annotations/thumos14.json").read_text() == "good"


def test_archive_escaping_its_folder_is_refused(unpacked: Path, tmp_path: Path) -> None:
    evil = make_zip(tmp_path / "mirror/evil.zip", {"thumos/annotations/thumos14.json": "evil", "../escaped.txt": "x"})
    with pytest.raises(InputError, match="escapes the target folder"):
        prepare_thumos(tmp_path, evil)
    assert not list(tmp_path.rglob("escaped.txt"))
    assert (unpacked / "annotations/thumos14.json").read_text() == "good"


def test_ego4d_real_explains_the_official_cli(tmp_path: Path) -> None:
    registry = load_registry(PARAMS)
    with pytest.raises(InputError) as err:
        prepare_dataset("ego4d_mq", registry, {"data": {"source": "real"}}, tmp_path)
    message = str(err.value)
    assert "licence" in message and "ego4d_cli" in message
    assert "--datasets annotations slowfast8x8_r101_k400 omnivore_video_swinl_fp16 --benchmarks EM" in message
    assert not (tmp_path / "real").exists()


def test_unknown_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="field 'source'"):
        prepare_dataset("thumos14", load_registry(PARAMS), {"data": {"source": "reel"}}, tmp_path)


# --- prepare_dataset with the synthetic source, and the CLI ------------------------------------


def test_synthetic_twin_is_built_verified_and_unpacked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = load_registry(PARAMS)
    _, params = load_params(PARAMS)
    root = prepare_dataset("anet13_tsp", registry, params, tmp_path / "data")
    assert root == tmp_path / "data/synthetic/anet13_tsp/anet_1.3"
    assert (root / "annotations/anet1.3_tsp_filtered.json").is_file()
    assert len(list((root / "tsp_features").glob("v_*.npy"))) == 90
    assert f"md5 {params['synthetic']['md5']['anet13_tsp']['ci']}, verified" in capsys.readouterr().out


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "components/fetch.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_success_then_wrong_md5(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ok = run_cli("anet13_tsp", "--params", str(PARAMS), "--data-root", str(data))
    assert ok.returncode == 0, ok.stderr
    annotations = data / "synthetic/anet13_tsp/anet_1.3/annotations/anet1.3_tsp_filtered.json"
    before = annotations.read_bytes(), annotations.stat().st_mtime_ns

    params = yaml.safe_load(PARAMS.read_text())
    params["synthetic"]["md5"]["anet13_tsp"]["ci"] = "0" * 32
    wrong = tmp_path / "params.yaml"
    wrong.write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run_cli("anet13_tsp", "--params", str(wrong), "--data-root", str(data))
    assert failed.returncode == 2
    (line,) = failed.stderr.splitlines()
    archive = data / "synthetic/archives/anet13_tsp-ci-seed0.zip"
    assert line.startswith(f"error: {archive}: anet13_tsp: field 'md5': expected {'0' * 32}")
    assert (data / "synthetic/archives/anet13_tsp-ci-seed0.zip.bad-md5").is_file() and not archive.exists()
    assert (annotations.read_bytes(), annotations.stat().st_mtime_ns) == before
