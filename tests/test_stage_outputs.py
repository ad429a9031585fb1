"""Stages are all-or-nothing, as a user meets them: real stage processes, bad input, kill -9.

Every case checks the promise of the README: one `error:` line naming file, item and field, the
documented exit code, and the outputs byte-identical to what they were (or, after a kill, the
earlier complete set or the new complete set, never a mix).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from talbench.io import recover_outputs

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "thumos14-i3d"
TINY = {"model": {"embd_dim": 32, "fpn_dim": 32, "head_dim": 32}, "opt": {"epochs": 2, "warmup_epochs": 1}}
SEEDS = [0, 1]  # two training seeds: a stage's outputs span several runs
EVALUATE_OUTPUTS = (*(f"predictions/seed-{s}.json" for s in SEEDS), "scores.json", "metrics.json", "map_vs_tiou.csv", "pr_curve.csv", "pr_curve.png", "mlflow.json", "timing.json")

pytestmark = pytest.mark.slow


def stage(project: Path, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "components" / f"{name}.py"), *args], cwd=project,
                          capture_output=True, text=True, timeout=600, env=_env(env))


def talbench(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "talbench.cli", *args], cwd=project, capture_output=True, text=True, timeout=600, env=_env())


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"TALBENCH_RUN_GROUP": "stage-outputs-test", "OMP_NUM_THREADS": "1"} | (extra or {})


def one_error_line(result: subprocess.CompletedProcess, code: int, *needles: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones included) → md5 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def project(thumos_project, tmp_path_factory) -> Path:
    """A project folder: the THUMOS twin where the fetch stage puts it, one tiny experiment, trained."""
    root = thumos_project(tmp_path_factory.mktemp("stage-outputs"), EXPERIMENT, TINY, SEEDS)
    result = stage(root, "train", EXPERIMENT)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def evaluated(project: Path) -> dict[str, str]:
    result = stage(project, "evaluate", EXPERIMENT)
    assert result.returncode == 0, result.stderr[-3000:]
    return snapshot(project / "outputs" / EXPERIMENT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- defect 1: an output path that is a folder is refused, nothing removed ----------------------


def test_score_out_naming_an_experiment_folder_removes_nothing(project, evaluated):
    folder = project / "outputs" / EXPERIMENT
    annotations = project / "data/synthetic/thumos14/thumos/annotations/thumos14.json"
    result = talbench(project, "score", "--annotations", str(annotations), "--predictions", str(folder / "predictions" / "seed-0.json"),
                      "--dataset", "thumos14", "--out", str(folder))
    one_error_line(result, 2, str(folder), "field 'out'", "a folder")
    assert snapshot(folder) == evaluated


def test_infer_out_naming_a_folder_is_refused_before_any_work(project, evaluated):
    folder = project / "outputs" / EXPERIMENT
    run = folder / "train" / "seed-0"
    result = talbench(project, "infer", str(run / "config.yaml"), str(run / "last.ckpt"), "--out", str(folder / "train"))
    one_error_line(result, 2, str(folder / "train"), "a folder")
    assert snapshot(folder) == evaluated


# -- defect 2: checkpoints never run code --------------------------------------------------------


class _RunsCode:
    """Pickles as a call of os.system: what a crafted checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "code-ran"
    path = tmp_path / "crafted" / "last.ckpt"
    path.parent.mkdir()
    torch.save({"model": _RunsCode(marker), "optimizer": {}, "epoch": 0, "step": 0, "history": [], "config": {}, "ema": None}, path)
    return path, marker


def test_infer_refuses_a_checkpoint_that_would_run_code(project, tmp_path):
    checkpoint, marker = _crafted_checkpoint(tmp_path)
    config = project / "outputs" / EXPERIMENT / "train" / "seed-0" / "config.yaml"
    result = talbench(project, "infer", str(config), str(checkpoint), "--out", str(tmp_path / "preds.json"))
    one_error_line(result, 2, str(checkpoint), "refusing to load")
    assert not marker.exists() and not (tmp_path / "preds.json").exists()


def test_train_resume_refuses_a_checkpoint_that_would_run_code(project, tmp_path):
    checkpoint, marker = _crafted_checkpoint(tmp_path)
    before = snapshot(checkpoint.parent)
    config = project / "outputs" / EXPERIMENT / "train" / "seed-0" / "config.yaml"
    result = talbench(project, "train", str(config), "--output", str(checkpoint.parent), "--resume")
    one_error_line(result, 2, str(checkpoint), "refusing to load")
    assert not marker.exists() and snapshot(checkpoint.parent) == before


@pytest.mark.parametrize("damage", ["truncated", "json", "empty", "another_model", "folder"])
def test_unusable_checkpoints_are_one_line(project, tmp_path, damage):
    good = project / "outputs" / EXPERIMENT / "train" / "seed-0" / "last.ckpt"
    config = good.parent / "config.yaml"
    bad = tmp_path / "bad.ckpt"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "json":
        bad.write_text('{"model": {}}')
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "another_model":
        state = torch.load(good, weights_only=True)
        state["ema"] = {k: torch.zeros(1) for k in state["ema"]}
        torch.save(state, bad)
    else:
        bad.mkdir()
    result = talbench(project, "infer", str(config), str(bad), "--out", str(tmp_path / "preds.json"))
    one_error_line(result, 2, str(bad))
    assert not (tmp_path / "preds.json").exists()


# -- defect 4: the evaluate stage is all-or-nothing ---------------------------------------------


def test_evaluate_with_an_unreachable_tracking_server_changes_nothing(project, evaluated):
    folder = project / "outputs" / EXPERIMENT
    mtimes = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    started = time.monotonic()
    result = stage(project, "evaluate", EXPERIMENT, env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"})
    one_error_line(result, 2, "MLFLOW_TRACKING_URI", "cannot be reached")
    assert "inference" not in result.stderr, "the stage should stop before inferring"
    assert snapshot(folder) == evaluated and {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == mtimes
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("uri", ["localhost:5000", "sqlite:///no/such/folder/mlflow.db", "http://"])
def test_malformed_tracking_uri_stops_train_before_any_work(project, uri):
    folder = project / "outputs" / EXPERIMENT
    before = snapshot(folder)
    result = stage(project, "train", EXPERIMENT, env={"MLFLOW_TRACKING_URI": uri})
    one_error_line(result, 2, "MLFLOW_TRACKING_URI", "field 'tracking'")
    assert snapshot(folder) == before


def _when(path: Path) -> Callable[[subprocess.Popen, str], bool]:
    return lambda proc, err: path.exists()


def _when_any(folder: Path, pattern: str) -> Callable[[subprocess.Popen, str], bool]:
    return lambda proc, err: folder.is_dir() and any(folder.glob(pattern))


def _killed_at(project: Path, ready: Callable[[subprocess.Popen, str], bool], name: str = "evaluate", *args: str) -> bool:
    """Start a stage, SIGKILL it once `ready`; False if it ended first."""
    err_path = project / f"{name}.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "components" / f"{name}.py"), *(args or (EXPERIMENT,))], cwd=project,
                                stdout=subprocess.DEVNULL, stderr=err, env=_env())
        deadline = time.monotonic() + 300
        while proc.poll() is None and not ready(proc, err_path.read_text()):
            assert time.monotonic() < deadline
            time.sleep(0.005)
        killed = proc.poll() is None
        proc.kill()  # SIGKILL, unless it has ended already
        proc.wait()
    return killed


def test_kill_9_at_any_point_of_evaluate_leaves_the_old_or_the_new_outputs(project, evaluated):
    folder = project / "outputs" / EXPERIMENT
    staging = folder / ".staging-evaluate" / "new"
    # records of one run: mlflow.json names a new model version, timing.json holds this run's seconds
    records = ("mlflow.json", "timing.json")
    new = {k: v for k, v in evaluated.items() if k not in records}
    points = {
        "starting": lambda proc, err: True,
        "inferring": lambda proc, err: "inference" in err,
        "writing outputs": _when(staging / "predictions" / "seed-0.json"),
        "tracking": _when(staging / "pr_curve.png"),
        "committing": _when(folder / ".staging-evaluate" / "COMMIT"),
    }
    killed = []
    for point, ready in points.items():
        for name in EVALUATE_OUTPUTS:  # a distinct, complete earlier set
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_text(f"old {name}\n")
        old = snapshot(folder)
        if _killed_at(project, ready):
            killed.append(point)
        recover_outputs(folder, "evaluate")  # what the next run of the stage does first
        now = snapshot(folder)
        now_without_mlflow = {k: v for k, v in now.items() if k not in records}
        assert now == old or now_without_mlflow == new, f"killed while {point}: a mix of old and new outputs"
        assert not any(p.name.startswith(".staging-") for p in folder.iterdir())
        if now != old:
            assert json.loads((folder / "mlflow.json").read_text())["run_id"]
    assert len(killed) >= 3, f"the stage finished before most kill points: {killed}"


# -- training: no mixed or half-made run folders --------------------------------------------------


def test_train_into_a_folder_holding_a_run_is_refused(project, tmp_path):
    run = project / "outputs" / EXPERIMENT / "train" / "seed-0"
    before = snapshot(run)
    result = talbench(project, "train", str(run / "config.yaml"), "--output", str(run))
    one_error_line(result, 2, str(run), "--resume", "--overwrite")
    assert snapshot(run) == before
    result = talbench(project, "train", str(run / "config.yaml"), "--output", str(run), "--resume", "--overwrite")
    one_error_line(result, 2, "--overwrite")
    assert snapshot(run) == before


def test_a_run_that_fails_before_its_first_epoch_leaves_no_folder(project, tmp_path):
    run = project / "outputs" / EXPERIMENT / "train" / "seed-0"
    out = tmp_path / "new-run"
    # batch size above the number of training videos: found after the config is read, before training
    result = talbench(project, "train", str(run / "config.yaml"), "--output", str(out), "--set", "loader.batch_size=1000")
    one_error_line(result, 2, "batch_size")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line(project, tmp_path):
    run = project / "outputs" / EXPERIMENT / "train" / "seed-0"
    result = talbench(project, "infer", str(run / "config.yaml"), str(run / "last.ckpt"), "--out", str(tmp_path / "p.json"), "--device", "cuda")
    one_error_line(result, 2, "--device", "CUDA is not available")
    result = talbench(project, "infer", str(run / "config.yaml"), str(run / "last.ckpt"), "--out", str(tmp_path / "p.json"), "--device", "tpu")
    one_error_line(result, 2, "--device")
    assert not (tmp_path / "p.json").exists()


TRAIN_OUTPUTS = (*(f"train/seed-{s}/{f}" for s in SEEDS for f in ("last.ckpt", "metrics.jsonl", "config.yaml")), "train_curve.csv")


def _train_outputs(folder: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(folder).items() if k in TRAIN_OUTPUTS}


def test_kill_9_at_any_point_of_train_leaves_the_old_or_the_new_run(project):
    folder = project / "outputs" / EXPERIMENT
    new = _train_outputs(folder)  # training is deterministic on one machine: a rerun gives these bytes
    points = {
        "starting": lambda proc, err: True,
        "training": _when(folder / ".train-partial" / "seed-0" / "last.ckpt"),
        "committing": _when(folder / ".staging-train" / "new" / "train_curve.csv"),
    }
    killed = []
    for point, ready in points.items():
        for name in TRAIN_OUTPUTS:  # a distinct, complete earlier set
            (folder / name).write_text(f"old {name}\n")
        old = _train_outputs(folder)
        if _killed_at(project, ready, "train"):
            killed.append(point)
        recover_outputs(folder, "train")  # what the next run of the stage does first
        assert _train_outputs(folder) in (old, new), f"killed while {point}: a mix of old and new outputs"
    assert len(killed) >= 2, f"the stage finished before most kill points: {killed}"
    result = stage(project, "train", EXPERIMENT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _train_outputs(folder) == new and not (folder / ".train-partial").exists()


def test_kill_9_while_training_then_resume_finishes_the_run(project):
    """Killed during the second seed's first epochs: --resume keeps the finished first seed and continues the second."""
    folder = project / "outputs" / EXPERIMENT
    new = _train_outputs(folder)
    whole = {seed: torch.load(folder / "train" / f"seed-{seed}" / "last.ckpt", weights_only=True) for seed in SEEDS}
    partial = folder / ".train-partial" / f"seed-{SEEDS[1]}" / "last.ckpt"
    assert _killed_at(project, _when(partial), "train"), "training ended before it could be killed"
    assert _train_outputs(folder) == new, "a killed training changed the stage's outputs"
    result = stage(project, "train", EXPERIMENT, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    curve = (folder / "train_curve.csv").read_text().splitlines()
    assert curve[0].endswith("final_loss,final_loss_seed0,final_loss_seed1") and len(curve) == 1 + 3  # 2 epochs + 1 warm-up
    for seed in SEEDS:
        state = torch.load(folder / "train" / f"seed-{seed}" / "last.ckpt", weights_only=True)
        lines = (folder / "train" / f"seed-{seed}" / "metrics.jsonl").read_text().splitlines()
        assert len(state["history"]) == len(lines) == 3
        for key in ("model", "ema"):  # the optimizer's bookkeeping may differ in bytes, the weights may not
            assert all(torch.equal(tensor, state[key][name]) for name, tensor in whole[seed][key].items()), (seed, key)
    checkpoints = {f"train/seed-{s}/last.ckpt" for s in SEEDS}
    assert {k: v for k, v in _train_outputs(folder).items() if k not in checkpoints} == {k: v for k, v in new.items() if k not in checkpoints}
    assert not (folder / ".train-partial").exists()


# -- the system refuses: read-only and full disks ---------------------------------------------


@pytest.fixture()
def small_disk(tmp_path):
    """A 64 KiB tmpfs (root can mount one here); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _score(project: Path, out: Path) -> subprocess.CompletedProcess:
    folder = project / "outputs" / EXPERIMENT
    annotations = project / "data/synthetic/thumos14/thumos/annotations/thumos14.json"
    return talbench(project, "score", "--annotations", str(annotations), "--predictions", str(folder / "predictions" / "seed-0.json"),
                    "--dataset", "thumos14", "--out", str(out))


def test_full_disk_is_one_line_exit_3_and_leaves_the_old_file(project, evaluated, small_disk):
    out = small_disk / "scores.json"
    out.write_text("old\n")
    (small_disk / "filler").write_bytes(b"\0" * (60 * 1024))
    one_error_line(_score(project, out), 3, str(out), "No space left on device")
    assert out.read_text() == "old\n" and sorted(p.name for p in small_disk.iterdir()) == ["filler", "scores.json"]


def test_read_only_folder_is_one_line_exit_3(project, evaluated, small_disk):
    (small_disk / "reports").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        one_error_line(_score(project, small_disk / "reports" / "scores.json"), 3, "reports", "read-only")
        assert not (small_disk / "reports" / "scores.json").exists()
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)


# -- fetch, validate and report under kill -9 ------------------------------------------------------


def _visible(snap: dict[str, str]) -> dict[str, str]:
    """Without work folders a kill leaves behind (hidden names; the stage's next run removes them)."""
    return {k: v for k, v in snap.items() if not any(part.startswith(".") for part in Path(k).parts)}


def _set_seed(project: Path, seed: int) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["synthetic"]["seed"] = seed
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_kill_9_at_any_point_of_fetch_leaves_the_old_or_the_new_dataset(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    dataset, archives = tmp_path / "data/synthetic/thumos14", tmp_path / "data/synthetic/archives"
    snapshots = {}
    for seed in (1, 0):  # seed 1: the earlier data; seed 0: the new
        _set_seed(tmp_path, seed)
        assert stage(tmp_path, "fetch", "thumos14").returncode == 0
        snapshots[seed] = snapshot(dataset)
    assert snapshots[0] != snapshots[1]
    points = {
        "starting": lambda proc, err: True,
        "building the archive": _when_any(archives, ".thumos14-ci-seed0.zip.*"),
        "unpacking": _when_any(dataset, ".unpack.*"),
    }
    killed = []
    for point, ready in points.items():
        _set_seed(tmp_path, 1)
        assert stage(tmp_path, "fetch", "thumos14").returncode == 0
        (archives / "thumos14-ci-seed0.zip").unlink(missing_ok=True)
        _set_seed(tmp_path, 0)
        if _killed_at(tmp_path, ready, "fetch", "thumos14"):
            killed.append(point)
        now = _visible(snapshot(dataset))
        # the data is old or new; its manifest (lineage) matches it or is absent until the next fetch
        data = {k: v for k, v in now.items() if k != "MANIFEST.json"}
        assert data in ({k: v for k, v in snap.items() if k != "MANIFEST.json"} for snap in snapshots.values()), \
            f"killed while {point}: a mix of old and new data"
        assert "MANIFEST.json" not in now or now in snapshots.values(), f"killed while {point}: a manifest of other data"
    assert len(killed) >= 2, f"the stage finished before most kill points: {killed}"
    assert stage(tmp_path, "fetch", "thumos14").returncode == 0
    assert snapshot(dataset) == snapshots[0], "the next run did not clean up after the kills"


def test_kill_9_at_any_point_of_validate_leaves_the_old_or_the_new_report(project):
    out = project / "reports/validation/thumos14"
    assert stage(project, "validate", "thumos14").returncode == 0
    new = snapshot(out)
    points = {
        "starting": lambda proc, err: True,
        "checking": _when(out / ".staging-validate" / "new"),
        "writing Data Docs": _when(out / ".staging-validate" / "new" / "data_docs"),
    }
    killed = []
    for point, ready in points.items():
        for path in out.rglob("*"):
            if path.is_file():
                path.write_text("old\n")
        old = snapshot(out)
        if _killed_at(project, ready, "validate", "thumos14"):
            killed.append(point)
        recover_outputs(out, "validate")
        assert snapshot(out) in (old, new), f"killed while {point}: a mix of old and new reports"
    assert len(killed) >= 2, f"the stage finished before most kill points: {killed}"


def test_kill_9_at_any_point_of_report_leaves_the_old_or_the_new_report(project, evaluated):
    assert stage(project, "validate", "thumos14").returncode == 0  # a real report to read, whatever ran before
    out = project / "reports/benchmark"
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.md").write_text("old\n")
    old = snapshot(out)
    points = {
        "starting": lambda proc, err: True,
        "plotting": _when_any(out.parent, ".benchmark.*"),
    }
    killed = [point for point, ready in points.items() if _killed_at(project, ready, "report", "--params", "params.yaml")]
    assert len(killed) == 2
    assert _visible(snapshot(out)) == old
    result = stage(project, "report", "--params", "params.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "benchmark.html").exists() and not any(out.parent.glob(".benchmark.*")), "stale work folders left"
