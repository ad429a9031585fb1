"""Label assignment: which ground-truth segment (and class) each anchor point is responsible for."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def assign_labels(
    points: Tensor,
    gt_segments: list[Tensor],
    gt_labels: list[Tensor],
    num_classes: int,
    center_sample: str,
    center_sample_radius: float,
) -> tuple[Tensor, Tensor]:
    """Targets for every point of every video, vectorised over points x segments (videos padded to the most segments).

    points: [P, 4] (position, range_lo, range_hi, stride), all levels concatenated.
    gt_segments[i]: [N_i, 2] (start, end) in level-0 grid units; gt_labels[i]: [N_i] class ids.
    Returns cls targets [B, P, num_classes] (multi-hot, 0/1) and regression targets [B, P, 2]
    (distances to start and end of the point's segment, in units of its stride; arbitrary where
    the point has no segment).
    """
    if center_sample not in ("radius", "none"):
        raise ValueError(f"center_sample must be 'radius' or 'none', got {center_sample!r}")
    batch = len(gt_segments)
    n_max = max(1, max(len(s) for s in gt_segments))  # at least one (never-qualifying) slot keeps min() defined
    segs = points.new_zeros(batch, n_max, 2)
    labels = torch.zeros(batch, n_max, dtype=torch.long, device=points.device)
    present = torch.zeros(batch, n_max, dtype=torch.bool, device=points.device)
    for i, (s, lab) in enumerate(zip(gt_segments, gt_labels, strict=True)):
        segs[i, : len(s)] = s
        labels[i, : len(s)] = lab
        present[i, : len(s)] = True

    pos, lo, hi, stride = (points[:, j, None] for j in range(4))  # each [P, 1]
    start, end = segs[:, None, :, 0], segs[:, None, :, 1]  # [B, 1, N]
    left, right = pos - start, end - pos  # [B, P, N]

    if center_sample == "radius":
        centre = 0.5 * (start + end)
        inner_left = pos - torch.maximum(centre - center_sample_radius * stride, start)
        inner_right = torch.minimum(centre + center_sample_radius * stride, end) - pos
        inside = torch.minimum(inner_left, inner_right) > 0
    else:
        inside = torch.minimum(left, right) > 0
    reach = torch.maximum(left, right)
    in_range = (reach >= lo) & (reach <= hi)

    lengths = (end - start).expand_as(left)
    lengths = lengths.masked_fill(~(inside & in_range & present[:, None, :]), float("inf"))
    min_len, min_idx = lengths.min(dim=2)  # [B, P]
    # Segments (nearly) as short as the shortest all lend their class: overlapping actions give multi-hot targets.
    winners = (lengths <= min_len[..., None] + 1e-3) & torch.isfinite(lengths)
    one_hot = F.one_hot(labels, num_classes).to(points.dtype)  # [B, N, C]
    cls_targets = torch.bmm(winners.to(points.dtype), one_hot).clamp(max=1.0)

    idx = min_idx[..., None]
    reg_targets = torch.stack([left.gather(2, idx)[..., 0], right.gather(2, idx)[..., 0]], dim=-1)
    return cls_targets, reg_targets / points[:, 3, None]
