"""Projection + convolutional transformer backbone: a feature pyramid with strides 1, 2, 4, ..."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from talbench.models.blocks import LayerNorm, MaskedConv1D, TransformerBlock, sinusoid_table, zero_biases_


class ConvTransformerBackbone(nn.Module):
    """Embedding convs, `n_stem` stride-1 transformer blocks, then `n_branch` blocks that each halve the length.

    Returns the stem output and every branch block's output: 1 + n_branch levels.
    `windows[l]` is the attention window of level l (level 0: the stem blocks).
    """

    def __init__(
        self,
        input_dim: int,
        embd_dim: int,
        n_head: int,
        embd_kernel_size: int,
        arch: tuple[int, int, int],
        windows: Sequence[int],
        max_seq_len: int,
        embd_with_ln: bool,
        use_abs_pe: bool,
        dropout: float,
        droppath: float,
    ) -> None:
        super().__init__()
        n_embd, n_stem, n_branch = arch
        if len(windows) != 1 + n_branch:
            raise ValueError(f"need one attention window per level ({1 + n_branch}), got {len(windows)}")
        self.embd = nn.ModuleList(
            MaskedConv1D(input_dim if i == 0 else embd_dim, embd_dim, embd_kernel_size, bias=not embd_with_ln)
            for i in range(n_embd)
        )
        self.embd_norm = nn.ModuleList(LayerNorm(embd_dim) if embd_with_ln else nn.Identity() for _ in range(n_embd))
        self.max_seq_len = max_seq_len
        if use_abs_pe:
            self.register_buffer("pos_embd", sinusoid_table(embd_dim, max_seq_len), persistent=False)
        else:
            self.pos_embd: Tensor | None = None
        self.stem = nn.ModuleList(
            TransformerBlock(embd_dim, n_head, windows[0], 1, dropout, droppath) for _ in range(n_stem)
        )
        self.branch = nn.ModuleList(
            TransformerBlock(embd_dim, n_head, windows[1 + i], 2, dropout, droppath) for i in range(n_branch)
        )
        zero_biases_(self)

    def positional_encoding(self, length: int) -> Tensor:
        """[embd_dim, length]: the table itself, or (past max_seq_len) the table stretched linearly."""
        assert self.pos_embd is not None
        if length <= self.max_seq_len:
            return self.pos_embd[:, :length]
        return F.interpolate(self.pos_embd[None], size=length, mode="linear", align_corners=False)[0]

    def forward(self, x: Tensor, mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        for conv, norm in zip(self.embd, self.embd_norm):
            x, mask = conv(x, mask)
            x = F.relu(norm(x)) * mask
        if self.pos_embd is not None:
            x = x + self.positional_encoding(x.shape[-1]).to(x.dtype) * mask
        for block in self.stem:
            x, mask = block(x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks
