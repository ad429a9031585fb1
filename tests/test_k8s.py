"""The Kubernetes deployment (infra/k8s/) and the pod the `kubernetes` runner makes from it.

No cluster: every manifest is validated offline against the Kubernetes schemas that PyPI's
kubernetes-validate ships (strict: an unknown field fails), at K8S_VERSION; the Helm values' keys
against the chart's documented structure and Airflow's own configuration; the names that tie the
files together (claim, mount paths, ConfigMap, Service, image, uid) against each other; the MLflow
server's arguments by running them; the step pod by the provider's own pod-building method.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from talbench.errors import InputError
from talbench.io import read_yaml_mapping
from talbench.orchestration import PROJECT, prepare, workspace_graph
from talbench.runners import GPU_KINDS, entry_argv, kubernetes_operator, runners_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "infra" / "k8s"
K8S_VERSION = "1.31.0"  # the oldest minor the managed clouds still offer in 2026; the schemas are strict
MANIFESTS = ("pod-template.yaml", "workspaces-pvc.yaml", "mlflow.yaml")
IMAGE_PROJECT = "/opt/talbench"  # where infra/docker/Dockerfile puts the project (checked below)


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if doc]


def objects() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"].get("name", "")): doc for name in MANIFESTS for doc in documents(name)}


def values() -> dict:
    return yaml.safe_load((K8S / "airflow-values.yaml").read_text(encoding="utf-8"))


def project_k8s():
    return runners_config(read_yaml_mapping(ROOT / "params.yaml")).kubernetes


# ---------------------------------------------------------------- manifests


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_the_kubernetes_schemas(name):
    for doc in documents(name):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_refuses_a_misspelt_field():
    """The check above can fail: a typo in a pod is refused by the same call."""
    pod = documents("pod-template.yaml")[0]
    pod["spec"]["containers"][0]["resource"] = pod["spec"]["containers"][0].pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_kustomization_applies_every_manifest_and_the_template():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    [generator] = kustomization["configMapGenerator"]
    assert set(kustomization["resources"]) | set(generator["files"]) == set(MANIFESTS)
    assert kustomization["generatorOptions"]["disableNameSuffixHash"] is True  # the values name it
    mounted = {v["name"]: v for v in values()["volumes"]}
    assert any(v.get("configMap", {}).get("name") == generator["name"] for v in mounted.values())


def test_no_secret_value_in_the_manifests():
    """Credentials and the database URI come from Secrets by name, never as values."""
    deployment = objects()[("Deployment", "talbench-mlflow")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    secret_like = re.compile(r"KEY|SECRET|PASSWORD|TOKEN|URI|DESTINATION")
    named = [e for e in container["env"] if secret_like.search(e["name"])]
    assert {e["name"] for e in named} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_BACKEND_STORE_URI"}
    assert all("value" not in e and e["valueFrom"]["secretKeyRef"]["name"] == "talbench-mlflow" for e in named)
    assert not re.search(r"://[^/\s:]+:[^@\s]+@", (K8S / "airflow-values.yaml").read_text())  # no user:password@ URL


def test_pods_run_as_the_images_non_root_user():
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "infra/docker/Dockerfile").read_text(), re.M)
    assert user, "infra/docker/Dockerfile: no USER uid:gid line"
    uid, gid = int(user[1]), int(user[2])
    assert uid != 0
    pods = [documents("pod-template.yaml")[0]["spec"], objects()[("Deployment", "talbench-mlflow")]["spec"]["template"]["spec"]]
    for spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert (spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]) == (uid, gid)
        assert all(c["securityContext"]["allowPrivilegeEscalation"] is False for c in spec["containers"])
    assert (values()["uid"], values()["gid"]) == (uid, gid)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, host: str) -> int:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_mlflow_server_arguments_serve_the_service_name(tmp_path):
    """The Deployment's own arguments, run here (SQLite and a folder for the Secret's database and S3):
    the server starts, and answers the Service's name in the Host header while refusing others."""
    deployment = objects()[("Deployment", "talbench-mlflow")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = [a for a in container["args"] if not a.startswith(("--host=", "--port="))]
    assert args[:2] == ["mlflow", "server"] and "--serve-artifacts" in args
    port = free_port()
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen([mlflow, *args[1:], "--host=127.0.0.1", f"--port={port}"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/health"
        deadline = time.monotonic() + 60
        while get_or_none(url) is None:
            if server.poll() is not None:
                pytest.fail(f"mlflow server exited {server.returncode}: {server.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "mlflow server not up in 60 s"
            time.sleep(0.5)
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"  # /health skips the check
        assert get(api, "talbench-mlflow:5000") == 200
        assert get(api, "talbench-mlflow.ml.svc.cluster.local:5000") == 200
        assert get(api, "attacker.example:5000") == 403
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def get_or_none(url: str) -> int | None:
    try:
        return get(url, "localhost")
    except OSError:
        return None


# ---------------------------------------------------------------- Helm values

# The chart's value keys this file relies on, as the chart's values.yaml documents them
# (apache-airflow/airflow 1.18, the first for Airflow 3); `config` is checked against Airflow itself.
CHART_KEYS = {"airflowVersion", "images.airflow.repository", "images.airflow.tag", "images.airflow.pullPolicy",
              "uid", "gid", "executor", "env", "volumes", "volumeMounts", "createUserJob.enabled"}
CHART_EXECUTORS = {"LocalExecutor", "CeleryExecutor", "KubernetesExecutor"}


def leaves(tree: dict, prefix: str = "") -> set[str]:
    found = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        found |= leaves(value, path + ".") if isinstance(value, dict) and key != "config" else {path}
    return found


def test_helm_values_use_only_the_charts_documented_keys():
    assert leaves(values()) - {"config"} == CHART_KEYS
    assert values()["executor"] in CHART_EXECUTORS


def test_helm_values_airflow_config_is_airflows_own():
    from airflow.configuration import conf

    for section, options in values()["config"].items():
        for option in options:
            assert option in conf.configuration_description[section]["options"], f"config.{section}.{option}: not Airflow's"
    lock = (ROOT / "requirements.lock").read_text()
    assert f"apache-airflow=={values()['airflowVersion']}\n" in lock


def test_helm_values_volumes_and_env_are_valid_kubernetes_objects():
    """The chart copies them into its pods: a pod holding them must validate."""
    v = values()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"volumes": v["volumes"], "containers": [{"name": "c", "image": "x", "env": v["env"],
                                                              "volumeMounts": v["volumeMounts"]}]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert {m["name"] for m in v["volumeMounts"]} == {vol["name"] for vol in v["volumes"]}


def test_helm_values_agree_with_params_manifests_and_image():
    v, cfg = values(), project_k8s()
    env = {e["name"]: e["value"] for e in v["env"]}
    mounts = {m["name"]: m["mountPath"] for m in v["volumeMounts"]}
    claims = {vol["name"]: vol["persistentVolumeClaim"]["claimName"] for vol in v["volumes"] if "persistentVolumeClaim" in vol}
    [(volume, claim)] = claims.items()
    assert claim == cfg.workspaces.claim and ("PersistentVolumeClaim", claim) in objects()
    assert mounts[volume] == cfg.workspaces.mount_path
    assert Path(env["TALBENCH_WORKSPACES"]).is_relative_to(cfg.workspaces.mount_path)
    assert env["TALBENCH_RUNNER"] == "kubernetes"
    # the step pod template where params.yaml points, in the image's project
    dockerfile = (ROOT / "infra/docker/Dockerfile").read_text()
    assert re.search(rf"^COPY dags {IMAGE_PROJECT}/dags$", dockerfile, re.M)
    assert v["config"]["core"]["dags_folder"] == f"{IMAGE_PROJECT}/dags"
    assert f"{IMAGE_PROJECT}/{Path(cfg.pod_template).parent}" in mounts.values()
    # the steps' tracking server is the Service of mlflow.yaml
    service = objects()[("Service", "talbench-mlflow")]
    assert env["MLFLOW_TRACKING_URI"] == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    assert f"{v['images']['airflow']['repository']}:{v['images']['airflow']['tag']}" == cfg.image


# ---------------------------------------------------------------- the step pod of a train task


def test_train_pod_is_the_template_plus_the_stage(tmp_path):
    cfg = project_k8s().model_copy(update={
        "gpus": 2, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        "workspaces": project_k8s().workspaces.model_copy(update={"mount_path": str(tmp_path)})})
    workspace = Path(prepare("manual__1", ["thumos14-i3d"], epochs=1, seeds=[0], env={"TALBENCH_WORKSPACES": str(tmp_path)})["workspace"])
    name = "train@thumos14-i3d"
    pod = kubernetes_operator("train", workspace, name, 1, cfg, env={}).build_pod_request_obj(dry_run=True)
    kubernetes_validate.validate(sanitized(pod), K8S_VERSION, strict=True)  # what the API server would receive
    [base] = pod.spec.containers
    template = documents("pod-template.yaml")[0]["spec"]
    # the stage's specifics, from params
    assert base.resources.limits["nvidia.com/gpu"] == base.resources.requests["nvidia.com/gpu"] == "2"
    assert base.image == cfg.image and pod.spec.node_selector == cfg.node_selector
    assert [t.to_dict() for t in pod.spec.tolerations] == [{**t.model_dump(), "toleration_seconds": None} for t in cfg.tolerations]
    assert base.args == entry_argv(workspace, name, 1) and not base.command and base.working_dir == str(workspace)
    # what that command runs: exactly the train stage of dvc.yaml, for this experiment
    assert base.args[:4] == ["python", "-m", "talbench.runners", "stage"]
    [stage] = [s for s in workspace_graph(base.args[4]) if s.name == base.args[5]]
    dvc_cmd = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]["train"]["do"]["cmd"]
    assert shlex.split(stage.cmd) == shlex.split(dvc_cmd.replace("${key}", "thumos14-i3d"))
    # the template's part: non-root, resources, /dev/shm; the claim added beside it
    assert pod.spec.security_context.run_as_non_root is True and pod.spec.security_context.run_as_user == 1000
    assert base.security_context.allow_privilege_escalation is False
    assert base.resources.requests["memory"] == template["containers"][0]["resources"]["requests"]["memory"]
    volumes = {v.name: v for v in pod.spec.volumes}
    assert volumes["workspaces"].persistent_volume_claim.claim_name == cfg.workspaces.claim
    assert volumes["dshm"].empty_dir.medium == "Memory"
    assert {(m.name, m.mount_path) for m in base.volume_mounts} == {("workspaces", str(tmp_path)), ("dshm", "/dev/shm")}


def sanitized(pod) -> dict:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(pod)


@pytest.mark.parametrize("name", ["fetch@thumos14", "validate@thumos14", "report"])
def test_only_model_stages_ask_for_gpus(name):
    assert "train" in GPU_KINDS and "evaluate" in GPU_KINDS
    pod = kubernetes_operator("t", "/workspaces/run1", name, 1, project_k8s(), env={}).build_pod_request_obj(dry_run=True)
    [base] = pod.spec.containers
    assert "nvidia.com/gpu" not in base.resources.limits and base.resources.requests["cpu"] == "4"


# ---------------------------------------------------------------- a bad template: one line naming it


def template_error(tmp_path, text: str) -> InputError:
    path = tmp_path / "pod.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as caught:
        runners_config({"runners": {"kubernetes": {"pod_template": str(path)}}}).kubernetes.template()
    assert caught.value.path == str(path) and "\n" not in str(caught.value)
    return caught.value


POD = "apiVersion: v1\nkind: Pod\nspec:\n  containers:\n    - name: base\n"


@pytest.mark.parametrize(("text", "item", "field", "says"), [
    ("apiVersion: v1\nkind: Deployment\n", "(top level)", "kind", "kind Pod"),
    ("apiVersion: v1\nkind: Pod\nspec: {containers: [{name: main}]}\n", "spec", "containers", "named base"),
    (POD + "    - name: sidecar\n", "spec", "containers", "one container"),
    (POD + "  nodeSelector: {gpu: a100}\n", "spec", "nodeSelector", "runners.kubernetes.node_selector"),
    (POD + "  tolerations: []\n", "spec", "tolerations", "runners.kubernetes.tolerations"),
    (POD + "      image: other:1\n", "spec.containers.base", "image", "runners.kubernetes.image"),
    (POD + "      args: [python]\n", "spec.containers.base", "args", "per stage"),
    (POD + "      resources: {limits: {nvidia.com/gpu: 1}}\n", "spec.containers.base.resources", "nvidia.com/gpu", "gpus"),
    (POD + "  volumes: [{name: workspaces, emptyDir: {}}]\n", "spec.volumes", "workspaces", "another name"),
    ("kind: [Pod\n", "-", "pod_template", "YAML"),
])
def test_a_bad_template_is_one_line_naming_it(tmp_path, text, item, field, says):
    error = template_error(tmp_path, text)
    assert (error.item, error.field) == (item, field) and says in error.problem


def test_a_missing_template_fails_the_task_in_one_line_or_an_empty_setting_the_params(tmp_path):
    """Read when the step's pod is made (the docker runner's image need not hold it): the task fails at once."""
    from airflow.sdk.exceptions import AirflowFailException

    cfg = runners_config({"runners": {"kubernetes": {"pod_template": str(tmp_path / "nowhere.yaml")}}}).kubernetes
    with pytest.raises(AirflowFailException, match=r"^error: \S*nowhere\.yaml: -: field 'pod_template': cannot read[^\n]*$"):
        kubernetes_operator("fetch", "/workspaces/run1", "fetch@thumos14", 1, cfg, env={})
    with pytest.raises(InputError) as caught:
        runners_config({"runners": {"kubernetes": {"pod_template": ""}}})
    assert (caught.value.item, caught.value.field) == ("runners.kubernetes", "pod_template")


def test_project_template_is_relative_to_the_project():
    cfg = project_k8s()
    assert cfg.pod_template == "infra/k8s/pod-template.yaml"
    assert cfg.template() == documents("pod-template.yaml")[0]
