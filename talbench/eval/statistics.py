"""Confidence intervals for detection mAP: a bootstrap over test videos, paired comparisons, seeds.

A replicate draws the test videos with replacement and scores the drawn set with the exact
ActivityNet protocol; copy j of a drawn video is a video of its own (id j, see `resampled`), so a
video drawn k times counts k times. Every replicate equals, bit for bit, `evaluate_detection` on
the explicitly resampled set, at a small fraction of its cost:

* Greedy matching stays inside one (class, video) group, so a copy matches its predictions to its
  ground truth as the original video does, unless two predictions of one group tie in score (then
  the reference's unstable sort picks their order). Each prediction's outcome (true positive or not
  per tIoU) is computed once, on the full set, with the evaluator's own matching code.
* Where no two predictions of a class with different outcomes tie in score, every resample ranks
  the class as the full set does, copies side by side; AP then follows for all resamples at once
  from weighted cumulative sums.
* A class with ties that matter is ranked per resample by the reference's own sort of its scores;
  where two predictions of one group tie, it is scored per resample by `evaluate_detection` alone.
* AP is a pairwise `np.sum` over recall steps: segments of one length are summed as rows of a 2-D
  array, which NumPy reduces exactly as it reduces a lone row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The evaluator's own matching and ordering: a copy's outcomes are then the evaluator's by construction.
from talbench.eval.detection import (
    GroundTruth,
    Predictions,
    _check_tious,
    _class_order,
    _descending_exact,
    _Groups,
    _threshold_keys,
    _true_positives,
    _video_codes,
    evaluate_detection,
)

_CHUNK_ELEMENTS = 4_000_000  # resamples x (predictions + tIoUs x hits) of one class per step


# -- resampling ----------------------------------------------------------------------------------


def draw_videos(n_videos: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, n_videos] video indices drawn with replacement; the same seed gives the same draws."""
    if resamples < 1 or n_videos < 1:
        raise ValueError(f"a bootstrap needs at least one video and one resample, got {n_videos} and {resamples}")
    return np.random.default_rng(seed).integers(0, n_videos, size=(resamples, n_videos))


def _rows_by_video(video_ids: np.ndarray, videos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows grouped by video, file order kept, bounds): video v owns rows[bounds[v]:bounds[v + 1]]."""
    codes = _video_codes(video_ids, {video: i for i, video in enumerate(videos.tolist())})
    known = np.flatnonzero(codes >= 0)
    rows = known[np.argsort(codes[known], kind="stable")]
    return rows, np.searchsorted(codes[rows], np.arange(videos.size + 1))


def _copied_rows(rows: np.ndarray, bounds: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, copy) for every row of every drawn video, copies in draw order."""
    size = bounds[draws + 1] - bounds[draws]
    copy = np.repeat(np.arange(draws.size), size)
    offset = np.repeat(bounds[draws] - (np.cumsum(size) - size), size)
    return rows[offset + np.arange(copy.size)], copy


@dataclass(frozen=True)
class _Indexed:
    """A ground truth and predictions with their rows grouped by video, ready to be resampled."""

    gt: GroundTruth
    preds: Predictions
    gt_rows: tuple[np.ndarray, np.ndarray]
    pred_rows: tuple[np.ndarray, np.ndarray]

    @classmethod
    def of(cls, gt: GroundTruth, preds: Predictions) -> _Indexed:
        return cls(gt, preds, _rows_by_video(gt.video_ids, gt.videos), _rows_by_video(preds.video_ids, gt.videos))

    def resample(self, draws: np.ndarray) -> tuple[GroundTruth, Predictions]:
        g, g_copy = _copied_rows(*self.gt_rows, draws)
        p, p_copy = _copied_rows(*self.pred_rows, draws)
        gt = GroundTruth(
            g_copy.astype(object), self.gt.starts[g], self.gt.ends[g], self.gt.labels[g],
            videos=np.arange(draws.size).astype(object),
        )
        preds = Predictions(
            p_copy.astype(object), self.preds.starts[p], self.preds.ends[p], self.preds.labels[p], self.preds.scores[p]
        )
        return gt, preds


def resampled(gt: GroundTruth, preds: Predictions, draws: np.ndarray) -> tuple[GroundTruth, Predictions]:
    """The set one replicate scores: copy j is video `gt.videos[draws[j]]` under the video id j
    (an int), with that video's instances and predictions in their file order."""
    return _Indexed.of(gt, preds).resample(np.asarray(draws, dtype=np.int64))


# -- scoring every resample ----------------------------------------------------------------------


@dataclass(frozen=True)
class _RankedClass:
    """A class whose ranking no tie can change: its predictions by descending score, once."""

    column: int  # index among the ground truth's classes
    video: np.ndarray  # [n] video index of each prediction
    hit: np.ndarray  # [h] the predictions that are a true positive at some tIoU
    tp: np.ndarray  # [T, h] 1 where that prediction is a true positive at that tIoU


@dataclass(frozen=True)
class _TiedClass:
    """A class with score ties between different outcomes, none inside a (class, video) group:
    matching is unchanged, but each resample is ranked anew by the reference's own sort."""

    column: int
    rows: tuple[np.ndarray, np.ndarray]  # its predictions grouped by video, file order kept; bounds
    scores: np.ndarray  # [n]
    tp: np.ndarray  # [T, n]


@dataclass(frozen=True)
class _Prepared:
    tious: np.ndarray  # [T]
    gt_counts: np.ndarray  # [V, C] instances per video and class
    ranked: list[_RankedClass]
    reranked: list[_TiedClass]
    rematched: dict[int, _Indexed]  # column -> that class's ground truth and predictions alone


def _outside_videos(gt: GroundTruth, preds: Predictions) -> None:
    outside = sorted(set(preds.video_ids.tolist()) - set(gt.videos.tolist()), key=str)
    if outside:
        listed = ", ".join(map(str, outside[:5]))
        raise ValueError(
            f"predictions on {len(outside)} videos outside the ground truth ({listed}): "
            "a bootstrap over test videos cannot resample them"
        )


def _tied_classes(
    p_class: np.ndarray, scores: np.ndarray, p_group: np.ndarray, tp: np.ndarray
) -> tuple[set[int], set[int]]:
    """Classes where the reference's tie order can change a resample's score: (ties between different
    outcomes only: the ranking changes, ties inside a (class, video) group: the matching may too)."""
    known = np.flatnonzero(p_class >= 0)
    order = known[np.lexsort((p_group[known], scores[known], p_class[known]))]
    c, s, g = p_class[order], scores[order], p_group[order]
    tie = (c[1:] == c[:-1]) & (s[1:] == s[:-1])
    other_outcome = (tp[:, order[1:]] != tp[:, order[:-1]]).any(axis=0)
    same_group = (g[1:] == g[:-1]) & (g[1:] >= 0)
    rematch = set(c[1:][tie & same_group].tolist())
    return set(c[1:][tie & other_outcome].tolist()) - rematch, rematch


def _prepare(gt: GroundTruth, preds: Predictions, tious: Sequence[float] | np.ndarray) -> _Prepared:
    """Per-prediction outcomes on the full set, as evaluate_detection computes them."""
    thresholds = _check_tious(tious)
    if len(gt) == 0:
        raise ValueError("ground truth has no instances")
    _outside_videos(gt, preds)
    classes = np.unique(gt.labels)
    video_index = {video: i for i, video in enumerate(gt.videos.tolist())}
    gt_video = _video_codes(gt.video_ids, video_index)
    gt_class = np.searchsorted(classes, gt.labels)
    p_video = _video_codes(preds.video_ids, video_index)
    p_class = np.searchsorted(classes, preds.labels).clip(max=classes.size - 1)
    p_class = np.where(classes[p_class] == preds.labels, p_class, -1)
    groups = _Groups.build(gt_class, gt_video, gt, len(video_index))
    p_group = np.where(p_class >= 0, groups.lookup(p_class, p_video), -1)
    slots, _ = _class_order(p_class, preds.scores, classes.size)
    tp = np.zeros((thresholds.size, len(preds)), dtype=np.int64)
    tp[:, slots] = _true_positives(slots, p_group, preds, groups, thresholds)

    gt_counts = np.zeros((len(video_index), classes.size), dtype=np.int64)
    np.add.at(gt_counts, (gt_video, gt_class), 1)
    rerank, rematch = _tied_classes(p_class, preds.scores, p_group, tp)
    ranked, reranked, rematched = [], [], {}
    for c in range(classes.size):
        idx = np.flatnonzero(p_class == c)
        if c in rematch:
            keep = gt_class == c
            alone = GroundTruth(gt.video_ids[keep], gt.starts[keep], gt.ends[keep], gt.labels[keep], videos=gt.videos)
            rematched[c] = _Indexed.of(alone, Predictions(*(col[idx] for col in _columns(preds))))
        elif c in rerank:
            rows = _rows_by_video(preds.video_ids[idx], gt.videos)
            reranked.append(_TiedClass(c, rows, preds.scores[idx], tp[:, idx]))
        else:
            idx = idx[np.argsort(-preds.scores[idx], kind="stable")]
            hit = np.flatnonzero(tp[:, idx].any(axis=0))
            ranked.append(_RankedClass(c, p_video[idx], hit, tp[:, idx[hit]]))
    return _Prepared(thresholds, gt_counts, ranked, reranked, rematched)


def _columns(preds: Predictions) -> tuple[np.ndarray, ...]:
    return preds.video_ids, preds.starts, preds.ends, preds.labels, preds.scores


def _multiplicities(draws: np.ndarray, n_videos: int) -> np.ndarray:
    """[B, V] how often each resample drew each video."""
    flat = (np.arange(draws.shape[0])[:, None] * n_videos + draws).ravel()
    return np.bincount(flat, minlength=draws.shape[0] * n_videos).reshape(draws.shape[0], n_videos)


def _segment_sums(flat: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """np.sum of each flat[start:start + length], bit for bit (see the module docstring)."""
    sums = np.zeros(start.size)
    for n in np.unique(length[length > 0]):
        rows = np.flatnonzero(length == n)
        sums[rows] = flat[start[rows, None] + np.arange(n)].sum(axis=1)
    return sums


def _ranked_ap(weights: np.ndarray, hit: np.ndarray, tp: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """AP [b, T] of one class in b resamples: ranked prediction i appears weights[:, i] times, in place.

    Copies of a prediction are consecutive true (or false) positives. Along a run of true positives
    precision only rises and along false positives it only falls, so the envelope (the best
    precision from a point on) is a maximum over the ends of the true positives' runs: only the
    predictions in `hit` (a true positive at some tIoU) are needed, with their ranks in `weights`.
    """
    b, n_tious = weights.shape[0], tp.shape[0]
    seen = np.cumsum(weights, axis=1)[:, None, hit]  # predictions ranked up to each hit
    copies = weights[:, None, hit] * tp[None]  # [b, T, h] true positives each hit adds
    hits = np.cumsum(copies, axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, hits / seen, 0.0)  # as the reference: tp_cum / (tp_cum + fp_cum)
    envelope = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    total = hits[..., -1].reshape(-1)
    npos_row = np.repeat(npos, n_tious).astype(np.float64)
    # each row's true positives in rank order: the m-th sits in the hit whose copies reach m
    at = np.repeat(np.arange(copies.size), copies.reshape(-1))
    row = at // hit.size
    m = np.arange(at.size) - np.repeat(np.cumsum(total) - total, total) + 1
    terms = (m / npos_row[row] - (m - 1) / npos_row[row]) * envelope.reshape(-1)[at]
    # recall short of 1 ends with one more step, at the appended precision 0
    length = total + (total < npos_row)
    start = np.cumsum(length) - length
    flat = np.zeros(int(length.sum()))
    flat[start[row] + m - 1] = terms
    return _segment_sums(flat, start, length).reshape(b, n_tious)


def _reranked_ap(cls: _TiedClass, draws: np.ndarray, npos: int) -> np.ndarray:
    """AP [T] of a tied class in one resample, ranked by the reference's sort of its score array."""
    rows, _ = _copied_rows(*cls.rows, draws)  # the resampled class in file order
    ranked = rows[_descending_exact(cls.scores[rows])]
    hit = np.flatnonzero(cls.tp[:, ranked].any(axis=0))
    if not hit.size:
        return np.zeros(cls.tp.shape[0])
    return _ranked_ap(np.ones((1, ranked.size), dtype=np.int64), hit, cls.tp[:, ranked[hit]], np.array([npos]))[0]


def _class_means(ap: np.ndarray, present: np.ndarray) -> np.ndarray:
    """mAP [B, T]: the mean over the classes a resample's ground truth holds, as the evaluator's."""
    if not present.any(axis=1).all():
        raise ValueError("a resample drew only videos without ground truth instances: too few annotated videos")
    masks, which = np.unique(present, axis=0, return_inverse=True)
    mAP = np.empty(ap.shape[:2])
    for k, mask in enumerate(masks):
        rows = np.flatnonzero(which.reshape(-1) == k)
        # contiguous rows, as the evaluator's ap[t]: a strided mean would sum in another order
        block = np.ascontiguousarray(ap[rows][:, :, mask]).reshape(-1, int(mask.sum()))
        mAP[rows] = block.mean(axis=1).reshape(rows.size, -1)
    return mAP


def _replicates(prep: _Prepared, draws: np.ndarray) -> np.ndarray:
    weights = _multiplicities(draws, prep.gt_counts.shape[0])
    npos = weights @ prep.gt_counts  # [B, C]
    ap = np.zeros((draws.shape[0], prep.tious.size, npos.shape[1]))
    for cls in (cls for cls in prep.ranked if cls.hit.size):  # a class without hits scores 0
        step = max(1, _CHUNK_ELEMENTS // (cls.video.size + prep.tious.size * cls.hit.size))
        for lo in range(0, draws.shape[0], step):
            chunk = slice(lo, lo + step)
            ap[chunk, :, cls.column] = _ranked_ap(weights[chunk][:, cls.video], cls.hit, cls.tp, npos[chunk, cls.column])
    for tied in prep.reranked:
        for r in np.flatnonzero(npos[:, tied.column] > 0):
            ap[r, :, tied.column] = _reranked_ap(tied, draws[r], npos[r, tied.column])
    for column, alone in prep.rematched.items():
        for r in np.flatnonzero(npos[:, column] > 0):
            ap[r, :, column] = evaluate_detection(*alone.resample(draws[r]), prep.tious).ap[:, 0]
    return _class_means(ap, npos > 0)


def replicate_mAP(
    gt: GroundTruth, preds: Predictions, tious: Sequence[float] | np.ndarray, draws: np.ndarray
) -> np.ndarray:
    """mAP [B, T] of each resample (a row of `draws`: indices into gt.videos), equal bit for bit to
    `evaluate_detection(*resampled(gt, preds, row), tious).mAP`."""
    draws = np.atleast_2d(np.asarray(draws, dtype=np.int64))
    if draws.size and (draws.min() < 0 or draws.max() >= gt.videos.size):
        raise ValueError(f"draws must index the {gt.videos.size} ground-truth videos")
    return _replicates(_prepare(gt, preds, tious), draws)


# -- intervals and verdicts ----------------------------------------------------------------------


MAP_RANGE = (0.0, 1.0)
# the defaults of every interval talbench reports (evaluate, the report, `talbench compare`)
RESAMPLES, SEED, LEVEL = 1000, 0, 0.95


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def basic_interval(replicates: np.ndarray, point: np.ndarray | float, level: float,
                   bounds: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """The basic (reverse-percentile) bootstrap interval over axis 0, within `bounds`: shape [..., 2].

    [2 point - q(1 - tail), 2 point - q(tail)]: the replicates' spread around their own centre,
    reflected around the point estimate. Resampled mAP runs above the full set's (AP is not an
    average over videos: by 1-2 points on the THUMOS twin, by 5 with 6 test videos), so a plain
    percentile interval would sit above its point estimate; the reflection removes that shift. A
    bias-corrected percentile interval (BC) does too, but collapses to a sliver when nearly every
    replicate lies on one side, as it does on the smallest test splits.
    """
    _check_level(level)
    tail = (1.0 - level) / 2.0
    low_q, high_q = np.quantile(np.asarray(replicates, dtype=np.float64), [tail, 1.0 - tail], axis=0)
    point = np.asarray(point, dtype=np.float64)
    return np.clip(np.stack([2.0 * point - high_q, 2.0 * point - low_q], axis=-1), *bounds)


def verdict(low: float, high: float) -> str:
    """'better' when the whole interval of A - B lies above 0, 'worse' below, else not distinguishable."""
    return "better" if low > 0 else "worse" if high < 0 else "not distinguishable"


@dataclass(frozen=True)
class Bootstrap:
    """Scores on the full test set and their bootstrap over test videos.

    AP is not an average over videos, and resampled mAP runs higher than the full set's (by 1 to 2
    points on the THUMOS twin, bench/bench_bootstrap.py): intervals are basic bootstrap intervals (basic_interval).
    """

    tious: np.ndarray  # [T]
    mAP: np.ndarray  # [T] on the full set
    average_mAP: float
    replicate_mAP: np.ndarray  # [B, T]
    replicate_average: np.ndarray  # [B]
    mAP_interval: np.ndarray  # [T, 2]
    interval: tuple[float, float]  # of average mAP
    level: float
    seed: int
    videos: tuple  # the ids of the resampled test videos, in draw-index order


def _bootstrap(
    gt: GroundTruth, preds: Predictions, tious: Sequence[float] | np.ndarray, draws: np.ndarray, seed: int, level: float
) -> Bootstrap:
    full = evaluate_detection(gt, preds, tious)
    reps = _replicates(_prepare(gt, preds, full.tious), draws)
    average = reps.mean(axis=1)  # as the evaluator: the mean of a resample's mAP over tIoUs
    low, high = basic_interval(average, full.average_mAP, level, MAP_RANGE)
    return Bootstrap(
        tious=full.tious, mAP=full.mAP, average_mAP=full.average_mAP, replicate_mAP=reps,
        replicate_average=average, mAP_interval=basic_interval(reps, full.mAP, level, MAP_RANGE),
        interval=(float(low), float(high)), level=level, seed=seed, videos=tuple(gt.videos.tolist()),
    )


def bootstrap(
    gt: GroundTruth, preds: Predictions, tious: Sequence[float] | np.ndarray,
    *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
) -> Bootstrap:
    """Basic bootstrap intervals of average mAP and each tIoU's mAP over `resamples` resamples of the test videos."""
    _check_level(level)
    return _bootstrap(gt, preds, tious, draw_videos(gt.videos.size, resamples, seed), seed, level)


@dataclass(frozen=True)
class Comparison:
    """A paired bootstrap of A against B on the same video resamples."""

    a: Bootstrap
    b: Bootstrap
    difference: float  # average mAP of A minus B on the full set
    replicate_difference: np.ndarray  # [B]
    interval: tuple[float, float]
    verdict: str  # A relative to B: "better", "worse" or "not distinguishable"


def _instances(gt: GroundTruth) -> dict:
    rows: dict = {video: [] for video in gt.videos.tolist()}
    for video, start, end, label in zip(gt.video_ids.tolist(), gt.starts.tolist(), gt.ends.tolist(), gt.labels.tolist()):
        rows[video].append((start, end, label))
    return {video: sorted(instances) for video, instances in rows.items()}


def _aligned(gt_a: GroundTruth, gt_b: GroundTruth) -> np.ndarray:
    """Index in gt_b of each video of gt_a; refuses unless both hold the same videos and instances."""
    videos_a, videos_b = gt_a.videos.tolist(), gt_b.videos.tolist()
    only_a, only_b = set(videos_a) - set(videos_b), set(videos_b) - set(videos_a)
    if only_a or only_b:
        example = sorted(only_a or only_b, key=str)[0]
        raise ValueError(
            f"A and B are not scored on the same videos: {len(only_a)} only in A's ground truth, "
            f"{len(only_b)} only in B's (e.g. {example})"
        )
    instances_a, instances_b = _instances(gt_a), _instances(gt_b)
    differing = next((v for v in videos_a if instances_a[v] != instances_b[v]), None)
    if differing is not None:
        raise ValueError(
            f"A and B are not scored on the same ground truth: video {differing} has "
            f"{len(instances_a[differing])} instances for A, {len(instances_b[differing])} for B, or other segments"
        )
    index_b = {video: i for i, video in enumerate(videos_b)}
    return np.array([index_b[video] for video in videos_a], dtype=np.int64)


def paired_bootstrap(
    gt_a: GroundTruth, preds_a: Predictions | Sequence[Predictions], gt_b: GroundTruth,
    preds_b: Predictions | Sequence[Predictions], tious: Sequence[float] | np.ndarray,
    *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
) -> Comparison:
    """mAP(A) - mAP(B) (average mAP) over the same video resamples for both, its interval and verdict.

    A side given as several prediction sets (one per training seed) is its seed mean (seed_mean).
    Refuses (ValueError) unless A and B are scored on the same videos and ground truth.
    """
    _check_level(level)
    to_b = _aligned(gt_a, gt_b)
    draws = draw_videos(gt_a.videos.size, resamples, seed)
    a = seed_mean([_bootstrap(gt_a, p, tious, draws, seed, level) for p in _per_seed(preds_a)])
    b = seed_mean([_bootstrap(gt_b, p, tious, to_b[draws], seed, level) for p in _per_seed(preds_b)])
    return _compare(a, b, level)


def seed_mean_bootstrap(
    gt: GroundTruth, preds: Predictions | Sequence[Predictions], tious: Sequence[float] | np.ndarray,
    *, resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
) -> Bootstrap:
    """The bootstrap of one side of paired_bootstrap (its seed mean), to compare it with several others
    (compare_bootstraps) without resampling it again for each."""
    _check_level(level)
    draws = draw_videos(gt.videos.size, resamples, seed)
    return seed_mean([_bootstrap(gt, p, tious, draws, seed, level) for p in _per_seed(preds)])


def compare_bootstraps(a: Bootstrap, b: Bootstrap) -> Comparison:
    """paired_bootstrap's result from the two sides' seed_mean_bootstrap, made on the same videos in the
    same order with the same resamples and bootstrap seed: replicate b of each is the same resample."""
    if (a.videos, a.seed, a.level) != (b.videos, b.seed, b.level) or a.replicate_average.shape != b.replicate_average.shape:
        raise ValueError("A and B must be bootstrapped on the same videos, in the same order, with the same "
                         "resamples, bootstrap seed and level")
    return _compare(a, b, a.level)


def _compare(a: Bootstrap, b: Bootstrap, level: float) -> Comparison:
    difference = a.replicate_average - b.replicate_average
    point = a.average_mAP - b.average_mAP
    low, high = (float(x) for x in basic_interval(difference, point, level))
    return Comparison(a, b, point, difference, (low, high), verdict(low, high))


def _per_seed(preds: Predictions | Sequence[Predictions]) -> list[Predictions]:
    return [preds] if isinstance(preds, Predictions) else list(preds)


# -- seeds ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedSummary:
    """Training seeds combined. `std` is None for a single seed: its spread is unmeasured."""

    n: int
    mean: float  # average mAP, mean over seeds
    std: float | None  # ddof=1
    interval: tuple[float, float]  # of the seed mean, from replicate-wise means over seeds
    mAP_mean: np.ndarray  # [T]
    mAP_std: np.ndarray | None  # [T]
    mAP_interval: np.ndarray  # [T, 2]
    level: float


def seed_mean(results: Sequence[Bootstrap]) -> Bootstrap:
    """Several training seeds' bootstraps as one: the mean over seeds of every score and replicate,
    with basic intervals that cover test-video sampling of the seed mean.

    Replicate b of every seed must be the same video resample (same videos, tIoUs, resamples,
    bootstrap seed and level): the mean over seeds of replicate b is then the seed mean's replicate.
    """
    if not results:
        raise ValueError("no seeds to combine")
    first = results[0]
    for other in results[1:]:
        if (other.videos, other.seed, other.level) != (first.videos, first.seed, first.level) or not (
            np.array_equal(other.tious, first.tious) and other.replicate_mAP.shape == first.replicate_mAP.shape
        ):
            raise ValueError(
                "seeds must be bootstrapped on the same videos, tIoUs, number of resamples, bootstrap seed "
                "and level, so that replicate b of each seed is the same video resample"
            )
    if len(results) == 1:
        return first
    mAP = np.mean([r.mAP for r in results], axis=0)
    average = float(np.mean([r.average_mAP for r in results]))
    replicates = np.mean([r.replicate_mAP for r in results], axis=0)
    replicate_average = np.mean([r.replicate_average for r in results], axis=0)
    low, high = basic_interval(replicate_average, average, first.level, MAP_RANGE)
    return Bootstrap(
        tious=first.tious, mAP=mAP, average_mAP=average, replicate_mAP=replicates, replicate_average=replicate_average,
        mAP_interval=basic_interval(replicates, mAP, first.level, MAP_RANGE), interval=(float(low), float(high)),
        level=first.level, seed=first.seed, videos=first.videos,
    )


def combine_seeds(results: Sequence[Bootstrap]) -> SeedSummary:
    """Mean and standard deviation over seeds, and the (basic bootstrap) interval of the seed mean
    (see seed_mean). The interval covers test-video sampling; `std` is the seed-to-seed spread."""
    mean = seed_mean(results)
    n = len(results)
    points = np.array([r.average_mAP for r in results])
    per_tiou = np.stack([r.mAP for r in results])
    return SeedSummary(
        n=n, mean=mean.average_mAP, std=float(points.std(ddof=1)) if n > 1 else None, interval=mean.interval,
        mAP_mean=mean.mAP, mAP_std=per_tiou.std(axis=0, ddof=1) if n > 1 else None,
        mAP_interval=mean.mAP_interval, level=mean.level,
    )


def format_seeds(summary: SeedSummary) -> str:
    """One line for a report: '45.10 ± 1.20 (n=3 seeds), 95% interval [..]', a single seed said so."""
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    spread = f" ± {pct(summary.std)} (n={summary.n} seeds)" if summary.std is not None else " (single seed, spread unmeasured)"
    low, high = summary.interval
    return f"{pct(summary.mean)}{spread}, {100 * summary.level:g}% interval [{pct(low)}, {pct(high)}]"


# -- reporting a comparison ----------------------------------------------------------------------


def format_comparison(result: Comparison, name_a: str, name_b: str) -> str:
    """A short table: average mAP of A and B with intervals, A - B with its interval, the verdict."""
    pct = lambda v: f"{100 * v:6.2f}"  # noqa: E731
    span = lambda low, high: f"[{pct(low)}, {pct(high)}]"  # noqa: E731
    level = f"{100 * result.a.level:g}%"
    rows = [
        ("A", pct(result.a.average_mAP), span(*result.a.interval), name_a),
        ("B", pct(result.b.average_mAP), span(*result.b.interval), name_b),
        ("A - B", pct(result.difference), span(*result.interval), ""),
    ]
    says = {
        "better": f"A is better than B (the whole {level} interval of A - B is above 0)",
        "worse": f"A is worse than B (the whole {level} interval of A - B is below 0)",
        "not distinguishable": f"not distinguishable at the {level} level (the interval of A - B contains 0)",
    }[result.verdict]
    head = (
        f"paired bootstrap over {len(result.a.videos)} test videos, {result.replicate_difference.size} resamples "
        f"(seed {result.a.seed}), tIoU {', '.join(_threshold_keys(result.a.tious))}"
    )
    table = [f"{'':6}  {'avg mAP':>7}  {level + ' interval':>16}"]
    table += [f"{name:6}  {value:>7}  {interval:>16}  {label}".rstrip() for name, value, interval, label in rows]
    return "\n".join([head, *table, f"verdict: {says}"])


def interval_record(result: Bootstrap) -> dict:
    """The intervals of one scored set, for scores.json and MLflow: average mAP and each tIoU's mAP."""
    keys = _threshold_keys(result.tious)
    return {"level": result.level, "resamples": int(result.replicate_average.size), "seed": result.seed,
            "average_mAP": list(result.interval),
            "mAP": {f"mAP@{k}": [float(low), float(high)] for k, (low, high) in zip(keys, result.mAP_interval)}}


def seed_scores(per_seed: Sequence[tuple[int, dict, Bootstrap]]) -> dict:
    """scores.json over training seeds, from (seed, `talbench score` dict, its bootstrap) per seed.

    The top level reads like one scored set: mAP, average mAP, recall and AP per class are means
    over seeds (counts are the first seed's), `interval` is the seed mean's (seed_mean). Added:
    `seeds`, `std` (ddof=1 over seeds, null for a single seed: unmeasured) and `per_seed`, each
    seed's own scores and interval.
    """
    if not per_seed:
        raise ValueError("no seeds to combine")
    seeds = [seed for seed, _, _ in per_seed]
    scores = [s for _, s, _ in per_seed]
    summary = combine_seeds([b for _, _, b in per_seed])
    keys = _threshold_keys(per_seed[0][2].tious)
    mean = lambda values: float(np.mean(values))  # noqa: E731
    combined = {
        **scores[0],
        "mAP": {k: mean([s["mAP"][k] for s in scores]) for k in scores[0]["mAP"]},
        "average_mAP": summary.mean,
        "recall": {k: mean([s["recall"][k] for s in scores]) for k in scores[0]["recall"]},
        "AP_per_class": {c: {k: mean([s["AP_per_class"][c][k] for s in scores]) for k in aps}
                         for c, aps in scores[0]["AP_per_class"].items()},
        "interval": interval_record(seed_mean([b for _, _, b in per_seed])),
        "seeds": seeds,
        "std": None if summary.std is None else {
            "average_mAP": summary.std, "mAP": {f"mAP@{k}": float(v) for k, v in zip(keys, summary.mAP_std)}},
        "per_seed": {str(seed): {**s, "interval": interval_record(b)} for seed, s, b in per_seed},
    }
    return combined


def _bootstrap_dict(result: Bootstrap) -> dict:
    return {
        "average_mAP": result.average_mAP,
        "interval": list(result.interval),
        "mAP": {
            f"mAP@{key}": {"value": float(value), "interval": [float(x) for x in span]}
            for key, value, span in zip(_threshold_keys(result.tious), result.mAP, result.mAP_interval)
        },
    }


def comparison_to_dict(result: Comparison, name_a: str, name_b: str) -> dict:
    """JSON-ready: both bootstraps, the difference with its interval, the verdict and the settings."""
    return {
        "videos": len(result.a.videos),
        "resamples": int(result.replicate_difference.size),
        "seed": result.a.seed,
        "level": result.a.level,
        "tious": [float(t) for t in result.a.tious],
        "A": {"predictions": name_a, **_bootstrap_dict(result.a)},
        "B": {"predictions": name_b, **_bootstrap_dict(result.b)},
        "difference": {"average_mAP": result.difference, "interval": list(result.interval)},
        "verdict": result.verdict,
    }
