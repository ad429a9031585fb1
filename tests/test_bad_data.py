"""Bad annotation, prediction and feature files as a user meets them: training/inference's dataset
reader, `talbench infer`, `talbench score` and the validate stage each refuse them with one line
naming the file, the video and the field (exit 2), read nothing outside the dataset and write nothing."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from talbench.config import DEFAULTS
from talbench.data.archive import safe_extract
from talbench.data.dataset import VideoDataset
from talbench.data.registry import Registry
from talbench.data.synthetic import write_twin
from talbench.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
CHANNELS = 4
DEEP = "[" * 100_000 + "]" * 100_000  # far past Python's recursion limit
GOOD_VIDEO = {"subset": "test", "duration": 10.0, "fps": 30.0,
              "annotations": [{"label": "Jump", "label_id": 0, "segment": [1.0, 2.0]},
                              {"label": "Run", "label_id": 1, "segment": [3.0, 5.0]}]}
GOOD_DB = {"vid_a": GOOD_VIDEO, "vid_b": {**GOOD_VIDEO, "annotations": GOOD_VIDEO["annotations"][:1]}}
DETECTIONS = [{"label": 0, "score": 0.9, "segment": [1.0, 2.0]}]
BAD_IDS = ["../x", "a/b", "a\\b", "/abs/path/x", "..", ".", "", "a\x00b", "a\nb", "C:x", "v" * 300]


def named(video_id: str) -> str:
    """How an error line starts to quote a refused id (a long one is cut short)."""
    return repr(video_id)[:60]


# -- helpers ---------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder): byte-identical before and after."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def write_db(path: Path, database: Any) -> Path:
    path.write_text(json.dumps({"version": "t", "database": database}), encoding="utf-8")
    return path


def one_line(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def refused(caught: pytest.ExceptionInfo[InputError], path: Path, item: str, field: str) -> None:
    err = caught.value
    assert "\n" not in str(err) and err.path == str(path) and item in err.item and err.field == field, str(err)


@pytest.fixture
def unreadable() -> Iterator[Callable[[Path], None]]:
    """Make a file permission-denied; as root (which reads anything) reading it raises as it would."""
    made: list[Path] = []
    real_open = open

    def deny(path: Path) -> None:
        path.chmod(0)
        made.append(path)

    def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if any(Path(file) == p for p in made if isinstance(file, (str, Path))):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        if os.geteuid() == 0:
            mp.setattr("builtins.open", fake_open)
            mp.setattr("io.open", fake_open)
        yield deny
    for path in made:
        path.chmod(0o644)


# -- the reader training and inference use ---------------------------------------------------------


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """`<tmp>/ds/{ann.json, feats/<id>.npy}`, and `<tmp>/ds/x.npy`, a file '../x' would reach."""
    root = tmp_path / "ds"
    (root / "feats").mkdir(parents=True)
    for vid in GOOD_DB:
        np.save(root / "feats" / f"{vid}.npy", np.ones((20, CHANNELS), np.float32))
    np.save(root / "x.npy", np.ones((20, CHANNELS), np.float32))
    write_db(root / "ann.json", GOOD_DB)
    return root


def dataset_cfg(root: Path, **changes: Any) -> dict[str, Any]:
    return {**DEFAULTS["dataset"], "json_file": str(root / "ann.json"), "feat_folder": str(root / "feats"), "file_prefix": "",
            "input_dim": CHANNELS, "num_classes": 3, "feat_stride": 4, "num_frames": 16, "max_seq_len": 64, **changes}


def load(root: Path, **changes: Any) -> VideoDataset:
    return VideoDataset(dataset_cfg(root, **changes), ["test"], is_training=True)


def test_good_tiny_dataset_loads(tiny: Path) -> None:
    data = load(tiny)
    assert [r.video_id for r in data.records] == ["vid_a", "vid_b"] and data.label_names == {0: "Jump", 1: "Run"}
    assert data[0].feats.shape == (CHANNELS, 20)


@pytest.mark.parametrize("video_id", BAD_IDS, ids=named)
def test_dataset_refuses_a_path_for_a_video_id(tiny: Path, video_id: str) -> None:
    write_db(tiny / "ann.json", {**GOOD_DB, video_id: GOOD_VIDEO})
    before = snapshot(tiny)
    with pytest.raises(InputError) as caught:
        load(tiny)
    refused(caught, tiny / "ann.json", named(video_id), "video_id")
    assert snapshot(tiny) == before


def _edit(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    db = copy.deepcopy(GOOD_DB)
    change(db["vid_a"])
    return db


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda v: v.__setitem__(key, value)


def _set_ann(key: str, value: Any, index: int = 1) -> Callable[[dict[str, Any]], None]:
    return lambda v: v["annotations"][index].__setitem__(key, value)


A1 = "vid_a.annotations[1]"
BAD_FIELDS = [
    (_set_ann("segment", "3-5"), A1, "segment"),
    (_set_ann("segment", [3.0, 4.0, 5.0]), A1, "segment"),
    (_set_ann("segment", [5.0, 3.0]), A1, "segment"),  # start after end
    (_set_ann("segment", [3.0, float("inf")]), A1, "segment"),
    (_set_ann("segment", [[[3.0]], 5.0]), A1, "segment"),
    (_set_ann("label_id", "1"), A1, "label_id"),
    (_set_ann("label_id", 2.5), A1, "label_id"),
    (_set_ann("label_id", True), A1, "label_id"),
    (_set_ann("label_id", -1), A1, "label_id"),
    (_set_ann("label_id", 7), A1, "label_id"),  # >= num_classes
    (_set_ann("label_id", 0), A1, "label"),  # label id 0 named 'Jump' and 'Run'
    (_set_ann("label", "Jump"), A1, "label_id"),  # 'Jump' with ids 0 and 1
    (_set_ann("label", ["Run"]), A1, "label"),
    (lambda v: v["annotations"][1].pop("label"), A1, "label"),
    (lambda v: v["annotations"].__setitem__(1, "Run"), A1, "segment"),
    (_set("fps", 0), "vid_a", "fps"),
    (_set("fps", -30.0), "vid_a", "fps"),
    (_set("fps", float("nan")), "vid_a", "fps"),
    (_set("fps", "30"), "vid_a", "fps"),
    (_set("duration", -5.0), "vid_a", "duration"),
    (_set("duration", "10"), "vid_a", "duration"),
    (_set("duration", float("inf")), "vid_a", "duration"),
    (_set("annotations", {"0": GOOD_VIDEO["annotations"][0]}), "vid_a", "annotations"),
    (lambda v: v.pop("annotations"), "vid_a", "annotations"),
    (_set("subset", ["test"]), "vid_a", "subset"),
    (_set("subset", None), "vid_a", "subset"),
]
BAD_FIELD_IDS = ["segment-str", "segment-3", "start-after-end", "segment-inf", "segment-nested", "label_id-str",
                 "label_id-float", "label_id-bool", "label_id-negative", "label_id-range", "id-two-names",
                 "name-two-ids", "label-list", "label-missing", "annotation-str", "fps-0", "fps-negative", "fps-nan",
                 "fps-str", "duration-negative", "duration-str", "duration-inf", "annotations-dict",
                 "annotations-missing", "subset-list", "subset-null"]


@pytest.mark.parametrize(("change", "item", "field"), BAD_FIELDS, ids=BAD_FIELD_IDS)
def test_dataset_refuses_bad_fields(tiny: Path, change: Callable[[dict[str, Any]], Any], item: str, field: str) -> None:
    write_db(tiny / "ann.json", _edit(change))
    before = snapshot(tiny)
    with pytest.raises(InputError) as caught:
        load(tiny)
    refused(caught, tiny / "ann.json", item, field)
    assert snapshot(tiny) == before


@pytest.mark.parametrize(
    ("text", "item", "field"),
    [
        (json.dumps({"version": "t", "database": [GOOD_VIDEO]}), "top level", "database"),
        (json.dumps({"version": "t", "database": {"vid_a": [GOOD_VIDEO]}}), "vid_a", "subset"),
        (json.dumps([GOOD_DB]), "top level", "database"),
        ('{"database": ' + DEEP + "}", "file", "json"),
        ('{"database": {"vid_a": ', "line 1, column 24", "json"),
    ],
    ids=["database-list", "entry-list", "top-list", "deep", "cut-short"],
)
def test_dataset_refuses_a_file_that_is_not_the_format(tiny: Path, text: str, item: str, field: str) -> None:
    (tiny / "ann.json").write_text(text, encoding="utf-8")
    before = snapshot(tiny)
    with pytest.raises(InputError) as caught:
        load(tiny)
    refused(caught, tiny / "ann.json", item, field)
    assert snapshot(tiny) == before


def test_dataset_refuses_unreadable_annotation_files(tiny: Path, unreadable: Callable[[Path], None]) -> None:
    path = tiny / "ann.json"
    path.write_bytes(json.dumps({"database": GOOD_DB}).encode("utf-16"))  # not UTF-8
    with pytest.raises(InputError) as caught:
        load(tiny)
    refused(caught, path, "file", "path")
    assert "utf-8" in caught.value.problem
    path.unlink()
    path.mkdir()
    with pytest.raises(InputError) as caught:
        load(tiny)
    refused(caught, path, "file", "path")
    assert "directory" in caught.value.problem
    path.rmdir()
    write_db(path, GOOD_DB)
    unreadable(path)
    with pytest.raises(InputError) as caught:
        load(tiny)
    refused(caught, path, "file", "path")
    assert "Permission denied" in caught.value.problem


def _npz(array: np.ndarray, key: str = "feats") -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, **{key: array})

    return write


def _npy(array: np.ndarray) -> Callable[[Path], None]:
    return lambda path: np.save(path, array, allow_pickle=True)


def _truncated(path: Path) -> None:
    np.save(path, np.ones((20, CHANNELS), np.float32))
    path.write_bytes(path.read_bytes()[:150])


def _directory(path: Path) -> None:
    path.mkdir()


ONES = np.ones((20, CHANNELS))
BAD_FEATURES = [
    (_npy(ONES.astype(np.int64)), ".npy", "dtype"),
    (_npy(ONES.astype(np.int8)), ".npy", "dtype"),
    (_npy(ONES.astype(bool)), ".npy", "dtype"),
    (_npy(ONES.astype(np.complex64)), ".npy", "dtype"),
    (_npy(ONES.astype(object)), ".npy", "dtype"),
    (_npy(ONES.astype(str)), ".npy", "dtype"),
    (_npy(np.zeros((20,), dtype=[("a", np.float32, (CHANNELS,))])), ".npy", "dtype"),
    (_npz(ONES.astype(np.int32)), ".npz", "dtype"),
    (_npy(np.ones(20, np.float32)), ".npy", "shape"),
    (_npy(np.ones((20, CHANNELS, 1), np.float32)), ".npy", "shape"),
    (_npy(np.ones((20, CHANNELS + 1), np.float32)), ".npy", "shape"),
    (_truncated, ".npy", "features"),
    (_directory, ".npy", "features"),
    (lambda p: p.write_bytes(b"not an array"), ".npy", "features"),
    (_npz(np.ones((20, CHANNELS), np.float32), key="x"), ".npz", "feats"),
    (lambda p: p.write_bytes(b"PK\x03\x04 cut"), ".npz", "features"),
]
BAD_FEATURE_IDS = ["int64", "int8", "bool", "complex", "object", "str", "structured", "npz-int32", "1-D", "3-D",
                   "width", "truncated", "directory", "garbage", "npz-no-key", "npz-cut"]


@pytest.mark.parametrize(("write", "ext", "field"), BAD_FEATURES, ids=BAD_FEATURE_IDS)
def test_dataset_refuses_bad_feature_files(tiny: Path, write: Callable[[Path], None], ext: str, field: str) -> None:
    for vid in GOOD_DB:
        (tiny / "feats" / f"{vid}.npy").unlink()
    good = np.ones((20, CHANNELS), np.float32)
    (_npz(good) if ext == ".npz" else _npy(good))(tiny / "feats" / f"vid_a{ext}")
    path = tiny / "feats" / f"vid_b{ext}"
    write(path)
    data = load(tiny, file_ext=ext)
    before = snapshot(tiny)
    assert data[0].feats.shape == (CHANNELS, 20)
    with pytest.raises(InputError) as caught:
        data[1]
    refused(caught, path, "vid_b", field)
    assert snapshot(tiny) == before


def test_dataset_refuses_a_permission_denied_feature_file(tiny: Path, unreadable: Callable[[Path], None]) -> None:
    unreadable(tiny / "feats" / "vid_b.npy")
    with pytest.raises(InputError) as caught:
        load(tiny)[1]
    refused(caught, tiny / "feats" / "vid_b.npy", "vid_b", "features")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_floating_features_are_read_as_float32(tiny: Path, dtype: type) -> None:
    np.save(tiny / "feats" / "vid_b.npy", np.full((20, CHANNELS), 0.5, dtype))
    feats = load(tiny)[1].feats
    assert feats.dtype.is_floating_point and float(feats.mean()) == 0.5


# -- talbench infer and talbench score -------------------------------------------------------------


def talbench(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """`talbench ARGS` in this process, as its console script runs it: (exit status, stderr)."""
    from talbench.cli import main

    monkeypatch.setattr(sys, "argv", ["talbench", *map(str, args)])
    with pytest.raises(SystemExit) as caught:
        main()
    return caught.value.code, capsys.readouterr().err


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """Enough of a checkpoint to be read: infer reads the dataset before it builds a model."""
    import torch

    path = tmp_path / "last.ckpt"
    torch.save({"model": {}, "optimizer": {}, "epoch": 0, "step": 0, "history": [], "config": {}, "ema": None}, path)
    return path


def infer_args(root: Path, checkpoint: Path, out: Path) -> list[str]:
    return ["infer", str(ROOT / "configs/ci/thumos_i3d.yaml"), str(checkpoint), "--out", str(out), "--device", "cpu",
            "--set", f"dataset.json_file={root / 'ann.json'}", "--set", f"dataset.feat_folder={root / 'feats'}"]


@pytest.mark.parametrize(
    ("database", "item", "field"),
    [
        (_edit(_set("fps", 0)), "vid_a", "fps"),
        (_edit(_set("fps", -29.97)), "vid_a", "fps"),
        ({**GOOD_DB, "../x": GOOD_VIDEO}, "'../x'", "video_id"),
        (_edit(_set_ann("segment", "3-5")), A1, "segment"),
    ],
    ids=["fps-0", "fps-negative", "dotdot-id", "segment-str"],
)
def test_infer_refuses_bad_annotations(tiny: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str], database: dict[str, Any], item: str,
                                       field: str) -> None:
    write_db(tiny / "ann.json", database)
    before = snapshot(tiny)
    out = tmp_path / "preds.json"
    status, err = talbench(monkeypatch, capsys, *infer_args(tiny, checkpoint, out))
    assert status == 2
    one_line(err, f"{tiny / 'ann.json'}: {item}: field '{field}'")
    assert not out.exists() and snapshot(tiny) == before


@pytest.fixture
def score_files(tmp_path: Path) -> tuple[Path, Path]:
    gt = write_db(tmp_path / "gt.json", GOOD_DB)
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps({"results": {"vid_a": DETECTIONS}}))
    return gt, preds


def test_score_accepts_the_good_files(score_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    gt, preds = score_files
    status, err = talbench(monkeypatch, capsys, "score", "--annotations", gt, "--predictions", preds, "--out", tmp_path / "m.json")
    assert status == 0 and (tmp_path / "m.json").is_file(), err


def _deep(path: Path, key: str) -> tuple[str, str]:
    path.write_text(f'{{"{key}": {DEEP}}}')
    return "file", "json"


def _latin1(path: Path, key: str) -> tuple[str, str]:
    path.write_bytes(f'{{"{key}": {{"vidé": []}}}}'.encode("latin-1"))
    return "file", "path"


def _folder(path: Path, key: str) -> tuple[str, str]:
    path.unlink()
    path.mkdir()
    return "file", "path"


def _bad_id(video_id: str) -> Callable[[Path, str], tuple[str, str]]:
    def write(path: Path, key: str) -> tuple[str, str]:
        entries = {**GOOD_DB, video_id: GOOD_VIDEO} if key == "database" else {"vid_a": DETECTIONS, video_id: DETECTIONS}
        path.write_text(json.dumps({key: entries}))
        return named(video_id), "video_id"

    return write


@pytest.mark.parametrize("key", ["database", "results"])
@pytest.mark.parametrize("damage", [_deep, _latin1, _folder, _bad_id("../gt"), _bad_id("a\\b"), _bad_id("")],
                         ids=["deep", "latin1", "folder", "dotdot-id", "backslash-id", "empty-id"])
def test_score_refuses_bad_files(score_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], key: str,
                                 damage: Callable[[Path, str], tuple[str, str]]) -> None:
    gt, preds = score_files
    path = gt if key == "database" else preds
    item, field = damage(path, key)
    before = snapshot(tmp_path)
    status, err = talbench(monkeypatch, capsys, "score", "--annotations", gt, "--predictions", preds, "--out", tmp_path / "m.json")
    assert status == 2
    one_line(err, f"{path}: {item}: field '{field}'")
    assert snapshot(tmp_path) == before


def test_score_as_a_process_refuses_a_path_for_a_video_id(score_files: tuple[Path, Path], tmp_path: Path) -> None:
    gt, preds = score_files
    write_db(gt, {**GOOD_DB, "../../etc/x": GOOD_VIDEO})
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "-m", "talbench.cli", "score", "--annotations", str(gt), "--predictions",
                             str(preds), "--out", str(tmp_path / "m.json")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    one_line(result.stderr, f"{gt}: '../../etc/x': field 'video_id'")
    assert snapshot(tmp_path) == before


# -- the validate stage ----------------------------------------------------------------------------

NAME = "anet13_tsp"
ANNOTATIONS = "anet_1.3/annotations/anet1.3_tsp_filtered.json"


@pytest.fixture(scope="module")
def twin(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("twin")
    safe_extract(write_twin(registry.dataset(NAME), "ci", 0, root / "archives").archive, root / NAME)
    return root / NAME


@pytest.fixture
def data_root(twin: Path, tmp_path: Path) -> Path:
    """A data root holding a copy of the twin where the stage looks: `<root>/synthetic/anet13_tsp`."""
    shutil.copytree(twin, tmp_path / "data/synthetic" / NAME)
    return tmp_path / "data"


def validate(data_root: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`python components/validate.py anet13_tsp ...`, in this process: (exit status, stderr)."""
    spec = importlib.util.spec_from_file_location("validate_component", ROOT / "components/validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    status = module.main([NAME, "--params", str(ROOT / "params.yaml"), "--data-root", str(data_root), "--out", str(out)])
    return status, capsys.readouterr().err


def _first(db: dict[str, Any]) -> str:
    return next(vid for vid, video in db.items() if video["annotations"])


def _with_id(video_id: str) -> Callable[[dict[str, Any]], tuple[str, str]]:
    def change(db: dict[str, Any]) -> tuple[str, str]:
        db[video_id] = db[_first(db)]
        return named(video_id), "video_id"

    return change


def _field(key: str, value: Any, annotation: bool = False) -> Callable[[dict[str, Any]], tuple[str, str]]:
    def change(db: dict[str, Any]) -> tuple[str, str]:
        vid = _first(db)
        (db[vid]["annotations"][0] if annotation else db[vid])[key] = value
        return f"{vid}.annotations[0]" if annotation else vid, key

    return change


@pytest.mark.parametrize(
    "change",
    [*(_with_id(v) for v in BAD_IDS), _field("segment", "1-2", True), _field("segment", [1, 2, 3], True),
     _field("label_id", "3", True), _field("label_id", 2.5, True), _field("label", None, True),
     _field("fps", "30"), _field("duration", [60]), _field("annotations", {}), _field("subset", 1)],
    ids=[*map(named, BAD_IDS), "segment-str", "segment-3", "label_id-str", "label_id-float", "label-null", "fps-str",
         "duration-list", "annotations-dict", "subset-int"],
)
def test_validate_refuses_annotations_not_in_the_format(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        change: Callable[[dict[str, Any]], tuple[str, str]]) -> None:
    path = data_root / "synthetic" / NAME / ANNOTATIONS
    db = json.loads(path.read_text())["database"]
    item, field = change(db)
    write_db(path, db)
    before = snapshot(data_root)
    status, err = validate(data_root, tmp_path / "out", capsys)
    assert status == 2
    one_line(err, f"{path}: {item}", f": field '{field}'")
    assert snapshot(data_root) == before and not (tmp_path / "out").exists()  # no report: the file is not the format


def _text(text: bytes) -> Callable[[Path], tuple[str, str]]:
    def write(path: Path) -> tuple[str, str]:
        path.write_bytes(text)
        return "file", "json"

    return write


def _not_utf8(path: Path) -> tuple[str, str]:
    path.write_bytes(path.read_bytes().replace(b'"label": "', b'"label": "\xe9', 1))
    return "file", "path"


def _a_folder(path: Path) -> tuple[str, str]:
    path.unlink()
    path.mkdir()
    return "file", "path"


@pytest.mark.parametrize(
    "damage",
    [_text(b'{"database": ' + DEEP.encode() + b"}"), _text(b"[" * 5000 + b"]" * 5000), _not_utf8, _a_folder],
    ids=["deep-database", "deep-top", "not-utf8", "folder"],
)
def test_validate_refuses_unreadable_annotation_files(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      damage: Callable[[Path], tuple[str, str]]) -> None:
    path = data_root / "synthetic" / NAME / ANNOTATIONS
    item, field = damage(path)
    before = snapshot(data_root)
    status, err = validate(data_root, tmp_path / "out", capsys)
    assert status == 2
    one_line(err, f"{path}: {item}: field '{field}'")
    assert snapshot(data_root) == before and not (tmp_path / "out").exists()


def test_validate_refuses_a_permission_denied_annotation_file(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              unreadable: Callable[[Path], None]) -> None:
    path = data_root / "synthetic" / NAME / ANNOTATIONS
    unreadable(path)
    status, err = validate(data_root, tmp_path / "out", capsys)
    assert status == 2
    one_line(err, f"{path}: file: field 'path'", "Permission denied")
    assert not (tmp_path / "out").exists()


def test_validate_reports_a_folder_for_a_feature_file_as_unreadable(data_root: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = data_root / "synthetic" / NAME
    vid = _first(json.loads((data_dir / ANNOTATIONS).read_text())["database"])
    feature = data_dir / "anet_1.3/tsp_features" / f"v_{vid}.npy"
    feature.unlink()
    feature.mkdir()
    before = snapshot(data_root)
    status, err = validate(data_root, tmp_path / "out", capsys)
    assert status == 2
    one_line(err, f"{feature}: {vid}: field 'readable'", "unreadable feature file")
    assert snapshot(data_root) == before  # the report is written (an expectation failed); the dataset is not touched


def test_validate_as_a_process_refuses_a_path_for_a_video_id(data_root: Path, tmp_path: Path) -> None:
    path = data_root / "synthetic" / NAME / ANNOTATIONS
    db = json.loads(path.read_text())["database"]
    _with_id("../../../outside")(db)
    write_db(path, db)
    before = snapshot(data_root)
    result = subprocess.run([sys.executable, str(ROOT / "components/validate.py"), NAME, "--params", str(ROOT / "params.yaml"),
                             "--data-root", str(data_root), "--out", str(tmp_path / "out")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    one_line(result.stderr, f"{path}: '../../../outside': field 'video_id'")
    assert snapshot(data_root) == before and not (tmp_path / "out").exists()
