"""Training, inference and scoring as a user runs them: real processes on `ci`-scale twins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from talbench.config import load_config
from talbench.data.archive import safe_extract
from talbench.data.synthetic import write_twin
from talbench.errors import InputError
from talbench.models import build_model, pad_batch
from talbench.training import loader_workers, make_optimizer, native_bf16, precision_context, resolve_precision, training_step

ROOT = Path(__file__).resolve().parents[1]
TALBENCH = [sys.executable, "-m", "talbench.cli"]
# A tiny THUMOS model: enough to check resume and multi-process semantics in seconds.
TINY = ["--set", "model.embd_dim=32", "--set", "model.fpn_dim=32", "--set", "model.head_dim=32",
        "--set", "opt.epochs=3", "--set", "opt.warmup_epochs=1"]


@pytest.fixture(scope="module")
def workdir(registry, tmp_path_factory):
    """A project-like folder with the twins unpacked where the configs expect them."""
    root = tmp_path_factory.mktemp("project")
    data = root / "data" / "synthetic"
    for like in ("thumos14", "anet13_tsp", "ego4d_mq"):
        safe_extract(write_twin(registry.dataset(like), "ci", 0, data / "archives").archive, data / like)
    return root


def run(args, cwd, timeout=900, env=None):
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train_infer_score(workdir, config, name, dataset, subset, *extra):
    out = workdir / "runs" / name
    run([*TALBENCH, "train", str(ROOT / config), "--output", str(out), *extra], workdir)
    run([*TALBENCH, "infer", str(ROOT / config), str(out / "last.ckpt"), "--out", str(out / "preds.json"), *extra], workdir)
    ann = yaml.safe_load((ROOT / config).read_text())["dataset"]["json_file"]
    run([*TALBENCH, "score", "--annotations", ann, "--predictions", str(out / "preds.json"), "--dataset", dataset,
         "--subset", subset, "--out", str(out / "metrics.json")], workdir)
    return json.loads((out / "metrics.json").read_text()), out


@pytest.mark.slow
def test_thumos_ci_train_infer_score(workdir):
    metrics, out = train_infer_score(workdir, "configs/ci/thumos_i3d.yaml", "thumos", "thumos14", "test")
    # A trivial detector (every class everywhere) scores ~1 average mAP here; a trained one far more.
    assert metrics["average_mAP"] > 0.12, metrics["mAP"]
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 14 and history[-1]["final_loss"] < history[0]["final_loss"]


@pytest.mark.slow
def test_ego4d_feature_combination(workdir):
    metrics, _ = train_infer_score(workdir, "configs/ci/ego4d_omnivore_egovlp.yaml", "ego4d", "ego4d_mq", "validation")
    assert metrics["average_mAP"] > 0.05, metrics["mAP"]
    assert metrics["recall"]["R@5x@0.50"] > 0.2


@pytest.mark.slow
def test_anet_class_agnostic_with_score_fusion(workdir):
    metrics, _ = train_infer_score(workdir, "configs/ci/anet_tsp.yaml", "anet", "anet13_tsp", "validation")
    assert metrics["average_mAP"] > 0.15, metrics["mAP"]


@pytest.mark.slow
def test_anet_without_score_file_says_so(workdir, tmp_path):
    config = ROOT / "configs/ci/anet_tsp.yaml"
    ckpt = tmp_path / "run"
    run([*TALBENCH, "train", str(config), "--output", str(ckpt), "--set", "opt.epochs=1", "--set", "opt.warmup_epochs=0"], workdir)
    result = subprocess.run([*TALBENCH, "infer", str(config), str(ckpt / "last.ckpt"), "--out", str(tmp_path / "p.json"),
                             "--set", "test_cfg.ext_score_file=null"], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 2
    assert "ext_score_file" in result.stderr and "class-agnostic" in result.stderr
    assert not (tmp_path / "p.json").exists()


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(workdir, tmp_path):
    config = str(ROOT / "configs/ci/thumos_i3d.yaml")
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    run([*TALBENCH, "train", config, "--output", str(whole), *TINY], workdir)
    proc = subprocess.Popen([*TALBENCH, "train", config, "--output", str(broken), *TINY], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (broken / "metrics.jsonl").exists() or len((broken / "metrics.jsonl").read_text().splitlines()) < 1:
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be interrupted"
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len((broken / "metrics.jsonl").read_text().splitlines()) < 3, "killed too late to test a mid-run resume"
    run([*TALBENCH, "train", config, "--output", str(broken), "--resume", *TINY], workdir)
    a, b = _weights(whole / "last.ckpt"), _weights(broken / "last.ckpt")
    assert a["step"] == b["step"]
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert a["history"] == b["history"]


@pytest.mark.slow
def test_two_process_gloo_training_matches_one_process(workdir, tmp_path):
    config = str(ROOT / "configs/ci/thumos_i3d.yaml")
    # fp32: one batch of 2 and two batches of 1 round differently in bf16, which is not what this compares
    same = [*TINY, "--set", "train_cfg.dropout=0.0", "--set", "train_cfg.droppath=0.0", "--set", "opt.epochs=1",
            "--set", "train_cfg.precision=fp32", "--set", "test_cfg.precision=fp32"]
    run([*TALBENCH, "train", config, "--output", str(tmp_path / "one"), *same], workdir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "talbench.cli"]
    run([*torchrun, "train", config, "--output", str(tmp_path / "two"), *same], workdir, env=env)
    one, two = _weights(tmp_path / "one/last.ckpt"), _weights(tmp_path / "two/last.ckpt")
    assert one["step"] == two["step"]  # the same effective batch size: the same number of steps
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-3, atol=1e-4, msg=f"{name} differs")
    run([*TALBENCH, "infer", config, str(tmp_path / "two/last.ckpt"), "--out", str(tmp_path / "p.json"), *same], workdir)
    assert json.loads((tmp_path / "p.json").read_text())["results"]


def test_loader_workers_leave_the_compute_cores_alone(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 12)
    assert loader_workers(8, torch.device("cpu")) == 4 and loader_workers(2, torch.device("cpu")) == 2
    assert loader_workers(8, torch.device("cuda")) == 8 and loader_workers(32, torch.device("cuda")) == 16
    monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
    assert loader_workers(4, torch.device("cpu")) == 0  # every core computes: load in-process


def test_precision_auto_is_bf16_where_the_hardware_computes_it():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if native_bf16(cpu) else "fp32")
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert native_bf16(cpu) == bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def test_bf16_training_step_on_cpu_tracks_fp32(registry):
    """A bf16 autocast step: fp32 weights and gradients, a loss within bf16 rounding of the fp32 one."""
    config, _ = load_config(ROOT / "configs/ci/thumos_i3d.yaml", registry)
    gen = torch.Generator().manual_seed(0)
    feats = [torch.rand(config["model"]["input_dim"], t, generator=gen) for t in (200, 150)]
    segments = [torch.tensor([[10.0, 40.0], [60.0, 90.0]]), torch.tensor([[5.0, 30.0]])]
    labels = [torch.tensor([1, 2]), torch.tensor([0])]
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = build_model(config["model"]).train()
        optimizer = make_optimizer(model, config["opt"])
        batch, masks = pad_batch(feats, model.max_div_factor)
        torch.manual_seed(1)
        out = training_step(model, optimizer, batch, masks, segments, labels, precision_context(precision, torch.device("cpu")), 1.0)
        losses[precision] = float(out["final_loss"].detach())
        grads[precision] = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads["bf16"])
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)
    assert losses["bf16"] != losses["fp32"]  # bf16 did run


def test_published_actionformer_config_loads_unchanged(registry):
    config, notes = load_config(ROOT / "configs/thumos_i3d.yaml", registry)
    assert config["model"]["input_dim"] == 2048 and config["model"]["n_mha_win_size"] == 19
    assert config["opt"]["epochs"] == 30 and config["loader"]["batch_size"] == 2
    # THUMOS sets no default_fps: fps comes from each video, as in the original
    assert config["dataset"]["default_fps"] is None
    model = build_model(config["model"])
    assert len(model.strides) == 6 and model.max_div_factor == 32


@pytest.mark.slow
def test_published_thumos_recipe_trains_unchanged(workdir, registry, monkeypatch):
    from talbench.training import train

    monkeypatch.chdir(workdir)  # the config's data paths are relative, as in the original
    config, _ = load_config(ROOT / "configs/thumos_i3d.yaml", registry)
    summary = train(config, workdir / "runs" / "published", stop_after_steps=2, progress=False)
    assert summary["steps"] == 2


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("configs/**/*.yaml")))
def test_every_shipped_config_loads_and_builds(registry, path):
    config, notes = load_config(ROOT / path, registry)
    assert notes == []  # every shipped config states its dataset facts
    build_model(config["model"])


def test_published_ego4d_config_with_per_feature_projections_builds(registry):
    config, _ = load_config(ROOT / "configs/ego4d_slowfast_omnivore_egovlp.yaml", registry)
    assert config["model"]["input_dim"] == [2304, 1536, 256]
    model = build_model(config["model"])
    assert len(model.strides) == 7


def test_missing_dataset_keys_come_from_the_registry_and_are_reported(registry, tmp_path):
    path = tmp_path / "epic.yaml"
    path.write_text("dataset_name: epic\ndataset: {json_file: a.json, feat_folder: f, num_classes: 97, input_dim: 2304}\n")
    config, notes = load_config(path, registry)
    assert config["dataset"]["feat_stride"] == 16 and config["dataset"]["num_frames"] == 32
    assert any("default_fps" in n and "epic100" in n for n in notes)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("dataset_name: thumos\nmodel: {n_mha_win_sise: 19}\n", "model: field 'n_mha_win_sise'"),
        ("dataset_name: thumos\nopt: {learning_rate: 0.1, epoch: 3}\n", "did you mean 'epochs'"),
        ("dataset_name: thumos\ntrain_cfgs: {}\n", "did you mean 'train_cfg'"),
        ("dataset_name: thumsos\n", "did you mean 'thumos'"),
    ],
)
def test_misspelt_config_keys_name_the_closest_valid_one(registry, tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match="bad.yaml") as err:
        load_config(path, registry)
    assert needle in str(err.value)
