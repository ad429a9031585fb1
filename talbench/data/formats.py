"""The on-disk formats the published code and its users use.

Annotations: `{"database": {video_id: {"subset", "duration", "fps", "annotations":
[{"label", "label_id", "segment": [start_s, end_s]}]}}}`.
Features: one float32 [T, C] array per video and feature type, `.npy` or `.npz` (key `feats`).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from talbench.data.registry import DatasetSpec, FeatureSpec
from talbench.errors import InputError

# A fixed timestamp makes zip containers (npz files, twin archives) byte-identical across runs.
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def seconds_to_index(seconds: Any, fps: float, feat_stride: int, num_frames: int) -> Any:
    """Feature-grid position of a time: the centre of clip t covers frame t*stride + num_frames/2."""
    return np.asarray(seconds) * fps / feat_stride - 0.5 * num_frames / feat_stride


def index_to_seconds(index: Any, fps: float, feat_stride: int, num_frames: int) -> Any:
    return (np.asarray(index) * feat_stride + 0.5 * num_frames) / fps


def feature_path(data_root: str | Path, spec: FeatureSpec, video_id: str) -> Path:
    return Path(data_root) / spec.folder / f"{spec.prefix}{video_id}{spec.ext}"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def add_to_zip(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    """Add one stored (uncompressed) member with fixed metadata, so the bytes depend on content only."""
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    zf.writestr(info, data)


def feature_file_bytes(array: np.ndarray, spec: FeatureSpec) -> bytes:
    """The exact bytes of a feature file: .npy, or an .npz holding the array under spec.npz_key."""
    if spec.ext == ".npy":
        return npy_bytes(array)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        add_to_zip(zf, f"{spec.npz_key}.npy", npy_bytes(array))
    return buf.getvalue()


def load_features(path: str | Path, spec: FeatureSpec, video_id: str) -> np.ndarray:
    """Read one feature file as float32 [T, C]; a missing, unreadable or misshapen file is an InputError."""
    path = Path(path)
    try:
        if spec.ext == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if spec.npz_key not in npz.files:
                    raise InputError(path, video_id, spec.npz_key, f"key missing from .npz (has: {', '.join(npz.files)})")
                array = npz[spec.npz_key]
        else:
            array = np.load(path, allow_pickle=False)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(path, video_id, "features", "feature file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(path, video_id, "features", f"unreadable feature file ({exc})") from None
    if array.ndim != 2 or array.shape[1] != spec.channels:
        raise InputError(path, video_id, "shape", f"expected [T, {spec.channels}], got {list(array.shape)}")
    return array.astype(np.float32, copy=False)


def load_video_features(data_root: str | Path, dataset: DatasetSpec, features: tuple[str, ...], video_id: str) -> np.ndarray:
    """Feature types of one video concatenated along channels, [T, sum(C)] (Ego4D combinations)."""
    arrays = [load_features(feature_path(data_root, dataset.features[f], video_id), dataset.features[f], video_id) for f in features]
    lengths = {a.shape[0] for a in arrays}
    if len(lengths) > 1:
        path = feature_path(data_root, dataset.features[features[-1]], video_id)
        raise InputError(path, video_id, "shape", f"feature types {', '.join(features)} differ in length: {[a.shape[0] for a in arrays]}")
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=1)


def annotation_json(database: dict[str, Any], version: str) -> str:
    """The annotation file text; deterministic (insertion order, repr floats)."""
    return json.dumps({"version": version, "database": database}, indent=1) + "\n"
