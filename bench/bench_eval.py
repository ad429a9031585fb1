"""Benchmark the detection evaluator on a THUMOS-like workload.

2,000 videos x 200 predictions, 20 classes, ~15 gt instances per video, tIoU 0.3:0.7:5.
Times `evaluate_detection` alone, then JSON load + parse separately; with
`--oracle-videos N` also times the slow per-prediction oracle from the tests on the first
N videos, checks it agrees bitwise there, and extrapolates it to the whole workload.

    python bench/bench_eval.py [--videos 2000] [--repeat 3] [--oracle-videos 100]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from talbench.eval.detection import evaluate_detection, tiou_thresholds  # noqa: E402
from talbench.eval.inputs import (  # noqa: E402
    ground_truth,
    load_annotations,
    load_predictions,
    parse_annotations,
    parse_predictions,
)
from talbench.io import write_json  # noqa: E402

N_CLASSES = 20
PREDS_PER_VIDEO = 200
GT_PER_VIDEO = 15
NEAR_GT = 0.6  # share of predictions that are jittered copies of a gt
SUBSET = "validation"
TIOUS = "0.3:0.7:5"


def build_workload(n_videos: int, seed: int = 0) -> tuple[dict, dict]:
    """(annotation JSON object, results JSON object), deterministic for a seed."""
    rng = np.random.default_rng(seed)
    names = {i: f"action_{i:02d}" for i in range(N_CLASSES)}
    database, results = {}, {}
    for v in range(n_videos):
        vid = f"video_validation_{v:07d}"
        duration = float(rng.uniform(100, 300))
        # THUMOS-like: one or two action classes per video, many instances of each
        classes = rng.choice(N_CLASSES, size=int(rng.integers(1, 3)), replace=False)
        n_gt = max(1, int(rng.poisson(GT_PER_VIDEO)))
        g_len = rng.uniform(1, 10, n_gt)
        g_start = rng.uniform(0, duration - 10, n_gt)
        g_label = rng.choice(classes, n_gt)
        annotations = [
            {"label": names[int(c)], "label_id": int(c), "segment": [round(float(s), 1), round(float(s + n), 1)]}
            for s, n, c in zip(g_start, g_len, g_label)
        ]
        database[vid] = {"subset": SUBSET, "duration": duration, "fps": 30.0, "annotations": annotations}

        near = rng.random(PREDS_PER_VIDEO) < NEAR_GT
        src = rng.integers(0, n_gt, PREDS_PER_VIDEO)
        jitter = rng.normal(0, 0.2, (PREDS_PER_VIDEO, 2)) * g_len[src, None]
        p_start = np.where(near, g_start[src] + jitter[:, 0], rng.uniform(0, duration - 15, PREDS_PER_VIDEO))
        p_end = np.where(near, g_start[src] + g_len[src] + jitter[:, 1], p_start + rng.uniform(1, 15, PREDS_PER_VIDEO))
        p_end = np.maximum(p_end, p_start + 0.1)
        wrong_class = rng.random(PREDS_PER_VIDEO) < 0.15
        p_label = np.where(near & ~wrong_class, g_label[src], rng.integers(0, N_CLASSES, PREDS_PER_VIDEO))
        # float32 scores, as a model would emit them: exact score ties do occur
        score = np.where(near, rng.beta(5, 2, PREDS_PER_VIDEO), rng.beta(2, 5, PREDS_PER_VIDEO))
        score = score.astype(np.float32).astype(np.float64)
        results[vid] = [
            {"label": names[int(c)] if i % 2 else int(c), "score": float(sc), "segment": [float(s), float(e)]}
            for i, (s, e, c, sc) in enumerate(zip(p_start, p_end, p_label, score))
        ]
    return {"database": database}, {"results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--oracle-videos", type=int, default=0, help="also time the slow oracle on N videos")
    args = parser.parse_args()

    t0 = time.perf_counter()
    gt_obj, pred_obj = build_workload(args.videos)
    print(f"workload: {args.videos} videos, built in {time.perf_counter() - t0:.1f} s")

    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp) / "gt.json", Path(tmp) / "preds.json"
        write_json(gt_path, gt_obj)
        write_json(pred_path, pred_obj)
        t0 = time.perf_counter()
        annotations = load_annotations(gt_path)
        gt = ground_truth(annotations, SUBSET)
        t_gt = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds, _ = load_predictions(pred_path, annotations)
        t_pred = time.perf_counter() - t0
        size_mb = pred_path.stat().st_size / 1e6

    tious = tiou_thresholds(TIOUS)
    print(f"ground truth: {len(gt)} instances; predictions: {len(preds)}; tIoU {tious.tolist()}")
    print(f"load+parse annotations: {t_gt:.2f} s")
    print(f"load+parse predictions: {t_pred:.2f} s ({size_mb:.0f} MB, {len(preds) / t_pred:,.0f} predictions/s)")

    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = evaluate_detection(gt, preds, tious)
        times.append(time.perf_counter() - t0)
    best, median = min(times), statistics.median(times)
    print(
        f"evaluate_detection: best {best:.2f} s, median {median:.2f} s of {args.repeat} "
        f"({len(preds) / best:,.0f} predictions/s)"
    )
    print(f"mAP {np.round(result.mAP, 4).tolist()}, average mAP {result.average_mAP:.4f}")

    if args.oracle_videos:
        oracle_on_subset(gt_obj, pred_obj, args.oracle_videos, args.videos / args.oracle_videos, best)


def oracle_on_subset(gt_obj: dict, pred_obj: dict, n_videos: int, scale: float, fast_s: float) -> None:
    """Time the oracle on the first `n_videos` videos and check it agrees there."""
    spec = importlib.util.spec_from_file_location("oracle_tests", ROOT / "tests" / "test_eval_detection.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keep = list(gt_obj["database"])[:n_videos]
    database = {vid: gt_obj["database"][vid] for vid in keep}
    results = {vid: pred_obj["results"][vid] for vid in keep}
    annotations = parse_annotations({"database": database}, "gt.json")
    preds, _ = parse_predictions({"results": results}, annotations, "preds.json")
    fast = evaluate_detection(ground_truth(annotations, SUBSET), preds, tiou_thresholds(TIOUS))

    label_ids = {name: i for i, name in annotations.label_names.items()}  # the oracle takes ids
    by_id = {vid: [dict(d, label=label_ids.get(d["label"], d["label"])) for d in dets] for vid, dets in results.items()}
    t0 = time.perf_counter()
    ap, _, average_mAP, recall, _ = module.oracle(database, by_id, SUBSET, tiou_thresholds(TIOUS))
    t_oracle = time.perf_counter() - t0
    same = bool((fast.ap == ap).all() and (fast.recall == recall).all() and fast.average_mAP == average_mAP)
    print(
        f"oracle on {n_videos} videos: {t_oracle:.2f} s -> ~{t_oracle * scale:.0f} s extrapolated "
        f"(x{t_oracle * scale / fast_s:,.0f} the vectorized time); bitwise equal on the subset: {same}"
    )


if __name__ == "__main__":
    main()
