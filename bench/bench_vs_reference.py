"""talbench against the original ActionFormer code: same machine, same data, same config, interleaved.

Sides: the original, and talbench once per `--precisions` value (its train_cfg/test_cfg.precision;
default `auto`, bf16 autocast where the CPU computes bf16 natively, and `fp32`, the exact path).
What it measures, for each side in its own child process (its own Python, `--threads` torch threads):
- training iterations/s at each `--lengths` max_seq_len (default 576 and the published 2304), batch 2
  (the config's loader.batch_size): `--warmup` untimed then `--iters` timed iterations, each one the
  side's own training-loop body with in-process data loading (num_workers 0 on both sides):
  read the batch's feature files, truncate/crop, pad, forward, losses, backward, grad clip 1.0,
  AdamW step, lr schedule, model-EMA update (decay 0.999, no warm-up, as the original's ModelEma).
  Both sides get the same videos in the same order. "padded T" is the mean length the backbone saw:
  the original pads every training batch to max_seq_len, talbench to the batch's longest clip
  (rounded up to the coarsest stride, 32).
- inference videos/s with NMS over the test split at each `--infer-lengths` max_seq_len (the model's
  max_seq_len matters: the original pads shorter test videos up to it): read the features, forward,
  candidate decoding, multiclass soft-NMS (the original's C++ nms_1d_cpu; talbench's vectorized
  torch NMS), conversion to seconds. Both sides load the same weights (the original's seeded init,
  renamed to talbench's parameter names), so they see the same candidates: in fp32 the detection
  counts and the sums of detection scores agree to the last printed digit. One untimed warm-up video first.
- peak memory: each child's peak RSS (resource.getrusage ru_maxrss; Python + torch + the task).
- accuracy (`--accuracy-seeds`, default 0 1 2; none skips it): every side trained once per seed on the
  twin with the recipe (`--accuracy-epochs` + `--accuracy-warmup` epochs at `--accuracy-length`, EMA 0.999
  without warm-up on both sides), talbench by `talbench.training.train` (the pipeline's code path),
  the original by its train.py loop (its loader, scheduler, ModelEma); then each side's own inference
  on the test split with the EMA and with the raw weights, all scored by talbench's THUMOS14 evaluator
  (average mAP over tIoU 0.3:0.7). Printed: each seed, each side's mean and sd over seeds (the
  run-to-run noise), and talbench's difference from the original with its standard error.
The order is interleaved (talbench, original, talbench, original ...; reversed every other round);
with `--rounds R` each speed figure is the median over R rounds. Ratios are talbench / original (above 1:
talbench faster for it/s and videos/s; below 1: talbench smaller for RSS).

Data: the THUMOS14 twin `talbench synth thumos14 --scale small --seed 0` (80 training / 60 test
videos of 60-180 s, 2048-d I3D-like features stored [T, C] as the original reads them, 20 classes),
made under --data on first use. Config: the published recipe (configs/thumos_i3d.yaml: embd 512,
window 19, batch 2, clip 1.0, AdamW) with the data paths and max_seq_len replaced, written to
/tmp/refbench/work/ and read by both sides' own config loaders. train_cfg.dropout and droppath are
written out (the release's 0.1 and 0.1, talbench's defaults): the package's own default dropout is 0.0.

The original comes from PyPI (actionformer 1.5.0, a packaged fork of happyharrycn/actionformer_release
whose default LocPointTransformer/convTransformer is the original code) in a separate,
benchmark-only environment; it is never a dependency of talbench and none of its code is in this
repository: its child process runs this file with that environment's Python and imports it from there.
`--setup` creates that environment and exits; the commands it runs (versions read from talbench's venv):

    /root/.pyenv/versions/3.11.7/bin/python3.11 -m venv /tmp/refbench/venv   # talbench venv's base Python
    /tmp/refbench/venv/bin/pip install torch==2.13.0 numpy==2.4.6 pyyaml pandas joblib h5py 'setuptools>=61' wheel
    /tmp/refbench/venv/bin/pip install --no-deps --no-build-isolation actionformer==1.5.0
    /tmp/refbench/venv/bin/python -c "import torch, nms_1d_cpu"              # the C++ NMS must load (after torch)

Why so: the package is an sdist whose setup.py builds the C++ NMS (nms_1d_cpu) with torch's
cpp_extension. With build isolation pip would build it against whatever torch the build requirement
`torch>=2.0.0` resolves to in a throwaway environment, not necessarily the runtime one (an extension that
then fails to load makes the package fall back to a pure-Python NMS without a word; the benchmark
checks and says which NMS ran); --no-build-isolation builds it against the venv's torch 2.13.0, the same
as talbench's. --no-deps: its declared torchvision has no CPU build here and is never imported;
tensorboard is imported only by its train.py CLI, tqdm and scipy not at all; h5py is imported by its
datasets package but not declared. Its train.py/eval.py CLIs call torch.cuda.synchronize and map
checkpoints to CUDA, so they do not run on a CPU-only torch: this benchmark calls the library's
functions (load_config, make_dataset, make_meta_arch, make_optimizer, make_scheduler, ModelEma, the
model's own inference + batched_nms) the way those CLIs do.

Run (on 2 cores, AMD EPYC with AVX-512 and AVX512-BF16, the speed part takes ~6 min and the accuracy part
~55 min; nothing else should run during the speed part):

    .venv/bin/python bench/bench_vs_reference.py --setup          # once: the original's environment
    .venv/bin/python bench/bench_vs_reference.py [--precisions auto fp32] [--iters 30] [--warmup 3] [--rounds 1]
        [--lengths 576 2304] [--infer-lengths 576 2304] [--videos N] [--threads 2]
        [--accuracy-seeds 0 1 2] [--accuracy-epochs 10] [--accuracy-warmup 2] [--accuracy-length 576]
        [--ref-python /tmp/refbench/venv/bin/python] [--data /tmp/refbench/data]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/refbench")
REF_PACKAGE = "actionformer==1.5.0"
EMA_DECAY = 0.999

# The original's parameter names -> talbench's (same tensors, same shapes; checked on load).
RENAMES = [
    (r"\.attn\.query_conv\.", ".attn.q_conv."), (r"\.attn\.key_conv\.", ".attn.k_conv."),
    (r"\.attn\.value_conv\.", ".attn.v_conv."), (r"\.attn\.query_norm\.", ".attn.q_norm."),
    (r"\.attn\.key_norm\.", ".attn.k_norm."), (r"\.attn\.value_norm\.", ".attn.v_norm."),
    (r"\.attn\.query\.", ".attn.q_proj."), (r"\.attn\.key\.", ".attn.k_proj."),
    (r"\.attn\.value\.", ".attn.v_proj."), (r"\.attn\.proj\.", ".attn.out_proj."),
    (r"^neck\.fpn_norms\.", "neck.norms."),
    (r"^(cls|reg)_head\.head\.", r"\1_head.trunk.convs."), (r"^(cls|reg)_head\.norm\.", r"\1_head.trunk.norms."),
    (r"^cls_head\.cls_head\.", "cls_head.out."), (r"^reg_head\.offset_head\.", "reg_head.out."),
    (r"^reg_head\.scale\.", "reg_head.scales."),
]


# ---------------------------------------------------------------- setup (parent)


def run_cmd(cmd: list, capture: bool = False, **kw) -> str:
    """Echo and run a command (its output shown unless captured); a failure stops the benchmark."""
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    done = subprocess.run([str(c) for c in cmd], check=True, text=True, stdout=subprocess.PIPE if capture else None, **kw)
    return done.stdout or ""


def talbench_versions(python: str) -> dict[str, str]:
    code = "import sys, torch, numpy; print(sys._base_executable, torch.__version__, numpy.__version__)"
    base, torch_v, numpy_v = subprocess.run([python, "-c", code], check=True, text=True, capture_output=True).stdout.split()
    return {"base": base, "torch": torch_v.split("+")[0], "numpy": numpy_v}


def setup_env(venv: Path, talbench_python: str) -> None:
    """Create the benchmark-only environment of the original, with talbench's torch and numpy."""
    v = talbench_versions(talbench_python)
    pip = venv / "bin" / "pip"
    run_cmd([v["base"], "-m", "venv", venv])
    run_cmd([pip, "install", f"torch=={v['torch']}", f"numpy=={v['numpy']}", "pyyaml", "pandas", "joblib", "h5py",
             "setuptools>=61", "wheel"])
    run_cmd([pip, "install", "--no-deps", "--no-build-isolation", REF_PACKAGE])
    # torch first: the extension links libc10.so, which only importing torch loads
    run_cmd([venv / "bin" / "python", "-c", "import torch, nms_1d_cpu, actionformer; from actionformer.utils import HAS_CPP_NMS; "
             "assert HAS_CPP_NMS; print('actionformer', actionformer.__version__, 'torch', torch.__version__, 'C++ NMS ok')"])


# ---------------------------------------------------------------- data and config (parent)


def ensure_twin(data: Path, talbench_python: str) -> tuple[Path, Path]:
    """The small THUMOS14 twin under `data` (made once): (annotation json, feature folder)."""
    json_file = data / "thumos" / "annotations" / "thumos14.json"
    feats = data / "thumos" / "i3d_features"
    if not json_file.exists():
        cli = Path(talbench_python).parent / "talbench"
        run_cmd([cli, "synth", "thumos14", "--scale", "small", "--seed", "0", "--out", data], cwd=ROOT)
    return json_file, feats


def describe_twin(json_file: Path, feats: Path) -> dict:
    import numpy as np

    db = json.loads(json_file.read_text())["database"]
    labels = {a["label_id"] for v in db.values() for a in v.get("annotations", [])}
    subsets: dict[str, int] = {}
    for v in db.values():
        subsets[v["subset"]] = subsets.get(v["subset"], 0) + 1
    first = np.load(next(iter(sorted(feats.glob("*.npy")))), mmap_mode="r")
    return {"subsets": subsets, "classes": len(labels), "channels": int(first.shape[1]),
            "durations": (min(v["duration"] for v in db.values()), max(v["duration"] for v in db.values()))}


def write_config(base: Path, json_file: Path, feats: Path, max_seq_len: int, epochs: tuple[int, int] | None = None) -> Path:
    """The base YAML with this twin's paths and max_seq_len (and `epochs`: (epochs, warm-up epochs)),
    in the original's layout (both sides read it)."""
    import yaml

    from talbench.config import DEFAULTS

    config = yaml.safe_load(base.read_text())
    config["dataset"].update(json_file=str(json_file), feat_folder=str(feats), max_seq_len=max_seq_len)
    # The packaged original defaults train_cfg.dropout to 0.0, the release (and talbench) to 0.1:
    # written out, both sides train the same recipe.
    train_cfg = config.setdefault("train_cfg", {})
    for key in ("dropout", "droppath"):
        train_cfg.setdefault(key, DEFAULTS["train_cfg"][key])
    config["output_folder"] = str(WORK / "work" / "ckpt")
    name = f"{base.stem}_{max_seq_len}"
    if epochs is not None:
        config["opt"].update(epochs=epochs[0], warmup_epochs=epochs[1])
        name += f"_{epochs[0]}+{epochs[1]}ep"
    out = WORK / "work" / f"{name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


# ---------------------------------------------------------------- children (one task each)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train_batches(video_ids: list[str], batch: int, count: int, seed: int) -> list[list[str]]:
    """`count` batches of training video ids, drawn as epochs of seeded permutations (same on both sides)."""
    import numpy as np

    ids, out, epoch = sorted(video_ids), [], 0
    while len(out) < count:
        order = np.random.default_rng([seed, epoch]).permutation(len(ids))
        out += [[ids[j] for j in order[i: i + batch]] for i in range(0, len(ids) - batch + 1, batch)]
        epoch += 1
    return out[:count]


def timed(step, batches: list, warmup: int) -> list[float]:
    """Run step(b) for every batch; the seconds of all after the first `warmup`."""
    times = []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        step(b)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def length_probe(backbone, time_dim: int) -> list[int]:
    """Records the padded length of every backbone input (talbench's is [B, T, C], the original's [B, C, T])."""
    seen: list[int] = []
    backbone.register_forward_pre_hook(lambda _m, inputs: seen.append(int(inputs[0].shape[time_dim])))
    return seen


def talbench_train(a: argparse.Namespace) -> dict:
    import torch
    from talbench.config import load_config
    from talbench.data.dataset import VideoDataset
    from talbench.models import build_model, pad_batch
    from talbench.training import (ModelEMA, learning_rate, make_optimizer, precision_context, resolve_precision,
                                   seed_everything, training_step)

    config, _ = load_config(a.config, overrides={"train_cfg.precision": a.precision})
    seed = int(config["init_rand_seed"])
    seed_everything(seed)
    ds = VideoDataset(config["dataset"], config["train_split"], is_training=True, seed=seed)
    model = build_model(config["model"])
    ema = ModelEMA(model, EMA_DECAY, warmup=False)
    optimizer = make_optimizer(model, config["opt"])
    bs = int(config["loader"]["batch_size"])
    iters_per_epoch = len(ds) // bs
    clip = float(config["train_cfg"]["clip_grad_l2norm"])
    device = torch.device("cpu")
    precision = resolve_precision(config["train_cfg"]["precision"], device)
    index = {r.video_id: i for i, r in enumerate(ds.records)}
    seen = length_probe(model.backbone, 1)
    state = {"step": 0, "loss": 0.0}
    model.train()

    def step(ids: list[str]) -> None:  # the loop body of talbench.training.train, on CPU
        items = [ds[index[v]] for v in ids]
        lr = learning_rate(state["step"], iters_per_epoch, config["opt"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch, masks = pad_batch([i.feats for i in items], model.max_div_factor)
        losses = training_step(model, optimizer, batch, masks, [i.segments for i in items], [i.labels for i in items],
                               precision_context(precision, device), clip)
        state["step"] += 1
        ema.update(model, state["step"])
        state["loss"] = {k: float(v.detach()) for k, v in losses.items()}["final_loss"]

    times = timed(step, train_batches(list(index), bs, a.warmup + a.iters, a.seed), a.warmup)
    return {"times": times, "padded_T": statistics.mean(seen[a.warmup:]), "loss": state["loss"], "batch": bs,
            "precision": precision}


def original_setup(cfg_path: str):
    from actionformer.core import load_config
    from actionformer.utils import fix_random_seed

    cfg = load_config(cfg_path)
    fix_random_seed(cfg["init_rand_seed"], include_cuda=True)  # as its train.py (deterministic algorithms on)
    return cfg


def original_model(cfg):
    import torch
    from actionformer.modeling import make_meta_arch

    # DataParallel as its train.py/eval.py; on a machine without CUDA it only forwards to the module
    return torch.nn.DataParallel(make_meta_arch(cfg["model_name"], **cfg["model"]), device_ids=cfg["devices"])


def original_step(model, optimizer, scheduler, ema, clip: float, video_list: list) -> dict:
    """The loop body of the original's train_one_epoch."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    losses = model(video_list)
    losses["final_loss"].backward()
    if clip > 0.0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    scheduler.step()
    ema.update(model)
    return losses


def original_train(a: argparse.Namespace) -> dict:
    from actionformer.datasets import make_dataset
    from actionformer.utils import ModelEma, make_optimizer, make_scheduler

    cfg = original_setup(a.config)
    cfg["opt"]["learning_rate"] *= len(cfg["devices"])
    ds = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    cfg["model"]["train_cfg"]["head_empty_cls"] = ds.get_attributes()["empty_label_ids"]
    model = original_model(cfg)
    optimizer = make_optimizer(model, cfg["opt"])
    bs = int(cfg["loader"]["batch_size"])
    scheduler = make_scheduler(optimizer, cfg["opt"], len(ds) // bs)
    ema = ModelEma(model, decay=EMA_DECAY)
    clip = cfg["train_cfg"]["clip_grad_l2norm"]
    index = {d["id"]: i for i, d in enumerate(ds.data_list)}
    seen = length_probe(model.module.backbone, -1)
    state = {"loss": 0.0}
    model.train()

    def step(ids: list[str]) -> None:
        losses = original_step(model, optimizer, scheduler, ema, clip, [ds[index[v]] for v in ids])
        state["loss"] = losses["final_loss"].item()

    times = timed(step, train_batches(list(index), bs, a.warmup + a.iters, a.seed), a.warmup)
    return {"times": times, "padded_T": statistics.mean(seen[a.warmup:]), "loss": state["loss"], "batch": bs}


def original_init_weights(a: argparse.Namespace) -> dict:
    """The original's seeded initial weights, saved for both sides' inference."""
    import torch

    cfg = original_setup(a.config)
    torch.save(original_model(cfg).module.state_dict(), a.weights)
    return {"weights": a.weights}


def test_ids(ids: list[str], videos: int) -> list[str]:
    return sorted(ids)[:videos] if videos else sorted(ids)


def original_infer(a: argparse.Namespace) -> dict:
    import torch
    from actionformer.datasets import make_dataset
    from actionformer.utils.nms import HAS_CPP_NMS

    cfg = original_setup(a.config)
    ds = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    model = original_model(cfg)
    model.module.load_state_dict(torch.load(a.weights, weights_only=True))
    model.eval()
    index = {d["id"]: i for i, d in enumerate(ds.data_list)}
    seen = length_probe(model.module.backbone, -1)
    found = {"dets": 0, "score_sum": 0.0}

    def step(vid: str) -> None:  # the loop body of its valid_one_epoch (batch size 1)
        with torch.no_grad():
            out = model([ds[index[vid]]])[0]
        found["dets"] += int(out["segments"].shape[0])
        found["score_sum"] += float(out["scores"].sum())

    return infer_loop(step, test_ids(list(index), a.videos), seen, found) | {"cpp_nms": HAS_CPP_NMS}


def talbench_infer(a: argparse.Namespace) -> dict:
    import torch
    from talbench.config import load_config
    from talbench.data.dataset import VideoDataset
    from talbench.inference import inference_model, inference_precision, video_results
    from talbench.models import build_model
    from talbench.training import resolve_precision

    config, _ = load_config(a.config, overrides={"test_cfg.precision": a.precision})
    ds = VideoDataset(config["dataset"], config["val_split"], is_training=False)
    model = build_model(config["model"])
    load_original_weights(model, torch.load(a.weights, weights_only=True))
    test_cfg = config["test_cfg"]
    device = torch.device("cpu")
    model = inference_model(model, test_cfg, device)  # as predict
    precision = resolve_precision(test_cfg["precision"], device)
    index = {r.video_id: i for i, r in enumerate(ds.records)}
    seen = length_probe(model.backbone, 1)
    found = {"dets": 0, "score_sum": 0.0}

    def step(vid: str) -> None:  # the loop body of talbench.inference.predict
        detections = video_results(model, ds[index[vid]], device, test_cfg)
        found["dets"] += len(detections)
        found["score_sum"] += sum(d["score"] for d in detections)

    with inference_precision(test_cfg, device):  # as predict: one autocast region around all videos
        return infer_loop(step, test_ids(list(index), a.videos), seen, found) | {"precision": precision}


def infer_loop(step, ids: list[str], seen: list[int], found: dict) -> dict:
    """One untimed warm-up video, then every video timed; detections counted on the timed pass only."""
    step(ids[0])
    seen.clear()
    found.update(dets=0, score_sum=0.0)
    times = timed(step, ids, 0)
    return {"times": times, "videos": len(ids), "padded_T": statistics.mean(seen), **found}


def talbench_fit(a: argparse.Namespace) -> dict:
    """Accuracy: `talbench.training.train` as the pipeline runs it, then inference with the EMA and the raw weights."""
    import torch
    from talbench.config import load_config
    from talbench.data.dataset import VideoDataset
    from talbench.inference import predict
    from talbench.training import read_checkpoint, train

    overrides = {"init_rand_seed": a.seed, "train_cfg.precision": a.precision, "test_cfg.precision": a.precision,
                 "ema.decay": EMA_DECAY, "ema.warmup": False}  # the original's ModelEma: no warm-up
    config, _ = load_config(a.config, overrides=overrides)
    out = Path(a.weights)
    summary = train(config, out / "run", overwrite=True, progress=False)
    state = read_checkpoint(out / "run" / "last.ckpt")
    ds = VideoDataset(config["dataset"], config["val_split"], is_training=False)
    files = {}
    for which in ("ema", "model"):
        results = predict(config, state[which], ds, torch.device("cpu"), progress=False)
        files[which] = str(out / f"{which}.json")
        Path(files[which]).write_text(json.dumps(results))
    return {"train_s": summary["seconds"], "steps": summary["steps"], "precision": summary["precision"], "files": files}


def original_fit(a: argparse.Namespace) -> dict:
    """Accuracy: the original's train.py loop (its loader, scheduler, ModelEma), then its inference as in eval.py."""
    import torch
    from actionformer.datasets import make_data_loader, make_dataset
    from actionformer.utils import ModelEma, fix_random_seed, make_optimizer, make_scheduler

    from actionformer.core import load_config

    cfg = load_config(a.config)
    cfg["init_rand_seed"] = a.seed
    generator = fix_random_seed(a.seed, include_cuda=True)
    train_ds = make_dataset(cfg["dataset_name"], True, cfg["train_split"], **cfg["dataset"])
    cfg["model"]["train_cfg"]["head_empty_cls"] = train_ds.get_attributes()["empty_label_ids"]
    workers = min(cfg["loader"]["num_workers"], os.cpu_count() or 1)  # talbench's rule: no more loader workers than cores
    loader = make_data_loader(train_ds, True, generator, cfg["loader"]["batch_size"], workers)
    model = original_model(cfg)
    optimizer = make_optimizer(model, cfg["opt"])
    scheduler = make_scheduler(optimizer, cfg["opt"], len(loader))
    ema = ModelEma(model, decay=EMA_DECAY)
    clip = cfg["train_cfg"]["clip_grad_l2norm"]
    epochs = cfg["opt"]["epochs"] + cfg["opt"]["warmup_epochs"]
    started, steps = time.perf_counter(), 0
    model.train()
    for _ in range(epochs):
        for video_list in loader:
            original_step(model, optimizer, scheduler, ema, clip, video_list)
            steps += 1
    train_s = time.perf_counter() - started
    test_ds = make_dataset(cfg["dataset_name"], False, cfg["val_split"], **cfg["dataset"])
    out, files = Path(a.weights), {}
    for which, net in (("ema", ema.module), ("model", model)):
        net.eval()
        results: dict[str, list] = {}
        with torch.no_grad():
            for i in range(len(test_ds)):
                o = net([test_ds[i]])[0]
                results[o["video_id"]] = [{"label": int(lab), "score": float(sc), "segment": [float(x) for x in seg]}
                                          for seg, sc, lab in zip(o["segments"], o["scores"], o["labels"])]
        files[which] = str(out / f"{which}.json")
        Path(files[which]).write_text(json.dumps({"version": "original", "results": results}))
    return {"train_s": train_s, "steps": steps, "precision": "fp32", "files": files}


def load_original_weights(model, state: dict) -> None:
    """The original's state_dict into a talbench model: renamed, every tensor used, shapes checked by torch."""
    renamed = {}
    for name, tensor in state.items():
        for pattern, repl in RENAMES:
            name = re.sub(pattern, repl, name)
        renamed[name] = tensor
    result = model.load_state_dict(renamed, strict=False)
    missing = [k for k in result.missing_keys if k != "loss_normalizer"]  # a running statistic, not a weight
    if missing or result.unexpected_keys:
        raise RuntimeError(f"weights do not map: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


CHILD_TASKS = {
    ("talbench", "train"): talbench_train,
    ("original", "train"): original_train,
    ("talbench", "infer"): talbench_infer,
    ("original", "infer"): original_infer,
    ("original", "init"): original_init_weights,
    ("talbench", "fit"): talbench_fit,
    ("original", "fit"): original_fit,
}


def child_main(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    if a.child == "talbench":
        sys.path.insert(0, str(ROOT))
    result = CHILD_TASKS[(a.child, a.task)](a)
    result.update(torch=torch.__version__, threads=torch.get_num_threads(), peak_rss_mib=peak_rss_mib())
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------- parent: run, interleave, report


def run_child(python: str, side: str, task: str, config: Path, a: argparse.Namespace, seed: int | None = None,
              weights: Path | None = None) -> dict:
    """One child process; `side` is "original" or "talbench <precision>"."""
    child, _, precision = side.partition(" ")
    cmd = [python, __file__, "--child", child, "--task", task, "--config", str(config), "--iters", str(a.iters),
           "--warmup", str(a.warmup), "--threads", str(a.threads), "--seed", str(a.seed if seed is None else seed),
           "--videos", str(a.videos), "--weights", str(weights or WORK / "work" / "weights_original_init.pt"),
           "--precisions", precision or "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads), "PYTHONWARNINGS": "ignore"}
    t0 = time.time()
    proc = subprocess.run(cmd, text=True, capture_output=True, env=env, cwd=WORK)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        print(f"  {side} {task} {config.name}: FAILED (exit {proc.returncode})\n{tail}", flush=True)
        return {"failed": True}
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"] = time.time() - t0
    return result


def rate(r: dict, per: float = 1.0) -> float | None:
    return None if r.get("failed") else per * len(r["times"]) / sum(r["times"])


def show_progress(side: str, label: str, r: dict) -> None:
    if r.get("failed"):
        return
    unit = "it/s" if label.startswith("train") else "videos/s"
    print(f"  {label:11} {side_name(side, r):22} {rate(r):6.3f} {unit:9} padded T {r['padded_T']:7.1f}  "
          f"peak RSS {r['peak_rss_mib']:6.0f} MiB  ({r['wall_s']:.0f} s in the child)", flush=True)


def side_name(side: str, r: dict) -> str:
    """'talbench auto' -> 'talbench (auto: bf16)' once a child said what auto resolved to."""
    child, _, precision = side.partition(" ")
    if not precision:
        return child
    resolved = r.get("precision")
    return f"{child} ({precision}: {resolved})" if resolved and resolved != precision else f"{child} ({precision})"


def median_of(runs: list[dict], key) -> float | None:
    values = [key(r) for r in runs if not r.get("failed")]
    return statistics.median(values) if values else None


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def print_table(results: dict[tuple[str, str], list[dict]], labels: list[str], sides: list[str]) -> None:
    """One column per side, then talbench / original for each talbench side."""
    ours = [s for s in sides if s != "original"]
    names = {s: side_name(s, next((r for (_, side), rs in results.items() if side == s for r in rs if "precision" in r), {}))
             for s in sides}
    width = max(12, *(len(n) for n in names.values()))
    header = f"{'task':12} {'figure':16} " + " ".join(f"{names[s]:>{width}}" for s in sides) + " " + \
        " ".join(f"{'ratio ' + names[s].removeprefix('talbench '):>{width}}" for s in ours)
    print("\n" + header + "\n" + "-" * len(header))
    for label in labels:
        speed = "it/s" if label.startswith("train") else "videos/s"
        figures = [(speed, rate, ".3f"), ("padded T (mean)", lambda r: r["padded_T"], ".0f")]
        if not label.startswith("train"):
            figures += [("detections", lambda r: r["dets"], ".0f"), ("sum of scores", lambda r: r["score_sum"], ".3f")]
        figures.append(("peak RSS MiB", lambda r: r["peak_rss_mib"], ".0f"))
        for i, (figure, key, spec) in enumerate(figures):
            values = {s: median_of(results[(label, s)], key) for s in sides}
            row = f"{label if i == 0 else '':12} {figure:16} " + " ".join(f"{fmt(values[s], spec):>{width}}" for s in sides)
            print(row + " " + " ".join(f"{ratio(values[s], values['original']):>{width}}" for s in ours))


def machine_line(threads: int) -> str:
    cpu = "unknown CPU"
    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
        found = [name for name, flag in (("AVX-512", "avx512f"), ("AVX512-BF16", "avx512_bf16"), ("AMX", "amx_tile"))
                 if re.search(rf"\b{flag}\b", info)]
        flags = ", " + (", ".join(found) if found else "no AVX-512")
    except (OSError, AttributeError):
        pass
    return f"{platform.node()}: {cpu} ({os.cpu_count()} cores{flags}); {threads} torch threads per child"


def speed_runs(a: argparse.Namespace, configs: dict[int, Path], sides: list[str], pythons: dict[str, str]) -> None:
    """Training and inference speed, interleaved, medians over rounds, one table."""
    tasks = [(f"train {n}", "train", configs[n]) for n in a.lengths] + [(f"infer {n}", "infer", configs[n]) for n in a.infer_lengths]
    results: dict[tuple[str, str], list[dict]] = {(label, side): [] for label, _, _ in tasks for side in sides}
    versions, cpp_nms = set(), set()
    for rnd in range(a.rounds):
        order = sides if rnd % 2 == 0 else sides[::-1]
        for label, task, config in tasks:
            for side in order:
                r = run_child(pythons[side], side, task, config, a)
                results[(label, side)].append(r)
                versions.add((side.split()[0], r.get("torch")))
                if "cpp_nms" in r:
                    cpp_nms.add(r["cpp_nms"])
                show_progress(side, label, r)
    print_table(results, [label for label, _, _ in tasks], sides)
    print("\ntorch: " + ", ".join(f"{s} {v}" for s, v in sorted(versions) if v))
    if cpp_nms:
        print("original NMS: " + ("its C++ extension nms_1d_cpu" if cpp_nms == {True} else "PURE-PYTHON FALLBACK (nms_1d_cpu did not load)"))
    print("ratios: talbench / original (speed above 1 = talbench faster; RSS below 1 = talbench smaller); "
          "with bf16 the detections differ from the original's in rounding, so counts and score sums differ slightly")


def average_map(predictions: str, json_file: Path) -> float:
    """Average mAP (THUMOS14 protocol, tIoU 0.3:0.7) of a results file, by talbench's evaluator, for both sides."""
    from talbench.data.registry import load_registry
    from talbench.eval.detection import evaluate_detection
    from talbench.eval.inputs import ground_truth, load_annotations, load_predictions

    spec = load_registry().datasets["thumos14"]
    gt = load_annotations(json_file)
    preds, _ = load_predictions(Path(predictions), gt, num_classes=None)
    return 100 * evaluate_detection(ground_truth(gt, "test"), preds, spec.tiou_thresholds()).average_mAP


def accuracy_runs(a: argparse.Namespace, config: Path, json_file: Path, sides: list[str], pythons: dict[str, str]) -> None:
    """Train every side once per seed with the recipe in `config`, score EMA and raw weights, compare the seed means."""
    scores: dict[str, dict[str, list[float]]] = {s: {"ema": [], "model": []} for s in sides}
    names: dict[str, str] = {}
    print(f"\naccuracy: each side trained with seeds {a.accuracy_seeds} ({a.accuracy_epochs} epochs + "
          f"{a.accuracy_warmup} warm-up), EMA {EMA_DECAY} without warm-up; average mAP by talbench's THUMOS14 evaluator", flush=True)
    for i, seed in enumerate(a.accuracy_seeds):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            out = WORK / "work" / "accuracy" / f"{side.replace(' ', '-')}-seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            r = run_child(pythons[side], side, "fit", config, a, seed=seed, weights=out)
            if r.get("failed"):
                continue
            names[side] = side_name(side, r)
            maps = {which: average_map(path, json_file) for which, path in r["files"].items()}
            for which, value in maps.items():
                scores[side][which].append(value)
            print(f"  seed {seed} {names[side]:22} average mAP EMA {maps['ema']:6.2f}  raw {maps['model']:6.2f}  "
                  f"({r['steps']} iterations in {r['train_s']:.0f} s)", flush=True)
    header = f"\n{'side':24} {'weights':8} {'mean':>7} {'sd':>6} {'n':>3}   {'diff vs original (SE)':>22}  verdict"
    print(header + "\n" + "-" * (len(header) - 1))
    for which in ("ema", "model"):
        ref = scores["original"][which]
        for side in sides:
            values = scores[side][which]
            if not values:
                continue
            mean, sd = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")
            line = f"{names.get(side, side):24} {'EMA' if which == 'ema' else 'raw':8} {mean:7.2f} {sd:6.2f} {len(values):3d}"
            if side != "original" and len(values) > 1 and len(ref) > 1:
                diff = mean - statistics.mean(ref)
                se = (statistics.variance(values) / len(values) + statistics.variance(ref) / len(ref)) ** 0.5
                verdict = "within noise (|diff| < 2 SE)" if abs(diff) < 2 * se or diff == 0 else "DIFFERENT (|diff| >= 2 SE)"
                line += f"   {diff:+12.2f} ({se:5.2f})  {verdict}"
            print(line)
    print("sd: between seeds (run-to-run noise); SE of the difference of the two seed means")


def parent_main(a: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if a.setup:
        setup_env(Path(a.ref_python).parents[1], a.talbench_python)
        return
    if not Path(a.ref_python).exists():
        parser.error(f"{a.ref_python} not found: create the original's environment with --setup")
    json_file, feats = ensure_twin(Path(a.data), a.talbench_python)
    twin = describe_twin(json_file, feats)
    configs = {n: write_config(Path(a.config), json_file, feats, n) for n in sorted(set(a.lengths) | set(a.infer_lengths))}
    sides = [f"talbench {p}" for p in a.precisions] + ["original"]
    pythons = {s: a.ref_python if s == "original" else a.talbench_python for s in sides}
    if a.infer_lengths:
        init = run_child(a.ref_python, "original", "init", configs[a.infer_lengths[0]], a)
        if init.get("failed"):
            sys.exit("could not make the original's initial weights")

    print(machine_line(a.threads))
    print(f"data {Path(a.data)}: {twin['subsets']} videos of {twin['durations'][0]:.0f}-{twin['durations'][1]:.0f} s, "
          f"{twin['channels']}-d features, {twin['classes']} classes; config {a.config} (paths, max_seq_len replaced; "
          f"dropout, droppath written out)")
    print(f"training: {a.warmup} warm-up + {a.iters} timed iterations; inference: 1 warm-up + "
          f"{a.videos or 'all'} test videos; {a.rounds} round(s), interleaved")
    speed_runs(a, configs, sides, pythons)
    if a.accuracy_seeds:
        recipe = write_config(Path(a.config), json_file, feats, a.accuracy_length, epochs=(a.accuracy_epochs, a.accuracy_warmup))
        accuracy_runs(a, recipe, json_file, sides, pythons)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", action="store_true", help="create the original's environment (see above) and exit")
    parser.add_argument("--ref-python", default=str(WORK / "venv" / "bin" / "python"), help="the original's environment's Python")
    parser.add_argument("--talbench-python", default=sys.executable, help="Python of talbench's venv (default: this one)")
    parser.add_argument("--data", default=str(WORK / "data"), help="folder of the THUMOS14 twin (made if missing)")
    parser.add_argument("--config", default=str(ROOT / "configs" / "thumos_i3d.yaml"), help="base config (the original's YAML layout)")
    parser.add_argument("--precisions", nargs="+", default=["auto", "fp32"], choices=["auto", "fp32", "bf16"],
                        help="talbench's train_cfg/test_cfg.precision, one talbench side each")
    parser.add_argument("--lengths", type=int, nargs="*", default=[576, 2304], help="training max_seq_len values")
    parser.add_argument("--infer-lengths", type=int, nargs="*", default=[576, 2304], help="max_seq_len values for inference")
    parser.add_argument("--iters", type=int, default=30, help="timed training iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training iterations first")
    parser.add_argument("--videos", type=int, default=0, help="test videos for inference (0: all)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the interleaved sequence; medians reported")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per child")
    parser.add_argument("--seed", type=int, default=0, help="order of the training batches")
    parser.add_argument("--accuracy-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="accuracy: train each side once per seed (none: skip the accuracy part)")
    parser.add_argument("--accuracy-epochs", type=int, default=10, help="accuracy: epochs after the warm-up")
    parser.add_argument("--accuracy-warmup", type=int, default=2, help="accuracy: warm-up epochs")
    parser.add_argument("--accuracy-length", type=int, default=576, help="accuracy: training max_seq_len")
    parser.add_argument("--child", choices=["talbench", "original"], help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=["train", "infer", "init", "fit"], help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        a.precision = a.precisions[0]
        child_main(a)
    else:
        parent_main(a, parser)


if __name__ == "__main__":
    main()
