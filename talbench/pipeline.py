"""Glue between params.yaml and the stages: an experiment's config with its data paths resolved.

An experiment in params.yaml names a dataset, a task, feature types and an ActionFormer config
(the model and recipe). Its data paths come from the registry, under the folder the fetch stage
unpacked the dataset into, so one config serves every feature combination and both data sources.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talbench.config import DEFAULTS, SECTIONS, finalize, load_config
from talbench.data.fetch import dataset_dir
from talbench.data.registry import Experiment, PipelineParams, Registry, load_params, load_registry, unknown
from talbench.errors import InputError


@dataclass(frozen=True)
class PipelineExperiment:
    name: str
    experiment: Experiment
    config: dict[str, Any]  # the recipe with the data resolved; seed_config() sets a training seed
    data_dir: Path
    output: Path
    seeds: tuple[int, ...] = (0,)  # pipeline.seeds: one training run each, the first is the reference

    def seed_config(self, seed: int) -> dict[str, Any]:
        """The config of the training run with seed `seed` (its init_rand_seed)."""
        return {**self.config, "init_rand_seed": int(seed)}

    def train_dir(self, seed: int) -> Path:
        return self.output / "train" / f"seed-{seed}"

    def predictions(self, seed: int) -> Path:
        return self.output / "predictions" / f"seed-{seed}.json"


def experiment_names(params: dict[str, Any]) -> list[str]:
    return list((params.get("experiments") or {}).keys())


def training_seeds(params: dict[str, Any]) -> list[int]:
    """pipeline.seeds of params.yaml as read, or PipelineParams' default where it names none."""
    return list((params.get("pipeline") or {}).get("seeds") or PipelineParams().seeds)


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
    seeds = tuple(training_seeds(params))
    return PipelineExperiment(name, experiment, config, data_dir, Path(outputs) / name, seeds)


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
    """(parent run id, this experiment's run id); fails clearly if a configured server is unreachable.

    The parent run, made by the invocation's first tracked stage, is named `benchmark <UTC date
    and time> <short commit>`, described (what the benchmark runs) and holds the pipeline params.
    """
    import time

    from talbench.tracking import check_reachable, experiment_run, parent_run
    from talbench.tracking.mlflow_tracking import BENCHMARK_EXPERIMENT, NOTE_TAG, git_commit

    check_reachable()
    path, params = load_params(params_path)
    commit = git_commit()
    title = f"benchmark {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} {commit[:7]}"
    tags = {"talbench.params": str(params_path or "params.yaml"), NOTE_TAG: _description(params, path, commit)}
    parent = parent_run(BENCHMARK_EXPERIMENT, run_group(params_path), tags, name=title, params=_benchmark_params(params))
    return parent, experiment_run(parent, name)


def _benchmark_params(params: dict[str, Any]) -> dict[str, str]:
    """What one benchmark invocation runs, as the parent run's params."""
    data = params.get("data") or {}
    out = {"experiments": ", ".join(experiment_names(params)), "seeds": str(training_seeds(params)),
           "datasets": ", ".join((params.get("pipeline") or {}).get("datasets") or []), "data.source": str(data.get("source", "synthetic"))}
    if out["data.source"] == "synthetic":
        out["synthetic.scale"] = str((params.get("synthetic") or {}).get("scale", ""))
    return out


def _description(params: dict[str, Any], path: Path, commit: str) -> str:
    """The parent run's description (Markdown, shown at the top of the run's page)."""
    names = experiment_names(params)
    what = _benchmark_params(params)
    data = f"{what['data.source']} data" + (f" ({what['synthetic.scale']} scale)" if "synthetic.scale" in what else "")
    return (f"talbench benchmark of {len(names)} experiment(s) on {data}, each trained with seeds {what['seeds']} "
            f"(mean ± std over seeds). Params: `{path}`; git commit `{commit}`.\n\n"
            f"Each experiment is a child run below (scores, config, dataset input, predictions, plots, logs, "
            f"the registered model); each of its seeds a run under it (training curve, training time). "
            f"This run holds each experiment's average mAP (`average_mAP/<experiment>`) and the report (`report/`).\n\n"
            + "\n".join(f"- {name}" for name in names))


TRAIN_RECORD = "training.json"  # beside each seed's checkpoint: where and how long it trained
# beside scores.json: seconds of training and inference per seed. A record of one run, like mlflow.json,
# kept out of scores.json so that scoring the same checkpoints twice writes the same scores
TIMING_RECORD = "timing.json"


def write_train_record(folder: Path, summary: dict[str, Any], resumed: bool = False) -> None:
    """What a seed's training ran on (device, resolved precision) and its seconds, from training.train's
    summary; a `resumed` training adds its seconds to the record's (a finished seed resumes in no time)."""
    import json

    earlier = read_train_record(folder).get("train_s", 0.0) if resumed else 0.0
    record = {"train_s": round(earlier + float(summary["seconds"]), 3), "device": summary["device"],
              "precision": summary["precision"], "steps": summary["steps"]}
    (folder / TRAIN_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_train_record(folder: Path) -> dict[str, Any]:
    """A seed's training record, or {} for a run trained before records were written."""
    import json

    path = folder / TRAIN_RECORD
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, folder.name, "file", f"not JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("train_s"), (int, float)):
        raise InputError(path, folder.name, "train_s", "expected the training's seconds, a number")
    return record


# -- the stage graph: dvc.yaml, expanded as DVC expands it -------------------------------------

_REF = re.compile(r"\$\{\s*([^}\s]+)\s*\}")


@dataclass(frozen=True)
class Stage:
    """One stage run of the benchmark (DVC's `fetch@thumos14`): the command and the paths it reads and writes."""

    name: str
    cmd: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]  # outs, metrics and plots alike: DVC treats all three as outputs
    params: tuple[str, ...] = ()  # the params.yaml keys it reads
    reuse: bool = True  # dvc.yaml `meta: {reuse: false}`: effects beyond its outputs, never restored from a cache

    @property
    def stage(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def item(self) -> str | None:
        return self.name.split("@", 1)[1] if "@" in self.name else None


def stage_graph(params: dict[str, Any], dvc_yaml: str | Path = "dvc.yaml") -> list[Stage]:
    """Every stage of dvc.yaml with `foreach` and `${...}` resolved from `params`, in file order.

    dvc.yaml is the one definition of the pipeline; Airflow builds its tasks from this, and a test
    checks it against DVC's own expansion. Names follow DVC: `stage@key` for a mapping, `stage@item`
    for a list of plain values, `stage@index` for a list of mappings or lists (no `${key}` then).
    What DVC offers beyond that (`matrix`, `vars`, `wdir`) is refused rather than guessed at.
    """
    import yaml

    document = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8"))
    if "vars" in document:
        raise ValueError(f"{dvc_yaml}: vars is not supported by stage_graph")
    graph = []
    for name, body in document["stages"].items():
        keys = set(body) | set(body.get("do") or {})
        if unsupported := sorted(keys & {"matrix", "vars", "wdir"}):
            raise ValueError(f"{dvc_yaml}: stage {name}: {', '.join(unsupported)} is not supported by stage_graph")
        if "foreach" not in body:
            graph.append(_stage(name, body, params))
            continue
        items = body["foreach"]
        if isinstance(items, str):
            ref = _REF.fullmatch(items.strip())
            if ref is None:
                raise ValueError(f"{dvc_yaml}: stage {name}: foreach must be one ${{...}} reference, a list or a mapping")
            items = lookup(params, ref.group(1))
        if isinstance(items, dict):
            pairs = [(_text(key), {"key": key, "item": item}) for key, item in items.items()]
        elif any(isinstance(item, (dict, list)) for item in items):
            pairs = [(str(index), {"item": item}) for index, item in enumerate(items)]
        else:
            pairs = [(_text(item), {"item": item}) for item in items]
        for key, names in pairs:
            graph.append(_stage(f"{name}@{key}", body["do"], params | names))
    return graph


def upstream(graph: list[Stage], stage: Stage) -> list[Stage]:
    """The stages whose outputs `stage` reads (a dep equal to, inside or above one of their outs)."""
    def related(dep: str, out: str) -> bool:
        return dep == out or dep.startswith(out.rstrip("/") + "/") or out.startswith(dep.rstrip("/") + "/")

    return [other for other in graph if other is not stage and any(related(d, o) for d in stage.deps for o in other.outs)]


def _stage(name: str, body: dict[str, Any], context: dict[str, Any]) -> Stage:
    outs = [path for section in ("outs", "metrics", "plots") for path in _paths(body.get(section), context)]
    params = tuple(_interpolate(p, context) for p in body.get("params") or [] if isinstance(p, str))
    if any(not isinstance(p, str) for p in body.get("params") or []):
        raise ValueError(f"stage {name}: params from other files than params.yaml are not supported by stage_graph")
    reuse = bool((body.get("meta") or {}).get("reuse", True))
    return Stage(name, _interpolate(body["cmd"], context), tuple(_paths(body.get("deps"), context)), tuple(outs), params, reuse)


def _paths(entries: list[Any] | None, context: dict[str, Any]) -> list[str]:
    """DVC path lists: plain strings, or one-key mappings {path: options}."""
    return [_interpolate(next(iter(e)) if isinstance(e, dict) else e, context) for e in entries or []]


def _interpolate(text: str, context: dict[str, Any]) -> str:
    return _REF.sub(lambda m: _text(lookup(context, m.group(1))), text)


def _text(value: Any) -> str:
    """A value as DVC writes it into a string: booleans as true/false."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def lookup(context: dict[str, Any], dotted: str) -> Any:
    """`a.b.c` or `a.b[0]` in `context`, as DVC selects it."""
    value: Any = context
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", dotted):
        value = value[int(part[1:-1])] if part.startswith("[") else value[part]
    return value
