"""The logs a person reads: stages run as DVC and Airflow run them, their output piped to a file.

One tiny experiment (THUMOS twin, two seeds, three epochs) is trained and evaluated by the stage
commands with stdout and stderr going to one file; the log must be plain lines (no carriage-return
redraws, no escape codes), at most a progress line per interval, one result line per seed and per
stage, no warning, and `talbench summary` must print the table `make run` ends with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from talbench.progress import PROGRESS_ENV, format_duration

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "thumos14-i3d"
TINY = {"model": {"embd_dim": 32, "fpn_dim": 32, "head_dim": 32}, "opt": {"epochs": 2, "warmup_epochs": 1}}  # 3 epochs in all
SEEDS = [0, 1]
INTERVAL_S = 2  # a progress line every 2 s at most: several in these short runs
PROGRESS_LINE = re.compile(r"^(train|inference): ")

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the project's own store
    return env | {"TALBENCH_RUN_GROUP": "logs-test", "OMP_NUM_THREADS": "1", PROGRESS_ENV: str(INTERVAL_S)}


@pytest.fixture(scope="module")
def project(thumos_project, tmp_path_factory) -> Path:
    """A project folder: the THUMOS twin where the fetch stage puts it and one tiny experiment."""
    return thumos_project(tmp_path_factory.mktemp("logs"), EXPERIMENT, TINY, SEEDS)


@pytest.fixture(scope="module")
def logs(project: Path) -> dict[str, tuple[str, float]]:
    """Each stage's log (stdout and stderr into one file, no terminal) and its wall time."""
    found = {}
    for stage in ("train", "evaluate"):
        path = project / f"{stage}.log"
        started = time.monotonic()
        with path.open("w") as log:
            done = subprocess.run([sys.executable, str(ROOT / "components" / f"{stage}.py"), EXPERIMENT], cwd=project,
                                  stdout=log, stderr=subprocess.STDOUT, env=_env(), timeout=600)
        found[stage] = (path.read_text(encoding="utf-8"), time.monotonic() - started)
        assert done.returncode == 0, found[stage][0][-3000:]
    return found


def summary(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "talbench.cli", "summary", *args], cwd=project,
                          capture_output=True, text=True, timeout=120, env=_env())


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_stage_log_is_plain_short_lines(logs, stage):
    text, _ = logs[stage]
    assert "\r" not in text and "\x1b" not in text  # no bar redraws, no colours
    lines = text.splitlines()
    assert max(map(len, lines)) <= 400, max(lines, key=len)


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_progress_lines_come_at_most_once_per_interval(logs, stage):
    text, seconds = logs[stage]
    progress = [line for line in text.splitlines() if PROGRESS_LINE.match(line)]
    closing = {"train": r"train: \d+ steps in \S+ \([\d.]+ it/s\), final loss [\d.]+ \(last epoch mean\)",
               "evaluate": r"inference: \d+ videos in \S+ \([\d.]+ videos/s\)"}[stage]
    loops = sum(1 for line in progress if re.fullmatch(closing, line))
    assert loops == len(SEEDS), progress  # one training or inference loop per seed, each closed by its summary
    assert len(progress) - loops <= seconds / INTERVAL_S + len(SEEDS), progress


def test_the_training_log_is_bounded_per_epoch(logs):
    text, _ = logs["train"]
    epochs = int(re.search(r"^train: epoch \d+/(\d+),", text, re.M).group(1))
    assert epochs == 3
    assert len(text.encode()) / (epochs * len(SEEDS)) <= 1500, text  # a few lines per epoch, not a redraw per step


def test_each_seed_and_each_stage_has_one_result_line(logs):
    train, evaluate = logs["train"][0], logs["evaluate"][0]
    for seed in SEEDS:
        assert len(re.findall(rf"^{EXPERIMENT}: seed {seed}: trained \d+ iterations in \d+ s \(", train, re.M)) == 1, train
    last = evaluate.strip().splitlines()[-1]
    assert re.fullmatch(rf"{EXPERIMENT}: average mAP \d+\.\d+ ± \d+\.\d+ .*", last), last


def test_the_logs_hold_no_warnings(logs):
    for stage, (text, _) in logs.items():
        warned = [line for line in text.splitlines() if re.search(r"warn", line, re.I)]
        assert not warned, (stage, warned)


def test_the_counts_line_says_why_predictions_were_not_scored(logs):
    lines = [line for line in logs["evaluate"][0].splitlines() if line.startswith("counts: ")]
    assert len(lines) == len(SEEDS), lines
    assert all("of classes without ground truth here (ignored: the protocol scores the classes that have instances)" in line
               for line in lines), lines


def test_summary_prints_the_table_of_every_experiment(project, logs):
    started = time.time() - 754
    result = summary(project, "--started", str(started))
    assert result.returncode == 0, result.stderr
    scores = json.loads((project / "outputs" / EXPERIMENT / "scores.json").read_text())
    tracked = json.loads((project / "outputs" / EXPERIMENT / "mlflow.json").read_text())
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"experiment\s+average mAP \(%\)\s+seeds\s+train / seed\s+infer / seed", lines[0]), lines
    row = lines[2].split()
    mean, std = 100 * scores["average_mAP"], 100 * scores["std"]["average_mAP"]
    recorded = json.loads((project / "outputs" / EXPERIMENT / "timing.json").read_text())
    timing = [format_duration(recorded[key]) for key in ("train_s", "infer_s")]
    assert row == [EXPERIMENT, f"{mean:.2f}", "±", f"{std:.2f}", "0,1", *timing], lines
    assert re.fullmatch(r"total wall time: 12m3[4-9]s", lines[3]), lines
    assert f"MLflow: {tracked['tracking_uri']} (browse: mlflow ui --backend-store-uri {tracked['tracking_uri']})" in lines


def test_summary_fails_in_one_line_when_an_experiment_has_no_scores(project, logs, tmp_path):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["experiments"]["thumos14-unfinished"] = params["experiments"][EXPERIMENT]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = summary(project, "--params", str(tmp_path / "params.yaml"))
    assert result.returncode == 2 and result.stdout == ""
    expected = ("error: outputs/thumos14-unfinished/scores.json: thumos14-unfinished: field 'scores': missing: the experiment's "
                "evaluate stage has not finished; run `make run` (dvc repro)")
    assert result.stderr.strip() == expected
