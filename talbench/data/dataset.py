"""Videos of one split as training/inference items, read from an ActionFormer `dataset:` config.

Randomness (truncation crops) is a function of (seed, epoch, item), never of global state, so a
resumed run sees exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from talbench.data.formats import load_annotations, load_features
from talbench.data.registry import FeatureSpec
from talbench.errors import InputError


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    fps: float
    duration: float
    segments: np.ndarray  # [N, 2] seconds
    labels: np.ndarray  # [N] label ids


@dataclass
class VideoItem:
    video_id: str
    feats: torch.Tensor  # [C, T]
    segments: torch.Tensor  # [N, 2] in feature-grid units
    labels: torch.Tensor  # [N]
    fps: float
    duration: float
    feat_stride: float  # frames per grid step (differs per video when features are resampled)
    feat_num_frames: float


class VideoDataset(torch.utils.data.Dataset):
    def __init__(self, dataset_cfg: dict[str, Any], splits: list[str], is_training: bool, seed: int = 0, config_path: str = "config") -> None:
        self.cfg = dataset_cfg
        self.is_training = is_training
        self.seed = seed
        self.epoch = 0
        folders = dataset_cfg["feat_folder"]
        folders = [folders] if isinstance(folders, str) else list(folders)
        dims = dataset_cfg["input_dim"]
        dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
        if len(dims) != len(folders):
            raise InputError(config_path, "dataset", "input_dim", f"{len(folders)} feature folders but {len(dims)} input dims")
        self.features = [
            FeatureSpec(folder=folder, channels=int(dim), prefix=dataset_cfg["file_prefix"] or "", ext=dataset_cfg["file_ext"])
            for folder, dim in zip(folders, dims)
        ]
        self.annotations = load_annotations(Path(dataset_cfg["json_file"]))  # the whole file, every subset
        self.label_names = self.annotations.label_names
        self.records, self.missing = self._load(Path(dataset_cfg["json_file"]), {s.lower() for s in splits})
        if self.missing:
            # the original skips these silently; a user should know their numbers exclude them
            warnings.warn(f"{len(self.missing)} videos of split {','.join(splits)} have no feature files and are skipped: {', '.join(self.missing[:5])}{' ...' if len(self.missing) > 5 else ''}", stacklevel=2)
        if not self.records:
            raise InputError(dataset_cfg["json_file"], ",".join(splits), "subset", "no video of this split has both annotations and features")

    def _load(self, json_file: Path, splits: set[str]) -> tuple[list[VideoRecord], list[str]]:
        records, missing = [], []
        default_fps, num_classes = self.cfg["default_fps"], self.cfg["num_classes"]
        for vid, video in self.annotations.videos.items():
            if video.subset.lower() not in splits:
                continue
            if not all(self._path(spec, vid).exists() for spec in self.features):
                missing.append(vid)
                continue
            fps = default_fps if default_fps is not None else video.fps
            if fps is None:
                raise InputError(json_file, vid, "fps", "no fps in the annotation and no dataset.default_fps")
            segments = np.array([(a.start, a.end) for a in video.instances], dtype=np.float32).reshape(-1, 2)
            labels = np.array([a.label_id for a in video.instances], dtype=np.int64)
            if num_classes == 1:
                labels[:] = 0  # ActivityNet protocol: class-agnostic localisation, classes fused at test time
            elif len(labels) and labels.max() >= num_classes:
                i = int(np.argmax(labels >= num_classes))
                raise InputError(json_file, f"{vid}.annotations[{i}]", "label_id", f"label id {labels[i]} >= dataset.num_classes {num_classes}")
            duration = video.duration if video.duration is not None else 1e8  # unknown: predictions are not clipped
            records.append(VideoRecord(vid, float(fps), duration, segments, labels))
        return records, missing

    def _path(self, spec: FeatureSpec, vid: str) -> Path:
        return Path(spec.folder) / f"{spec.prefix}{vid}{spec.ext}"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> VideoItem:
        rec = self.records[index]
        arrays = [load_features(self._path(spec, rec.video_id), spec, rec.video_id) for spec in self.features]
        if len({a.shape[0] for a in arrays}) > 1:
            raise InputError(self._path(self.features[-1], rec.video_id), rec.video_id, "shape", f"feature types differ in length: {[a.shape[0] for a in arrays]}")
        feats = np.concatenate(arrays, axis=1) if len(arrays) > 1 else arrays[0]
        stride, num_frames = float(self.cfg["feat_stride"]), float(self.cfg["num_frames"])
        rate = int(self.cfg["downsample_rate"])
        max_len = int(self.cfg["max_seq_len"])
        if self.cfg["force_upsampling"]:
            # ActivityNet: every video resampled to max_seq_len steps; one step now spans this many frames
            stride = ((feats.shape[0] - 1) * stride + num_frames) / max_len
            num_frames = stride
        elif rate > 1:
            feats = feats[::rate]
            stride *= rate
        tensor = torch.from_numpy(np.ascontiguousarray(feats)).T  # [C, T], a view of the file's [T, C] rows
        if self.cfg["force_upsampling"] and tensor.shape[1] != max_len:
            tensor = F.interpolate(tensor[None], size=max_len, mode="linear", align_corners=False)[0]
        offset = 0.5 * num_frames / stride
        segments = torch.from_numpy(rec.segments * rec.fps / stride - offset)
        item = VideoItem(rec.video_id, tensor, segments, torch.from_numpy(rec.labels), rec.fps, rec.duration, stride, num_frames)
        if self.is_training and len(rec.labels):
            rng = np.random.default_rng([self.seed, self.epoch, index])
            item = truncate(item, max_len, float(self.cfg["trunc_thresh"]), offset, self.cfg["crop_ratio"], rng)
        return item


def truncate(item: VideoItem, max_len: int, trunc_thresh: float, offset: float, crop_ratio: list[float] | None, rng: np.random.Generator) -> VideoItem:
    """Random window of at most max_len steps; keeps actions with >= trunc_thresh of them inside."""
    length = item.feats.shape[1]
    if length <= max_len:
        if crop_ratio is None:
            return item
        lo = max(round(crop_ratio[0] * length), 1)
        hi = min(round(crop_ratio[1] * length), length)
        max_len = int(rng.integers(lo, hi + 1))
        if max_len == length:
            return item
    seg = item.segments
    seg_len = (seg[:, 1] - seg[:, 0]).abs().clamp(min=1e-6)
    for _ in range(200):
        start = int(rng.integers(0, length - max_len + 1))
        left = torch.clamp(seg[:, 0], min=start - offset)
        right = torch.clamp(seg[:, 1], max=start + max_len + offset)
        keep = (right - left).clamp(min=0) / seg_len >= trunc_thresh
        if keep.any():
            break
    kept = torch.stack((left[keep], right[keep]), dim=1) - start
    return VideoItem(item.video_id, item.feats[:, start:start + max_len].clone(), kept, item.labels[keep].clone(),
                     item.fps, item.duration, item.feat_stride, item.feat_num_frames)


def collate(items: list[VideoItem]) -> list[VideoItem]:
    return items
