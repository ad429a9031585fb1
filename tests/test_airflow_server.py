"""talbench_benchmark on a real local Airflow (infra/airflow/local.py), driven through the REST API:
the API wants a token, two mapped trainings run at once, the report lands in the run's workspace,
an unknown experiment is refused at trigger time, and a second identical run retrains nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from talbench.io import read_yaml_mapping
from talbench.orchestration import workspace_name

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "infra" / "airflow" / "local.py"
_spec = importlib.util.spec_from_file_location("talbench_airflow_local", LOCAL)
local = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(local)

DAG = "talbench_benchmark"
# the cheapest pair of experiments of one dataset: one fetch and one validate, two mapped trainings.
# One epoch without warm-up epochs and a shorter NMS keep a run near a minute and a half on 2 cores.
EXPERIMENTS = ["ego4d_mq-slowfast", "ego4d_mq-omnivore"]
CONF = {"experiments": EXPERIMENTS, "epochs": 1, "seeds": [0],
        "overrides": {"opt": {"warmup_epochs": 0}, "test_cfg": {"pre_nms_topk": 500, "max_seg_num": 100}}}
RUN_TIMEOUT = 300

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(server: Any, method: str, path: str, body: Any = None) -> Any:
    status, answer = server.api(method, path, body)
    assert 200 <= status < 300, f"{method} {path}: HTTP {status}: {answer}"
    return answer


def runs_path(run_id: str = "", dag: str = DAG) -> str:
    return f"/api/v2/dags/{dag}/dagRuns" + (f"/{urllib.parse.quote(run_id, safe='')}" if run_id else "")


def task_instances(server: Any, run_id: str, task_id: str | None = None, dag: str = DAG) -> list[dict]:
    query = f"?limit=100{f'&task_id={task_id}' if task_id else ''}"
    return call(server, "GET", f"{runs_path(run_id, dag)}/taskInstances{query}")["task_instances"]


def xcom(server: Any, run_id: str, task_id: str, map_index: int = -1, dag: str = DAG) -> Any:
    path = f"{runs_path(run_id, dag)}/taskInstances/{task_id}/xcomEntries/return_value?map_index={map_index}"
    return call(server, "GET", path)["value"]


def task_log(server: Any, run_id: str, ti: dict, try_number: int, dag: str = DAG) -> str:
    path = f"{runs_path(run_id, dag)}/taskInstances/{ti['task_id']}/logs/{try_number}?map_index={ti['map_index']}"
    status, answer = server.api("GET", path)
    lines = [f"{e.get('timestamp', '')} {e.get('event', '')}" for e in answer.get("content", [])] \
        if status == 200 and isinstance(answer, dict) else [f"HTTP {status}: {answer}"]
    return f"--- {ti['task_id']}[{ti['map_index']}] try {try_number} ({ti['state']} now)\n" + "\n".join(lines[-60:])


def failure_logs(server: Any, run_id: str, dag: str = DAG) -> str:
    """The logs of every failed try of the run's task instances: what CI shows when a run goes wrong."""
    out = []
    for ti in task_instances(server, run_id, dag=dag):
        failed_tries = range(1, ti["try_number"] + (ti["state"] in ("failed", "up_for_retry")))
        out += [task_log(server, run_id, ti, n, dag) for n in failed_tries]
    return "\n".join(out) or "(no failed try)"


def trigger(server: Any, conf: dict, dag: str = DAG) -> str:
    return call(server, "POST", runs_path(dag=dag), {"logical_date": None, "conf": conf})["dag_run_id"]


def wait(server: Any, run_id: str, dag: str = DAG, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while (state := call(server, "GET", runs_path(run_id, dag))["state"]) not in ("success", "failed"):
        if time.monotonic() > deadline:
            pytest.fail(f"run {run_id} still {state} after {timeout} s\n{failure_logs(server, run_id, dag)}")
        time.sleep(3)
    if state != "success":
        pytest.fail(f"run {run_id} {state}\n{failure_logs(server, run_id, dag)}")


def trigger_and_wait(server: Any, conf: dict) -> str:
    run_id = trigger(server, conf)
    wait(server, run_id)
    return run_id


def our_processes(home: Path) -> list[int]:
    """Every process started for this Airflow: they all have its AIRFLOW_HOME."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("AIRFLOW_HOME") == str(home):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspaces")


@pytest.fixture(scope="module")
def server(tmp_path_factory, workspaces):
    home = tmp_path_factory.mktemp("airflow")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TALBENCH_PARAMS", "TALBENCH_RUN_GROUP")}
    env["TALBENCH_WORKSPACES"] = str(workspaces)  # unset MLFLOW_TRACKING_URI: each run tracks into its workspace
    srv = local.start(home, free_port(), parallelism=4, train_slots=2, env=env)
    pids = srv.pids
    try:
        assert set(pids) == {"api-server", "scheduler", "dag-processor", "triggerer"}
        deadline = time.monotonic() + 120  # the dag-processor parses the DAG file after it starts
        while (status := srv.api("GET", f"/api/v2/dags/{DAG}"))[0] != 200:
            assert time.monotonic() < deadline, f"{DAG} not parsed: {status}; import errors: {srv.api('GET', '/api/v2/importErrors')[1]}"
            time.sleep(2)
        yield srv
        # the README's way to stop it; then nothing of it may be left, task runners and stages included
        done = subprocess.run([sys.executable, str(LOCAL), "stop", "--home", str(home)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        for child in srv.children.values():
            child.poll()
        assert not [pid for pid in pids.values() if psutil.pid_exists(pid)]
        assert our_processes(home) == []
        assert not (home / "pids.json").exists()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def first_run(server) -> str:
    call(server, "PATCH", f"/api/v2/dags/{DAG}", {"is_paused": False})
    return trigger_and_wait(server, CONF)


def test_the_api_wants_a_token(server):
    status, _ = server.api("GET", f"/api/v2/dags/{DAG}", auth=False)
    assert status in (401, 403)
    done = subprocess.run([sys.executable, str(LOCAL), "token", "--home", str(server.home)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert server.api("GET", f"/api/v2/dags/{DAG}", token=done.stdout.strip())[0] == 200
    assert server.api("GET", f"/api/v2/dags/{DAG}", token="not-a-token")[0] in (401, 403)


def test_two_trainings_run_at_once_and_the_report_is_in_the_workspace(server, first_run, workspaces):
    trains = task_instances(server, first_run, "train")
    assert sorted(ti["map_index"] for ti in trains) == [0, 1]
    assert all(ti["state"] == "success" for ti in trains)
    # a retry would hide a failure of the first try (and make the intervals below those of different tries)
    assert all(ti["try_number"] == 1 for ti in trains), failure_logs(server, first_run)
    starts = [datetime.fromisoformat(ti["start_date"]) for ti in trains]
    ends = [datetime.fromisoformat(ti["end_date"]) for ti in trains]
    assert max(starts) < min(ends), f"the trainings did not overlap: {list(zip(starts, ends))}"
    workspace = workspaces / workspace_name(first_run)
    report = workspace / "reports" / "benchmark" / "benchmark.html"
    assert report.is_file()
    assert xcom(server, first_run, "report")["report"] == str(report)
    assert (workspace / "mlruns" / "mlflow.db").is_file()  # MLFLOW_TRACKING_URI unset: tracked in the workspace


def test_an_unknown_experiment_is_refused_at_trigger_time(server, workspaces):
    before = call(server, "GET", runs_path())["total_entries"]
    listed = sorted(workspaces.iterdir())
    status, answer = server.api("POST", runs_path(), {"logical_date": None, "conf": {"experiments": ["no-such-experiment"]}})
    assert 400 <= status < 500 and "no-such-experiment" in str(answer), (status, answer)
    assert call(server, "GET", runs_path())["total_entries"] == before
    assert sorted(workspaces.iterdir()) == listed


def test_a_second_identical_run_retrains_nothing(server, first_run):
    expected = sorted(f"train@{name}" for name in EXPERIMENTS)
    first = [xcom(server, first_run, "train", ti["map_index"]) for ti in task_instances(server, first_run, "train")]
    assert sorted(x["stage"] for x in first) == expected and all(x["reused"] is False for x in first), first
    second_run = trigger_and_wait(server, CONF)
    second = [xcom(server, second_run, "train", ti["map_index"]) for ti in task_instances(server, second_run, "train")]
    assert sorted(x["stage"] for x in second) == expected and all(x["reused"] is True for x in second), second


def test_two_benchmarks_and_a_night_at_once_do_not_fight(server, first_run, workspaces):
    """Different params in parallel: no lock errors, each run's outputs its own, the registry consistent."""
    call(server, "PATCH", "/api/v2/dags/talbench_nightly", {"is_paused": False})
    quick = CONF["overrides"]
    runs = [(DAG, trigger(server, {"experiments": ["ego4d_mq-egovlp"], "epochs": 1, "seeds": [0], "overrides": quick})),
            (DAG, trigger(server, {"experiments": ["ego4d_mq-egovlp"], "epochs": 2, "seeds": [0], "overrides": quick})),
            ("talbench_nightly", trigger(server, {"epochs": 1, "overrides": {"opt": {"warmup_epochs": 0}},
                                                  "data_version": "2026-12-01"}, "talbench_nightly"))]
    for dag, run_id in runs:
        wait(server, run_id, dag, timeout=2 * RUN_TIMEOUT)
    logs = "\n".join(p.read_text(errors="replace") for p in (server.home / "logs").rglob("*.log"))
    for trouble in ("database is locked", "Unable to acquire lock", "alembic_version"):
        assert trouble not in logs
    one, two = (workspaces / workspace_name(run_id) for _, run_id in runs[:2])
    for workspace, epochs in ((one, 1), (two, 2)):
        curve = (workspace / "outputs" / "ego4d_mq-egovlp" / "train_curve.csv").read_text().splitlines()
        assert len(curve) == 1 + epochs  # each run trained its own recipe into its own workspace
        assert (workspace / "reports" / "benchmark" / "benchmark.html").is_file()
    night = workspaces / workspace_name(runs[2][1])
    decision = xcom(server, runs[2][1], "promote", dag="talbench_nightly")
    assert decision["data_version"] == "2026-12-01"
    import mlflow

    # unpausing may also start the scheduled night: whatever ran, the aliases follow the recorded decisions
    client = mlflow.MlflowClient(f"sqlite:///{workspaces / 'nightly-mlruns' / 'mlflow.db'}")
    versions = sorted(client.search_model_versions(f"name = '{decision['model']}'"), key=lambda v: int(v.version))
    decisions = [v.tags["talbench.decision"] for v in versions]
    assert decisions[0] == "promoted" and set(decisions) <= {"promoted", "kept champion"}
    promoted = [v.version for v, d in zip(versions, decisions) if d == "promoted"]
    assert str(client.get_model_version_by_alias(decision["model"], "champion").version) == str(promoted[-1])
    assert str(client.get_model_version_by_alias(decision["model"], "challenger").version) == str(versions[-1].version)
    experiment = read_yaml_mapping(night / "params.yaml")["nightly"]["experiment"]
    assert json.loads((night / "outputs" / experiment / "promotion.json").read_text())["version"] == decision["version"]


def test_new_data_starts_a_night_on_the_version_it_names(server):
    """An event on the data Asset (as a data pipeline would post it) starts talbench_nightly on that version."""
    call(server, "PATCH", "/api/v2/dags/talbench_nightly", {"is_paused": False})
    params = read_yaml_mapping(ROOT / "params.yaml")
    uri = f"talbench://data/{params['experiments'][params['nightly']['experiment']]['dataset']}"
    (asset,) = [a for a in call(server, "GET", "/api/v2/assets?limit=100")["assets"] if a["uri"] == uri]
    call(server, "POST", "/api/v2/assets/events", {"asset_id": asset["id"], "extra": {"version": "2026-12-05"}})
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        runs = [r for r in call(server, "GET", runs_path(dag="talbench_nightly") + "?limit=100")["dag_runs"]
                if r["run_type"] == "asset_triggered"]
        done = runs and [ti for ti in task_instances(server, runs[0]["dag_run_id"], "prepare_night", "talbench_nightly")
                         if ti["state"] == "success"]
        if done:
            break
        assert time.monotonic() < deadline, f"no asset-triggered night prepared within {RUN_TIMEOUT} s: {runs}"
        time.sleep(3)
    (run,) = runs
    night = xcom(server, run["dag_run_id"], "prepare_night", dag="talbench_nightly")
    assert night["data_version"] == "2026-12-05"
    assert read_yaml_mapping(Path(night["workspace"]) / "params.yaml")["synthetic"]["version"] == "2026-12-05"
    # the wiring is what this checks: the night's training is the other tests' business
    call(server, "PATCH", runs_path(run["dag_run_id"], "talbench_nightly"), {"state": "failed"})
