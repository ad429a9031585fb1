"""Experiment tracking (MLflow): parent run per benchmark invocation, child run per experiment."""

from talbench.tracking.mlflow_tracking import (
    EpochLogger,
    LoggedRun,
    check_reachable,
    experiment_run,
    flatten_config,
    load_model,
    log_experiment_run,
    metric_name,
    parent_run,
    score_metrics,
    system_metrics,
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
    "metric_name",
    "parent_run",
    "score_metrics",
    "system_metrics",
    "tracking_uri",
]
