"""Data lineage without dvc.lock: the fetch stage writes MANIFEST.json with the data, data_hash reads it."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import yaml

import talbench.data.fetch as fetch_module
from talbench.errors import InputError
from talbench.io import file_md5
from talbench.data.fetch import data_hash

ROOT = Path(__file__).resolve().parents[1]


def _component(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_component", ROOT / f"components/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fetch_component, validate_component = _component("fetch"), _component("validate")


@pytest.fixture
def project(tmp_path: Path) -> dict:
    params = tmp_path / "params.yaml"
    shutil.copy2(ROOT / "params.yaml", params)
    return {"params": params, "data": tmp_path / "data", "md5": yaml.safe_load(params.read_text())["synthetic"]["md5"]}


def _fetch(project: dict, dataset: str = "thumos14") -> int:
    return fetch_component.main([dataset, "--params", str(project["params"]), "--data-root", str(project["data"])])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fetch_writes_the_manifest_and_data_hash_reads_it(project: dict, tmp_path: Path) -> None:
    assert _fetch(project) == 0
    folder = project["data"] / "synthetic" / "thumos14"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    expected = project["md5"]["thumos14"]["ci"]
    assert manifest == {"dataset": "thumos14", "source": "synthetic", "archive": manifest["archive"],
                        "archive_md5": expected, "md5_verified": True, "content_hash": expected}
    assert file_md5(project["data"] / "synthetic" / "archives" / manifest["archive"]) == expected
    assert data_hash("thumos14", folder) == expected
    # not this dataset's manifest, none at all, or an unreadable one: unknown, never a wrong hash
    assert data_hash("anet13_tsp", folder) == "unknown"
    assert data_hash("thumos14", tmp_path / "nowhere") == "unknown"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "MANIFEST.json").write_text("{not json")
    assert data_hash("thumos14", tmp_path / "broken") == "unknown"
    # idempotent: a second fetch leaves the folder byte-identical, manifest included
    before = _snapshot(folder)
    assert _fetch(project) == 0
    assert _snapshot(folder) == before


def test_validate_passes_with_the_manifest_beside_the_data(project: dict, tmp_path: Path) -> None:
    assert _fetch(project) == 0
    assert (project["data"] / "synthetic" / "thumos14" / "MANIFEST.json").is_file()
    out = tmp_path / "report"
    code = validate_component.main(["thumos14", "--params", str(project["params"]), "--data-root", str(project["data"]),
                                    "--out", str(out)])
    assert code == 0
    assert json.loads((out / "validation.json").read_text())["counts"]["videos"] > 0


def test_a_refused_archive_keeps_the_data_and_its_manifest(project: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _fetch(project) == 0
    folder = project["data"] / "synthetic" / "thumos14"
    before = _snapshot(folder)

    def refuse(archive, dest, **_):
        raise InputError(archive, "thumos", "path", "refused before anything is written")

    monkeypatch.setattr(fetch_module, "safe_extract", refuse)
    assert _fetch(project) == 2
    assert _snapshot(folder) == before
    assert data_hash("thumos14", folder) == project["md5"]["thumos14"]["ci"]


def test_a_fetch_cut_short_after_replacing_data_leaves_no_manifest(project: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data replaced, then killed before the new manifest: lineage is 'unknown', never the old version's."""
    assert _fetch(project) == 0
    folder = project["data"] / "synthetic" / "thumos14"
    real = fetch_module.safe_extract

    def cut_short(archive, dest, **kwargs):
        real(archive, dest, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_module, "safe_extract", cut_short)
    assert _fetch(project) == 130  # interrupted
    assert not (folder / "MANIFEST.json").exists()
    assert data_hash("thumos14", folder) == "unknown"
    monkeypatch.setattr(fetch_module, "safe_extract", real)
    assert _fetch(project) == 0  # the next run puts it right
    assert data_hash("thumos14", folder) == project["md5"]["thumos14"]["ci"]
