"""The 'identity' FPN neck: the backbone's pyramid, each level normalised on its own."""

from __future__ import annotations

from torch import Tensor, nn

from talbench.models.blocks import LayerNorm


class IdentityFPN(nn.Module):
    """One channel LayerNorm per level (or none), re-masked so padded steps stay zero for the heads' convs."""

    def __init__(self, num_levels: int, dim: int, with_ln: bool) -> None:
        super().__init__()
        self.norms = nn.ModuleList(LayerNorm(dim) if with_ln else nn.Identity() for _ in range(num_levels))

    def forward(self, feats: list[Tensor], masks: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        if len(feats) != len(self.norms):
            raise ValueError(f"expected {len(self.norms)} pyramid levels, got {len(feats)}")
        return [norm(x) * mask for norm, x, mask in zip(self.norms, feats, masks)], masks
