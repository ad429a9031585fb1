"""A real local Airflow for talbench: api-server, scheduler (LocalExecutor), dag-processor and
triggerer, each in its own process group, configured by `airflow.cfg` in one folder.

    .venv/bin/python infra/airflow/local.py start --home /tmp/talbench-airflow --port 8080
    .venv/bin/python infra/airflow/local.py token --home /tmp/talbench-airflow --port 8080
    .venv/bin/python infra/airflow/local.py stop --home /tmp/talbench-airflow

or, from Python: `with start(home, port) as server: server.api("GET", "/api/v2/dags")`.

The folder holds `airflow.cfg` (our settings are rewritten on every start; secrets and anything
else added there are kept), `airflow.db` (SQLite), `logs/<service>.log`, `pids.json` and the
simple auth manager's generated password for the user `admin`. Only the standard library and
psutil here: Airflow runs in the child processes.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import psutil

PROJECT = Path(__file__).resolve().parents[2]
AIRFLOW = [sys.executable, "-m", "airflow"]
# logs are files on this machine: no log servers, which would all want ports 8793/8794
SERVICES = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
HEALTH = {"metadatabase": "api-server", "scheduler": "scheduler", "dag_processor": "dag-processor", "triggerer": "triggerer"}
USER = "admin"
PASSWORDS = "simple_auth_manager_passwords.json.generated"
PIDS = "pids.json"
SECRETS: dict[tuple[str, str], Callable[[], str]] = {
    ("core", "fernet_key"): lambda: base64.urlsafe_b64encode(os.urandom(32)).decode(),
    ("api", "secret_key"): lambda: secrets.token_urlsafe(32),
    ("api_auth", "jwt_secret"): lambda: secrets.token_urlsafe(64),  # shared by the scheduler and the API
}


def client_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def settings(home: Path, host: str, port: int, parallelism: int) -> dict[str, dict[str, str]]:
    return {
        "core": {
            "dags_folder": str(PROJECT / "dags"),
            "load_examples": "False",
            "executor": "LocalExecutor",
            "parallelism": str(parallelism),
            "execution_api_server_url": f"http://{client_host(host)}:{port}/execution/",
            "auth_manager": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
            "simple_auth_manager_users": f"{USER}:admin",
            "simple_auth_manager_all_admins": "False",
            "simple_auth_manager_passwords_file": str(home / PASSWORDS),
        },
        "database": {"sql_alchemy_conn": f"sqlite:///{home / 'airflow.db'}"},
        "api": {"host": host, "port": str(port), "workers": "1"},
    }


def write_config(home: Path, host: str, port: int, parallelism: int) -> dict[str, dict[str, str]]:
    path = home / "airflow.cfg"
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(path)
    ours = settings(home, host, port, parallelism)
    for section, values in ours.items():
        if not cfg.has_section(section):
            cfg.add_section(section)
        cfg[section].update(values)
    for (section, key), make in SECRETS.items():
        if not cfg.has_section(section):
            cfg.add_section(section)
        if not cfg.get(section, key, fallback=""):
            cfg.set(section, key, make())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        cfg.write(out)
    return ours


def airflow_env(home: Path, ours: Mapping[str, Mapping[str, str]], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The services' environment: `base` (default: ours, so TALBENCH_WORKSPACES, MLFLOW_TRACKING_URI and
    TALBENCH_TRAIN_POOL pass through) without the AIRFLOW__ variables of the settings we write,
    which would silently win over airflow.cfg."""
    managed = {f"AIRFLOW__{s.upper()}__{k.upper()}" for s, values in ours.items() for k in values}
    managed |= {f"AIRFLOW__{s.upper()}__{k.upper()}" for s, k in SECRETS}
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k != "AIRFLOW_CONFIG" and k.removesuffix("_CMD").removesuffix("_SECRET") not in managed}
    env["AIRFLOW_HOME"] = str(home)
    if env.get("TALBENCH_WORKSPACES"):  # the tasks' working directory is not ours
        env["TALBENCH_WORKSPACES"] = str(Path(env["TALBENCH_WORKSPACES"]).resolve())
    return env


# ---------------------------------------------------------------- processes


def _record(pid: int) -> dict[str, float]:
    return {"pid": pid, "created": psutil.Process(pid).create_time()}


def _ours(records: Mapping[str, Mapping[str, float]]) -> list[psutil.Process]:
    """The processes of the recorded groups and all their descendants, the task runners that Airflow
    puts in groups of their own included. A recorded PID now used by another program (another start
    time) is not ours."""
    groups = set()
    for rec in records.values():
        try:
            if abs(psutil.Process(int(rec["pid"])).create_time() - rec["created"]) > 1:
                continue
        except psutil.NoSuchProcess:
            pass  # the leader is gone; its group's other members are still ours
        groups.add(int(rec["pid"]))
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in groups:
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except (psutil.Error, OSError):
            pass
    return list(found.values())


def _running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.NoSuchProcess:
            pass
    return alive


def _pgid(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


def terminate(records: Mapping[str, Mapping[str, float]], timeout: float = 20.0,
              children: Mapping[str, subprocess.Popen] | None = None) -> list[int]:
    """SIGTERM to the recorded process groups and their descendants' groups, SIGKILL to what is left
    after `timeout` s; returns the PIDs that were still running at SIGKILL."""
    procs: dict[int, psutil.Process] = {}
    killed: list[int] = []
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        deadline, signalled = time.monotonic() + wait, {os.getpgrp()}
        while True:
            # looked for again each time: a task runner forked meanwhile is in a new group, and once its
            # supervisor is gone it is nobody's descendant any more
            procs.update((p.pid, p) for p in _ours(records))
            alive = _running(procs.values())
            if sig == signal.SIGKILL and not killed:
                killed = [p.pid for p in alive]
            for pgid in {g for p in alive if (g := _pgid(p)) is not None} - signalled:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
                signalled.add(pgid)
            if not alive or time.monotonic() > deadline:
                break
            for child in (children or {}).values():
                child.poll()  # reap our own children
            time.sleep(0.2)
        if not alive:
            break
    for child in (children or {}).values():
        child.poll()
    return killed


def read_pids(home: Path) -> dict[str, dict[str, float]]:
    path = home / PIDS
    return json.loads(path.read_text()) if path.is_file() else {}


def stop(home: str | Path, timeout: float = 20.0, children: Mapping[str, subprocess.Popen] | None = None) -> list[int]:
    """Stop the services recorded in `home`/pids.json, then forget them."""
    home = Path(home).resolve()
    killed = terminate(read_pids(home), timeout, children)
    (home / PIDS).unlink(missing_ok=True)
    return killed


# ---------------------------------------------------------------- the server


class Server:
    """A started (or, with `connect`, a running) local Airflow: its URL, API calls with a token, stop()."""

    def __init__(self, home: Path, url: str, children: Mapping[str, subprocess.Popen] | None = None) -> None:
        self.home, self.url = home, url
        self.children = dict(children or {})
        self._token: str | None = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pids(self) -> dict[str, int]:
        return {name: int(rec["pid"]) for name, rec in read_pids(self.home).items()}

    def log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    def api(self, method: str, path: str, body: Any = None, *, auth: bool = True, token: str | None = None,
            timeout: float = 30.0) -> tuple[int, Any]:
        """One REST call, with `token` or a token of ours unless `auth` is false: (HTTP status, the
        JSON answer, or its text when it is not JSON). Never raises for a status."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            if token is None:
                self._token = token = self._token or self.token()
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def token(self) -> str:
        """A new bearer token for `admin` (POST /auth/token with the generated password)."""
        password = json.loads((self.home / PASSWORDS).read_text())[USER]
        status, body = self.api("POST", "/auth/token", {"username": USER, "password": password}, auth=False)
        if status not in (200, 201) or not isinstance(body, dict):
            raise RuntimeError(f"POST {self.url}/auth/token: HTTP {status}: {body}")
        return str(body["access_token"])

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        status: dict[str, str] = {}
        while time.monotonic() < deadline:
            for name, child in self.children.items():
                if child.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited with code {child.returncode}: read {self.log(name)}")
            try:
                code, body = self.api("GET", "/api/v2/monitor/health", auth=False, timeout=5)
            except OSError:  # not listening yet
                code, body = 0, None
            status = {k: (v or {}).get("status") or "none" for k, v in body.items()} if code == 200 and isinstance(body, dict) else {}
            if status and all(s == "healthy" for s in status.values()):
                return
            time.sleep(1)
        bad = [k for k in HEALTH if status.get(k) != "healthy"] if status else ["metadatabase"]
        said = ", ".join(f"{k}: {status.get(k, 'no answer')}" for k in bad)
        raise TimeoutError(f"Airflow at {self.url} is not healthy after {timeout:.0f} s ({said}): read "
                           + ", ".join(str(self.log(HEALTH[k])) for k in bad))

    def set_pool(self, name: str, slots: int) -> None:
        body = {"actions": [{"action": "create", "action_on_existence": "overwrite",
                             "entities": [{"name": name, "slots": slots, "description": "talbench training"}]}]}
        status, answer = self.api("PATCH", "/api/v2/pools", body)
        if status != 200 or (answer or {}).get("create", {}).get("errors"):
            raise RuntimeError(f"PATCH {self.url}/api/v2/pools ({name}: {slots} slots): HTTP {status}: {answer}")

    def stop(self, timeout: float = 20.0) -> list[int]:
        return stop(self.home, timeout, self.children)


def connect(home: str | Path, port: int | None = None) -> Server:
    """The server started in `home` (host and port from its airflow.cfg unless `port` is given)."""
    home = Path(home).resolve()
    cfg = configparser.ConfigParser(interpolation=None)
    if not cfg.read(home / "airflow.cfg"):
        raise FileNotFoundError(f"{home / 'airflow.cfg'}: no Airflow was started in {home}")
    return Server(home, f"http://{client_host(cfg.get('api', 'host'))}:{port or cfg.getint('api', 'port')}")


def start(home: str | Path, port: int, *, host: str | None = None, parallelism: int = 4, train_slots: int = 1,
          env: Mapping[str, str] | None = None, timeout: float = 180.0) -> Server:
    """Configure and start Airflow in `home` on `host`:`port`; return once it is healthy and the
    training pool (TALBENCH_TRAIN_POOL, default talbench_train) has `train_slots` slots."""
    home = Path(home).resolve()
    host = host or os.environ.get("TALBENCH_AIRFLOW_HOST", "127.0.0.1")
    (home / "logs").mkdir(parents=True, exist_ok=True)
    if running := _running(_ours(read_pids(home))):
        raise RuntimeError(f"Airflow is already running from {home} (PIDs {sorted(p.pid for p in running)}): stop it first")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise RuntimeError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    child_env = airflow_env(home, write_config(home, host, port, parallelism), env)
    with open(home / "logs" / "db-migrate.log", "wb") as out:
        if subprocess.run([*AIRFLOW, "db", "migrate"], env=child_env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, timeout=600).returncode:
            raise RuntimeError(f"airflow db migrate failed: read {home / 'logs' / 'db-migrate.log'}")
    server = Server(home, f"http://{client_host(host)}:{port}")
    try:
        for name, args in SERVICES.items():
            with open(server.log(name), "ab") as out:
                server.children[name] = subprocess.Popen(
                    [*AIRFLOW, *args], env=child_env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True)  # its own process group, leader = its PID
            (home / PIDS).write_text(json.dumps({n: _record(c.pid) for n, c in server.children.items()}, indent=1))
        server.wait_healthy(timeout)
        server.set_pool(child_env.get("TALBENCH_TRAIN_POOL", "talbench_train"), train_slots)
    except BaseException:
        server.stop()
        raise
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local Airflow for talbench (api-server, scheduler, dag-processor, triggerer).")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "token"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--home", required=True, type=Path, help="AIRFLOW_HOME: config, SQLite database, logs, pids.json")
        if name == "start":
            cmd.add_argument("--port", required=True, type=int)
            cmd.add_argument("--host", default=None, help="address to listen on (default: $TALBENCH_AIRFLOW_HOST or 127.0.0.1)")
            cmd.add_argument("--parallelism", type=int, default=4, help="tasks running at once (default 4)")
            cmd.add_argument("--train-slots", type=int, default=1, help="slots of the training pool (default 1)")
        elif name == "token":
            cmd.add_argument("--port", type=int, default=None, help="default: the port in HOME/airflow.cfg")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            server = start(args.home, args.port, host=args.host, parallelism=args.parallelism, train_slots=args.train_slots)
            print(f"Airflow is up: {server.url} (user {USER}, password in {server.home / PASSWORDS})")
            print(f"logs: {server.home / 'logs'}/<service>.log; stop: {os.path.relpath(__file__)} stop --home {server.home}")
        elif args.command == "stop":
            killed = stop(args.home)
            print(f"stopped{f' (killed {killed} after SIGTERM)' if killed else ''}")
        else:
            print(connect(args.home, args.port).token())
    except (RuntimeError, TimeoutError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
