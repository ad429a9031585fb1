"""The validate stage: check an unpacked dataset against its registry entry before anything uses it.

The annotation file(s) and feature files are read into four pandas tables (one row per annotation
entry, per registry split, per video and feature type, per action instance) and checked by a
great-expectations suite per table. The outcome goes to `validation.json` and to Data Docs HTML:
one run named after the dataset and its data version, in a site that works offline (the CSS/JS its
pages load from CDNs are copied in from the npm packages of web/package.json). A failed expectation
then becomes one InputError line naming the first offending video. An annotation file that is not
the format at all (unreadable, a path for a video id, a string for a segment) fails first, with the
same line and no report. Nothing under the dataset folder is ever written.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
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
from talbench.data.fetch import data_hash

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
VERSION_CHARS = 8  # of the data hash, in run and batch names: enough to tell versions apart

# Where `npm ci --prefix web` installs the packages of web/package.json; the variable points elsewhere
# (a container whose image installed them in another folder).
WEB_ASSETS_VARIABLE = "TALBENCH_WEB_ASSETS"
WEB_ASSETS = Path(__file__).resolve().parents[2] / "web" / "node_modules"
VENDOR = "static/vendor"  # the copies' folder in the site
# Each CDN file the Data Docs templates of great-expectations 1.24 load -> the same file in its npm
# package (popper.js 1.16.1 for 1.12.9, which bootstrap 4.3.1 does not accept as its peer).
CDN_FILES = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/dist/js/bootstrap.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js/dist/umd/popper.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": "@fortawesome/fontawesome-free/css/all.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": "bootstrap-table/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": "bootstrap-table/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css",
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
}
# the logos the pages load from great-expectations' web server; it ships one in the site's static/
GX_LOGOS = {
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png": "static/images/logo-long.png",
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png": "static/images/logo-long.png",
}
_ASSET_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>")
_TAG_URL = re.compile(r'\b(src|href)="(https?://[^"]+)"')
# the site's own static files, linked by a relative path that on result pages of a dotted suite name
# (dataset.table: one folder deeper) climbs one folder too few
_SITE_STATIC = re.compile(r'\b(src|href)="(?:\./|(?:\.\./)+)(static/[^"]+)"')
# a CDN tag's integrity and CORS attributes: a page opened from disk would refuse the local copy
_CDN_ONLY = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"')
_CSS_URL = re.compile(r"url\((['\"]?)([^)'\"]+)\1\)")


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
        report = _report(name, data_hash(name, data_dir), data_dir, tables, checks, staging / "data_docs", out_dir / "data_docs")
        localize_assets(staging / "data_docs")
        (staging / "validation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for check, summary in zip(checks, report["expectations"]):
        if not summary["success"]:
            raise _failure(check, summary, data_dir)
    return report


def _report(name: str, version: str, data_dir: Path, tables: dict[str, pd.DataFrame], checks: list[Check], docs_dir: Path,
            final_docs: Path) -> dict[str, Any]:
    """Run the suites (Data Docs into `docs_dir`) and summarise them; `final_docs` is where the docs will live."""
    run_name = f"{name}@{version[:VERSION_CHARS]}"
    results = _run_suites(name, run_name, tables, checks, docs_dir)
    expectations = [_summary(check, result, tables[check.table]) for check, result in zip(checks, results)]
    report = {
        "dataset": name,
        "data_dir": str(data_dir),
        "data_version": version,
        "run_name": run_name,
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


def _run_suites(name: str, run_name: str, tables: dict[str, pd.DataFrame], checks: list[Check], docs_dir: Path) -> list[dict[str, Any]]:
    """Run one suite per table in an in-memory context, as one run named `run_name`; return each
    check's result, and build Data Docs."""
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # keep stderr for the one error line
    source = context.data_sources.add_pandas(run_name)  # a batch is named '<source>-<asset>': dataset@version-dataset.table
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.datetime.now(datetime.timezone.utc))
    by_id: dict[str, dict[str, Any]] = {}
    for table, frame in tables.items():
        asset = source.add_dataframe_asset(f"{name}.{table}")
        suite = context.suites.add(gx.ExpectationSuite(f"{name}.{table}"))
        for check in checks:
            if check.table == table:
                suite.add_expectation(check.expectation)
        definition = context.validation_definitions.add(gx.ValidationDefinition(
            name=f"{name}.{table}", data=asset.add_batch_definition_whole_dataframe(table), suite=suite))
        outcome = definition.run(batch_parameters={"dataframe": frame}, result_format={"result_format": "COMPLETE"}, run_id=run_id)
        _name_asset(context, outcome, asset.name)
        by_id |= {r.expectation_config.id: r.to_json_dict() for r in outcome.results}
    # Data Docs are rendered from the results the context keeps, into the staging folder;
    # an in-memory context takes only an absolute site folder.
    site = {"class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.absolute())}}
    context.add_data_docs_site(DOCS_SITE, site)
    context.build_data_docs(site_names=[DOCS_SITE])
    return [by_id[c.expectation.id] for c in checks]


def _name_asset(context: Any, outcome: Any, asset: str) -> None:
    """Store `outcome` again with its asset's name in its batch spec, where a result page reads it
    (an in-memory dataframe's spec has none: the page said 'Data asset: None')."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    outcome.meta["batch_spec"]["data_asset_name"] = asset
    key = ValidationResultIdentifier(ExpectationSuiteIdentifier(outcome.suite_name), outcome.meta["run_id"], outcome.batch_id)
    context.validation_results_store.set(key, outcome)


# -- Data Docs that work offline -------------------------------------------------------------------


def web_assets() -> Path:
    """The folder the npm packages of web/package.json are installed in."""
    return Path(os.environ.get(WEB_ASSETS_VARIABLE) or WEB_ASSETS)


def localize_assets(docs_dir: Path) -> None:
    """Point every page of the site at local copies of its CDN files, copied into `<docs_dir>/static/vendor`."""
    packages = web_assets()
    used: set[str] = set()
    for page in sorted(docs_dir.rglob("*.html")):
        page.write_text(_localize_page(page, docs_dir, used), encoding="utf-8")
    for file in sorted(used):
        source = packages / file
        _copy_asset(source, docs_dir / VENDOR / file)
        if source.suffix == ".css":  # and the fonts and images it loads, at the same relative paths
            for ref in _CSS_URL.findall(source.read_text(encoding="utf-8")):
                if not ref[1].startswith(("data:", "#")):
                    relative = os.path.normpath(Path(file).parent / ref[1].split("?")[0].split("#")[0])
                    _copy_asset(packages / relative, docs_dir / VENDOR / relative)


def _localize_page(page: Path, docs_dir: Path, used: set[str]) -> str:
    """The text of `page` with each CDN asset URL replaced by a relative link to its local copy."""
    root = Path(os.path.relpath(docs_dir, page.parent)).as_posix()

    def local(url: str) -> str:
        base = url.split("?")[0]
        if base in GX_LOGOS:
            return f"{root}/{GX_LOGOS[base]}"
        if base not in CDN_FILES:
            raise InputError(page, url, "asset", "a Data Docs page loads this from the web: add its npm file to "
                             "web/package.json and talbench.data.validation.CDN_FILES")
        used.add(CDN_FILES[base])
        return f"{root}/{VENDOR}/{CDN_FILES[base]}"

    def tag(match: re.Match[str]) -> str:
        text = _SITE_STATIC.sub(lambda m: f'{m[1]}="{root}/{m[2]}"', match[0])
        if not _TAG_URL.search(text):
            return text
        return _CDN_ONLY.sub("", _TAG_URL.sub(lambda m: f'{m[1]}="{local(m[2])}"', text))

    text = _ASSET_TAG.sub(tag, page.read_text(encoding="utf-8"))
    return _CSS_URL.sub(lambda m: f"url('{local(m[2])}')" if m[2].startswith(("http://", "https://")) else m[0], text)


def _copy_asset(source: Path, target: Path) -> None:
    if not source.is_file():
        raise InputError(source, "-", "web assets", f"missing: install them with `npm ci --prefix web`, "
                         f"or set {WEB_ASSETS_VARIABLE} to the node_modules folder that has them")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


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
