"""infra/compose.yaml brought up for real with podman-compose on images built here: the project image
serves Airflow, MLflow and (moto_server) the S3 store, PostgreSQL comes from Debian's package
(infra/docker/postgres). Steps run in containers of the project image that the scheduler starts
through a Docker-API socket (`podman system service`, started and stopped here by PID).

One `talbench_benchmark` run of one `ci` experiment is triggered through Airflow's REST API; it must
succeed, its MLflow run must be on the tracking server and its artefacts objects in the S3 bucket.
Then the stack comes down and nothing of it is left.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from containers import image_build, podman_env, project_image, require_podman

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "infra" / "compose.yaml"
S3_PORT = ROOT / "infra" / "compose.s3-port.yaml"  # the opt-in override that publishes the S3 store
ENV_EXAMPLE = ROOT / "infra" / ".env.example"
POSTGRES = ROOT / "infra" / "docker" / "postgres"
PODMAN_COMPOSE = Path(sys.executable).parent / "podman-compose"
DAG = "talbench_benchmark"
EXPERIMENT = "thumos14-i3d"
# one training of one epoch, without warm-up, a shorter NMS: about a minute of stages on 2 cores
CONF = {"experiments": [EXPERIMENT], "epochs": 1, "seeds": [0], "runner": "docker",
        "overrides": {"opt": {"warmup_epochs": 0}, "test_cfg": {"pre_nms_topk": 500, "max_seg_num": 100}}}
RUN_TIMEOUT = 420


def system_test(test):
    """A test of the running stack: podman, minutes; the first one also waits for the project
    image, which a fresh machine builds (shared with test_image.py)."""
    return pytest.mark.container(pytest.mark.slow(pytest.mark.timeout(2400)(test)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def podman(*args: str, check: bool = True) -> str:
    done = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=600)
    assert not check or done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def postgres_image(base: str) -> str:
    """infra/docker/postgres built on the project's Debian base, tagged by a hash of its inputs."""
    digest = hashlib.sha256(podman("image", "inspect", "--format", "{{.Id}}", base).encode())
    for name in ("Dockerfile", "entrypoint.sh"):
        digest.update((POSTGRES / name).read_bytes())
    tag = f"localhost/talbench-postgres:{digest.hexdigest()[:12]}"
    if subprocess.run(["podman", "image", "exists", tag], env=podman_env()).returncode != 0:
        podman("build", "-q", "-t", tag, "--build-arg", f"BASE_IMAGE={base}", str(POSTGRES))
    return tag


def secret() -> str:
    return secrets.token_urlsafe(24)


def write_env(path: Path, values: dict[str, Any]) -> None:
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()), encoding="utf-8")
    path.chmod(0o600)


class Stack:
    """The compose project: podman-compose with our files, the REST APIs on the published ports."""

    def __init__(self, folder: Path, env: dict[str, Any]) -> None:
        self.folder, self.env, self.project = folder, env, env["TALBENCH_NETWORK"]
        self.airflow = f"http://127.0.0.1:{env['AIRFLOW_PORT']}"
        self.mlflow = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
        self._token: str | None = None
        self.up = False

    def compose(self, *args: str, files: tuple[str, ...] = ("override.yaml", str(S3_PORT)),
                timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """podman-compose on infra/compose.yaml with our override files and .env (in the stack's folder)."""
        # a clean environment: the .env file, not the developer's shell, says what the stack gets
        podman_settings = {k: v for k, v in podman_env().items() if k.startswith("CONTAINERS_")}  # conf, storage
        env = {"PATH": os.environ["PATH"], "HOME": str(self.folder), **podman_settings}
        overrides = [arg for name in files for arg in ("-f", str(self.folder / name))]
        argv = [str(PODMAN_COMPOSE), "--project-name", self.project, "-f", str(COMPOSE), *overrides,
                "--env-file", str(self.folder / ".env"), *args]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)

    def logs(self, service: str) -> str:
        done = subprocess.run(["podman", "logs", "--tail", "40", f"{self.project}_{service}_1"], env=podman_env(),
                              capture_output=True, text=True, timeout=60)
        return f"--- {service}\n{done.stdout}{done.stderr}"

    def request(self, url: str, body: Any = None, method: str | None = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def token(self) -> str:
        """The admin's token, for the password of the .env."""
        if self._token is None:
            status, answer = self.request(f"{self.airflow}/auth/token", {
                "username": "admin", "password": self.env["AIRFLOW_ADMIN_PASSWORD"]})
            assert status in (200, 201), f"POST /auth/token: HTTP {status}: {answer}"
            self._token = answer["access_token"]
        return self._token

    def api(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.request(self.airflow + path, body, method, self.token())
        assert 200 <= status < 300, f"{method} {path}: HTTP {status}: {answer}"
        return answer

    def down(self) -> None:
        """Step containers a failed run left are ours too; then compose's down, volumes included."""
        for name in podman("ps", "-a", "--filter", f"network={self.project}", "--format", "{{.Names}}").split():
            if not name.startswith(f"{self.project}_"):
                podman("rm", "-f", name, check=False)
        done = self.compose("down", "-v", "-t", "20")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        self.up = False

    def wait_until(self, what: str, ready, timeout: float, services: tuple[str, ...]) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                pytest.fail(f"{what} not ready after {timeout:.0f} s\n" + "\n".join(map(self.logs, services)))
            time.sleep(2)


def healthy(stack: Stack) -> bool:
    try:
        status, body = stack.request(f"{stack.airflow}/api/v2/monitor/health")
        mlflow, _ = stack.request(f"{stack.mlflow}/health")
    except OSError:  # not listening yet
        return False
    return status == 200 and mlflow == 200 and all((v or {}).get("status") == "healthy" for v in body.values())


def init_done(stack: Stack) -> bool:
    """`init` (migration, pool, buckets) has exited 0; a failed one fails the test with its log."""
    state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", f"{stack.project}_init_1").split()
    if state[0] == "exited" and state[1] != "0":
        pytest.fail(f"init exited {state[1]}\n{stack.logs('init')}")
    return state == ["exited", "0"]


def left_over(project: str) -> dict[str, str]:
    """What podman still holds of the project: containers (the stack's and the steps'), its network, its volumes."""
    return {
        "containers": podman("ps", "-a", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Names}}")
        + podman("ps", "-a", "--filter", f"network={project}", "--format", "{{.Names}}"),
        "networks": podman("network", "ls", "--filter", f"name=^{project}$", "--format", "{{.Name}}"),
        "volumes": podman("volume", "ls", "--filter", f"label=io.podman.compose.project={project}", "--format", "{{.Name}}"),
    }


@pytest.fixture(scope="module")
def docker_socket(tmp_path_factory) -> Iterator[Path]:
    """podman's Docker-compatible API on a socket of ours, for the scheduler's DockerOperator."""
    socket_path = tmp_path_factory.mktemp("engine") / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket_path}"], env=podman_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not socket_path.is_socket():
            assert service.poll() is None and time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.2)
        socket_path.chmod(0o660)  # for its group (DOCKER_GID): the scheduler's user is not root
        yield socket_path
    finally:
        service.terminate()
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_socket) -> Iterator[Stack]:
    image = project_image()
    folder = tmp_path_factory.mktemp("compose")
    workspaces = folder / "workspaces"
    workspaces.mkdir()
    user = podman("image", "inspect", "--format", "{{.Config.User}}", image).strip() or "0"
    uid, _, gid = user.partition(":")
    os.chown(workspaces, int(uid), int(gid or uid))  # the image's user writes the runs there
    project = f"talbench-compose-{secrets.token_hex(3)}"
    env = {
        "POSTGRES_PASSWORD": secret(), "AIRFLOW_DB_PASSWORD": secret(), "MLFLOW_DB_PASSWORD": secret(),
        "AIRFLOW_ADMIN_PASSWORD": secret(), "AIRFLOW_SECRET_KEY": secret(), "AIRFLOW_JWT_SECRET": secret(),
        "AIRFLOW_FERNET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "S3_ACCESS_KEY": secret(), "S3_SECRET_KEY": secret(),
        "TALBENCH_WORKSPACES": workspaces, "DOCKER_SOCKET": docker_socket, "DOCKER_GID": docker_socket.stat().st_gid,
        "TALBENCH_GPUS": 0, "TALBENCH_TRAIN_SLOTS": 1, "AIRFLOW_PARALLELISM": 2,
        "TALBENCH_IMAGE": image, "S3_IMAGE": image, "POSTGRES_IMAGE": postgres_image(image_build().CPU_BASE),
        "TALBENCH_NETWORK": project, "AIRFLOW_PORT": free_port(), "MLFLOW_PORT": free_port(), "S3_PORT": free_port(),
    }
    write_env(folder / ".env", env)
    # the S3 store here is moto's standalone server in the project image, in place of MinIO
    (folder / "override.yaml").write_text(
        "services:\n  s3:\n    command: [moto_server, -H, 0.0.0.0, -p, '9000']\n", encoding="utf-8")
    srv = Stack(folder, env)
    try:
        started, srv.up = time.monotonic(), True
        up = srv.compose("up", "-d")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        srv.wait_until("init", lambda: init_done(srv), 240, ("postgres", "init"))
        srv.wait_until("the stack", lambda: healthy(srv), 240, ("airflow-apiserver", "airflow-scheduler", "mlflow"))
        srv.wait_until(f"DAG {DAG}", lambda: srv.request(f"{srv.airflow}/api/v2/dags/{DAG}", token=srv.token())[0] == 200,
                       180, ("airflow-dag-processor",))
        print(f"stack up and healthy in {time.monotonic() - started:.0f} s")
        yield srv
    finally:
        if srv.up:  # test_down_leaves_nothing did not run or failed before its down
            srv.down()


# ---------------------------------------------------------------- the files


def test_env_example_lists_every_variable_the_compose_file_reads():
    used = {name for path in (COMPOSE, S3_PORT)
            for name in re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", path.read_text(encoding="utf-8"))}
    listed = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))
    assert used == listed, {"not in .env.example": sorted(used - listed), "not in compose.yaml": sorted(listed - used)}


def test_the_postgres_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), str(POSTGRES / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.container  # podman-compose asks podman for its version
def test_a_missing_secret_stops_compose_with_its_name(tmp_path):
    require_podman()
    values = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), re.M))
    values = {key: value or "x" for key, value in values.items()} | {"TALBENCH_WORKSPACES": tmp_path}
    write_env(tmp_path / ".env", values)
    stack = Stack(tmp_path, {**values, "TALBENCH_NETWORK": "talbench", "AIRFLOW_PORT": 8080, "MLFLOW_PORT": 5000})
    assert stack.compose("config", files=()).returncode == 0
    write_env(tmp_path / ".env", {key: value for key, value in values.items() if key != "POSTGRES_PASSWORD"})
    done = stack.compose("config", files=())
    assert done.returncode != 0
    assert "POSTGRES_PASSWORD is missing a value: set POSTGRES_PASSWORD in infra/.env" in done.stderr


# ---------------------------------------------------------------- the run


def task_log_tail(stack: Stack, run_path: str, ti: dict) -> str:
    path = f"{run_path}/taskInstances/{ti['task_id']}/logs/{max(ti['try_number'], 1)}?map_index={ti['map_index']}"
    status, answer = stack.request(stack.airflow + path, token=stack.token())
    lines = [f"{e.get('event', '')}" for e in answer.get("content", [])] if status == 200 and isinstance(answer, dict) \
        else [f"HTTP {status}: {answer}"]
    return f"--- {ti['task_id']}[{ti['map_index']}] ({ti['state']})\n" + "\n".join(lines[-40:])


def run_task_instances(stack: Stack, run_path: str) -> list[dict]:
    return stack.api("GET", f"{run_path}/taskInstances?limit=100")["task_instances"]


@pytest.fixture(scope="module")
def benchmark_run(stack) -> dict:
    """One talbench_benchmark run through the REST API, waited for; its task instances."""
    stack.api("PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    run_id = stack.api("POST", f"/api/v2/dags/{DAG}/dagRuns", {"logical_date": None, "conf": CONF})["dag_run_id"]
    run_path = f"/api/v2/dags/{DAG}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    started, deadline = time.monotonic(), time.monotonic() + RUN_TIMEOUT
    while (state := stack.api("GET", run_path)["state"]) not in ("success", "failed"):
        if time.monotonic() > deadline:
            break
        time.sleep(3)
    tis = run_task_instances(stack, run_path)
    if state != "success":
        bad = [ti for ti in tis if ti["state"] not in ("success", "skipped")]
        pytest.fail(f"run {run_id} {state} after {time.monotonic() - started:.0f} s\n"
                    + "\n".join(task_log_tail(stack, run_path, ti) for ti in bad)
                    + "\n" + stack.logs("airflow-scheduler"))
    print(f"benchmark run {run_id}: success in {time.monotonic() - started:.0f} s")
    return {"run_id": run_id, "path": run_path, "task_instances": tis}


@system_test
def test_the_api_wants_a_token_and_takes_the_env_files_password(stack):
    assert stack.request(f"{stack.airflow}/api/v2/dags/{DAG}")[0] in (401, 403)
    status, _ = stack.request(f"{stack.airflow}/auth/token", {"username": "admin", "password": "not-the-password"})
    assert status in (401, 403)
    assert stack.api("GET", f"/api/v2/dags/{DAG}")["dag_id"] == DAG


def test_compose_yaml_publishes_only_the_uis_on_loopback():
    import yaml

    published = {name: service["ports"] for name, service in yaml.safe_load(COMPOSE.read_text())["services"].items()
                 if service.get("ports")}
    assert set(published) == {"airflow-apiserver", "mlflow"}
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports), published
    override = yaml.safe_load(S3_PORT.read_text())["services"]
    assert list(override) == ["s3"] and all(p.startswith("127.0.0.1:") for p in override["s3"]["ports"])


@system_test
def test_only_the_uis_and_the_opted_in_s3_publish_ports_on_loopback(stack):
    published = {}
    for line in podman("ps", "--filter", f"label=io.podman.compose.project={stack.project}",
                       "--format", "{{.Names}} {{.Ports}}").splitlines():
        name, _, ports = line.partition(" ")
        if ports.strip():
            published[name.removeprefix(f"{stack.project}_").removesuffix("_1")] = ports.strip()
    assert set(published) == {"airflow-apiserver", "mlflow", "s3"}
    assert all(ports.startswith("127.0.0.1:") and "," not in ports for ports in published.values()), published


@system_test
def test_a_benchmark_run_succeeds_with_its_steps_in_containers(stack, benchmark_run):
    tis = benchmark_run["task_instances"]
    train = next(ti for ti in tis if ti["task_id"] == "train")
    log = task_log_tail(stack, benchmark_run["path"], train)
    assert f"docker: {stack.env['TALBENCH_IMAGE']}: $ cd " in log, log  # the docker runner ran it
    workspace = Path(stack.env["TALBENCH_WORKSPACES"]) / workspace_folder(benchmark_run["run_id"])
    assert (workspace / "reports" / "benchmark" / "benchmark.html").is_file()  # the results are on the host
    # the report links runs at the UI address a browser on the box opens, not the stack's internal name
    report = (workspace / "reports" / "benchmark" / "benchmark.md").read_text(encoding="utf-8")
    assert f"({stack.mlflow}/#/experiments/" in report and "http://mlflow:5000" not in report
    assert (workspace / "outputs" / EXPERIMENT / "metrics.json").is_file()
    # every step container ran to success and was removed: only the stack's own are on its network
    on_network = podman("ps", "-a", "--filter", f"network={stack.project}", "--format", "{{.Names}}").split()
    assert [name for name in on_network if not name.startswith(f"{stack.project}_")] == []


def workspace_folder(run_id: str) -> str:
    from talbench.orchestration import workspace_name

    return workspace_name(run_id)


@system_test
def test_the_mlflow_run_is_on_the_server_and_its_artefacts_in_s3(stack, benchmark_run):
    import boto3

    workspace = Path(stack.env["TALBENCH_WORKSPACES"]) / workspace_folder(benchmark_run["run_id"])
    record = json.loads((workspace / "outputs" / EXPERIMENT / "mlflow.json").read_text())
    assert record["tracking_uri"] == "http://mlflow:5000"
    status, answer = stack.request(f"{stack.mlflow}/api/2.0/mlflow/runs/get?run_id={record['run_id']}")
    assert status == 200, answer
    info = answer["run"]["info"]
    assert info["status"] == "FINISHED" and info["artifact_uri"].startswith("mlflow-artifacts:")
    served = artefact_files(stack, record["run_id"])
    assert "scores.json" in {Path(p).name for p in served}, served

    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{stack.env['S3_PORT']}", region_name="us-east-1",
                      aws_access_key_id=stack.env["S3_ACCESS_KEY"], aws_secret_access_key=stack.env["S3_SECRET_KEY"])
    assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"talbench-mlflow", "talbench-dvc"}  # made by init
    prefix = f"{record['experiment_id']}/{record['run_id']}/artifacts/"
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="talbench-mlflow", Prefix=prefix)
    stored = {obj["Key"].removeprefix(prefix): obj["Size"] for page in pages for obj in page.get("Contents", [])}
    assert set(served) <= set(stored), sorted(set(served) - set(stored))  # what MLflow lists is in the bucket
    assert all(stored[path] == size for path, size in served.items() if size is not None)


def artefact_files(stack: Stack, run_id: str, path: str = "") -> dict[str, int | None]:
    """The run's artefact files as the MLflow server lists them (recursively): path -> size."""
    query = urllib.parse.urlencode({"run_id": run_id, **({"path": path} if path else {})})
    status, answer = stack.request(f"{stack.mlflow}/api/2.0/mlflow/artifacts/list?{query}")
    assert status == 200, answer
    files: dict[str, int | None] = {}
    for entry in answer.get("files", []):
        if entry.get("is_dir"):
            files |= artefact_files(stack, run_id, entry["path"])
        else:
            files[entry["path"]] = int(entry["file_size"]) if "file_size" in entry else None
    return files


@system_test
def test_down_leaves_nothing_but_the_results(stack, benchmark_run):
    """Last: the stack comes down, volumes included; the runs' folders on the host stay."""
    stack.down()
    assert left_over(stack.project) == {"containers": "", "networks": "", "volumes": ""}
    workspace = Path(stack.env["TALBENCH_WORKSPACES"]) / workspace_folder(benchmark_run["run_id"])
    assert (workspace / "reports" / "benchmark" / "benchmark.html").is_file()
