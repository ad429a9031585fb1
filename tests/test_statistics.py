"""Bootstrap intervals over test videos, paired comparisons and seeds: cases whose answer is known,
replicates checked bit for bit against the evaluator, and `talbench compare` as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from talbench.eval.detection import GroundTruth, Predictions, evaluate_detection
from talbench.eval.statistics import (
    _prepare,
    basic_interval,
    bootstrap,
    combine_seeds,
    compare_bootstraps,
    draw_videos,
    format_seeds,
    paired_bootstrap,
    replicate_mAP,
    resampled,
    seed_mean,
    seed_mean_bootstrap,
    seed_scores,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]
TIOUS = np.array([0.3, 0.5, 0.7])


def _gt(rng: np.random.Generator, n_videos: int, n_classes: int = 4) -> GroundTruth:
    """2-6 instances per video inside [0, 100] s, of 1-2 classes per video."""
    ids, starts, lengths, labels = [], [], [], []
    for v in range(n_videos):
        n = int(rng.integers(2, 7))
        ids += [f"video_{v:03d}"] * n
        starts += list(rng.uniform(0, 90, n))
        lengths += list(rng.uniform(2, 10, n))
        labels += list(rng.choice(rng.choice(n_classes, 2, replace=False), n))
    starts = np.array(starts)
    return GroundTruth(np.array(ids, dtype=object), starts, starts + np.array(lengths), np.array(labels))


def _predictions(gt: GroundTruth, rng: np.random.Generator, jitter: float, far_misses: int = 3) -> Predictions:
    """A jittered hit on every instance, plus per video `far_misses` detections beyond 200 s (no
    instance lies there: never a true positive). Scores are continuous: no ties."""
    length = gt.ends - gt.starts
    hit_start = gt.starts + rng.normal(0, jitter, len(gt)) * length
    hit_end = np.maximum(gt.ends + rng.normal(0, jitter, len(gt)) * length, hit_start)
    videos = np.repeat(gt.videos, far_misses)
    miss_start = rng.uniform(200, 300, videos.size)
    n_classes = int(gt.labels.max()) + 1
    return Predictions(
        np.concatenate([gt.video_ids, videos]),
        np.concatenate([hit_start, miss_start]),
        np.concatenate([hit_end, miss_start + 5]),
        np.concatenate([gt.labels, rng.integers(0, n_classes, videos.size)]),
        rng.random(len(gt) + videos.size),
    )


def _columns(preds: Predictions) -> tuple[np.ndarray, ...]:
    return preds.video_ids, preds.starts, preds.ends, preds.labels, preds.scores


def _subset(preds: Predictions, keep: np.ndarray) -> Predictions:
    return Predictions(*(column[keep] for column in _columns(preds)))


def _concat(*sets: Predictions) -> Predictions:
    return Predictions(*(np.concatenate(columns) for columns in zip(*map(_columns, sets))))


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(11)
    gt = _gt(rng, 30)
    return gt, _predictions(gt, rng, jitter=0.15)


# -- replicates are the evaluator's ----------------------------------------------------------------


def test_a_video_drawn_twice_counts_twice_by_hand():
    # video a: its instance found (score 0.9); b: a miss scored above it (0.95), its instance not
    # found; c: an instance, no detection. One class, tIoU 0.5.
    gt = GroundTruth(np.array(["a", "b", "c"], dtype=object), [0.0, 0.0, 0.0], [10.0, 10.0, 10.0], [0, 0, 0])
    preds = Predictions(np.array(["a", "b"], dtype=object), [0.0, 50.0], [10.0, 60.0], [0, 0], [0.9, 0.95])
    full, twice_a = replicate_mAP(gt, preds, [0.5], np.array([[0, 1, 2], [0, 0, 1]]))[:, 0]
    assert full == pytest.approx(1 / 3 * 1 / 2)  # recall 1/3 at precision 1/2
    # a, a, b: the miss, then a's hit twice: precision 1/2 then 2/3 (the envelope 2/3 for both hits)
    assert twice_a == pytest.approx(1 / 3 * 2 / 3 + 1 / 3 * 2 / 3)
    duplicated_gt = GroundTruth(np.array(["a#1", "a#2", "b"], dtype=object), [0.0] * 3, [10.0] * 3, [0, 0, 0])
    duplicated = Predictions(
        np.array(["a#1", "a#2", "b"], dtype=object), [0.0, 0.0, 50.0], [10.0, 10.0, 60.0], [0, 0, 0], [0.9, 0.9, 0.95]
    )
    assert twice_a == evaluate_detection(duplicated_gt, duplicated, [0.5]).mAP[0]


def _with_ties(gt: GroundTruth, preds: Predictions, kind: str, rng: np.random.Generator) -> Predictions:
    """Scores that tie: 'coarse' (one decimal: ties everywhere, also inside a video's class) or
    'across' (ties between videos only: unique inside a video)."""
    if kind == "coarse":
        scores = np.round(preds.scores, 1)
    else:
        position = np.zeros(len(preds))
        for video in gt.videos:
            mine = preds.video_ids == video
            position[mine] = np.arange(mine.sum())
        scores = rng.integers(0, 2, len(preds)) + 1e-3 * position
    return Predictions(preds.video_ids, preds.starts, preds.ends, preds.labels, scores)


@pytest.mark.parametrize("ties", ["none", "across", "coarse"])
def test_replicates_equal_the_evaluator_on_resampled_sets_bit_for_bit(ties):
    rng = np.random.default_rng(5)
    gt = _gt(rng, 16, n_classes=10)  # over 8 classes: the class mean's summation order shows
    preds = _predictions(gt, rng, jitter=0.3, far_misses=6)
    # misses near the instances too, so ties fall between hits and misses of one video and class
    near = _predictions(gt, rng, jitter=0.8, far_misses=0)
    both = _concat(preds, near)
    if ties != "none":
        both = _with_ties(gt, both, ties, rng)
    prep = _prepare(gt, both, TIOUS)
    # each path of the fast scorer is exercised by its case
    exercised = {
        "none": not prep.reranked and not prep.rematched,  # no tie matters: all at once
        "across": prep.reranked and not prep.rematched,  # ranked anew per resample
        "coarse": prep.rematched,  # matched anew per resample
    }
    assert exercised[ties]
    draws = draw_videos(gt.videos.size, 25, seed=1)
    fast = replicate_mAP(gt, both, TIOUS, draws)
    exact = np.array([evaluate_detection(*resampled(gt, both, row), TIOUS).mAP for row in draws])
    assert np.array_equal(fast, exact)


def test_replicates_with_long_recall_curves_equal_the_evaluator(case):
    # 22-50 instances per class, many missed at tIoU 0.5 and 0.7: AP sums run past 8-way pairwise blocks
    gt, _ = case
    sloppy = _predictions(gt, np.random.default_rng(4), jitter=0.3, far_misses=10)
    draws = draw_videos(gt.videos.size, 10, seed=2)
    exact = np.array([evaluate_detection(*resampled(gt, sloppy, row), TIOUS).mAP for row in draws])
    assert np.array_equal(replicate_mAP(gt, sloppy, TIOUS, draws), exact)


def test_resampled_copies_are_distinct_videos(case):
    gt, preds = case
    draws = np.array([3, 3, 3, 0])
    rgt, rpreds = resampled(gt, preds, draws)
    assert rgt.videos.tolist() == [0, 1, 2, 3]
    mine = gt.video_ids == gt.videos[3]
    assert len(rgt) == 3 * mine.sum() + (gt.video_ids == gt.videos[0]).sum()
    assert np.array_equal(rgt.starts[rgt.video_ids == 1], gt.starts[mine])
    assert np.array_equal(rpreds.scores[rpreds.video_ids == 2], preds.scores[preds.video_ids == gt.videos[3]])


# -- one prediction set ---------------------------------------------------------------------------


def test_bootstrap_is_reproducible_from_its_seed(case):
    gt, preds = case
    one, again, other = (bootstrap(gt, preds, TIOUS, resamples=200, seed=s) for s in (7, 7, 8))
    assert np.array_equal(one.replicate_mAP, again.replicate_mAP) and one.interval == again.interval
    assert np.array_equal(one.mAP_interval, again.mAP_interval)
    assert not np.array_equal(one.replicate_mAP, other.replicate_mAP)


def test_interval_contains_the_point_estimate_of_the_full_set(case):
    gt, preds = case
    result = bootstrap(gt, preds, TIOUS, resamples=500, seed=0)
    full = evaluate_detection(gt, preds, TIOUS)
    assert result.average_mAP == full.average_mAP and np.array_equal(result.mAP, full.mAP)
    low, high = result.interval
    assert low < result.average_mAP < high
    assert ((result.mAP_interval[:, 0] <= result.mAP) & (result.mAP <= result.mAP_interval[:, 1])).all()
    assert result.replicate_mAP.shape == (500, TIOUS.size) and result.replicate_average.shape == (500,)


def test_a_wider_level_gives_a_wider_interval(case):
    gt, preds = case
    narrow, wide = (bootstrap(gt, preds, TIOUS, resamples=300, level=level).interval for level in (0.8, 0.99))
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    with pytest.raises(ValueError, match="level"):
        bootstrap(gt, preds, TIOUS, level=1.0)


def test_predictions_outside_the_test_videos_are_refused(case):
    gt, preds = case
    stray = Predictions(np.array(["elsewhere"], dtype=object), [1.0], [2.0], [0], [0.5])
    with pytest.raises(ValueError, match="1 videos outside the ground truth \\(elsewhere\\)"):
        bootstrap(gt, _concat(preds, stray), TIOUS, resamples=10)


# -- paired comparisons ---------------------------------------------------------------------------


def test_identical_predictions_differ_by_exactly_zero(case):
    gt, preds = case
    result = paired_bootstrap(gt, preds, gt, _subset(preds, np.arange(len(preds))), TIOUS, resamples=300)
    assert result.difference == 0.0 and not result.replicate_difference.any()
    assert result.interval == (0.0, 0.0) and result.verdict == "not distinguishable"


def test_comparing_shared_bootstraps_equals_the_paired_bootstrap(case):
    """The report resamples each experiment once and compares the bootstraps: the same result, bit for bit."""
    gt, preds = case
    misses = _subset(preds, np.arange(len(gt), len(preds)))
    sides = [preds, [misses, preds]]  # one seed against the mean of two
    direct = paired_bootstrap(gt, sides[0], gt, sides[1], TIOUS, resamples=200, seed=5)
    a, b = (seed_mean_bootstrap(gt, side, TIOUS, resamples=200, seed=5) for side in sides)
    shared = compare_bootstraps(a, b)
    assert shared.difference == direct.difference and shared.interval == direct.interval
    assert np.array_equal(shared.replicate_difference, direct.replicate_difference) and shared.verdict == direct.verdict
    with pytest.raises(ValueError, match="same videos"):
        compare_bootstraps(a, seed_mean_bootstrap(gt, preds, TIOUS, resamples=200, seed=6))


def test_removing_the_true_positives_is_clearly_worse(case):
    gt, preds = case
    misses = _subset(preds, np.arange(len(gt), len(preds)))  # only the detections beyond 200 s
    better = paired_bootstrap(gt, preds, gt, misses, TIOUS, resamples=300, seed=3)
    assert better.b.average_mAP == 0.0 and not better.b.replicate_mAP.any()
    assert better.interval[0] > 0 and better.verdict == "better"
    worse = paired_bootstrap(gt, misses, gt, preds, TIOUS, resamples=300, seed=3)
    assert worse.interval[1] < 0 and worse.verdict == "worse"
    assert np.array_equal(worse.replicate_difference, -better.replicate_difference)


def test_a_sloppier_prediction_set_is_worse_on_the_same_resamples(case):
    gt, preds = case
    sloppy = _predictions(gt, np.random.default_rng(2), jitter=0.45)
    result = paired_bootstrap(gt, preds, gt, sloppy, TIOUS, resamples=300, seed=0)
    alone = bootstrap(gt, preds, TIOUS, resamples=300, seed=0)
    assert np.array_equal(result.a.replicate_average, alone.replicate_average)  # the same resamples
    assert result.difference > 0 and result.verdict == "better"


@pytest.mark.parametrize(
    "interval,expected",
    [((0.01, 0.2), "better"), ((-0.2, -0.01), "worse"), ((-0.1, 0.1), "not distinguishable"), ((0.0, 0.3), "not distinguishable")],
)
def test_verdict_needs_the_whole_interval_on_one_side(interval, expected):
    assert verdict(*interval) == expected


def test_the_same_ground_truth_in_another_order_is_accepted(case):
    gt, preds = case
    order = np.argsort(gt.video_ids.astype(str), kind="stable")[::-1]
    reordered = GroundTruth(gt.video_ids[order], gt.starts[order], gt.ends[order], gt.labels[order])
    result = paired_bootstrap(gt, preds, reordered, preds, TIOUS, resamples=100)
    assert not result.replicate_difference.any()


def test_different_videos_or_ground_truth_are_refused(case):
    gt, preds = case
    fewer = gt.video_ids != gt.videos[0]
    without_one = GroundTruth(gt.video_ids[fewer], gt.starts[fewer], gt.ends[fewer], gt.labels[fewer])
    with pytest.raises(ValueError, match="not scored on the same videos: 1 only in A's ground truth"):
        paired_bootstrap(gt, preds, without_one, _subset(preds, preds.video_ids != gt.videos[0]), TIOUS, resamples=10)
    moved = GroundTruth(gt.video_ids, gt.starts + (np.arange(len(gt)) == 4), gt.ends + (np.arange(len(gt)) == 4), gt.labels)
    with pytest.raises(ValueError, match=f"not scored on the same ground truth: video {gt.video_ids[4]}"):
        paired_bootstrap(gt, preds, moved, preds, TIOUS, resamples=10)


# -- seeds ----------------------------------------------------------------------------------------


def test_seeds_combine_into_mean_std_and_the_interval_of_the_seed_mean(case):
    gt, _ = case
    runs = [bootstrap(gt, _predictions(gt, np.random.default_rng(s), jitter=0.2), TIOUS, resamples=200, seed=9) for s in range(3)]
    summary = combine_seeds(runs)
    points = [r.average_mAP for r in runs]
    assert summary.n == 3 and summary.mean == pytest.approx(np.mean(points))
    assert summary.std == pytest.approx(np.std(points, ddof=1)) and summary.std > 0
    pooled = np.mean([r.replicate_average for r in runs], axis=0)
    assert summary.interval == tuple(basic_interval(pooled, np.mean(points), 0.95, (0.0, 1.0)))
    assert summary.mAP_std.shape == (TIOUS.size,) and summary.mAP_interval.shape == (TIOUS.size, 2)
    assert "(n=3 seeds)" in format_seeds(summary)


def test_a_single_seed_is_labelled_as_such(case):
    gt, preds = case
    run = bootstrap(gt, preds, TIOUS, resamples=200, seed=9)
    summary = combine_seeds([run])
    assert summary.n == 1 and summary.std is None and summary.mAP_std is None
    assert summary.mean == run.average_mAP and summary.interval == run.interval
    assert "single seed" in format_seeds(summary) and "±" not in format_seeds(summary)


def test_seeds_on_other_resamples_are_refused(case):
    gt, preds = case
    runs = [bootstrap(gt, preds, TIOUS, resamples=50, seed=s) for s in (0, 1)]
    with pytest.raises(ValueError, match="same video resample"):
        combine_seeds(runs)


def test_the_seed_mean_is_a_bootstrap_of_the_mean_of_the_seeds(case):
    gt, _ = case
    runs = [bootstrap(gt, _predictions(gt, np.random.default_rng(s), jitter=0.2), TIOUS, resamples=200, seed=9) for s in range(3)]
    mean = seed_mean(runs)
    assert mean.average_mAP == pytest.approx(np.mean([r.average_mAP for r in runs]), abs=1e-15)
    assert np.allclose(mean.replicate_mAP, np.mean([r.replicate_mAP for r in runs], axis=0), rtol=0, atol=1e-15)
    assert np.allclose(mean.mAP, np.mean([r.mAP for r in runs], axis=0), rtol=0, atol=1e-15)
    assert mean.interval == combine_seeds(runs).interval and seed_mean(runs[:1]) is runs[0]


def test_paired_comparison_of_seed_means(case):
    """Seed sets against themselves: difference 0; a set of seeds each strictly better: interval above 0."""
    gt, _ = case
    seeds = [_predictions(gt, np.random.default_rng(s), jitter=0.3) for s in range(3)]
    same = paired_bootstrap(gt, seeds, gt, seeds, TIOUS, resamples=200)
    assert same.difference == 0.0 and same.interval == (0.0, 0.0) and same.verdict == "not distinguishable"
    tight = [_predictions(gt, np.random.default_rng(10 + s), jitter=0.02) for s in range(3)]
    better = paired_bootstrap(gt, tight, gt, seeds, TIOUS, resamples=200)
    assert better.verdict == "better" and better.interval[0] > 0
    runs = [bootstrap(gt, p, TIOUS, resamples=200) for p in tight]
    assert better.a.average_mAP == pytest.approx(np.mean([r.average_mAP for r in runs]), abs=1e-15)
    assert np.array_equal(better.a.replicate_average, seed_mean(runs).replicate_average)


def test_seed_scores_read_like_one_scored_set_with_the_spread_beside(case):
    gt, _ = case
    labels = {c: f"class_{c}" for c in range(4)}
    from talbench.eval.detection import result_to_dict

    per_seed = []
    for seed in (4, 7):
        preds = _predictions(gt, np.random.default_rng(seed), jitter=0.2)
        per_seed.append((seed, result_to_dict(evaluate_detection(gt, preds, TIOUS), labels), bootstrap(gt, preds, TIOUS, resamples=100)))
    scores = seed_scores(per_seed)
    (_, a, run_a), (_, b, run_b) = per_seed
    assert scores["seeds"] == [4, 7] and sorted(scores["per_seed"]) == ["4", "7"]
    assert scores["average_mAP"] == pytest.approx((a["average_mAP"] + b["average_mAP"]) / 2, abs=1e-15)
    assert scores["mAP"]["mAP@0.50"] == pytest.approx((a["mAP"]["mAP@0.50"] + b["mAP"]["mAP@0.50"]) / 2, abs=1e-15)
    assert scores["std"]["average_mAP"] == pytest.approx(np.std([a["average_mAP"], b["average_mAP"]], ddof=1), abs=1e-15)
    assert scores["per_seed"]["7"]["interval"]["average_mAP"] == list(run_b.interval)
    assert scores["interval"]["average_mAP"] == list(seed_mean([run_a, run_b]).interval)
    single = seed_scores(per_seed[:1])
    assert single["std"] is None and single["average_mAP"] == a["average_mAP"] and single["interval"]["average_mAP"] == list(run_a.interval)


# -- talbench compare -----------------------------------------------------------------------------


def _write_case(tmp_path: Path, case) -> dict[str, Path]:
    gt, preds = case
    names = {c: f"class_{c}" for c in range(4)}
    database = {video: {"subset": "test", "duration": 320.0, "fps": 30.0, "annotations": []} for video in gt.videos}
    train = [{"label": "class_0", "label_id": 0, "segment": [1.0, 4.0]}]
    database["train_video"] = {"subset": "training", "duration": 50.0, "fps": 30.0, "annotations": train}
    for video, start, end, label in zip(gt.video_ids, gt.starts, gt.ends, gt.labels):
        database[video]["annotations"].append({"label": names[label], "label_id": int(label), "segment": [start, end]})

    def results(p: Predictions) -> dict:
        out = {video: [] for video in gt.videos}
        for video, start, end, label, score in zip(p.video_ids, p.starts, p.ends, p.labels, p.scores):
            out[video].append({"label": names[label], "score": score, "segment": [start, end]})
        return {"results": out}

    paths = {name: tmp_path / f"{name}.json" for name in ("gt", "a", "b")}
    paths["gt"].write_text(json.dumps({"database": database}))
    paths["a"].write_text(json.dumps(results(preds)))
    paths["b"].write_text(json.dumps(results(_subset(preds, np.arange(len(gt), len(preds))))))
    return paths


def _compare(*args):
    command = [sys.executable, "-m", "talbench.cli", "compare", *map(str, args)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_compare_prints_the_table_and_writes_json(tmp_path, case):
    paths = _write_case(tmp_path, case)
    out = tmp_path / "comparison.json"
    run = _compare(paths["a"], paths["b"], "--gt", paths["gt"], "--tious", "0.3:0.7:3", "--resamples", "300", "--out", out)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("paired bootstrap over 30 test videos, 300 resamples (seed 0)")
    assert lines[2].split()[0] == "A" and str(paths["a"]) in lines[2] and lines[4].startswith("A - B")
    assert lines[-1] == "verdict: A is better than B (the whole 95% interval of A - B is above 0)"
    saved = json.loads(out.read_text())
    assert saved["verdict"] == "better" and saved["resamples"] == 300 and saved["difference"]["interval"][0] > 0
    assert saved["B"]["average_mAP"] == 0.0 and list(saved["A"]["mAP"]) == ["mAP@0.30", "mAP@0.50", "mAP@0.70"]

    same = _compare(paths["a"], paths["a"], "--gt", paths["gt"], "--tious", "0.5", "--resamples", "100")
    assert same.returncode == 0 and same.stdout.splitlines()[-1].startswith("verdict: not distinguishable at the 95% level")


def test_compare_takes_folders_of_seeds_as_their_seed_mean(tmp_path, case):
    """outputs/<experiment>/predictions holds one file per seed: a folder is compared by its seed mean."""
    paths = _write_case(tmp_path, case)
    seeds_a, seeds_b = tmp_path / "a-seeds", tmp_path / "b-seeds"
    for folder, source in ((seeds_a, paths["a"]), (seeds_b, paths["b"])):
        folder.mkdir()
        results = json.loads(source.read_text())["results"]
        for seed in (0, 1):  # the second seed drops each video's last detection: a different set
            kept = results if seed == 0 else {v: rows[:-1] for v, rows in results.items()}
            (folder / f"seed-{seed}.json").write_text(json.dumps({"results": kept}))
    out = tmp_path / "comparison.json"
    run = _compare(seeds_a, seeds_b, "--gt", paths["gt"], "--tious", "0.5", "--resamples", "200", "--out", out)
    assert run.returncode == 0, run.stderr
    saved = json.loads(out.read_text())
    single = [json.loads(_compare(seeds_a / f"seed-{s}.json", paths["b"], "--gt", paths["gt"], "--tious", "0.5",
                                  "--resamples", "200", "--out", tmp_path / f"s{s}.json").stdout and (tmp_path / f"s{s}.json").read_text())
              for s in (0, 1)]
    assert saved["A"]["average_mAP"] == pytest.approx(np.mean([r["A"]["average_mAP"] for r in single]), abs=1e-15)
    assert saved["verdict"] == "better"
    (seeds_b / "seed-1.json").write_text(json.dumps({"results": {}}))
    refused = _compare(seeds_a, seeds_b, "--gt", paths["gt"], "--resamples", "50")
    assert refused.returncode == 2 and "seed-1.json" in refused.stderr and "field 'video id'" in refused.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = _compare(empty, seeds_b, "--gt", paths["gt"], "--resamples", "50")
    assert refused.returncode == 2 and "a folder without prediction files" in refused.stderr


@pytest.mark.parametrize(
    "break_b,args,needle",
    [
        ("drop video_007", (), "b.json: video_007: field 'video id': listed in"),
        ("add train_video", (), "b.json: train_video: field 'video id': not a 'test' video of"),
        ("not json", (), "b.json: line 1, column 2: field 'json': not valid JSON"),
        (None, ("--level", "1.5"), "--level: 1.5: field 'level': expected a confidence level between 0 and 1"),
    ],
)
def test_compare_bad_input_is_one_line_and_exit_2(tmp_path, case, break_b, args, needle):
    paths = _write_case(tmp_path, case)
    if break_b == "not json":
        paths["b"].write_text("{oops")
    elif break_b is not None:
        action, video = break_b.split()
        results = json.loads(paths["b"].read_text())["results"]
        results.pop(video) if action == "drop" else results.setdefault(video, [])
        paths["b"].write_text(json.dumps({"results": results}))
    out = tmp_path / "comparison.json"
    run = _compare(paths["a"], paths["b"], "--gt", paths["gt"], "--resamples", "50", "--out", out, *args)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and needle in lines[0], run.stderr
    assert not out.exists()


def test_the_basic_interval_reflects_the_replicates_around_the_point():
    half = np.random.default_rng(0).normal(0.0, 1.0, size=10000)
    replicates = np.concatenate([half, -half])  # symmetric around 0
    centred = basic_interval(replicates, 0.0, 0.95, (-10.0, 10.0))  # no shift: the percentile interval
    assert np.allclose(centred, np.quantile(replicates, [0.025, 0.975]), atol=1e-12)
    assert centred[0] == pytest.approx(-1.96, abs=0.05) and centred[1] == pytest.approx(1.96, abs=0.05)
    # replicates running 0.5 above the point, as resampled mAP does: the interval moves down by twice that
    shifted = basic_interval(replicates, -0.5, 0.95, (-10.0, 10.0))
    assert np.allclose(shifted, centred - 1.0) and shifted[0] < -0.5 < shifted[1]
    assert np.all(basic_interval(np.zeros((100, 3)), np.zeros(3), 0.9) == 0.0)  # identical: a point interval
    assert basic_interval(np.array([0.9, 1.0]), 0.99, 0.5, (0.0, 1.0))[1] == 1.0  # an mAP stays within [0, 1]


def test_compare_takes_a_dataset_s_label_space_as_score_does(tmp_path, case):
    """A class the dataset has but these test videos do not annotate is a false positive, not a typo."""
    paths = _write_case(tmp_path, case)
    results = json.loads(paths["a"].read_text())
    video = next(iter(results["results"]))
    results["results"][video].append({"label": 9, "score": 0.99, "segment": [1.0, 2.0]})
    paths["a"].write_text(json.dumps(results))
    refused = _compare(paths["a"], paths["b"], "--gt", paths["gt"], "--resamples", "50")
    assert refused.returncode == 2 and "field 'label': unknown label_id 9" in refused.stderr
    taken = _compare(paths["a"], paths["b"], "--gt", paths["gt"], "--resamples", "50", "--dataset", "thumos14")
    assert taken.returncode == 0, taken.stderr
    assert taken.stdout.splitlines()[0].endswith("tIoU 0.30, 0.40, 0.50, 0.60, 0.70")  # THUMOS14's thresholds
