"""Classification and regression heads, shared across pyramid levels."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


class ClsHead(nn.Module):
    """Per-level class logits [B, num_classes, T_l]; the output bias starts at the prior probability's logit."""

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
        return [self.out(self.trunk(x, mask), mask)[0] for x, mask in zip(feats, masks)]


class RegHead(nn.Module):
    """Per-level distances to start and end [B, 2, T_l], in units of the level's stride (>= 0)."""

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
        return [
            F.relu(scale(self.out(self.trunk(x, mask), mask)[0]))
            for scale, x, mask in zip(self.scales, feats, masks)
        ]
