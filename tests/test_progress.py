"""Progress in logs: plain, newline-terminated, throttled lines when stderr is not a terminal."""

from __future__ import annotations

import io
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from talbench import progress as progress_module
from talbench.progress import PROGRESS_ENV, PROGRESS_SECONDS, Progress, format_duration, progress_seconds

ROOT = Path(__file__).resolve().parents[1]
ESCAPE = re.compile(r"\x1b|\r")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain(label="train", total=100, interval=5.0, **kw):
    stream, clock = io.StringIO(), FakeClock()
    return Progress(label, total, stream=stream, tty=False, interval=interval, clock=clock, **kw), stream, clock


def assert_clean(text: str) -> list[str]:
    assert text.endswith("\n")
    assert not ESCAPE.search(text), repr(text)
    lines = text.splitlines()
    assert all(0 < len(line) <= 300 for line in lines)
    return lines


def test_at_most_one_line_per_interval_then_a_summary():
    bar, stream, clock = plain(counter="step")
    emitted = []
    for step in range(100):
        clock.now += 0.3  # 30 s in all: at most 6 lines at 5 s
        bar.update(1, desc=f"epoch {step // 10 + 1}/10", detail="loss 1.234 (cls 0.800, reg 0.400), lr 1.0e-03")
        emitted.append((clock.now, stream.getvalue().count("\n")))
    bar.close("final loss 0.512")
    lines = assert_clean(stream.getvalue())
    times = [t for (t, n), (_, before) in zip(emitted, [(0, 0)] + emitted) if n > before]
    assert all(b - a >= 5.0 for a, b in zip(times, times[1:]))
    assert 4 <= len(lines) - 1 <= 6
    assert re.fullmatch(r"train: epoch \d+/10, step \d+/100 \(\d+%\), loss 1\.234 \(cls 0\.800, reg 0\.400\), "
                        r"lr 1\.0e-03, [\d.]+ it/s, ETA \S+", lines[0]), lines[0]
    assert lines[-1] == "train: 100 steps in 30s (3.33 it/s), final loss 0.512"


def test_nothing_before_the_first_interval_and_only_the_summary_for_a_short_loop():
    bar, stream, clock = plain(label="inference", total=3, unit="video")
    for _ in range(3):
        clock.now += 1.0
        bar.update()
    bar.close()
    assert stream.getvalue() == "inference: 3 videos in 3.0s (1.00 videos/s)\n"


def test_inference_and_download_lines_read_as_documented():
    bar, stream, clock = plain(label="inference", total=120, unit="video")
    clock.now += 12.5
    bar.update(40)
    assert stream.getvalue() == "inference: 40/120 videos (33%), 3.20 videos/s, ETA 25s\n"

    bar, stream, clock = plain(label="download thumos.zip", total=400_000_000, unit="B", initial=50_000_000)
    clock.now += 10
    bar.update(70_500_000)
    clock.now += 2
    bar.close()
    lines = assert_clean(stream.getvalue())
    assert lines[0] == "download thumos.zip: 120.5/400.0 MB (30%), 7.05 MB/s, ETA 40s"
    assert lines[1] == "download thumos.zip: 70.5 MB in 12s (5.88 MB/s), resumed at 50.0 MB"


def test_unknown_total_and_a_failed_loop():
    bar, stream, clock = plain(label="download x.zip", total=None, unit="B")
    with pytest.raises(OSError):
        with bar:
            clock.now += 6
            bar.update(3_000_000)
            raise OSError("connection reset")
    assert stream.getvalue() == "download x.zip: 3.0 MB, 0.50 MB/s\n"  # no summary for a transfer that failed
    bar.update(1)
    bar.close()
    assert stream.getvalue().count("\n") == 1


def test_disabled_writes_nothing(capsys):
    bar = Progress("train", 10, enabled=False)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_a_tqdm_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = Progress("inference", 5, unit="video", stream=stream)
    assert bar.bar is not None
    for _ in range(5):
        bar.update()
    bar.close()
    assert "\r" in stream.getvalue() and "5/5" in stream.getvalue()


def test_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_seconds() == PROGRESS_SECONDS == 5.0
    monkeypatch.setenv(PROGRESS_ENV, "0.5")
    assert progress_seconds() == 0.5
    assert Progress("x", 1, stream=io.StringIO()).interval == 0.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(PROGRESS_ENV, bad)
        assert progress_seconds() == PROGRESS_SECONDS


@pytest.mark.parametrize("seconds,text", [(0.42, "0.4s"), (25, "25s"), (370, "6m10s"), (422, "7m02s"), (3900, "1h05m")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def test_every_caller_uses_the_reporter_not_tqdm():
    for path in ("talbench/training.py", "talbench/inference.py", "talbench/data/fetch.py"):
        assert not re.search(r"from tqdm|import tqdm", (ROOT / path).read_text()), path
    assert progress_module.TTY_MININTERVAL_S <= 0.1


class _Payload(BaseHTTPRequestHandler):
    body = bytes(range(256)) * 1200  # 307,200 bytes: five chunks of fetch.CHUNK_BYTES

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_: object) -> None:
        pass


def test_http_download_progress_in_a_log(tmp_path, monkeypatch, capsys):
    from talbench.data.fetch import download

    monkeypatch.setenv(PROGRESS_ENV, "0")  # a line per chunk
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Payload)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        download(f"http://127.0.0.1:{server.server_port}/thumos.zip", tmp_path / "thumos.zip", retries=0)
    finally:
        server.shutdown()
        server.server_close()
    lines = assert_clean(capsys.readouterr().err)
    assert re.fullmatch(r"download thumos\.zip: 0\.\d/0\.3 MB \(\d+%\)(, [\d.]+ MB/s, ETA \S+)?", lines[0]), lines[0]
    assert re.fullmatch(r"download thumos\.zip: 0\.3 MB in \S+ \([\d.]+ MB/s\)", lines[-1]), lines[-1]
    assert (tmp_path / "thumos.zip").read_bytes() == _Payload.body


def test_s3_download_progress_from_several_threads(tmp_path, monkeypatch, capsys):
    import boto3

    from talbench.data.fetch import download

    class FakeS3:
        def head_object(self, Bucket, Key):
            return {"ContentLength": 8 * 250_000}

        def download_file(self, bucket, key, filename, Callback):
            Path(filename).write_bytes(b"\0" * 8 * 250_000)
            threads = [threading.Thread(target=Callback, args=(250_000,)) for _ in range(8)]  # as boto3's transfer threads do
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    monkeypatch.setattr(boto3, "client", lambda *a, **k: FakeS3())
    monkeypatch.setenv(PROGRESS_ENV, "0")
    download("s3://bucket/archives/anet.zip", tmp_path / "anet.zip")
    lines = assert_clean(capsys.readouterr().err)
    assert len(lines) == 9 and lines[-2].startswith("download anet.zip: 2.0/2.0 MB (100%), ")
    assert lines[-1].startswith("download anet.zip: 2.0 MB in ")
