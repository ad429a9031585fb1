"""Glue between params.yaml and the stages: an experiment's config with its data paths resolved.

An experiment in params.yaml names a dataset, a task, feature types and an ActionFormer config
(the model and recipe). Its data paths come from the registry, under the folder the fetch stage
unpacked the dataset into, so one config serves every feature combination and both data sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talbench.config import DEFAULTS, SECTIONS, finalize, load_config
from talbench.data.fetch import dataset_dir
from talbench.data.registry import Experiment, Registry, load_params, load_registry, unknown
from talbench.errors import InputError


@dataclass(frozen=True)
class PipelineExperiment:
    name: str
    experiment: Experiment
    config: dict[str, Any]
    data_dir: Path
    output: Path


def experiment_names(params: dict[str, Any]) -> list[str]:
    return list((params.get("experiments") or {}).keys())


def resolve_experiment(name: str, params_path: str | Path | None = None, outputs: str | Path = "outputs") -> PipelineExperiment:
    path, params = load_params(params_path)  # every key checked, experiments' names included
    registry = load_registry(path)
    entries = params.get("experiments") or {}
    if name not in entries:
        raise InputError(path, "experiments", name, unknown(name, entries))
    for other, other_entry in entries.items():  # a misspelt override anywhere fails every stage alike
        _check_override_keys(path, other, other_entry.get("overrides") or {})
    entry = entries[name]
    experiment = registry.experiment(entry["dataset"], entry.get("task"), list(entry["features"]))
    data_dir = dataset_dir(experiment.dataset.name, params)
    # per-experiment recipe changes, e.g. `overrides: {opt: {epochs: 5}}` (or dvc exp run -S ...);
    # a bad value is reported at its line of params.yaml, not in the config file
    recipe = {f"{section}.{key}": value for section, values in (entry.get("overrides") or {}).items() for key, value in values.items()}
    origins = {dotted: (path, f"experiments.{name}.overrides.{dotted.partition('.')[0]}") for dotted in recipe}
    overrides = {**_data_overrides(experiment, data_dir, registry), **recipe}
    config, notes = load_config(entry["config"], registry, overrides, origins)
    for note in notes:
        print(f"note: {note}")
    if config["dataset"]["num_classes"] != 1:  # 1: class-agnostic training (ActivityNet), kept
        config["dataset"]["num_classes"] = experiment.dataset.tasks[experiment.task].num_classes
        config = finalize(config)
    return PipelineExperiment(name, experiment, config, data_dir, Path(outputs) / name)


def _check_override_keys(path: Path, name: str, overrides: dict[str, dict[str, Any]]) -> None:
    item = f"experiments.{name}.overrides"
    for section, values in overrides.items():
        if section not in SECTIONS:
            raise InputError(path, item, section, unknown(section, SECTIONS).replace("unknown", "unknown section", 1))
        for key in values:
            if key not in DEFAULTS[section]:
                raise InputError(path, f"{item}.{section}", key, unknown(key, DEFAULTS[section]).replace("unknown", "unknown key", 1))


def _data_overrides(experiment: Experiment, data_dir: Path, registry: Registry) -> dict[str, Any]:
    ds = experiment.dataset
    specs = [ds.features[f] for f in experiment.features]
    if len({(s.prefix, s.ext) for s in specs}) > 1:
        raise InputError(registry.path, ds.name, "features", "feature types with different file prefixes or extensions cannot be combined")
    task = ds.tasks[experiment.task]
    overrides: dict[str, Any] = {
        "dataset.json_file": str(data_dir / task.annotations),
        "dataset.feat_folder": [str(data_dir / s.folder) for s in specs] if len(specs) > 1 else str(data_dir / specs[0].folder),
        "dataset.file_prefix": specs[0].prefix or None,
        "dataset.file_ext": specs[0].ext,
        "dataset.input_dim": [s.channels for s in specs] if len(specs) > 1 else specs[0].channels,
        "dataset.feat_stride": ds.feat_stride,
        "dataset.num_frames": ds.num_frames,
        "dataset.default_fps": ds.default_fps,
    }
    if ds.ext_score_file:
        overrides["test_cfg.ext_score_file"] = str(data_dir / ds.ext_score_file)
    return overrides


def run_group(params_path: str | Path | None = None) -> str:
    """The MLflow parent run of this benchmark invocation: TALBENCH_RUN_GROUP, else commit + params.

    Every stage process of one `dvc repro` sees the same commit and params, so they agree.
    """
    import hashlib
    import os

    from talbench.data.registry import default_params_path
    from talbench.tracking.mlflow_tracking import git_commit

    if group := os.environ.get("TALBENCH_RUN_GROUP"):
        return group
    params = Path(params_path) if params_path is not None else default_params_path()
    return f"{git_commit()[:12]}-{hashlib.md5(params.read_bytes()).hexdigest()[:8]}"


def tracked_run(name: str, params_path: str | Path | None = None) -> tuple[str, str]:
    """(parent run id, this experiment's run id); fails clearly if a configured server is unreachable."""
    from talbench.tracking import check_reachable, experiment_run, parent_run

    check_reachable()
    parent = parent_run("talbench", run_group(params_path), {"talbench.params": str(params_path or "params.yaml")})
    return parent, experiment_run(parent, name)


def data_hash(dataset: str, lock: str | Path = "dvc.lock") -> str:
    """The DVC hash of the fetched dataset (from dvc.lock), or 'unknown' outside DVC."""
    import yaml

    try:
        stages = yaml.safe_load(Path(lock).read_text())["stages"]
        return str(stages[f"fetch@{dataset}"]["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"
