"""Build and compile the Kubeflow pipeline that compile.py describes (run by .venv-kfp's Python).

    .venv-kfp/bin/python infra/kubeflow/pipeline.py SPEC.json OUT.yaml

SPEC.json is compile.py's `spec`: the stages (name, argv, upstream names, GPUs) and the pods'
settings. Only kfp and the standard library here: talbench is not in this environment.
No `from __future__ import annotations`: kfp reads the components' return annotations as types.
"""

import json
import re
import sys
from typing import Any

from kfp import compiler, dsl, kubernetes

RUN_ID_LABEL = "metadata.labels['pipeline/runid']"  # KFP's label on every pod of a run


def container(name: str, image: str, argv: list[str]) -> Any:
    """A component that runs `argv` in `image`, named after the stage."""
    def stage() -> dsl.ContainerSpec:
        return dsl.ContainerSpec(image=image, command=argv)

    stage.__name__ = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")  # the component's name in the YAML
    return dsl.container_component(stage)


def step(name: str, argv: list[str], spec: dict[str, Any], pvc: Any) -> Any:
    """The task of one stage (or of the workspace layout): its pod as runners.kubernetes and the template say."""
    pod = spec["pod"]
    task = container(name, pod["image"], argv)().set_display_name(name).set_caching_options(False)
    kubernetes.mount_pvc(task, pvc_name=pvc.outputs["name"], mount_path=spec["workspace"]["mount_path"])
    kubernetes.set_image_pull_policy(task, pod["image_pull_policy"])
    if any(value is not None for value in pod["security"].values()):
        kubernetes.set_security_context(task, **pod["security"])
    for label, value in pod["node_selector"].items():
        kubernetes.add_node_selector(task, label_key=label, label_value=value)
    for toleration in pod["tolerations"]:
        kubernetes.add_toleration(task, **toleration)
    for empty_dir in pod["empty_dirs"]:
        kubernetes.empty_dir_mount(task, **empty_dir)
    for kind, quantities in pod["resources"].items():  # limits / requests of cpu / memory
        for resource, quantity in quantities.items():
            getattr(task, f"set_{resource}_{kind.removesuffix('s')}")(str(quantity))
    for name_, value in spec["env"].items():
        task.set_env_variable(name_, value)
    kubernetes.use_field_path_as_env(task, "TALBENCH_RUN_GROUP", RUN_ID_LABEL)  # one MLflow parent run per KFP run
    return task


def build(spec: dict[str, Any]) -> Any:
    workspace = spec["workspace"]

    @dsl.pipeline(name=spec["name"], description=spec["description"])
    def benchmark():  # no return annotation: kfp would take it for an output
        pvc = kubernetes.CreatePVC(pvc_name_suffix="-talbench-workspace", access_modes=["ReadWriteMany"],
                                   size=workspace["size"], storage_class_name=workspace["storage_class"] or "")  # "": the default class
        pvc.set_caching_options(False)  # cached, every run would get the first run's claim
        layout = step("workspace", workspace["init"], spec, pvc)
        tasks: dict[str, Any] = {}
        for stage in spec["stages"]:  # dvc.yaml's order: a stage's upstream stages come before it
            task = step(stage["name"], stage["argv"], spec, pvc).after(layout, *(tasks[name] for name in stage["after"]))
            if stage["gpus"]:
                task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(stage["gpus"])
            tasks[stage["name"]] = task

    return benchmark


def main(spec_file: str, out: str) -> int:
    with open(spec_file, encoding="utf-8") as f:
        spec = json.load(f)
    compiler.Compiler().compile(build(spec), out)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
