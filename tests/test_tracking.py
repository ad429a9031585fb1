"""MLflow tracking against real stores: a local SQLite file and a `mlflow server` subprocess."""

from __future__ import annotations

import copy
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch

from talbench.config import DEFAULTS, finalize
from talbench.errors import InputError
from talbench.models import build_model, pad_batch
from talbench.tracking import (
    EpochLogger,
    check_reachable,
    experiment_run,
    flatten_config,
    load_model,
    log_experiment_run,
    map_curve,
    metric_name,
    parent_run,
    score_metrics,
    seed_run,
    system_metrics,
    tracking_uri,
)
from talbench.tracking import mlflow_tracking

HISTORY = [
    {"epoch": e, "step": 4 * (e + 1), "lr": 1e-3 / (e + 1), "cls_loss": 1.0 - 0.1 * e, "reg_loss": 0.5 - 0.1 * e,
     "final_loss": 1.5 - 0.2 * e}
    for e in range(3)
]
SCORES = {
    "tious": [0.3, 0.7],
    "top_k": [1, 5],
    "mAP": {"mAP@0.30": 0.5, "mAP@0.70": 0.25},
    "average_mAP": 0.375,
    "recall": {"R@1x@0.30": 0.6, "R@5x@0.30": 0.9, "R@1x@0.70": 0.3, "R@5x@0.70": 0.5},
    "AP_per_class": {"a": {"AP@0.30": 0.5, "AP@0.70": 0.25}},
}


def mlflow_client() -> Any:
    import mlflow

    return mlflow.MlflowClient(tracking_uri())


def _tiny_model() -> tuple[dict[str, Any], torch.nn.Module]:
    config = copy.deepcopy(DEFAULTS)
    config["dataset"].update(input_dim=8, num_classes=3, max_seq_len=256)
    config["model"].update(embd_dim=16, fpn_dim=16, head_dim=16, n_mha_win_size=5)
    config = finalize(config)
    torch.manual_seed(0)
    return config, build_model(config["model"]).eval()


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    feats, masks = pad_batch([torch.randn(8, 300, generator=g), torch.randn(8, 100, generator=g)], a.max_div_factor)
    with torch.no_grad():
        expected, got = a(feats, masks), b(feats, masks)
    assert len(expected) == len(got) == 2 and len(expected[0]["scores"]) > 0
    for e, o in zip(expected, got):
        for key in ("segments", "scores", "labels"):
            torch.testing.assert_close(o[key], e[key], rtol=0, atol=0)


def _log_two_experiments(tmp_path: Path, group: str) -> dict[str, Any]:
    """What two DVC stages do: each finds the parent by group and logs its experiment."""
    config, model = _tiny_model()
    plot = tmp_path / "curve.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\n")
    first = parent_run("talbench-test", group, {"pipeline": "dvc"})
    a = log_experiment_run(first, "exp_a", config=config, history=HISTORY, metrics=SCORES, dataset="thumos14",
                           task="action", features=["i3d"], data_hash="md5:abc", data_dir=tmp_path, plots=[plot], model=model)
    second = parent_run("talbench-test", group, {"pipeline": "dvc"})
    b = log_experiment_run(second, "exp_b", config=config, history=HISTORY[:1], metrics=SCORES, dataset="epic100",
                           task="verb", features=["slowfast", "omnivore"], model=model)
    return {"parents": (first, second), "a": a, "b": b, "model": model, "config": config}


def _check_logged(logged: dict[str, Any]) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    first, second = logged["parents"]
    assert first == second
    run_a, run_b = client.get_run(logged["a"].run_id), client.get_run(logged["b"].run_id)
    for run in (run_a, run_b):
        assert run.data.tags["mlflow.parentRunId"] == first
        assert run.info.status == "FINISHED"
    # params: the resolved config, flattened, without the copies finalize() makes inside `model`
    params = run_a.data.params
    assert params["opt.learning_rate"] == "0.001" and params["model.embd_dim"] == "16"
    assert params["dataset.input_dim"] == "8" and params["model.backbone_arch"] == "[2, 2, 5]"
    assert not any(k.startswith("model.train_cfg") for k in params)
    # step metrics per epoch, final metrics under MLflow-safe names
    history = client.get_metric_history(run_a.info.run_id, "train/final_loss")
    assert sorted((m.step, m.value) for m in history) == [(r["epoch"], r["final_loss"]) for r in HISTORY]
    assert [m.step for m in client.get_metric_history(run_a.info.run_id, "train/lr")] == [0, 1, 2]
    metrics = run_a.data.metrics
    assert metrics["mAP/tIoU_0.30"] == 0.5 and metrics["average_mAP"] == 0.375 and metrics["recall/5x_tIoU_0.70"] == 0.5
    # one mAP-vs-tIoU curve: step = tIoU in hundredths
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_a.info.run_id, "mAP_vs_tIoU")) == [(30, 0.5), (70, 0.25)]
    assert set(run_b.data.metrics) == set(metrics)  # the same names, whichever the dataset
    assert client.get_run(first).data.metrics["average_mAP/exp_a"] == 0.375
    # the dataset as an input whose digest is the data hash, once for training and once for testing
    inputs = run_a.inputs.dataset_inputs
    assert sorted(i.tags[0].value for i in inputs) == ["test", "train"]
    assert sorted((i.dataset.name, i.dataset.digest) for i in inputs) == [("thumos14 training", "md5:abc"), ("thumos14 validation", "md5:abc")]
    # the experiment opens in MLflow's machine-learning view, not the GenAI one
    assert client.get_experiment(run_a.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    tags = run_a.data.tags
    assert (tags["dataset"], tags["task"], tags["features"], tags["experiment"]) == ("thumos14", "action", "i3d", "exp_a")
    assert tags["data_hash"] == "md5:abc" and len(tags["git_commit"]) == 40
    assert run_b.data.tags["features"] == "slowfast,omnivore" and run_b.data.tags["data_hash"] == "unknown"
    assert client.get_run(first).data.tags["pipeline"] == "dvc"
    # artifacts
    names = {a.path for a in client.list_artifacts(run_a.info.run_id)}
    assert {"config.yaml", "plots"} <= names
    assert [a.path for a in client.list_artifacts(run_a.info.run_id, "plots")] == ["plots/curve.png"]
    config_text = Path(client.download_artifacts(run_a.info.run_id, "config.yaml")).read_text()
    assert "learning_rate: 0.001" in config_text
    # the registered model: a version per experiment, the challenger alias, loads back identical
    assert (logged["a"].model_name, logged["a"].model_version) == ("talbench-exp_a", "1")
    assert str(client.get_model_version_by_alias("talbench-exp_a", "challenger").version) == "1"
    assert client.get_model_version("talbench-exp_b", "1").run_id == run_b.info.run_id
    version = client.get_model_version("talbench-exp_a", "1")  # described and tagged for the registry's pages
    assert "exp_a: ActionFormer on thumos14 (action), features i3d" in version.description
    assert "md5:abc" in version.description and "Average mAP 37.50%" in version.description
    assert version.tags["average_mAP"] == "0.375000" and version.tags["data_hash"] == "md5:abc"
    assert version.tags["dataset"] == "thumos14" and len(version.tags["git_commit"]) == 40
    _same_output(logged["model"], load_model("models:/talbench-exp_a@challenger"))
    _pyfunc_without_pickles(logged["a"].model_uri, logged["model"])


def _pyfunc_without_pickles(model_uri: str, model: torch.nn.Module) -> None:
    """The logged model is code + a state dict + a config: no pickle in it, and it loads as a pyfunc."""
    import mlflow.artifacts
    import mlflow.pyfunc

    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" not in os.environ
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    assert not list(folder.rglob("*.pkl")) and (folder / "artifacts" / "weights.pt").is_file()
    feats, masks = pad_batch([torch.randn(8, 200, generator=torch.Generator().manual_seed(2))], model.max_div_factor)
    got = mlflow.pyfunc.load_model(model_uri).predict({"feats": feats.numpy(), "masks": masks.numpy()})
    with torch.no_grad():
        expected = model(feats, masks)
    assert got[0]["scores"] == expected[0]["scores"].tolist() and len(got[0]["scores"]) > 0


def test_local_store_one_parent_per_group_and_everything_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    (tmp_path / "store").mkdir()
    logged = _log_two_experiments(tmp_path, "dvc-run-1")
    _check_logged(logged)

    # a training that starts over replaces its seed's earlier run; one that resumes continues it
    exp_a = logged["a"].run_id
    first_seed = seed_run(exp_a, 0)
    assert seed_run(exp_a, 0) == first_seed
    again = seed_run(exp_a, 0, fresh=True)
    assert again != first_seed and mlflow_client().get_run(first_seed).info.lifecycle_stage == "deleted"
    assert seed_run(exp_a, 0) == again

    # a live epoch logged from training is not logged twice when the whole history follows
    parent = parent_run("talbench-test", "dvc-run-2")
    child = experiment_run(parent, "exp_c")
    assert EpochLogger(child).log_epoch(HISTORY[0])
    assert experiment_run(parent, "exp_c") == child
    log_experiment_run(parent, "exp_c", config=logged["config"], history=HISTORY, dataset="d", task="t", features="f")
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    assert [m.step for m in client.get_metric_history(child, "train/final_loss")] == [0, 1, 2]

    # two processes asking at the same moment end up with the same single parent
    ids: list[str] = []
    barrier = threading.Barrier(4)

    def ask() -> None:
        barrier.wait()
        ids.append(parent_run("talbench-test", "dvc-run-3"))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 and len(set(ids)) == 1
    live = client.search_runs([client.get_run(ids[0]).info.experiment_id], "tags.`talbench.group` = 'dvc-run-3'")
    assert [r.info.run_id for r in live] == ids[:1]


def test_epoch_logger_turns_store_failures_into_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    importlib.import_module("mlflow.entities")  # imported here, so the worker's deadline measures only the store

    hang = threading.Event()

    class Store:
        def __init__(self, mode: str) -> None:
            self.mode = mode

        def log_batch(self, run_id: str, metrics: list[Any]) -> None:
            if self.mode == "raise":
                raise RuntimeError("database is locked\nmore detail")
            hang.wait(5)

    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(mlflow_tracking, "tracking_client", lambda: Store("raise"))
    started = time.monotonic()
    assert not EpochLogger("r", timeout=2).log_epoch(HISTORY[0])
    assert "database is locked" in caplog.text and "more detail" not in caplog.text

    monkeypatch.setattr(mlflow_tracking, "tracking_client", lambda: Store("hang"))
    slow = EpochLogger("r", timeout=0.2)
    assert not slow.log_epoch(HISTORY[0])
    assert not slow.log_epoch(HISTORY[1])  # the first is still hanging: skipped at once
    assert time.monotonic() - started < 1.5
    assert "did not answer within" in caplog.text and "still hanging" in caplog.text
    hang.set()


def test_system_metrics_are_sampled_into_the_run_and_continue_on_retraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = mlflow.MlflowClient(tracking_uri())
    run = experiment_run(parent_run("talbench-test", "sys-1"), "exp_sys")
    client.set_terminated(run)  # as after an earlier train + evaluate: sampling must still happen
    for _ in range(2):
        with system_metrics(run, interval=0.2):
            sum(i * i for i in range(3_000_000))  # some CPU work to sample
            time.sleep(0.5)
    cpu = client.get_metric_history(run, "system/cpu_utilization_percentage")
    memory = client.get_metric_history(run, "system/system_memory_usage_megabytes")
    assert len(cpu) >= 4 and len(memory) == len(cpu)
    steps = sorted(m.step for m in cpu)
    assert steps == list(range(len(steps)))  # the second block continued the steps, no overwrite
    assert all(0 <= m.value <= 100 * os.cpu_count() for m in cpu) and all(m.value > 0 for m in memory)


def test_system_metrics_never_stop_or_stall_training(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    caplog.set_level(logging.WARNING)

    def unreachable() -> Any:
        raise ConnectionError("tracking server went away\ntraceback")

    monkeypatch.setattr(mlflow_tracking, "tracking_client", unreachable)
    ran = []
    with system_metrics("r"):
        ran.append(1)
    assert ran == [1] and "no system metrics: tracking server went away" in caplog.text

    class Client:
        def update_run(self, run_id: str, status: str) -> None:
            pass

    hang = threading.Event()
    monkeypatch.setattr(mlflow_tracking, "tracking_client", Client)
    monkeypatch.setattr(SystemMetricsMonitor, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(SystemMetricsMonitor, "start", lambda self: None)
    monkeypatch.setattr(SystemMetricsMonitor, "finish", lambda self: hang.wait(5))
    started = time.monotonic()
    with system_metrics("r", timeout=0.3):
        ran.append(2)
    assert ran == [1, 2] and time.monotonic() - started < 2
    assert "not written within" in caplog.text
    hang.set()


def test_metric_names_are_the_same_on_every_dataset_and_fit_mlflow_limits() -> None:
    # one formatting of a threshold, whichever the score key used
    assert metric_name("mAP@0.3") == metric_name("mAP@0.30") == "mAP/tIoU_0.30"
    assert metric_name("mAP@0.95") == "mAP/tIoU_0.95" and metric_name("mAP@.5") == "mAP/tIoU_0.50"
    assert metric_name("mAP@0.39999999999999997") == "mAP/tIoU_0.40"  # np.linspace's 0.4
    assert metric_name("mAP@0.125") == "mAP/tIoU_0.125"  # a threshold two decimals cannot tell from 0.13
    assert metric_name("R@1x@0.5") == "recall/1x_tIoU_0.50" and metric_name("R@10x@0.70") == "recall/10x_tIoU_0.70"
    assert metric_name("average_mAP") == "average_mAP" and metric_name("average_mAP", "std") == "average_mAP_std"
    assert metric_name("mAP@0.50", "low") == "mAP_low/tIoU_0.50" and metric_name("R@1x@0.50", "high") == "recall_high/1x_tIoU_0.50"
    assert metric_name("AP (class #3)") == "AP _class _3_"
    with pytest.raises(ValueError, match="statistic"):
        metric_name("mAP@0.50", "mean")
    # THUMOS14's and EPIC's mAP at 0.5 share a name; the curve's steps are the thresholds in hundredths
    thumos = score_metrics({"mAP": {f"mAP@{t:.2f}": 0.1 for t in (0.3, 0.4, 0.5, 0.6, 0.7)}})
    epic = score_metrics({"mAP": {f"mAP@{t:.1f}": 0.1 for t in (0.1, 0.2, 0.3, 0.4, 0.5)}})
    assert set(thumos) & set(epic) == {"mAP/tIoU_0.30", "mAP/tIoU_0.40", "mAP/tIoU_0.50"}
    assert map_curve({"mAP": {"mAP@0.55": 0.2, "mAP@0.95": 0.1}, "recall": {"R@1x@0.5": 1.0}}) == {55: 0.2, 95: 0.1}
    assert score_metrics({"timing": {"train_s": 12.5, "infer_s": 1.25, "train_s_per_seed": {"0": 12.5}}}) == {
        "train_time_s": 12.5, "infer_time_s": 1.25}
    config, _ = _tiny_model()
    config["dataset"]["json_file"] = "x" * 7000
    flat = flatten_config(config)
    assert len(flat["dataset.json_file"]) == 6000
    assert flat["ema.enabled"] == "True" and flat["train_cfg.head_empty_cls"] == "[]"
    assert "model.test_cfg.nms_method" not in flat and flat["test_cfg.nms_method"] == "soft"
    with pytest.raises(ValueError, match="group"):
        parent_run("talbench-test", "it's")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_check_reachable_fails_fast_in_one_line() -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(InputError) as err:
        check_reachable(uri, timeout=5)
    assert time.monotonic() - started < 2
    message = str(err.value)
    assert "\n" not in message and "cannot be reached" in message and uri in message
    assert message.startswith("MLFLOW_TRACKING_URI: ")
    check_reachable(f"sqlite:///{Path.cwd()}/mlflow.db")  # local stores need no server
    check_reachable("file:///nowhere")


def test_default_store_is_mlruns_db_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    run_id = parent_run("talbench-default", "g")
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()
    import mlflow

    client = mlflow.MlflowClient(tracking_uri())
    exp_id = client.get_run(run_id).info.experiment_id
    location = client.get_experiment(exp_id).artifact_location
    assert Path(location.removeprefix("file://")) == tmp_path / "mlruns" / "talbench-default"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the default is not written into the environment


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Any:
    """A real `mlflow server` on a free local port, stopped through its own process group."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,  # its workers share its group
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(0.25)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_tracking_server_over_http(mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    check_reachable(mlflow_server)
    logged = _log_two_experiments(tmp_path, "airflow-run-1")
    _check_logged(logged)
    # artifacts went through the server into its artifacts destination, not into the client's cwd
    assert list((tmp_path / "server-artifacts").rglob("config.yaml")) and not (tmp_path / "mlruns").exists()


def test_processes_starting_together_on_a_fresh_store_all_succeed(tmp_path: Path) -> None:
    """Two trainings of one Airflow run make the workspace's store at the same moment: without the
    lock one of them fails in MLflow's schema migration."""
    import subprocess
    import sys

    go = tmp_path / "go"
    script = f"""
import os, sys, time
from pathlib import Path
while not Path({str(go)!r}).exists():
    time.sleep(0.005)
from talbench.tracking import parent_run, experiment_run
parent = parent_run("talbench", "together")
experiment_run(parent, sys.argv[1])
"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [subprocess.Popen([sys.executable, "-c", script, f"exp{i}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(4)]
    time.sleep(6)  # every process has imported MLflow and waits
    go.touch()
    outs = [(p.wait(timeout=120), p.stdout.read()) for p in procs]
    assert all(code == 0 for code, _ in outs), "\n".join(out[-2000:] for code, out in outs if code)
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("talbench").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["exp0", "exp1", "exp2", "exp3", "together"]


def test_score_metrics_carry_the_bootstrap_intervals() -> None:
    scores = {"mAP": {"mAP@0.50": 0.4}, "average_mAP": 0.4, "recall": {"R@1x@0.50": 0.5},
              "interval": {"level": 0.95, "resamples": 1000, "seed": 0, "average_mAP": [0.3, 0.45],
                           "mAP": {"mAP@0.50": [0.31, 0.46]}}}
    assert score_metrics(scores) == {"mAP/tIoU_0.50": 0.4, "recall/1x_tIoU_0.50": 0.5, "average_mAP": 0.4,
                                     "average_mAP_low": 0.3, "average_mAP_high": 0.45,
                                     "mAP_low/tIoU_0.50": 0.31, "mAP_high/tIoU_0.50": 0.46}
    del scores["interval"]
    assert "average_mAP_low" not in score_metrics(scores)  # scores written before evaluate bootstrapped


def test_log_report_attaches_the_report_and_summary_to_the_invocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from talbench.tracking import log_report

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TALBENCH_RUN_GROUP", "report-1")
    report = tmp_path / "benchmark"
    report.mkdir()
    (report / "benchmark.md").write_text("# talbench benchmark\n")
    assert log_report(None, report, {"average_mAP/a": 0.5}) is None  # no stage tracked: nowhere to attach it
    parent = parent_run("talbench", "report-1", name="benchmark today abc1234", params={"seeds": "[0, 1]"})
    # a later stage of the same invocation finds it (its name is kept) and adds only the params it lacks
    assert parent_run("talbench", "report-1", name="another name", params={"seeds": "[0, 1]", "data.source": "real"}) == parent
    assert log_report(None, report, {"average_mAP/ego4d_mq-slowfast+egovlp": 0.25}) == parent
    client = mlflow.MlflowClient(tracking_uri())
    run = client.get_run(parent)
    assert run.info.run_name == "benchmark today abc1234" and run.info.status == "FINISHED"
    assert run.data.params == {"seeds": "[0, 1]", "data.source": "real"}
    assert run.data.metrics == {"average_mAP/ego4d_mq-slowfast_egovlp": 0.25}  # '+' is not allowed in metric names
    assert [a.path for a in client.list_artifacts(parent, "report")] == ["report/benchmark.md"]


def test_stage_log_copies_what_the_stage_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from talbench.tracking import stage_log

    with stage_log(tmp_path / "stage.log") as path:
        print("trained 3 epochs")
        print("a warning", file=sys.stderr)
        kept = sys.stderr
        assert path.read_text() == "trained 3 epochs\na warning\n"  # complete while the stage runs: it attaches it then
    kept.write("after the stage\n")  # a handler made inside the block: still written through, no longer copied
    assert path.read_text() == "trained 3 epochs\na warning\n"
    out, err = capsys.readouterr()
    assert out == "trained 3 epochs\n" and err == "a warning\nafter the stage\n"
