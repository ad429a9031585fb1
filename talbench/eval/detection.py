"""Temporal action detection metrics: the ActivityNet / ActionFormer protocol, vectorized.

The reference implementation walks every prediction in a Python loop. This module gives
bit-identical float64 results (AP per class and threshold, mAP, average mAP, Recall@KxN)
with array operations:

* Greedy matching only interacts inside one (class, video) group, and only a prediction
  whose tIoU with some gt of its group reaches the smallest threshold can ever be a true
  positive; every other prediction is a false positive that changes no state. So the
  candidates are matched rank by rank: the r-th candidate of every group at once, for all
  thresholds at once.
* Orders are taken with fast stable sorts where no exact ties exist. Where ties exist the
  reference's own ``np.argsort(x)[::-1]`` call is made on the very same array, because its
  tie order (SIMD quicksort, not stable) decides which gt is locked.
* The cumulative sums, the interpolated AP and the means are computed with the same NumPy
  calls as the reference, since summation order decides the last digit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DUPLICATE_TOL = 1e-3
# recall levels of the precision/recall curves: 0, 0.01, ..., 1 (COCO's 101 points)
PR_RECALL_LEVELS = np.linspace(0.0, 1.0, 101)


def remove_duplicate_annotations(
    events: Iterable[tuple[float, float, int]], tol: float = DUPLICATE_TOL
) -> list[int]:
    """Indices of the `(start, end, label_id)` events kept by the reference rule, in order.

    An event is dropped when it is shorter than `tol` or when an already kept event has the
    same label and start and end within `tol`. Plain Python float arithmetic, like the
    reference, so borderline events are decided identically.
    """
    kept: list[tuple[float, float, int]] = []
    kept_index: list[int] = []
    for i, (start, end, label) in enumerate(events):
        valid = (end - start) >= tol
        for k_start, k_end, k_label in kept:
            if abs(start - k_start) <= tol and abs(end - k_end) <= tol and label == k_label:
                valid = False
                break
        if valid:
            kept.append((start, end, label))
            kept_index.append(i)
    return kept_index


def _as_array(name: str, values: object, dtype: type) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_segments(kind: str, starts: np.ndarray, ends: np.ndarray, positive: bool) -> None:
    if not (np.isfinite(starts).all() and np.isfinite(ends).all()):
        raise ValueError(f"{kind}: segment bounds must be finite")
    bad = ends - starts <= 0 if positive else ends < starts
    if bad.any():
        i = int(np.argmax(bad))
        rule = "end > start" if positive else "end >= start"
        raise ValueError(f"{kind}: segment {i} [{starts[i]}, {ends[i]}] violates {rule}")


@dataclass(frozen=True)
class GroundTruth:
    """Kept ground-truth instances of one subset, in file order (videos, then annotations).

    `videos` lists every video of the subset, also those left without instances; it defaults
    to the videos of the instances. Predictions on other videos are false positives.
    Instances must already have passed `remove_duplicate_annotations` (so have length > 0).
    """

    video_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    labels: np.ndarray
    videos: np.ndarray | None = None

    def __post_init__(self) -> None:
        fields = {
            "video_ids": _as_array("video_ids", self.video_ids, object),
            "starts": _as_array("starts", self.starts, np.float64),
            "ends": _as_array("ends", self.ends, np.float64),
            "labels": _as_array("labels", self.labels, np.int64),
        }
        if len({a.size for a in fields.values()}) != 1:
            raise ValueError("GroundTruth columns must have equal lengths")
        videos = list(dict.fromkeys(fields["video_ids"].tolist()))
        if self.videos is not None:
            listed = _as_array("videos", self.videos, object).tolist()
            missing = set(videos) - set(listed)
            if missing:
                raise ValueError(f"GroundTruth.videos lacks instance videos: {sorted(missing)[:5]}")
            videos = list(dict.fromkeys(listed))
        fields["videos"] = np.array(videos, dtype=object)
        _check_segments("ground truth", fields["starts"], fields["ends"], positive=True)
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.starts.size)


@dataclass(frozen=True)
class Predictions:
    """Detections in file order (videos in file order, then each video's list order)."""

    video_ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    labels: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        fields = {
            "video_ids": _as_array("video_ids", self.video_ids, object),
            "starts": _as_array("starts", self.starts, np.float64),
            "ends": _as_array("ends", self.ends, np.float64),
            "labels": _as_array("labels", self.labels, np.int64),
            "scores": _as_array("scores", self.scores, np.float64),
        }
        if len({a.size for a in fields.values()}) != 1:
            raise ValueError("Predictions columns must have equal lengths")
        _check_segments("predictions", fields["starts"], fields["ends"], positive=False)
        if not np.isfinite(fields["scores"]).all():
            raise ValueError("predictions: scores must be finite")
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __len__(self) -> int:
        return int(self.starts.size)


@dataclass(frozen=True)
class DetectionResult:
    tious: np.ndarray  # [T]
    classes: np.ndarray  # [C] label ids, sorted
    ap: np.ndarray  # [T, C]
    mAP: np.ndarray  # [T]
    average_mAP: float
    top_k: tuple[int, ...]  # [K]
    recall: np.ndarray  # [T, K, C], Recall@KxN
    mean_recall: np.ndarray  # [T, K]
    counts: dict[str, int]
    # precision/recall curves: the interpolated precision (the best precision at this recall or
    # beyond, the envelope AP integrates) at each of the recall levels; 0 past a class's reach
    pr_recall: np.ndarray  # [R]
    pr_precision: np.ndarray  # [T, C, R]


def tiou_thresholds(spec: str) -> np.ndarray:
    """Parse "0.3,0.4,0.5" (exact floats) or "start:stop:num" (np.linspace, like the reference).

    The two spellings can differ in the last bit: np.linspace(0.3, 0.7, 5)[1] is
    0.39999999999999997, so a tIoU of 1.2 / 3.0 (that same double) passes "0.3:0.7:5"
    but not "0.4". Use the spelling the reference used.
    """
    text = spec.strip()
    try:
        if ":" in text:
            start, stop, num = text.split(":")
            if int(num) < 1:
                raise ValueError
            values = np.linspace(float(start), float(stop), int(num))
        else:
            values = np.array([float(part) for part in text.split(",")], dtype=np.float64)
    except ValueError:
        raise ValueError(
            f"bad tIoU thresholds {spec!r}: expected 'a,b,c' or 'start:stop:num'"
        ) from None
    return _check_tious(values)


def _check_tious(tious: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.array(tious, dtype=np.float64).reshape(-1)
    if values.size == 0 or not np.all((values > 0) & (values <= 1)):
        raise ValueError(f"tIoU thresholds must be a non-empty list in (0, 1], got {values.tolist()}")
    return values


def _tiou(p_start: np.ndarray, p_end: np.ndarray, g_start: np.ndarray, g_end: np.ndarray) -> np.ndarray:
    """Elementwise tIoU with the reference's operations in the reference's order."""
    inter = (np.minimum(p_end, g_end) - np.maximum(p_start, g_start)).clip(0)
    union = (g_end - g_start) + (p_end - p_start) - inter
    return inter / union


def _descending_exact(values: np.ndarray) -> np.ndarray:
    """The reference's ordering, tie order included."""
    return np.argsort(values)[::-1]


def _run_starts(keys: np.ndarray) -> np.ndarray:
    """Start index of the run each element belongs to, for a grouped (sorted) key array."""
    new_run = np.ones(keys.size, dtype=bool)
    new_run[1:] = keys[1:] != keys[:-1]
    return np.maximum.accumulate(np.where(new_run, np.arange(keys.size), 0))


@dataclass(frozen=True)
class _Groups:
    """Ground truth sorted into (class, video) groups, class-gt order inside each group."""

    starts: np.ndarray  # gt columns, grouped
    ends: np.ndarray
    classes: np.ndarray  # class index per grouped gt
    keys: np.ndarray  # sorted unique group keys (class * n_videos + video)
    first: np.ndarray  # first grouped gt of each group
    size: np.ndarray  # gts per group
    n_videos: int

    @classmethod
    def build(cls, gt_class: np.ndarray, gt_video: np.ndarray, gt: GroundTruth, n_videos: int) -> _Groups:
        key = gt_class * n_videos + gt_video
        order = np.argsort(key, kind="stable")
        keys, first, size = np.unique(key[order], return_index=True, return_counts=True)
        return cls(gt.starts[order], gt.ends[order], gt_class[order], keys, first, size, n_videos)

    def lookup(self, p_class: np.ndarray, p_video: np.ndarray) -> np.ndarray:
        """Group index of each prediction, -1 when its video has no gt of its class."""
        key = np.where(p_video >= 0, p_class * self.n_videos + p_video, -1)
        pos = np.searchsorted(self.keys, key).clip(max=self.keys.size - 1)
        return np.where(self.keys[pos] == key, pos, -1)

    def pairs(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in `group`, grouped gt) for every gt of each row's group; rows must be >= 0."""
        n = self.size[group]
        row = np.repeat(np.arange(group.size), n)
        offset = np.repeat(self.first[group] - (np.cumsum(n) - n), n)
        return row, offset + np.arange(row.size)


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    mprec = np.hstack([[0], precision, [0]])
    mrec = np.hstack([[0], recall, [1]])
    mprec = np.maximum.accumulate(mprec[::-1])[::-1]
    idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx]))


def _class_order(p_class: np.ndarray, scores: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Prediction indices grouped by class, each class in the reference's score order.

    Returns (slots, bounds): class c occupies slots[bounds[c]:bounds[c + 1]].
    """
    known = np.flatnonzero(p_class >= 0)
    by_class = known[np.argsort(p_class[known], kind="stable")]  # file order inside a class
    bounds = np.searchsorted(p_class[by_class], np.arange(n_classes + 1))
    slots = by_class.copy()
    for c in range(n_classes):
        idx = by_class[bounds[c] : bounds[c + 1]]
        slots[bounds[c] : bounds[c + 1]] = idx[_descending_exact(scores[idx])]
    return slots, bounds


def _visit_order(
    c_slot: np.ndarray, c_gt: np.ndarray, c_tiou: np.ndarray, groups: _Groups,
    slot_group: np.ndarray, pair_slot: np.ndarray, pair_tiou: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort candidate pairs by (prediction, the reference's gt visiting order).

    Without ties the visiting order is descending tIoU. A prediction with tied candidate
    tIoUs gets the reference's argsort over its whole tIoU row (all gts of its group, in
    class-gt order); candidates form a prefix of that order, as it is non-increasing.
    """
    order = np.lexsort((-c_tiou, c_slot))
    c_slot, c_gt, c_tiou = c_slot[order], c_gt[order], c_tiou[order]
    tied = (c_slot[1:] == c_slot[:-1]) & (c_tiou[1:] == c_tiou[:-1])
    for slot in np.unique(c_slot[1:][tied]):
        lo, hi = np.searchsorted(pair_slot, [slot, slot + 1])
        a, b = np.searchsorted(c_slot, [slot, slot + 1])
        row = pair_tiou[lo:hi].copy()
        visit = _descending_exact(row)[: b - a]
        c_gt[a:b] = groups.first[slot_group[slot]] + visit
        c_tiou[a:b] = row[visit]
    return c_slot, c_gt, c_tiou


def _true_positives(
    slots: np.ndarray, p_group: np.ndarray, preds: Predictions, groups: _Groups, tious: np.ndarray
) -> np.ndarray:
    """tp[t, i] for the i-th slot (class order), exactly as the reference's greedy matching."""
    n_thr = tious.size
    tp = np.zeros((n_thr, slots.size))
    slot_group = p_group[slots]
    has_gt = np.flatnonzero(slot_group >= 0)
    row, pair_gt = groups.pairs(slot_group[has_gt])
    pair_slot = has_gt[row]  # sorted, gts in class-gt order within a slot
    pred_idx = slots[pair_slot]
    pair_tiou = _tiou(
        preds.starts[pred_idx], preds.ends[pred_idx], groups.starts[pair_gt], groups.ends[pair_gt]
    )
    cand = pair_tiou >= tious.min()
    c_slot, c_gt, c_tiou = _visit_order(
        pair_slot[cand], pair_gt[cand], pair_tiou[cand], groups, slot_group, pair_slot, pair_tiou
    )
    if c_slot.size == 0:
        return tp

    # Rank of each candidate prediction inside its group, in class (score) order.
    cand_slots = np.unique(c_slot)
    cand_group = slot_group[cand_slots]
    by_group = np.argsort(cand_group, kind="stable")
    rank = np.empty(cand_slots.size, dtype=np.int64)
    rank[by_group] = np.arange(by_group.size) - _run_starts(cand_group[by_group])

    # Batch r holds the r-th candidate of every group; its pairs stay in visiting order.
    batch_order = np.argsort(rank, kind="stable")
    batch_pos = np.empty_like(batch_order)
    batch_pos[batch_order] = np.arange(batch_order.size)
    pair_pos = batch_pos[np.searchsorted(cand_slots, c_slot)]
    pair_order = np.argsort(pair_pos, kind="stable")
    pair_pos, c_gt = pair_pos[pair_order], c_gt[pair_order]
    passes = c_tiou[pair_order][None, :] >= tious[:, None]  # [T, pairs]
    batch_slot = cand_slots[batch_order]
    pred_bounds = np.searchsorted(rank[batch_order], np.arange(rank.max() + 2))
    pair_bounds = np.searchsorted(pair_pos, pred_bounds)

    locked = np.zeros((n_thr, groups.starts.size), dtype=bool)
    for r in range(pred_bounds.size - 1):
        lo, hi = pair_bounds[r], pair_bounds[r + 1]
        gt_r = c_gt[lo:hi]
        thr_i, j = np.nonzero(passes[:, lo:hi] & ~locked[:, gt_r])
        if thr_i.size == 0:
            continue
        # The first eligible gt of each (threshold, prediction) in visiting order is locked.
        key = thr_i * (hi - lo) + (pair_pos[lo:hi][j] - pred_bounds[r])
        first = np.ones(key.size, dtype=bool)
        first[1:] = key[1:] != key[:-1]
        thr_i, j = thr_i[first], j[first]
        locked[thr_i, gt_r[j]] = True
        tp[thr_i, batch_slot[pair_pos[lo:hi][j]]] = 1.0
    return tp


def _interpolated_precision(precision: np.ndarray, recall: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Best precision at recall >= each level (0 where the level is never reached)."""
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    first = np.searchsorted(recall, levels, side="left")
    reached = first < recall.size
    return np.where(reached, envelope[np.minimum(first, recall.size - 1)], 0.0)


def _average_precision(
    tp: np.ndarray, bounds: np.ndarray, groups: _Groups, n_classes: int, levels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AP [T, C] and the interpolated precision/recall curves [T, C, R] of every class."""
    npos = np.bincount(groups.classes, minlength=n_classes)
    ap = np.zeros((tp.shape[0], n_classes))
    curves = np.zeros((tp.shape[0], n_classes, levels.size))
    for c in range(n_classes):
        tp_c = tp[:, bounds[c] : bounds[c + 1]]
        if tp_c.shape[1] == 0:
            continue
        tp_cum = np.cumsum(tp_c, axis=1)
        fp_cum = np.cumsum(1.0 - tp_c, axis=1)
        recall = tp_cum / float(npos[c])
        precision = tp_cum / (tp_cum + fp_cum)
        for t in range(tp.shape[0]):
            ap[t, c] = _interpolated_ap(precision[t], recall[t])
            curves[t, c] = _interpolated_precision(precision[t], recall[t], levels)
    return ap, curves


def _recall_at_kx(
    p_group: np.ndarray, preds: Predictions, groups: _Groups, tious: np.ndarray,
    top_k: tuple[int, ...], n_classes: int,
) -> np.ndarray:
    """Recall@KxN [T, K, C]: a gt counts at k when one of its video's top k*n_v predictions
    of its class (n_v = that video's gts of the class) reaches the threshold."""
    idx = np.flatnonzero(p_group >= 0)
    group = p_group[idx]
    order = np.lexsort((-preds.scores[idx], group))
    idx, group = idx[order], group[order]
    run_start = _run_starts(group)
    score = preds.scores[idx]
    tied = (group[1:] == group[:-1]) & (score[1:] == score[:-1])
    group_len = np.bincount(group, minlength=groups.keys.size)
    for lo in np.unique(run_start[1:][tied]):
        hi = lo + group_len[group[lo]]
        in_file_order = np.sort(idx[lo:hi])
        idx[lo:hi] = in_file_order[_descending_exact(preds.scores[in_file_order])]
    rank = np.arange(idx.size) - run_start
    top = rank < max(top_k) * groups.size[group]
    idx, group, rank = idx[top], group[top], rank[top]

    row, pair_gt = groups.pairs(group)
    pair_tiou = _tiou(
        preds.starts[idx[row]], preds.ends[idx[row]], groups.starts[pair_gt], groups.ends[pair_gt]
    )
    never = np.iinfo(np.int64).max
    best_rank = np.full((tious.size, groups.starts.size), never)  # best-ranked hit per gt
    for t, thr in enumerate(tious):
        hit = pair_tiou >= thr
        np.minimum.at(best_rank[t], pair_gt[hit], rank[row[hit]])
    n_v = np.repeat(groups.size, groups.size)
    limit = np.asarray(top_k, dtype=np.int64)[:, None] * n_v[None, :]  # [K, G]
    covered = best_rank[:, None, :] < limit[None, :, :]  # [T, K, G]
    class_first = np.searchsorted(groups.classes, np.arange(n_classes))
    tp = np.add.reduceat(covered.astype(np.int64), class_first, axis=2).astype(np.float64)
    n_gts = np.bincount(groups.classes, minlength=n_classes)
    return tp / n_gts


def _video_codes(video_ids: np.ndarray, video_index: dict[str, int]) -> np.ndarray:
    """Index of each row's video, -1 if unknown; looks up runs of one video once."""
    n = video_ids.size
    head = np.ones(n, dtype=bool)
    head[1:] = video_ids[1:] != video_ids[:-1]
    starts = np.flatnonzero(head)
    codes = [video_index.get(v, -1) for v in video_ids[starts].tolist()]
    return np.repeat(np.array(codes, dtype=np.int64), np.diff(starts, append=n))


def evaluate_detection(
    gt: GroundTruth, preds: Predictions, tious: Sequence[float] | np.ndarray,
    top_k: Sequence[int] = (1, 5),
) -> DetectionResult:
    """AP per class and threshold, mAP, average mAP and Recall@KxN of `preds` against `gt`.

    Classes are the label ids present in `gt`; predictions of other labels are ignored.
    Predictions on videos without gt of their class are false positives.
    """
    thresholds = _check_tious(tious)
    ks = tuple(int(k) for k in top_k)
    if not ks or min(ks) < 1:
        raise ValueError(f"top_k must be positive integers, got {top_k}")
    if len(gt) == 0:
        raise ValueError("ground truth has no instances")
    classes = np.unique(gt.labels)
    n_classes = classes.size

    video_index = {video: i for i, video in enumerate(gt.videos.tolist())}
    gt_video = _video_codes(gt.video_ids, video_index)
    p_video = _video_codes(preds.video_ids, video_index)
    p_class = np.searchsorted(classes, preds.labels).clip(max=n_classes - 1)
    p_class = np.where(classes[p_class] == preds.labels, p_class, -1)
    groups = _Groups.build(np.searchsorted(classes, gt.labels), gt_video, gt, len(video_index))
    p_group = np.where(p_class >= 0, groups.lookup(p_class, p_video), -1)

    slots, bounds = _class_order(p_class, preds.scores, n_classes)
    tp = _true_positives(slots, p_group, preds, groups, thresholds)
    ap, pr_precision = _average_precision(tp, bounds, groups, n_classes, PR_RECALL_LEVELS)
    mAP = ap.mean(axis=1)
    recall = _recall_at_kx(p_group, preds, groups, thresholds, ks, n_classes)
    counts = {
        "gt_videos": len(video_index),
        "gt_instances": len(gt),
        "predictions": len(preds),
        "predictions_outside_subset": int(np.count_nonzero(p_video < 0)),
        # classes without ground truth in this subset have no AP: their predictions are ignored, not errors
        "predictions_of_classes_without_gt": int(np.count_nonzero(p_class < 0)),
    }
    return DetectionResult(
        tious=thresholds, classes=classes, ap=ap, mAP=mAP, average_mAP=float(mAP.mean()),
        top_k=ks, recall=recall, mean_recall=recall.mean(axis=2), counts=counts,
        pr_recall=PR_RECALL_LEVELS.copy(), pr_precision=pr_precision,
    )


def _threshold_keys(tious: np.ndarray) -> list[str]:
    """'0.50'-style keys; the full repr only when two thresholds would print alike."""
    keys = [f"{t:.2f}" for t in tious]
    return keys if len(set(keys)) == len(keys) else [repr(float(t)) for t in tious]


def _class_name(label_names: dict[int, str], label: int) -> str:
    return label_names.get(int(label), str(int(label)))


def result_to_dict(result: DetectionResult, label_names: dict[int, str]) -> dict:
    """JSON-ready summary; floats are exact (json writes their repr)."""
    keys = _threshold_keys(result.tious)
    return {
        "tious": [float(t) for t in result.tious],
        "top_k": list(result.top_k),
        "mAP": {f"mAP@{key}": float(v) for key, v in zip(keys, result.mAP)},
        "average_mAP": float(result.average_mAP),
        "recall": {
            f"R@{k}x@{key}": float(result.mean_recall[t, ki])
            for ki, k in enumerate(result.top_k)
            for t, key in enumerate(keys)
        },
        "AP_per_class": {
            _class_name(label_names, label): {
                f"AP@{key}": float(result.ap[t, c]) for t, key in enumerate(keys)
            }
            for c, label in enumerate(result.classes)
        },
        "counts": dict(result.counts),
    }


def precision_recall_table(result: DetectionResult) -> tuple[list[str], list[list[float]]]:
    """The class-mean precision/recall curve per threshold: header `recall, precision@<tIoU>...`
    and one row per recall level (the mean of the classes' interpolated precision, as COCO plots it)."""
    keys = _threshold_keys(result.tious)
    mean = result.pr_precision.mean(axis=1)  # [T, R]
    header = ["recall", *(f"precision@{key}" for key in keys)]
    rows = [[round(float(r), 4), *(float(v) for v in mean[:, i])] for i, r in enumerate(result.pr_recall)]
    return header, rows


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Aligned plain-text columns (the first left, the others right), a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(  # noqa: E731
        cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths))
    )
    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def format_table(result: DetectionResult, label_names: dict[int, str], per_class: bool = False) -> str:
    """Plain-text report: mAP and Recall@KxN per threshold, optionally AP per class."""
    keys = _threshold_keys(result.tious)
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    header = ["tIoU", "mAP", *(f"R@{k}x" for k in result.top_k)]
    rows = [
        [key, pct(result.mAP[t]), *(pct(result.mean_recall[t, ki]) for ki in range(len(result.top_k)))]
        for t, key in enumerate(keys)
    ]
    lines = text_table(header, rows)
    lines.append(f"average mAP: {pct(result.average_mAP)}")
    if per_class:
        names = [_class_name(label_names, label) for label in result.classes]
        class_rows = [
            [name, *(pct(result.ap[t, c]) for t in range(len(keys)))] for c, name in enumerate(names)
        ]
        lines += ["", *text_table(["class", *(f"AP@{key}" for key in keys)], class_rows)]
    lines.append(_counts_line(result.counts))
    return "\n".join(lines)


def _counts_line(counts: dict[str, int]) -> str:
    """The counts as a sentence: which predictions were scored, and why the others were not."""
    return (f"counts: {counts['gt_instances']} ground-truth instances in {counts['gt_videos']} videos; "
            f"{counts['predictions']} predictions, of which {counts['predictions_of_classes_without_gt']} of classes "
            f"without ground truth here (ignored: the protocol scores the classes that have instances) and "
            f"{counts['predictions_outside_subset']} on videos outside the subset (false positives)")
