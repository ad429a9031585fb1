"""The command line as a user runs it: real processes, exit codes, one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TALBENCH = [sys.executable, "-m", "talbench.cli"]


def run(*args, cwd=ROOT):
    return subprocess.run([*TALBENCH, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_synth_writes_archive_and_dataset_and_verifies_md5(tmp_path):
    result = run("synth", "anet13_tsp", "--out", str(tmp_path), "--check-md5")
    assert result.returncode == 0, result.stderr
    assert "as recorded" in result.stdout
    assert (tmp_path / "anet13_tsp-ci-seed0.zip").exists()
    db = json.loads((tmp_path / "anet_1.3/annotations/anet1.3_tsp_filtered.json").read_text())["database"]
    assert all((tmp_path / f"anet_1.3/tsp_features/v_{vid}.npy").exists() for vid in db)


@pytest.mark.slow
def test_md5_check_fails_when_the_twin_changes(tmp_path):
    result = run("synth", "anet13_tsp", "--out", str(tmp_path), "--seed", "0", "--scale", "ci", "--check-md5", "--params", str(_params_with_wrong_md5(tmp_path)))
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "anet13_tsp-ci-seed0.zip: anet13_tsp: field 'md5': expected 000" in line and len(line.splitlines()) == 1
    # the mismatching archive is kept aside for inspection and nothing was unpacked
    assert (tmp_path / "anet13_tsp-ci-seed0.zip.bad-md5").exists() and not (tmp_path / "anet_1.3").exists()


def _params_with_wrong_md5(tmp_path):
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synthetic"]["md5"]["anet13_tsp"]["ci"] = "0" * 32
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(
    "args,needle",
    [
        (("synth", "thumos15"), "unknown 'thumos15' (did you mean 'thumos14'?)"),
        (("synth", "thumos14", "--scale", "huge"), "expected one of ci, small, full"),
        (("synth", "thumos14", "--params", "/nonexistent/params.yaml"), "/nonexistent/params.yaml"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(tmp_path, args, needle):
    result = run(*args, "--out", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def _score_files(tmp_path, results):
    ann = {"database": {
        "v1": {"subset": "test", "duration": 30.0, "fps": 30.0, "annotations": [
            {"label": "Jump", "label_id": 0, "segment": [1.0, 5.0]}, {"label": "Run", "label_id": 1, "segment": [10.0, 20.0]}]},
        "v2": {"subset": "train", "duration": 30.0, "fps": 30.0, "annotations": [{"label": "Jump", "label_id": 0, "segment": [2.0, 3.0]}]},
    }}
    (tmp_path / "gt.json").write_text(json.dumps(ann))
    (tmp_path / "pred.json").write_text(json.dumps({"results": results}))
    return ["score", "--annotations", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "pred.json"), "--subset", "TEST", "--tiou", "0.5"]


def test_score_writes_metrics_and_warns_about_unknown_videos(tmp_path):
    args = _score_files(tmp_path, {
        "v1": [{"label": "Jump", "score": 0.9, "segment": [1.0, 5.0]}, {"label": 1, "score": 0.8, "segment": [10.0, 15.0]}],
        "ghost": [{"label": 0, "score": 0.95, "segment": [1.0, 5.0]}],
    })
    result = run(*args, "--out", str(tmp_path / "metrics.json"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # Jump: the ghost prediction ranks first and is a false positive -> AP 0.5; Run: tIoU 0.5 -> AP 1
    assert metrics["AP_per_class"]["Jump"]["AP@0.50"] == 0.5
    assert metrics["AP_per_class"]["Run"]["AP@0.50"] == 1.0
    assert metrics["average_mAP"] == 0.75
    assert "1 predictions on 1 videos not in" in result.stderr and "ghost" in result.stderr
    assert "average mAP: 75.00" in result.stdout
    strict = run(*args, "--strict", "--out", str(tmp_path / "strict.json"))
    assert strict.returncode == 2 and "ghost" in strict.stderr and not (tmp_path / "strict.json").exists()


@pytest.mark.parametrize(
    "results,needle",
    [
        ({"v1": [{"label": "Jump", "score": float("nan"), "segment": [1, 2]}]}, "v1[0]: field 'score'"),
        ({"v1": [{"label": "Jmup", "score": 0.5, "segment": [1, 2]}]}, "did you mean 'Jump'"),
        ({"v1": [{"label": "Jump", "score": 0.5, "segment": [3, 2]}]}, "v1[0]: field 'segment'"),
        ({"v1": [{"label": "Jump", "score": 0.5}]}, "v1[0]: field 'segment'"),
    ],
)
def test_score_rejects_bad_predictions_with_one_line(tmp_path, results, needle):
    out = tmp_path / "metrics.json"
    out.write_text("earlier good output")
    result = run(*_score_files(tmp_path, results), "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pred.json" in lines[0] and needle in lines[0], result.stderr
    assert out.read_text() == "earlier good output"
