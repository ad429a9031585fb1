"""Building blocks of ActionFormer on channels-last sequences.

Every tensor is [B, T, C] with a bool mask [B, T, 1] (True = a real step). Padded steps are
kept at exactly zero wherever they can reach a kernel wider than one step (a conv, a max-pool),
so a video's outputs do not depend on how much padding sits after it.

Channels last, not the original's [B, C, T]: LayerNorm over channels is then one native kernel
instead of seven elementwise passes, 1x1 convs are plain GEMMs, and oneDNN's convolutions run
faster on this layout (bench/bench_vs_reference.py). The parameters keep the original's shapes
(Conv1d weights [C_out, C_in, k], LayerNorm [1, C, 1]), so state dicts are unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def downsample_mask(mask: Tensor, stride: int) -> Tensor:
    """Nearest-neighbour downsampling of a [B, T, 1] mask: step i of the output is step i*stride."""
    return mask[:, ::stride] if stride > 1 else mask


def _bf16_compute(x: Tensor) -> bool:
    """Whether ops on x compute in bf16 (its dtype, or CPU autocast to bf16)."""
    if x.dtype == torch.bfloat16:
        return True
    kind = x.device.type
    return torch.is_autocast_enabled(kind) and torch.get_autocast_dtype(kind) == torch.bfloat16


class ChannelsLastConv1d(nn.Conv1d):
    """nn.Conv1d (same parameters and state dict) applied to [B, T, C] sequences.

    A 1x1 conv is a GEMM where GEMMs are the faster kernel (CUDA, bf16 on CPU); otherwise the conv
    runs as oneDNN's channels-last 2-D conv (on CPU in fp32 1.5x faster than GEMM or [B, C, T] conv).
    """

    def forward(self, x: Tensor) -> Tensor:
        pointwise = self.kernel_size[0] == 1 and self.stride[0] == 1 and self.groups == 1
        if pointwise and (x.is_cuda or _bf16_compute(x)):
            return F.linear(x, self.weight.view(self.out_channels, -1), self.bias)  # a view: no copy in backward
        if self._slow_bf16_backward(x):
            bias = None if self.bias is None else self.bias.float()
            with torch.autocast("cpu", enabled=False):
                return self._conv(x.float(), self.weight.float(), bias)
        return self._conv(x, self.weight, self.bias)

    def _slow_bf16_backward(self, x: Tensor) -> bool:
        """oneDNN's backward of a strided grouped conv in bf16 is 5-10x slower than in fp32 on CPU
        (a quarter of a training step's conv time at T=576); its forward is not."""
        grouped = self.groups > 1 and self.stride[0] > 1
        return grouped and not x.is_cuda and torch.is_grad_enabled() and _bf16_compute(x)

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        out = F.conv2d(x.transpose(1, 2).unsqueeze(2), weight.unsqueeze(2), bias,
                       stride=(1, self.stride[0]), padding=(0, self.padding[0]), groups=self.groups)  # type: ignore[index]
        return out.squeeze(2).transpose(1, 2).contiguous()  # a no-op unless x came in as [B, C, T]


def zero_biases_(module: nn.Module) -> None:
    """ActionFormer's init: every conv/linear bias starts at 0, weights keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)) and m.bias is not None:
            nn.init.zeros_(m.bias)


class MaskedConv1D(nn.Module):
    """Conv1d whose output is zeroed at padded steps; a strided conv also downsamples the mask."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"MaskedConv1D needs an odd kernel size, got {kernel_size}")
        self.stride = stride
        self.conv = ChannelsLastConv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=bias
        )

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[1] % self.stride != 0:
            raise ValueError(f"sequence length {x.shape[1]} is not divisible by the conv stride {self.stride}")
        out_mask = downsample_mask(mask, self.stride)
        return self.conv(x) * out_mask, out_mask


class LayerNorm(nn.Module):
    """LayerNorm over the channels of a [B, T, C] tensor, with a per-channel affine of the original's shape.

    Under bf16 autocast the input stays bf16 and the kernel accumulates its statistics in fp32.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, num_channels, 1))
        self.bias = nn.Parameter(torch.zeros(1, num_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weight.view(-1), self.bias.view(-1), self.eps)


class Scale(nn.Module):
    """A learnable scalar multiplier (one per pyramid level in the regression head)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Dropout(nn.Module):
    """nn.Dropout, with CPU masks drawn as 15-bit integers: 6x faster than bernoulli_ there.

    Each 63-bit random integer gives four 15-bit ones (the generator's cost is per draw). A step is
    dropped when its integer is below round(p * 2**15), so the drop probability is p rounded to a
    multiple of 2**-15 (0.1 -> 0.100006), and kept steps are scaled by the exact inverse of the keep
    probability. On CUDA it is F.dropout.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.cut = round(p * 2**15)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.cut == 0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, training=True)
        draws = torch.empty(-(-x.numel() // 4), dtype=torch.int64, device=x.device).random_()  # on [0, 2**63)
        bits = (draws.view(torch.int16)[: x.numel()] & 0x7FFF).view(x.shape)  # uniform on [0, 2**15)
        kept, dropped = x.new_tensor(2**15 / (2**15 - self.cut)), x.new_tensor(0.0)
        return x * torch.where(bits >= self.cut, kept, dropped)


def drop_path(x: Tensor, prob: float, training: bool) -> Tensor:
    """Stochastic depth: drop the whole residual branch per sample, rescale the kept ones."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep) / keep


class AffineDropPath(nn.Module):
    """LayerScale (a per-channel scale, initialised small so each block starts near identity) then drop path."""

    def __init__(self, num_channels: int, prob: float, init_scale: float = 1e-4) -> None:
        super().__init__()
        self.prob = prob
        self.scale = nn.Parameter(torch.full((1, num_channels, 1), init_scale))

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x * self.scale.view(-1), self.prob, self.training)


def band_mask(length: int, window: int, device: torch.device) -> Tensor:
    """[T, T] bool: query i may attend to key j when |i - j| <= window // 2."""
    idx = torch.arange(length, device=device)
    return (idx[:, None] - idx[None, :]).abs() <= window // 2


def attention_sdpa(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, window: int) -> Tensor:
    """Masked attention through the fused kernel; q, k, v [B, H, T, D], valid [B, T] bool.

    window <= 1 is global attention over the valid keys. A windowed query that is itself padded
    may also see padded keys: otherwise its row could be fully masked and softmax would give NaN
    (its output is zeroed by the caller anyway).
    """
    allowed = valid[:, None, None, :]
    if window > 1:
        allowed = band_mask(q.shape[2], window, q.device) & (allowed | ~valid[:, None, :, None])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


ATTENTION_BLOCK = 32  # queries per block of the windowed attention (tuned on CPU: bench/bench_attention.py)


def _key_spans(x: Tensor, half: int, block: int, pad_end: int) -> Tensor:
    """The keys (or values, or their masks as [B, 1, T, 1]) [B, H, T, D] each block of `block` queries
    sees: from `half` steps before the block to `half` after it, zero (False) outside [0, T):
    [B, H, n, block + 2 * half, D], half <= block. Three strided views concatenated, not `unfold`:
    its backward is several times slower."""
    b, h, t, d = x.shape
    n = (t + pad_end) // block
    padded = F.pad(x, [0, 0, half, half + pad_end + block])
    own = padded[:, :, half: half + n * block].view(b, h, n, block, d)
    before = padded[:, :, : n * block].view(b, h, n, block, d)[:, :, :, :half]
    after = padded[:, :, block + half: block + half + n * block].view(b, h, n, block, d)[:, :, :, :half]
    return torch.cat([before, own, after], dim=3)


def attention_banded(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, window: int, block: int = ATTENTION_BLOCK) -> Tensor:
    """Windowed attention with the same semantics as `attention_sdpa`, in O(T * (block + window)) memory.

    The queries are cut into blocks of `block` steps; each block scores, in one matmul, the keys
    from `window // 2` before its first query to `window // 2` after its last, and a band mask keeps
    each query's own window. Dense matmuls on blocks beat gathering every query's window
    (a [B, H, T, D, window] copy) by an order of magnitude on CPU, forward and backward.
    """
    half = window // 2
    b, h, t, d = q.shape
    block = max(min(block, t), half)
    n_blocks = -(-t // block)
    pad_end = n_blocks * block - t
    keys = _key_spans(k, half, block, pad_end).transpose(-1, -2)  # [B, H, n, D, block + 2 * half]
    values = _key_spans(v, half, block, pad_end)  # [B, H, n, block + 2 * half, D]
    queries = F.pad(q, [0, 0, 0, pad_end]).view(b, h, n_blocks, block, d)
    scores = torch.matmul(queries, keys) * d**-0.5  # [B, H, n, block, block + 2 * half]
    # key column c of a block sits c - half - r steps after its query r
    offset = torch.arange(block + 2 * half, device=q.device) - torch.arange(block, device=q.device)[:, None]
    in_band = (offset >= 0) & (offset <= 2 * half)  # [block, block + 2 * half]
    steps = torch.ones(1, 1, t, 1, dtype=torch.bool, device=q.device)
    in_video = _key_spans(steps, half, block, pad_end)[0, 0, ..., 0]  # [n, block + 2 * half]
    key_valid = _key_spans(valid[:, None, :, None], half, block, pad_end)[:, 0, ..., 0]  # [B, n, block + 2 * half]
    query_padded = ~F.pad(valid, [0, pad_end]).view(b, n_blocks, block, 1)
    allowed = in_band & in_video[:, None, :] & (key_valid[:, :, None, :] | query_padded)  # [B, n, block, block + 2 * half]
    # the most negative finite score, not -inf: the rows of the last block past the end see no key at
    # all, and their NaNs would reach the gradients through the matmuls even though they are cut off
    attn = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min).softmax(dim=-1, dtype=torch.float32)
    out = torch.matmul(attn.to(values.dtype), values)  # [B, H, n, block, D]
    return out.view(b, h, n_blocks * block, d)[:, :, :t]


class MaskedMultiHeadAttention(nn.Module):
    """Multi-head conv-attention: q, k, v come from a depthwise (strided) conv + LayerNorm, then 1x1 projections.

    `window` <= 1 gives global attention; otherwise each output step attends to the steps within
    window // 2 of it (at the output resolution). Padded keys are never attended to.
    """

    def __init__(self, dim: int, n_head: int, window: int, stride: int, proj_dropout: float) -> None:
        super().__init__()
        if dim % n_head != 0:
            raise ValueError(f"embedding dim {dim} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.window = window
        self.q_conv = MaskedConv1D(dim, dim, 3, stride=stride, groups=dim, bias=False)
        self.k_conv = MaskedConv1D(dim, dim, 3, stride=stride, groups=dim, bias=False)
        self.v_conv = MaskedConv1D(dim, dim, 3, stride=stride, groups=dim, bias=False)
        self.q_norm = LayerNorm(dim)
        self.k_norm = LayerNorm(dim)
        self.v_norm = LayerNorm(dim)
        self.q_proj = ChannelsLastConv1d(dim, dim, 1)
        self.k_proj = ChannelsLastConv1d(dim, dim, 1)
        self.v_proj = ChannelsLastConv1d(dim, dim, 1)
        self.out_proj = ChannelsLastConv1d(dim, dim, 1)
        self.proj_drop = Dropout(proj_dropout)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        return x.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # [B, H, T, D]

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        q, out_mask = self.q_conv(x, mask)
        k, _ = self.k_conv(x, mask)
        v, _ = self.v_conv(x, mask)
        q = self._heads(self.q_proj(self.q_norm(q)))
        k = self._heads(self.k_proj(self.k_norm(k)))
        v = self._heads(self.v_proj(self.v_norm(v)))
        valid = out_mask[..., 0]
        if self.window > 1:
            out = attention_banded(q, k, v, valid, self.window)
        else:
            out = attention_sdpa(q, k, v, valid, self.window)
        b, h, t, d = out.shape
        out = out.transpose(1, 2).reshape(b, t, h * d)
        return self.proj_drop(self.out_proj(out)) * out_mask, out_mask


class TransformerBlock(nn.Module):
    """Pre-LN transformer block on a masked sequence; stride 2 halves the length (skip path: max-pool)."""

    def __init__(
        self,
        dim: int,
        n_head: int,
        window: int,
        stride: int,
        dropout: float,
        droppath: float,
        mlp_ratio: int = 4,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"transformer blocks downsample by 1 or 2, got stride {stride}")
        self.ln1 = LayerNorm(dim)
        self.ln2 = LayerNorm(dim)
        self.attn = MaskedMultiHeadAttention(dim, n_head, window, stride, dropout)
        self.stride = stride
        self.mlp = nn.Sequential(
            ChannelsLastConv1d(dim, mlp_ratio * dim, 1),
            nn.GELU(),
            Dropout(dropout),
            ChannelsLastConv1d(mlp_ratio * dim, dim, 1),
            Dropout(dropout),
        )
        # As in the published code, LayerScale comes with drop path: with droppath 0 both branches are plain.
        self.drop_path_attn: nn.Module = AffineDropPath(dim, droppath) if droppath > 0 else nn.Identity()
        self.drop_path_mlp: nn.Module = AffineDropPath(dim, droppath) if droppath > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        # LayerNorm turns zeros into its bias: re-mask before the attention's convs see padded steps.
        attn, out_mask = self.attn(self.ln1(x) * mask, mask)
        skip = max_pool_halve(x) if self.stride == 2 else x
        out = skip * out_mask + self.drop_path_attn(attn)
        out = out + self.drop_path_mlp(self.mlp(self.ln2(out)) * out_mask)
        return out, out_mask


def max_pool_halve(x: Tensor) -> Tensor:
    """Max-pool of [B, T, C] over time, kernel 3, stride 2, padding 1 (the skip path of a halving block)."""
    pooled = F.max_pool2d(x.transpose(1, 2).unsqueeze(2), (1, 3), stride=(1, 2), padding=(0, 1))
    return pooled.squeeze(2).transpose(1, 2)


def sinusoid_table(dim: int, length: int) -> Tensor:
    """The standard sin/cos positional table as [dim, length], divided by sqrt(dim)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table.T / math.sqrt(dim)
