"""Experiment tracking (MLflow): parent run per benchmark invocation, child run per experiment, a run per seed under it."""

from talbench.tracking.mlflow_tracking import (
    EpochLogger,
    LoggedRun,
    check_reachable,
    experiment_run,
    flatten_config,
    load_model,
    log_experiment_run,
    log_seed_run,
    metric_name,
    parent_run,
    score_metrics,
    seed_run,
    system_metrics,
    tag_precision,
    tracking_uri,
)

__all__ = [
    "EpochLogger",
    "LoggedRun",
    "check_reachable",
    "experiment_run",
    "flatten_config",
    "load_model",
    "log_experiment_run",
    "log_seed_run",
    "metric_name",
    "parent_run",
    "score_metrics",
    "seed_run",
    "system_metrics",
    "tag_precision",
    "tracking_uri",
]
