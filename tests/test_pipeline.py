"""The DVC pipeline as a user runs it: real `dvc repro`, `dvc exp run`, metrics and plots, in a copy of the project."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("thumos14-i3d", "anet13_tsp-tsp")
SEEDS = [0, 1]


def sh(args, cwd, check=True, timeout=900):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}  # a few samples even from these short trainings
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
    params["pipeline"] |= {"datasets": ["thumos14", "anet13_tsp"], "seeds": SEEDS}
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
        metrics = json.loads((project / "outputs" / name / "metrics.json").read_text())
        assert set(metrics) == {"average_mAP", "average_mAP_std", "mAP@0.50", "R@1x@0.50", "seeds"}  # a readable `dvc metrics show`
        scores = json.loads((project / "outputs" / name / "scores.json").read_text())
        assert "AP_per_class" in scores and scores["interval"]["resamples"] == 1000
        assert set(scores["interval"]["mAP"]) == set(scores["mAP"])
        # the headline is the mean over the seeds, each seed's own scores beside it
        assert scores["seeds"] == SEEDS and sorted(scores["per_seed"]) == [str(s) for s in SEEDS]
        per_seed = [scores["per_seed"][str(s)]["average_mAP"] for s in SEEDS]
        assert scores["average_mAP"] == pytest.approx(sum(per_seed) / len(SEEDS), abs=1e-12)
        assert scores["std"]["average_mAP"] == pytest.approx(statistics.stdev(per_seed), abs=1e-12)
        assert sorted(p.name for p in (project / "outputs" / name / "predictions").iterdir()) == [f"seed-{s}.json" for s in SEEDS]
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
    plots_page = (project / "plots_html/index.html").read_text()
    assert "precision@0.50" in plots_page and "pr_curve.png" in plots_page and "map_vs_tiou" in plots_page
    header = (project / "outputs/thumos14-i3d/pr_curve.csv").read_text().splitlines()[0]
    assert header == "recall,precision@0.30,precision@0.40,precision@0.50,precision@0.60,precision@0.70"
    markdown = (project / "reports/benchmark/benchmark.md").read_text()
    assert "precision_recall.png" in markdown
    # every headline number as mean ± std over the seeds, with its interval over test videos
    assert "| avg | ± std (seeds) | avg, 95% interval |" in markdown and "trained with 2 seeds" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| thumos14-i3d |"))
    assert "(n=2)" in row
    low, high = (float(x) for x in row.rsplit("[", 1)[1].split("]")[0].split(","))
    assert 0.0 <= low <= high <= 100.0


@pytest.mark.slow
def test_changing_one_experiment_retrains_only_it(project):
    run = sh(["dvc", "exp", "run", "-S", "experiments.anet13_tsp-tsp.overrides.opt.epochs=2"], project)
    assert "Running stage 'train@anet13_tsp-tsp'" in run.stdout
    assert "Running stage 'train@thumos14-i3d'" not in run.stdout
    assert "Running stage 'fetch@" not in run.stdout


@pytest.mark.slow
def test_seeds_are_a_param_dvc_exp_run_can_change(project):
    run = sh(["dvc", "exp", "run", "-S", "pipeline.seeds=[1]"], project)
    for name in EXPERIMENTS:  # the seeds change what every experiment trains
        assert f"Running stage 'train@{name}'" in run.stdout
        scores = json.loads((project / "outputs" / name / "scores.json").read_text())
        assert scores["seeds"] == [1] and scores["std"] is None
        assert sorted(p.name for p in (project / "outputs" / name / "train").iterdir()) == ["seed-1"]
    markdown = (project / "reports/benchmark/benchmark.md").read_text()
    assert "one training run (seed 1): single-seed numbers" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| thumos14-i3d |"))
    assert "| single seed |" in row


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


# ---------------------------------------------------------------- bad input through `dvc repro`


def _twin_members(project: Path) -> dict[str, bytes]:
    """The unpacked THUMOS14 twin's files, named as in its archive (thumos/...)."""
    folder = project / "data/synthetic/thumos14"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _first_feature(members: dict[str, bytes]) -> str:
    return sorted(n for n in members if n.startswith("thumos/i3d_features/") and n.endswith(".npy"))[0]


def _edit_feature(edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[dict[str, bytes]], str]:
    def damage(members: dict[str, bytes]) -> str:
        name = _first_feature(members)
        buffer = io.BytesIO()
        np.save(buffer, edit(np.load(io.BytesIO(members[name]))))
        members[name] = buffer.getvalue()
        return Path(name).stem
    return damage


def _with_nan(a: np.ndarray) -> np.ndarray:
    a[2, 5] = np.nan
    return a


def _truncate_feature(members: dict[str, bytes]) -> str:
    name = _first_feature(members)
    members[name] = members[name][: len(members[name]) // 2]
    return Path(name).stem


def _escape(members: dict[str, bytes]) -> str:
    members["../escaped.txt"] = b"outside"
    return "../escaped.txt"


def _publish(project: Path, tmp: Path, members: dict[str, bytes], corrupt: bool = False) -> None:
    """Serve `members` as the real THUMOS14 archive (a file:// mirror) with its md5 in params.yaml."""
    mirror = tmp / f"thumos-{len(list(tmp.glob('*.zip')))}.zip"
    with zipfile.ZipFile(mirror, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    if corrupt:  # cut before the central directory: the md5 still matches, the archive is unreadable
        mirror.write_bytes(mirror.read_bytes()[: mirror.stat().st_size * 2 // 3])
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["source"] = "real"
    params["datasets"]["thumos14"]["archive"].update(
        mirrors=[mirror.as_uri()], md5=hashlib.md5(mirror.read_bytes()).hexdigest())
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_bad_archives_and_feature_files_stop_the_pipeline_at_the_right_stage(project, tmp_path):
    """As a user meets them: a damaged real archive stops `dvc repro` at fetch, a damaged feature
    file inside a good archive stops it at validate; one clear line, earlier outputs untouched."""
    good = _twin_members(project)
    _publish(project, tmp_path, dict(good))
    sh(["dvc", "repro", "validate@thumos14"], project)  # the good archive, through the real-data path
    real = project / "data/real/thumos14"
    earlier = {folder: _snapshot(project / folder) for folder in ("data/real/thumos14", "outputs/thumos14-i3d", "reports/benchmark")}
    assert earlier["data/real/thumos14"] and earlier["outputs/thumos14-i3d"]

    cases = [
        ("corrupt", lambda m: None, True, "fetch@thumos14", "archive is corrupt or truncated"),
        ("escaping", _escape, False, "fetch@thumos14", "escapes the target folder"),
        ("nan", _edit_feature(_with_nan), False, "validate@thumos14", "field 'finite': expect_"),
        ("width", _edit_feature(lambda a: a[:, :1024]), False, "validate@thumos14", "1024 channels, expected 2048"),
        ("truncated", _truncate_feature, False, "validate@thumos14", "unreadable feature file"),
    ]
    for case, damage, corrupt, stage, message in cases:
        members = dict(good)
        item = damage(members)
        _publish(project, tmp_path, members, corrupt)
        failed = sh(["dvc", "repro", "train@thumos14-i3d"], project, check=False)
        output = failed.stdout + failed.stderr
        assert failed.returncode != 0, case
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], (case, output[-3000:])
        if item:
            assert item in errors[0], (case, errors[0])
        assert f"failed to reproduce '{stage}'" in output, (case, output[-2000:])
        assert "Running stage 'train@thumos14-i3d'" not in output
        assert not list(project.rglob("escaped.txt"))
        if stage.startswith("fetch"):  # nothing unpacked: the earlier good data is as it was
            assert _snapshot(real) == earlier["data/real/thumos14"], case
        for folder in ("outputs/thumos14-i3d", "reports/benchmark"):
            assert _snapshot(project / folder) == earlier[folder], (case, folder)


def _check_mlflow(project):
    """One run per experiment in the project's mlruns/, under one readable parent, each with a
    registered model; names, params, inputs, artefacts and durations a user can work from."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlruns/mlflow.db'}")
    experiment = client.get_experiment_by_name("talbench")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # not MLflow 3's GenAI view
    runs = client.search_runs([experiment.experiment_id], "tags.`talbench.role` = 'experiment'")
    assert sorted(r.data.tags["experiment"] for r in runs) == sorted(EXPERIMENTS)
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in runs}
    _check_parent(client, client.get_run(parent_id), runs)
    # THUMOS14 (tIoU 0.3..0.7) and ActivityNet (0.5..0.95): the same names, mAP at a shared threshold included
    by_threshold = [{k for k in r.data.metrics if "tIoU_" in k} for r in runs]
    assert len({frozenset(set(r.data.metrics) - t) for r, t in zip(runs, by_threshold)}) == 1
    assert {"mAP/tIoU_0.50", "mAP/tIoU_0.70", "recall/1x_tIoU_0.50"} <= set.intersection(*by_threshold)
    md5 = yaml.safe_load((project / "params.yaml").read_text())["synthetic"]["md5"]
    for run in runs:
        name, dataset = run.data.tags["experiment"], run.data.tags["dataset"]
        assert "average_mAP" in run.data.metrics and "opt.learning_rate" in run.data.params
        metrics = run.data.metrics  # the bootstrap interval over test videos and the spread over seeds, beside the number
        assert metrics["average_mAP_low"] <= metrics["average_mAP_high"] and "mAP_low/tIoU_0.50" in metrics
        assert metrics["seeds"] == len(SEEDS) and metrics["average_mAP_std"] >= 0 and "mAP_std/tIoU_0.50" in metrics
        timing = json.loads((project / "outputs" / name / "timing.json").read_text())
        assert metrics["train_time_s"] == pytest.approx(timing["train_s"]) and timing["train_s"] > 0
        assert metrics["infer_time_s"] == pytest.approx(timing["infer_s"]) and timing["infer_s"] > 0
        curve = sorted(m.step for m in client.get_metric_history(run.info.run_id, "mAP_vs_tIoU"))
        assert curve == sorted(round(100 * float(k.split("_")[-1])) for k in metrics if k.startswith("mAP/"))
        assert run.data.tags["seeds"] == "0,1" and run.data.tags["model_seed"] == "0"
        # params are what ran: the device and precision of this machine, the real output folder
        trained = json.loads((project / "outputs" / name / "train/seed-0/training.json").read_text())
        params = run.data.params
        assert params["devices"] == f"['{trained['device']}']" and params["output_folder"] == f"outputs/{name}"
        assert params["train_cfg.precision"] == trained["precision"] in ("fp32", "bf16")
        assert params["test_cfg.precision"] in ("fp32", "bf16") and params["inference_device"] == trained["device"]
        # the data's version from the MANIFEST.json fetch writes (the twin archive's md5): a tag and the inputs' digest
        assert run.data.tags["data_hash"] == md5[dataset]["ci"]
        inputs = run.inputs.dataset_inputs
        assert sorted(i.tags[0].value for i in inputs) == ["test", "train"]
        assert {i.dataset.digest for i in inputs} == {md5[dataset]["ci"]}
        _check_seed_runs(client, experiment.experiment_id, run, timing)
        version = client.get_model_version(f"talbench-{name}", "1")
        assert f"{name}: ActionFormer on {dataset}" in version.description and md5[dataset]["ci"] in version.description
        assert version.tags["data_hash"] == md5[dataset]["ci"] and version.tags["dataset"] == dataset
        assert float(version.tags["average_mAP"]) == pytest.approx(
            json.loads((project / "outputs" / name / "scores.json").read_text())["per_seed"]["0"]["average_mAP"], abs=1e-6)
        plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
        assert {"plots/pr_curve.csv", "plots/pr_curve.png", "plots/map_vs_tiou.csv", "plots/train_curve.csv"} <= plots
        assert "scores.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {a.path for a in client.list_artifacts(run.info.run_id, "predictions")} == {f"predictions/seed-{s}.json" for s in SEEDS}
        logs = {a.path: a for a in client.list_artifacts(run.info.run_id, "logs")}
        assert set(logs) == {"logs/train.log", "logs/evaluate.log"} and all(a.file_size > 0 for a in logs.values())
        train_log = Path(client.download_artifacts(run.info.run_id, "logs/train.log")).read_text()
        assert f"{name}: seed 1: trained" in train_log


def _check_parent(client, parent, runs):
    """The invocation's run: a name, a description, each experiment's average mAP, the report."""
    assert parent.info.run_name.startswith("benchmark ") and parent.data.tags["talbench.group"]
    assert "talbench benchmark of 2 experiment(s)" in parent.data.tags["mlflow.note.content"]
    assert parent.data.params["seeds"] == str(SEEDS) and parent.data.params["data.source"] == "synthetic"
    for run in runs:
        name = run.data.tags["experiment"]
        assert parent.data.metrics[f"average_mAP/{name}"] == run.data.metrics["average_mAP"]
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/benchmark.html" in report and "report/benchmark.md" in report


def _check_seed_runs(client, experiment_id, run, timing):
    """Each seed's curve, machine usage, own scores and times; its run lasts as long as its training."""
    seed_runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert sorted(r.data.tags["seed"] for r in seed_runs) == [str(s) for s in SEEDS]
    for seed_run in seed_runs:
        seed = seed_run.data.tags["seed"]
        assert len(client.get_metric_history(seed_run.info.run_id, "train/final_loss")) == 3 + 1  # epochs + warm-up
        assert client.get_metric_history(seed_run.info.run_id, "system/cpu_utilization_percentage")
        assert "average_mAP_low" in seed_run.data.metrics and "seeds" not in seed_run.data.metrics
        assert seed_run.data.tags["precision"] in ("fp32", "bf16")  # what train_cfg.precision auto resolved to
        train_s = timing["train_s_per_seed"][seed]
        assert seed_run.data.metrics["train_time_s"] == pytest.approx(train_s)
        assert seed_run.data.metrics["infer_time_s"] == pytest.approx(timing["infer_s_per_seed"][seed])
        duration = (seed_run.info.end_time - seed_run.info.start_time) / 1000
        assert train_s <= duration <= train_s + 10, (duration, train_s)  # training, not training until evaluation
    spent = sum(timing["train_s_per_seed"].values())
    assert (run.info.end_time - run.info.start_time) / 1000 <= spent + 20
