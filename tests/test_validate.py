"""The validate stage on a real ci twin of ActivityNet (TSP): the good dataset passes, each kind of
damage fails with one line naming the file, the video and the field, and the dataset is never touched.
Its Data Docs name the run after the dataset and data version, and work offline from their own folder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from talbench.data.archive import safe_extract
from talbench.data.fetch import MANIFEST
from talbench.data.registry import Registry
from talbench.data.synthetic import write_twin
from talbench.data.validation import WEB_ASSETS_VARIABLE, validate_dataset
from talbench.errors import InputError
from talbench.io import file_md5
from talbench.data.fetch import data_hash

ROOT = Path(__file__).resolve().parents[1]
NAME = "anet13_tsp"
ANNOTATIONS = "anet_1.3/annotations/anet1.3_tsp_filtered.json"
FEATURES = "anet_1.3/tsp_features"
TABLES = ("videos", "splits", "features", "instances")
ASSET_TAG = re.compile(r"<(?:script|link|img)\b[^>]*>")
TAG_URL = re.compile(r'\b(?:src|href)="([^"]+)"')
CSS_URL = re.compile(r"url\(['\"]?([^)'\"]+)['\"]?\)")


@pytest.fixture(scope="module")
def good(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<tmp>/synthetic/anet13_tsp`, holding the unpacked twin, as `prepare_dataset` lays it out."""
    data_dir = tmp_path_factory.mktemp("validate") / "synthetic" / NAME
    archive = write_twin(registry.dataset(NAME), "ci", 0, data_dir.parent / "archives").archive
    safe_extract(archive, data_dir)
    # the fetch stage's record of where the data came from: its version
    (data_dir / MANIFEST).write_text(json.dumps({"dataset": NAME, "content_hash": file_md5(archive)}))
    return data_dir


@pytest.fixture(scope="module")
def validated(registry: Registry, good: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, dict[str, str]]:
    """The report of the good dataset, its folder, and the dataset's files before validation."""
    before = snapshot(good)
    out = tmp_path_factory.mktemp("validated") / "out"
    return validate_dataset(NAME, registry, good, out), out, before


@pytest.fixture
def copy(good: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "synthetic" / NAME
    shutil.copytree(good / "anet_1.3", data_dir / "anet_1.3")
    return data_dir


def snapshot(data_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(data_dir)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(data_dir.rglob("*")) if p.is_file()}


def database(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / ANNOTATIONS).read_text())["database"]


def write_database(data_dir: Path, db: dict[str, Any]) -> None:
    (data_dir / ANNOTATIONS).write_text(json.dumps({"version": "edited", "database": db}))


def first_video(data_dir: Path, subset: str = "validation") -> str:
    return next(vid for vid, v in database(data_dir).items() if v["subset"] == subset and v["annotations"])


def feature_file(data_dir: Path, video_id: str) -> Path:
    return data_dir / FEATURES / f"v_{video_id}.npy"


def edit_features(edit: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], tuple[Path, str]]:
    def damage(data_dir: Path) -> tuple[Path, str]:
        vid = first_video(data_dir)
        path = feature_file(data_dir, vid)
        np.save(path, edit(np.load(path)))
        return path, vid

    return damage


def with_nan(a: np.ndarray) -> np.ndarray:
    a[3, 7] = np.nan
    return a


def truncate(data_dir: Path) -> tuple[Path, str]:
    vid = first_video(data_dir)
    path = feature_file(data_dir, vid)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path, vid


def remove_features(data_dir: Path) -> tuple[Path, str]:
    vid = first_video(data_dir)
    path = feature_file(data_dir, vid)
    path.unlink()
    return path, vid


def edit_annotation(edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> Callable[[Path], tuple[Path, str]]:
    def damage(data_dir: Path) -> tuple[Path, str]:
        db = database(data_dir)
        vid = first_video(data_dir)
        edit(db[vid], db[vid]["annotations"][0])
        write_database(data_dir, db)
        return data_dir / ANNOTATIONS, vid

    return damage


def swap_segment(video: dict[str, Any], ann: dict[str, Any]) -> None:
    ann["segment"] = ann["segment"][::-1]


def past_duration(video: dict[str, Any], ann: dict[str, Any]) -> None:
    ann["segment"][1] = video["duration"] + 5.0


def out_of_range(video: dict[str, Any], ann: dict[str, Any]) -> None:
    ann["label_id"] = 200


def all_training(data_dir: Path) -> tuple[Path, str]:
    db = database(data_dir)
    for video in db.values():
        video["subset"] = "training"
    write_database(data_dir, db)
    return data_dir / ANNOTATIONS, "test"


def duplicate_video(data_dir: Path) -> tuple[Path, str]:
    pairs = list(database(data_dir).items())
    vid = pairs[0][0]
    body = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in [*pairs, pairs[0]])
    (data_dir / ANNOTATIONS).write_text(f'{{"version": "edited", "database": {{{body}}}}}')
    return data_dir / ANNOTATIONS, vid


def two_ids_for_a_label(data_dir: Path) -> tuple[Path, str]:
    db = database(data_dir)
    anns = [(vid, a) for vid, v in db.items() for a in v["annotations"]]
    vid, first = anns[0]
    other = next(a["label_id"] for _, a in anns if a["label_id"] != first["label_id"])
    for _, a in anns:  # every instance of the other id renamed: that id keeps one name, the label gets two ids
        if a["label_id"] == other:
            a["label"] = first["label"]
    write_database(data_dir, db)
    return data_dir / ANNOTATIONS, vid  # the label's first instance is reported


def test_good_dataset_passes(good: Path, validated: tuple[dict[str, Any], Path, dict[str, str]]) -> None:
    report, out, before = validated
    assert report["success"] and all(e["success"] for e in report["expectations"])
    counts = report["counts"]
    assert counts["videos"] == counts["feature_files"] == 90 and counts["instances"] >= 90
    assert len(report["expectations"]) >= 20
    assert json.loads((out / "validation.json").read_text()) == report
    assert Path(report["data_docs"]) == out / "data_docs/index.html"
    assert "anet13_tsp.features" in Path(report["data_docs"]).read_text()
    assert snapshot(good) == before


def asset_refs(page: Path) -> list[str]:
    """What a page loads: its script, stylesheet and image URLs, and its inline CSS's url()s."""
    text = page.read_text()
    return [url for tag in ASSET_TAG.findall(text) for url in TAG_URL.findall(tag)] + CSS_URL.findall(text)


def test_data_docs_load_nothing_from_the_web(validated: tuple[dict[str, Any], Path, dict[str, str]]) -> None:
    docs = (validated[1] / "data_docs").resolve()
    pages = sorted(docs.rglob("*.html"))
    assert len(pages) == 1 + 2 * len(TABLES)  # the index, a suite page and a result page per table
    loaded: set[Path] = set()
    for page in pages:
        refs = asset_refs(page)
        assert len(refs) >= 15 and not [u for u in refs if re.match(r"(https?:)?//", u)], page
        for ref in refs:
            target = (page.parent / ref.split("?")[0]).resolve()
            assert target.is_file() and target.is_relative_to(docs), (page, ref)
            loaded.add(target)
    assert {p.name for p in loaded} >= {"jquery.min.js", "bootstrap.min.css", "bootstrap-table.min.js", "all.min.css"}
    stylesheets = [p for p in loaded if p.suffix == ".css"]
    fonts = {(css.parent / ref.split("?")[0].split("#")[0]).resolve()
             for css in stylesheets for ref in CSS_URL.findall(css.read_text()) if not ref.startswith("data:")}
    assert {f.name for f in fonts} >= {"fa-solid-900.woff2"}  # the status icons
    assert all(f.is_file() and f.is_relative_to(docs) for f in fonts), fonts


def test_runs_and_assets_are_named(good: Path, validated: tuple[dict[str, Any], Path, dict[str, str]]) -> None:
    report, out, _ = validated
    version = data_hash(NAME, good)
    assert version == file_md5(next((good.parent / "archives").glob("*.zip")))
    run = f"{NAME}@{version[:8]}"
    assert report["data_version"] == version and report["run_name"] == run
    index = (out / "data_docs/index.html").read_text()  # the runs table's rows, as great-expectations wrote them
    assets = [f"{NAME}.{table}" for table in TABLES]
    assert re.findall(r"'run_name': '([^']*)'", index) == [run] * len(TABLES)
    assert sorted(re.findall(r"'asset_name': '([^']*)'", index)) == sorted(assets)
    assert sorted(re.findall(r"'_batch_identifier_sort': '([^']*)'", index)) == sorted(f"{run}-{a}" for a in assets)
    for asset in assets:
        page = next((out / "data_docs/validations").glob(f"{asset.replace('.', '/')}/{run}/*/{run}-{asset}.html"))
        assert f"Data asset: {asset}<br>" in page.read_text()


def test_missing_web_assets_fail_with_one_line(
    registry: Registry, good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEB_ASSETS_VARIABLE, str(tmp_path / "node_modules"))
    with pytest.raises(InputError, match=r"node_modules/.*: -: field 'web assets': missing: install them with `npm ci"):
        validate_dataset(NAME, registry, good, tmp_path / "out")
    assert not (tmp_path / "out/validation.json").exists()


@pytest.mark.slow
def test_data_docs_render_offline_in_chromium(validated: tuple[dict[str, Any], Path, dict[str, str]], tmp_path: Path) -> None:
    """The runs table is drawn by JavaScript: a browser that can resolve no host, on a copy of the
    folder somewhere else, shows a row per table with its status icon."""
    if not shutil.which("chromium"):  # CI installs it and sets TALBENCH_REQUIRE_BROWSER
        (pytest.fail if os.environ.get("TALBENCH_REQUIRE_BROWSER") else pytest.skip)("chromium is not installed")
    docs = shutil.copytree(validated[1] / "data_docs", tmp_path / "moved")
    dom = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000", "--dump-dom", (docs / "index.html").as_uri()],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    rows = re.findall(r'<tr class="clickable-row" data-href="validations/[^"]*" data-index="\d+">(.*?)</tr>', dom, re.S)
    run = validated[0]["run_name"]
    assert len(rows) == len(TABLES) and all(run in row and "fa-check-circle text-success" in row for row in rows), dom


@pytest.mark.parametrize(
    ("damage", "field", "value"),
    [
        (edit_features(with_nan), "finite", "1 non-finite values"),
        (edit_features(lambda a: a[:, :500]), "channels", "500 channels, expected 512"),
        (truncate, "readable", "unreadable feature file"),
        (edit_features(lambda a: a[:3]), "n_steps", "3 steps, expected"),
        (edit_features(lambda a: a.astype(np.float64)), "dtype", "float64, expected float32"),
        (remove_features, "exists", "feature file not found"),
        (edit_annotation(swap_segment), "segment", "does not end after it starts"),
        (edit_annotation(past_duration), "segment", "ends after the video's duration"),
        (edit_annotation(out_of_range), "label_id", "200 outside [0, 200)"),
        (all_training, "subset", "no video in subset(s) validation"),
        (duplicate_video, "video_id", "appears 2 times in the annotation file"),
        (two_ids_for_a_label, "label_id", "has ids"),
    ],
    ids=["nan", "width", "truncated", "too-short", "float64", "no-features", "end-before-start", "past-duration",
         "label-id", "empty-test-split", "duplicate-id", "label-two-ids"],
)
def test_damage_fails_with_one_line(
    registry: Registry, copy: Path, tmp_path: Path, damage: Callable[[Path], tuple[Path, str]], field: str, value: str
) -> None:
    path, item = damage(copy)
    before = snapshot(copy)
    out = tmp_path / "out"
    with pytest.raises(InputError) as caught:
        validate_dataset(NAME, registry, copy, out)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and f": field '{field}': expect_" in message and value in message, message
    assert caught.value.item == item
    assert snapshot(copy) == before  # validation reads, never writes, the dataset
    report = json.loads((out / "validation.json").read_text())
    assert not report["success"] and (out / "data_docs/index.html").is_file()
    failed = [e for e in report["expectations"] if not e["success"]]
    assert failed[0]["field"] == field and failed[0]["unexpected"][0]["value"] in message


def run_stage(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "components/validate.py"), NAME, "--params", str(ROOT / "params.yaml"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_component(good: Path, copy: Path, tmp_path: Path) -> None:
    ok = run_stage(tmp_path, "--data-root", str(good.parents[1]))  # the default --out, relative to the working folder
    assert ok.returncode == 0 and not ok.stderr, ok.stderr
    out = tmp_path / "reports/validation" / NAME
    assert (out / "validation.json").is_file() and (out / "data_docs/index.html").is_file()
    _, vid = remove_features(copy)
    bad = run_stage(tmp_path, "--data-root", str(copy.parents[1]), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{vid}: field 'exists'" in lines[0], bad.stderr
