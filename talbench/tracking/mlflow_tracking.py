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
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
# earlier MLflow 3 UIs open an experiment as GenAI (traces) or model training (runs, charts) by
# this tag; 3.17 by its sidebar switch or the address's `?workflowType=machine_learning` (mlflow.json's url)
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
BENCHMARK_EXPERIMENT = "talbench"  # the MLflow experiment of the benchmark's runs
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
_SCORE_KEY = re.compile(r"^(?:mAP|R@(\d+)x)@(\d*\.?\d+)$")  # mAP@0.30, R@1x@0.50 (talbench score)
STATISTICS = ("", "std", "low", "high")  # the value, its spread over seeds, its bootstrap interval
CURVE = "mAP_vs_tIoU"  # mAP with step = tIoU in hundredths: one mAP-vs-tIoU line per run in the chart view
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
    """The MLflow experiment's id, created if missing, marked as model training (KIND_TAG): not GenAI."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            return client.create_experiment(experiment, artifact_location=_artifact_location(experiment), tags={KIND_TAG: KIND})
        except MlflowException:  # another process created it between our lookup and create
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    if KIND_TAG not in found.tags:  # made by an earlier talbench
        client.set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
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


def parent_run(experiment: str, group: str, tags: Mapping[str, str] | None = None, *, name: str | None = None,
               params: Mapping[str, Any] | None = None) -> str:
    """The id of the invocation's parent run in MLflow experiment `experiment`, found by `group`.

    Every process of one invocation passes the same group (a DVC/Airflow run id) and gets the same
    run, even when two call at the same moment (see _find_or_create). `name` (default: the group)
    is the run's name where this call creates it; `params` are logged where the run lacks them.
    An unreachable tracking server fails here, before any training starts.
    """
    _check_id("group", group)
    check_reachable(tracking_uri())
    client = tracking_client()
    exp_id = experiment_id(client, experiment)
    run_id = _find_or_create(client, exp_id, {GROUP_TAG: group, ROLE_TAG: "parent"}, run_name=name or group)
    if tags:
        client.log_batch(run_id, tags=_tags(tags))
    if params:
        _add_params(client, run_id, {k: str(v) for k, v in params.items()})
    return run_id


def _add_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Log the params the run lacks. Params are write-once, and stages of one invocation starting
    together each find them missing: the store refuses all but the first writer, whose values are
    the same ones, so a refusal is fine once the run holds exactly `params`."""
    from mlflow.exceptions import MlflowException

    logged = client.get_run(run_id).data.params
    try:
        _log_params(client, run_id, {k: v for k, v in params.items() if k not in logged})
    except MlflowException:
        logged = client.get_run(run_id).data.params
        if any(logged.get(k) != v for k, v in params.items()):
            raise


def find_parent_run(experiment: str, group: str) -> str | None:
    """The invocation's parent run, or None where no stage of it has tracked anything."""
    _check_id("group", group)
    client = tracking_client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.`{GROUP_TAG}` = '{group}' and tags.`{ROLE_TAG}` = 'parent'")
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else None


def log_report(params_path: str | Path | None, report_folder: Path, summary: Mapping[str, float]) -> str | None:
    """The benchmark report into the invocation's parent run: its files under report/ and `summary`
    as metrics ({name: value}, e.g. {"average_mAP/thumos14-i3d": 0.41}; names made MLflow-safe).

    Returns the parent run's id, or None where no stage of this invocation was tracked (no
    experiment evaluated): the report is then not attached anywhere. Ends the parent run: its
    duration is the invocation's, from its first tracked stage to the report.
    """
    from mlflow.entities import Metric

    from talbench.pipeline import run_group

    check_reachable()
    run_id = find_parent_run(BENCHMARK_EXPERIMENT, run_group(params_path))
    if run_id is None:
        return None
    client = tracking_client()
    now = _now_ms()
    metrics = [Metric(_safe_name(k), float(v), now, 0) for k, v in summary.items()]
    for chunk in _chunks(metrics, MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=list(chunk))
    client.log_artifacts(run_id, str(report_folder), "report")
    client.set_terminated(run_id)
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


def seed_run(experiment_run_id: str, seed: int, fresh: bool = False) -> str:
    """The run of training seed `seed` under the experiment's run, created if missing.

    `fresh`: a training that starts over (a retry, `dvc repro -f`) replaces the seed's earlier run,
    which is deleted (MLflow keeps it in its trash), so the run's curve and duration are this training's.
    """
    client = tracking_client()
    parent = client.get_run(experiment_run_id)
    name = parent.data.tags.get(EXPERIMENT_TAG, parent.info.run_name)
    tags = {PARENT_TAG: experiment_run_id, EXPERIMENT_TAG: name, ROLE_TAG: "seed", SEED_TAG: str(int(seed))}
    if fresh:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        for earlier in client.search_runs([parent.info.experiment_id], filter_string=flt):
            client.delete_run(earlier.info.run_id)
    return _find_or_create(client, parent.info.experiment_id, tags, run_name=f"{name}/seed-{int(seed)}")


def attach_log(run_id: str, path: Path) -> None:
    """A stage's log (see stage_log) into the run's logs/ artefacts."""
    tracking_client().log_artifact(run_id, str(path), "logs")


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI at `base`. The workflowType opens MLflow 3's machine-learning
    view: its default is the GenAI one, which shows no runs."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def tag_precision(run_id: str, precision: str) -> None:
    """The resolved training precision (fp32 or bf16) of a seed's run: `auto` depends on the machine."""
    tracking_client().set_tag(run_id, PRECISION_TAG, precision)


def finish_run(run_id: str) -> None:
    """End a run now, where its work ends (the train stage, after training): the scores logged into
    it later keep this end (see log_seed_run), so its duration is the training's."""
    tracking_client().set_terminated(run_id)


def log_seed_run(experiment_run_id: str, seed: int, *, history: Sequence[Mapping[str, Any]] = (),
                 metrics: Mapping[str, Any] | None = None) -> str:
    """One training seed's curve (epochs EpochLogger missed) and scores into its run, then finish it
    where its training finished (now, where no training was tracked: a cached train stage)."""
    client = tracking_client()
    run_id = seed_run(experiment_run_id, seed)
    end = client.get_run(run_id).info.end_time
    _log_curve_and_scores(client, run_id, history, metrics)
    client.set_terminated(run_id, end_time=end)
    return run_id


def _log_curve_and_scores(client: MlflowClient, run_id: str, history: Sequence[Mapping[str, Any]],
                          metrics: Mapping[str, Any] | None) -> None:
    """The epochs of `history` the run lacks (step = epoch), the final scores (step 0) and the
    mAP-vs-tIoU curve's points the run lacks."""
    from mlflow.entities import Metric

    now = _now_ms()
    logged = {m.step for m in client.get_metric_history(run_id, "train/final_loss")}
    points = [Metric(k, v, now, int(r["epoch"])) for r in history if int(r["epoch"]) not in logged
              for k, v in epoch_metrics(r).items()]
    points += [Metric(k, v, now, 0) for k, v in score_metrics(metrics or {}).items()]
    drawn = {m.step for m in client.get_metric_history(run_id, CURVE)}  # a rerun (same invocation) draws no second curve
    points += [Metric(CURVE, v, now, step) for step, v in map_curve(metrics or {}).items() if step not in drawn]
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


def metric_name(key: str, statistic: str = "") -> str:
    """The MLflow name of score `key` of `talbench score`, the same on every dataset; `statistic`
    (STATISTICS) names its spread over seeds (`std`) or its bootstrap interval (`low`, `high`).

    average_mAP -> average_mAP[_std]; mAP@0.3, mAP@0.30 -> mAP[_std]/tIoU_0.30; R@1x@0.5 ->
    recall[_std]/1x_tIoU_0.50. A threshold has two decimals (more only if it needs them), so mAP at tIoU 0.5 has one
    name for THUMOS14, ActivityNet, EPIC and Ego4D alike; the `/` puts each group in its own
    section of the chart view. Other keys keep their name with '@' as '_at_' and stray characters '_'.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r}: expected one of {STATISTICS}")
    suffix = f"_{statistic}" if statistic else ""
    if key == "average_mAP":
        return key + suffix
    score = _SCORE_KEY.match(key)
    if score is None:
        return _safe_name(key) + suffix
    top_k, tiou = score.groups()
    group, prefix = ("recall", f"{top_k}x_") if top_k else ("mAP", "")
    return f"{group}{suffix}/{prefix}tIoU_{_tiou_text(float(tiou))}"


def _tiou_text(tiou: float) -> str:
    """Two decimals (0.30; linspace's 0.39999999999999997 too), more only where a threshold has them."""
    return f"{tiou:.2f}" if abs(tiou - round(tiou, 2)) < 1e-9 else repr(tiou)


def _safe_name(key: str) -> str:
    """A name MLflow accepts: '@' (not allowed) becomes '_at_', other stray characters '_'."""
    return _BAD_METRIC_CHAR.sub("_", key.replace("@", "_at_"))[:MAX_KEY]


def score_metrics(scores: Mapping[str, Any]) -> dict[str, float]:
    """mAP per tIoU, average mAP, Recall@KxN and timing from `talbench score` / evaluate output,
    under the names of metric_name.

    {"mAP": {"mAP@0.30": ..}, "average_mAP": .., "recall": {"R@1x@0.50": ..}} ->
    {"mAP/tIoU_0.30": .., "average_mAP": .., "recall/1x_tIoU_0.50": ..}; AP per class is left out.
    The bootstrap intervals (`interval`, from evaluate) become the `low` and `high` statistics;
    scores over several seeds add their spread (`std`) and their number as `seeds`; evaluate's
    `timing` becomes `train_time_s` and `infer_time_s` (seconds per seed).
    """
    out: dict[str, float] = {}
    for group in ("mAP", "recall"):
        for key, value in (scores.get(group) or {}).items():
            out[metric_name(key)] = float(value)
    if "average_mAP" in scores:
        out["average_mAP"] = float(scores["average_mAP"])
    interval = scores.get("interval") or {}  # evaluate's bootstrap over test videos
    for key, bounds in {"average_mAP": interval.get("average_mAP"), **(interval.get("mAP") or {})}.items():
        if bounds is not None:
            out[metric_name(key, "low")], out[metric_name(key, "high")] = (float(b) for b in bounds)
    spread = scores.get("std") or {}  # over training seeds (evaluate), null for a single seed
    for key, std in {"average_mAP": spread.get("average_mAP"), **(spread.get("mAP") or {})}.items():
        if std is not None:
            out[metric_name(key, "std")] = float(std)
    if "seeds" in scores:
        out["seeds"] = float(len(scores["seeds"]))
    timing = scores.get("timing") or {}
    out |= {name: float(timing[key]) for key, name in TIMING.items() if timing.get(key) is not None}
    return out


TIMING = {"train_s": "train_time_s", "infer_s": "infer_time_s"}  # scores.json's timing -> metric names


def map_curve(scores: Mapping[str, Any]) -> dict[int, float]:
    """mAP by tIoU in hundredths (the steps of the CURVE metric): {30: mAP at 0.30, ...}."""
    curve = {}
    for key, value in (scores.get("mAP") or {}).items():
        if (score := _SCORE_KEY.match(key)) and score.group(1) is None:
            curve[round(100 * float(score.group(2)))] = float(value)
    return curve


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """One history record (epoch, step, lr, losses) -> train/<key> metrics."""
    return {f"train/{k}": float(record[k]) for k in TRAIN_KEYS if k in record}


def git_commit() -> str:
    """HEAD of the repository holding this code; in the project image (no .git) the commit it was built
    from, TALBENCH_SOURCE_COMMIT; else 'unknown'."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("TALBENCH_SOURCE_COMMIT") or "unknown"
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

    # its four INFO lines per training (started, no GPU, stopping, stopped) say nothing to act on
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
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


class _Tee:
    """A text stream that writes through to `stream` and also into `copy` while that is open."""

    def __init__(self, stream: Any, copy: Any) -> None:
        self.stream, self.copy = stream, copy

    def write(self, text: str) -> int:
        if not self.copy.closed:
            self.copy.write(text)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding: the stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[Path]:
    """Everything the block prints (stdout and stderr, MLflow's log lines included) also into `path`,
    for the run's logs/ artefacts. Line-buffered: the file is complete up to the last line while the
    block still runs (the stages attach it from inside). Handlers made inside the block keep writing
    through afterwards."""
    out, err = sys.stdout, sys.stderr
    with open(path, "w", encoding="utf-8", buffering=1) as copy:
        sys.stdout, sys.stderr = _Tee(out, copy), _Tee(err, copy)
        try:
            yield path
        finally:
            sys.stdout, sys.stderr = out, err
            copy.flush()


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
    data_dir: str | Path | None = None,
    ran: Mapping[str, Any] | None = None,
    plots: Sequence[str | Path] = (),
    files: Sequence[str | Path] = (),
    folders: Mapping[str, str | Path] | None = None,
    model: torch.nn.Module | None = None,
    model_scores: Mapping[str, Any] | None = None,
    register: bool = True,
    alias: str | None = ALIAS,
    tags: Mapping[str, str] | None = None,
) -> LoggedRun:
    """Log experiment `name` into its child run under the parent run; returns the run and model version.

    Logged: the resolved config (params `section.key` and config.yaml), where `ran` replaces the
    keys that describe this machine and run (the device, the output folder, the resolved
    precision; None drops a key); the per-epoch losses and lr from `history` (step = epoch; epochs already in the
    run are not logged twice); the final scores from `metrics`, evaluate's scores (see
    score_metrics and map_curve); tags (dataset, task, features, experiment, git commit, DVC data
    hash); the dataset as an MLflow dataset input (digest: the data hash, source `data_dir`, if given); the
    plots (under plots/), other `files` (at the top) and `folders` (artifact folder -> local
    folder: predictions, logs); the experiment's average mAP on the parent run
    (`average_mAP/<name>`); and the model, registered as `talbench-<name>` with `alias` pointing at
    the new version, described and tagged with `model_scores` (the model's own, default `metrics`).
    The run keeps the end its training gave it (see finish_run). Errors here are raised: this runs
    after training, and a benchmark whose results were not recorded should fail visibly.
    """
    client = tracking_client()
    run_id = experiment_run(parent_run_id, name)
    end = client.get_run(run_id).info.end_time
    commit = git_commit()
    features = features if isinstance(features, str) else ",".join(features)
    all_tags = {
        EXPERIMENT_TAG: name, "dataset": dataset, "task": task, "features": features,
        "git_commit": commit, "mlflow.source.git.commit": commit, "data_hash": data_hash, **(tags or {}),
    }
    client.log_batch(run_id, tags=_tags(all_tags))
    params = {**flatten_config(config), **(ran or {})}  # a key `ran` sets to None is dropped
    _log_params(client, run_id, {k: str(v) for k, v in params.items() if v is not None})
    _log_curve_and_scores(client, run_id, history, metrics)
    if data_dir is not None:
        _log_dataset(client, run_id, config, dataset, data_hash, Path(data_dir))

    from talbench.config import dump_config

    client.log_text(run_id, dump_config(dict(config)), "config.yaml")
    for plot in plots:
        client.log_artifact(run_id, str(plot), "plots")
    for path in files:
        client.log_artifact(run_id, str(path))
    for artifact_path, folder in (folders or {}).items():
        client.log_artifacts(run_id, str(folder), artifact_path)
    if metrics and "average_mAP" in metrics:
        client.log_metric(parent_run_id, _safe_name(f"average_mAP/{name}"), float(metrics["average_mAP"]))

    result = LoggedRun(run_id)
    if model is not None:
        result = _log_registered_model(client, run_id, model, config, name if register else None, alias,
                                       _model_description(all_tags, model_scores or metrics or {}))
    client.set_terminated(run_id, end_time=end)  # the fluent run of log_model ended it now
    client.set_terminated(parent_run_id)  # moves the parent's end time to the latest finished child
    return result


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    for chunk in _chunks([Param(k, v) for k, v in params.items()], MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=list(chunk))


def _log_dataset(client: MlflowClient, run_id: str, config: Mapping[str, Any], dataset: str, data_hash: str,
                 data_dir: Path) -> None:
    """The data the run trained and tested on as MLflow dataset inputs, one per split (named
    `<dataset> <split>`, context train / test), each with the data's content hash as its digest:
    runs on the same data version share the datasets."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    # MLflow registers its local-file source twice (plain paths, file://): take the first by name
    local = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    source = local(data_dir.resolve().as_uri())
    inputs = []
    for use, split in (("train", "train_split"), ("test", "val_split")):
        named = MetaDataset(source, name=f"{dataset} {','.join(config[split])}", digest=data_hash[:36])
        inputs.append(DatasetInput(named._to_mlflow_entity(), [InputTag("mlflow.data.context", use)]))
    client.log_inputs(run_id, datasets=inputs)


def _model_description(tags: Mapping[str, str], scores: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """A model version's description (what it is, on which data, how good) and its tags."""
    average = scores.get("average_mAP")
    at = {metric_name(k): v for k, v in (scores.get("mAP") or {}).items()}
    thresholds = ", ".join(f"{k.split('_')[-1]}: {100 * v:.2f}" for k, v in at.items())
    text = (f"{tags[EXPERIMENT_TAG]}: ActionFormer on {tags['dataset']} ({tags['task']}), features {tags['features']}, "
            f"training seed {tags.get('model_seed', '?')}. Data version (content hash) {tags['data_hash']}; "
            f"git commit {tags['git_commit'][:12]}.")
    if average is not None:
        text += f" Average mAP {100 * float(average):.2f}% (mAP % at tIoU {thresholds})."
    version_tags = {k: tags[k] for k in (EXPERIMENT_TAG, "dataset", "task", "features", "data_hash", "git_commit") if k in tags}
    if average is not None:
        version_tags["average_mAP"] = f"{float(average):.6f}"
    return text, version_tags


def _log_registered_model(client: MlflowClient, run_id: str, model: torch.nn.Module, config: Mapping[str, Any],
                          name: str | None, alias: str | None, described: tuple[str, dict[str, str]]) -> LoggedRun:
    """The model into the run, registered as talbench-`name` (unless None) with `alias`, the version
    described and tagged."""
    import mlflow

    model_name = f"talbench-{name}" if name else None
    with _fluent_uri(), mlflow.start_run(run_id=run_id):  # log_model writes into the active run
        info = _log_model(model, config, model_name)
    version = str(info.registered_model_version) if model_name and info.registered_model_version else None
    if version:
        description, tags = described
        client.update_model_version(model_name, version, description=description)
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
        if not client.get_registered_model(model_name).description:
            client.update_registered_model(model_name, f"talbench: the ActionFormer models of experiment {name}, "
                                           "a version per benchmark run (its reference seed's weights)")
        if alias:
            client.set_registered_model_alias(model_name, alias, version)
    return LoggedRun(run_id, info.model_uri, model_name, version)


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
        # MLflow nags about input examples: the signature above documents the input
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
