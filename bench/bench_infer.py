"""Benchmark ActionFormer inference per video: model forward, candidate decoding, NMS and seconds.

The published THUMOS14 recipe (configs/thumos_i3d.yaml) with freshly initialised weights (seeded;
no EMA) in eval mode, on random non-negative features [2048, T] of THUMOS-like lengths: T drawn
log-uniformly in 1,500-6,000 grid steps (stride 4 at 30 fps: 200-800 s videos), or every video of
each length given with --lengths. Each video goes through talbench.inference.video_candidates and
talbench.eval.nms.postprocess_video with the recipe's test_cfg (soft NMS, multiclass, pre_nms_topk
2000, max_seg_num 200), as `talbench infer` runs it; once whole, once chunked (test_cfg chunk_size
2304, chunk_overlap 0.25). Untrained weights score every class near the 0.01 prior, so nearly
all pre_nms_topk candidates per level reach NMS: a heavy but realistic NMS load (the `cands`
column). Timed per video after warm-up (torch.cuda.synchronize on CUDA); medians are reported,
videos/s = 1 / median. Peak GPU memory on CUDA. Each row runs in fp32 and, where the device computes
bf16 natively, in bf16 autocast (test_cfg.precision auto). Against the original code, side by side in
one run: bench/bench_vs_reference.py.

    python bench/bench_infer.py [--videos 20] [--lengths T ...] [--device cpu|cuda]
                                [--chunk-size 2304] [--chunk-overlap 0.25] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talbench.config import load_config  # noqa: E402
from talbench.data.dataset import VideoItem  # noqa: E402
from talbench.data.registry import load_registry  # noqa: E402
from talbench.eval.nms import postprocess_video  # noqa: E402
from talbench.inference import inference_model, inference_precision, video_candidates  # noqa: E402
from talbench.models import build_model  # noqa: E402
from talbench.training import native_bf16  # noqa: E402

PUBLISHED = ROOT / "configs" / "thumos_i3d.yaml"
FPS = 30.0
MIN_T, MAX_T = 1500, 6000


def make_videos(config: dict, lengths: list[int]) -> list[VideoItem]:
    ds = config["dataset"]
    stride, num_frames = float(ds["feat_stride"]), float(ds["num_frames"])
    videos = []
    for i, t in enumerate(lengths):
        duration = ((t - 1) * stride + num_frames) / FPS
        videos.append(VideoItem(
            video_id=f"video_test_{i:07d}",
            feats=torch.rand(int(config["model"]["input_dim"]), t) * 2,  # post-ReLU I3D-like: >= 0
            segments=torch.zeros(0, 2),
            labels=torch.zeros(0, dtype=torch.long),
            fps=FPS,
            duration=duration,
            feat_stride=stride,
            feat_num_frames=num_frames,
        ))
    return videos


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_video(model, item: VideoItem, device: torch.device, test_cfg: dict) -> tuple[float, float, int, int]:
    """(seconds in the model + decoding, seconds in NMS + conversion, candidates, kept)."""
    sync(device)
    t0 = time.perf_counter()
    segments, scores, labels = video_candidates(model, item, device, test_cfg)
    sync(device)
    t1 = time.perf_counter()
    out = postprocess_video(segments, scores, labels, fps=item.fps, feat_stride=item.feat_stride,
                            num_frames=item.feat_num_frames, duration=item.duration, nms_cfg=test_cfg)
    sync(device)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, int(scores.numel()), int(out["scores"].numel())


def bench_mode(model, warm: list[VideoItem], timed: list[VideoItem], device: torch.device, test_cfg: dict) -> dict:
    for item in warm:
        run_video(model, item, device, test_cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = [run_video(model, item, device, test_cfg) for item in timed]
    model_s, nms_s, cands, kept = zip(*rows)
    total = [a + b for a, b in zip(model_s, nms_s)]
    return {
        "total": statistics.median(total),
        "model": statistics.median(model_s),
        "nms": statistics.median(nms_s),
        "cands": statistics.mean(cands),
        "kept": statistics.mean(kept),
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PUBLISHED, help="ActionFormer YAML config (default: the published THUMOS recipe)")
    parser.add_argument("--videos", type=int, default=20, help="timed videos per row")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help=f"fixed lengths T, one row each (default: one row of T drawn in {MIN_T}-{MAX_T})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", type=int, default=2, help="untimed videos first")
    parser.add_argument("--chunk-size", type=int, default=2304, help="test_cfg.chunk_size of the chunked mode")
    parser.add_argument("--chunk-overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA not available: use --device cpu")
    config, _ = load_config(args.config, load_registry())
    torch.manual_seed(args.seed)
    model = build_model(config["model"]).to(device).eval()
    precisions = ["fp32", "bf16"] if native_bf16(device) else ["fp32"]
    test_cfg = dict(config["test_cfg"])
    modes = [("whole", {**test_cfg, "chunk_size": 0}),
             (f"chunk {args.chunk_size}", {**test_cfg, "chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap})]

    torch.manual_seed(args.seed + 1)
    if args.lengths:
        groups = [(str(t), [t] * (args.videos + args.warmup)) for t in args.lengths]
    else:
        lo, hi = math.log(MIN_T), math.log(MAX_T)
        drawn = [int(math.exp(lo + (hi - lo) * float(u))) for u in torch.rand(args.videos + args.warmup)]
        groups = [(f"{MIN_T}-{MAX_T}", drawn)]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", CUDA device: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(f"config {args.config.resolve().relative_to(ROOT) if args.config.resolve().is_relative_to(ROOT) else args.config}: {test_cfg.get('nms_method')} NMS, multiclass {test_cfg['multiclass_nms']}, "
          f"pre_nms_topk {test_cfg['pre_nms_topk']}, max_seg_num {test_cfg['max_seg_num']}; "
          f"max_div_factor {model.max_div_factor}; {args.warmup} warm-up + {args.videos} timed videos per row, medians")
    header = (f"{'precision':10} {'device':6} {'mode':11} {'T':>9} {'median T':>8} {'cands':>6} {'kept':>5} "
              f"{'model ms':>8} {'nms ms':>7} {'ms/video':>8} {'videos/s':>8} {'peak GiB':>8}")
    print(header)
    print("-" * len(header))
    for label, lengths in groups:
        videos = make_videos(config, lengths)
        warm, timed = videos[: args.warmup], videos[args.warmup:]
        for (mode, cfg), precision in ((m, p) for m in modes for p in precisions):
            mode_cfg = {**cfg, "precision": precision}
            prepared = inference_model(copy.deepcopy(model), mode_cfg, device)  # as talbench.inference.predict
            with inference_precision(mode_cfg, device):  # one region for all videos, as predict
                r = bench_mode(prepared, warm, timed, device, mode_cfg)
            peak = f"{r['peak_gib']:8.2f}" if r["peak_gib"] is not None else f"{'-':>8}"
            med_t = int(statistics.median(v.feats.shape[1] for v in timed))
            print(f"{precision:10} {device.type:6} {mode:11} {label:>9} {med_t:8d} {r['cands']:6.0f} {r['kept']:5.0f} "
                  f"{r['model'] * 1e3:8.0f} {r['nms'] * 1e3:7.0f} {r['total'] * 1e3:8.0f} {1 / r['total']:8.2f} {peak}",
                  flush=True)


if __name__ == "__main__":
    main()
