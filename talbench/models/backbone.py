"""Projection + convolutional transformer backbone: a feature pyramid with strides 1, 2, 4, ..."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from talbench.models.blocks import LayerNorm, MaskedConv1D, TransformerBlock, sinusoid_table, zero_biases_


def embedding_widths(input_dim: int | Sequence[int], embd_dim: int | Sequence[int]) -> tuple[int, int]:
    """(input width, model width) of the backbone for these `input_dim` / `embd_dim` config values.

    A list `embd_dim` (one width per feature type) needs a list `input_dim` of the same length and
    gives the model width sum(embd_dim); a list `input_dim` with an int `embd_dim` is one
    concatenated input of width sum(input_dim).
    """
    if isinstance(embd_dim, (list, tuple)):
        if not isinstance(input_dim, (list, tuple)):
            raise ValueError(
                f"model.embd_dim is a list ({list(embd_dim)}): per-feature-type embedding widths need "
                f"input_dim to be a list of the same length, got input_dim {input_dim!r}"
            )
        if len(embd_dim) != len(input_dim):
            raise ValueError(
                f"model.embd_dim has {len(embd_dim)} entries ({list(embd_dim)}) but input_dim has "
                f"{len(input_dim)} feature types ({list(input_dim)}): they must match one to one"
            )
        if not embd_dim or any(int(d) <= 0 for d in embd_dim) or any(int(d) <= 0 for d in input_dim):
            raise ValueError(
                f"model.embd_dim {list(embd_dim)} and input_dim {list(input_dim)} must be positive widths"
            )
        return sum(int(d) for d in input_dim), sum(int(d) for d in embd_dim)
    total_in = sum(int(d) for d in input_dim) if isinstance(input_dim, (list, tuple)) else int(input_dim)
    return total_in, int(embd_dim)


class ConvTransformerBackbone(nn.Module):
    """Embedding convs, `n_stem` stride-1 transformer blocks, then `n_branch` blocks that each halve the length.

    Takes [B, T, C] inputs with [B, T, 1] masks (see blocks.py) and returns the stem output and every
    branch block's output: 1 + n_branch levels.
    `windows[l]` is the attention window of level l (level 0: the stem blocks).

    With lists for both `input_dim` and `embd_dim` (several feature types concatenated along
    channels), the input is first split into the types and each gets its own masked 1x1 conv
    input_dim[i] -> embd_dim[i] (no norm, no activation); the concatenated projections (width
    sum(embd_dim)) then go through the embedding convs, and everything after runs at that width.
    """

    def __init__(
        self,
        input_dim: int | Sequence[int],
        embd_dim: int | Sequence[int],
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
        in_width, width = embedding_widths(input_dim, embd_dim)
        # Per-feature-type projections: none (and no split) unless embd_dim is a list.
        self.split_dims: tuple[int, ...] = ()
        self.proj = nn.ModuleList()
        if isinstance(embd_dim, (list, tuple)):
            assert isinstance(input_dim, (list, tuple))
            self.split_dims = tuple(int(d) for d in input_dim)
            self.proj.extend(MaskedConv1D(int(c_in), int(c_out), 1) for c_in, c_out in zip(input_dim, embd_dim))
            in_width = width
        embd_dim = width
        self.embd = nn.ModuleList(
            MaskedConv1D(in_width if i == 0 else embd_dim, embd_dim, embd_kernel_size, bias=not embd_with_ln)
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
        if self.split_dims:
            if x.shape[-1] != sum(self.split_dims):
                raise ValueError(
                    f"input has {x.shape[-1]} channels, the feature types {list(self.split_dims)} "
                    f"need {sum(self.split_dims)}"
                )
            parts = x.split(self.split_dims, dim=-1)
            x = torch.cat([proj(part, mask)[0] for proj, part in zip(self.proj, parts)], dim=-1)
        for conv, norm in zip(self.embd, self.embd_norm):
            x, mask = conv(x, mask)
            x = F.relu(norm(x)) * mask
        if self.pos_embd is not None:
            x = x + self.positional_encoding(x.shape[1]).T.to(x.dtype) * mask
        for block in self.stem:
            x, mask = block(x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks
