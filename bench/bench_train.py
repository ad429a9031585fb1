"""Benchmark a full ActionFormer training step: forward + losses + backward + grad clip + AdamW step.

The published THUMOS14 recipe (configs/thumos_i3d.yaml: 2048-d I3D input, embd 512, window 19,
batch 2) on random inputs of the real layout: a batch of 2 feature sequences [2048, T] (non-negative,
like pooled I3D features), each with 3-8 ground-truth actions of 2-100 grid steps and random
classes. Sequence lengths 576 and 2304 (the recipe's max_seq_len, what every padded training batch
has). The optimizer is talbench's (AdamW, the recipe's weight-decay groups), the gradient clip the
recipe's clip_grad_l2norm. Each step is timed with torch.cuda.synchronize on CUDA; the median is
reported. fp32 and bf16 autocast (what `talbench train` does with train_cfg.precision auto) are run on
CUDA (with the peak GPU memory of each) and on CPUs that compute bf16 natively; fp32 only elsewhere.
Against the original code, side by side in one run: bench/bench_vs_reference.py.

    python bench/bench_train.py [--lengths 576 2304] [--config PATH] [--device cpu|cuda]
                                [--steps N] [--warmup N] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talbench.config import load_config  # noqa: E402
from talbench.data.registry import load_registry  # noqa: E402
from talbench.models import build_model, pad_batch  # noqa: E402
from talbench.training import make_optimizer, native_bf16, precision_context, training_step  # noqa: E402

PUBLISHED = ROOT / "configs" / "thumos_i3d.yaml"


def make_batch(config: dict, length: int, batch: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Random features [C, T] and gt (segments [N, 2] in grid units, labels [N]) for `batch` videos."""
    torch.manual_seed(seed)
    channels = config["model"]["input_dim"]
    num_classes = config["model"]["num_classes"]
    feats, segments, labels = [], [], []
    for _ in range(batch):
        feats.append(torch.rand(channels, length) * 2)  # I3D features are post-ReLU averages: >= 0
        n = int(torch.randint(3, 9, (1,)))
        seg_len = torch.rand(n) * 98 + 2
        start = torch.rand(n) * (length - seg_len)
        segments.append(torch.stack([start, start + seg_len], 1))
        labels.append(torch.randint(0, num_classes, (n,)))
    return feats, segments, labels


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_one(config: dict, device: torch.device, length: int, dtype: str, steps: int, warmup: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build_model(config["model"]).to(device)
    model.train()
    optimizer = make_optimizer(model, config["opt"])
    clip = float(config["train_cfg"]["clip_grad_l2norm"])
    batch = int(config["loader"]["batch_size"])
    feats, segments, labels = make_batch(config, length, batch, seed)
    feats, masks = pad_batch([f.to(device) for f in feats], model.max_div_factor, pad_to=length)
    segments = [s.to(device) for s in segments]
    labels = [lab.to(device) for lab in labels]
    autocast = precision_context(dtype, device)

    def step() -> float:
        return training_step(model, optimizer, feats, masks, segments, labels, autocast, clip)["final_loss"].detach()

    for _ in range(warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "T": feats.shape[-1],
        "batch": batch,
        "sec": statistics.median(times),
        "peak_gib": peak,
        "loss": float(loss),
        "params": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PUBLISHED, help="ActionFormer YAML config (default: the published THUMOS recipe)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[576, 2304], help="sequence lengths T")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5 on CUDA, 1 on CPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA not available: use --device cpu")
    on_cuda = device.type == "cuda"
    steps = args.steps if args.steps is not None else (20 if on_cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    config, _ = load_config(args.config, load_registry())
    dtypes = ["fp32", "bf16"] if native_bf16(device) else ["fp32"]
    m = config["model"]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", CUDA device: {torch.cuda.get_device_name(device)}" if on_cuda else ""))
    print(f"config {args.config.resolve().relative_to(ROOT) if args.config.resolve().is_relative_to(ROOT) else args.config}: "
          f"input {m['input_dim']}, embd {m['embd_dim']}, window {m['n_mha_win_size']}, {m['num_classes']} classes, "
          f"clip {config['train_cfg']['clip_grad_l2norm']}, {config['opt']['type']}; {warmup} warm-up + {steps} timed steps, median")
    header = f"{'impl':10} {'device':6} {'dtype':5} {'T':>5} {'batch':>5} {'it/s':>7} {'ms/it':>8} {'peak GiB':>8}"
    print(header)
    print("-" * len(header))
    for length in args.lengths:
        for dtype in dtypes:
            r = bench_one(config, device, length, dtype, steps, warmup, args.seed)
            peak = f"{r['peak_gib']:8.2f}" if r["peak_gib"] is not None else f"{'-':>8}"
            print(f"{'talbench':10} {device.type:6} {dtype:5} {r['T']:5d} {r['batch']:5d} "
                  f"{1 / r['sec']:7.2f} {r['sec'] * 1e3:8.0f} {peak}", flush=True)
    print(f"model: {r['params'] / 1e6:.1f} M parameters; last loss {r['loss']:.3f}")


if __name__ == "__main__":
    main()
