"""The dataset registry: `datasets:` in params.yaml, read into typed specs.

Unknown or misspelt keys are errors that name the key and the closest valid one, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from talbench.errors import InputError
from talbench.io import read_yaml_mapping
from talbench.schema import Natural, Positive, Problem, Strict, Text, check, unknown


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


def default_params_path() -> Path:
    """TALBENCH_PARAMS, else ./params.yaml, else the project's params.yaml beside the package."""
    if env := os.environ.get("TALBENCH_PARAMS"):
        return Path(env)
    here = Path("params.yaml")
    if here.exists():
        return here
    return Path(__file__).resolve().parents[2] / "params.yaml"


# ---------------------------------------------------------------- params.yaml, section by section
# The one place that declares params.yaml's keys: add a key here and every stage accepts it.
# `datasets:` entries are typed below (DatasetSpec); experiments' `overrides` are config keys,
# checked against the config's sections when an experiment is resolved (talbench/pipeline.py).


class DataParams(Strict):
    source: Text = "synthetic"
    root: Text = "data"
    max_unpack_ratio: Annotated[Positive | None, Field(description="a number > 0, or null (the default limit)")] = None

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        from talbench.data.fetch import SOURCES  # fetch imports this module

        if value not in SOURCES:
            raise ValueError(unknown(value, SOURCES))
        return value


Md5 = Annotated[str, Field(pattern="^[0-9a-f]{32}$", description="an md5 (32 hex digits)")]


class SyntheticParams(Strict):
    seed: Natural = 0
    scale: Text = "ci"
    md5: Annotated[dict[str, dict[str, Md5]], Field(description="per dataset, per scale, an md5")] = {}
    # a data version of the twins: more annotated training videos, the same test split (the nightly DAG sets it)
    version: Annotated[str | None, Field(description="a date YYYY-MM-DD, or null (the base twin)")] = None

    @field_validator("version")
    @classmethod
    def _a_date(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                if date.fromisoformat(value).isoformat() != value:
                    raise ValueError(value)
            except ValueError:
                raise ValueError(f"expected a date YYYY-MM-DD, or null, got {value!r}") from None
        return value

    @field_validator("scale")
    @classmethod
    def _known_scale(cls, value: str) -> str:
        from talbench.data.synthetic import SCALES  # synthetic imports this module

        if value not in SCALES:
            raise ValueError(unknown(value, SCALES))
        return value


class PipelineParams(Strict):
    datasets: Annotated[list[str], Field(description="a list of registry dataset names")] = []
    # every experiment is trained once per seed (its init_rand_seed); the first is the reference
    # seed whose model is registered and whose detections the report draws
    seeds: Annotated[list[Natural], Field(min_length=1, max_length=100,
                                          description="a list of distinct training seeds (integers >= 0), e.g. [0, 1, 2]")] = [0]

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"expected distinct seeds, got {value}")
        return value


class ExperimentParams(Strict):
    dataset: Text
    task: Annotated[str | None, Field(description="a task of the dataset, or null (its first)")] = None
    features: Annotated[list[str], Field(min_length=1, description="a list of one or more feature types of the dataset")]
    config: Annotated[str, Field(description="the path of an ActionFormer YAML config")]
    overrides: Annotated[dict[str, dict[str, Any]], Field(description="config sections of config keys, e.g. {opt: {epochs: 5}}")] = {}


class NightlyParams(Strict):
    """The nightly retraining (dags/talbench_nightly.py): which experiment is in production, when, and the promotion rule."""

    experiment: Annotated[str, Field(description="the name of an experiment of params.yaml")]
    schedule: Annotated[str, Field(description="a cron expression, e.g. '0 2 * * *'")] = "0 2 * * *"
    margin: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False,
                                   description="a number in [0, 1]: the average mAP (0-1) the whole interval of a challenger's gain must exceed")] = 0.0
    level: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False, description="a confidence level in (0, 1), e.g. 0.95")] = 0.95
    resamples: Annotated[int, Field(ge=100, description="an integer >= 100 (bootstrap resamples of the test videos)")] = 1000
    model: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9_.\-]+$",
                                       description="a registered model name, or null (talbench-<experiment>-production)")] = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        from croniter import croniter  # Airflow's own cron parser

        if not croniter.is_valid(value):
            raise ValueError(f"expected a cron expression of five fields, e.g. '0 2 * * *', got {value!r}")
        return value

    @property
    def model_name(self) -> str:
        return self.model or f"talbench-{self.experiment}-production"


class ReportParams(Strict):
    """The benchmark report (components/report.py)."""

    mlflow_url: Annotated[str | None, Field(pattern=r"^https?://[^/\s]+",
                                            description="the MLflow UI's address, e.g. http://127.0.0.1:5000, or null")] = None


class Params(Strict):
    data: DataParams | None = None
    synthetic: SyntheticParams | None = None
    datasets: Annotated[dict[str, Any] | None, Field(description="a mapping of dataset entries")] = None
    pipeline: PipelineParams | None = None
    experiments: Annotated[dict[str, ExperimentParams] | None, Field(description="a mapping of experiment entries")] = None
    published: Annotated[dict[str, dict[str, float]] | None, Field(description="per experiment, mAP per tIoU")] = None
    nightly: NightlyParams | None = None
    report: ReportParams | None = None
    # checked where it is used, when an Airflow run starts (talbench.runners.runners_config): the
    # stages do not read it, and importing the runners here would make every stage depend on them
    runners: Annotated[dict[str, Any] | None, Field(description="a mapping of runner sections")] = None

    @model_validator(mode="after")
    def _known_names(self) -> Params:
        datasets = self.datasets or {}
        for name in self.pipeline.datasets if self.pipeline else []:
            if name not in datasets:
                raise Problem("pipeline.datasets", unknown(name, datasets))
        for name, entry in (self.experiments or {}).items():
            _check_names(f"experiments.{name}", entry, datasets)
        if self.nightly is not None and self.nightly.experiment not in (self.experiments or {}):
            raise Problem("nightly.experiment", unknown(self.nightly.experiment, self.experiments or {}))
        return self


def _check_names(item: str, entry: ExperimentParams, datasets: dict[str, Any]) -> None:
    """The experiment's dataset, task and features exist (malformed entries are load_registry's to report)."""
    if entry.dataset not in datasets:
        raise Problem(f"{item}.dataset", unknown(entry.dataset, datasets))
    spec = datasets[entry.dataset]
    tasks, features = (spec.get(key) if isinstance(spec, dict) else None for key in ("tasks", "features"))
    if entry.task is not None and isinstance(tasks, dict) and entry.task not in tasks:
        raise Problem(f"{item}.task", unknown(entry.task, tasks))
    for feat in entry.features:
        if isinstance(features, dict) and feat not in features:
            raise Problem(f"{item}.features", unknown(feat, features))


def load_params(path: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """params.yaml as read (a plain dict), after checking every key against `Params`."""
    path = Path(path) if path is not None else default_params_path()
    params = read_yaml_mapping(path)
    check(Params, params, path)
    return path, params


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
