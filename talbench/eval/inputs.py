"""Load and validate detection ground truth and predictions (ActivityNet JSON formats).

Every problem is raised as one `InputError` line naming the file, the video id (with the
entry's index, e.g. "video_test_0000004[3]") and the field. The annotation file is read by the one
typed reader in `talbench.data.formats`.

Ground truth: {"database": {video_id: {"subset": str, "duration": float, "fps": float,
    "annotations": [{"label": str, "label_id": int, "segment": [start_s, end_s]}]}}}
Predictions: {"results": {video_id: [{"label": name or label_id, "score": float,
    "segment": [start_s, end_s]}]}}
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import numpy as np

from talbench.data.formats import (
    Annotations,
    Instance,
    check_video_id,
    is_number,
    load_annotations,
    parse_annotations,
    parse_segment,
    read_json,
    require,
    show,
    top_level,
)
from talbench.errors import InputError
from talbench.eval.detection import GroundTruth, Predictions, remove_duplicate_annotations

# The annotation format's reader lives in talbench.data.formats; re-exported for the evaluator's callers.
__all__ = ["Annotations", "ground_truth", "load_annotations", "load_predictions", "parse_annotations", "parse_predictions"]

_LISTED_VIDEOS = 5  # unknown video ids quoted in a warning


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
        hint = f"; did you mean {show(close[0])}?" if close else ""
        problem = f"unknown label name {show(label)} (not in {annotations.path}){hint}"
        return InputError(path, item, "label", problem)
    if type(label) is int:
        known = sorted(annotations.label_names)
        span = f"{known[0]}..{known[-1]}" if known else "none"
        problem = f"unknown label_id {label} (ids in {annotations.path}: {span})"
        if num_classes is not None:
            problem = f"label_id {label} outside the {num_classes} classes of the dataset (0..{num_classes - 1})"
        return InputError(path, item, "label", problem)
    return InputError(path, item, "label", f"expected a label name or integer label_id, got {show(label)}")


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
    results = top_level(obj, path, "results")
    label_ids = {name: label_id for label_id, name in annotations.label_names.items()}
    video_ids: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    labels: list[int] = []
    scores: list[float] = []
    unknown_videos: dict[str, int] = {}
    for video_id, detections in results.items():
        check_video_id(path, video_id)
        if type(detections) is not list:
            got = type(detections).__name__
            raise InputError(path, video_id, "results", f"expected a list of detections, got {got}")
        if detections and video_id not in annotations.videos:
            if strict:
                raise InputError(path, video_id, "video id", f"not in {annotations.path}")
            unknown_videos[video_id] = len(detections)
        for i, det in enumerate(detections):
            if type(det) is not dict or "segment" not in det or "score" not in det or "label" not in det:
                require(det, ("segment", "score", "label"), path, f"{video_id}[{i}]")
            label = det["label"]
            label_id = label_ids.get(label) if type(label) is str else label
            in_space = num_classes is not None and type(label_id) is int and 0 <= label_id < num_classes
            if type(label_id) is not int or not (label_id in annotations.label_names or in_space):
                raise _label_error(label, annotations, path, f"{video_id}[{i}]", num_classes)
            score = det["score"]
            if not is_number(score) or not math.isfinite(score):
                problem = f"expected a finite number, got {show(score)}"
                raise InputError(path, f"{video_id}[{i}]", "score", problem)
            start, end = parse_segment(det["segment"], path, f"{video_id}[{i}]")
            if end < start:
                raise InputError(path, f"{video_id}[{i}]", "segment", f"end {end} < start {start}")
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
    return parse_predictions(read_json(path), annotations, path, strict=strict, num_classes=num_classes)
