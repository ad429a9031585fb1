"""The Kubeflow pipeline compiled from the stage graph (infra/kubeflow/).

The compiler's own environment (.venv-kfp) is made here when missing (`compile.py --setup`: ~10 s
with pip's cache, ~30 s without); compiling takes ~1 s. Checked: one task per DVC stage with the
stage's command and the graph's dependency edges, GPUs on train and evaluate only, the pods'
settings from params.yaml and the pod template, the YAML as kfp itself reads it back (its
PipelineSpec and PlatformSpec protos, and as a component), and the layout task and a stage's
command run here, as the pipeline's pods would run them in /work.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from talbench.errors import InputError
from talbench.io import read_yaml_mapping
from talbench.orchestration import project_graph
from talbench.pipeline import upstream
from talbench.runners import GPU_KINDS, runners_config

ROOT = Path(__file__).resolve().parents[1]
COMPILE = ROOT / "infra" / "kubeflow" / "compile.py"
EXTRA_TASKS = {"createpvc", "workspace"}  # the run's claim, and its layout as a workspace


def load_compile_module():
    spec = importlib.util.spec_from_file_location("kubeflow_compile", COMPILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kfc = load_compile_module()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """The pipeline compiled by the README's commands: {"path", "spec", "platform", "tasks" (display name -> task)}."""
    if not kfc.ready():
        started = time.monotonic()
        subprocess.run([sys.executable, str(COMPILE), "--setup"], check=True, timeout=600)
        print(f"kfp environment made in {time.monotonic() - started:.0f} s")
    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    done = subprocess.run([sys.executable, str(COMPILE), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pipeline, platform = yaml.safe_load_all(out.read_text(encoding="utf-8"))
    tasks = {task["taskInfo"]["name"]: task for task in pipeline["root"]["dag"]["tasks"].values()}
    return {"path": out, "spec": pipeline, "platform": platform["platforms"]["kubernetes"], "tasks": tasks}


def executor(compiled: dict, name: str) -> dict:
    ref = compiled["tasks"][name]["componentRef"]["name"]
    label = compiled["spec"]["components"][ref]["executorLabel"]
    return compiled["spec"]["deploymentSpec"]["executors"][label]["container"]


def platform(compiled: dict, name: str) -> dict:
    ref = compiled["tasks"][name]["componentRef"]["name"]
    return compiled["platform"]["deploymentSpec"]["executors"][compiled["spec"]["components"][ref]["executorLabel"]]


def k8s():
    return runners_config(read_yaml_mapping(ROOT / "params.yaml")).kubernetes


def test_one_task_per_stage_running_the_stages_command(compiled):
    graph = project_graph()
    assert set(compiled["tasks"]) == {s.name for s in graph} | EXTRA_TASKS
    for stage in graph:
        container = executor(compiled, stage.name)
        assert container["command"] == shlex.split(stage.cmd), stage.name
        assert "args" not in container and container["image"] == k8s().image


def test_dependency_edges_are_the_graphs(compiled):
    graph = project_graph()
    by_task = {task_id: task["taskInfo"]["name"] for task_id, task in compiled["spec"]["root"]["dag"]["tasks"].items()}
    for stage in graph:
        after = {by_task[t] for t in compiled["tasks"][stage.name]["dependentTasks"]}
        assert after == {u.name for u in upstream(graph, stage)} | EXTRA_TASKS, stage.name
    assert compiled["tasks"]["workspace"]["dependentTasks"] == ["createpvc"]


def test_gpus_on_model_stages_only(compiled):
    for stage in project_graph():
        accelerator = executor(compiled, stage.name).get("resources", {}).get("accelerator")
        if stage.stage in GPU_KINDS:
            assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", str(k8s().gpus))
        else:
            assert accelerator is None, stage.name


def test_pods_share_the_claim_run_non_root_with_the_params_placement(compiled):
    cfg = k8s()
    template = cfg.template()["spec"]
    workdir = re.search(r"^WORKDIR (\S+)$", (ROOT / "infra/docker/Dockerfile").read_text(), re.M)[1]
    for name, task in compiled["tasks"].items():
        assert task["cachingOptions"].get("enableCache") is not True, f"{name}: cached"
        if name == "createpvc":
            continue
        pod = platform(compiled, name)
        [mount] = pod["pvcMount"]
        assert mount["mountPath"] == workdir and mount["taskOutputParameter"]["producerTask"] == "createpvc"
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and int(security["runAsUser"]) == template["securityContext"]["runAsUser"] != 0
        assert pod["tolerations"] == [t.model_dump(exclude_none=True) for t in cfg.tolerations]
        assert pod.get("nodeSelector", {}).get("labels", {}) == cfg.node_selector
        assert [(d["mountPath"], d["medium"]) for d in pod["emptyDirMounts"]] == [("/dev/shm", "Memory")]
        assert pod["fieldPathAsEnv"] == [{"name": "TALBENCH_RUN_GROUP", "fieldPath": "metadata.labels['pipeline/runid']"}]
        container = executor(compiled, name)
        assert {"name": "MLFLOW_TRACKING_URI", "value": "http://talbench-mlflow:5000"} in container["env"]
        assert container["resources"]["resourceMemoryRequest"] == template["containers"][0]["resources"]["requests"]["memory"]
    [pvc_inputs] = [t["inputs"]["parameters"] for t in compiled["tasks"].values() if t["taskInfo"]["name"] == "createpvc"]
    assert pvc_inputs["access_modes"]["runtimeValue"]["constant"] == ["ReadWriteMany"]


def test_kfp_reads_the_yaml_back(compiled):
    """kfp's own protos (unknown fields refused) and its component loader, in the compiler's environment."""
    code = ("import sys, json, yaml; from google.protobuf import json_format; from kfp import components; "
            "from kfp.pipeline_spec import pipeline_spec_pb2 as pb; "
            "spec, platform = yaml.safe_load_all(open(sys.argv[1])); "
            "json_format.ParseDict(spec, pb.PipelineSpec()); json_format.ParseDict(platform, pb.PlatformSpec()); "
            "c = components.load_component_from_file(sys.argv[1]); print(json.dumps({'name': c.name}))")
    done = subprocess.run([str(kfc.python()), "-c", code, str(compiled["path"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "talbench-benchmark"}


@pytest.mark.slow
def test_layout_task_and_a_stage_command_run_in_a_workspace(compiled, tmp_path):
    """What the pods run, here: the `workspace` task's command lays out the folder, then the fetch
    stage's command from the YAML makes its output in it (the image's python is this venv's)."""
    def run(command: list[str]) -> subprocess.CompletedProcess:
        argv = [sys.executable, *command[1:]] if command[0] == "python" else command
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    layout = executor(compiled, "workspace")["command"]
    assert layout[-1] == "/work"
    done = run([*layout[:-1], str(tmp_path)])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "params.yaml").is_file() and (tmp_path / "components").resolve() == (ROOT / "components").resolve()
    done = run(executor(compiled, "fetch@thumos14")["command"])
    assert done.returncode == 0, done.stderr
    assert any((tmp_path / "data" / "synthetic" / "thumos14").iterdir())


def test_a_bad_setting_is_one_line_and_nothing_is_compiled(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    project.mkdir()
    params = read_yaml_mapping(ROOT / "params.yaml")
    params["runners"]["kubernetes"]["gpus"] = "two"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    with pytest.raises(InputError) as caught:
        kfc.spec(project, "http://mlflow:5000", "1Gi", None)
    assert (caught.value.item, caught.value.field) == ("runners.kubernetes", "gpus")
    # without its environment, the compiler says how to make it and writes nothing
    monkeypatch.setattr(kfc, "VENV", tmp_path / "no-venv")
    out = tmp_path / "pipeline.yaml"
    assert kfc.main(["--out", str(out)]) == 2
    assert "--setup" in capsys.readouterr().err and not out.exists()
