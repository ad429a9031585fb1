"""The command line as a user runs it: real processes, exit codes, one-line errors."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

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


# -- one command-line style: talbench and the stage commands (components/*.py) ------------------

COMPONENTS = ("fetch", "validate", "train", "evaluate", "report", "promote")


def _component_parser(name):
    spec = importlib.util.spec_from_file_location(f"{name}_component", ROOT / f"components/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.arguments()


def _documented_options():
    """(command, option names, help) of every option and argument of both CLIs, and (command, description) of each."""
    from talbench.cli import app

    group = typer.main.get_command(app)
    options = [("talbench", tuple(p.opts), p.help) for p in group.params]
    commands = []
    for name, command in group.commands.items():
        options += [(f"talbench {name}", tuple(p.opts), p.help) for p in command.params]
        commands.append((f"talbench {name}", command.help))
    for name in COMPONENTS:
        parser = _component_parser(name)
        options += [(parser.prog, tuple(a.option_strings) or (a.dest,), a.help) for a in parser._actions]
        commands.append((parser.prog, f"{parser.description}\n{parser.epilog}"))
    return options, commands


def test_every_option_and_command_is_documented_in_one_style():
    options, commands = _documented_options()
    assert len(commands) == 7 + len(COMPONENTS)
    for command, names, text in options:
        assert text and text.strip().endswith("."), f"{command} {'/'.join(names)}: help {text!r}"
    for command, text in commands:
        assert text and re.search(r"^\s*Writes: \S", text, re.M), f"{command}: no 'Writes:' paragraph in {text!r}"
    # an option shared by both CLIs is described once
    for shared in ("--params", "--outputs"):
        assert len({text for _, names, text in options if shared in names}) == 1, shared


def test_version_is_the_package_and_the_checkout():
    from importlib.metadata import version

    talbench_line = run("--version")
    stage_line = subprocess.run([sys.executable, str(ROOT / "components/train.py"), "--version"], capture_output=True, text=True, timeout=60)
    assert talbench_line.returncode == stage_line.returncode == 0
    assert talbench_line.stdout == stage_line.stdout
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert re.fullmatch(rf"talbench {re.escape(version('talbench'))} \(git {head}(-dirty)?\)\n", talbench_line.stdout), talbench_line.stdout


@pytest.mark.parametrize("argv,command,needle", [
    ([*TALBENCH, "synth"], "talbench synth", "Missing argument 'like'"),
    ([*TALBENCH, "summary", "--bogus"], "talbench summary", "No such option: --bogus"),
    ([*TALBENCH, "nope"], "talbench", "No such command 'nope'"),
    ([sys.executable, str(ROOT / "components/train.py")], "python components/train.py", "the following arguments are required: experiment"),
    ([sys.executable, str(ROOT / "components/report.py"), "--bogus"], "python components/report.py", "unrecognized arguments: --bogus"),
])
def test_a_usage_mistake_is_one_line_in_both_clis(argv, command, needle):
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert re.fullmatch(rf"error: {re.escape(command)}: .*{re.escape(needle)}.*; see '{re.escape(command)} --help'\n", result.stderr), result.stderr


@pytest.mark.parametrize("name", COMPONENTS)
def test_a_stage_answers_help_without_the_heavy_imports(name):
    result = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / f"components/{name}.py"), "--help"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"Usage: python components/{name}.py [--help] [--version]") and "\nWrites: " in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "mlflow", "great_expectations"}, name
