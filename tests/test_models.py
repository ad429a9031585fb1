"""Unit tests of the ActionFormer model on tiny tensors."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from talbench.models import ActionFormer, build_model, pad_batch
from talbench.models.assignment import assign_labels
from talbench.models.blocks import (
    ChannelsLastConv1d,
    Dropout,
    MaskedConv1D,
    MaskedMultiHeadAttention,
    attention_banded,
    attention_sdpa,
    band_mask,
    sinusoid_table,
)
from talbench.models.heads import concat_levels, split_levels
from talbench.models.losses import ctr_diou_loss_1d, sigmoid_focal_loss
from talbench.models.points import make_points


def tiny_cfg(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "backbone_type": "convTransformer",
        "fpn_type": "identity",
        "backbone_arch": (2, 2, 5),
        "scale_factor": 2,
        "regression_range": [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]],
        "n_head": 4,
        "n_mha_win_size": 5,
        "embd_kernel_size": 3,
        "embd_dim": 16,
        "embd_with_ln": True,
        "fpn_dim": 16,
        "fpn_with_ln": True,
        "head_dim": 16,
        "head_kernel_size": 3,
        "head_num_layers": 3,
        "head_with_ln": True,
        "max_buffer_len_factor": 6.0,
        "use_abs_pe": False,
        "use_rel_pe": False,
        "input_dim": 8,
        "num_classes": 3,
        "max_seq_len": 128,
        "train_cfg": {
            "center_sample": "radius",
            "center_sample_radius": 1.5,
            "loss_weight": 1.0,
            "cls_prior_prob": 0.01,
            "init_loss_norm": 100,
            "clip_grad_l2norm": 1.0,
            "head_empty_cls": [],
            "dropout": 0.0,
            "droppath": 0.1,
            "label_smoothing": 0.0,
        },
        "test_cfg": {"pre_nms_thresh": 0.001, "pre_nms_topk": 2000, "duration_thresh": 0.05},
    }
    for key, value in overrides.items():
        if key in ("train_cfg", "test_cfg"):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def perturbed(model: ActionFormer) -> ActionFormer:
    """Random norms, LayerScales and biases: with the init's zeros and 1e-4s, masking bugs would hide."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim != 3 or p.shape[0] == 1:  # everything but conv weights
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
    return model


def dense_reference(q: Tensor, k: Tensor, v: Tensor, valid: Tensor, window: int) -> Tensor:
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = valid[:, None, None, :].expand_as(scores)
    if window > 1:
        allowed = allowed & band_mask(q.shape[2], window, q.device)
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


# ---------------------------------------------------------------- shapes and blocks


@pytest.mark.parametrize("arch", [(2, 2, 5), (2, 2, 7)])
def test_pyramid_shapes(arch: tuple[int, int, int]) -> None:
    levels = 1 + arch[2]
    ranges = [[0, 4]] + [[2**i, 2 ** (i + 1)] for i in range(2, levels)] + [[2**levels, 10000]]
    model = build_model(tiny_cfg(backbone_arch=arch, regression_range=ranges, n_mha_win_size=[5] * levels))
    t = 3 * model.max_div_factor
    assert model.max_div_factor == 2 ** (levels - 1)
    feats, masks = pad_batch([torch.randn(8, t - 3), torch.randn(8, 5)], model.max_div_factor)
    points, cls_logits, offsets, level_masks = model.forward_levels(feats, masks)
    assert len(points) == levels
    for level, (pts, cls, off, mask) in enumerate(zip(points, cls_logits, offsets, level_masks)):
        t_l = t // 2**level
        assert pts.shape == (t_l, 4) and cls.shape == (2, t_l, 3) and off.shape == (2, t_l, 2)
        assert mask.shape == (2, t_l)
        assert torch.equal(pts[:, 0], torch.arange(t_l) * 2.0**level)
        assert torch.equal(pts[:, 3], torch.full((t_l,), 2.0**level))
        assert (off >= 0).all()


def test_max_div_factor() -> None:
    # the coarsest stride: the blocked attention takes any length
    assert build_model(tiny_cfg(n_mha_win_size=19)).max_div_factor == 32
    assert build_model(tiny_cfg(n_mha_win_size=-1)).max_div_factor == 32
    # with absolute position encodings, the original's factor (its table is interpolated to the padded length)
    assert build_model(tiny_cfg(n_mha_win_size=19, use_abs_pe=True)).max_div_factor == 32 * 18
    assert build_model(tiny_cfg(n_mha_win_size=[9, 9, 9, 9, 1, 1], use_abs_pe=True)).max_div_factor == 8 * 8


def test_masked_conv_downsamples_mask() -> None:
    conv = MaskedConv1D(2, 3, 3, stride=2)
    mask = torch.tensor([[[True] * 5 + [False] * 3]]).transpose(1, 2)  # [B, T, 1]
    x = torch.randn(1, 8, 2)
    out, out_mask = conv(x, mask)
    assert out_mask[..., 0].tolist() == [[True, True, True, False]]
    assert out.shape == (1, 4, 3) and (out[:, 3] == 0).all()
    # the same conv as nn.Conv1d on [B, C, T]
    expected = F.conv1d(x.transpose(1, 2), conv.conv.weight, conv.conv.bias, stride=2, padding=1).transpose(1, 2)
    torch.testing.assert_close(out[:, :3], expected[:, :3])
    with pytest.raises(ValueError, match="divisible"):
        conv(torch.randn(1, 7, 2), mask[:, :7])


@pytest.mark.parametrize("kernel,stride,groups", [(1, 1, 1), (3, 1, 1), (3, 2, 1), (3, 2, 4)])
@pytest.mark.parametrize("bf16", [False, True])
def test_channels_last_conv_equals_conv1d(kernel: int, stride: int, groups: int, bf16: bool) -> None:
    """Same values and gradients as nn.Conv1d on the transposed input, on the GEMM and the conv path."""
    gen = torch.Generator().manual_seed(0)
    conv = ChannelsLastConv1d(8, 12, kernel, stride=stride, padding=kernel // 2, groups=groups)
    x = torch.randn(2, 16, 8, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
        ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, stride, kernel // 2, 1, groups).transpose(1, 2)
    assert out.shape == ref.shape and out.is_contiguous()
    tol = {"rtol": 2e-2, "atol": 2e-2} if bf16 else {}
    torch.testing.assert_close(out.float(), ref.float(), **tol)
    grads = torch.autograd.grad(out.float().square().sum(), [x, conv.weight])
    ref_grads = torch.autograd.grad(ref.float().square().sum(), [x, conv.weight])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **({"rtol": 5e-2, "atol": 5e-2} if bf16 else {}))


def test_strided_grouped_conv_trains_in_fp32_under_bf16_autocast() -> None:
    """oneDNN's bf16 backward of this conv is slow: with gradients it computes in fp32, exactly;
    without (inference) it stays bf16."""
    gen = torch.Generator().manual_seed(0)
    conv = ChannelsLastConv1d(8, 8, 3, stride=2, padding=1, groups=8)
    x = torch.randn(2, 16, 8, generator=gen, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x.bfloat16())
        with torch.no_grad():
            assert conv(x).dtype == torch.bfloat16
    ref = F.conv1d(x.bfloat16().float().transpose(1, 2), conv.weight, None, 2, 1, 1, 8).transpose(1, 2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref + conv.bias)
    torch.testing.assert_close(*(torch.autograd.grad(y.sum(), conv.weight)[0] for y in (out, ref)))


def same_candidates(x: dict[str, Tensor], y: dict[str, Tensor]) -> None:
    """Equal candidates up to fp32 rounding. Both lists are sorted by score, so two candidates whose
    scores differ by a rounding error may come in either order: the scores are compared as sorted
    vectors, the (label, start, end) rows as sets."""
    torch.testing.assert_close(x["scores"], y["scores"], rtol=1e-4, atol=1e-4)

    def rows(c: dict[str, Tensor]) -> Tensor:
        table = torch.cat([c["labels"][:, None].double(), c["segments"].double()], dim=1)
        for column in (2, 1, 0):  # lexicographic: label, then start, then end
            table = table[table[:, column].argsort(stable=True)]
        return table

    torch.testing.assert_close(rows(x), rows(y), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("length", "input_dim", "embd_dim"),
    [
        (37, 8, 16),
        (64, 8, 16),  # 64: alone it needs no padding at all
        (64, [3, 5], [4, 12]),  # per-type projections: an unmasked bias in the padding would show
    ],
)
def test_padding_does_not_change_outputs(length: int, input_dim: Any, embd_dim: Any) -> None:
    # max_seq_len covers every padded length: past it the positional table is stretched (by design).
    cfg = tiny_cfg(
        n_mha_win_size=[5, 5, 3, -1, -1, -1], use_abs_pe=True, max_seq_len=512, input_dim=input_dim, embd_dim=embd_dim
    )
    model = perturbed(build_model(cfg)).eval()
    assert len(model.backbone.proj) == (len(embd_dim) if isinstance(embd_dim, list) else 0)
    a, b = torch.randn(8, length), torch.randn(8, 150)
    alone = model(*pad_batch([a], model.max_div_factor))[0]
    batch = model(*pad_batch([a, b], model.max_div_factor, pad_to=400))
    assert pad_batch([a, b], model.max_div_factor, pad_to=400)[0].shape[-1] == 416
    assert len(alone["scores"]) > 0
    same_candidates(batch[0], alone)
    # and the raw per-level outputs on valid steps
    short = model.forward_levels(*pad_batch([a], model.max_div_factor))
    long = model.forward_levels(*pad_batch([a, b], model.max_div_factor))
    for cls_s, cls_l, off_s, off_l, m in zip(short[1], long[1], short[2], long[2], short[3]):
        valid, n = m[0], m.shape[1]
        torch.testing.assert_close(cls_l[0, :n][valid], cls_s[0][valid], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(off_l[0, :n][valid], off_s[0][valid], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("window", [1, 3, 5, 9, 40])
def test_local_attention_matches_dense_reference(window: int) -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 4) for _ in range(3))
    valid = torch.ones(2, 20, dtype=torch.bool)
    valid[1, 13:] = False
    expected = dense_reference(q, k, v, valid, window)
    rows = valid[:, None, :, None].expand_as(expected)  # padded queries: any finite value
    fused = attention_sdpa(q, k, v, valid, window)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused[rows], expected[rows], rtol=1e-5, atol=1e-5)
    if window > 1:
        banded = attention_banded(q, k, v, valid, window)
        assert torch.isfinite(banded).all()
        torch.testing.assert_close(banded, fused, rtol=1e-5, atol=1e-5)  # identical even on padded queries


@pytest.mark.parametrize("length,block", [(20, 1), (20, 3), (20, 8), (20, 64), (37, 16), (64, 32), (5, 4)])
@pytest.mark.parametrize("window", [3, 9, 19])
def test_blocked_attention_matches_fused_values_and_gradients(length: int, block: int, window: int) -> None:
    """Any block size, lengths that are not a multiple of it, windows wider than a block: the same
    outputs and the same (finite) gradients as the dense-mask kernel."""
    torch.manual_seed(0)
    qkv = [torch.randn(2, 3, length, 4, requires_grad=True) for _ in range(3)]
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, length // 2 + 1:] = False
    weight = torch.randn(2, 3, length, 4)  # a loss that reaches every output, padded queries included
    blocked = attention_banded(*qkv, valid, window, block)
    grads = torch.autograd.grad((blocked * weight).sum(), qkv)
    fused = attention_sdpa(*qkv, valid, window)
    expected = torch.autograd.grad((fused * weight).sum(), qkv)
    torch.testing.assert_close(blocked, fused, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_dropout_drops_p_and_keeps_the_mean() -> None:
    drop = Dropout(0.1).train()
    x = torch.ones(400, 500)
    torch.manual_seed(3)
    out = drop(x)
    dropped = (out == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 200k draws: sd 0.0007
    assert torch.allclose(out[out != 0], torch.tensor(2**15 / (2**15 - round(0.1 * 2**15))))
    assert abs(out.mean().item() - 1) < 0.01
    torch.manual_seed(3)
    assert torch.equal(drop(x), out)  # the dropout stream is torch's: seeded runs repeat
    assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    grad = torch.autograd.grad(Dropout(0.5).train()(x.requires_grad_()).sum(), x)[0]
    assert set(grad.unique().tolist()) <= {0.0, 2.0}
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_heads_on_the_concatenated_pyramid_equal_per_level_heads() -> None:
    """One conv over all levels (separated by zero gaps) gives each level exactly its own conv."""
    model = perturbed(build_model(tiny_cfg())).eval()
    gen = torch.Generator().manual_seed(1)
    lengths = [32, 16, 8, 4, 2, 1]
    feats = [torch.randn(2, t, 16, generator=gen) for t in lengths]
    masks = [torch.ones(2, t, 1, dtype=torch.bool) for t in lengths]
    for m in masks:
        m[1, m.shape[1] // 2 + 1:] = False
    feats = [f * m for f, m in zip(feats, masks)]
    with torch.no_grad():
        cls = model.cls_head(feats, masks)
        offsets = model.reg_head(feats, masks)
        for level, (f, m) in enumerate(zip(feats, masks)):
            alone_cls = model.cls_head.out(model.cls_head.trunk(f, m), m)[0]
            alone_reg = F.relu(model.reg_head.scales[level](model.reg_head.out(model.reg_head.trunk(f, m), m)[0]))
            torch.testing.assert_close(cls[level], alone_cls, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(offsets[level], alone_reg, rtol=1e-5, atol=1e-5)
    x, mask = concat_levels(feats, masks, gap=2)
    assert x.shape[1] == sum(lengths) + 2 * 5 and not mask[:, 32:34].any()
    assert all(torch.equal(a, b) for a, b in zip(split_levels(x, lengths, 2), feats))


def test_attention_module_has_no_nan_for_far_padded_queries() -> None:
    attn = MaskedMultiHeadAttention(8, 2, window=3, stride=2, proj_dropout=0.0)
    mask = torch.zeros(1, 32, 1, dtype=torch.bool)
    mask[:, :4] = True
    out, out_mask = attn(torch.randn(1, 32, 8) * mask, mask)
    assert out.shape == (1, 16, 8) and out_mask.sum() == 2
    assert torch.isfinite(out).all() and (out[:, 2:] == 0).all()


# ---------------------------------------------------------------- positional encoding


def test_abs_pe_table_and_interpolation() -> None:
    table = sinusoid_table(6, 10)
    assert table.shape == (6, 10)
    pos = torch.arange(10.0)
    torch.testing.assert_close(table[0], torch.sin(pos) / math.sqrt(6))
    torch.testing.assert_close(table[1], torch.cos(pos) / math.sqrt(6))
    torch.testing.assert_close(table[5], torch.cos(pos * 10000 ** (-4 / 6)) / math.sqrt(6))

    model = build_model(tiny_cfg(use_abs_pe=True, max_seq_len=64, n_mha_win_size=-1)).eval()
    pe = model.backbone.positional_encoding
    assert torch.equal(pe(40), model.backbone.pos_embd[:, :40])
    stretched = pe(128)
    assert stretched.shape == (16, 128)
    torch.testing.assert_close(stretched, F.interpolate(model.backbone.pos_embd[None], 128, mode="linear")[0])
    torch.testing.assert_close(stretched[:, 0], model.backbone.pos_embd[:, 0])  # ends stay put
    torch.testing.assert_close(stretched[:, -1], model.backbone.pos_embd[:, -1])
    out = model(*pad_batch([torch.randn(8, 120)], model.max_div_factor))  # T = 128 > max_seq_len
    assert len(out) == 1


# ---------------------------------------------------------------- label assignment


def one_level(n: int, stride: int = 1, lo: float = 0.0, hi: float = 1e4) -> torch.Tensor:
    return make_points([n], [stride], [(lo, hi)])[0]


def assign(points: torch.Tensor, segs: list[list[float]], labels: list[int], center: str = "radius"):
    cls, reg = assign_labels(
        points, [torch.tensor(segs).reshape(-1, 2)], [torch.tensor(labels, dtype=torch.long)], 4, center, 1.5
    )
    return cls[0], reg[0]


def positives(cls: torch.Tensor) -> list[int]:
    return (cls.sum(-1) > 0).nonzero()[:, 0].tolist()


def test_assignment_centre_sampling_radius_and_clipping() -> None:
    pts = one_level(12)
    cls, reg = assign(pts, [[2.0, 8.0]], [2])
    assert positives(cls) == [4, 5, 6]  # strictly inside [5 - 1.5, 5 + 1.5]
    assert cls[5].tolist() == [0, 0, 1, 0]
    assert reg[4].tolist() == [2.0, 4.0]
    cls, _ = assign(pts, [[2.0, 8.0]], [2], center="none")
    assert positives(cls) == [3, 4, 5, 6, 7]  # strictly inside the segment
    cls, _ = assign(pts, [[2.0, 4.0]], [0])  # the radius window [1.5, 4.5] is clipped to the segment
    assert positives(cls) == [3]
    cls, _ = assign(pts, [[2.0, 4.5]], [0])  # clipped to [2, 4.5]: not 2 (on the bound), 3 and 4
    assert positives(cls) == [3, 4]


def test_assignment_radius_scales_with_stride() -> None:
    pts = make_points([8], [4], [(0.0, 1e4)])[0]  # positions 0, 4, ..., 28
    cls, reg = assign(pts, [[0.0, 40.0]], [1])
    assert positives(cls) == [4, 5, 6]  # 16, 20, 24 strictly inside [20 - 6, 20 + 6]
    assert reg[4].tolist() == [16 / 4, 24 / 4]  # in units of the stride


def test_assignment_regression_range() -> None:
    cls, _ = assign(one_level(12, lo=0, hi=2), [[2.0, 8.0]], [1], center="none")
    assert positives(cls) == []  # the smallest max-distance is 3
    cls, _ = assign(one_level(12, lo=3, hi=4), [[2.0, 8.0]], [1], center="none")
    assert positives(cls) == [4, 5, 6]  # max(left, right) in [3, 4], both ends inclusive
    cls, _ = assign(one_level(12, lo=0, hi=3), [[2.0, 8.0]], [1], center="none")
    assert positives(cls) == [5]


def test_assignment_shortest_wins_and_ties_are_multi_hot() -> None:
    pts = one_level(12)
    cls, reg = assign(pts, [[0.0, 10.0], [4.0, 6.0]], [0, 1], center="none")
    assert cls[5].tolist() == [0, 1, 0, 0]
    assert reg[5].tolist() == [1.0, 1.0]
    assert cls[2].tolist() == [1, 0, 0, 0]  # only the long one covers 2
    segs = [[0.0, 10.0], [4.0004, 6.0], [3.9998, 6.0], [3.998, 6.0]]
    cls, reg = assign(pts, segs, [0, 1, 2, 3], center="none")
    assert cls[5].tolist() == [0, 1, 1, 0]  # 2.0002 is within 1e-3 of the shortest (1.9996), 2.002 is not
    torch.testing.assert_close(reg[5], torch.tensor([1 - 0.0004, 1.0]))  # regression from the shortest
    cls, _ = assign(pts, [[4.0, 6.0], [4.0, 6.0]], [3, 3], center="none")
    assert cls[5].tolist() == [0, 0, 0, 1]  # same class twice: clamped to 1


def test_assignment_batch_with_an_empty_video() -> None:
    pts = torch.cat(make_points([12, 6], [1, 2], [(0.0, 2.0), (2.0, 1e4)]))
    cls, reg = assign_labels(
        pts,
        [torch.tensor([[2.0, 8.0], [0.0, 1.0]]), torch.zeros(0, 2)],
        [torch.tensor([1, 3]), torch.zeros(0, dtype=torch.long)],
        4,
        "radius",
        1.5,
    )
    assert cls.shape == (2, 18, 4) and reg.shape == (2, 18, 2)
    assert cls[1].sum() == 0
    # level 0: 4, 5, 6 are central but reach 3 or 4 > 2; level 1 (stride 2, radius 3): positions 4 and 6
    assert positives(cls[0]) == [12 + 2, 12 + 3]
    assert cls[0, 14].tolist() == [0, 1, 0, 0]
    assert reg[0, 14].tolist() == [1.0, 2.0]
    assert assign_labels(pts, [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.long)], 4, "none", 1.5)[0].sum() == 0


# ---------------------------------------------------------------- losses


def test_focal_loss_values() -> None:
    log2 = math.log(2)
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor((0.25 + 0.75) * 0.25 * log2))
    p = torch.sigmoid(torch.tensor(2.0))
    expected = 0.25 * -torch.log(p) * (1 - p) ** 2
    torch.testing.assert_close(sigmoid_focal_loss(torch.tensor([2.0]), torch.tensor([1.0])), expected)


def test_diou_loss_values() -> None:
    pred = torch.tensor([[1.0, 3.0], [2.0, 0.0], [1.0, 1.0], [1.0, 3.0]])
    target = torch.tensor([[1.0, 3.0], [0.0, 2.0], [2.0, 2.0], [3.0, 1.0]])
    per_row = [ctr_diou_loss_1d(pred[i : i + 1], target[i : i + 1]).item() for i in range(4)]
    # perfect; touching equal-length segments (iou 0, centres 2 apart in an enclosing length of 4);
    # concentric (iou 1/2); same length shifted (iou 1/3, centre distance 2, enclosing 6)
    assert per_row == pytest.approx([0.0, 1.25, 0.5, 1 - 1 / 3 + 1 / 9])
    assert ctr_diou_loss_1d(pred, target).item() == pytest.approx(sum(per_row))


# ---------------------------------------------------------------- the model's losses and init


def synthetic_batch(model: ActionFormer, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = (100, 64)
    gts = [torch.tensor([[10.0, 20.0], [40.0, 80.0]]), torch.tensor([[5.0, 9.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    feats = []
    for t, segs, labs in zip(lengths, gts, labels):
        f = 0.1 * torch.randn(8, t, generator=gen)
        for (s, e), c in zip(segs.tolist(), labs.tolist()):
            f[c, int(s) : int(e) + 1] += 1.0
        feats.append(f)
    return (*pad_batch(feats, model.max_div_factor, pad_to=model.max_seq_len), gts, labels)


def test_loss_normaliser_ema() -> None:
    model = build_model(tiny_cfg()).train()
    feats, masks, gts, labels = synthetic_batch(model)
    cls_t, _ = assign_labels(torch.cat(model.forward_levels(feats, masks)[0]), gts, labels, 3, "radius", 1.5)
    num_pos = int((cls_t.sum(-1) > 0).sum())
    assert num_pos > 0
    losses = model(feats, masks, gts, labels)
    assert model.loss_normalizer.item() == pytest.approx(0.9 * 100 + 0.1 * num_pos)
    assert set(losses) == {"cls_loss", "reg_loss", "final_loss"}
    torch.testing.assert_close(losses["final_loss"], losses["cls_loss"] + losses["reg_loss"])
    assert "loss_normalizer" in model.state_dict()

    empty = [torch.zeros(0, 2), torch.zeros(0, 2)]
    no_labels = [torch.zeros(0, dtype=torch.long)] * 2
    before = model.loss_normalizer.item()
    losses = model(feats, masks, empty, no_labels)
    assert model.loss_normalizer.item() == pytest.approx(0.9 * before + 0.1)  # max(num_pos, 1)
    assert losses["reg_loss"].item() == 0 and losses["reg_loss"].requires_grad
    losses["final_loss"].backward()


def test_auto_balanced_loss_weight() -> None:
    model = build_model(tiny_cfg(train_cfg={"loss_weight": -1})).train()
    feats, masks, gts, labels = synthetic_batch(model)
    losses = model(feats, masks, gts, labels)
    cls_loss, reg_loss = losses["cls_loss"].item(), losses["reg_loss"].item()
    assert losses["final_loss"].item() == pytest.approx(cls_loss + cls_loss / max(reg_loss, 0.01) * reg_loss)


def test_cls_prior_and_empty_class_bias() -> None:
    model = build_model(tiny_cfg(num_classes=5, train_cfg={"head_empty_cls": [1, 3]}))
    bias = model.cls_head.out.conv.bias
    prior, empty = -math.log(0.99 / 0.01), -math.log((1 - 1e-6) / 1e-6)
    torch.testing.assert_close(bias, torch.tensor([prior, empty, prior, empty, prior]))
    assert (model.reg_head.out.conv.bias == 0).all() and (model.backbone.embd[0].conv.bias is None)
    assert all(s.scale.item() == 1.0 for s in model.reg_head.scales)


def test_optimisation_reduces_the_loss() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(train_cfg={"droppath": 0.0})).train()
    feats, masks, gts, labels = synthetic_batch(model)
    model(feats, masks, gts, labels)
    # Hold the normaliser at its fixed point so that the loss values compare across steps.
    num_pos = (model.loss_normalizer.item() - 90.0) / 0.1
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(15):
        model.loss_normalizer.fill_(num_pos)
        loss = model(feats, masks, gts, labels)["final_loss"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0]


def test_candidates_decode_segments() -> None:
    model = build_model(tiny_cfg(test_cfg={"pre_nms_topk": 7})).eval()
    feats, masks = pad_batch([torch.randn(8, 50)], model.max_div_factor)
    points, cls_logits, offsets, level_masks = model.forward_levels(feats, masks)
    cands = model.candidates(points, cls_logits, offsets, level_masks)[0]
    assert len(cands["scores"]) <= 7 * len(points)
    assert (cands["segments"][:, 1] - cands["segments"][:, 0] > 0.05).all()
    assert ((cands["labels"] >= 0) & (cands["labels"] < 3)).all()
    # with zero offsets every segment has length 0 and is dropped
    zero = [torch.zeros_like(o) for o in offsets]
    assert len(model.candidates(points, cls_logits, zero, level_masks)[0]["scores"]) == 0
    # a known point: level 2 (stride 4), step 3, class 1, offsets (1.5, 2) -> (12 - 6, 12 + 8)
    logits = [torch.full_like(c, -20.0) for c in cls_logits]
    logits[2][0, 3, 1] = 5.0
    offs = [torch.ones_like(o) for o in offsets]
    offs[2][0, 3] = torch.tensor([1.5, 2.0])
    out = model.candidates(points, logits, offs, level_masks)[0]
    assert out["segments"].tolist() == [[6.0, 20.0]] and out["labels"].tolist() == [1]
    assert out["scores"].item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item())


# ---------------------------------------------------------------- config handling


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone_type": "conv"}, "backbone_type"),
        ({"fpn_type": "fpn"}, "fpn_type"),
        ({"fpn_dim": 32}, "fpn_dim"),
        ({"use_rel_pe": True}, "use_rel_pe"),
        ({"scale_factor": 3}, "scale_factor"),
        ({"n_mha_win_size": [5, 5]}, "n_mha_win_size"),
        ({"regression_range": [[0, 4]]}, "regression_range"),
        ({"n_head": 3}, "n_head"),
        ({"train_cfg": {"center_sample": "box"}}, "center_sample"),
        # per-feature-type embedding widths
        ({"embd_dim": [8, 8]}, r"model\.embd_dim is a list"),  # input_dim is an int
        ({"input_dim": [4, 4], "embd_dim": [8, 4, 4]}, r"model\.embd_dim has 3 entries .* input_dim has 2"),
        ({"input_dim": [4, 4], "embd_dim": [8]}, r"model\.embd_dim has 1 entries"),
        ({"input_dim": [4, 4], "embd_dim": [8, 16], "fpn_dim": 16}, r"fpn_dim \(16\) must equal model\.embd_dim \(24"),
    ],
)
def test_unsupported_config_is_a_clear_error(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model = build_model(tiny_cfg(**overrides)).train()
        model(*synthetic_batch(model))


def test_input_dim_list_and_unpadded_input() -> None:
    model = build_model(tiny_cfg(input_dim=[5, 3]))  # an int embd_dim: one concatenated input, no projections
    assert model.backbone.embd[0].conv.in_channels == 8
    assert len(model.backbone.proj) == 0 and not any(k.startswith("backbone.proj") for k in model.state_dict())
    with pytest.raises(ValueError, match="max_div_factor"):
        model(torch.randn(1, 8, 30), torch.ones(1, 1, 30, dtype=torch.bool))


def test_state_dict_round_trip() -> None:
    model = build_model(tiny_cfg())
    clone = build_model(tiny_cfg())
    model.loss_normalizer.fill_(42.0)
    clone.load_state_dict(copy.deepcopy(model.state_dict()))
    assert clone.loss_normalizer.item() == 42.0


# ---------------------------------------------------------------- several feature types (the Ego4D configs)


def multi_feature_cfg(**overrides: Any) -> dict[str, Any]:
    """Three feature types with their own embedding widths, model width 8 + 8 + 16 = 32."""
    cfg = {"input_dim": [12, 8, 4], "embd_dim": [8, 8, 16], "fpn_dim": 32, "head_dim": 32, "n_head": 4}
    return tiny_cfg(**{**cfg, **overrides})


def test_per_feature_type_projection() -> None:
    model = perturbed(build_model(multi_feature_cfg(use_abs_pe=True))).eval()
    backbone = model.backbone
    assert backbone.split_dims == (12, 8, 4)
    assert [(p.conv.in_channels, p.conv.out_channels, p.conv.kernel_size) for p in backbone.proj] == [
        (12, 8, (1,)),
        (8, 8, (1,)),
        (4, 16, (1,)),
    ]
    assert backbone.embd[0].conv.in_channels == 32 and backbone.embd[0].conv.out_channels == 32
    assert backbone.pos_embd is not None and backbone.pos_embd.shape[0] == 32
    assert all(norm.weight.shape[1] == 32 for norm in model.neck.norms)
    assert model.cls_head.trunk.convs[0].conv.in_channels == 32
    assert model.reg_head.trunk.convs[0].conv.in_channels == 32
    assert all(p.conv.bias is not None for p in build_model(multi_feature_cfg()).backbone.proj)
    assert all((p.conv.bias == 0).all() for p in build_model(multi_feature_cfg()).backbone.proj)  # the init

    # What the embedding convs see: each type's own 1x1 conv, masked, concatenated (no norm, no activation).
    seen: list[Tensor] = []
    handle = backbone.embd[0].register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    feats, masks = pad_batch([torch.randn(24, 50), torch.randn(24, 20)], model.max_div_factor)
    with torch.no_grad():
        model.forward_levels(feats, masks)
    handle.remove()
    parts = feats.split([12, 8, 4], dim=1)
    expected = torch.cat(
        [F.conv1d(part, p.conv.weight, p.conv.bias) * masks for part, p in zip(parts, backbone.proj)], dim=1
    )
    torch.testing.assert_close(seen[0], expected.transpose(1, 2))  # the blocks run channels last
    assert (seen[0][1, 20:] == 0).all() and (seen[0][1, :20] < 0).any()  # masked, not ReLU'd

    with pytest.raises(ValueError, match="channels"):
        model.forward_levels(feats[:, :20], masks)


def test_per_feature_type_model_trains_and_infers() -> None:
    torch.manual_seed(0)
    model = build_model(multi_feature_cfg()).train()
    gen = torch.Generator().manual_seed(1)
    feats, masks = pad_batch([torch.randn(24, 100, generator=gen), torch.randn(24, 64, generator=gen)], 32)
    gts = [torch.tensor([[10.0, 20.0], [40.0, 80.0]]), torch.tensor([[5.0, 9.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    losses = model(feats, masks, gts, labels)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["final_loss"].backward()
    for proj in model.backbone.proj:  # every type's projection gets a gradient
        assert proj.conv.weight.grad is not None and proj.conv.weight.grad.abs().sum() > 0
    out = model.eval()(feats, masks)
    assert len(out) == 2 and all(len(o["scores"]) > 0 for o in out)


def ego4d_published_cfg() -> dict[str, Any]:
    """configs/ego4d_slowfast_omnivore_egovlp.yaml of the original release (model section + dataset widths)."""
    return tiny_cfg(
        input_dim=[2304, 1536, 256],
        num_classes=110,
        max_seq_len=1024,
        backbone_arch=[2, 2, 6],
        regression_range=[[0, 4], [2, 8], [4, 16], [8, 32], [16, 64], [32, 128], [64, 10000]],
        n_mha_win_size=9,
        n_head=16,
        embd_dim=[384, 384, 256],
        fpn_dim=1024,
        head_dim=1024,
        use_abs_pe=True,
        train_cfg={"init_loss_norm": 100, "dropout": 0.1, "droppath": 0.1},
        test_cfg={"pre_nms_topk": 5000},
    )


def test_published_ego4d_config_builds_and_runs() -> None:
    torch.manual_seed(0)
    model = build_model(ego4d_published_cfg())
    assert len(model.strides) == 7 and model.strides[-1] == 64
    assert model.max_div_factor == 64 * 8  # window 9 on the stride-64 level
    backbone = model.backbone
    assert [(p.conv.in_channels, p.conv.out_channels) for p in backbone.proj] == [(2304, 384), (1536, 384), (256, 256)]
    assert backbone.embd[0].conv.in_channels == 1024 and backbone.embd[1].conv.out_channels == 1024
    assert backbone.pos_embd is not None and backbone.pos_embd.shape == (1024, 1024)
    assert all(norm.weight.shape[1] == 1024 for norm in model.neck.norms)
    assert model.cls_head.trunk.convs[0].conv.in_channels == 1024 and model.cls_head.out.conv.out_channels == 110

    # The tiniest valid T: one video of 300 steps padded to 512.
    feats, masks = pad_batch([torch.randn(4096, 300)], model.max_div_factor)
    assert feats.shape == (1, 4096, 512)
    with torch.no_grad():
        losses = model.train()(feats, masks, [torch.tensor([[10.0, 40.0]])], [torch.tensor([3])])
        assert set(losses) == {"cls_loss", "reg_loss", "final_loss"}
        assert all(torch.isfinite(v) for v in losses.values())
        points, cls_logits, offsets, level_masks = model.eval().forward_levels(feats, masks)
        assert len(points) == 7
        assert [c.shape for c in cls_logits] == [(1, 512 // 2**level, 110) for level in range(7)]
        out = model.candidates(points, cls_logits, offsets, level_masks)
    assert len(out) == 1 and len(out[0]["scores"]) > 0
    assert (out[0]["segments"][:, 1] > out[0]["segments"][:, 0]).all()
