"""The dataset registry: `datasets:` in params.yaml, read into typed specs.

Unknown or misspelt keys are errors that name the key and the closest valid one, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from talbench.errors import InputError
from talbench.io import read_yaml_mapping


@dataclass(frozen=True)
class ArchiveSpec:
    name: str
    md5: str
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeatureSpec:
    """One feature type: files `<folder>/<prefix><video_id><ext>`, each a float32 [T, channels] array."""

    folder: str
    channels: int
    prefix: str = ""
    ext: str = ".npy"
    npz_key: str = "feats"


@dataclass(frozen=True)
class TaskSpec:
    """One label space over the dataset's videos (EPIC-Kitchens has two: verb and noun)."""

    annotations: str
    num_classes: int


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    root: str
    tasks: dict[str, TaskSpec]
    features: dict[str, FeatureSpec]
    feat_stride: int
    num_frames: int
    splits: dict[str, tuple[str, ...]]
    max_seq_len: int
    tiou: tuple[float, ...]
    default_fps: float | None = None
    archive: ArchiveSpec | None = None
    ego4d_cli: dict[str, Any] | None = None
    force_upsampling: bool = False
    ext_score_file: str | None = None

    def tiou_thresholds(self) -> np.ndarray:
        return tiou_thresholds_from(self.tiou)


def tiou_thresholds_from(spec: tuple[float, ...] | list[float]) -> np.ndarray:
    """[start, stop, num] → np.linspace, bit-identical to the reference's thresholds."""
    start, stop, num = spec
    return np.linspace(float(start), float(stop), int(num))


@dataclass(frozen=True)
class Experiment:
    """A dataset, one of its tasks and a combination of its feature types (concatenated on channels)."""

    dataset: DatasetSpec
    task: str
    features: tuple[str, ...]

    @property
    def name(self) -> str:
        task = "" if len(self.dataset.tasks) == 1 else f"_{self.task}"
        return f"{self.dataset.name}{task}-{'+'.join(self.features)}"

    @property
    def input_dim(self) -> int:
        return sum(self.dataset.features[f].channels for f in self.features)


@dataclass(frozen=True)
class Registry:
    path: Path
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise InputError(self.path, "datasets", name, unknown(name, self.datasets))
        return self.datasets[name]

    def experiment(self, dataset: str, task: str | None, features: list[str] | tuple[str, ...]) -> Experiment:
        spec = self.dataset(dataset)
        if task is None:
            task = next(iter(spec.tasks))
        if task not in spec.tasks:
            raise InputError(self.path, dataset, "tasks", unknown(task, spec.tasks))
        if not features:
            raise InputError(self.path, dataset, "features", "an experiment needs at least one feature type")
        for feat in features:
            if feat not in spec.features:
                raise InputError(self.path, dataset, "features", unknown(feat, spec.features))
        return Experiment(spec, task, tuple(features))


def unknown(name: str, valid: Any) -> str:
    """'unknown X (did you mean Y?)' with the valid choices."""
    choices = sorted(str(v) for v in valid)
    close = difflib.get_close_matches(str(name), choices, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown '{name}'{hint}; valid: {', '.join(choices)}"


def default_params_path() -> Path:
    """TALBENCH_PARAMS, else ./params.yaml, else the project's params.yaml beside the package."""
    if env := os.environ.get("TALBENCH_PARAMS"):
        return Path(env)
    here = Path("params.yaml")
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / "params.yaml"


def load_params(path: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    path = Path(path) if path is not None else default_params_path()
    return path, read_yaml_mapping(path)


def load_registry(path: str | Path | None = None) -> Registry:
    path, params = load_params(path)
    raw = params.get("datasets")
    if not isinstance(raw, dict) or not raw:
        raise InputError(path, "datasets", "datasets", "missing or empty dataset registry")
    return Registry(path, {name: _dataset(path, name, entry) for name, entry in raw.items()})


def _check_keys(path: Path, item: str, entry: Any, cls: type, required: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise InputError(path, item, cls.__name__, f"expected a mapping, got {type(entry).__name__}")
    valid = {f.name for f in fields(cls)} - ({"name"} if cls is DatasetSpec else set())
    for key in entry:
        if key not in valid:
            raise InputError(path, item, key, unknown(key, valid))
    for key in sorted(required):
        if key not in entry:
            raise InputError(path, item, key, "required key is missing")
    return entry


def _int(path: Path, item: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InputError(path, item, key, f"expected a positive integer, got {value!r}")
    return value


def _dataset(path: Path, name: str, entry: Any) -> DatasetSpec:
    required = {"title", "root", "tasks", "features", "feat_stride", "num_frames", "splits", "max_seq_len", "tiou"}
    entry = _check_keys(path, name, entry, DatasetSpec, required)
    tasks = {}
    for task, t in (entry["tasks"] or {}).items():
        item = f"{name}.tasks.{task}"
        t = _check_keys(path, item, t, TaskSpec, {"annotations", "num_classes"})
        tasks[task] = TaskSpec(str(t["annotations"]), _int(path, item, "num_classes", t["num_classes"]))
    if not tasks:
        raise InputError(path, name, "tasks", "at least one task is required")
    features = {}
    for feat, f in (entry["features"] or {}).items():
        item = f"{name}.features.{feat}"
        f = _check_keys(path, item, f, FeatureSpec, {"folder", "channels"})
        ext = f.get("ext", ".npy")
        if ext not in (".npy", ".npz"):
            raise InputError(path, item, "ext", f"expected .npy or .npz, got {ext!r}")
        features[feat] = FeatureSpec(
            folder=str(f["folder"]),
            channels=_int(path, item, "channels", f["channels"]),
            prefix=str(f.get("prefix") or ""),
            ext=ext,
            npz_key=str(f.get("npz_key", "feats")),
        )
    if not features:
        raise InputError(path, name, "features", "at least one feature type is required")
    splits = entry["splits"]
    if not isinstance(splits, dict) or not {"train", "test"} <= set(splits):
        raise InputError(path, name, "splits", "expected a mapping with 'train' and 'test' subset lists")
    tiou = entry["tiou"]
    if not (isinstance(tiou, list) and len(tiou) == 3 and isinstance(tiou[2], int) and tiou[2] > 0):
        raise InputError(path, name, "tiou", f"expected [start, stop, num] for np.linspace, got {tiou!r}")
    archive = None
    if entry.get("archive") is not None:
        a = _check_keys(path, f"{name}.archive", entry["archive"], ArchiveSpec, {"name", "md5"})
        archive = ArchiveSpec(str(a["name"]), str(a["md5"]), tuple(a.get("mirrors") or ()))
    fps = entry.get("default_fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or fps <= 0):
        raise InputError(path, name, "default_fps", f"expected a positive number or null, got {fps!r}")
    return DatasetSpec(
        name=name,
        title=str(entry["title"]),
        root=str(entry["root"]),
        tasks=tasks,
        features=features,
        feat_stride=_int(path, name, "feat_stride", entry["feat_stride"]),
        num_frames=_int(path, name, "num_frames", entry["num_frames"]),
        splits={k: tuple(v) for k, v in splits.items()},
        max_seq_len=_int(path, name, "max_seq_len", entry["max_seq_len"]),
        tiou=tuple(tiou),
        default_fps=None if fps is None else float(fps),
        archive=archive,
        ego4d_cli=entry.get("ego4d_cli"),
        force_upsampling=bool(entry.get("force_upsampling", False)),
        ext_score_file=entry.get("ext_score_file"),
    )
