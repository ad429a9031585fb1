"""The stage cache (talbench/stage_cache.py): a stage run again with the same command, params and
inputs is restored, not run; any change of those runs it again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from talbench import orchestration, stage_cache
from talbench.orchestration import prepare, run_stage
from talbench.pipeline import Stage

ROOT = Path(__file__).resolve().parents[1]


def toy(tmp_path: Path) -> tuple[Stage, Path, Path, dict]:
    project, workspace = tmp_path / "project", tmp_path / "ws" / "a"
    (project / "code").mkdir(parents=True)
    (project / "code" / "step.py").write_text("print('v1')\n")
    (workspace / "data").mkdir(parents=True)
    (workspace / "data" / "in.txt").write_text("input\n")
    stage = Stage("make@x", "python code/step.py x", ("code", "data/in.txt"), ("out/x", "out/x.json"), ("opts.x",))
    return stage, project, workspace, {"opts": {"x": {"k": 1}, "y": 2}}


def write_outputs(workspace: Path, text: str) -> None:
    (workspace / "out" / "x").mkdir(parents=True, exist_ok=True)
    (workspace / "out" / "x" / "model.bin").write_text(text)
    (workspace / "out" / "x.json").write_text(json.dumps({"v": text}))


def test_the_key_follows_command_params_and_the_content_of_deps(tmp_path):
    stage, project, workspace, params = toy(tmp_path)
    key = stage_cache.stage_key(stage, workspace, project, params)
    assert key == stage_cache.stage_key(stage, workspace, project, params)
    assert key == stage_cache.stage_key(stage, workspace, project, {**params, "other": 1})  # a key it does not read
    assert key != stage_cache.stage_key(stage, workspace, project, {"opts": {"x": {"k": 2}}})
    assert key != stage_cache.stage_key(Stage(stage.name, stage.cmd + " --fast", stage.deps, stage.outs, stage.params),
                                        workspace, project, params)
    (project / "code" / "__pycache__").mkdir()
    (project / "code" / "__pycache__" / "step.cpython-313.pyc").write_bytes(b"bytecode")
    assert key == stage_cache.stage_key(stage, workspace, project, params)  # bytecode is not code
    (project / "code" / "step.py").write_text("print('v2')\n")
    changed_code = stage_cache.stage_key(stage, workspace, project, params)
    (workspace / "data" / "in.txt").write_text("other input\n")
    changed_data = stage_cache.stage_key(stage, workspace, project, params)
    assert len({key, changed_code, changed_data}) == 3
    (workspace / "data" / "in.txt").unlink()
    assert stage_cache.stage_key(stage, workspace, project, params) is None  # the stage itself will say what is missing


def test_saved_outputs_are_restored_byte_for_byte_into_another_workspace(tmp_path):
    stage, project, workspace, params = toy(tmp_path)
    cache = tmp_path / "ws" / ".stage-cache"
    key = stage_cache.stage_key(stage, workspace, project, params)
    assert not stage_cache.restore(cache, key, stage, workspace)  # nothing stored yet
    assert not stage_cache.save(cache, key, stage, workspace)  # no outputs yet: nothing stored
    write_outputs(workspace, "weights-1")
    assert stage_cache.save(cache, key, stage, workspace)
    assert not stage_cache.save(cache, key, stage, workspace)  # stored once
    other = tmp_path / "ws" / "b"
    write_outputs(other, "stale")
    assert stage_cache.restore(cache, key, stage, other)
    assert (other / "out" / "x" / "model.bin").read_text() == "weights-1"
    assert json.loads((other / "out" / "x.json").read_text()) == {"v": "weights-1"}
    stored = next(cache.glob("*/*/outs/out/x/model.bin"))
    assert not os.stat(stored).st_mode & 0o222  # read-only: nobody writes into a shared link
    assert [p.name for p in cache.glob("*/.*")] == []  # no work folders left behind


@pytest.mark.slow
def test_a_second_identical_run_reuses_fetch_and_validate_and_a_changed_param_does_not(tmp_path):
    env = {"TALBENCH_WORKSPACES": str(tmp_path)}
    runs = {}
    for run_id, scale in (("first", None), ("second", None), ("third", "small")):
        workspace = Path(prepare(run_id, ["thumos14-i3d"], scale=scale, seeds=[0], project=ROOT, env=env)["workspace"])
        lines: list[str] = []
        runs[run_id] = [run_stage(workspace, name, emit=lines.append)["reused"] for name in ("fetch@thumos14", "validate@thumos14")]
        if run_id == "second":
            assert any("restored from the stage cache" in line for line in lines)
            assert not any(line.startswith("$ ") for line in lines)  # no command ran
            first = tmp_path / "first"
            for out in ("data/synthetic/thumos14/MANIFEST.json", "reports/validation/thumos14/validation.json"):
                assert (workspace / out).read_bytes() == (first / out).read_bytes()
    assert runs == {"first": [False, False], "second": [True, True], "third": [False, False]}
    assert (tmp_path / orchestration.CACHE).is_dir()
