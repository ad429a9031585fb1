"""The runners of talbench/runners.py: the container entry point, the runners' config, the Docker and
Kubernetes operators it builds, and how a container's exit code becomes Airflow's failure kind.

No Docker engine or Kubernetes cluster: the operators' arguments and the pod they would create are
read back; the provider's own failure paths run against a fake engine or a constructed pod status.
The entry point runs for real as a subprocess on a workspace made by orchestration.prepare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from airflow.sdk.exceptions import AirflowFailException

from talbench import runners
from talbench.errors import InputError
from talbench.io import read_yaml_mapping
from talbench.orchestration import StageFailed, prepare
from talbench.runners import (
    PASS_ENV,
    RunnersConfig,
    docker_exit,
    docker_operator,
    entry_argv,
    kubernetes_operator,
    link_project,
    pod_exit,
    run_stage_in,
    runners_config,
    stage_failure,
)

ROOT = Path(__file__).resolve().parents[1]
ERROR = "error: data/x/annotations.json: video_1: field 'segment': expected [start, end] with start < end, got [5, 2]"
SECRETS = {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "HF_TOKEN": "hf_x", "AIRFLOW__CORE__FERNET_KEY": "k"}


def config(**sections) -> RunnersConfig:
    return runners_config({"runners": sections})


def context(task_id: str = "fetch") -> dict:
    return {"ti": SimpleNamespace(task_id=task_id)}


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A run's workspace for one experiment, as the DAG's first task makes it."""
    return Path(prepare("manual__1", ["thumos14-i3d"], epochs=1, seeds=[0], env={"TALBENCH_WORKSPACES": str(tmp_path / "ws")})["workspace"])


def entry(workspace: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    """The container's command, run here with the workspace as working directory."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "TALBENCH_PARAMS")}
    argv = [sys.executable, *entry_argv(workspace, name, 1)[1:-2], *extra]
    return subprocess.run(argv, cwd=workspace, env=env, capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------- import cost


def test_import_is_light():
    code = ("import sys, talbench.runners; heavy = ('torch', 'mlflow', 'dvc', 'great_expectations', 'kubernetes', 'docker', "
            "'airflow'); print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ---------------------------------------------------------------- configuration


def test_defaults_without_a_section_are_usable():
    cfg = runners_config({})
    assert cfg == RunnersConfig.model_validate({}) == runners_config({"runners": None})
    assert cfg.docker.image == cfg.kubernetes.image == "talbench:latest"
    assert (cfg.docker.gpus, cfg.docker.docker_url, cfg.docker.pass_env) == (1, "unix://var/run/docker.sock", [])
    assert (cfg.kubernetes.workspaces.claim, cfg.kubernetes.workspaces.mount_path) == ("talbench-workspaces", "/workspaces")
    assert cfg.kubernetes.env_secret is None and cfg.kubernetes.image_pull_policy == "IfNotPresent"


def test_project_params_section_validates():
    params = read_yaml_mapping(ROOT / "params.yaml")
    assert "runners" in params
    assert RunnersConfig.model_validate(params["runners"]) == runners_config(params)


@pytest.mark.parametrize(("section", "item", "field", "says"), [
    ({"docker": {"gpus": -1}}, "runners.docker", "gpus", "an integer >= 0"),
    ({"docker": {"gpus": True}}, "runners.docker", "gpus", "got True"),
    ({"docker": {"pass_env": ["AWS_REGION", "NOT A NAME"]}}, "runners.docker", "pass_env", "environment variable names"),
    ({"docker": {"shm_size": "8x"}}, "runners.docker", "shm_size", "'8g'"),
    ({"dockr": {}}, "runners", "dockr", "did you mean 'docker'"),
    ({"kubernetes": {"namespce": "ml"}}, "runners.kubernetes", "namespce", "did you mean 'namespace'"),
    ({"kubernetes": {"env_secret": "AWS_SECRET=abc"}}, "runners.kubernetes", "env_secret", "name of a secret"),
    ({"kubernetes": {"image_pull_policy": "always"}}, "runners.kubernetes", "image_pull_policy", "did you mean 'Always'"),
    ({"kubernetes": {"node_selector": {"gpu": 1}}}, "runners.kubernetes.node_selector", "gpu", "expected a string"),
    ({"kubernetes": {"workspaces": {"mount_path": "workspaces"}}}, "runners.kubernetes.workspaces", "mount_path", "absolute"),
    ({"kubernetes": {"tolerations": [{"key": "gpu", "operater": "Exists"}]}}, "runners.kubernetes.tolerations", "operater", "did you mean 'operator'"),
    ({"kubernetes": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "a"}]}}, "runners.kubernetes.tolerations", "value", "Exists"),
])
def test_config_errors_name_the_field(section, item, field, says):
    with pytest.raises(InputError) as caught:
        runners_config({"runners": section})
    assert (caught.value.item, caught.value.field) == (item, field)
    assert says in caught.value.problem


# ---------------------------------------------------------------- Docker operator


def test_docker_operator_runs_the_entry_point_with_gpus_the_mount_and_only_allowed_env(monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    cfg = config(docker={"gpus": 2, "network_mode": "talbench", "shm_size": "8g", "pass_env": ["AWS_DEFAULT_REGION"]}).docker
    op = docker_operator("train", "/srv/ws/run1", "train@thumos14-i3d", 3, cfg)
    assert op.command == ["python", "-m", "talbench.runners", "stage", "/srv/ws/run1", "train@thumos14-i3d", "--try", "3"]
    assert op.working_dir == "/srv/ws/run1"
    assert [(d["Count"], d["Capabilities"]) for d in op.device_requests] == [(2, [["gpu"]])]
    assert [(m["Source"], m["Target"], m["Type"]) for m in op.mounts] == [("/srv/ws", "/srv/ws", "bind")]
    assert set(op.environment) <= {*PASS_ENV, "AWS_DEFAULT_REGION"}
    assert not set(SECRETS) & set(op.environment) and not set(SECRETS.values()) & set(op.environment.values())
    assert op.environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert op.environment["TALBENCH_RUN_GROUP"] == "run1" and op.environment["AWS_DEFAULT_REGION"] == "eu-west-1"
    assert (op.image, op.docker_url, op.network_mode, op.shm_size) == ("talbench:latest", "unix://var/run/docker.sock", "talbench", "8g")
    assert (op.auto_remove, op.mount_tmp_dir) == ("success", False)


def test_docker_operator_without_gpus_requests_no_device():
    op = docker_operator("fetch", "/srv/ws/run1", "fetch@thumos14", 1, config(docker={"gpus": 0}).docker, env={})
    assert not op.device_requests
    assert op.command[-2:] == ["--try", "1"]


def test_a_relative_workspace_is_refused():
    with pytest.raises(ValueError, match="absolute"):
        docker_operator("fetch", "ws/run1", "fetch@thumos14", 1, config().docker, env={})


class FakeEngine:
    """The Docker API calls DockerOperator makes, answered as a daemon would for one container."""

    def __init__(self, status: int, output: list[bytes]):
        self.status, self.output, self.calls = status, output, {}

    def __getattr__(self, name):
        answers = {"images": [{"Id": "sha256:1"}], "create_container": {"Id": "c1"}, "attach": iter(self.output),
                   "wait": {"StatusCode": self.status, "Error": None}}

        def call(*args, **kwargs):
            self.calls[name] = kwargs
            return kwargs if name == "create_host_config" else answers.get(name)
        return call


@pytest.mark.parametrize(("status", "output", "raised", "message"), [
    (2, [b"fetching\n", ERROR.encode() + b"\n"], AirflowFailException, ERROR),
    (3, [b"no line\n"], AirflowFailException, "docker fetch@thumos14: exit 3 (the system refused)"),
    (1, [b"Traceback (most recent call last):\n"], StageFailed, "docker fetch@thumos14: exit 1"),
    (137, [], StageFailed, "docker fetch@thumos14: exit 137"),
])
def test_docker_exit_codes_map_to_airflow_failures(monkeypatch, status, output, raised, message):
    from airflow.providers.docker.operators.docker import DockerOperator

    engine = FakeEngine(status, output)
    monkeypatch.setattr(DockerOperator, "hook", property(lambda self: SimpleNamespace(api_client=engine)))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    with pytest.raises(raised) as caught:
        run_stage_in("docker", "/srv/ws/run1", "fetch@thumos14", try_number=1, context=context(), config=config(), emit=print)
    assert str(caught.value) == message
    created = engine.calls["create_container"]
    assert created["command"][2:] == ["talbench.runners", "stage", "/srv/ws/run1", "fetch@thumos14", "--try", "1"]
    assert created["working_dir"] == "/srv/ws/run1" and "AWS_SECRET_ACCESS_KEY" not in created["environment"]
    assert engine.calls["create_host_config"]["device_requests"][0]["Count"] == 1


def test_docker_success_returns_the_record(monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    engine = FakeEngine(0, [b"done\n"])
    monkeypatch.setattr(DockerOperator, "hook", property(lambda self: SimpleNamespace(api_client=engine)))
    lines: list[str] = []
    record = run_stage_in("docker", "/srv/ws/run1", "report", try_number=2, context=context("report"), config=config(), emit=lines.append)
    assert record == {"stage": "report", "reused": None}
    assert lines == ["docker: talbench:latest: $ cd /srv/ws/run1 && python -m talbench.runners stage /srv/ws/run1 report --try 2"]


def test_docker_exit_reads_the_providers_exception():
    from airflow.providers.docker.exceptions import DockerContainerFailedException

    result = {"StatusCode": 2, "Error": None}
    exc = DockerContainerFailedException(f"Docker container failed: {result!r}", logs=[b"a", ERROR])
    assert docker_exit(exc) == (2, ["a", ERROR])
    assert docker_exit(RuntimeError("engine unreachable")) == (None, [])


# ---------------------------------------------------------------- Kubernetes operator


K8S = {"gpus": 2, "namespace": "ml", "node_selector": {"nvidia.com/gpu.product": "H100"},
       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                       {"key": "pool", "value": "train"}],
       "workspaces": {"claim": "bench-ws", "mount_path": "/mnt/ws"}, "env_secret": "talbench-creds",
       "service_account": "talbench", "image": "registry.local/talbench:1", "image_pull_policy": "Always"}


def test_kubernetes_pod_runs_the_entry_point_with_gpus_placement_claim_and_secret(monkeypatch):
    from kubernetes.client import models as k8s

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    op = kubernetes_operator("train", "/mnt/ws/run1", "train@thumos14-i3d", 2, config(kubernetes=K8S).kubernetes)
    pod = op.build_pod_request_obj(dry_run=True)
    base = pod.spec.containers[0]
    assert base.args == ["python", "-m", "talbench.runners", "stage", "/mnt/ws/run1", "train@thumos14-i3d", "--try", "2"]
    assert not base.command and base.working_dir == "/mnt/ws/run1"
    assert base.resources.limits == base.resources.requests == {"nvidia.com/gpu": "2"}
    assert pod.spec.node_selector == {"nvidia.com/gpu.product": "H100"}
    assert pod.spec.tolerations == [
        k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"),
        k8s.V1Toleration(key="pool", operator="Equal", value="train"),
    ]
    [volume] = pod.spec.volumes
    assert volume.persistent_volume_claim.claim_name == "bench-ws"
    assert [(m.name, m.mount_path) for m in base.volume_mounts] == [(volume.name, "/mnt/ws")]
    assert [e.secret_ref.name for e in base.env_from] == ["talbench-creds"]
    assert {e.name for e in base.env} <= set(PASS_ENV)
    assert not set(SECRETS.values()) & {e.value for e in base.env}
    assert (pod.metadata.namespace, pod.spec.service_account_name, base.image, base.image_pull_policy) == (
        "ml", "talbench", "registry.local/talbench:1", "Always")
    assert (op.on_finish_action.value, op.get_logs) == ("delete_succeeded_pod", True)


def test_kubernetes_without_gpus_or_secret_asks_for_neither():
    op = kubernetes_operator("fetch", "/workspaces/run1", "fetch@thumos14", 1, config(kubernetes={"gpus": 0}).kubernetes, env={})
    base = op.build_pod_request_obj(dry_run=True).spec.containers[0]
    assert base.resources is None and base.env_from == []


@pytest.mark.parametrize("workspace", ["/srv/ws/run1", "/mnt/ws", "/mnt/ws/../etc/run1", "/mnt/wsx/run1", "mnt/ws/run1"])
def test_kubernetes_refuses_a_workspace_outside_the_claim(workspace):
    with pytest.raises(ValueError, match="mount_path|absolute"):
        kubernetes_operator("fetch", workspace, "fetch@thumos14", 1, config(kubernetes=K8S).kubernetes, env={})


def terminated_pod(code: int | None, message: str | None = None):
    from kubernetes.client import models as k8s

    state = k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(exit_code=code, message=message)) if code is not None \
        else k8s.V1ContainerState(running=k8s.V1ContainerStateRunning())
    phase = "Running" if code is None else "Succeeded" if code == 0 else "Failed"
    status = k8s.V1ContainerStatus(name="base", state=state, image="talbench:latest", image_id="", ready=False, restart_count=0)
    return k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="fetch-abc", namespace="default"),
                     spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base")]),
                     status=k8s.V1PodStatus(phase=phase, container_statuses=[status]))


def test_pod_exit_reads_the_base_containers_status():
    assert pod_exit(terminated_pod(3, f"fetching\n{ERROR}\n")) == (3, ["fetching", ERROR])
    assert pod_exit(terminated_pod(137)) == (137, [])
    assert pod_exit(terminated_pod(None)) == (None, [])
    assert pod_exit(None) == (None, [])


@pytest.mark.parametrize(("code", "message", "raised", "text"), [
    (2, f"fetching\n{ERROR}", AirflowFailException, ERROR),
    (3, None, AirflowFailException, "kubernetes fetch@thumos14: exit 3 (the system refused)"),
    (1, "Traceback", StageFailed, "kubernetes fetch@thumos14: exit 1"),
    (None, None, StageFailed, "kubernetes fetch@thumos14: the container did not run to an exit"),
])
def test_pod_exit_codes_map_to_airflow_failures(monkeypatch, code, message, raised, text):
    """The provider's own end of a run (cleanup: keep or delete the pod, raise on failure) on a finished pod."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    client = MagicMock()

    def execute(self, context):
        self.client, self.remote_pod = client, terminated_pod(code, message)
        if code is None:
            raise RuntimeError("pod did not start")
        self.cleanup(pod=self.remote_pod, remote_pod=self.remote_pod, context=context)

    monkeypatch.setattr(KubernetesPodOperator, "execute", execute)
    with pytest.raises(raised) as caught:
        run_stage_in("kubernetes", "/workspaces/run1", "fetch@thumos14", try_number=1, context=context(), config=config(), emit=print)
    assert str(caught.value) == text
    client.delete_namespaced_pod.assert_not_called()  # a failed pod is kept for inspection


def test_a_succeeded_pod_is_deleted_and_the_record_returned(monkeypatch):
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator

    client = MagicMock()

    def execute(self, context):
        self.client, self.remote_pod = client, terminated_pod(0)
        self.cleanup(pod=self.remote_pod, remote_pod=self.remote_pod, context=context)

    monkeypatch.setattr(KubernetesPodOperator, "execute", execute)
    record = run_stage_in("kubernetes", "/workspaces/run1", "report", try_number=1, context=context("report"), config=config(), emit=print)
    assert record == {"stage": "report", "reused": None}
    assert client.delete_namespaced_pod.call_args.args[:2] == ("fetch-abc", "default")


# ---------------------------------------------------------------- mapping and dispatch


def test_stage_failure_kinds():
    assert isinstance(stage_failure(2, ["x", ERROR, "after"], "docker s"), AirflowFailException)
    assert str(stage_failure(2, ["x", ERROR, "after"], "docker s")) == ERROR
    assert str(stage_failure(2, [], "docker s")) == "docker s: exit 2 (bad input)"
    assert isinstance(stage_failure(0, [ERROR], "kubernetes s"), StageFailed)  # the stage passed, the API failed after it
    assert isinstance(stage_failure(130, [ERROR], "docker s"), StageFailed)


def test_local_runner_is_orchestrations(workspace):
    with pytest.raises(AirflowFailException, match="no stage 'nope'"):
        run_stage_in("local", workspace, "nope", try_number=1, context=context(), config=config(), emit=print)


def test_an_unknown_runner_is_not_retried():
    with pytest.raises(AirflowFailException, match="unknown runner 'slurm'"):
        run_stage_in("slurm", "/srv/ws/run1", "fetch@thumos14", try_number=1, context=context(), config=config(), emit=print)


# ---------------------------------------------------------------- the entry point


def point_elsewhere(workspace: Path, tmp_path: Path) -> None:
    for name in ("components", "configs"):
        (tmp_path / "elsewhere" / name).mkdir(parents=True)
        (workspace / name).unlink()
        (workspace / name).symlink_to(tmp_path / "elsewhere" / name)


def test_link_project_repoints_wrong_links_and_leaves_right_ones(workspace, tmp_path):
    before = {name: os.lstat(workspace / name) for name in ("components", "configs")}
    link_project(workspace)
    assert {name: os.lstat(workspace / name).st_ino for name in before} == {n: s.st_ino for n, s in before.items()}
    point_elsewhere(workspace, tmp_path)
    (workspace / "configs").unlink()  # a missing link is made too
    link_project(workspace)
    assert (workspace / "components").resolve() == ROOT / "components"
    assert (workspace / "configs").resolve() == ROOT / "configs"
    assert not [p.name for p in workspace.iterdir() if p.name.startswith((".components", ".configs"))]


def test_link_project_refuses_a_folder_in_place_of_a_link(workspace):
    (workspace / "configs").unlink()
    (workspace / "configs").mkdir()
    with pytest.raises(InputError, match="expected a link"):
        link_project(workspace)


def test_entry_point_unknown_stage_exits_2_with_one_line_after_repointing_links(workspace, tmp_path):
    point_elsewhere(workspace, tmp_path)
    done = entry(workspace, "fetch@thumos", "--try", "1")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: ")
    assert "no stage 'fetch@thumos'" in done.stderr and "fetch@thumos14" in done.stderr
    assert (workspace / "components").resolve() == ROOT / "components"
    assert (workspace / "configs").resolve() == ROOT / "configs"


def test_entry_point_refuses_a_missing_workspace(tmp_path):
    done = subprocess.run([sys.executable, "-m", "talbench.runners", "stage", str(tmp_path / "none"), "fetch@thumos14"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("try_number", ["0", "two"])
def test_entry_point_refuses_a_bad_try_number(try_number, capsys):
    with pytest.raises(SystemExit) as caught:
        runners.main(["stage", "/srv/ws/run1", "fetch@thumos14", "--try", try_number])
    assert caught.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_entry_point_runs_the_stage(workspace):
    done = entry(workspace, "fetch@thumos14", "--try", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"$ cd {workspace} && {sys.executable} components/fetch.py thumos14 --params params.yaml"
    assert any(line.startswith("thumos14: synthetic archive") for line in lines)
    manifest = workspace / "data" / "synthetic" / "thumos14" / "MANIFEST.json"
    assert json.loads(manifest.read_text())


# ---------------------------------------------------------------- a deployment's own Docker facts (TALBENCH_DOCKER_*)


BOX = {"TALBENCH_DOCKER_IMAGE": "localhost/talbench:abc123", "TALBENCH_DOCKER_DOCKER_URL": "unix:///run/podman/podman.sock",
       "TALBENCH_DOCKER_GPUS": "0", "TALBENCH_DOCKER_NETWORK_MODE": "talbench_stack", "TALBENCH_DOCKER_SHM_SIZE": "",
       "TALBENCH_DOCKER_PASS_ENV": "[HF_HOME, OMP_NUM_THREADS]"}


def test_docker_variables_win_over_params_yaml_and_empty_ones_keep_it():
    params = config(docker={"image": "talbench:latest", "gpus": 2, "shm_size": "8g", "network_mode": "bridge"}).docker
    got = runners.docker_config(params, BOX)
    assert (got.image, got.docker_url, got.gpus, got.network_mode) == \
        ("localhost/talbench:abc123", "unix:///run/podman/podman.sock", 0, "talbench_stack")
    assert got.shm_size == "8g" and got.pass_env == ["HF_HOME", "OMP_NUM_THREADS"]
    assert runners.docker_config(params, {"TALBENCH_DOCKER_SHM_SIZE": "1024", "TALBENCH_DOCKER_NETWORK_MODE": "null"}).model_dump() \
        == {**params.model_dump(), "shm_size": 1024, "network_mode": None}
    assert runners.docker_config(params, {}) == params


def test_every_docker_field_has_its_variable():
    assert {runners.DOCKER_ENV_PREFIX + field.upper() for field in runners.DockerConfig.model_fields} == set(BOX)


@pytest.mark.parametrize(("name", "value", "field", "says"), [
    ("TALBENCH_DOCKER_GPUS", "-1", "gpus", "an integer >= 0, got -1"),
    ("TALBENCH_DOCKER_GPUS", "all", "gpus", "an integer >= 0, got 'all'"),
    ("TALBENCH_DOCKER_SHM_SIZE", "8x", "shm_size", "'8g'"),
    ("TALBENCH_DOCKER_PASS_ENV", "AWS KEY", "pass_env", "a list of environment variable names"),
    ("TALBENCH_DOCKER_PASS_ENV", "[HF_HOME", "pass_env", "not a YAML value"),
])
def test_a_bad_docker_variable_names_itself_and_the_field(name, value, field, says):
    with pytest.raises(InputError) as caught:
        runners.docker_config(config().docker, {name: value})
    assert (caught.value.path, caught.value.item, caught.value.field) == (name, value, field)
    assert says in caught.value.problem and "\n" not in str(caught.value)


def test_a_bad_docker_variable_fails_the_task_at_once(monkeypatch):
    monkeypatch.setenv("TALBENCH_DOCKER_GPUS", "two")
    with pytest.raises(AirflowFailException) as caught:
        run_stage_in("docker", "/srv/ws/run1", "fetch@thumos14", try_number=1, context=context(), config=config(), emit=print)
    assert str(caught.value).startswith("error: TALBENCH_DOCKER_GPUS: two: field 'gpus': expected an integer >= 0")


def test_docker_variables_reach_the_container_the_engine_creates(monkeypatch):
    from airflow.providers.docker.operators.docker import DockerOperator

    engine = FakeEngine(0, [b"done\n"])
    monkeypatch.setattr(DockerOperator, "hook", property(lambda self: SimpleNamespace(api_client=engine)))
    for name, value in BOX.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lines: list[str] = []
    run_stage_in("docker", "/srv/ws/run1", "report", try_number=1, context=context("report"), config=config(), emit=lines.append)
    created, host = engine.calls["create_container"], engine.calls["create_host_config"]
    assert created["image"] == "localhost/talbench:abc123" and created["environment"]["OMP_NUM_THREADS"] == "1"
    assert host["network_mode"] == "talbench_stack" and not host["device_requests"]
    assert lines[0].startswith("docker: localhost/talbench:abc123: ")
