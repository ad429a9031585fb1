"""The DVC pipeline as a user runs it: real `dvc repro`, `dvc exp run`, metrics and plots, in a copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("thumos14-i3d", "anet13_tsp-tsp")


def sh(args, cwd, check=True, timeout=900):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project's files in a fresh git repo, with a two-experiment benchmark that trains briefly."""
    repo = tmp_path_factory.mktemp("repo")
    files = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pipeline"]["datasets"] = ["thumos14", "anet13_tsp"]
    params["experiments"] = {name: params["experiments"][name] for name in EXPERIMENTS}
    for entry in params["experiments"].values():
        entry["overrides"] = {"opt": {"epochs": 3, "warmup_epochs": 1}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], repo)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project"], repo)
    return repo


@pytest.mark.slow
def test_repro_runs_end_to_end_then_is_a_no_op(project):
    run = sh(["dvc", "repro"], project)
    for stage in ("fetch@thumos14", "validate@anet13_tsp", "train@thumos14-i3d", "evaluate@anet13_tsp-tsp", "report"):
        assert f"Running stage '{stage}'" in run.stdout
    for name in EXPERIMENTS:
        assert (project / "outputs" / name / "metrics.json").exists()
    html = (project / "reports/benchmark/benchmark.html").read_text()
    assert "thumos14-i3d" in html and "data:image/png;base64," in html and "published, real data" in html
    assert (project / "reports/validation/thumos14/data_docs/index.html").exists()
    _check_mlflow(project)
    started = time.time()
    again = sh(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout and time.time() - started < 20
    metrics = sh(["dvc", "metrics", "show"], project).stdout
    assert "average_mAP" in metrics and "thumos14-i3d" in metrics
    sh(["dvc", "plots", "show", "-o", "plots_html"], project)
    assert (project / "plots_html/index.html").exists()


@pytest.mark.slow
def test_changing_one_experiment_retrains_only_it(project):
    run = sh(["dvc", "exp", "run", "-S", "experiments.anet13_tsp-tsp.overrides.opt.epochs=2"], project)
    assert "Running stage 'train@anet13_tsp-tsp'" in run.stdout
    assert "Running stage 'train@thumos14-i3d'" not in run.stdout
    assert "Running stage 'fetch@" not in run.stdout


@pytest.mark.slow
def test_wrong_md5_stops_at_fetch_and_keeps_earlier_outputs(project):
    report = (project / "reports/benchmark/benchmark.md").read_text()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthetic"]["md5"]["thumos14"]["ci"] = "0" * 32
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = sh(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0
    assert "fetch@thumos14" in failed.stdout + failed.stderr
    assert "field 'md5': expected 000" in failed.stdout + failed.stderr
    assert (project / "reports/benchmark/benchmark.md").read_text() == report


def _check_mlflow(project):
    """One run per experiment in the project's mlruns/, under one parent, each with a registered model."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns/mlflow.db'}")
    experiment = client.get_experiment_by_name("talbench")
    runs = client.search_runs([experiment.experiment_id], "tags.`talbench.role` = 'experiment'")
    assert sorted(r.data.tags["experiment"] for r in runs) == sorted(EXPERIMENTS)
    assert len({r.data.tags["mlflow.parentRunId"] for r in runs}) == 1
    for run in runs:
        assert "average_mAP" in run.data.metrics and "opt.learning_rate" in run.data.params
        assert run.data.tags["dvc_data_hash"].endswith(".dir")
        assert len(client.get_metric_history(run.info.run_id, "train/final_loss")) == 3 + 1  # epochs + warm-up
        assert client.search_model_versions(f"name='talbench-{run.data.tags['experiment']}'")
