"""Loading detection ground truth and predictions: every bad input is one clear InputError."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from talbench.errors import InputError
from talbench.eval.inputs import Annotations, ground_truth, load_annotations, load_predictions
from talbench.io import write_json

GT = {
    "database": {
        "video_validation_0000051": {
            "subset": "Validation",
            "duration": 169.8,
            "fps": 30.0,
            "annotations": [
                {"label": "BaseballPitch", "label_id": 0, "segment": [67.5, 75.9]},
                {"label": "BaseballPitch", "label_id": 0, "segment": [67.5, 75.9]},  # duplicate
                {"label": "CliffDiving", "label_id": 1, "segment": [2.0, 3.5]},
            ],
        },
        "video_validation_0000052": {"subset": "validation", "annotations": []},
        "video_test_0000004": {
            "subset": "test",
            "duration": 33.5,
            "annotations": [{"label": "HighJump", "label_id": 2, "segment": [1.0, 4.0]}],
        },
    }
}
PREDS = {
    "results": {
        "video_validation_0000051": [
            {"label": "BaseballPitch", "score": 0.9, "segment": [67.0, 76.0]},
            {"label": 1, "score": 0.5, "segment": [2.0, 3.0]},
        ],
        "video_test_0000004": [{"label": "HighJump", "score": 0.7, "segment": [1.0, 4.0]}],
    }
}


@pytest.fixture
def gt_path(tmp_path: Path) -> Path:
    path = tmp_path / "gt.json"
    write_json(path, GT)
    return path


@pytest.fixture
def annotations(gt_path: Path) -> Annotations:
    return load_annotations(gt_path)


def write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        write_json(path, content)
    return path


def check(exc: pytest.ExceptionInfo[InputError], *fragments: str) -> None:
    message = str(exc.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_load_valid_files(annotations: Annotations, tmp_path: Path):
    assert annotations.label_names == {0: "BaseballPitch", 1: "CliffDiving", 2: "HighJump"}
    video = annotations.videos["video_validation_0000051"]
    assert (video.subset, video.duration, video.fps, len(video.instances)) == ("Validation", 169.8, 30.0, 3)
    assert annotations.videos["video_validation_0000052"].duration is None

    gt = ground_truth(annotations, "VALIDATION")
    assert gt.video_ids.tolist() == ["video_validation_0000051"] * 2  # duplicate dropped
    assert gt.starts.tolist() == [67.5, 2.0] and gt.ends.tolist() == [75.9, 3.5]
    assert gt.labels.tolist() == [0, 1]
    assert gt.videos.tolist() == ["video_validation_0000051", "video_validation_0000052"]

    preds, warnings = load_predictions(write(tmp_path, "preds.json", PREDS), annotations)
    assert warnings == []
    assert preds.video_ids.tolist() == ["video_validation_0000051"] * 2 + ["video_test_0000004"]
    assert preds.labels.tolist() == [0, 1, 2]
    assert preds.scores.tolist() == [0.9, 0.5, 0.7]
    assert preds.starts.tolist() == [67.0, 2.0, 1.0] and preds.ends.tolist() == [76.0, 3.0, 4.0]


def test_predictions_on_unknown_videos_warn_or_fail(annotations: Annotations, tmp_path: Path):
    results = copy.deepcopy(PREDS)
    results["results"]["v_a"] = [{"label": 0, "score": 0.1, "segment": [0, 1]}] * 3
    results["results"]["v_b"] = [{"label": 0, "score": 0.1, "segment": [0, 1]}]
    results["results"]["v_empty"] = []
    path = write(tmp_path, "preds.json", results)
    preds, warnings = load_predictions(path, annotations)
    assert len(preds) == 7
    assert warnings == [
        f"{path}: 4 predictions on 2 videos not in {annotations.path} (counted as false positives): v_a, v_b"
    ]
    with pytest.raises(InputError) as exc:
        load_predictions(path, annotations, strict=True)
    check(exc, "preds.json", "v_a", "video id")


def test_empty_subset_lists_the_subsets_present(annotations: Annotations):
    with pytest.raises(InputError) as exc:
        ground_truth(annotations, "training")
    check(exc, "gt.json", "subset", "'training'", "'Validation' (1 videos)", "'test' (1 videos)")


def test_subset_without_usable_annotations(tmp_path: Path):
    path = write(tmp_path, "gt.json", {"database": {"v1": {"subset": "test", "annotations": []}}})
    with pytest.raises(InputError) as exc:
        ground_truth(load_annotations(path), "test")
    check(exc, "gt.json", "subset", "no usable annotations")


def test_missing_file(tmp_path: Path):
    with pytest.raises(InputError) as exc:
        load_annotations(tmp_path / "nope.json")
    check(exc, "nope.json", "file not found")


def test_invalid_json_names_line_and_column(tmp_path: Path, annotations: Annotations):
    path = write(tmp_path, "gt.json", '{\n  "database": {\n    "v1": {,}\n  }\n}\n')
    with pytest.raises(InputError) as exc:
        load_annotations(path)
    check(exc, "gt.json", "line 3, column 12", "json", "not valid JSON")
    path = write(tmp_path, "preds.json", '{"results": {"v1": [}}')
    with pytest.raises(InputError) as exc:
        load_predictions(path, annotations)
    check(exc, "preds.json", "line 1, column 21", "json")


@pytest.mark.parametrize(
    "content, fragments",
    [
        ({"db": {}}, ["top level", "'database'", "missing"]),
        ({"database": []}, ["top level", "'database'", "expected an object"]),
    ],
)
def test_bad_annotation_top_level(tmp_path: Path, content, fragments):
    with pytest.raises(InputError) as exc:
        load_annotations(write(tmp_path, "gt.json", content))
    check(exc, "gt.json", *fragments)


V51 = "video_validation_0000051"
A2 = f"{V51}.annotations[2]"


def _gt_with(change) -> dict:
    content = copy.deepcopy(GT)
    change(content["database"]["video_validation_0000051"])
    return content


@pytest.mark.parametrize(
    "change, item, field",
    [
        (lambda v: v.pop("subset"), V51, "subset"),
        (lambda v: v.pop("annotations"), V51, "annotations"),
        (lambda v: v.update(annotations={}), V51, "annotations"),
        (lambda v: v.update(subset=3), V51, "subset"),
        (lambda v: v.update(duration="169.8s"), V51, "duration"),
        (lambda v: v.update(duration=True), V51, "duration"),
        (lambda v: v.update(fps=None), V51, "fps"),
        (lambda v: v["annotations"][2].pop("segment"), A2, "segment"),
        (lambda v: v["annotations"][2].pop("label"), A2, "label"),
        (lambda v: v["annotations"][2].pop("label_id"), A2, "label_id"),
        (lambda v: v["annotations"][2].update(label_id=True), A2, "label_id"),
        (lambda v: v["annotations"][2].update(label_id=1.0), A2, "label_id"),
        (lambda v: v["annotations"][2].update(segment=[3.5, 2.0]), A2, "segment"),
        (lambda v: v["annotations"][2].update(segment=[2.0]), A2, "segment"),
        (lambda v: v["annotations"][2].update(segment=[2.0, "3"]), A2, "segment"),
        (lambda v: v["annotations"][2].update(segment=[False, 3.0]), A2, "segment"),
        (lambda v: v["annotations"][2].update(label="BaseballPitch"), A2, "label_id"),
        (lambda v: v["annotations"][2].update(label_id=0), A2, "label"),
        (lambda v: v["annotations"].__setitem__(2, "CliffDiving"), A2, "segment"),
    ],
)
def test_bad_annotations(tmp_path: Path, change, item, field):
    with pytest.raises(InputError) as exc:
        load_annotations(write(tmp_path, "gt.json", _gt_with(change)))
    check(exc, "gt.json", f"{item}: field '{field}'")


def test_label_id_reused_with_another_name(tmp_path: Path):
    content = copy.deepcopy(GT)
    content["database"]["video_test_0000004"]["annotations"][0]["label_id"] = 1
    with pytest.raises(InputError) as exc:
        load_annotations(write(tmp_path, "gt.json", content))
    check(exc, "gt.json", "video_test_0000004.annotations[0]", "field 'label'", "'HighJump'", "'CliffDiving'")


def test_non_finite_annotation_segment(tmp_path: Path):
    text = json.dumps(GT).replace("[2.0, 3.5]", "[2.0, NaN]")
    with pytest.raises(InputError) as exc:
        load_annotations(write(tmp_path, "gt.json", text))
    check(exc, "gt.json", "video_validation_0000051.annotations[2]", "segment", "finite")


def _preds_with(entry: dict | None = None, value: object = None) -> dict:
    """PREDS with video_validation_0000051[1] replaced by `entry` (or the list by `value`)."""
    content = copy.deepcopy(PREDS)
    if entry is not None:
        content["results"]["video_validation_0000051"][1] = entry
    else:
        content["results"]["video_validation_0000051"] = value
    return content


@pytest.mark.parametrize(
    "content, field, problem",
    [
        ({"preds": {}}, "results", "missing"),
        (_preds_with(value={"label": 0}), "results", "expected a list"),
        (_preds_with({"score": 0.5, "segment": [2, 3]}), "label", "missing"),
        (_preds_with({"label": 1, "segment": [2, 3]}), "score", "missing"),
        (_preds_with({"label": 1, "score": 0.5}), "segment", "missing"),
        (_preds_with([1, 0.5, [2, 3]]), "segment", "expected an object"),
        (_preds_with({"label": 1, "score": 0.5, "segment": [2, 3, 4]}), "segment", "two numbers"),
        (_preds_with({"label": 1, "score": 0.5, "segment": "2-3"}), "segment", "two numbers"),
        (_preds_with({"label": 1, "score": 0.5, "segment": [True, 3]}), "segment", "two numbers"),
        (_preds_with({"label": 1, "score": 0.5, "segment": [3, 2]}), "segment", "end 2.0 < start 3.0"),
        (_preds_with({"label": 1, "score": "0.5", "segment": [2, 3]}), "score", "finite number"),
        (_preds_with({"label": 1, "score": True, "segment": [2, 3]}), "score", "finite number"),
        (_preds_with({"label": 1, "score": None, "segment": [2, 3]}), "score", "finite number"),
        (_preds_with({"label": "Cliff Diving", "score": 0.5, "segment": [2, 3]}), "label", "did you mean 'CliffDiving'?"),
        (_preds_with({"label": "zzz", "score": 0.5, "segment": [2, 3]}), "label", "unknown label name 'zzz'"),
        (_preds_with({"label": 7, "score": 0.5, "segment": [2, 3]}), "label", "unknown label_id 7 (ids in"),
        (_preds_with({"label": True, "score": 0.5, "segment": [2, 3]}), "label", "label name or integer"),
        (_preds_with({"label": 1.0, "score": 0.5, "segment": [2, 3]}), "label", "label name or integer"),
    ],
)
def test_bad_predictions(tmp_path: Path, annotations: Annotations, content, field, problem):
    with pytest.raises(InputError) as exc:
        load_predictions(write(tmp_path, "preds.json", content), annotations)
    item = "top level" if field == "results" and "results" not in content else "video_validation_0000051"
    if field != "results":
        item += "[1]"
    check(exc, "preds.json", f"{item}: field '{field}'", problem)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_prediction_numbers(tmp_path: Path, annotations: Annotations, literal: str):
    text = json.dumps(PREDS)
    for old, field in (('"score": 0.5', "score"), ("[2.0, 3.0]", "segment")):
        new = f'"score": {literal}' if field == "score" else f"[2.0, {literal}]"
        path = write(tmp_path, "preds.json", text.replace(old, new))
        with pytest.raises(InputError) as exc:
            load_predictions(path, annotations)
        check(exc, "preds.json", f"video_validation_0000051[1]: field '{field}'")


def test_integer_json_numbers_are_accepted(tmp_path: Path, annotations: Annotations):
    content = _preds_with({"label": 1, "score": 1, "segment": [2, 3]})
    preds, _ = load_predictions(write(tmp_path, "preds.json", content), annotations)
    assert preds.scores.dtype == np.float64 and preds.scores.tolist() == [0.9, 1.0, 0.7]
