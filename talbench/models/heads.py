"""Classification and regression heads, shared across pyramid levels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talbench.models.blocks import LayerNorm, MaskedConv1D, Scale, zero_biases_


class _Trunk(nn.Module):
    """(num_layers - 1) x [masked conv, LayerNorm, ReLU]."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, kernel_size: int, with_ln: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            MaskedConv1D(in_dim if i == 0 else dim, dim, kernel_size, bias=not with_ln) for i in range(num_layers - 1)
        )
        self.norms = nn.ModuleList(LayerNorm(dim) if with_ln else nn.Identity() for _ in range(num_layers - 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x, _ = conv(x, mask)
            x = F.relu(norm(x)) * mask
        return x


def concat_levels(feats: list[Tensor], masks: list[Tensor], gap: int) -> tuple[Tensor, Tensor]:
    """The pyramid ([B, T_l, C] levels) as one sequence, levels separated by `gap` padded (zero) steps.

    A masked conv of kernel 2 * gap + 1 then sees each level exactly as it would alone, and the
    heads run one conv per layer instead of one per layer and level (a 6-level pyramid: 6x fewer
    calls, the short levels no longer run at the low efficiency of tiny convs).
    """
    if gap == 0:
        return torch.cat(feats, dim=1), torch.cat(masks, dim=1)
    x_gap = feats[0].new_zeros(feats[0].shape[0], gap, feats[0].shape[2])
    m_gap = masks[0].new_zeros(masks[0].shape[0], gap, masks[0].shape[2])
    x = torch.cat([t for f in feats for t in (f, x_gap)][:-1], dim=1)
    return x, torch.cat([t for m in masks for t in (m, m_gap)][:-1], dim=1)


def split_levels(x: Tensor, lengths: list[int], gap: int) -> list[Tensor]:
    """Undo `concat_levels` on a head's output: per level [B, T_l, C]."""
    sizes = [n for t in lengths for n in (t, gap)][:-1]
    return list(x.split(sizes, dim=1)[::2])


def on_pyramid(trunk: _Trunk, out: MaskedConv1D, feats: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
    """A head (trunk, then output conv) over every level at once: per level [B, T_l, C_out]."""
    gap = out.conv.kernel_size[0] // 2
    x, mask = concat_levels(feats, masks, gap)
    return split_levels(out(trunk(x, mask), mask)[0], [f.shape[1] for f in feats], gap)


class ClsHead(nn.Module):
    """Per-level class logits [B, T_l, num_classes]; the output bias starts at the prior probability's logit."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        num_classes: int,
        num_layers: int,
        kernel_size: int,
        with_ln: bool,
        prior_prob: float,
        empty_cls: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.trunk = _Trunk(in_dim, dim, num_layers, kernel_size, with_ln)
        self.out = MaskedConv1D(dim, num_classes, kernel_size)
        zero_biases_(self)
        bias = self.out.conv.bias
        assert bias is not None
        # A small prior keeps the focal loss of the many background points from swamping early training.
        nn.init.constant_(bias, -math.log((1 - prior_prob) / prior_prob))
        if empty_cls:
            # Classes with no training instance should never fire.
            bias.data[list(empty_cls)] = -math.log((1 - 1e-6) / 1e-6)

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        return on_pyramid(self.trunk, self.out, feats, masks)


class RegHead(nn.Module):
    """Per-level distances to start and end [B, T_l, 2], in units of the level's stride (>= 0)."""

    def __init__(
        self, in_dim: int, dim: int, num_levels: int, num_layers: int, kernel_size: int, with_ln: bool
    ) -> None:
        super().__init__()
        self.trunk = _Trunk(in_dim, dim, num_layers, kernel_size, with_ln)
        self.out = MaskedConv1D(dim, 2, kernel_size)
        self.scales = nn.ModuleList(Scale() for _ in range(num_levels))
        zero_biases_(self)

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.scales):
            raise ValueError(f"expected {len(self.scales)} pyramid levels, got {len(feats)}")
        levels = on_pyramid(self.trunk, self.out, feats, masks)
        return [F.relu(scale(level)) for scale, level in zip(self.scales, levels)]
