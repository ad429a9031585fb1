"""Post-processing NMS for temporal action localization (the ActionFormer recipe), vectorized.

`batched_nms` reproduces ActionFormer's post-processing: Gaussian soft-NMS (or hard NMS) per
class or class-agnostic, segment voting in the class-agnostic mode, a final sort by score and
a cut to `max_seg_num`. `postprocess_video` runs it on one video and converts feature-grid
positions to seconds.

How it is vectorized. The candidates are laid out as a padded ``[groups, width]`` matrix (one
row per class in the multiclass mode, a single row otherwise), each row in ascending candidate
index. Every iteration picks the current maximum of *every* row at once (``max`` along the row
returns the first maximum, i.e. the lowest index among ties), then decays (soft) or suppresses
(hard) the rest of each row against its own pick. A row whose maximum is below `min_score` is
finished; since the picked scores are non-increasing within a row, at most `max_seg_num`
iterations are ever needed. Every few iterations dead candidates and finished rows are
squeezed out of the matrix so long runs get cheaper as they go. Once `max_seg_num` picks are
in, a candidate scoring below the `max_seg_num`-th best of them is dead too: scores only
decay, so neither its pick nor any later pick of its row (all scoring below it) can make the
final cut. On THUMOS14-sized videos that halves the work, the output unchanged. The only
Python loop is over iterations. Segment voting looks, for each kept segment, only at the
window of candidates (sorted by start) that can reach the IoU threshold, instead of at all of
them.

Numerics. Scores are kept in float32 (float64 for float64 input) exactly like a scalar loop
would keep them, but IoU and the decay factor ``exp(-IoU**2 / sigma)`` are computed in float64
and each product is rounded once to the score dtype. Since IoU uses only correctly rounded
operations, and the float64 exp of the vector and scalar code paths differ by at most an ulp
that the rounding to float32 absorbs, candidates that are exactly tied (same score, same
segment) stay exactly tied wherever they sit in the matrix, on CPU or CUDA, so tie-breaking by
lowest index is reproducible. `min_score` is compared exactly: a score is kept iff
``score >= min_score`` as real numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["batched_nms", "segment_iou_matrix", "postprocess_video", "NMS_METHODS"]

NMS_METHODS = ("soft", "hard", "none")

# How often (in iterations) the loop checks whether it is done and compacts the matrix. Each
# check synchronizes with the device, so accelerators check less often; extra iterations after
# everything is finished are harmless (they pick nothing).
_CHECK_EVERY_CPU = 4
_CHECK_EVERY_DEVICE = 16
# Voting builds [kept, window] float64 matrices; bound one block's number of elements.
_VOTING_BLOCK_ELEMS = 1 << 22


def segment_iou_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise 1-D IoU of segments ``a [N,2]`` and ``b [M,2]`` (``start, end``) -> ``[N,M]``.

    ``inter = clamp(min(ends) - max(starts), 0)``, ``union = len_a + len_b - inter``; pairs
    whose union is not positive (e.g. two zero-length segments) get IoU 0 instead of NaN.
    Computed in the promoted floating dtype of the inputs.
    """
    if a.dim() != 2 or a.shape[-1] != 2 or b.dim() != 2 or b.shape[-1] != 2:
        raise ValueError(f"segments must be [N,2] and [M,2], got {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    a = a.to(dtype)
    b = b.to(dtype)
    return _pair_iou(a[:, None, 0], a[:, None, 1], b[None, :, 0], b[None, :, 1])


def _pair_iou(s1: Tensor, e1: Tensor, s2: Tensor, e2: Tensor) -> Tensor:
    """Broadcast 1-D IoU of (s1, e1) and (s2, e2); 0 where the union is not positive."""
    inter = (torch.minimum(e1, e2) - torch.maximum(s1, s2)).clamp(min=0)
    union = (e1 - s1) + (e2 - s2) - inter
    return torch.where(union > 0, inter / union, torch.zeros((), dtype=inter.dtype, device=inter.device))


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _exact_threshold(min_score: float, dtype: torch.dtype) -> float:
    """The smallest `dtype` value >= `min_score`: for x in `dtype`, x >= it  <=>  x >= min_score."""
    want = torch.tensor(float(min_score), dtype=torch.float64)
    t = want.to(dtype)
    if t.to(torch.float64) < want:
        t = torch.nextafter(t, torch.tensor(math.inf, dtype=dtype))
    return float(t)


def _greedy_nms(
    x1: Tensor,
    x2: Tensor,
    scores: Tensor,
    group: Tensor,
    num_groups: int,
    *,
    soft: bool,
    iou_threshold: float,
    sigma: float,
    thr: float,
    max_picks: int,
) -> tuple[Tensor, Tensor]:
    """Greedy (soft-)NMS independently inside each group, all groups per iteration.

    `x1`, `x2` float64 [n]; `scores` [n] in the work dtype, all >= `thr`; `group` [n] long in
    ``[0, num_groups)``. Returns the picked positions (into the inputs) and their scores at
    pick time, grouped by iteration.
    """
    device = scores.device
    n = scores.numel()
    neg_inf = -math.inf
    counts = torch.bincount(group, minlength=num_groups)
    width = int(counts.max())
    order = torch.argsort(group, stable=True)  # by group, ascending index inside a group
    g = group[order]
    pos = torch.arange(n, device=device) - (torch.cumsum(counts, 0) - counts)[g]

    S = torch.full((num_groups, width), neg_inf, dtype=scores.dtype, device=device)
    S[g, pos] = scores[order]
    # -start, end, length; padding is [0, 0] with score -inf and is never picked. With the
    # start negated, one `minimum` gives both min(ends) and -max(starts).
    XL = torch.zeros((3, num_groups, width), dtype=torch.float64, device=device)
    XL[0, g, pos] = -x1[order]
    XL[1, g, pos] = x2[order]
    XL[2, g, pos] = (x2 - x1)[order]
    # with only positive lengths the union is always > 0 and 0/0 cannot happen
    degenerate = bool((x2 <= x1).any()) if n else False
    idx = torch.full((num_groups, width), -1, dtype=torch.long, device=device)
    idx[g, pos] = order

    # exp(-IoU^2/sigma) underflows to 0 only for tiny sigma; keep it positive so that
    # -inf (picked / padding) * w stays -inf. The floor rounds to 0 in float32 anyway.
    min_weight = 1e-300 if 1.0 / sigma > 600.0 else None
    check_every = _CHECK_EVERY_CPU if device.type == "cpu" else _CHECK_EVERY_DEVICE

    picked_idx: list[Tensor] = []
    picked_score: list[Tensor] = []
    rows, cols = num_groups, width
    best_picks, seen, num_picked = scores[:0], 0, 0
    # every iteration takes one candidate out of each row: `width` iterations empty them all
    for it in range(min(max_picks, width)):
        if it and it % check_every == 0:
            floor: Tensor | float = thr
            if num_picked >= max_picks:
                # at least max_picks scores: every pick so far is in the best or among the new
                best_picks = torch.cat([best_picks, *picked_score[seen:]]).topk(max_picks).values
                seen = len(picked_score)
                floor = best_picks[-1].clamp(min=thr)
            alive = S >= floor
            alive_per_row = alive.sum(1)
            longest, live_rows = torch.stack((alive_per_row.max(), (alive_per_row > 0).sum())).tolist()
            if longest == 0:
                break
            if 2 * longest <= cols or 2 * live_rows <= rows:
                keep_rows = (alive_per_row > 0).nonzero().squeeze(1)
                # alive first, each row still in ascending index order
                perm = torch.argsort(alive[keep_rows].to(torch.uint8), dim=1, descending=True, stable=True)
                perm = perm[:, :longest]
                S = S[keep_rows].gather(1, perm)
                idx = idx[keep_rows].gather(1, perm)
                XL = XL[:, keep_rows].gather(2, perm.expand(3, -1, -1))
                rows, cols = live_rows, longest

        best, j = S.max(dim=1)  # first maximum: lowest index among ties
        jj = j.unsqueeze(1)
        picked_idx.append(idx.gather(1, jj).squeeze(1))
        picked_score.append(best)
        num_picked += rows

        p = XL.gather(2, jj.expand(3, rows, 1))  # picked -start, end, length: [3, rows, 1]
        m = torch.minimum(XL[:2], p[:2])  # -max(starts), min(ends)
        iou = torch.add(m[1], m[0]).clamp_(min=0)  # intersection
        union = (XL[2] + p[2]).sub_(iou)
        iou.div_(union)
        if degenerate:
            iou.nan_to_num_(0.0)  # 0/0 (zero-length segments) -> 0
        if soft:
            w = iou.mul_(iou).div_(-sigma).exp_()
            if min_weight is not None:
                w.clamp_(min=min_weight)
            S.mul_(w)  # computed in float64, rounded once to the score dtype
        else:
            S.masked_fill_(iou > iou_threshold, neg_inf)
        S.scatter_(1, jj, neg_inf)

    if not picked_idx:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return empty, scores[:0]
    sel = torch.cat(picked_idx)
    sel_scores = torch.cat(picked_score)
    valid = sel_scores >= thr
    return sel[valid], sel_scores[valid]


def _seg_voting(kept: Tensor, all_segs: Tensor, all_scores: Tensor, thresh: float) -> Tensor:
    """Each kept segment -> IoU*score weighted mean of all segments with IoU >= `thresh`.

    Only a window of the candidates is looked at: overlapping segments with IoU >= t satisfy
    ``|start_j - start_k| <= union - inter <= len_k * (1 - t) / t``, so with the candidates
    sorted by start each kept segment needs the contiguous run found by two binary searches
    (widened a little against rounding; the exact IoU test is applied inside the window).
    """
    a = all_segs.to(torch.float64)
    s = all_scores.to(torch.float64)
    k64 = kept.to(torch.float64)
    order = torch.argsort(a[:, 0])
    a, s = a[order], s[order]
    starts = a[:, 0].contiguous()
    k_start = k64[:, 0].contiguous()
    k_len = (k64[:, 1] - k64[:, 0]).clamp(min=0)
    reach = k_len * ((1.0 - thresh) / thresh * (1 + 1e-6) + 1e-9) + 1e-12 * k_start.abs()
    lo = torch.searchsorted(starts, k_start - reach, side="left")
    hi = torch.searchsorted(starts, k_start + reach, side="right")
    width = int((hi - lo).max().clamp(min=0))
    if width == 0:
        return kept.clone()
    block = max(1, _VOTING_BLOCK_ELEMS // width)
    offsets = torch.arange(width, device=a.device)
    out = []
    for b in range(0, k64.shape[0], block):
        k = k64[b : b + block]
        cols = lo[b : b + block, None] + offsets
        inside = cols < hi[b : b + block, None]
        cols = cols.clamp(max=a.shape[0] - 1)
        cand = a[cols]  # [block, width, 2]
        iou = _pair_iou(k[:, None, 0], k[:, None, 1], cand[..., 0], cand[..., 1])
        w = torch.where(inside & (iou >= thresh), iou * s[cols], torch.zeros((), dtype=torch.float64, device=a.device))
        total = w.sum(1, keepdim=True)
        refined = torch.einsum("bw,bwc->bc", w, cand) / total
        out.append(torch.where(total > 0, refined, k))  # nothing to vote with: unchanged
    return torch.cat(out).to(kept.dtype)


def _batched_nms_indices(
    segments: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    method: str = "soft",
    iou_threshold: float = 0.1,
    min_score: float = 0.001,
    max_seg_num: int = 200,
    sigma: float = 0.5,
    multiclass: bool = True,
) -> tuple[Tensor, Tensor]:
    """Indices of the kept candidates, in output order, and their scores (work dtype)."""
    device = scores.device
    wdtype = _work_dtype(scores.dtype)
    n = scores.shape[0]
    if n == 0 or max_seg_num <= 0:
        return torch.empty(0, dtype=torch.long, device=device), torch.empty(0, dtype=wdtype, device=device)
    thr = _exact_threshold(min_score, wdtype)
    s = scores.to(wdtype)
    cand = (s >= thr).nonzero().squeeze(1)
    if method == "none" or cand.numel() == 0:
        keep, kept_scores = cand, s[cand]
    else:
        seg = segments[cand].to(torch.float64)
        if multiclass:
            _, group = torch.unique(labels[cand], return_inverse=True)
            num_groups = int(group.max()) + 1
        else:
            group = torch.zeros(cand.numel(), dtype=torch.long, device=device)
            num_groups = 1
        sel, kept_scores = _greedy_nms(
            seg[:, 0].contiguous(),
            seg[:, 1].contiguous(),
            s[cand],
            group,
            num_groups,
            soft=method == "soft",
            iou_threshold=float(iou_threshold),
            sigma=float(sigma),
            thr=thr,
            max_picks=int(max_seg_num),
        )
        keep = cand[sel]
    # score descending, ties by lowest index; then the cut
    by_index = torch.argsort(keep)
    keep, kept_scores = keep[by_index], kept_scores[by_index]
    by_score = torch.argsort(kept_scores, descending=True, stable=True)[:max_seg_num]
    return keep[by_score], kept_scores[by_score]


def batched_nms(
    segments: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    method: str = "soft",
    iou_threshold: float = 0.1,
    min_score: float = 0.001,
    max_seg_num: int = 200,
    sigma: float = 0.5,
    multiclass: bool = True,
    voting_thresh: float = 0.75,
) -> tuple[Tensor, Tensor, Tensor]:
    """ActionFormer post-processing NMS on one video's candidates.

    Args:
        segments: ``[N, 2]`` (start, end) candidate segments.
        scores: ``[N]`` candidate scores.
        labels: ``[N]`` integer class ids.
        method: ``"soft"`` (Gaussian soft-NMS: the picked candidate multiplies the others'
            scores by ``exp(-IoU**2 / sigma)``), ``"hard"`` (drop the others with
            ``IoU > iou_threshold``) or ``"none"`` (no suppression, no voting).
        iou_threshold: hard-NMS threshold (unused by soft-NMS, as in ActionFormer).
        min_score: candidates scoring below it (initially, or after decay) are dropped.
        max_seg_num: at most this many segments are returned (and picked per class).
        sigma: soft-NMS Gaussian width.
        multiclass: NMS inside each class independently; otherwise class-agnostic NMS
            followed by segment voting.
        voting_thresh: class-agnostic mode only, when > 0: each kept segment becomes the
            IoU*score weighted mean of all input segments with IoU >= voting_thresh.

    Returns:
        ``(segments [K,2], scores [K], labels [K])`` sorted by score descending (ties: lower
        input index first), on the input device, in the input dtypes.
    """
    if method not in NMS_METHODS:
        raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")
    if segments.dim() != 2 or segments.shape[1] != 2:
        raise ValueError(f"segments must be [N,2], got {tuple(segments.shape)}")
    n = segments.shape[0]
    if scores.shape != (n,) or labels.shape != (n,):
        raise ValueError(
            f"scores and labels must be [{n}], got {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if method == "soft" and not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    segments, scores, labels = segments.detach(), scores.detach(), labels.detach()
    keep, kept_scores = _batched_nms_indices(
        segments,
        scores,
        labels,
        method=method,
        iou_threshold=iou_threshold,
        min_score=min_score,
        max_seg_num=max_seg_num,
        sigma=sigma,
        multiclass=multiclass,
    )
    out_segments = segments[keep]
    if not multiclass and method != "none" and voting_thresh > 0 and keep.numel() > 0:
        out_segments = _seg_voting(out_segments, segments, scores, float(voting_thresh))
    return out_segments, kept_scores.to(scores.dtype), labels[keep]


def postprocess_video(
    segments: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    fps: float,
    feat_stride: float,
    num_frames: float,
    duration: float,
    nms_cfg: Mapping[str, Any],
) -> dict[str, Tensor]:
    """NMS one video's candidates, then convert feature-grid positions to seconds.

    `segments` are in feature-grid units (level-0 steps). `nms_cfg` uses ActionFormer's
    ``test_cfg`` keys (nms_method, iou_threshold, min_score, max_seg_num, nms_sigma,
    multiclass_nms, voting_thresh); missing keys take `batched_nms`'s defaults and other keys
    (pre_nms_topk, ...) are ignored, so a whole test_cfg can be passed. Seconds are
    ``(t * feat_stride + 0.5 * num_frames) / fps`` clamped to ``[0, duration]``.

    Returns ``dict(segments=[K,2] seconds, scores=[K], labels=[K])`` as CPU tensors.
    """
    method = nms_cfg.get("nms_method", "soft")
    segs, out_scores, out_labels = batched_nms(
        segments,
        scores,
        labels,
        method=method,
        iou_threshold=float(nms_cfg.get("iou_threshold", 0.1)),
        min_score=float(nms_cfg.get("min_score", 0.001)),
        max_seg_num=int(nms_cfg.get("max_seg_num", 200)),
        sigma=float(nms_cfg.get("nms_sigma", 0.5)),
        multiclass=bool(nms_cfg.get("multiclass_nms", True)),
        voting_thresh=float(nms_cfg.get("voting_thresh", 0.75)),
    )
    out_dtype = torch.float64 if segs.dtype == torch.float64 else torch.float32
    seconds = (segs.cpu().to(torch.float64) * float(feat_stride) + 0.5 * float(num_frames)) / float(fps)
    seconds = seconds.clamp(min=0.0, max=float(duration)).to(out_dtype)
    return {"segments": seconds, "scores": out_scores.cpu(), "labels": out_labels.cpu()}
