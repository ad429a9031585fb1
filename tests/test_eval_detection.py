"""Detection metrics: hand-worked cases and a bitwise comparison with a slow oracle.

`oracle` below is a plain per-prediction loop written from the protocol description
(ActivityNet / ActionFormer): it is the definition the vectorized code must match exactly.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from talbench.eval.detection import (
    DetectionResult,
    GroundTruth,
    Predictions,
    evaluate_detection,
    format_table,
    precision_recall_table,
    remove_duplicate_annotations,
    result_to_dict,
    tiou_thresholds,
)
from talbench.eval.inputs import ground_truth, parse_annotations, parse_predictions

NAMES = {i: f"class{i}" for i in range(5)}


# ---------------------------------------------------------------- the slow oracle


def oracle(database: dict, results: dict, subset: str, tious, top_k=(1, 5)):
    """(ap [T, C], mAP [T], average_mAP, recall [T, K, C], mean_recall [T, K], pr [T, C, 101]); labels are ids."""
    tious = np.asarray(tious, dtype=np.float64)
    gts = []  # (video, start, end, label) in file order
    for vid, video in database.items():
        if video["subset"].lower() != subset.lower():
            continue
        kept = []
        for ann in video["annotations"]:
            s, e, label = float(ann["segment"][0]), float(ann["segment"][1]), ann["label_id"]
            valid = (e - s) >= 1e-3
            for ks, ke, kl in kept:
                if abs(s - ks) <= 1e-3 and abs(e - ke) <= 1e-3 and label == kl:
                    valid = False
            if valid:
                kept.append((s, e, label))
        gts += [(vid, s, e, label) for s, e, label in kept]
    preds = [
        (vid, float(d["segment"][0]), float(d["segment"][1]), d["label"], float(d["score"]))
        for vid, dets in results.items()
        for d in dets
    ]
    classes = sorted({g[3] for g in gts})
    ap = np.zeros((len(tious), len(classes)))
    recall = np.zeros((len(tious), len(top_k), len(classes)))
    pr = np.zeros((len(tious), len(classes), 101))
    for ci, c in enumerate(classes):
        class_gts = [g for g in gts if g[3] == c]
        class_preds = [p for p in preds if p[3] == c]
        if class_preds:
            ap[:, ci], pr[:, ci] = _oracle_ap(class_gts, class_preds, tious)
            recall[:, :, ci] = _oracle_recall(class_gts, class_preds, tious, top_k)
    mAP = ap.mean(axis=1)
    return ap, mAP, mAP.mean(), recall, recall.mean(axis=2), pr


def _oracle_tiou(s, e, g_start, g_end):
    inter = (np.minimum(e, g_end) - np.maximum(s, g_start)).clip(0)
    union = (g_end - g_start) + (e - s) - inter
    return inter / union


def _oracle_ap(class_gts, class_preds, tious):
    by_video = defaultdict(list)
    for i, g in enumerate(class_gts):
        by_video[g[0]].append(i)
    order = np.argsort(np.array([p[4] for p in class_preds]))[::-1]
    lock = np.full((len(tious), len(class_gts)), -1)
    tp = np.zeros((len(tious), len(class_preds)))
    fp = np.zeros((len(tious), len(class_preds)))
    for i, pi in enumerate(order):
        vid, s, e = class_preds[pi][:3]
        gidx = by_video.get(vid)
        if not gidx:
            fp[:, i] = 1
            continue
        g_start = np.array([class_gts[g][1] for g in gidx])
        g_end = np.array([class_gts[g][2] for g in gidx])
        tiou = _oracle_tiou(s, e, g_start, g_end)
        visit = np.argsort(tiou)[::-1]
        for t, thr in enumerate(tious):
            for j in visit:
                if tiou[j] < thr:
                    fp[t, i] = 1
                    break
                if lock[t, gidx[j]] >= 0:
                    continue
                tp[t, i] = 1
                lock[t, gidx[j]] = i
                break
            if tp[t, i] == 0 and fp[t, i] == 0:
                fp[t, i] = 1
    tp_cum = np.cumsum(tp, axis=1)
    fp_cum = np.cumsum(fp, axis=1)
    rec = tp_cum / float(len(class_gts))
    prec = tp_cum / (tp_cum + fp_cum)
    out = np.zeros(len(tious))
    # precision/recall curve: the best precision at recall >= each level, 0 where never reached
    curve = np.array([[max([p for p, r in zip(prec[t], rec[t]) if r >= level], default=0.0)
                       for level in np.linspace(0, 1, 101)] for t in range(len(tious))])
    for t in range(len(tious)):
        mprec = np.hstack([[0], prec[t], [0]])
        mrec = np.hstack([[0], rec[t], [1]])
        for k in range(len(mprec) - 1)[::-1]:
            mprec[k] = max(mprec[k], mprec[k + 1])
        idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
        out[t] = np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])
    return out, curve


def _oracle_recall(class_gts, class_preds, tious, top_k):
    tp = np.zeros((len(tious), len(top_k)))
    n_gts = 0
    videos = defaultdict(list)
    for g in class_gts:
        videos[g[0]].append(g)
    preds_by_video = defaultdict(list)  # file order within a video
    for p in class_preds:
        preds_by_video[p[0]].append(p)
    for vid, vgts in videos.items():
        n = len(vgts)
        n_gts += n
        vpreds = preds_by_video[vid]
        if not vpreds:
            continue
        top = np.argsort(np.array([p[4] for p in vpreds]))[::-1][: max(top_k) * n]
        g_start = np.array([g[1] for g in vgts])
        g_end = np.array([g[2] for g in vgts])
        tiou = np.stack([_oracle_tiou(vpreds[i][1], vpreds[i][2], g_start, g_end) for i in top])
        for t, thr in enumerate(tious):
            for ki, k in enumerate(top_k):
                tp[t, ki] += ((tiou[: k * n] >= thr).sum(axis=0) > 0).sum()
    return tp / n_gts


# ---------------------------------------------------------------- helpers


def ann(start, end, label_id):
    return {"label": NAMES[label_id], "label_id": label_id, "segment": [start, end]}


def det(start, end, label, score):
    return {"label": label, "score": score, "segment": [start, end]}


def video(annotations, subset="validation"):
    return {"subset": subset, "duration": 100.0, "fps": 30.0, "annotations": annotations}


def evaluate(database, results, tious=(0.5,), subset="validation", top_k=(1, 5)) -> DetectionResult:
    """The library path: parse both files, select the subset, evaluate."""
    annotations = parse_annotations({"database": database}, "gt.json")
    preds, _ = parse_predictions({"results": results}, annotations, "preds.json")
    return evaluate_detection(ground_truth(annotations, subset), preds, tious, top_k)


# ---------------------------------------------------------------- hand-worked cases


def test_single_perfect_match():
    # tp=[1]: prec=[1], rec=[1]; mrec=[0,1,1], mprec=[1,1,0]; AP = (1-0)*1 = 1
    r = evaluate({"v1": video([ann(0, 10, 0)])}, {"v1": [det(0, 10, 0, 0.9)]})
    assert r.ap.tolist() == [[1.0]]
    assert r.mAP.tolist() == [1.0] and r.average_mAP == 1.0
    assert r.recall.tolist() == [[[1.0], [1.0]]]


def test_duplicate_prediction_is_false_positive():
    # order .9 (TP, gt A), .8 (same segment: A locked -> FP), .7 (TP, gt B)
    # tp=[1,0,1], rec=[.5,.5,1], prec=[1,.5,2/3] -> AP = .5*1 + .5*(2/3)
    r = evaluate(
        {"v1": video([ann(0, 10, 0), ann(20, 30, 0)])},
        {"v1": [det(0, 10, 0, 0.9), det(0, 10, 0, 0.8), det(20, 30, 0, 0.7)]},
    )
    assert r.ap[0, 0] == 0.5 * 1.0 + 0.5 * (2 / 3)
    # precision/recall curve: 1 up to recall 0.5 (the first TP), then the envelope's 2/3
    curve = r.pr_precision[0, 0]
    assert (curve[r.pr_recall <= 0.5] == 1.0).all() and (curve[r.pr_recall > 0.5] == 2 / 3).all()


def test_precision_recall_curve_is_zero_past_the_reached_recall_and_bounds_ap():
    # one of two gts found, by the second prediction: rec=[0, .5], prec=[0, .5]; AP = .5 * .5
    r = evaluate(
        {"v1": video([ann(0, 10, 0), ann(20, 30, 0)])},
        {"v1": [det(50, 60, 0, 0.9), det(0, 10, 0, 0.8)]},
    )
    curve = r.pr_precision[0, 0]
    assert (curve[r.pr_recall <= 0.5] == 0.5).all() and (curve[r.pr_recall > 0.5] == 0.0).all()
    header, rows = precision_recall_table(r)
    assert header == ["recall", "precision@0.50"] and len(rows) == 101
    assert rows[50] == [0.5, 0.5] and rows[51] == [0.51, 0.0]
    # the curve is the non-increasing envelope AP integrates: right and left Riemann sums bound it
    assert curve[1:].mean() <= r.ap[0, 0] <= curve[:-1].mean()


def test_tiou_tie_locks_the_gt_the_reference_argsort_visits_first():
    # pred1 [2.5,12.5] has tIoU 7.5/12.5 = 0.6 with both A=[0,10] and B=[5,15]; the visit
    # order is np.argsort([0.6, 0.6])[::-1] = [1, 0], so pred1 locks B. pred2 [7,15] only
    # reaches B (0.8; with A 3/15 = 0.2) -> FP. tp=[1,0], npos=2: AP = .5*1 = 0.5
    # (it would be 1.0 had pred1 locked A).
    assert np.argsort(np.array([0.6, 0.6]))[::-1].tolist() == [1, 0]
    r = evaluate(
        {"v1": video([ann(0, 10, 0), ann(5, 15, 0)])},
        {"v1": [det(2.5, 12.5, 0, 0.9), det(7, 15, 0, 0.8)]},
    )
    assert r.ap[0, 0] == 0.5


def test_tiou_tie_in_a_long_row_follows_the_unstable_argsort():
    # 20 gts of length 5 inside [0, 200]: a first prediction [0, 200] has tIoU 0.025 with
    # all of them; it locks np.argsort(row)[::-1][0] (NumPy's SIMD sort is not stable for
    # rows this long, so this is not simply the first or last gt). A second prediction
    # exactly on gt j is then TP unless j is the locked one.
    gts = [ann(10 * j, 10 * j + 5, 0) for j in range(20)]
    row = np.full(20, 5 / 200)
    locked = int(np.argsort(row)[::-1][0])
    for j in (0, locked, 19):
        r = evaluate(
            {"v1": video(gts)},
            {"v1": [det(0, 200, 0, 0.9), det(10 * j, 10 * j + 5, 0, 0.8)]},
            tious=(0.02, 0.5),
        )
        # at 0.02: tp=[1, j != locked], AP = 2/20 or 1/20; at 0.5: tp=[0,1], prec=[0,.5] -> AP = 1/20 * .5
        expected = 2 / 20 if j != locked else 1 / 20
        assert r.ap[0, 0] == pytest.approx(expected)
        assert r.ap[1, 0] == (1 / 20) * 0.5


def test_duplicate_ground_truth_dropped():
    # the second A is within 1e-3 of the first (same label) -> dropped, npos=1, AP = 1.
    # The same segment with another label is kept (class 1, no predictions -> AP 0).
    r = evaluate(
        {"v1": video([ann(0, 10, 0), ann(0.0005, 10.0009, 0), ann(0, 10, 1)])},
        {"v1": [det(0, 10, 0, 0.9)]},
    )
    assert r.counts["gt_instances"] == 2
    assert r.ap.tolist() == [[1.0, 0.0]]


def test_too_short_ground_truth_dropped():
    # [5, 5.0005] is shorter than 1e-3 -> dropped; class 1's only gt is too short -> no class 1
    r = evaluate(
        {"v1": video([ann(0, 10, 0), ann(5, 5.0005, 0), ann(3, 3.0002, 1)])},
        {"v1": [det(0, 10, 0, 0.9), det(3, 3.0002, 1, 0.8)]},
    )
    assert r.classes.tolist() == [0]
    assert r.ap.tolist() == [[1.0]]
    assert r.counts["predictions_of_classes_without_gt"] == 1


def test_class_without_predictions_scores_zero():
    r = evaluate({"v1": video([ann(0, 10, 0), ann(20, 30, 1)])}, {"v1": [det(0, 10, 0, 0.9)]})
    assert r.ap.tolist() == [[1.0, 0.0]]
    assert r.mAP.tolist() == [0.5]
    assert r.recall[:, :, 1].tolist() == [[0.0, 0.0]]


def test_predictions_without_matching_gt_video_are_false_positives():
    # ranked .95 (v3: other subset), .92 (ghost: not in file), .9 (v2: no class-0 gt), .8 (TP)
    # tp=[0,0,0,1], prec=[0,0,0,.25], rec=[0,0,0,1] -> AP = 1 * .25
    database = {
        "v1": video([ann(0, 10, 0)]),
        "v2": video([ann(0, 10, 1)]),
        "v3": video([ann(0, 10, 0)], subset="test"),
    }
    results = {
        "v3": [det(0, 10, 0, 0.95)],
        "ghost": [det(0, 10, 0, 0.92)],
        "v2": [det(0, 10, 0, 0.9)],
        "v1": [det(0, 10, 0, 0.8)],
    }
    r = evaluate(database, results)
    assert r.ap[0, 0] == 0.25
    assert r.counts["predictions_outside_subset"] == 2
    assert r.counts["gt_videos"] == 2


def test_predictions_of_labels_absent_from_gt_are_ignored():
    database = {"v1": video([ann(0, 10, 0)]), "v2": video([ann(0, 10, 2)], subset="test")}
    base = {"v1": [det(0, 10, 0, 0.5), det(30, 40, 0, 0.4)]}
    extra = {"v1": [det(0, 10, 2, 0.99), *base["v1"], det(0, 10, 2, 0.1)]}
    a, b = evaluate(database, base), evaluate(database, extra)
    assert a.ap.tolist() == b.ap.tolist() == [[1.0]]
    assert b.counts["predictions_of_classes_without_gt"] == 2
    assert b.classes.tolist() == [0]


def test_label_names_and_ids_give_identical_results():
    database = {"v1": video([ann(0, 10, 0), ann(12, 20, 1), ann(30, 33, 0)])}
    segments = [(0, 9, 0, 0.9), (11, 20, 1, 0.8), (29, 34, 0, 0.7), (50, 60, 1, 0.6)]
    by_id = {"v1": [det(s, e, label, sc) for s, e, label, sc in segments]}
    by_name = {"v1": [det(s, e, NAMES[label], sc) for s, e, label, sc in segments]}
    mixed = {"v1": [det(s, e, NAMES[label] if i % 2 else label, sc) for i, (s, e, label, sc) in enumerate(segments)]}
    results = [evaluate(database, r, tious=(0.3, 0.5, 0.7)) for r in (by_id, by_name, mixed)]
    for r in results[1:]:
        assert r.ap.tolist() == results[0].ap.tolist()
        assert r.recall.tolist() == results[0].recall.tolist()


def test_subset_is_case_insensitive():
    database = {"v1": video([ann(0, 10, 0)], subset="Validation"), "v2": video([ann(0, 10, 0)], subset="VALIDATION")}
    r = evaluate(database, {"v1": [det(0, 10, 0, 0.9)], "v2": [det(0, 10, 0, 0.8)]}, subset="validation")
    assert r.counts["gt_videos"] == 2
    assert r.ap.tolist() == [[1.0]]


def test_threshold_boundary_linspace_versus_typed():
    # 1.2 / 3.0 rounds to 0.39999999999999997, which is exactly np.linspace(0.3, 0.7, 5)[1]:
    # a TP at the linspace threshold, an FP at a typed 0.4.
    assert tiou_thresholds("0.3:0.7:5").tolist() == np.linspace(0.3, 0.7, 5).tolist()
    assert tiou_thresholds("0.3:0.7:5")[1] == 1.2 / 3.0 < 0.4
    database = {"v1": video([ann(0, 3.0, 0)])}
    results = {"v1": [det(0, 1.2, 0, 0.9)]}
    spaced = evaluate(database, results, tious=tiou_thresholds("0.3:0.7:5"))
    typed = evaluate(database, results, tious=tiou_thresholds("0.3,0.4,0.5,0.6,0.7"))
    assert spaced.ap[:, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert typed.ap[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_recall_at_kx():
    # two gts in v1 -> top 1x2 = the .9 (miss) and .8 (hits B): R@1x = 1/2; top 5x: both hit
    r = evaluate(
        {"v1": video([ann(0, 10, 0), ann(20, 30, 0)])},
        {"v1": [det(0, 10, 0, 0.5), det(50, 60, 0, 0.9), det(20, 30, 0, 0.8)]},
    )
    assert r.recall[0, :, 0].tolist() == [0.5, 1.0]
    assert r.mean_recall.tolist() == [[0.5, 1.0]]


def test_no_predictions_at_all():
    r = evaluate({"v1": video([ann(0, 10, 0)])}, {})
    assert r.ap.tolist() == [[0.0]] and r.recall.tolist() == [[[0.0], [0.0]]]


def test_remove_duplicate_annotations_rule():
    events = [(0.0, 10.0, 1), (0.001, 10.001, 1), (0.0, 10.0, 2), (0.0, 10.0011, 1), (4.0, 4.0009, 1), (4.0, 4.001, 1)]
    # 2nd: within 1e-3 of 1st (same label); 3rd: other label; 4th: end differs by > 1e-3;
    # 5th: too short; 6th: exactly 1e-3 long (4.001 - 4.0 >= 1e-3 in float64)
    assert remove_duplicate_annotations(events) == [0, 2, 3, 5]


def test_tiou_thresholds_parsing():
    assert tiou_thresholds("0.5").tolist() == [0.5]
    assert tiou_thresholds(" 0.3, 0.5 ").tolist() == [0.3, 0.5]
    assert tiou_thresholds("0.5:0.95:10").tolist() == np.linspace(0.5, 0.95, 10).tolist()
    for bad in ("", "a", "0.3:0.7", "0.3:0.7:0", "0", "1.5", "nan"):
        with pytest.raises(ValueError):
            tiou_thresholds(bad)


def test_arrays_are_validated():
    with pytest.raises(ValueError, match="equal lengths"):
        GroundTruth(video_ids=["a"], starts=[0.0, 1.0], ends=[1.0, 2.0], labels=[0, 0])
    with pytest.raises(ValueError, match="end > start"):
        GroundTruth(video_ids=["a"], starts=[1.0], ends=[1.0], labels=[0])
    with pytest.raises(ValueError, match="finite"):
        Predictions(video_ids=["a"], starts=[0.0], ends=[1.0], labels=[0], scores=[float("nan")])
    gt = GroundTruth(video_ids=["a"], starts=[0.0], ends=[1.0], labels=[0])
    preds = Predictions(video_ids=[], starts=[], ends=[], labels=[], scores=[])
    with pytest.raises(ValueError, match="top_k"):
        evaluate_detection(gt, preds, [0.5], top_k=(0,))


def test_result_to_dict_and_table():
    r = evaluate(
        {"v1": video([ann(0, 10, 0), ann(20, 30, 1)])},
        {"v1": [det(0, 10, 0, 0.9)]},
        tious=tiou_thresholds("0.3:0.7:5"),
    )
    out = result_to_dict(r, NAMES)
    json.dumps(out)
    assert out["mAP"]["mAP@0.40"] == 0.5
    assert out["average_mAP"] == 0.5
    assert out["recall"]["R@5x@0.70"] == 0.5
    assert out["AP_per_class"] == {
        "class0": {f"AP@{t}": 1.0 for t in ("0.30", "0.40", "0.50", "0.60", "0.70")},
        "class1": {f"AP@{t}": 0.0 for t in ("0.30", "0.40", "0.50", "0.60", "0.70")},
    }
    assert out["counts"]["gt_instances"] == 2
    table = format_table(r, NAMES, per_class=True)
    assert "average mAP: 50.00" in table and "class1" in table and "R@5x" in table
    assert table.splitlines()[-1] == ("counts: 2 ground-truth instances in 1 videos; 1 predictions, of which 0 of classes without "
                                      "ground truth here (ignored: the protocol scores the classes that have instances) "
                                      "and 0 on videos outside the subset (false positives)")


# ---------------------------------------------------------------- oracle comparison


def random_case(seed: int):
    """A small random database + results on a coarse grid, so that exact ties are common:
    tied tIoUs, tied scores, duplicated and too-short gts, other subsets, unknown videos."""
    rng = np.random.default_rng(seed)
    dense = seed % 5 == 0  # long rows (>= 16 gts, many tied scores): NumPy's unstable sort
    n_classes = 2 if dense else 5
    database = {"labels": video([ann(0, 1, c) for c in range(5)], subset="training")}
    for v in range(int(rng.integers(1, 3 if dense else 7))):
        subset = str(rng.choice(["validation", "Validation", "test"], p=[0.5, 0.3, 0.2]))
        anns = []
        for _ in range(int(rng.integers(15, 40) if dense else rng.integers(0, 12))):
            start = float(rng.integers(0, 40)) / 2
            length = float(rng.choice([0, 0.0005, 0.5, 1, 2, 3, 4, 8]))
            anns.append(ann(start, start + length, int(rng.integers(0, n_classes))))
            if rng.random() < 0.15:  # a near duplicate, within the 1e-3 tolerance or just outside
                jitter = float(rng.choice([0.0004, 0.001, 0.0015]))
                anns.append(ann(start + jitter, start + length + jitter, anns[-1]["label_id"]))
        database[f"v{v}"] = video(anns, subset=subset)
    database["anchor"] = video([ann(1, 5, 0)])  # the subset is never empty
    scores = [0.1, 0.2, 0.3, 0.5] if seed % 2 else None
    results = {}
    for vid in [*database, "ghost"]:
        dets = []
        for _ in range(int(rng.integers(20, 80) if dense else rng.integers(0, 25))):
            start = float(rng.integers(0, 40)) / 2
            length = float(rng.integers(0, 16)) / 2
            score = float(rng.choice(scores)) if scores else float(rng.random())
            dets.append(det(start, start + length, int(rng.integers(0, n_classes if dense else 5)), score))
        results[vid] = dets
    choices = [
        np.linspace(0.3, 0.7, 5), np.linspace(0.5, 0.95, 10), np.linspace(0.1, 0.5, 5),
        np.array([0.5]), np.array([0.1, 0.25, 0.5, 0.75, 1.0]),
    ]
    tious = choices[seed % len(choices)]
    top_k = [(1, 5), (1, 2, 3), (2,)][seed % 3]
    return database, results, tious, top_k


@pytest.mark.parametrize("seed", range(200))
def test_matches_oracle_bitwise(seed):
    database, results, tious, top_k = random_case(seed)
    got = evaluate(database, results, tious=tious, top_k=top_k)
    ap, mAP, average_mAP, recall, mean_recall, pr = oracle(database, results, "validation", tious, top_k)
    assert got.ap.shape == ap.shape and (got.ap == ap).all()
    assert (got.mAP == mAP).all()
    assert got.average_mAP == average_mAP
    assert got.recall.shape == recall.shape and (got.recall == recall).all()
    assert (got.mean_recall == mean_recall).all()
    assert got.pr_precision.shape == pr.shape and (got.pr_precision == pr).all()
