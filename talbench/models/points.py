"""Anchor points: one per step of every pyramid level, in level-0 feature-grid units."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def make_points(
    lengths: Sequence[int],
    strides: Sequence[int],
    regression_range: Sequence[Sequence[float]],
    device: torch.device | None = None,
) -> list[Tensor]:
    """Per level a [T_l, 4] tensor of (position, range_lo, range_hi, stride).

    Level l has T_l points at positions t * stride_l; each carries its level's regression range
    (absolute, in level-0 units) and its stride.
    """
    points = []
    for length, stride, (lo, hi) in zip(lengths, strides, regression_range, strict=True):
        pos = torch.arange(length, device=device, dtype=torch.float32) * stride
        info = torch.tensor([lo, hi, stride], device=device, dtype=torch.float32).expand(length, 3)
        points.append(torch.cat([pos[:, None], info], dim=1))
    return points
