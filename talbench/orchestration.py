"""What the Airflow DAGs run, kept out of them: per-run workspaces and the stage runner.

The stage graph is dvc.yaml, expanded by `talbench.pipeline.stage_graph`; nothing here lists
stages or commands. A DAG run works in a workspace of its own,
`<TALBENCH_WORKSPACES or <project>/workspaces>/<run id, sanitized>/`, that holds

- `params.yaml`: the project's, narrowed to the chosen experiments and their datasets, with the
  run's overrides (epochs, synthetic scale);
- `dvc.snapshot.yaml`: a copy of the project's dvc.yaml, so the run's commands are fixed when it
  starts (not named dvc.yaml: DVC in the project would take it for a second pipeline);
- `components/` and `configs/`: links to the project's folders, so the stage commands run
  unchanged with the workspace as their working directory;
- what the stages make there: `data/`, `outputs/`, `reports/` and, unless MLFLOW_TRACKING_URI is
  set, the MLflow store `mlruns/` (`mlruns/mlflow.db`).

Light to import (yaml and the standard library; `talbench.pipeline` for the graph): the DAG file
imports this module when Airflow parses it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from talbench.io import read_yaml_mapping, write_text
from talbench.pipeline import Stage, stage_graph, training_seeds, upstream

PROJECT = Path(__file__).resolve().parents[1]
SNAPSHOT = "dvc.snapshot.yaml"
CACHE = ".stage-cache"  # beside the workspaces, shared by them
LINKED = ("components", "configs")  # what the stage commands name by relative path, shared by every workspace
# the Airflow pool of the training tasks (GPU work): its slots cap how many train at once, over every DAG
TRAIN_POOL = os.environ.get("TALBENCH_TRAIN_POOL", "talbench_train")
REFUSED = {2: "bad input", 3: "the system refused"}  # the components' one-line errors: retrying cannot help

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage command failed in a way a retry may fix (a crash, a kill, a bug): Airflow retries it."""


class _StandInFailException(Exception):
    """AirflowFailException where Airflow is not installed: the runner stays usable and testable."""


def fail_exception() -> type[Exception]:
    try:
        from airflow.sdk.exceptions import AirflowFailException
    except ImportError:
        return _StandInFailException
    return AirflowFailException


# every task: transient failures (a crash, a kill, a server not up yet) are retried with backoff
RETRIES = {
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
}


@contextlib.contextmanager
def refused_as_failure() -> Iterator[None]:
    """Bad params (ValueError, InputError) fail the task at once, in one `error:` line, without retries."""
    from talbench.errors import InputError

    try:
        yield
    except (ValueError, InputError) as exc:
        raise fail_exception()(f"error: {exc}") from None


# ---------------------------------------------------------------- params and the stage graph


def narrow_params(params: Mapping[str, Any], experiments: Iterable[str], *, epochs: int | None = None,
                  scale: str | None = None, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                  seeds: Iterable[int] | None = None) -> dict[str, Any]:
    """params.yaml for a run of `experiments` only: their entries (in params.yaml's order), their
    datasets as `pipeline.datasets`, `synthetic.scale` when `scale` is given, `pipeline.seeds` when
    `seeds` are given. `overrides`
    (`{section: {key: value}}`, e.g. `{"model": {"embd_dim": 64}}`) and then `epochs` (as
    `opt.epochs`) are merged into each experiment's `overrides`, where the stages check them like
    any override in params.yaml. Everything else is kept as it is."""
    chosen = list(dict.fromkeys(experiments))
    entries = params.get("experiments") or {}
    if unknown := [name for name in chosen if name not in entries]:
        raise ValueError(f"unknown experiment(s) {', '.join(unknown)}: params.yaml has {', '.join(entries)}")
    if not chosen:
        raise ValueError("no experiment chosen")
    out = copy.deepcopy(dict(params))
    out["experiments"] = {name: copy.deepcopy(entry) for name, entry in entries.items() if name in chosen}
    extra = {section: dict(values) for section, values in (overrides or {}).items()}
    if epochs is not None:
        extra.setdefault("opt", {})["epochs"] = int(epochs)
    for entry in out["experiments"].values():
        for section, values in extra.items():
            if not isinstance(values, Mapping):
                raise ValueError(f"overrides.{section}: expected {{key: value}}, got {values!r}")
            entry.setdefault("overrides", {}).setdefault(section, {}).update(copy.deepcopy(values))
    out["pipeline"] = {**(out.get("pipeline") or {}),
                       "datasets": list(dict.fromkeys(e["dataset"] for e in out["experiments"].values()))}
    if seeds is not None:
        out["pipeline"]["seeds"] = [int(seed) for seed in seeds]
    if scale is not None:
        out["synthetic"] = {**(out.get("synthetic") or {}), "scale": scale}
    if isinstance(out.get("published"), dict):
        out["published"] = {k: v for k, v in out["published"].items() if k in out["experiments"]}
    if isinstance(out.get("nightly"), dict) and out["nightly"].get("experiment") not in out["experiments"]:
        del out["nightly"]  # it names an experiment this run does not have
    return out


def nightly_params(params: Mapping[str, Any], data_version: str | None, *, epochs: int | None = None,
                   overrides: Mapping[str, Mapping[str, Any]] | None = None, margin: float | None = None) -> dict[str, Any]:
    """params.yaml for one night: the production experiment (`nightly.experiment`) only, on data
    version `data_version` (for the synthetic twins, `synthetic.version`: more training videos, the
    same test split; real data is whatever its fetch gives), with the night's overrides. One
    training seed, the first of pipeline.seeds: the challenger is one model, and the promotion's
    paired bootstrap weighs it against the champion on the same test videos."""
    nightly = params.get("nightly")
    if not isinstance(nightly, Mapping) or not nightly.get("experiment"):
        raise ValueError("params.yaml has no nightly.experiment: name the production experiment there")
    out = narrow_params(params, [nightly["experiment"]], epochs=epochs, overrides=overrides)
    out["nightly"] = {**nightly, **({} if margin is None else {"margin": float(margin)})}
    out["pipeline"]["seeds"] = training_seeds(out)[:1]
    if data_version is not None and (out.get("data") or {}).get("source", "synthetic") == "synthetic":
        out["synthetic"] = {**(out.get("synthetic") or {}), "version": data_version}
    return out


def stage_kinds(graph: list[Stage]) -> dict[str, list[str]]:
    """Each kind of stage (`fetch`, `train`, ...) in graph order, with the kinds it reads from.

    The DAG has one task (mapped over the kind's items) per kind; its order is this relation.
    """
    kinds: dict[str, set[str]] = {}
    for stage in graph:
        kinds.setdefault(stage.stage, set()).update(u.stage for u in upstream(graph, stage) if u.stage != stage.stage)
    order = list(kinds)
    return {kind: sorted(ups, key=order.index) for kind, ups in kinds.items()}


def mapped_kinds(graph: list[Stage]) -> set[str]:
    """The kinds made by `foreach` (one stage per dataset or experiment)."""
    return {stage.stage for stage in graph if stage.item is not None}


def project_graph(project: Path = PROJECT) -> list[Stage]:
    return stage_graph(read_yaml_mapping(project / "params.yaml"), project / "dvc.yaml")


def stage_argv(stage: Stage, *, python: str | None = None, resume: bool = False) -> list[str]:
    """The stage's command from the graph, run by this interpreter, reading the workspace's params.yaml.

    `--resume` is added to a `train` stage that is being retried: it continues from its checkpoint.
    """
    argv = shlex.split(stage.cmd)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = python or sys.executable
    argv += ["--params", "params.yaml"]
    if resume and stage.stage == "train":
        argv.append("--resume")
    return argv


# ---------------------------------------------------------------- workspaces


def workspaces_root(env: Mapping[str, str] | None = None, project: Path = PROJECT) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("TALBENCH_WORKSPACES") or project / "workspaces").resolve()


def workspace_name(run_id: str) -> str:
    """A run id as one safe folder name: `manual__2026-12-01T01:58:00+00:00` -> `manual__2026-12-01T01-58-00-00-00`."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip(".-")[:200]
    return name or "run"


def make_workspace(workspace: str | Path, params: Mapping[str, Any], project: Path = PROJECT) -> Path:
    """Create (or refresh, for a re-run of the same DAG run) the workspace; return its path.

    The params are checked first, the `runners` section included (the stages do not read it): a
    bad value fails the run's first task with one line, before any work."""
    import yaml

    from talbench.data.registry import Params
    from talbench.runners import runners_config  # it imports this module
    from talbench.schema import check

    check(Params, dict(params), project / "params.yaml")
    runners_config(params, project / "params.yaml")

    workspace = Path(workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    header = "# talbench workspace params: the project's params.yaml narrowed to this run (written by talbench.orchestration)\n"
    text = header + yaml.safe_dump(dict(params), sort_keys=False, allow_unicode=True)
    write_text(workspace / "params.yaml", text)
    write_text(workspace / SNAPSHOT, (project / "dvc.yaml").read_text(encoding="utf-8"))
    for name in LINKED:
        link, target = workspace / name, (project / name).resolve()
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise FileExistsError(f"{link}: expected a link to {target}")
        link.symlink_to(target, target_is_directory=True)
    return workspace


def workspace_graph(workspace: str | Path) -> list[Stage]:
    workspace = Path(workspace)
    return stage_graph(read_yaml_mapping(workspace / "params.yaml"), workspace / SNAPSHOT)


def prepare(run_id: str, experiments: Iterable[str], *, epochs: int | None = None, scale: str | None = None,
            overrides: Mapping[str, Mapping[str, Any]] | None = None, seeds: Iterable[int] | None = None,
            project: Path = PROJECT, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Make the run's workspace; return its path and the names of its stages, by kind (what the DAG maps over)."""
    params = narrow_params(read_yaml_mapping(project / "params.yaml"), experiments, epochs=epochs, scale=scale,
                           overrides=overrides, seeds=seeds)
    workspace = make_workspace(workspaces_root(env, project) / workspace_name(run_id), params, project)
    stages: dict[str, list[str]] = {}
    for stage in workspace_graph(workspace):
        stages.setdefault(stage.stage, []).append(stage.name)
    return {"workspace": str(workspace), "stages": stages}


def stage_env(workspace: Path, base: Mapping[str, str] | None = None, tracking_uri: str | None = None) -> dict[str, str]:
    """The stage's environment: the worker's, with params read from the workspace and one MLflow
    parent run per workspace. MLFLOW_TRACKING_URI is passed on when set; unset, the components
    track into `tracking_uri` if given, else into the workspace's mlruns/."""
    env = dict(os.environ if base is None else base)
    if tracking_uri and not env.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.pop("TALBENCH_PARAMS", None)  # the workspace's params.yaml, named on the command line, is the one
    env["TALBENCH_RUN_GROUP"] = workspace.name
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    return env


# ---------------------------------------------------------------- the runner (local)


def run_command(argv: list[str], cwd: str | Path, env: Mapping[str, str] | None = None,
                emit: Callable[[str], None] | None = None) -> None:
    """Run one stage command, streaming its output line by line to `emit` (the task log).

    Exit 0: done. Exit 2 or 3 (the components' "bad input" and "system refused", one `error:`
    line): AirflowFailException with that line, no retry. Any other exit (a crash, a kill, a bug):
    StageFailed, which Airflow retries.
    """
    emit = emit or log.info
    emit(f"$ cd {cwd} && {shlex.join(argv)}")
    error_line = ""
    proc = subprocess.Popen(argv, cwd=cwd, env=None if env is None else dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            emit(line)
            if line.startswith("error:"):
                error_line = line
        rc = proc.wait()
    finally:  # the task was killed or timed out: do not leave the stage running
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if rc == 0:
        return
    if rc in REFUSED:
        refused = fail_exception()(error_line or f"{shlex.join(argv)}: exit {rc} ({REFUSED[rc]})")
        refused.returncode = rc  # type: ignore[attr-defined]  # a container entry point exits with it
        raise refused
    raise StageFailed(f"{shlex.join(argv)}: exit {rc}{': ' + error_line if error_line else ''}")


def run_stage(workspace: str | Path, name: str, *, try_number: int = 1, python: str | None = None,
              emit: Callable[[str], None] | None = None, project: Path = PROJECT,
              tracking_uri: str | None = None) -> dict[str, Any]:
    """Run the workspace's stage `name` (e.g. `train@thumos14-i3d`) with the workspace as its working directory.

    A stage whose command, params and deps are the same as an earlier run's anywhere under the
    workspaces root is not run again: its outputs are restored from the stage cache
    (talbench/stage_cache.py). Returns the small record that goes to XCom: {"stage", "reused"}.
    """
    from talbench import stage_cache

    emit = emit or log.info
    workspace = Path(workspace)
    graph = {stage.name: stage for stage in workspace_graph(workspace)}
    if name not in graph:
        raise fail_exception()(f"{workspace / SNAPSHOT}: no stage {name!r} (stages: {', '.join(graph)})")
    stage = graph[name]
    cache = workspace.parent / CACHE
    key = stage_cache.stage_key(stage, workspace, project, read_yaml_mapping(workspace / "params.yaml")) if stage.reuse else None
    if key and stage_cache.restore(cache, key, stage, workspace):
        emit(f"{name}: same command, params and inputs as an earlier run: outputs restored from the stage cache ({key[:12]})")
        return {"stage": name, "reused": True}
    run_command(stage_argv(stage, python=python, resume=try_number > 1), workspace, stage_env(workspace, tracking_uri=tracking_uri), emit)
    if key and stage_cache.save(cache, key, stage, workspace):
        emit(f"{name}: outputs stored in the stage cache ({key[:12]})")
    return {"stage": name, "reused": False}


def run_summary(workspace: str | Path) -> dict[str, Any]:
    """What a finished benchmark run tells in XCom: its workspace, report and MLflow parent run
    (read from the experiments' mlflow.json, which evaluate writes)."""
    import json

    workspace = Path(workspace)
    records = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(workspace.glob("outputs/*/mlflow.json"))]
    first = records[0] if records else {}
    return {"workspace": str(workspace), "report": str(workspace / "reports" / "benchmark" / "benchmark.html"),
            "mlflow_parent_run": first.get("parent_run_id"), "tracking_uri": first.get("tracking_uri")}


# ---------------------------------------------------------------- the nightly retraining


def nightly_graph(params: Mapping[str, Any], dvc_yaml: Path) -> list[Stage]:
    """The stages one night runs: dvc.yaml's, for the production experiment and its dataset."""
    return stage_graph(nightly_params(params, None), dvc_yaml)


def nightly_store(env: Mapping[str, str] | None = None, project: Path = PROJECT) -> str:
    """Where the nightly runs track and keep the registry: MLFLOW_TRACKING_URI when set, else one
    SQLite store shared by every night, `<workspaces root>/nightly-mlruns/mlflow.db`."""
    env = os.environ if env is None else env
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    store = workspaces_root(env, project) / "nightly-mlruns"
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def prepare_night(run_id: str, data_version: str, *, epochs: int | None = None,
                  overrides: Mapping[str, Mapping[str, Any]] | None = None, margin: float | None = None,
                  project: Path = PROJECT, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Make the night's workspace; return its path, the data version and the tracking store."""
    params = nightly_params(read_yaml_mapping(project / "params.yaml"), data_version, epochs=epochs,
                            overrides=overrides, margin=margin)
    workspace = make_workspace(workspaces_root(env, project) / workspace_name(run_id), params, project)
    return {"workspace": str(workspace), "data_version": data_version, "tracking_uri": nightly_store(env, project)}


def run_promotion(workspace: str | Path, tracking_uri: str, *, python: str | None = None,
                  emit: Callable[[str], None] | None = None) -> dict[str, Any]:
    """components/promote.py in the night's workspace; returns its decision (promotion.json)."""
    import json

    workspace = Path(workspace)
    argv = [python or sys.executable, "components/promote.py", "--params", "params.yaml"]
    run_command(argv, workspace, stage_env(workspace, tracking_uri=tracking_uri), emit)
    experiment = read_yaml_mapping(workspace / "params.yaml")["nightly"]["experiment"]
    return json.loads((workspace / "outputs" / experiment / "promotion.json").read_text(encoding="utf-8"))
