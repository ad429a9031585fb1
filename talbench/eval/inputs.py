"""Load and validate detection ground truth and predictions (ActivityNet JSON formats).

Every problem is raised as one `InputError` line naming the file, the video id (with the
entry's index, e.g. "video_test_0000004[3]") and the field.

Ground truth: {"database": {video_id: {"subset": str, "duration": float, "fps": float,
    "annotations": [{"label": str, "label_id": int, "segment": [start_s, end_s]}]}}}
Predictions: {"results": {video_id: [{"label": name or label_id, "score": float,
    "segment": [start_s, end_s]}]}}
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talbench.errors import InputError
from talbench.eval.detection import GroundTruth, Predictions, remove_duplicate_annotations

_LISTED_VIDEOS = 5  # unknown video ids quoted in a warning


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


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but `true` is not a time or a score
    return type(value) is float or type(value) is int


def _read_json(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "file", "path", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, "file", "path", f"cannot read: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            path, f"line {exc.lineno}, column {exc.colno}", "json", f"not valid JSON: {exc.msg}"
        ) from None


def _top_level(obj: Any, path: str, key: str) -> dict:
    if not isinstance(obj, dict):
        got = type(obj).__name__
        raise InputError(path, "top level", key, f"expected an object with key '{key}', got {got}")
    if key not in obj:
        raise InputError(path, "top level", key, f"missing (keys present: {sorted(obj)[:10]})")
    value = obj[key]
    if not isinstance(value, dict):
        got = type(value).__name__
        raise InputError(path, "top level", key, f"expected an object keyed by video id, got {got}")
    return value


def _segment(value: Any, path: str, item: str) -> tuple[float, float]:
    if type(value) is not list or len(value) != 2 or not all(_is_number(v) for v in value):
        raise InputError(path, item, "segment", f"expected [start, end] of two numbers, got {value!r}")
    start, end = float(value[0]), float(value[1])
    if not (math.isfinite(start) and math.isfinite(end)):
        raise InputError(path, item, "segment", f"bounds must be finite, got {value!r}")
    if end < start:
        raise InputError(path, item, "segment", f"end {end} < start {start}")
    return start, end


def _optional_number(entry: dict, key: str, path: str, item: str) -> float | None:
    if key not in entry:
        return None
    value = entry[key]
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise InputError(path, item, key, f"expected a non-negative number, got {value!r}")
    return float(value)


def _require(entry: Any, keys: tuple[str, ...], path: str, item: str) -> None:
    if not isinstance(entry, dict):
        raise InputError(path, item, keys[0], f"expected an object, got {type(entry).__name__}")
    for key in keys:
        if key not in entry:
            raise InputError(path, item, key, "missing")


def parse_annotations(obj: Any, path: str | Path) -> Annotations:
    """Validate an already parsed ground-truth object; `path` is only used in messages."""
    path = str(path)
    database = _top_level(obj, path, "database")
    videos: dict[str, Video] = {}
    names: dict[int, tuple[str, str]] = {}  # label_id -> (name, where first seen)
    ids: dict[str, tuple[int, str]] = {}  # name -> (label_id, where first seen)
    for video_id, entry in database.items():
        _require(entry, ("subset", "annotations"), path, video_id)
        subset, annotations = entry["subset"], entry["annotations"]
        if type(subset) is not str:
            raise InputError(path, video_id, "subset", f"expected a string, got {subset!r}")
        if type(annotations) is not list:
            got = type(annotations).__name__
            raise InputError(path, video_id, "annotations", f"expected a list, got {got}")
        instances = []
        for i, ann in enumerate(annotations):
            item = f"{video_id}.annotations[{i}]"
            _require(ann, ("segment", "label", "label_id"), path, item)
            label, label_id = ann["label"], ann["label_id"]
            if type(label) is not str:
                raise InputError(path, item, "label", f"expected a string, got {label!r}")
            if type(label_id) is not int:
                raise InputError(path, item, "label_id", f"expected an integer, got {label_id!r}")
            known_name, where = names.setdefault(label_id, (label, item))
            if known_name != label:
                problem = f"label_id {label_id} is '{label}' here but '{known_name}' at {where}"
                raise InputError(path, item, "label", problem)
            known_id, where = ids.setdefault(label, (label_id, item))
            if known_id != label_id:
                problem = f"label '{label}' has id {label_id} here but {known_id} at {where}"
                raise InputError(path, item, "label_id", problem)
            start, end = _segment(ann["segment"], path, item)
            instances.append(Instance(label, label_id, start, end))
        videos[video_id] = Video(
            subset=subset,
            duration=_optional_number(entry, "duration", path, video_id),
            fps=_optional_number(entry, "fps", path, video_id),
            instances=tuple(instances),
        )
    label_names = {label_id: name for label_id, (name, _) in sorted(names.items())}
    return Annotations(path=path, videos=videos, label_names=label_names)


def load_annotations(path: str | Path) -> Annotations:
    return parse_annotations(_read_json(path), path)


def ground_truth(annotations: Annotations, subset: str) -> GroundTruth:
    """Instances of `subset` (case-insensitive) after the reference's duplicate removal."""
    wanted = subset.lower()
    selected = [vid for vid, video in annotations.videos.items() if video.subset.lower() == wanted]
    present = ", ".join(f"'{name}' ({n} videos)" for name, n in annotations.subset_sizes().items())
    if not selected:
        problem = f"no video has subset '{subset}'; subsets present: {present or 'none'}"
        raise InputError(annotations.path, "database", "subset", problem)
    video_ids: list[str] = []
    kept: list[Instance] = []
    for vid in selected:
        instances = annotations.videos[vid].instances
        keep = remove_duplicate_annotations((a.start, a.end, a.label_id) for a in instances)
        kept += [instances[i] for i in keep]
        video_ids += [vid] * len(keep)
    if not kept:
        problem = (
            f"subset '{subset}' has {len(selected)} videos but no usable annotations; "
            f"subsets present: {present}"
        )
        raise InputError(annotations.path, "database", "subset", problem)
    return GroundTruth(
        video_ids=np.array(video_ids, dtype=object),
        starts=np.array([a.start for a in kept], dtype=np.float64),
        ends=np.array([a.end for a in kept], dtype=np.float64),
        labels=np.array([a.label_id for a in kept], dtype=np.int64),
        videos=np.array(selected, dtype=object),
    )


def _label_error(label: Any, annotations: Annotations, path: str, item: str, num_classes: int | None) -> InputError:
    if type(label) is str:
        close = difflib.get_close_matches(label, list(annotations.label_names.values()), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        problem = f"unknown label name '{label}' (not in {annotations.path}){hint}"
        return InputError(path, item, "label", problem)
    if type(label) is int:
        known = sorted(annotations.label_names)
        span = f"{known[0]}..{known[-1]}" if known else "none"
        problem = f"unknown label_id {label} (ids in {annotations.path}: {span})"
        if num_classes is not None:
            problem = f"label_id {label} outside the {num_classes} classes of the dataset (0..{num_classes - 1})"
        return InputError(path, item, "label", problem)
    return InputError(path, item, "label", f"expected a label name or integer label_id, got {label!r}")


def parse_predictions(
    obj: Any, annotations: Annotations, path: str | Path, *, strict: bool = False, num_classes: int | None = None
) -> tuple[Predictions, list[str]]:
    """Validate an already parsed results object; labels may be names or label ids.

    With `num_classes` (the dataset's label space), an id in range that no annotation uses is a
    valid class without ground truth (ignored, as the protocol ignores such classes), not an error.

    Predictions on videos missing from the annotation file are false positives under the
    protocol: reported as a warning line, or an InputError when `strict`.
    """
    path = str(path)
    results = _top_level(obj, path, "results")
    label_ids = {name: label_id for label_id, name in annotations.label_names.items()}
    video_ids: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    labels: list[int] = []
    scores: list[float] = []
    unknown_videos: dict[str, int] = {}
    for video_id, detections in results.items():
        if type(detections) is not list:
            got = type(detections).__name__
            raise InputError(path, video_id, "results", f"expected a list of detections, got {got}")
        if detections and video_id not in annotations.videos:
            if strict:
                raise InputError(path, video_id, "video id", f"not in {annotations.path}")
            unknown_videos[video_id] = len(detections)
        for i, det in enumerate(detections):
            if type(det) is not dict or "segment" not in det or "score" not in det or "label" not in det:
                _require(det, ("segment", "score", "label"), path, f"{video_id}[{i}]")
            label = det["label"]
            label_id = label_ids.get(label) if type(label) is str else label
            in_space = num_classes is not None and type(label_id) is int and 0 <= label_id < num_classes
            if type(label_id) is not int or not (label_id in annotations.label_names or in_space):
                raise _label_error(label, annotations, path, f"{video_id}[{i}]", num_classes)
            score = det["score"]
            if not _is_number(score) or not math.isfinite(score):
                problem = f"expected a finite number, got {score!r}"
                raise InputError(path, f"{video_id}[{i}]", "score", problem)
            start, end = _segment(det["segment"], path, f"{video_id}[{i}]")
            starts.append(start)
            ends.append(end)
            labels.append(label_id)
            scores.append(float(score))
        video_ids += [video_id] * len(detections)
    warnings = []
    if unknown_videos:
        listed = ", ".join(list(unknown_videos)[:_LISTED_VIDEOS])
        more = ", ..." if len(unknown_videos) > _LISTED_VIDEOS else ""
        warnings.append(
            f"{path}: {sum(unknown_videos.values())} predictions on {len(unknown_videos)} videos not in "
            f"{annotations.path} (counted as false positives): {listed}{more}"
        )
    predictions = Predictions(
        video_ids=np.array(video_ids, dtype=object),
        starts=np.array(starts, dtype=np.float64),
        ends=np.array(ends, dtype=np.float64),
        labels=np.array(labels, dtype=np.int64),
        scores=np.array(scores, dtype=np.float64),
    )
    return predictions, warnings


def load_predictions(
    path: str | Path, annotations: Annotations, *, strict: bool = False, num_classes: int | None = None
) -> tuple[Predictions, list[str]]:
    return parse_predictions(_read_json(path), annotations, path, strict=strict, num_classes=num_classes)
