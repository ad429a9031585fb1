"""The nightly retraining: dated data versions of the twins, the champion/challenger rule in a real
MLflow registry, the DAG's shape, and two nights in a row with `airflow dags test`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from talbench.data.registry import load_registry
from talbench.data.synthetic import PROFILES, TwinModel, added_train_videos
from talbench.io import read_yaml_mapping
from talbench.orchestration import nightly_graph, nightly_params, prepare_night
from talbench.pipeline import upstream
from talbench.tracking import promotion

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
PARAMS = read_yaml_mapping(ROOT / "params.yaml")
PRODUCTION = PARAMS["nightly"]["experiment"]


# ---------------------------------------------------------------- data versions


def test_a_data_version_adds_training_videos_and_keeps_the_test_split():
    spec = load_registry(ROOT / "params.yaml").dataset("thumos14")
    base = TwinModel(spec, PROFILES["thumos14"], 0, "ci")
    night = TwinModel(spec, PROFILES["thumos14"], 0, "ci", "2026-12-02")
    again = TwinModel(spec, PROFILES["thumos14"], 0, "ci", "2026-12-02")
    assert night.added_train_videos == added_train_videos("2026-12-02", base.size) >= 1
    assert night.num_videos == base.num_videos + night.added_train_videos
    base_videos = [base.video(i) for i in range(base.num_videos)]
    night_videos = [night.video(i) for i in range(night.num_videos)]
    assert night_videos == [again.video(i) for i in range(again.num_videos)]  # derived from the date alone
    assert night_videos[: base.num_videos] == base_videos  # nothing that was there changes
    test = spec.splits["test"][0]
    assert [v for v in night_videos if v.subset == test] == [v for v in base_videos if v.subset == test]
    assert all(v.subset != test for v in night_videos[base.num_videos:])
    counts = {added_train_videos(f"2026-12-{day:02d}", base.size) for day in range(1, 8)}
    assert len(counts) > 1 and all(1 <= n <= max(1, base.size.train_videos // 2) for n in counts)


def test_nightly_params_narrow_to_the_production_experiment_on_the_night_s_data():
    night = nightly_params(PARAMS, "2026-12-02", epochs=1, margin=0.25)
    assert list(night["experiments"]) == [PRODUCTION]
    assert night["synthetic"]["version"] == "2026-12-02"
    assert night["nightly"]["margin"] == 0.25 and night["nightly"]["experiment"] == PRODUCTION
    assert night["experiments"][PRODUCTION]["overrides"]["opt"]["epochs"] == 1
    assert night["pipeline"]["seeds"] == PARAMS["pipeline"]["seeds"][:1]  # one challenger model: the first seed's
    assert PARAMS["nightly"]["margin"] != 0.25  # the input is not changed
    without = {k: v for k, v in PARAMS.items() if k != "nightly"}
    with pytest.raises(ValueError, match="nightly.experiment"):
        nightly_params(without, "2026-12-02")


def test_the_nightly_stages_are_the_stage_graphs_for_the_production_experiment():
    graph = nightly_graph(PARAMS, ROOT / "dvc.yaml")
    dataset = PARAMS["experiments"][PRODUCTION]["dataset"]
    assert sorted(s.name for s in graph) == sorted([f"fetch@{dataset}", f"validate@{dataset}", f"train@{PRODUCTION}",
                                                    f"evaluate@{PRODUCTION}", "report"])
    by_name = {s.name: s for s in graph}
    assert [u.name for u in upstream(graph, by_name[f"train@{PRODUCTION}"])] == [f"fetch@{dataset}", f"validate@{dataset}"]


# ---------------------------------------------------------------- the promotion rule, in a real registry


def evidence(champion: float, low: float, high: float, difference: float | None = None) -> promotion.Evidence:
    return promotion.Evidence(champion, (low + high) / 2 if difference is None else difference, (low, high), 0.95)


def test_decide_promotes_the_first_and_then_only_when_the_whole_interval_is_above_the_margin():
    assert promotion.decide(None, 0.01)[0]
    assert promotion.decide(evidence(0.2, 0.001, 0.05), 0.0)[0]
    assert not promotion.decide(evidence(0.2, -0.001, 0.05, difference=0.03), 0.0)[0]  # above on this draw, not surely
    assert not promotion.decide(evidence(0.2, 0.005, 0.05), 0.01)[0]  # surely better, not surely by the margin
    assert promotion.decide(evidence(0.2, 0.011, 0.05), 0.01)[0]
    promoted, reason = promotion.decide(evidence(0.2, -0.05, -0.01), 0.0)
    assert not promoted and reason.startswith("worse than the champion")
    assert promotion.decide(evidence(0.2, -0.01, 0.01), 0.0)[1].startswith("not distinguishable")


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    import mlflow

    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("nightly", artifact_location=(tmp_path / "artifacts").as_uri())

    def new_version(model: str) -> str:
        run = client.create_run(experiment).info.run_id
        return promotion.register_challenger(model, f"file://{tmp_path}/models/{run}", run)

    return client, new_version


def test_promotion_moves_the_champion_only_when_the_challenger_is_surely_better(registry):
    client, new_version = registry
    model = "talbench-test-production"
    asked: list[str] = []

    def night(score: float, interval: tuple[float, float] | None = None, margin: float = 0.0) -> promotion.Decision:
        def against(champion: str) -> promotion.Evidence:
            asked.append(champion)
            return evidence(0.20, *interval)

        return promotion.promote(model, new_version(model), score, margin, against, {"talbench.data_version": "tonight"})

    first = night(0.20)
    assert first.promoted and first.champion_score is None and first.interval is None and asked == []
    worse = night(0.15, (-0.08, -0.02))
    unclear = night(0.23, (-0.01, 0.07))  # higher on this draw, not surely
    short = night(0.24, (0.004, 0.08), margin=0.005)  # surely better, not surely by the margin
    better = night(0.26, (0.02, 0.10))
    assert [d.promoted for d in (worse, unclear, short, better)] == [False, False, False, True]
    assert asked == ["1", "1", "1", "1"]  # each night against the champion of the time
    assert str(client.get_model_version_by_alias(model, "champion").version) == "5"
    assert str(client.get_model_version_by_alias(model, "challenger").version) == "5"
    tags = client.get_model_version(model, "3").tags
    assert tags["talbench.decision"] == "kept champion" and tags["talbench.reason"].startswith("not distinguishable")
    assert float(tags["talbench.challenger_score"]) == 0.23 and float(tags["talbench.champion_score"]) == 0.20
    assert (float(tags["talbench.interval_low"]), float(tags["talbench.interval_high"])) == (-0.01, 0.07)
    assert tags["talbench.champion_version"] == "1" and tags["talbench.level"] == "0.95" and tags["talbench.margin"] == "0"
    assert tags["talbench.data_version"] == "tonight"
    assert client.get_model_version(model, "5").tags["talbench.decision"] == "promoted"


def test_a_retried_promotion_keeps_its_decision_and_registers_nothing_twice(registry):
    client, new_version = registry
    model = "talbench-retry-production"
    first = new_version(model)
    promotion.promote(model, first, 0.3, 0.0, lambda v: pytest.fail("no champion to compare with"))
    run_id = client.get_model_version(model, first).run_id
    source = client.get_model_version(model, first).source
    assert promotion.register_challenger(model, source, run_id) == first  # the same logged model: the same version
    second = new_version(model)
    decision = promotion.promote(model, second, 0.1, 0.0, lambda v: evidence(0.3, -0.3, -0.1))
    client.set_registered_model_alias(model, "challenger", first)  # as if killed before the aliases moved
    again = promotion.promote(model, second, 0.9, 0.0, lambda v: pytest.fail("decided already"))
    assert again == decision and not again.promoted
    assert str(client.get_model_version_by_alias(model, "challenger").version) == second
    assert str(client.get_model_version_by_alias(model, "champion").version) == first


# ---------------------------------------------------------------- the DAG


def test_the_nightly_dag_is_scheduled_by_cron_and_by_its_data_asset(tmp_path):
    script = f"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder={str(ROOT / "dags")!r})
dag = bag.dags["talbench_nightly"]
timetable = dag.timetable
print(json.dumps({{
    "errors": {{k: str(v) for k, v in bag.import_errors.items()}},
    "timetable": type(timetable).__name__,
    "cron": timetable.timetable.expression,
    "assets": [timetable.asset_condition.uri],
    "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
    "upstream": {{t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}},
    "params": sorted(dag.params.keys()),
}}))
"""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["errors"] == {}
    assert info["timetable"] == "AssetOrTimeSchedule" and info["cron"] == PARAMS["nightly"]["schedule"]
    assert info["assets"] == [f"talbench://data/{PARAMS['experiments'][PRODUCTION]['dataset']}"]
    assert info["catchup"] is False and info["max_active_runs"] == 1
    assert info["params"] == ["data_version", "epochs", "margin", "overrides", "runner"]
    up = info["upstream"]
    graph = nightly_graph(PARAMS, ROOT / "dvc.yaml")
    assert set(up) == {"prepare_night", "promote"} | {s.name.replace("@", "__") for s in graph}
    assert up["promote"] == sorted(["prepare_night", f"evaluate__{PRODUCTION}"])
    for stage in graph:
        assert {u.name.replace("@", "__") for u in upstream(graph, stage)} | {"prepare_night"} == set(up[stage.name.replace("@", "__")])


# ---------------------------------------------------------------- two nights in a row


@pytest.mark.slow
def test_two_nights_the_first_promotes_the_second_only_when_surely_better(tmp_path):
    home, workspaces = tmp_path / "airflow", tmp_path / "workspaces"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TALBENCH_PARAMS", "TALBENCH_RUN_GROUP")}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
               TALBENCH_WORKSPACES=str(workspaces), GX_ANALYTICS_ENABLED="false", DVC_NO_ANALYTICS="1")
    done = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    quick = {"epochs": 1, "overrides": {"opt": {"warmup_epochs": 0}}}
    # the second night's margin is the whole scale: no interval lies above it, so the champion must stay
    for day, margin in (("2026-12-01", None), ("2026-12-02", 1.0)):
        conf = {**quick, **({} if margin is None else {"margin": margin})}
        done = subprocess.run([AIRFLOW, "dags", "test", "talbench_nightly", day, "-c", json.dumps(conf)], env=env,
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        log = done.stdout + done.stderr
        assert done.returncode == 0 and "state=success" in log, log[-5000:]
        assert "promoted to champion" in log if margin is None else "not promoted: champion stays version 1" in log
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workspaces / 'nightly-mlruns' / 'mlflow.db'}")
    model = f"talbench-{PRODUCTION}-production"
    assert str(client.get_model_version_by_alias(model, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(model, "challenger").version) == "2"
    first, second = (client.get_model_version(model, v).tags for v in ("1", "2"))
    assert (first["talbench.decision"], second["talbench.decision"]) == ("promoted", "kept champion")
    assert (first["talbench.data_version"], second["talbench.data_version"]) == ("2026-12-01", "2026-12-02")
    assert second["talbench.champion_version"] == "1" and second["talbench.margin"] == "1"
    low, high = float(second["talbench.interval_low"]), float(second["talbench.interval_high"])
    assert low <= float(second["talbench.difference"]) <= high and second["talbench.level"] == "0.95"
    # the champion was re-scored on the second night's test split: the same split, the same score
    assert float(second["talbench.champion_score"]) == pytest.approx(float(first["talbench.challenger_score"]), abs=1e-9)
    nights = sorted(p for p in workspaces.iterdir() if p.name.startswith("manual__"))
    assert len(nights) == 2
    promotions = [json.loads((p / "outputs" / PRODUCTION / "promotion.json").read_text()) for p in nights]
    assert [p["promoted"] for p in promotions] == [True, False]


def test_prepare_night_uses_one_registry_for_every_night(tmp_path):
    env = {"TALBENCH_WORKSPACES": str(tmp_path)}
    one = prepare_night("scheduled__2026-12-01T02:00:00+00:00", "2026-12-01", project=ROOT, env=env)
    two = prepare_night("scheduled__2026-12-02T02:00:00+00:00", "2026-12-02", project=ROOT, env=env)
    assert one["workspace"] != two["workspace"] and one["tracking_uri"] == two["tracking_uri"]
    assert one["tracking_uri"] == f"sqlite:///{tmp_path / 'nightly-mlruns' / 'mlflow.db'}"
    assert read_yaml_mapping(Path(two["workspace"]) / "params.yaml")["synthetic"]["version"] == "2026-12-02"
    served = prepare_night("manual__x", "2026-12-03", project=ROOT, env={**env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert served["tracking_uri"] == "http://127.0.0.1:5000"


def test_bad_runner_or_night_params_stop_the_run_before_any_work(tmp_path):
    from talbench.errors import InputError
    from talbench.orchestration import make_workspace

    bad = nightly_params(PARAMS, "2026-12-01")
    bad["runners"]["docker"]["gpus"] = -1
    with pytest.raises(InputError, match=r"runners.docker: field 'gpus': expected an integer >= 0, got -1"):
        make_workspace(tmp_path / "ws", bad, ROOT)
    with pytest.raises(InputError, match=r"synthetic: field 'version'"):
        prepare_night("manual__x", "2026-02-30", project=ROOT, env={"TALBENCH_WORKSPACES": str(tmp_path)})
    assert not (tmp_path / "ws").exists() and not (tmp_path / "manual__x").exists()
