"""Benchmark the bootstrap over test videos on the THUMOS14 twin's test split.

Ground truth is the twin's own (`talbench.data.synthetic`, no features written); predictions are
synthetic, as many per video as the ci config keeps (max_seg_num 200): jittered copies of ground
truth (a tighter jitter for A than for B) among background detections, with float32 scores as a
model emits them. Times B resamples of one set (`bootstrap`) and of a pair (`paired_bootstrap`),
and checks the first `--check` replicates bit for bit against `evaluate_detection` on the
explicitly resampled sets, timing those calls too.

    python bench/bench_bootstrap.py [--scale ci] [--resamples 1000] [--repeat 3] [--check 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talbench.data.registry import load_registry  # noqa: E402
from talbench.data.formats import annotation_json  # noqa: E402
from talbench.data.synthetic import PROFILES, TwinModel, annotation_database  # noqa: E402
from talbench.eval.detection import GroundTruth, Predictions, evaluate_detection, tiou_thresholds  # noqa: E402
from talbench.eval.inputs import ground_truth, parse_annotations  # noqa: E402
from talbench.eval.statistics import bootstrap, paired_bootstrap, replicate_mAP, resampled  # noqa: E402

PREDS_PER_VIDEO = 200
NEAR_GT = 0.5  # share of predictions that are jittered copies of a gt
N_CLASSES = 20
TIOUS = "0.3:0.7:5"  # THUMOS14's thresholds


def twin_test_set(scale: str, seed: int = 0) -> GroundTruth:
    dataset = load_registry(ROOT / "params.yaml").dataset("thumos14")
    model = TwinModel(dataset, PROFILES["thumos14"], seed, scale)
    videos = [model.video(i) for i in range(model.num_videos)]
    text = annotation_json(annotation_database(model, videos, 0), "bench")  # the twin's file, as written
    annotations = parse_annotations(json.loads(text), "twin")
    return ground_truth(annotations, "test")


def synthetic_predictions(gt: GroundTruth, jitter: float, seed: int) -> Predictions:
    """PREDS_PER_VIDEO detections per test video; `jitter` scales the boundary noise of true hits."""
    rng = np.random.default_rng(seed)
    columns: list[list] = [[], [], [], [], []]
    for video in gt.videos.tolist():
        own = np.flatnonzero(gt.video_ids == video)
        n = PREDS_PER_VIDEO
        src = own[rng.integers(0, own.size, n)] if own.size else np.zeros(n, dtype=np.int64)
        near = (rng.random(n) < NEAR_GT) & (own.size > 0)
        length = gt.ends[src] - gt.starts[src]
        noise = rng.normal(0.0, jitter, (n, 2)) * length[:, None]
        background = rng.uniform(0.0, 80.0, n)
        start = np.where(near, gt.starts[src] + noise[:, 0], background)
        end = np.maximum(np.where(near, gt.ends[src] + noise[:, 1], background + rng.uniform(1, 15, n)), start)
        label = np.where(near & (rng.random(n) < 0.85), gt.labels[src], rng.integers(0, N_CLASSES, n))
        score = np.where(near, rng.beta(5, 2, n), rng.beta(2, 5, n)).astype(np.float32).astype(np.float64)
        for column, values in zip(columns, ([video] * n, start, end, label, score)):
            column.extend(values)
    return Predictions(np.array(columns[0], dtype=object), *(np.array(c) for c in columns[1:]))


def timed(repeat: int, call) -> tuple[float, float, object]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="ci", choices=sorted(PROFILES["thumos14"].sizes))
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check", type=int, default=50, help="replicates checked against evaluate_detection")
    args = parser.parse_args()

    gt = twin_test_set(args.scale)
    tious = tiou_thresholds(TIOUS)
    preds_a = synthetic_predictions(gt, jitter=0.25, seed=1)
    preds_b = synthetic_predictions(gt, jitter=0.30, seed=2)
    print(
        f"THUMOS14 twin, {args.scale} scale, test split: {gt.videos.size} videos, {len(gt)} instances; "
        f"{len(preds_a)} predictions per set; tIoU {[round(float(t), 2) for t in tious]}"
    )
    best, median, one = timed(args.repeat, lambda: bootstrap(gt, preds_a, tious, resamples=args.resamples))
    print(
        f"bootstrap, B={args.resamples}: best {best:.3f} s, median {median:.3f} s of {args.repeat}; "
        f"average mAP {100 * one.average_mAP:.2f} [{100 * one.interval[0]:.2f}, {100 * one.interval[1]:.2f}]"
    )
    best, median, pair = timed(
        args.repeat, lambda: paired_bootstrap(gt, preds_a, gt, preds_b, tious, resamples=args.resamples)
    )
    print(
        f"paired bootstrap, B={args.resamples}: best {best:.3f} s, median {median:.3f} s of {args.repeat}; "
        f"A - B {100 * pair.difference:.2f} [{100 * pair.interval[0]:.2f}, {100 * pair.interval[1]:.2f}]: {pair.verdict}"
    )
    if args.check:
        draws = np.random.default_rng(0).integers(0, gt.videos.size, size=(args.check, gt.videos.size))
        fast = replicate_mAP(gt, preds_a, tious, draws)
        t0 = time.perf_counter()
        exact = np.array([evaluate_detection(*resampled(gt, preds_a, row), tious).mAP for row in draws])
        per_call = (time.perf_counter() - t0) / args.check
        print(
            f"evaluate_detection on {args.check} explicitly resampled sets: {1000 * per_call:.1f} ms each "
            f"(~{per_call * args.resamples:.1f} s for B={args.resamples}); bit-identical: {np.array_equal(fast, exact)}"
        )


if __name__ == "__main__":
    main()
