"""Benchmark the post-processing NMS on ActionFormer-like candidates, per video.

A video is a 2304-step feature grid with ~15 ground-truth actions of 1-3 classes; most
candidates are jittered copies of an action (high, tied float32 scores), the rest background
(low scores), i.e. what a model's pre-NMS top-k looks like. Settings: 2000 / 5000 candidates,
20 / 97 classes, soft-NMS multiclass and class-agnostic + voting, max_seg_num 200 / 2000, plus
hard NMS. Runs on CPU and, when available, CUDA (timed with torch.cuda.synchronize). The naive
Python reference from tests/test_nms.py is timed on one size and checked to agree.

    python bench/bench_nms.py [--videos 5] [--device cpu|cuda|all] [--threads N] [--no-reference]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talbench.eval.nms import batched_nms  # noqa: E402

GRID = 2304


def make_video(n: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # Beta.sample draws from the global generator
    n_gt = 15
    classes = torch.randperm(num_classes, generator=g)[: int(torch.randint(1, 4, (1,), generator=g))]
    gt_len = torch.rand(n_gt, generator=g) * 100 + 2
    gt_start = torch.rand(n_gt, generator=g) * (GRID - gt_len)
    gt_label = classes[torch.randint(0, len(classes), (n_gt,), generator=g)]

    near = torch.rand(n, generator=g) < 0.6
    src = torch.randint(0, n_gt, (n,), generator=g)
    # quantized jitter: many candidates share boundaries exactly, as regressed ones often do
    jitter = (torch.randn(n, 2, generator=g) * 0.15 * gt_len[src, None] * 4).round() / 4
    start = torch.where(near, gt_start[src] + jitter[:, 0], torch.rand(n, generator=g) * GRID)
    end = torch.where(near, gt_start[src] + gt_len[src] + jitter[:, 1], start + torch.rand(n, generator=g) * 64)
    end = torch.maximum(end, start)
    wrong = torch.rand(n, generator=g) < 0.2
    label = torch.where(near & ~wrong, gt_label[src], torch.randint(0, num_classes, (n,), generator=g))
    hi = torch.distributions.Beta(5.0, 2.0).sample((n,))
    lo = torch.distributions.Beta(1.0, 30.0).sample((n,))
    score = torch.where(near, hi, lo).clamp(min=0.001)
    score = (score * 1024).round() / 1024 + 0.001  # coarse: exact ties occur
    return torch.stack([start, end], 1).float(), score.float(), label


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_per_video(videos, device: str, repeat: int = 3, **kw) -> tuple[float, float]:
    """Median seconds per video and mean number of kept segments."""
    moved = [tuple(x.to(device) for x in v) for v in videos]
    batched_nms(*moved[0], **kw)  # warm-up
    sync(device)
    times, kept = [], []
    for segs, scores, labels in moved:
        best = float("inf")
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            out = batched_nms(segs, scores, labels, **kw)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        times.append(best)
        kept.append(out[1].numel())
    return statistics.median(times), sum(kept) / len(kept)


CONFIGS = [
    # (label, kwargs)
    ("soft multiclass", dict(method="soft", multiclass=True)),
    ("soft agnostic+voting", dict(method="soft", multiclass=False, voting_thresh=0.75)),
    ("hard multiclass", dict(method="hard", multiclass=True, iou_threshold=0.5)),
]


def load_reference():
    spec = importlib.util.spec_from_file_location("nms_reference", ROOT / "tests" / "test_nms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ref_nms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=5)
    parser.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs per video")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        print("CUDA not available: CPU only")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if "cuda" in devices:
        print("CUDA device:", torch.cuda.get_device_name())

    header = f"{'device':6} {'setting':22} {'cands':>6} {'classes':>7} {'max_seg':>7} {'kept':>7} {'ms/video':>9}"
    print(header)
    print("-" * len(header))
    for device in devices:
        for n in (2000, 5000):
            for num_classes in (20, 97):
                videos = [make_video(n, num_classes, seed) for seed in range(args.videos)]
                for name, kw in CONFIGS:
                    for max_seg_num in (200, 2000):
                        sec, kept = time_per_video(
                            videos, device, repeat=args.repeat, max_seg_num=max_seg_num, **kw
                        )
                        print(
                            f"{device:6} {name:22} {n:6d} {num_classes:7d} {max_seg_num:7d} "
                            f"{kept:7.0f} {sec * 1e3:9.2f}",
                            flush=True,
                        )

    if not args.no_reference:
        ref_nms = load_reference()
        segs, scores, labels = make_video(2000, 20, 0)
        for name, kw in CONFIGS[:2]:
            t0 = time.perf_counter()
            ref_idx, ref_scores, ref_segs = ref_nms(segs, scores, labels, max_seg_num=200, **kw)
            ref_s = time.perf_counter() - t0
            fast_s, _ = time_per_video([(segs, scores, labels)], "cpu", max_seg_num=200, **kw)
            out = batched_nms(segs, scores, labels, max_seg_num=200, **kw)
            agree = torch.equal(out[2], labels[ref_idx]) and torch.allclose(
                out[1], torch.tensor(ref_scores), rtol=1e-6, atol=0
            ) and torch.allclose(out[0], torch.tensor(ref_segs).float(), rtol=1e-6, atol=1e-5)
            print(
                f"naive reference, {name}, 2000 cands, 20 classes, max_seg 200: "
                f"{ref_s * 1e3:.0f} ms/video vs {fast_s * 1e3:.2f} ms on cpu "
                f"({ref_s / fast_s:.0f}x); agrees: {agree}"
            )


if __name__ == "__main__":
    main()
