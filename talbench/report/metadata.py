"""What run the report describes: when, from which code and data, on which machine, with which libraries,
and where its MLflow runs, Data Docs and artefacts are."""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

LIBRARIES = ("talbench", "torch", "mlflow", "dvc", "great-expectations", "numpy", "matplotlib")
LOCAL_UI = "mlflow ui --backend-store-uri {uri}"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else what the platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    return (found.group(1).strip() if found else platform.processor()) or "unknown CPU"


def device() -> str:
    """This machine: CPU model and cores, and the GPU torch sees (if any)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()} ({os.cpu_count()} cores); {gpu}; torch threads {torch.get_num_threads()}"


def relative(target: str | Path, report_folder: Path) -> str:
    """A link from the report folder to `target` (both relative to the working directory, or absolute)."""
    return Path(os.path.relpath(Path(target).absolute(), report_folder.absolute())).as_posix()


UI_URL_ENV = "TALBENCH_MLFLOW_UI_URL"  # a deployment's UI address when the stages reach MLflow by another name


def ui_base(configured: str | None, tracking_uri: str, env: Mapping[str, str] | None = None) -> str | None:
    """The MLflow UI's base address: params' report.mlflow_url, else TALBENCH_MLFLOW_UI_URL (the compose
    stack's steps track to http://mlflow:5000, a name only its network knows), else the tracking server
    itself; none for a local store."""
    configured = configured or (os.environ if env is None else env).get(UI_URL_ENV)
    if configured:
        if not configured.startswith(("http://", "https://")):
            from talbench.errors import InputError

            raise InputError(UI_URL_ENV, configured, "mlflow_url", "expected an http:// or https:// address")
        return configured.rstrip("/")
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


def local_store(tracking_uri: str) -> str:
    """The tracking URI as a user types it in the project folder (sqlite:///mlruns/mlflow.db)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        if db.is_absolute() and db.is_relative_to(Path.cwd()):
            return f"sqlite:///{db.relative_to(Path.cwd()).as_posix()}"
    return tracking_uri


def run_link(record: dict[str, Any], base: str | None, run_id: str | None = None) -> str:
    """Markdown for an MLflow run: a link where a UI address is known, else its id (the UI command is in the header)."""
    run_id = run_id or record["run_id"]
    if base is None:
        return f"run `{run_id}`"
    from talbench.tracking import run_url

    return f"[run {run_id[:8]}]({run_url(base, record['experiment_id'], run_id)})"  # the parent shares the experiment
