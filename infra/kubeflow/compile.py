"""The benchmark as a Kubeflow Pipelines v2 pipeline, compiled from the one stage graph.

    .venv/bin/python infra/kubeflow/compile.py --setup    # once: the compiler's environment, .venv-kfp/
    .venv/bin/python infra/kubeflow/compile.py [--out infra/kubeflow/talbench-pipeline.yaml]
        [--tracking-uri http://talbench-mlflow:5000] [--workspace-size 200Gi] [--storage-class NAME]

The pipeline: one task per stage of dvc.yaml as `talbench.pipeline.stage_graph` expands it from
params.yaml (`fetch@thumos14`, `train@thumos14-i3d`, ...), each running the project image with
exactly the stage's command, after the stages whose outputs it reads (`talbench.pipeline.upstream`).
They share the run's workspace: a PersistentVolumeClaim made for the run (kfp-kubernetes'
CreatePVC, ReadWriteMany: steps land on different nodes) mounted at the image's working folder
/work, where a first task, `workspace`, lays it out as the Airflow DAGs' workspaces are
(`talbench.orchestration.make_workspace`: params.yaml, links to the image's components/ and
configs/). So a stage's command runs there unchanged and its outputs stay in the claim after the run.
Pods as params.yaml's runners.kubernetes says (image, pull policy, node selector, tolerations;
`gpus` GPUs for train and evaluate) and its pod template (non-root user, CPU and memory, /dev/shm).
KFP's cache is off for every task: a stage reads the claim, which KFP does not see as an input.
MLflow: MLFLOW_TRACKING_URI (`--tracking-uri`), the MLflow parent run named after KFP's run id.

Two environments: kfp 2.x needs kubernetes<31 and protobuf<7, which the project's lock cannot
hold. This file runs in the project's environment (it reads the graph and the settings with
talbench) and hands them as JSON to infra/kubeflow/pipeline.py, which .venv-kfp's Python runs to
build the pipeline with kfp and compile it. `--setup` makes .venv-kfp from requirements.txt beside
this file (pinned and complete, installed without resolving) with the project venv's base Python.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV = ROOT / ".venv-kfp"
REQUIREMENTS = HERE / "requirements.txt"
STAMP = ".requirements"  # in the venv: the requirements it was made from, written last
OUT = HERE / "talbench-pipeline.yaml"
WORKSPACE = "/work"  # infra/docker/Dockerfile's WORKDIR: where the stages' relative paths resolve
# The `workspace` task: the run's workspace laid out as the DAGs' are, from the image's project
WORKSPACE_INIT = ["python", "-c", "import sys; from talbench.io import read_yaml_mapping; "
                  "from talbench.orchestration import PROJECT, make_workspace; "
                  "make_workspace(sys.argv[1], read_yaml_mapping(PROJECT / 'params.yaml'))", WORKSPACE]

sys.path.insert(0, str(ROOT))  # talbench, when run as a script from anywhere


def spec(project: Path, tracking_uri: str, size: str, storage_class: str | None) -> dict[str, Any]:
    """What pipeline.py builds: the stages with their commands and upstream stages, and the pods' settings."""
    from talbench.io import read_yaml_mapping
    from talbench.pipeline import stage_graph, upstream
    from talbench.runners import GPU_KINDS, runners_config

    params = read_yaml_mapping(project / "params.yaml")
    config = runners_config(params, project / "params.yaml").kubernetes
    graph = stage_graph(params, project / "dvc.yaml")
    stages = [{"name": s.name, "argv": shlex.split(s.cmd), "after": [u.name for u in upstream(graph, s)],
               "gpus": config.gpus if s.stage in GPU_KINDS else 0} for s in graph]
    return {
        "name": "talbench-benchmark",
        "description": f"talbench: the {len(graph)} stages of dvc.yaml, one task each",
        "stages": stages,
        "workspace": {"mount_path": WORKSPACE, "init": WORKSPACE_INIT, "size": size, "storage_class": storage_class},
        "pod": {"image": config.image, "image_pull_policy": config.image_pull_policy,
                "node_selector": config.node_selector,
                "tolerations": [t.model_dump(exclude_none=True) for t in config.tolerations],
                **template_settings(config.template() or {})},
        "env": {"MLFLOW_TRACKING_URI": tracking_uri},
    }


def template_settings(template: dict[str, Any]) -> dict[str, Any]:
    """What KFP can take of the pod template: the user, the base container's CPU and memory, emptyDir mounts."""
    spec = template.get("spec") or {}
    base = (spec.get("containers") or [{}])[0]
    security = spec.get("securityContext") or {}
    mounts = {m["name"]: m["mountPath"] for m in base.get("volumeMounts") or []}
    empty_dirs = [{"volume_name": v["name"], "mount_path": mounts[v["name"]], "medium": v["emptyDir"].get("medium"),
                   "size_limit": v["emptyDir"].get("sizeLimit")}
                  for v in spec.get("volumes") or [] if "emptyDir" in v and v["name"] in mounts]
    return {"security": {"run_as_user": security.get("runAsUser"), "run_as_group": security.get("runAsGroup"),
                         "run_as_non_root": security.get("runAsNonRoot")},
            "resources": base.get("resources") or {}, "empty_dirs": empty_dirs}


# ---------------------------------------------------------------- the compiler's environment


def python() -> Path:
    return VENV / "bin" / "python"


def ready() -> bool:
    stamp = VENV / STAMP
    return stamp.is_file() and stamp.read_text(encoding="utf-8") == REQUIREMENTS.read_text(encoding="utf-8")


def setup() -> None:
    """Make .venv-kfp with this interpreter's base Python, from the pinned requirements, unless it is made."""
    if ready():
        print(f"{VENV}: up to date with {REQUIREMENTS.relative_to(ROOT)}")
        return
    for argv in ([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--clear", str(VENV)],
                 [str(python()), "-m", "pip", "install", "--quiet", "--no-deps", "-r", str(REQUIREMENTS)],
                 [str(python()), "-m", "pip", "check"]):
        print(f"$ {shlex.join(argv)}", flush=True)
        subprocess.run(argv, check=True)
    (VENV / STAMP).write_text(REQUIREMENTS.read_text(encoding="utf-8"), encoding="utf-8")


def compile_pipeline(pipeline: dict[str, Any], out: Path) -> None:
    """pipeline.py, in .venv-kfp, compiles `pipeline` to a file beside `out`, renamed to `out` when whole."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        spec_file, yaml_file = Path(work) / "spec.json", Path(work) / out.name
        spec_file.write_text(json.dumps(pipeline, indent=1), encoding="utf-8")
        done = subprocess.run([str(python()), str(HERE / "pipeline.py"), str(spec_file), str(yaml_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{HERE / 'pipeline.py'} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
        os.replace(yaml_file, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infra/kubeflow/compile.py", description=__doc__.split("\n\n")[1])
    parser.add_argument("--setup", action="store_true", help="make the compiler's environment .venv-kfp/ and exit")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the pipeline YAML to write (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--tracking-uri", default="http://talbench-mlflow:5000",
                        help="the steps' MLFLOW_TRACKING_URI (default: infra/k8s/mlflow.yaml's Service, same namespace)")
    parser.add_argument("--workspace-size", default="200Gi", help="the run's workspace claim (default 200Gi)")
    parser.add_argument("--storage-class", default=None, help="its storage class, one with ReadWriteMany (default: the cluster's)")
    args = parser.parse_args(argv)
    if args.setup:
        setup()
        return 0
    if not ready():
        print(f"error: {VENV}: missing or not made from {REQUIREMENTS.relative_to(ROOT)}: run {Path(__file__).name} --setup",
              file=sys.stderr)
        return 2
    from talbench.errors import exit_status

    def body() -> None:
        pipeline = spec(ROOT, args.tracking_uri, args.workspace_size, args.storage_class)
        compile_pipeline(pipeline, args.out.absolute())
        print(f"{args.out}: {len(pipeline['stages'])} stage tasks (+ createpvc, workspace); image {pipeline['pod']['image']}")

    return exit_status(body)


if __name__ == "__main__":
    sys.exit(main())
