"""Tests for talbench.eval.nms against a plain Python-loop reference written from the spec."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from talbench.eval.nms import (
    _batched_nms_indices,
    batched_nms,
    postprocess_video,
    segment_iou_matrix,
)

# --------------------------------------------------------------------------------------------
# Reference: one candidate at a time, plain Python floats.
# --------------------------------------------------------------------------------------------


def ref_iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - inter
    return inter / union if union > 0 else 0.0


def ref_nms(
    segments,
    scores,
    labels,
    *,
    method="soft",
    iou_threshold=0.1,
    min_score=0.001,
    max_seg_num=200,
    sigma=0.5,
    multiclass=True,
    voting_thresh=0.75,
):
    """Returns (kept indices in output order, their scores, output segments as lists)."""
    segs = [tuple(s) for s in segments.tolist()]
    sc = scores.tolist()
    lab = labels.tolist()
    # scores are stored in the score dtype: round every decayed score to it, like a C loop would
    if scores.dtype == torch.float64:
        def store(x):
            return x
    else:
        def store(x):
            return float(np.float32(x))

    groups: dict[int, list[int]] = {}
    for i in range(len(sc)):
        if sc[i] >= min_score:
            groups.setdefault(lab[i] if multiclass else 0, []).append(i)

    kept: list[tuple[int, float]] = []
    for members in groups.values():
        if method == "none":
            kept += [(i, sc[i]) for i in members]
            continue
        current = {i: sc[i] for i in members}
        picks = 0
        while current and picks < max_seg_num:
            best = max(current, key=lambda i: (current[i], -i))  # highest, then lowest index
            kept.append((best, current.pop(best)))
            picks += 1
            for i in list(current):
                iou = ref_iou(segs[best], segs[i])
                if method == "soft":
                    current[i] = store(current[i] * math.exp(-(iou * iou) / sigma))
                    if current[i] < min_score:
                        del current[i]
                elif iou > iou_threshold:
                    del current[i]
    kept.sort(key=lambda t: (-t[1], t[0]))
    kept = kept[:max_seg_num]

    out_segs = [list(segs[i]) for i, _ in kept]
    if not multiclass and method != "none" and voting_thresh > 0:
        for k, (i, _) in enumerate(kept):
            total, acc0, acc1 = 0.0, 0.0, 0.0
            for j in range(len(segs)):
                iou = ref_iou(segs[i], segs[j])
                if iou >= voting_thresh:
                    w = sc[j] * iou
                    total += w
                    acc0 += w * segs[j][0]
                    acc1 += w * segs[j][1]
            if total > 0:
                out_segs[k] = [acc0 / total, acc1 / total]
    return [i for i, _ in kept], [s for _, s in kept], out_segs


def random_case(seed: int, n: int, num_classes: int, dtype=torch.float32, zero_frac: float = 0.05):
    """Candidates with duplicate scores, identical segments, zero-length segments."""
    g = torch.Generator().manual_seed(seed)
    start = torch.rand(n, generator=g, dtype=torch.float64) * 100
    length = torch.empty(n, dtype=torch.float64).exponential_(1 / 6.0, generator=g)
    segs = torch.stack([start, start + length], 1)
    # zero-length segments
    zero = torch.rand(n, generator=g) < zero_frac
    segs[zero, 1] = segs[zero, 0]
    # exact copies of earlier segments
    dup = torch.nonzero(torch.rand(n, generator=g) < 0.15).squeeze(1)
    dup = dup[dup > 0]
    segs[dup] = segs[torch.randint(0, n, (dup.numel(),), generator=g) % dup]
    # segments on a coarse grid overlap exactly too
    grid = torch.rand(n, generator=g) < 0.2
    segs[grid] = segs[grid].mul(0.25).round().div(0.25)
    if zero_frac == 0:
        segs[:, 1] = torch.where(segs[:, 1] > segs[:, 0], segs[:, 1], segs[:, 0] + 0.5)
    scores = torch.rand(n, generator=g, dtype=torch.float64) ** 2
    pool = torch.tensor([0.9, 0.5, 0.5, 0.25, 0.01, 0.001, 0.0005], dtype=torch.float64)
    pooled = torch.rand(n, generator=g) < 0.3
    scores[pooled] = pool[torch.randint(0, len(pool), (int(pooled.sum()),), generator=g)]
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return segs.to(dtype), scores.to(dtype), labels


def check_against_reference(segs, scores, labels, *, voting_atol=1e-9, **kw):
    ref_idx, ref_scores, ref_segs = ref_nms(segs, scores, labels, **kw)
    nms_kw = {k: v for k, v in kw.items() if k != "voting_thresh"}
    idx, kept_scores = _batched_nms_indices(segs, scores, labels, **nms_kw)
    assert idx.tolist() == ref_idx
    ref_scores_t = torch.tensor(ref_scores, dtype=scores.dtype)
    if kw.get("method", "soft") == "soft":
        assert torch.allclose(kept_scores.to(scores.dtype), ref_scores_t, rtol=1e-6, atol=0)
    else:
        assert torch.equal(kept_scores.to(scores.dtype), ref_scores_t)

    out_segs, out_scores, out_labels = batched_nms(segs, scores, labels, **kw)
    assert out_segs.dtype == segs.dtype and out_scores.dtype == scores.dtype
    assert out_labels.dtype == labels.dtype
    assert torch.equal(out_labels, labels[ref_idx])
    assert torch.allclose(out_scores, ref_scores_t, rtol=1e-6, atol=0)
    ref_segs_t = torch.tensor(ref_segs, dtype=torch.float64).reshape(-1, 2).to(segs.dtype)
    if kw.get("multiclass", True) or kw.get("voting_thresh", 0.75) <= 0:
        assert torch.equal(out_segs, ref_segs_t)
    else:
        assert torch.allclose(out_segs, ref_segs_t, rtol=1e-6, atol=voting_atol)
    return len(ref_idx)


# --------------------------------------------------------------------------------------------
# Random cases against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_classes", [1, 5, 40])
@pytest.mark.parametrize("min_score", [0.001, 0.05])
def test_soft_multiclass_matches_reference(seed, num_classes, min_score):
    segs, scores, labels = random_case(seed, 300, num_classes)
    kept = check_against_reference(
        segs, scores, labels, method="soft", multiclass=True, min_score=min_score, max_seg_num=60
    )
    assert kept > 0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("sigma", [0.5, 0.1])
@pytest.mark.parametrize("voting_thresh", [0.75, 0.0])
def test_soft_class_agnostic_matches_reference(seed, sigma, voting_thresh):
    segs, scores, labels = random_case(100 + seed, 250, 20)
    check_against_reference(
        segs,
        scores,
        labels,
        method="soft",
        multiclass=False,
        sigma=sigma,
        voting_thresh=voting_thresh,
        max_seg_num=100,
    )


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("voting_thresh", [0.1, 0.5, 0.9, 1.0])
def test_voting_thresholds_match_reference(seed, voting_thresh):
    segs, scores, labels = random_case(500 + seed, 300, 5)
    check_against_reference(
        segs, scores, labels, method="hard", iou_threshold=0.3, multiclass=False,
        voting_thresh=voting_thresh, min_score=0.0,
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("multiclass", [True, False])
@pytest.mark.parametrize("iou_threshold", [0.1, 0.5, 0.0])
def test_hard_matches_reference(seed, multiclass, iou_threshold):
    segs, scores, labels = random_case(200 + seed, 300, 12)
    check_against_reference(
        segs,
        scores,
        labels,
        method="hard",
        multiclass=multiclass,
        iou_threshold=iou_threshold,
        max_seg_num=80,
    )


@pytest.mark.parametrize("multiclass", [True, False])
def test_none_matches_reference(multiclass):
    segs, scores, labels = random_case(7, 200, 9)
    check_against_reference(segs, scores, labels, method="none", multiclass=multiclass, max_seg_num=50)


@pytest.mark.parametrize("method", ["soft", "hard"])
def test_float64_and_long_runs_match_reference(method):
    # many candidates of one class: exercises the compaction of the padded layout
    segs, scores, labels = random_case(11, 600, 3, dtype=torch.float64)
    check_against_reference(segs, scores, labels, method=method, max_seg_num=600)
    check_against_reference(segs, scores, labels, method=method, multiclass=False, max_seg_num=600)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("multiclass", [True, False])
def test_positive_lengths_match_reference(seed, multiclass):
    # no zero-length segment: the implementation skips its 0/0 guard
    segs, scores, labels = random_case(400 + seed, 300, 6, zero_frac=0.0)
    assert (segs[:, 1] > segs[:, 0]).all()
    check_against_reference(segs, scores, labels, method="soft", multiclass=multiclass, max_seg_num=100)
    check_against_reference(segs, scores, labels, method="hard", multiclass=multiclass, max_seg_num=100)


def test_many_classes_unbalanced_matches_reference():
    segs, scores, labels = random_case(12, 800, 97)
    labels[:300] = 3  # one big class among many small ones
    check_against_reference(segs, scores, labels, method="soft", max_seg_num=2000)
    check_against_reference(segs, scores, labels, method="soft", max_seg_num=7)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("method", ["soft", "hard"])
@pytest.mark.parametrize("max_seg_num", [1, 6, 40])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dropping_what_cannot_make_the_cut_matches_reference(seed, method, max_seg_num, dtype):
    """Many rows, each with more candidates than the cut: after the first checks the candidates
    below the max_seg_num-th best pick are dropped; pooled scores put ties right at that bar."""
    segs, scores, labels = random_case(30 + seed, 900, 12, dtype=dtype)
    check_against_reference(segs, scores, labels, method=method, max_seg_num=max_seg_num)


def test_tiny_sigma_no_nan():
    segs, scores, labels = random_case(13, 200, 4)
    check_against_reference(segs, scores, labels, method="soft", sigma=1e-4, min_score=0.0)


# --------------------------------------------------------------------------------------------
# Hand-worked cases
# --------------------------------------------------------------------------------------------


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def L(x):
    return torch.tensor(x, dtype=torch.long)


def test_soft_two_overlapping_iou_half():
    segs = t([[0.0, 2.0], [1.0, 2.0]])  # inter 1, union 2 -> IoU 0.5
    assert segment_iou_matrix(segs, segs)[0, 1].item() == 0.5
    out_segs, out_scores, out_labels = batched_nms(segs, t([0.9, 0.8]), L([0, 0]), sigma=0.5)
    assert torch.equal(out_segs, segs)
    expected = 0.8 * math.exp(-0.25 / 0.5)
    assert out_scores.tolist() == pytest.approx([0.9, expected], rel=1e-6)
    assert out_labels.tolist() == [0, 0]


def test_soft_disjoint_untouched():
    segs = t([[0.0, 1.0], [1.0, 2.0], [5.0, 9.0]])  # touching counts as disjoint
    scores = t([0.3, 0.7, 0.5])
    for multiclass in (True, False):
        out_segs, out_scores, _ = batched_nms(segs, scores, L([0, 0, 0]), multiclass=multiclass)
        assert torch.equal(out_scores, t([0.7, 0.5, 0.3]))
        assert torch.equal(out_segs, segs[[1, 2, 0]])


def test_soft_ties_pick_lowest_index():
    segs = t([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    idx, scores = _batched_nms_indices(segs, t([0.5, 0.5, 0.5]), L([0, 0, 0]), min_score=0.0)
    assert idx.tolist() == [0, 1, 2]
    w = math.exp(-1 / 0.5)
    assert scores.tolist() == pytest.approx([0.5, 0.5 * w, 0.5 * w * w], rel=1e-6)


def test_hard_threshold_boundary():
    segs = t([[0.0, 2.0], [1.0, 2.0]])  # IoU exactly 0.5
    scores, labels = t([0.9, 0.8]), L([0, 0])
    _, kept, _ = batched_nms(segs, scores, labels, method="hard", iou_threshold=0.5)
    assert kept.tolist() == pytest.approx([0.9, 0.8])  # IoU == threshold is kept, unchanged
    _, kept, _ = batched_nms(segs, scores, labels, method="hard", iou_threshold=0.4999)
    assert kept.tolist() == pytest.approx([0.9])


def test_multiclass_does_not_suppress_across_classes():
    segs = t([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    scores, labels = t([0.9, 0.8, 0.7]), L([0, 1, 0])
    _, out_scores, out_labels = batched_nms(segs, scores, labels, method="hard")
    assert out_scores.tolist() == pytest.approx([0.9, 0.8])
    assert out_labels.tolist() == [0, 1]
    _, out_scores, out_labels = batched_nms(segs, scores, labels, method="soft")
    w = math.exp(-1 / 0.5)
    assert out_scores.tolist() == pytest.approx([0.9, 0.8, 0.7 * w], rel=1e-6)
    assert out_labels.tolist() == [0, 1, 0]
    # class-agnostic: the label-1 candidate is suppressed by the label-0 one
    _, out_scores, out_labels = batched_nms(
        segs, scores, labels, method="hard", multiclass=False
    )
    assert out_labels.tolist() == [0]


def test_voting_moves_kept_segment_toward_heavy_neighbours():
    segs = t([[0.0, 10.0], [1.0, 11.0], [1.0, 11.0], [50.0, 60.0]], torch.float64)
    scores = t([0.9, 0.85, 0.85, 0.5], torch.float64)
    labels = L([0, 0, 0, 1])
    out_segs, out_scores, out_labels = batched_nms(
        segs, scores, labels, method="hard", iou_threshold=0.5, multiclass=False, voting_thresh=0.75
    )
    assert out_scores.tolist() == [0.9, 0.5]
    assert out_labels.tolist() == [0, 1]
    iou = 9 / 11  # [0,10] vs [1,11]
    w = [0.9, 0.85 * iou, 0.85 * iou]
    expected_start = (w[1] + w[2]) * 1.0 / sum(w)
    assert out_segs[0].tolist() == pytest.approx([expected_start, 10 + expected_start], rel=1e-12)
    assert 0 < out_segs[0, 0] < 1
    assert out_segs[1].tolist() == [50.0, 60.0]  # alone: unchanged
    # no voting below the threshold, nor in multiclass mode, nor with voting_thresh 0
    out_segs, _, _ = batched_nms(
        segs, scores, labels, method="hard", iou_threshold=0.5, multiclass=False, voting_thresh=0.9
    )
    assert out_segs[0].tolist() == [0.0, 10.0]
    out_segs, _, _ = batched_nms(segs, scores, labels, method="hard", iou_threshold=0.5)
    assert out_segs[0].tolist() == [0.0, 10.0]
    out_segs, _, _ = batched_nms(
        segs, scores, labels, method="hard", iou_threshold=0.5, multiclass=False, voting_thresh=0.0
    )
    assert out_segs[0].tolist() == [0.0, 10.0]


def test_voting_uses_low_scores_and_zero_length_is_unchanged():
    segs = t([[0.0, 10.0], [1.0, 11.0], [3.0, 3.0]], torch.float64)
    scores = t([0.9, 0.0005, 0.8], torch.float64)  # the neighbour is below min_score
    out_segs, _, _ = batched_nms(
        segs, scores, L([0, 0, 0]), method="hard", iou_threshold=0.95, multiclass=False
    )
    assert out_segs[0, 0].item() > 0  # moved by the dropped candidate
    assert out_segs[1].tolist() == [3.0, 3.0]  # zero length: IoU 0 with all, no NaN
    assert not torch.isnan(out_segs).any()


def test_max_seg_num_cut():
    segs = torch.stack([torch.arange(10.0) * 3, torch.arange(10.0) * 3 + 1], 1)
    scores = torch.linspace(0.1, 1.0, 10)
    labels = torch.arange(10) % 2
    out_segs, out_scores, out_labels = batched_nms(segs, scores, labels, max_seg_num=3)
    assert out_scores.tolist() == pytest.approx([1.0, 0.9, 0.8])
    assert out_labels.tolist() == [1, 0, 1]
    assert torch.equal(out_segs, segs[[9, 8, 7]])
    for method in ("hard", "none"):
        _, out_scores, _ = batched_nms(segs, scores, labels, method=method, max_seg_num=4)
        assert out_scores.tolist() == pytest.approx([1.0, 0.9, 0.8, 0.7])


def test_min_score_drop():
    segs = t([[0.0, 2.0], [1.0, 2.0], [10.0, 12.0]])
    scores = t([0.9, 0.0015, 0.0009])
    # 0.0009 is below min_score from the start; 0.0015 decays to 0.0015*e^-0.5 ~ 0.00091
    _, out_scores, _ = batched_nms(segs, scores, L([0, 0, 0]), min_score=0.001)
    assert out_scores.tolist() == pytest.approx([0.9])
    _, out_scores, _ = batched_nms(segs, scores, L([0, 0, 0]), min_score=0.0009)
    assert out_scores.tolist() == pytest.approx([0.9, 0.0015 * math.exp(-0.5)], rel=1e-6)
    _, out_scores, _ = batched_nms(segs, scores, L([0, 0, 0]), method="none", min_score=0.001)
    assert out_scores.tolist() == pytest.approx([0.9, 0.0015])
    # a score exactly at min_score is kept
    _, out_scores, _ = batched_nms(segs, t([0.5, 0.5, 0.25]), L([0, 1, 2]), min_score=0.25)
    assert len(out_scores) == 3


def test_empty_inputs():
    for method in ("soft", "hard", "none"):
        for multiclass in (True, False):
            segs, scores, labels = batched_nms(
                torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                method=method, multiclass=multiclass,
            )
            assert segs.shape == (0, 2) and scores.shape == (0,) and labels.shape == (0,)
            assert segs.dtype == torch.float32 and scores.dtype == torch.float32
            assert labels.dtype == torch.long
    # everything below min_score
    segs, scores, labels = batched_nms(t([[0.0, 1.0]]), t([0.0001]), L([0]), multiclass=False)
    assert segs.shape == (0, 2) and scores.shape == (0,) and labels.shape == (0,)


def test_segment_iou_matrix_zero_length_and_shape():
    a = t([[0.0, 0.0], [0.0, 2.0], [1.0, 3.0]])
    b = t([[0.0, 0.0], [1.0, 1.0], [2.0, 4.0]])
    iou = segment_iou_matrix(a, b)
    assert iou.shape == (3, 3)
    assert not torch.isnan(iou).any()
    assert iou[0].tolist() == [0.0, 0.0, 0.0]
    assert iou[2, 2].item() == pytest.approx(1 / 3)
    assert iou[1, 2].item() == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        batched_nms(t([[0.0, 1.0]]), t([0.5]), L([0]), method="linear")
    with pytest.raises(ValueError):
        batched_nms(t([0.0, 1.0]), t([0.5, 0.5]), L([0, 0]))
    with pytest.raises(ValueError):
        batched_nms(t([[0.0, 1.0]]), t([0.5, 0.4]), L([0]))


# --------------------------------------------------------------------------------------------
# postprocess_video
# --------------------------------------------------------------------------------------------


def test_postprocess_video_seconds_and_clamp():
    segs = t([[2.0, 10.0], [-5.0, 1.0], [90.0, 200.0]])
    scores = t([0.9, 0.8, 0.7])
    labels = L([1, 2, 3])
    cfg = {
        "nms_method": "soft", "iou_threshold": 0.1, "min_score": 0.001, "max_seg_num": 100,
        "nms_sigma": 0.5, "multiclass_nms": True, "voting_thresh": 0.75,
        "pre_nms_topk": 5000, "duration_thresh": 0.05,  # other test_cfg keys are ignored
    }
    out = postprocess_video(
        segs, scores, labels, fps=30.0, feat_stride=4, num_frames=16, duration=20.0, nms_cfg=cfg
    )
    assert set(out) == {"segments", "scores", "labels"}
    assert all(v.device.type == "cpu" for v in out.values())
    assert out["segments"].dtype == torch.float32
    # (t*4 + 8)/30, clamped to [0, 20]
    expected = [[16 / 30, 48 / 30], [0.0, 12 / 30], [368 / 30, 20.0]]
    assert out["segments"].tolist() == [pytest.approx(r, rel=1e-6) for r in expected]
    assert out["labels"].tolist() == [1, 2, 3]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_postprocess_video_uses_cfg():
    segs = t([[0.0, 2.0], [1.0, 2.0]])
    scores, labels = t([0.9, 0.8]), L([0, 0])
    base = dict(fps=1.0, feat_stride=1, num_frames=0, duration=100.0)
    out = postprocess_video(segs, scores, labels, **base, nms_cfg={"nms_method": "hard", "iou_threshold": 0.4})
    assert out["scores"].tolist() == pytest.approx([0.9])
    out = postprocess_video(segs, scores, labels, **base, nms_cfg={"nms_method": "none"})
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8])
    out = postprocess_video(segs, scores, labels, **base, nms_cfg={"nms_sigma": 0.25})
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8 * math.exp(-1.0)], rel=1e-6)
    out = postprocess_video(segs[:0], scores[:0], labels[:0], **base, nms_cfg={})
    assert out["segments"].shape == (0, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    for seed in range(3):
        segs, scores, labels = random_case(300 + seed, 2000, 20)
        for kw in (dict(), dict(multiclass=False), dict(method="hard"), dict(max_seg_num=2000)):
            cpu = batched_nms(segs, scores, labels, **kw)
            gpu = batched_nms(segs.cuda(), scores.cuda(), labels.cuda(), **kw)
            assert torch.equal(cpu[2], gpu[2].cpu())
            assert torch.allclose(cpu[1], gpu[1].cpu(), rtol=1e-6, atol=0)
            assert torch.allclose(cpu[0], gpu[0].cpu(), rtol=1e-6, atol=1e-6)
