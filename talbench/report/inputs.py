"""What the report reads: each experiment's outputs of the evaluate stage, its test split, the
validation results; every missing or malformed input is one InputError naming file, item and field."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talbench.errors import InputError

# written by the evaluate stage; an older stage wrote fewer
SCORE_KEYS = ("mAP", "average_mAP", "recall", "AP_per_class", "counts", "interval", "seeds", "std")
CURVE_COLUMNS = ("epoch", "cls_loss", "reg_loss", "final_loss")


@dataclass(frozen=True)
class Split:
    """The scored test subset of an experiment's annotation file."""

    subset: str
    videos: int
    instances: int
    per_class: dict[str, int]  # test instances per class name, classes with none left out
    unscored: list[str]  # class names of the annotation file with no test instance (the protocol skips them)
    unnamed: int  # classes of the task that no annotation names at all


@dataclass
class Result:
    """One experiment as the report shows it."""

    name: str
    dataset: str
    title: str  # the dataset's title
    scores: dict[str, Any]
    published: dict[str, float] | None
    precision_recall: tuple[list[float], dict[str, list[float]]]
    history: list[dict[str, float]]
    mlflow: dict[str, Any] | None
    predictions: list[dict[str, Any]]  # per seed, the reference seed first: ActivityNet results
    split: Split
    test_set: tuple[str, str]  # (annotation file, subset): experiments with the same one are compared
    num_classes: int
    data_version: str
    folder: Path  # its outputs/<name>
    comparison: Any = None  # filled by the report: a paired bootstrap against the best on the same videos


def read_json(path: Path, item: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, item, "-", "missing: run its pipeline stage first (dvc repro)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, item, "-", f"not valid JSON ({exc})") from None


def read_scores(path: Path, item: str, seeds: list[int]) -> dict[str, Any]:
    scores = read_json(path, item)
    for key in SCORE_KEYS:
        if key not in scores:
            raise InputError(path, item, key, "written by an older evaluate stage, run it again (dvc repro)")
    if scores["seeds"] != seeds:
        raise InputError(path, item, "seeds", f"scored for seeds {scores['seeds']}, params.yaml's pipeline.seeds are "
                                              f"{seeds}: run the pipeline again (dvc repro)")
    from talbench.pipeline import TIMING_RECORD

    scores["timing"] = read_json(path.with_name(TIMING_RECORD), item)  # beside it, from the same evaluate run
    return scores


def read_tracking(path: Path, item: str) -> dict[str, Any] | None:
    """mlflow.json (where the experiment's runs are), or None where the experiment was not tracked."""
    if not path.exists():
        return None
    record = read_json(path, item)
    for key in ("tracking_uri", "experiment_id", "run_id", "parent_run_id"):
        if key not in record:
            raise InputError(path, item, key, "written by an older evaluate stage, run it again (dvc repro)")
    return record


def read_precision_recall(path: Path, item: str) -> tuple[list[float], dict[str, list[float]]]:
    from talbench.plots import read_precision_recall as read

    try:
        return read(path)
    except FileNotFoundError:
        raise InputError(path, item, "-", "missing: run its pipeline stage first (dvc repro)") from None
    except (ValueError, KeyError) as exc:
        raise InputError(path, item, "recall", f"not a precision/recall table ({exc})") from None


def read_curve(path: Path, item: str) -> list[dict[str, float]]:
    """train_curve.csv, one row per epoch (losses are means over the seeds)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{key: float(row[key]) for key in CURVE_COLUMNS} for row in csv.DictReader(f)]
    except FileNotFoundError:
        raise InputError(path, item, "-", "missing: run its pipeline stage first (dvc repro)") from None
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, item, "epoch", f"not a training curve (columns {', '.join(CURVE_COLUMNS)}: {exc})") from None


def split_facts(annotations: Any, subset: str, num_classes: int, scores: dict[str, Any]) -> Split:
    from talbench.eval.inputs import ground_truth

    truth = ground_truth(annotations, subset)
    counts = Counter(annotations.label_names.get(int(label), str(int(label))) for label in truth.labels)
    per_class = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    unscored = sorted(name for name in annotations.label_names.values() if name not in counts)
    return Split(subset=subset, videos=int(scores["counts"]["gt_videos"]), instances=int(scores["counts"]["gt_instances"]),
                     per_class=per_class, unscored=unscored, unnamed=max(0, num_classes - len(annotations.label_names)))


def validation(dataset: str, folder: Path) -> dict[str, Any] | None:
    """The validate stage's validation.json of `dataset`, or None where it was not validated."""
    path = folder / dataset / "validation.json"
    if not path.exists():
        return None
    result = read_json(path, dataset)
    for key in ("success", "expectations"):
        if key not in result:
            raise InputError(path, dataset, key, "written by an older validate stage, run it again (dvc repro)")
    return result
