"""MLflow tracking of benchmark runs: one parent run per invocation, one child run per experiment,
and under it one run per training seed.

A benchmark invocation (one `dvc repro`, one Airflow DAG run) spans several processes, so the
parent run is not held open by anyone: every stage finds it again by the invocation's group id
(tag `talbench.group`). Each experiment gets one child run (tag `mlflow.parentRunId`), also found
again by name, so the train and evaluate stages of an experiment write into the same run. The
experiment's run holds the config, the scores over seeds (mean, `_std`, `seeds`) and the model;
each seed's run (`<experiment>/seed-<n>`) its training curve and its own scores.

mlflow is imported inside the functions: importing it costs seconds, and only tracking needs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from talbench.errors import InputError

if TYPE_CHECKING:
    import torch
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger(__name__)
if not sys.stderr.isatty():  # in logs (DVC, Airflow) MLflow's artifact bars are lines of carriage returns
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DEFAULT_DIR = Path("mlruns")  # relative to the working directory: the project root for DVC stages
GROUP_TAG = "talbench.group"
ROLE_TAG = "talbench.role"
PARENT_TAG = "mlflow.parentRunId"
EXPERIMENT_TAG = "experiment"
SEED_TAG = "seed"
PRECISION_TAG = "precision"  # what train_cfg.precision resolved to on the machine that trained
ALIAS = "challenger"  # a fresh model challenges the `champion` a person promotes

# MLflow's limits (mlflow.utils.validation): longer param values are rejected, not truncated,
# unless MLFLOW_TRUNCATE_LONG_VALUES is set; batches are capped per entity type.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# group ids and experiment names go into search filters: no quotes to escape
_ID = re.compile(r"^[A-Za-z0-9_.:+\-]+$")
_BAD_METRIC_CHAR = re.compile(r"[^/\w.\- :]")
SETTLE_S = 1.0  # see _find_or_create
TRAIN_KEYS = ("cls_loss", "reg_loss", "final_loss", "lr")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the local store mlruns/mlflow.db (SQLite; the folder is made here).

    The default is made absolute so that a later chdir, or MLflow's per-URI store cache, cannot
    point it at another folder. Experiments made here keep their artifacts beside the database, in
    mlruns/<experiment name> (see experiment_id).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def check_reachable(uri: str | None = None, timeout: float = 10.0) -> None:
    """Fail fast, in one line, when an http(s) tracking server does not answer; local stores always pass.

    Without this, MLflow's client retries with back-off for minutes before failing.
    """
    uri = uri or tracking_uri()
    _check_uri_form(uri)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return  # it answered (an auth proxy, a path prefix): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(
            "MLFLOW_TRACKING_URI", uri, "tracking",
            f"the tracking server cannot be reached ({reason}); start it, or unset MLFLOW_TRACKING_URI "
            f"to track into the local store {DEFAULT_DIR}/mlflow.db",
        ) from None


STORE_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks")


def _check_uri_form(uri: str) -> None:
    """A tracking URI MLflow can use, checked before any work (MLflow itself fails late, in a traceback)."""
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0]  # postgresql+psycopg2://...
    if scheme not in STORE_SCHEMES:
        raise InputError("MLFLOW_TRACKING_URI", uri, "tracking", f"not a tracking URI MLflow can use: expected one of "
                         f"{', '.join(s + '://' for s in STORE_SCHEMES)} (e.g. http://127.0.0.1:5000 or sqlite:///mlruns/mlflow.db)")
    if scheme in ("http", "https") and not parsed.hostname:
        raise InputError("MLFLOW_TRACKING_URI", uri, "tracking", "no host in the server address (e.g. http://127.0.0.1:5000)")
    if scheme == "sqlite":
        db = Path(uri.split(":///", 1)[1]) if ":///" in uri else None
        if db is None or not db.parent.is_dir():
            raise InputError("MLFLOW_TRACKING_URI", uri, "tracking", "the SQLite store's folder does not exist (sqlite:///FOLDER/mlflow.db)")


def tracking_client() -> MlflowClient:
    """A client of tracking_uri(); a fresh local store is made once, under a lock (see _made_store)."""
    import mlflow

    uri = tracking_uri()
    # the registry is the tracking store unless MLFLOW_REGISTRY_URI says otherwise: never a registry
    # URI some earlier call in this process left in MLflow's globals
    registry = os.environ.get("MLFLOW_REGISTRY_URI", "").strip() or uri
    if not uri.startswith("sqlite:///") or uri in _MADE:
        return mlflow.MlflowClient(uri, registry)
    with _made_store(Path(uri.removeprefix("sqlite:///"))):
        client = mlflow.MlflowClient(uri, registry)  # makes or upgrades the store's tables
        client.search_experiments(max_results=1)
    _MADE.add(uri)
    return client


_MADE: set[str] = set()  # the SQLite stores this process has opened


@contextlib.contextmanager
def _made_store(db: Path) -> Iterator[None]:
    """One process at a time opens a SQLite store for the first time.

    Stages that start together on a fresh store (two trainings of one Airflow run) would each run
    MLflow's schema migration at once, and all but one fail ('alembic_version ... 0 found', 'table
    already exists'). The first to take the lock makes the tables; the others then find them made.
    """
    import fcntl

    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _fluent_uri() -> Iterator[None]:
    """Point MLflow's global (fluent) API at our store for one block, then put back what was there.

    mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, so left alone it would
    leak into this process's later calls (and its subprocesses).
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri())
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets it again


def _check_id(kind: str, value: str) -> None:
    if not _ID.match(value):
        raise ValueError(f"{kind} {value!r} may only contain letters, digits and _ . : + -")


def experiment_id(client: MlflowClient, experiment: str) -> str:
    """The MLflow experiment's id, created if missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_location(experiment))
        except MlflowException:  # another process created it between our lookup and create
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def _artifact_location(experiment: str) -> str | None:
    """Beside a SQLite store, `<store folder>/<experiment>`: MLflow's own default there is ./mlruns of
    whichever process makes the experiment first, which for stages run in per-run workspaces (Airflow)
    would be one run's workspace. Servers and other stores choose for themselves (None)."""
    uri = tracking_uri()
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / experiment).resolve().as_uri()


def _find_or_create(client: MlflowClient, exp_id: str, tags: Mapping[str, str], run_name: str) -> str:
    """The oldest live run carrying all `tags`, created if there is none.

    Processes asking at the same moment may each find nothing and create a run. All of them keep
    the oldest run (start time, then run id) and the others are deleted by their creators. A start
    time is stamped by the client before the run is stored, so a run is only trusted once it is
    SETTLE_S old: by then every run stamped before it is visible, and it is the oldest for good.
    This assumes a run is stored within SETTLE_S of being stamped and the processes share a clock
    (one machine, or synchronised ones). Only racing callers wait; a settled run is returned at once.
    """
    flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())

    def oldest() -> Run | None:
        runs = client.search_runs([exp_id], filter_string=flt, max_results=100)
        return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)) if runs else None

    found = oldest()
    mine = None
    if found is None:
        mine = client.create_run(exp_id, tags=dict(tags), run_name=run_name)
        found = mine
    unsettled_ms = found.info.start_time + SETTLE_S * 1000 - _now_ms()
    if unsettled_ms > 0:
        time.sleep(min(unsettled_ms / 1000, SETTLE_S))
        found = oldest() or found
    if mine is not None and found.info.run_id != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return found.info.run_id


def parent_run(experiment: str, group: str, tags: Mapping[str, str] | None = None) -> str:
    """The id of the invocation's parent run in MLflow experiment `experiment`, found by `group`.

    Every process of one invocation passes the same group (a DVC/Airflow run id) and gets the same
    run, even when two call at the same moment (see _find_or_create). An unreachable tracking
    server fails here, before any training starts.
    """
    _check_id("group", group)
    check_reachable(tracking_uri())
    client = tracking_client()
    exp_id = experiment_id(client, experiment)
    run_id = _find_or_create(client, exp_id, {GROUP_TAG: group, ROLE_TAG: "parent"}, run_name=group)
    if tags:
        client.log_batch(run_id, tags=_tags(tags))
    return run_id


def experiment_run(parent_run_id: str, name: str) -> str:
    """The child run of experiment `name` under the parent run, created if missing (same rules as parent_run)."""
    _check_id("experiment", name)
    client = tracking_client()
    parent = client.get_run(parent_run_id)
    tags = {PARENT_TAG: parent_run_id, EXPERIMENT_TAG: name, ROLE_TAG: "experiment"}
    if GROUP_TAG in parent.data.tags:
        tags[GROUP_TAG] = parent.data.tags[GROUP_TAG]
    return _find_or_create(client, parent.info.experiment_id, tags, run_name=name)


def seed_run(experiment_run_id: str, seed: int) -> str:
    """The run of training seed `seed` under the experiment's run, created if missing."""
    client = tracking_client()
    parent = client.get_run(experiment_run_id)
    name = parent.data.tags.get(EXPERIMENT_TAG, parent.info.run_name)
    tags = {PARENT_TAG: experiment_run_id, EXPERIMENT_TAG: name, ROLE_TAG: "seed", SEED_TAG: str(int(seed))}
    return _find_or_create(client, parent.info.experiment_id, tags, run_name=f"{name}/seed-{int(seed)}")


def tag_precision(run_id: str, precision: str) -> None:
    """The resolved training precision (fp32 or bf16) of a seed's run: `auto` depends on the machine."""
    tracking_client().set_tag(run_id, PRECISION_TAG, precision)


def log_seed_run(experiment_run_id: str, seed: int, *, history: Sequence[Mapping[str, Any]] = (),
                 metrics: Mapping[str, Any] | None = None) -> str:
    """One training seed's curve (epochs EpochLogger missed) and scores into its run, then finish it."""
    client = tracking_client()
    run_id = seed_run(experiment_run_id, seed)
    _log_curve_and_scores(client, run_id, history, metrics)
    client.set_terminated(run_id)
    return run_id


def _log_curve_and_scores(client: MlflowClient, run_id: str, history: Sequence[Mapping[str, Any]],
                          metrics: Mapping[str, Any] | None) -> None:
    """The epochs of `history` the run lacks (step = epoch) and the final scores (step 0)."""
    from mlflow.entities import Metric

    now = _now_ms()
    logged = {m.step for m in client.get_metric_history(run_id, "train/final_loss")}
    points = [Metric(k, v, now, int(r["epoch"])) for r in history if int(r["epoch"]) not in logged
              for k, v in epoch_metrics(r).items()]
    points += [Metric(k, v, now, 0) for k, v in score_metrics(metrics or {}).items()]
    for chunk in _chunks(points, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(chunk))


# ---------------------------------------------------------------- conversions


def flatten_config(config: Mapping[str, Any]) -> dict[str, str]:
    """`section.key` -> value as a string, cut to MLflow's length limits; derived copies left out."""
    from talbench.config import dump_config

    # dump_config drops the copies finalize() puts into `model` (train_cfg, test_cfg, ...)
    clean = yaml.safe_load(dump_config(dict(config)))
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix[:MAX_KEY]] = str(value)[:MAX_PARAM_VALUE]

    walk("", clean)
    return flat


def metric_name(key: str) -> str:
    """A name MLflow accepts: '@' (not allowed) becomes '_at_', other stray characters '_'."""
    return _BAD_METRIC_CHAR.sub("_", key.replace("@", "_at_"))[:MAX_KEY]


def score_metrics(scores: Mapping[str, Any]) -> dict[str, float]:
    """mAP per tIoU, average mAP and Recall@KxN from `talbench score` output, with MLflow names.

    {"mAP": {"mAP@0.30": ..}, "average_mAP": .., "recall": {"R@1x@0.50": ..}} ->
    {"mAP_at_0.30": .., "average_mAP": .., "R_at_1x_at_0.50": ..}; AP per class is left out. The
    bootstrap intervals (`interval`, from evaluate) become `<name>_low` and `<name>_high`; scores
    over several seeds add their spread (`std`) as `<name>_std` and their number as `seeds`.
    """
    out: dict[str, float] = {}
    for group in ("mAP", "recall"):
        for key, value in (scores.get(group) or {}).items():
            out[metric_name(key)] = float(value)
    if "average_mAP" in scores:
        out["average_mAP"] = float(scores["average_mAP"])
    interval = scores.get("interval") or {}  # evaluate's bootstrap over test videos
    named = {"average_mAP": interval.get("average_mAP"),
             **{metric_name(k): v for k, v in (interval.get("mAP") or {}).items()}}
    for name, bounds in named.items():
        if bounds is not None:
            out[f"{name}_low"], out[f"{name}_high"] = (float(b) for b in bounds)
    spread = scores.get("std") or {}  # over training seeds (evaluate), null for a single seed
    named = {"average_mAP": spread.get("average_mAP"), **{metric_name(k): v for k, v in (spread.get("mAP") or {}).items()}}
    out.update({f"{name}_std": float(std) for name, std in named.items() if std is not None})
    if "seeds" in scores:
        out["seeds"] = float(len(scores["seeds"]))
    return out


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """One history record (epoch, step, lr, losses) -> train/<key> metrics."""
    return {f"train/{k}": float(record[k]) for k in TRAIN_KEYS if k in record}


def git_commit() -> str:
    """HEAD of the repository holding this code, or 'unknown' (no git, not a checkout)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _tags(tags: Mapping[str, Any]) -> list[Any]:
    from mlflow.entities import RunTag

    return [RunTag(k, str(v)) for k, v in tags.items()]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


# ---------------------------------------------------------------- logging from inside training


class EpochLogger:
    """Per-epoch metrics from inside training that never fail or stall it.

    Each call runs on a daemon thread with a deadline; an error or a timeout is a warning and that
    epoch's point is skipped (log_experiment_run later fills in epochs missing from the run). While
    a timed-out call is still hanging, later calls are skipped at once instead of piling up.
    Get `run_id` from experiment_run before training starts: that also imports mlflow and opens the
    store, which the first deadline would otherwise have to cover.
    """

    def __init__(self, run_id: str, timeout: float = 10.0) -> None:
        self.run_id, self.timeout = run_id, timeout
        self._client: MlflowClient | None = None
        self._pending: threading.Thread | None = None

    def log_epoch(self, record: Mapping[str, Any]) -> bool:
        """Log one history record at step = its epoch; True when it was stored in time."""
        def send() -> None:
            from mlflow.entities import Metric

            if self._client is None:
                self._client = tracking_client()
            now = _now_ms()
            step = int(record["epoch"])
            metrics = [Metric(k, v, now, step) for k, v in epoch_metrics(record).items()]
            self._client.log_batch(self.run_id, metrics=metrics)

        return self._bounded(send, f"epoch {record.get('epoch')} metrics")

    def _bounded(self, fn: Callable[[], None], what: str) -> bool:
        if self._pending is not None and self._pending.is_alive():
            log.warning("tracking: skipped %s, an earlier call to the tracking store is still hanging", what)
            return False
        errors: list[BaseException] = []

        def run() -> None:
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - any tracking failure is only a warning here
                errors.append(exc)

        thread = threading.Thread(target=run, name="talbench-tracking", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            self._pending = thread
            log.warning("tracking: skipped %s, the tracking store did not answer within %.0f s", what, self.timeout)
            return False
        if errors:
            log.warning("tracking: skipped %s: %s", what, (str(errors[0]) or repr(errors[0])).splitlines()[0])
            return False
        return True


def _now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.contextmanager
def system_metrics(run_id: str, interval: float = 10.0, timeout: float = 10.0) -> Iterator[None]:
    """Sample the machine's usage into the run as `system/*` metrics while the block runs.

    MLflow's own monitor: CPU and memory (psutil), disk, network and, with nvidia-ml-py and a
    driver, every GPU's utilisation and memory. A sample every `interval` seconds
    (MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it), continuing the run's earlier steps.
    Like EpochLogger it never fails or stalls the block: a monitor that cannot start is a warning,
    and stopping it waits at most `timeout` seconds for the last write.
    """
    from mlflow.entities import RunStatus
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor: SystemMetricsMonitor | None = None
    try:
        # the monitor samples only while the run is RUNNING (a retrained experiment's run was finished)
        tracking_client().update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, resume_logging=True, tracking_uri=tracking_uri())
        monitor.start()
    except Exception as exc:  # noqa: BLE001 - tracking trouble must not stop training
        log.warning("tracking: no system metrics: %s", (str(exc) or repr(exc)).splitlines()[0])
        monitor = None
    try:
        yield
    finally:
        if monitor is not None:
            stopper = threading.Thread(target=monitor.finish, name="talbench-system-metrics", daemon=True)
            stopper.start()
            stopper.join(timeout)
            if stopper.is_alive():
                log.warning("tracking: the last system metrics were not written within %.0f s", timeout)


# ---------------------------------------------------------------- the experiment's run


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    model_uri: str | None = None  # models:/<id>, the logged model
    model_name: str | None = None  # registered model, talbench-<experiment>
    model_version: str | None = None


def log_experiment_run(
    parent_run_id: str,
    name: str,
    *,
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, Any]] = (),
    metrics: Mapping[str, Any] | None = None,
    dataset: str,
    task: str,
    features: Sequence[str] | str,
    data_hash: str = "unknown",
    plots: Sequence[str | Path] = (),
    files: Sequence[str | Path] = (),
    model: torch.nn.Module | None = None,
    register: bool = True,
    alias: str | None = ALIAS,
    tags: Mapping[str, str] | None = None,
) -> LoggedRun:
    """Log experiment `name` into its child run under the parent run; returns the run and model version.

    Logged: the resolved config (params `section.key` and config.yaml); the per-epoch losses and lr
    from `history` (step = epoch; epochs already in the run are not logged twice); the final scores
    from `metrics`, the `talbench score` output (see score_metrics); tags (dataset, task, features,
    experiment, git commit, DVC data hash); the plots (under plots/) and other `files` (at the top);
    and the model, registered as
    `talbench-<name>` with `alias` pointing at the new version. Errors here are raised: this runs
    after training, and a benchmark whose results were not recorded should fail visibly.
    """
    import mlflow
    from mlflow.entities import Param

    client = tracking_client()
    run_id = experiment_run(parent_run_id, name)
    commit = git_commit()
    all_tags = {
        EXPERIMENT_TAG: name, "dataset": dataset, "task": task,
        "features": features if isinstance(features, str) else ",".join(features),
        "git_commit": commit, "mlflow.source.git.commit": commit, "data_hash": data_hash, **(tags or {}),
    }
    client.log_batch(run_id, tags=_tags(all_tags))
    params = [Param(k, v) for k, v in flatten_config(config).items()]
    for chunk in _chunks(params, MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=list(chunk))

    _log_curve_and_scores(client, run_id, history, metrics)

    from talbench.config import dump_config

    client.log_text(run_id, dump_config(dict(config)), "config.yaml")
    for plot in plots:
        client.log_artifact(run_id, str(plot), "plots")
    for path in files:
        client.log_artifact(run_id, str(path))

    result = LoggedRun(run_id)
    if model is not None:
        model_name = f"talbench-{name}" if register else None
        with _fluent_uri(), mlflow.start_run(run_id=run_id):  # log_model writes into the active run
            info = _log_model(model, config, model_name)
        version = str(info.registered_model_version) if model_name and info.registered_model_version else None
        if version and alias:
            client.set_registered_model_alias(model_name, alias, version)
        result = LoggedRun(run_id, info.model_uri, model_name, version)
    else:
        client.set_terminated(run_id)
    client.set_terminated(parent_run_id)  # moves the parent's end time to the latest finished child
    return result


def _log_model(model: torch.nn.Module, config: Mapping[str, Any], registered_name: str | None) -> Any:
    """Log the model as a pyfunc from code (pyfunc_model.py) with its weights and config as artifacts.

    Nothing is pickled, so loading it never runs code from the store (see load_model). Why not
    MLflow 3's pt2 (torch.export): ActionFormer's output (candidates after a score threshold) has
    data-dependent sizes and the export specialises on the example's batch size and length, and
    it takes ~15 s. No input example: the signature documents the (feats, masks) input.
    """
    import tempfile

    import mlflow.pyfunc
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from talbench.config import dump_config
    from talbench.models.backbone import embedding_widths

    model_cfg = config["model"]
    channels, _ = embedding_widths(model_cfg.get("input_dim", config["dataset"]["input_dim"]), model_cfg["embd_dim"])
    signature = ModelSignature(inputs=Schema([
        TensorSpec(np.dtype(np.float32), (-1, channels, -1), "feats"),  # [B, C, T], T a multiple of max_div_factor
        TensorSpec(np.dtype(np.bool_), (-1, 1, -1), "masks"),  # [B, 1, T], True = real step
    ]))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow nags about type hints and input examples: the signature above documents the input
        warnings.filterwarnings("ignore", message=r"(?s).*input example", category=UserWarning)
        weights, config_file = Path(tmp) / WEIGHTS_FILE, Path(tmp) / CONFIG_FILE
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        config_file.write_text(dump_config(dict(config)), encoding="utf-8")
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"weights": str(weights), "config": str(config_file)},
            code_paths=[str(Path(__file__).resolve().parents[1])],  # the talbench package
            # explicit: inferring them loads the model in a subprocess (~13 s); local version tags
            # (+cpu, +cu128) are not on PyPI
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy", "pyyaml"],
            signature=signature,
            registered_model_name=registered_name,
        )


WEIGHTS_FILE = "weights.pt"
CONFIG_FILE = "config.yaml"


def model_from_files(weights: str | Path, config_file: str | Path) -> torch.nn.Module:
    """The model a config and a state dict describe, in eval mode; the weights are read without running code."""
    import torch

    from talbench.config import finalize
    from talbench.models import build_model

    config = finalize(yaml.safe_load(Path(config_file).read_text(encoding="utf-8")))
    model = build_model(config["model"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def load_model(model_uri: str) -> torch.nn.Module:
    """A model logged by log_experiment_run, e.g. models:/talbench-thumos_i3d@champion, in eval mode.

    Built by the installed talbench from the model's config and weights artifacts: no code and
    no pickle from the store runs, whoever logged the model.
    """
    folder = model_files(model_uri)
    return model_from_files(folder / WEIGHTS_FILE, folder / CONFIG_FILE)


def model_files(model_uri: str, dst: str | Path | None = None) -> Path:
    """Download a logged model's artifacts (into `dst`, else a temporary folder); the folder holding
    WEIGHTS_FILE and CONFIG_FILE."""
    import mlflow.artifacts

    with _fluent_uri():  # models:/ URIs resolve against the global registry URI
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=None if dst is None else str(dst)))
    return folder / "artifacts"
