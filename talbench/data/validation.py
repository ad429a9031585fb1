"""The validate stage: check an unpacked dataset against its registry entry before anything uses it.

The annotation file(s) and feature files are read into four pandas tables (one row per annotation
entry, per registry split, per video and feature type, per action instance) and checked by a
great-expectations suite per table. The outcome goes to `validation.json` and to Data Docs HTML;
a failed expectation then becomes one InputError line naming the first offending video. An
annotation file that is not the format at all (unreadable, a path for a video id, a string for a
segment) fails first, with the same line and no report. Nothing under the dataset folder is ever written.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pandas as pd

from talbench.data.formats import Instance, Video, feature_path, parse_video, read_json, show, top_level
from talbench.data.registry import DatasetSpec, FeatureSpec, Registry
from talbench.errors import InputError
from talbench.io import staged_outputs

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation

# great-expectations is imported lazily (it takes seconds); whenever it is, it must not phone home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

SEGMENT_TOLERANCE_S = 1e-3
# |n_steps - expected| <= max(2 + num_frames / feat_stride, 2% of expected): clip-based features
# end about one clip (num_frames / feat_stride steps) early, which short videos must not fail on
STEPS_TOLERANCE_MIN = 2.0
STEPS_TOLERANCE_FRACTION = 0.02
FINITE_CHUNK_ROWS = 4096  # rows of a memory-mapped array checked at a time: bounded memory
REPORT_ROWS = 20  # offending rows listed per expectation in validation.json
DOCS_SITE = "talbench"


@dataclass(frozen=True)
class Check:
    """One expectation, the table it runs on, and how a failing row reads in the error line."""

    table: str
    field: str
    expectation: Expectation
    value: Callable[[pd.Series], str]


def validate_dataset(name: str, registry: Registry, data_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Validate dataset `name` unpacked under `data_dir`; write the report to `out_dir` and return it.

    Writes `<out_dir>/validation.json` and `<out_dir>/data_docs/`, which replace the earlier ones
    together; if any expectation fails, raises InputError (after writing both: they say what
    failed) naming the expectation, the first offending item and its value.
    """
    spec = registry.dataset(name)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    tables = build_tables(spec, data_dir)
    checks = _checks()
    with staged_outputs(out_dir, "validate") as staging:
        report = _report(name, data_dir, tables, checks, staging / "data_docs", out_dir / "data_docs")
        (staging / "validation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for check, summary in zip(checks, report["expectations"]):
        if not summary["success"]:
            raise _failure(check, summary, data_dir)
    return report


def _report(name: str, data_dir: Path, tables: dict[str, pd.DataFrame], checks: list[Check], docs_dir: Path, final_docs: Path) -> dict[str, Any]:
    """Run the suites (Data Docs into `docs_dir`) and summarise them; `final_docs` is where the docs will live."""
    results = _run_suites(name, tables, checks, docs_dir)
    expectations = [_summary(check, result, tables[check.table]) for check, result in zip(checks, results)]
    report = {
        "dataset": name,
        "data_dir": str(data_dir),
        "success": all(e["success"] for e in expectations),
        "counts": {
            "videos": int(tables["videos"]["video_id"].nunique()),
            "feature_files": len(tables["features"]),
            "instances": len(tables["instances"]),
        },
        "data_docs": str(final_docs / "index.html"),
        "expectations": expectations,
    }
    return report


def _failure(check: Check, summary: dict[str, Any], data_dir: Path) -> InputError:
    """The error line of a failed expectation: its first offending row, else why it could not run."""
    name = summary["expectation"]
    if summary["unexpected"]:
        first = summary["unexpected"][0]
        return InputError(first["path"], first["item"], check.field, f"{name} failed: {first['value']}")
    why = summary["exception"] or f"observed {summary.get('observed_value')!r}"
    return InputError(data_dir, "-", check.field, f"{name} failed: {' '.join(str(why).split())}")


# -- tables ------------------------------------------------------------------------------------


class _Pairs(dict[str, Any]):
    """A JSON object that also keeps its key/value pairs in order, duplicate keys included."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs


def read_database(path: Path) -> list[tuple[str, Video]]:
    """(video id, typed entry) pairs of an annotation file's `database`, duplicates kept (json.load drops them).

    A file that is not the annotation format (a path for a video id, a string for a segment) is one
    InputError line and no report: the expectations check what the values mean.
    """
    # with this hook every JSON object is a _Pairs, the database included
    database = cast(_Pairs, top_level(read_json(path, object_pairs_hook=_Pairs), path, "database"))
    return [(video_id, parse_video(entry, path, video_id)) for video_id, entry in database.pairs]


def build_tables(spec: DatasetSpec, data_dir: Path) -> dict[str, pd.DataFrame]:
    """The four tables the suites check: videos, splits, features and instances."""
    videos: list[dict[str, Any]] = []
    splits: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    feature_videos: dict[str, dict[str, Any]] = {}  # video id -> its row in the first task's file that has it
    for task, task_spec in spec.tasks.items():
        path = data_dir / task_spec.annotations
        latest: dict[str, tuple[dict[str, Any], Video]] = {}  # a later duplicate wins, as in json.load
        for video_id, video in read_database(path):
            fps = spec.default_fps if spec.default_fps is not None else video.fps
            row = {"task": task, "path": str(path), "video_id": video_id,
                   "subset": video.subset.lower(),  # the loader matches subsets case-insensitively
                   "duration": video.duration, "fps": fps}
            videos.append(row)
            latest[video_id] = (row, video)
        for video_id, (row, video) in latest.items():
            feature_videos.setdefault(video_id, row)
            instances += [_instance(row, ann, task_spec.num_classes) for ann in video.instances]
        subsets = [row["subset"] for row, _ in latest.values()]
        for split, names in spec.splits.items():
            lowered = {s.lower() for s in names}
            splits.append({"task": task, "path": str(path), "split": split, "subsets": ", ".join(names),
                           "videos": sum(s in lowered for s in subsets)})
    features = [
        _feature_row(spec, data_dir, feat, feat_spec, row)
        for row in feature_videos.values()
        for feat, feat_spec in spec.features.items()
    ]
    video_table = pd.DataFrame(videos, columns=["task", "path", "video_id", "subset", "duration", "fps"])
    video_table["occurrences"] = video_table.groupby(["task", "video_id"])["video_id"].transform("size")
    instance_table = pd.DataFrame(instances, columns=[
        "task", "path", "video_id", "subset", "duration", "start", "end", "end_past_duration", "label", "label_id", "num_classes",
    ])
    _label_consistency(instance_table)
    return {
        "videos": video_table,
        "splits": pd.DataFrame(splits, columns=["task", "path", "split", "subsets", "videos"]),
        "features": pd.DataFrame(features),
        "instances": instance_table,
    }


def _instance(video: dict[str, Any], ann: Instance, num_classes: int) -> dict[str, Any]:
    duration = video["duration"]
    return {
        "task": video["task"], "path": video["path"], "video_id": video["video_id"], "subset": video["subset"],
        "duration": duration, "start": ann.start, "end": ann.end,
        "end_past_duration": None if duration is None else ann.end - duration,
        "label": ann.label, "label_id": ann.label_id, "num_classes": num_classes,
    }


def _label_consistency(instances: pd.DataFrame) -> None:
    """Add, per instance, the names its label_id has in its task and the ids its label has, and their counts."""
    names = instances.groupby(["task", "label_id"])["label"].agg(lambda s: sorted(set(s))).to_dict()
    ids = instances.groupby(["task", "label"])["label_id"].agg(lambda s: sorted({int(x) for x in s})).to_dict()
    instances["names_of_id"] = [names[key] for key in zip(instances["task"], instances["label_id"])]
    instances["ids_of_label"] = [ids[key] for key in zip(instances["task"], instances["label"])]
    instances["names_per_id"] = [len(n) for n in instances["names_of_id"]]
    instances["ids_per_label"] = [len(n) for n in instances["ids_of_label"]]


def _feature_row(spec: DatasetSpec, data_dir: Path, feat: str, feat_spec: FeatureSpec, video: dict[str, Any]) -> dict[str, Any]:
    path = feature_path(data_dir, feat_spec, video["video_id"])
    duration, fps = video["duration"], video["fps"]
    expected = None if duration is None or fps is None else duration * fps / spec.feat_stride
    info = inspect_features(path, feat_spec)
    n_steps = info["n_steps"]
    return {
        "video_id": video["video_id"], "subset": video["subset"], "duration": duration, "fps": fps,
        "feature": feat, "path": str(path), **info,
        "expected_channels": feat_spec.channels,
        "expected_steps": expected,
        "steps_deviation": None if expected is None or n_steps is None else abs(n_steps - expected),
        "steps_tolerance": None if expected is None else max(
            STEPS_TOLERANCE_MIN + spec.num_frames / spec.feat_stride, STEPS_TOLERANCE_FRACTION * expected),
        "feat_stride": spec.feat_stride,
    }


def inspect_features(path: Path, spec: FeatureSpec) -> dict[str, Any]:
    """What a feature file holds, without loading it whole: .npy files are memory-mapped.

    Fields that do not apply (a missing file has no dtype) are None, which the expectations skip.
    """
    info: dict[str, Any] = {"exists": path.exists(), "readable": None, "error": None, "dtype": None, "shape": None,
                            "ndim": None, "channels": None, "n_steps": None, "non_finite": None, "finite": None}
    if not info["exists"]:
        return info
    try:
        if spec.ext == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                if spec.npz_key not in npz.files:
                    raise ValueError(f"key '{spec.npz_key}' missing from .npz (has: {', '.join(npz.files)})")
                array = npz[spec.npz_key]
        else:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        return info | {"readable": False, "error": str(exc)}
    info |= {"readable": True, "dtype": str(array.dtype), "shape": str(list(array.shape)), "ndim": array.ndim}
    if array.ndim == 2:
        info |= {"n_steps": array.shape[0], "channels": array.shape[1]}
    if np.issubdtype(array.dtype, np.number):
        rows = np.atleast_1d(array)
        bad = sum(int(np.count_nonzero(~np.isfinite(rows[i:i + FINITE_CHUNK_ROWS])))
                  for i in range(0, len(rows), FINITE_CHUNK_ROWS))
        info |= {"non_finite": bad, "finite": bad == 0}
    return info


# -- expectations ------------------------------------------------------------------------------


def _checks() -> list[Check]:
    """The suite, table by table; the order is the order failures are reported in."""
    import great_expectations.expectations as gxe

    tol = SEGMENT_TOLERANCE_S
    return [
        Check("videos", "video_id", gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["task", "video_id"], description="no video id appears twice in an annotation file"),
            lambda r: f"appears {r['occurrences']} times in the annotation file"),
        Check("videos", "duration", gxe.ExpectColumnValuesToNotBeNull(
            column="duration", description="every video has a duration"),
            lambda r: "missing"),
        Check("videos", "duration", gxe.ExpectColumnValuesToBeBetween(
            column="duration", min_value=0, strict_min=True, description="durations are positive"),
            lambda r: f"{r['duration']}, expected > 0"),
        Check("videos", "fps", gxe.ExpectColumnValuesToNotBeNull(
            column="fps", description="every video has an fps (its own, or the registry's default_fps)"),
            lambda r: "missing, and the registry has no default_fps"),
        Check("videos", "fps", gxe.ExpectColumnValuesToBeBetween(
            column="fps", min_value=0, strict_min=True, description="frame rates are positive"),
            lambda r: f"{r['fps']}, expected > 0"),
        Check("splits", "subset", gxe.ExpectColumnValuesToBeBetween(
            column="videos", min_value=1, description="every split of the registry has videos"),
            lambda r: f"no video in subset(s) {r['subsets']}"),
        Check("features", "exists", gxe.ExpectColumnValuesToBeInSet(
            column="exists", value_set=[True], description="every annotated video has its feature file(s)"),
            lambda r: "feature file not found"),
        Check("features", "readable", gxe.ExpectColumnValuesToBeInSet(
            column="readable", value_set=[True], description="feature files are readable arrays"),
            lambda r: f"unreadable feature file ({r['error']})"),
        Check("features", "shape", gxe.ExpectColumnValuesToBeInSet(
            column="ndim", value_set=[2], description="feature arrays are 2-D [T, C]"),
            lambda r: f"shape {r['shape']}, expected [T, C]"),
        Check("features", "dtype", gxe.ExpectColumnValuesToBeInSet(
            column="dtype", value_set=["float32"], description="feature arrays are float32"),
            lambda r: f"{r['dtype']}, expected float32"),
        Check("features", "channels", gxe.ExpectColumnPairValuesToBeEqual(
            column_A="channels", column_B="expected_channels", ignore_row_if="either_value_is_missing",
            description="feature widths match the registry's channels"),
            lambda r: f"{int(r['channels'])} channels, expected {r['expected_channels']}"),
        Check("features", "finite", gxe.ExpectColumnValuesToBeInSet(
            column="finite", value_set=[True], description="feature values are all finite"),
            lambda r: f"{int(r['non_finite'])} non-finite values"),
        Check("features", "n_steps", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="steps_tolerance", column_B="steps_deviation", or_equal=True, ignore_row_if="either_value_is_missing",
            description="feature lengths match duration x fps / feat_stride within max(2 steps + one clip, 2%)"),
            lambda r: f"{int(r['n_steps'])} steps, expected {r['expected_steps']:.1f} ± {r['steps_tolerance']:.1f} "
                      f"(duration {r['duration']} s x {r['fps']} fps / stride {r['feat_stride']})"),
        Check("instances", "segment", gxe.ExpectColumnValuesToBeBetween(
            column="start", min_value=-tol, description="segments start at or after 0"),
            lambda r: f"[{r['start']}, {r['end']}] starts before 0"),
        Check("instances", "segment", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end", column_B="start", description="segments end after they start"),
            lambda r: f"[{r['start']}, {r['end']}] does not end after it starts"),
        Check("instances", "segment", gxe.ExpectColumnValuesToBeBetween(
            column="end_past_duration", max_value=tol, description="segments end within the video's duration"),
            lambda r: f"[{r['start']}, {r['end']}] ends after the video's duration {r['duration']} s"),
        Check("instances", "label_id", gxe.ExpectColumnValuesToBeBetween(
            column="label_id", min_value=0, description="label ids are not negative"),
            lambda r: f"{int(r['label_id'])} outside [0, {r['num_classes']})"),
        Check("instances", "label_id", gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="num_classes", column_B="label_id", ignore_row_if="either_value_is_missing",
            description="label ids are below the registry's num_classes"),
            lambda r: f"{int(r['label_id'])} outside [0, {r['num_classes']})"),
        Check("instances", "label", gxe.ExpectColumnValuesToBeInSet(
            column="names_per_id", value_set=[1], description="each label_id has one name"),
            lambda r: f"label_id {int(r['label_id'])} has names {', '.join(map(show, r['names_of_id']))}"),
        Check("instances", "label_id", gxe.ExpectColumnValuesToBeInSet(
            column="ids_per_label", value_set=[1], description="each label name has one label_id"),
            lambda r: f"label {show(r['label'])} has ids {', '.join(map(str, r['ids_of_label']))}"),
    ]


def _run_suites(name: str, tables: dict[str, pd.DataFrame], checks: list[Check], docs_dir: Path) -> list[dict[str, Any]]:
    """Run one suite per table in an in-memory context; return each check's result, and build Data Docs."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # keep stderr for the one error line
    source = context.data_sources.add_pandas(name)
    by_id: dict[str, dict[str, Any]] = {}
    for table, frame in tables.items():
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(table)
        suite = context.suites.add(gx.ExpectationSuite(f"{name}.{table}"))
        for check in checks:
            if check.table == table:
                suite.add_expectation(check.expectation)
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"{name}.{table}", data=batch, suite=suite))
        outcome = definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"})
        by_id |= {r.expectation_config.id: r.to_json_dict() for r in outcome.results}
    # Data Docs are rendered from the results the context keeps, into the staging folder;
    # an in-memory context takes only an absolute site folder.
    site = {"class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.absolute())}}
    context.add_data_docs_site(DOCS_SITE, site)
    context.build_data_docs(site_names=[DOCS_SITE])
    return [by_id[c.expectation.id] for c in checks]


def _summary(check: Check, result: dict[str, Any], table: pd.DataFrame) -> dict[str, Any]:
    """One expectation's entry in validation.json: what it checked, counts, and the offending rows."""
    config = result["expectation_config"]
    details = result.get("result") or {}
    item_column = "split" if check.table == "splits" else "video_id"
    rows = [table.loc[i] for i in (details.get("unexpected_index_list") or [])[:REPORT_ROWS]]
    counts = ("element_count", "missing_count", "unexpected_count", "unexpected_percent", "observed_value")
    return {
        "expectation": config["type"],
        "description": config.get("description"),
        "table": check.table,
        "field": check.field,
        "kwargs": {k: v for k, v in config["kwargs"].items() if k != "batch_id"},
        "success": bool(result["success"]),
        **{k: details[k] for k in counts if k in details},
        "partial_unexpected_list": details.get("partial_unexpected_list", [])[:REPORT_ROWS],
        "unexpected": [{"path": r["path"], "item": str(r[item_column]), "value": check.value(r)} for r in rows],
        "exception": (result.get("exception_info") or {}).get("exception_message"),
    }
