"""The Airflow DAG talbench_benchmark and the runner it calls (talbench/orchestration.py).

Fast: the DAG parses (and quickly, without the heavy libraries), its tasks follow the stage graph,
the commands it runs are the stage graph's, exit codes map to Airflow's failure kinds, bad params
are refused. Slow: `airflow dags test` of one experiment end to end, and of an unknown one.
"""

from __future__ import annotations

import json
import os
import shlex
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from talbench import orchestration
from talbench.io import read_yaml_mapping
from talbench.orchestration import (
    StageFailed,
    narrow_params,
    prepare,
    run_command,
    run_stage,
    stage_argv,
    workspace_graph,
    workspace_name,
)
from talbench.pipeline import stage_graph, upstream

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "mlflow", "dvc", "great_expectations", "pandas")
AIRFLOW = str(Path(sys.executable).parent / "airflow")


def airflow_env(home: Path, workspaces: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TALBENCH_PARAMS", "TALBENCH_RUN_GROUP")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
               TALBENCH_WORKSPACES=str(workspaces), GX_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1")
    return env


# ---------------------------------------------------------------- 1. parsing


def test_dagbag_has_no_import_errors_and_follows_the_stage_graph(tmp_path):
    script = """
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=%r)
dag = bag.dags.get("talbench_benchmark")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else None,
    "mapped": sorted(t.task_id for t in dag.tasks if getattr(t, "is_mapped", False)) if dag else None,
    "pools": {t.task_id: t.pool for t in dag.tasks} if dag else None,
    "retries": {t.task_id: t.retries for t in dag.tasks} if dag else None,
    "params": sorted(dag.params.keys()) if dag else None,
}))
""" % str(ROOT / "dags")
    done = subprocess.run([sys.executable, "-c", script], env=airflow_env(tmp_path / "airflow", tmp_path / "ws"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    assert info["params"] == ["epochs", "experiments", "overrides", "runner", "scale", "seeds"]
    up = info["upstream"]
    # one task per kind of stage, ordered by the stage graph's inputs and outputs
    graph = stage_graph(read_yaml_mapping(ROOT / "params.yaml"), ROOT / "dvc.yaml")
    for stage in graph:
        assert stage.stage in up
        for other in upstream(graph, stage):
            if other.stage != stage.stage:
                assert other.stage in up[stage.stage], (stage.name, other.name)
    assert {"fetch", "validate", "train", "evaluate"} <= set(info["mapped"])
    assert "report" not in info["mapped"]
    assert info["pools"]["train"] == os.environ.get("TALBENCH_TRAIN_POOL", "talbench_train")
    assert info["retries"]["train"] == 2


@pytest.mark.parametrize("dag_file", sorted((ROOT / "dags").glob("*.py")), ids=lambda p: p.stem)
def test_dag_file_parses_fast_without_heavy_libraries(tmp_path, dag_file):
    script = f"""
import importlib.util, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
spec = importlib.util.spec_from_file_location("talbench_dag", {str(dag_file)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t2 = time.perf_counter()
print(json.dumps({{"sdk": t1 - t0, "dag": t2 - t1, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    done = subprocess.run([sys.executable, "-c", script], env=airflow_env(tmp_path / "airflow", tmp_path / "ws"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["heavy"] == []
    assert info["dag"] < 2.0, f"the DAG file takes {info['dag']:.2f} s to import beyond airflow.sdk ({info['sdk']:.2f} s)"


# ---------------------------------------------------------------- 2. the commands are the stage graph's

CHOSEN = ["ego4d_mq-egovlp", "thumos14-i3d", "ego4d_mq-omnivore"]


def test_commands_for_chosen_experiments_are_the_stage_graphs(tmp_path, monkeypatch):
    project_params = read_yaml_mapping(ROOT / "params.yaml")
    full = stage_graph(project_params, ROOT / "dvc.yaml")
    # what the chosen experiments need, by the graph itself: their train and evaluate stages, what
    # those read from (transitively), and the stages without an item (the report)
    wanted = [s for s in full if s.stage in ("train", "evaluate") and s.item in CHOSEN]
    todo = list(wanted)
    while todo:
        for up in upstream(full, todo.pop()):
            if up not in wanted and up.item is not None:
                wanted.append(up)
                todo.append(up)
    wanted += [s for s in full if s.item is None]
    expected = {s.name: s for s in wanted}

    prepared = prepare("manual__2026-12-01T01:58:00.123+00:00", CHOSEN, epochs=1, seeds=[3, 1], project=ROOT,
                       env={"TALBENCH_WORKSPACES": str(tmp_path)})
    workspace = Path(prepared["workspace"])
    assert workspace == tmp_path / "manual__2026-12-01T01-58-00.123-00-00"
    names = [name for kind in prepared["stages"].values() for name in kind]
    assert sorted(names) == sorted(expected)
    assert list(prepared["stages"]) == list(dict.fromkeys(s.stage for s in full))

    ran: list[tuple[list[str], Path, dict]] = []
    monkeypatch.setattr(orchestration, "run_command", lambda argv, cwd, env=None, emit=None: ran.append((argv, Path(cwd), env)))
    for name in names:
        run_stage(workspace, name, python="/opt/py/bin/python")
    for (argv, cwd, env), name in zip(ran, names):
        graph_cmd = shlex.split(expected[name].cmd)
        assert graph_cmd[0] == "python"
        assert argv == ["/opt/py/bin/python", *graph_cmd[1:], "--params", "params.yaml"], name
        assert cwd == workspace
        assert "TALBENCH_PARAMS" not in env and env["TALBENCH_RUN_GROUP"] == workspace.name
    # a retried training continues from its checkpoint; other stages just run again
    ran.clear()
    run_stage(workspace, "train@thumos14-i3d", try_number=2, python="py")
    run_stage(workspace, "evaluate@thumos14-i3d", try_number=2, python="py")
    assert ran[0][0] == ["py", "components/train.py", "thumos14-i3d", "--params", "params.yaml", "--resume"]
    assert ran[1][0] == ["py", "components/evaluate.py", "thumos14-i3d", "--params", "params.yaml"]

    # the workspace: its own params (narrowed, with the override), the project's code and configs
    params = read_yaml_mapping(workspace / "params.yaml")
    assert list(params["experiments"]) == [n for n in project_params["experiments"] if n in CHOSEN]
    assert params["pipeline"]["datasets"] == ["thumos14", "ego4d_mq"] and params["pipeline"]["seeds"] == [3, 1]
    assert all(e["overrides"]["opt"]["epochs"] == 1 for e in params["experiments"].values())
    assert params["datasets"] == project_params["datasets"]
    for linked in ("components", "configs"):
        assert (workspace / linked).resolve() == (ROOT / linked).resolve()
    assert [s.name for s in workspace_graph(workspace)] == names


def test_narrow_params_keeps_recipe_overrides_and_refuses_unknown():
    params = read_yaml_mapping(ROOT / "params.yaml")
    params["experiments"]["thumos14-i3d"]["overrides"] = {"model": {"embd_dim": 64}}
    out = narrow_params(params, ["thumos14-i3d"], epochs=2, scale="small", overrides={"model": {"fpn_dim": 64}, "opt": {"epochs": 9}})
    assert out["experiments"]["thumos14-i3d"]["overrides"] == {"model": {"embd_dim": 64, "fpn_dim": 64}, "opt": {"epochs": 2}}
    assert out["synthetic"]["scale"] == "small" and out["synthetic"]["md5"] == params["synthetic"]["md5"]
    assert list(out["published"]) == ["thumos14-i3d"]
    assert params["experiments"]["thumos14-i3d"]["overrides"] == {"model": {"embd_dim": 64}}  # the input is not changed
    with pytest.raises(ValueError, match="nope"):
        narrow_params(params, ["thumos14-i3d", "nope"])
    with pytest.raises(ValueError):
        narrow_params(params, [])


def test_workspace_name_is_one_safe_folder():
    assert workspace_name("manual__2026-12-01T01:58:00+00:00") == "manual__2026-12-01T01-58-00-00-00"
    assert workspace_name("../../etc") == "etc"
    assert "/" not in workspace_name("a/b\\c d") and workspace_name("..") == "run"


# ---------------------------------------------------------------- 4. params are checked at trigger time


def test_unknown_experiment_is_refused_by_the_params(tmp_path):
    script = f"""
import copy, json
from airflow.sdk.exceptions import ParamValidationError
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(dag_folder={str(ROOT / "dags")!r}).dags["talbench_benchmark"]
out = {{}}
preset = json.load(open({str(ROOT / "configs/runs/ego4d_ranking.json")!r}))  # a documented run preset
for name, conf in [("ok", {{"experiments": ["thumos14-i3d"], "epochs": 1}}), ("preset", preset), ("unknown", {{"experiments": ["nope"]}}),
                   ("epochs", {{"experiments": ["thumos14-i3d"], "epochs": 0}}), ("runner", {{"runner": "podman"}}),
                   ("scale", {{"scale": "huge"}}), ("empty", {{"experiments": []}}),
                   ("overrides", {{"overrides": {{"opt": 3}}}}), ("seeds", {{"seeds": [0, 0]}}),
                   ("seed", {{"seeds": [-1]}}), ("no seeds", {{"seeds": []}})]:
    try:
        params = copy.deepcopy(dag.params)
        params.update(conf)
        params.validate()
        out[name] = "ok"
    except ParamValidationError as exc:
        out[name] = "refused: " + str(exc).splitlines()[0]
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], env=airflow_env(tmp_path / "airflow", tmp_path / "ws"),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.pop("ok") == "ok" and out.pop("preset") == "ok"
    assert "nope" in out["unknown"]
    assert all(v.startswith("refused") for v in out.values()), out


# ---------------------------------------------------------------- 5. exit codes


def test_exit_2_or_3_fails_without_retry_other_exits_are_retried(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    lines: list[str] = []
    line = "error: params.yaml: experiments: field 'thumos14-i3d': something is wrong"
    for code in (2, 3):
        fake = [sys.executable, "-c", f"import sys; print('working'); print({line!r}, file=sys.stderr); sys.exit({code})"]
        with pytest.raises(AirflowFailException) as info:
            run_command(fake, tmp_path, emit=lines.append)
        assert str(info.value) == line
    assert "working" in lines and line in lines
    with pytest.raises(StageFailed) as info:
        run_command([sys.executable, "-c", "raise SystemExit(1)"], tmp_path, emit=lines.append)
    assert not isinstance(info.value, AirflowFailException)
    with pytest.raises(StageFailed):
        run_command([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], tmp_path, emit=lines.append)
    lines.clear()
    run_command([sys.executable, "-c", "import os; print(os.getcwd())"], tmp_path, emit=lines.append)
    assert lines[-1] == str(tmp_path)


def test_stage_argv_adds_only_params_and_resume():
    graph = stage_graph(read_yaml_mapping(ROOT / "params.yaml"), ROOT / "dvc.yaml")
    by_name = {s.name: s for s in graph}
    assert stage_argv(by_name["fetch@thumos14"], python="P", resume=True) == ["P", "components/fetch.py", "thumos14", "--params", "params.yaml"]
    assert stage_argv(by_name["report"], python="P") == ["P", "components/report.py", "--params", "params.yaml"]


# ---------------------------------------------------------------- 3. end to end with `airflow dags test`


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow")
    env = airflow_env(home, home / "unused")
    done = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return home


@pytest.mark.slow
def test_dags_test_runs_one_experiment_end_to_end(airflow_home, tmp_path):
    workspaces = tmp_path / "workspaces"
    # small: one epoch and no warm-up epochs (ActionFormer trains warmup_epochs + epochs), two seeds
    conf = {"experiments": ["thumos14-i3d"], "epochs": 1, "seeds": [0, 1], "overrides": {"opt": {"warmup_epochs": 0}}}
    done = subprocess.run([AIRFLOW, "dags", "test", "talbench_benchmark", "-c", json.dumps(conf)],
                          env=airflow_env(airflow_home, workspaces), capture_output=True, text=True, timeout=400, cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]
    (workspace,) = [p for p in workspaces.iterdir() if p.name != orchestration.CACHE]
    assert workspace.name.startswith("manual__")
    # fetch, validate and train are stored for a later identical run; evaluate and report are not
    stored = [json.loads(p.read_text())["stage"] for p in (workspaces / orchestration.CACHE).glob("*/*/stage.json")]
    assert sorted(stored) == ["fetch@thumos14", "train@thumos14-i3d", "validate@thumos14"]
    metrics = json.loads((workspace / "outputs" / "thumos14-i3d" / "metrics.json").read_text())
    assert 0.0 <= metrics["average_mAP"] <= 1.0 and metrics["seeds"] == 2
    assert (workspace / "reports" / "benchmark" / "benchmark.html").is_file()
    assert (workspace / "reports" / "validation" / "thumos14" / "validation.json").is_file()
    assert list((workspace / "data" / "synthetic").iterdir())  # the twin was built in the workspace
    # the trigger's overrides reached the resolved config: one epoch was trained
    opt = read_yaml_mapping(workspace / "outputs" / "thumos14-i3d" / "train" / "seed-1" / "config.yaml")["opt"]
    assert (opt["epochs"], opt["warmup_epochs"]) == (1, 0)
    assert len((workspace / "outputs" / "thumos14-i3d" / "train_curve.csv").read_text().splitlines()) == 2
    with sqlite3.connect(workspace / "mlruns" / "mlflow.db") as db:
        runs = dict(db.execute("select name, status from runs").fetchall())
        # the parent run is found by the Airflow run's id (its group tag) and named for a reader
        (parent, parent_name) = db.execute("select run_uuid, name from runs join tags using (run_uuid) "
                                           "where key = 'talbench.group' and value = ? and name like 'benchmark %'",
                                           (workspace.name,)).fetchone()
    assert runs.get("thumos14-i3d") == "FINISHED" and runs.get(parent_name) == "FINISHED"
    # the report task hands its path and the MLflow parent run over XCom
    assert f"'report': '{workspace / 'reports' / 'benchmark' / 'benchmark.html'}'" in log
    assert f"'mlflow_parent_run': '{parent}'" in log
    assert not (ROOT / "workspaces").exists() or workspace.parent != ROOT / "workspaces"


@pytest.mark.slow
def test_dags_test_refuses_an_unknown_experiment_before_any_task(airflow_home, tmp_path):
    workspaces = tmp_path / "workspaces"
    done = subprocess.run([AIRFLOW, "dags", "test", "talbench_benchmark", "-c", json.dumps({"experiments": ["thumos14-i3d", "nope"]})],
                          env=airflow_env(airflow_home, workspaces), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    log = done.stdout + done.stderr
    assert done.returncode != 0
    assert "ParamValidationError" in log and "'nope' is not one of" in log, log[-3000:]
    assert "[DAG TEST] starting task_id" not in log
    assert not workspaces.exists()


def test_a_misspelt_override_fails_the_real_stage_without_retry(tmp_path):
    """A real component's bad-input exit (2) through the runner: AirflowFailException with its one line."""
    from airflow.sdk.exceptions import AirflowFailException

    prepared = prepare("manual__bad", ["thumos14-i3d"], overrides={"opt": {"epoch": 1}}, project=ROOT,
                       env={"TALBENCH_WORKSPACES": str(tmp_path)})
    lines: list[str] = []
    with pytest.raises(AirflowFailException) as info:
        run_stage(prepared["workspace"], "train@thumos14-i3d", emit=lines.append)
    assert str(info.value).startswith("error: params.yaml: experiments.thumos14-i3d.overrides.opt: field 'epoch'")
    assert "epochs" in str(info.value)  # the closest valid key
    assert not (Path(prepared["workspace"]) / "outputs").exists()
