"""The on-disk formats the published code and its users use, and their one typed reader.

Annotations: `{"database": {video_id: {"subset", "duration", "fps", "annotations":
[{"label", "label_id", "segment": [start_s, end_s]}]}}}`.
Features: one float32 [T, C] array per video and feature type, `.npy` or `.npz` (key `feats`).

Every problem is one `InputError` line naming the file, the video id (with the entry's index,
e.g. "video_test_0000004.annotations[3]") and the field.
"""

from __future__ import annotations

import io
import json
import math
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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
        if spec.ext != ".npz":
            with open(path, "rb") as f:
                return _read_npy(f, path, spec, video_id)
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if f"{spec.npz_key}.npy" not in names:
                keys = ", ".join(n.removesuffix(".npy") for n in names)
                raise InputError(path, video_id, spec.npz_key, f"key missing from .npz (has: {keys})")
            with zf.open(f"{spec.npz_key}.npy") as member:
                return _read_npy(member, path, spec, video_id)
    except FileNotFoundError:
        raise InputError(path, video_id, "features", "feature file not found") from None
    # NotImplementedError: unsupported zip compression; RuntimeError: an encrypted member
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError) as exc:
        raise InputError(path, video_id, "features", f"unreadable feature file ({exc})") from None


def _read_npy(f: IO[bytes], path: Path, spec: FeatureSpec, video_id: str) -> np.ndarray:
    """An .npy stream, its header checked before its data: an integer, boolean or object array would
    be cast (or unpickled) silently, and a misshapen one need not be read at all."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if not np.issubdtype(dtype, np.floating):
        raise InputError(path, video_id, "dtype", f"{dtype}, expected a floating-point array (float32)")
    if len(shape) != 2 or shape[1] != spec.channels:
        raise InputError(path, video_id, "shape", f"expected [T, {spec.channels}], got {list(shape)}")
    f.seek(0)
    return np.lib.format.read_array(f, allow_pickle=False).astype(np.float32, copy=False)


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


# -- the annotation file -------------------------------------------------------------------------

_SHOWN_CHARS = 80  # a value quoted in an error line is cut here: the line stays one readable line
_DRIVE = re.compile(r"[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_ID_BYTES = 200  # file names hold 255 bytes; the rest is for the feature prefix and extension


@dataclass(frozen=True)
class Instance:
    label: str
    label_id: int
    start: float
    end: float


@dataclass(frozen=True)
class Video:
    subset: str
    duration: float | None
    fps: float | None
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class Annotations:
    """A whole annotation file: every subset, as written (no duplicate removal yet)."""

    path: str
    videos: dict[str, Video]
    label_names: dict[int, str]  # one name per label id, consistent across all subsets

    def subset_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for video in self.videos.values():
            sizes[video.subset] = sizes.get(video.subset, 0) + 1
        return sizes


def show(value: Any) -> str:
    """A value as an error line quotes it: repr (so no raw newline), cut short."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}..."


def check_video_id(path: str | Path, video_id: str) -> None:
    """Video ids name feature files (`<prefix><id><ext>`): one that is a path would read outside the dataset."""
    if not video_id:
        problem = "empty"
    elif "/" in video_id or "\\" in video_id:
        problem = "contains a path separator"
    elif video_id in (".", ".."):
        problem = "is a relative path"
    elif _DRIVE.match(video_id):
        problem = "starts with a drive"
    elif _CONTROL.search(video_id):
        problem = "contains a control character"
    elif len(video_id.encode("utf-8", "surrogatepass")) > _MAX_ID_BYTES:
        problem = f"longer than {_MAX_ID_BYTES} bytes, too long for a file name"
    else:
        return
    raise InputError(path, show(video_id), "video_id", f"{problem}; a video id is a name, not a path")


def read_json(path: str | Path, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None) -> Any:
    """A JSON file's content; a file that cannot be read or parsed is one InputError line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "file", "path", "file not found") from None
    except IsADirectoryError:
        raise InputError(path, "file", "path", "is a directory, expected a file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, "file", "path", f"cannot read: {exc}") from None
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"line {exc.lineno}, column {exc.colno}", "json", f"not valid JSON: {exc.msg}") from None
    except RecursionError:
        raise InputError(path, "file", "json", "nested too deeply to be an annotation or result file") from None


def is_number(value: Any) -> bool:
    # bool is an int subclass, but `true` is not a time or a score
    return type(value) is float or type(value) is int


def top_level(obj: Any, path: str | Path, key: str) -> dict[str, Any]:
    """`obj[key]`, an object keyed by video id."""
    if not isinstance(obj, dict):
        raise InputError(path, "top level", key, f"expected an object with key '{key}', got {type(obj).__name__}")
    if key not in obj:
        raise InputError(path, "top level", key, f"missing (keys present: {show(sorted(obj)[:10])})")
    value = obj[key]
    if not isinstance(value, dict):
        raise InputError(path, "top level", key, f"expected an object keyed by video id, got {type(value).__name__}")
    return value


def require(entry: Any, keys: tuple[str, ...], path: str | Path, item: str) -> None:
    if not isinstance(entry, dict):
        raise InputError(path, item, keys[0], f"expected an object, got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise InputError(path, item, key, "missing")


def parse_segment(value: Any, path: str | Path, item: str) -> tuple[float, float]:
    """[start, end] in seconds, finite; end before start is refused by the callers that need order."""
    if type(value) is not list or len(value) != 2 or not all(is_number(v) for v in value):
        raise InputError(path, item, "segment", f"expected [start, end] of two numbers, got {show(value)}")
    start, end = float(value[0]), float(value[1])
    if not (math.isfinite(start) and math.isfinite(end)):
        raise InputError(path, item, "segment", f"bounds must be finite, got {show(value)}")
    return start, end


def _optional_number(entry: dict[str, Any], key: str, path: str | Path, item: str) -> float | None:
    if key not in entry:
        return None
    value = entry[key]
    if not is_number(value) or not math.isfinite(value):
        raise InputError(path, item, key, f"expected a finite number, got {show(value)}")
    return float(value)


def parse_video(entry: Any, path: str | Path, video_id: str) -> Video:
    """One `database` entry, its fields typed; what the values mean (order, signs, names) is not checked."""
    check_video_id(path, video_id)
    require(entry, ("subset", "annotations"), path, video_id)
    subset, annotations = entry["subset"], entry["annotations"]
    if type(subset) is not str:
        raise InputError(path, video_id, "subset", f"expected a string, got {show(subset)}")
    if type(annotations) is not list:
        raise InputError(path, video_id, "annotations", f"expected a list, got {type(annotations).__name__}")
    instances = []
    for i, ann in enumerate(annotations):
        item = f"{video_id}.annotations[{i}]"
        require(ann, ("segment", "label", "label_id"), path, item)
        label, label_id = ann["label"], ann["label_id"]
        if type(label) is not str:
            raise InputError(path, item, "label", f"expected a string, got {show(label)}")
        if type(label_id) is not int:
            raise InputError(path, item, "label_id", f"expected an integer, got {show(label_id)}")
        instances.append(Instance(label, label_id, *parse_segment(ann["segment"], path, item)))
    return Video(subset, _optional_number(entry, "duration", path, video_id),
                 _optional_number(entry, "fps", path, video_id), tuple(instances))


def _check_meaning(video_id: str, video: Video, path: str) -> None:
    """What validation reports as expectations; a reader that uses the values refuses them outright."""
    for key, value in (("duration", video.duration), ("fps", video.fps)):
        if value is not None and value <= 0:
            raise InputError(path, video_id, key, f"expected a positive number, got {value!r}")
    for i, a in enumerate(video.instances):
        if a.end < a.start:
            raise InputError(path, f"{video_id}.annotations[{i}]", "segment", f"end {a.end} < start {a.start}")
        if a.label_id < 0:
            raise InputError(path, f"{video_id}.annotations[{i}]", "label_id", f"expected >= 0, got {a.label_id}")


def _label_names(videos: dict[str, Video], path: str) -> dict[int, str]:
    """One name per label id and one id per name, across all subsets."""
    names: dict[int, tuple[str, str]] = {}  # label_id -> (name, where first seen)
    ids: dict[str, tuple[int, str]] = {}  # name -> (label_id, where first seen)
    for video_id, video in videos.items():
        for i, a in enumerate(video.instances):
            item = f"{video_id}.annotations[{i}]"
            known_name, where = names.setdefault(a.label_id, (a.label, item))
            if known_name != a.label:
                problem = f"label_id {a.label_id} is {show(a.label)} here but {show(known_name)} at {where}"
                raise InputError(path, item, "label", problem)
            known_id, where = ids.setdefault(a.label, (a.label_id, item))
            if known_id != a.label_id:
                problem = f"label {show(a.label)} has id {a.label_id} here but {known_id} at {where}"
                raise InputError(path, item, "label_id", problem)
    return {label_id: name for label_id, (name, _) in sorted(names.items())}


def parse_annotations(obj: Any, path: str | Path) -> Annotations:
    """Validate an already parsed annotation object, types and meaning; `path` is only used in messages."""
    path = str(path)
    videos = {video_id: parse_video(entry, path, video_id) for video_id, entry in top_level(obj, path, "database").items()}
    for video_id, video in videos.items():
        _check_meaning(video_id, video, path)
    return Annotations(path=path, videos=videos, label_names=_label_names(videos, path))


def load_annotations(path: str | Path) -> Annotations:
    return parse_annotations(read_json(path), path)
