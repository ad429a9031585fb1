"""The ActionFormer meta-architecture: backbone, neck, anchor points, heads, losses and candidate decoding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from talbench.models.assignment import assign_labels
from talbench.models.backbone import ConvTransformerBackbone, embedding_widths
from talbench.models.heads import ClsHead, RegHead
from talbench.models.losses import ctr_diou_loss_1d, sigmoid_focal_loss
from talbench.models.neck import IdentityFPN
from talbench.models.points import make_points

LOSS_NORM_MOMENTUM = 0.9


def _per_level(value: int | Sequence[int], num_levels: int) -> list[int]:
    if isinstance(value, int):
        return [value] * num_levels
    values = [int(v) for v in value]
    if len(values) != num_levels:
        raise ValueError(f"model.n_mha_win_size has {len(values)} entries, the pyramid has {num_levels} levels")
    return values


def _check_supported(cfg: Mapping[str, Any]) -> None:
    if cfg["backbone_type"] != "convTransformer":
        raise ValueError(f"model.backbone_type {cfg['backbone_type']!r} is not supported (only 'convTransformer')")
    if cfg["fpn_type"] != "identity":
        raise ValueError(f"model.fpn_type {cfg['fpn_type']!r} is not supported (only 'identity')")
    _, width = embedding_widths(cfg["input_dim"], cfg["embd_dim"])
    if cfg["fpn_dim"] != width:
        summed = ""
        if isinstance(cfg["embd_dim"], (list, tuple)):
            summed = f" = sum of {list(cfg['embd_dim'])}"
        raise ValueError(
            f"the identity FPN keeps the backbone's channels: model.fpn_dim ({cfg['fpn_dim']}) "
            f"must equal model.embd_dim ({width}{summed})"
        )
    if cfg["use_rel_pe"]:
        raise ValueError("model.use_rel_pe is not supported (relative position encoding is not implemented)")
    if cfg["scale_factor"] != 2:
        raise ValueError(f"model.scale_factor must be 2 (branch blocks halve the length), got {cfg['scale_factor']}")
    if cfg["train_cfg"]["center_sample"] not in ("radius", "none"):
        raise ValueError(f"model.train_cfg.center_sample must be 'radius' or 'none', got {cfg['train_cfg']['center_sample']!r}")
    if len(cfg["backbone_arch"]) != 3:
        raise ValueError(f"model.backbone_arch must have 3 entries, got {cfg['backbone_arch']}")


class ActionFormer(nn.Module):
    """Anchor-free temporal action localisation on a multi-scale transformer pyramid.

    Built from the YAML `model:` section (see `build_model`). Inputs are padded batches: feats
    [B, C, T] and masks [B, 1, T] (True = real step), T a multiple of `max_div_factor` (`pad_batch` pads so).
    """

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        super().__init__()
        _check_supported(cfg)
        train_cfg, test_cfg = cfg["train_cfg"], cfg["test_cfg"]
        n_embd, n_stem, n_branch = (int(a) for a in cfg["backbone_arch"])
        num_levels = 1 + n_branch
        self.num_classes = int(cfg["num_classes"])
        self.max_seq_len = int(cfg["max_seq_len"])
        self.strides = [cfg["scale_factor"] ** level for level in range(num_levels)]
        self.regression_range = [(float(lo), float(hi)) for lo, hi in cfg["regression_range"]]
        if len(self.regression_range) != num_levels:
            raise ValueError(
                f"model.regression_range has {len(self.regression_range)} entries, the pyramid has {num_levels} levels"
            )
        windows = _per_level(cfg["n_mha_win_size"], num_levels)
        # Input lengths must halve evenly down the pyramid: a multiple of the coarsest stride. The original
        # pads further, to a multiple of stride * (w // 2) * 2 for its chunked attention; the blocked attention
        # needs no more (less padding: less work). With absolute position encodings, a video longer than
        # max_seq_len gets the table interpolated to its padded length: there the original's factor keeps
        # its outputs.
        self.max_div_factor = self.strides[-1]
        if cfg["use_abs_pe"]:
            self.max_div_factor = math.lcm(*(s * (w // 2) * 2 if w > 1 else s for s, w in zip(self.strides, windows)))

        # Lists for both: per-feature-type projections, then the model width is sum(embd_dim).
        input_dim, type_embd_dim = cfg["input_dim"], cfg["embd_dim"]
        _, embd_dim = embedding_widths(input_dim, type_embd_dim)
        head_dim = int(cfg["head_dim"])
        self.backbone = ConvTransformerBackbone(
            input_dim=input_dim,
            embd_dim=type_embd_dim,
            n_head=int(cfg["n_head"]),
            embd_kernel_size=int(cfg["embd_kernel_size"]),
            arch=(n_embd, n_stem, n_branch),
            windows=windows,
            max_seq_len=self.max_seq_len,
            embd_with_ln=bool(cfg["embd_with_ln"]),
            use_abs_pe=bool(cfg["use_abs_pe"]),
            dropout=float(train_cfg["dropout"]),
            droppath=float(train_cfg["droppath"]),
        )
        self.neck = IdentityFPN(num_levels, embd_dim, bool(cfg["fpn_with_ln"]))
        head_layers, head_ks = int(cfg["head_num_layers"]), int(cfg["head_kernel_size"])
        head_ln = bool(cfg["head_with_ln"])
        self.cls_head = ClsHead(
            embd_dim,
            head_dim,
            self.num_classes,
            head_layers,
            head_ks,
            head_ln,
            prior_prob=float(train_cfg["cls_prior_prob"]),
            empty_cls=[int(c) for c in train_cfg["head_empty_cls"]],
        )
        self.reg_head = RegHead(embd_dim, head_dim, num_levels, head_layers, head_ks, head_ln)

        self.center_sample = str(train_cfg["center_sample"])
        self.center_sample_radius = float(train_cfg["center_sample_radius"])
        self.loss_weight = float(train_cfg["loss_weight"])
        self.label_smoothing = float(train_cfg["label_smoothing"])
        # A buffer, so the running normaliser is saved and restored with the weights.
        self.register_buffer("loss_normalizer", torch.tensor(float(train_cfg["init_loss_norm"])))
        self.pre_nms_thresh = float(test_cfg["pre_nms_thresh"])
        self.pre_nms_topk = int(test_cfg["pre_nms_topk"])
        self.duration_thresh = float(test_cfg["duration_thresh"])

    def forward_levels(
        self, feats: Tensor, masks: Tensor
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Per level: points [T_l, 4], class logits [B, T_l, C], offsets [B, T_l, 2] (stride units), masks [B, T_l]."""
        if feats.shape[-1] % self.max_div_factor != 0:
            raise ValueError(
                f"input length {feats.shape[-1]} is not a multiple of max_div_factor {self.max_div_factor}"
                " (pad with pad_batch)"
            )
        # the layers run channels last (blocks.py); the first conv reads the [B, C, T] input as it is
        level_feats, level_masks = self.neck(*self.backbone(feats.transpose(1, 2), masks.transpose(1, 2)))
        points = make_points([x.shape[1] for x in level_feats], self.strides, self.regression_range, feats.device)
        cls_logits = self.cls_head(level_feats, level_masks)
        offsets = self.reg_head(level_feats, level_masks)
        return points, cls_logits, offsets, [m[..., 0] for m in level_masks]

    def forward(
        self,
        feats: Tensor,
        masks: Tensor,
        gt_segments: list[Tensor] | None = None,
        gt_labels: list[Tensor] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training mode with ground truth: the loss dict; otherwise: per video, the candidates before NMS."""
        points, cls_logits, offsets, level_masks = self.forward_levels(feats, masks)
        if self.training and gt_segments is not None:
            if gt_labels is None:
                raise ValueError("gt_labels are required with gt_segments")
            return self.losses(points, cls_logits, offsets, level_masks, gt_segments, gt_labels)
        return self.candidates(points, cls_logits, offsets, level_masks)

    def losses(
        self,
        points: list[Tensor],
        cls_logits: list[Tensor],
        offsets: list[Tensor],
        masks: list[Tensor],
        gt_segments: list[Tensor],
        gt_labels: list[Tensor],
    ) -> dict[str, Tensor]:
        cls_targets, reg_targets = assign_labels(
            torch.cat(points),
            gt_segments,
            gt_labels,
            self.num_classes,
            self.center_sample,
            self.center_sample_radius,
        )
        valid = torch.cat(masks, dim=1)
        pos = valid & (cls_targets.sum(dim=-1) > 0)
        num_pos, ranks = pos.sum(), 1
        if dist.is_available() and dist.is_initialized():
            # Normalise by the positives of the whole distributed batch and undo DDP's gradient
            # averaging, so N processes train exactly like one process with the full batch.
            dist.all_reduce(num_pos)
            ranks = dist.get_world_size()
        with torch.no_grad():
            self.loss_normalizer.mul_(LOSS_NORM_MOMENTUM).add_((1 - LOSS_NORM_MOMENTUM) * num_pos.clamp(min=1))
        # A copy: the buffer is updated in place next step, possibly before this graph's backward.
        norm = self.loss_normalizer.clone() / ranks

        targets = cls_targets[valid] * (1 - self.label_smoothing) + self.label_smoothing / (self.num_classes + 1)
        cls_loss = sigmoid_focal_loss(torch.cat(cls_logits, dim=1)[valid].float(), targets) / norm
        # With no positives this sums an empty selection: 0, still attached to the graph.
        reg_loss = ctr_diou_loss_1d(torch.cat(offsets, dim=1)[pos].float(), reg_targets[pos]) / norm
        if self.loss_weight > 0:
            weight: float | Tensor = self.loss_weight
        else:
            weight = cls_loss.detach() / reg_loss.detach().clamp(min=0.01)
        return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": cls_loss + weight * reg_loss}

    @torch.no_grad()
    def candidates(
        self, points: list[Tensor], cls_logits: list[Tensor], offsets: list[Tensor], masks: list[Tensor]
    ) -> list[dict[str, Tensor]]:
        """Per video: segments [K, 2] (level-0 grid units), scores [K], labels [K], top-k per level, before NMS."""
        results = []
        for b in range(cls_logits[0].shape[0]):
            segs, scores, labels = [], [], []
            for pts, logits, offs, mask in zip(points, cls_logits, offsets, masks):
                prob = (logits[b].float().sigmoid() * mask[b, :, None]).flatten()
                kept = torch.nonzero(prob > self.pre_nms_thresh)[:, 0]
                # Stable, so equal scores keep index order whatever the padding.
                top_prob, order = prob[kept].sort(descending=True, stable=True)
                top_prob, flat = top_prob[: self.pre_nms_topk], kept[order[: self.pre_nms_topk]]
                pt, cls = flat // self.num_classes, flat % self.num_classes
                pos, stride = pts[pt, 0], pts[pt, 3]
                off = offs[b, pt].float()
                seg = torch.stack([pos - off[:, 0] * stride, pos + off[:, 1] * stride], dim=1)
                long_enough = seg[:, 1] - seg[:, 0] > self.duration_thresh
                segs.append(seg[long_enough])
                scores.append(top_prob[long_enough])
                labels.append(cls[long_enough])
            results.append({"segments": torch.cat(segs), "scores": torch.cat(scores), "labels": torch.cat(labels)})
        return results


def pad_batch(feats_list: Sequence[Tensor], max_div_factor: int, pad_to: int | None = None,
              channels_last: bool = False) -> tuple[Tensor, Tensor]:
    """Stack [C, T_i] features into zero-padded feats [B, C, T] and masks [B, 1, T] (True = real step).

    T is the longest T_i (or pad_to, if larger) rounded up to a multiple of max_div_factor. With
    `channels_last` the feats are [B, T, C] in memory, as the model's layers run: faster for inference
    (a plain copy of the dataset's [T, C] rows, and the first conv's forward); the first conv's weight
    gradient is faster from [B, C, T], so training keeps that.
    """
    lengths = [f.shape[-1] for f in feats_list]
    length = max(max(lengths), pad_to or 0)
    length = -(-length // max_div_factor) * max_div_factor
    first = feats_list[0]
    if channels_last:
        feats = first.new_zeros(len(feats_list), length, first.shape[0]).transpose(1, 2)
    else:
        feats = first.new_zeros(len(feats_list), first.shape[0], length)
    masks = torch.zeros(len(feats_list), 1, length, dtype=torch.bool, device=first.device)
    for i, (f, t) in enumerate(zip(feats_list, lengths)):
        feats[i, :, :t] = f
        masks[i, 0, :t] = True
    return feats, masks


def build_model(model_cfg: Mapping[str, Any]) -> ActionFormer:
    """ActionFormer from the YAML `model:` section (defaults filled in); unsupported values raise ValueError."""
    return ActionFormer(model_cfg)
