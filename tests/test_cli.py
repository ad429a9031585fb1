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
    assert "synthetic.md5" in result.stderr and "anet13_tsp" in result.stderr


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
