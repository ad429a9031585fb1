"""A real S3-compatible server for the tests: moto_server on a free 127.0.0.1 port, started and
stopped by its PID.

moto keeps its objects in memory only, so a killed moto_server forgets everything: on its own
it cannot stand for a store that keeps its data across a crash (MinIO, S3). With `journal=True`
the server appends every request it receives to a journal (moto's request recorder), before
acting on it, and `restart()` replays the journal into the new process: the restarted server
holds every request the killed one had read in full, as a store that persists to disk would.
moto writes an entry in two pieces, so requests with large bodies must come one at a time while
it journals (`dvc push -j 1`): a restart refuses a journal whose entries are interleaved.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """moto_server in `folder` (its log, its journal); a context manager that stops it on exit."""

    def __init__(self, folder: Path, *, journal: bool = False) -> None:
        self.folder = folder
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.journal = folder / "journal.jsonl" if journal else None
        self.log = folder / "moto.log"  # a line per request answered
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """What a client needs to reach this server through boto3's own settings, and nothing of this machine's."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(self.folder / "no-config"),
                "AWS_SHARED_CREDENTIALS_FILE": str(self.folder / "no-credentials")}

    def client(self) -> Any:
        import boto3

        env = self.env()
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=env["AWS_DEFAULT_REGION"],
                            aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])

    def start(self) -> None:
        env = dict(os.environ)
        if self.journal:
            env |= {"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.journal)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.endpoint, timeout=1)
                return
            except requests.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto_server did not start on port {self.port}: see {self.log}") from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crash: no chance to finish a request or flush anything."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """A new process on the same port, holding what the journal says the old one had received."""
        assert self.journal is not None and self.proc is None
        self._drop_torn_tail()
        self.start()
        requests.post(f"{self.endpoint}/moto-api/recorder/replay-recording", timeout=300).raise_for_status()

    def _drop_torn_tail(self) -> None:
        # a kill can land in the middle of writing an entry: that request was never acted on
        assert self.journal is not None
        if not self.journal.exists():
            return
        lines = self.journal.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                if number < len(lines):
                    raise RuntimeError(f"{self.journal}: line {number}: entries interleaved (requests came at once)") from None
                lines.pop()
        self.journal.write_text("".join(line + "\n" for line in lines))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # by its own PID, through the Popen handle
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
