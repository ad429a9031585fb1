"""Where a stage runs: on the Airflow worker (`local`), in a Docker container or in a Kubernetes pod.

The command is the same in each. `local` is `talbench.orchestration.run_stage`; a container runs

    python -m talbench.runners stage WORKSPACE NAME [--try N]

which points the workspace's `components`/`configs` links at the image's project and then calls
that same `run_stage`. Its exit status: 0 done; the stage's own 2 (bad input, or no such stage) or 3
(the system refused), with one `error:` line; 3 also when the links cannot be re-pointed; 1
anything a retry may fix. The outer task maps a container's 2 or 3
to AirflowFailException (no retry) and anything else to StageFailed (retried).

Workspaces are shared by path: the Docker runner bind-mounts the workspaces root at the same path,
the Kubernetes runner mounts a persistent volume claim that must hold the workspace at the path the
worker sees. A container gets only the environment variables of PASS_ENV (and the configured
names), never the worker's whole environment; Kubernetes credentials come from a secret by name.

Light to import (the DAG file imports it at parse time): the Airflow providers, docker and
kubernetes are imported by the functions that need them.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, model_validator

from talbench.errors import InputError, exit_status
from talbench.orchestration import (LINKED, PROJECT, REFUSED, StageFailed, fail_exception, refused_as_failure, run_stage,
                                   stage_env)
from talbench.schema import TOP_LEVEL, Natural, Problem, Strict, Text, check

if TYPE_CHECKING:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from airflow.providers.docker.operators.docker import DockerOperator

RUNNERS = ("local", "docker", "kubernetes")
DEFAULT_IMAGE = "talbench:latest"


def default_runner(env: Mapping[str, str] | None = None) -> str:
    """The deployment's runner, TALBENCH_RUNNER (default local): what a DAG run uses unless its trigger says otherwise."""
    runner = (os.environ if env is None else env).get("TALBENCH_RUNNER", "local")
    if runner not in RUNNERS:
        raise ValueError(f"TALBENCH_RUNNER={runner!r}: expected one of {', '.join(RUNNERS)}")
    return runner


# What a stage needs from the worker's environment (see orchestration.stage_env); nothing else crosses.
PASS_ENV = ("MLFLOW_TRACKING_URI", "TALBENCH_MLFLOW_UI_URL", "TALBENCH_RUN_GROUP", "PYTHONUNBUFFERED", "DVC_NO_ANALYTICS", "GX_ANALYTICS_ENABLED")
VOLUME = "workspaces"  # the pod's name for the workspaces claim

# ---------------------------------------------------------------- configuration (params.yaml `runners:`)

Image = Annotated[str, Field(min_length=1, description="a container image, e.g. talbench:latest")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="an environment variable name")]
K8sName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
                               description="a Kubernetes name (lower-case letters, digits, '-' and '.')")]
AbsolutePath = Annotated[str, Field(pattern=r"^/", description="an absolute path")]
ShmSize = Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=r"^[1-9][0-9]*([kmgKMG][bB]?|[bB])?$")]


class DockerConfig(Strict):
    image: Image = DEFAULT_IMAGE
    docker_url: Text = "unix://var/run/docker.sock"
    gpus: Natural = 1
    network_mode: Annotated[str | None, Field(description="a Docker network mode (bridge, host, a network's name) or null")] = None
    shm_size: Annotated[ShmSize | None, Field(description="bytes (an integer >= 1), a size such as '8g', or null")] = None
    pass_env: Annotated[list[EnvName], Field(description="a list of environment variable names")] = []


DOCKER_ENV_PREFIX = "TALBENCH_DOCKER_"  # + a DockerConfig field's name in capitals: TALBENCH_DOCKER_GPUS


def docker_config(config: DockerConfig, env: Mapping[str, str] | None = None) -> DockerConfig:
    """`config` (params.yaml's runners.docker) with the worker's TALBENCH_DOCKER_<FIELD> variables
    over it: a deployment sets the facts of its own box (image tag, network, GPUs, engine socket)
    without editing params.yaml. Each value is YAML, as params.yaml would spell it
    (TALBENCH_DOCKER_GPUS=0, TALBENCH_DOCKER_PASS_ENV='[HF_TOKEN]'); unset or empty: params.yaml's.
    A bad value is one InputError naming the variable and the field."""
    import yaml

    env = os.environ if env is None else env
    values = config.model_dump()
    for field in DockerConfig.model_fields:
        name = DOCKER_ENV_PREFIX + field.upper()
        if not env.get(name):
            continue
        try:
            values[field] = yaml.safe_load(env[name])
            check(DockerConfig, values, name)
        except yaml.YAMLError as exc:
            raise InputError(name, env[name], field, f"not a YAML value ({exc.problem})") from None
        except InputError as exc:
            raise InputError(name, env[name], exc.field, exc.problem) from None
    return DockerConfig.model_validate(values)


class Toleration(Strict):
    key: Annotated[str | None, Field(description="a taint key, or null (with operator Exists: every taint)")] = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: Annotated[str | None, Field(description="a string, or null")] = None
    effect: Annotated[Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None,
                      Field(description="NoSchedule, PreferNoSchedule, NoExecute or null (all effects)")] = None

    @model_validator(mode="after")
    def _valid(self) -> Toleration:  # what the API server would refuse at pod creation
        if self.operator == "Exists" and self.value is not None:
            raise Problem("value", f"expected null with operator Exists, got {self.value!r}")
        if self.key is None and self.operator != "Exists":
            raise Problem("operator", "expected Exists when key is null (a toleration of every taint)")
        return self


class WorkspacesClaim(Strict):
    claim: K8sName = "talbench-workspaces"
    mount_path: AbsolutePath = "/workspaces"  # where the worker sees the workspaces too (TALBENCH_WORKSPACES)


GPU_KINDS = ("train", "evaluate")  # the stages that run a model: only their pods ask for GPUs
TEMPLATE_CONTAINER = "base"  # the provider's name for the step's container, merged with the template's by name
# What a pod template must leave to runners.kubernetes (one home each): where in the template, the setting
_SET_BY_PARAMS = {("spec", "nodeSelector"): "node_selector", ("spec", "tolerations"): "tolerations",
                  ("spec", "serviceAccountName"): "service_account", ("spec.containers.base", "image"): "image",
                  ("spec.containers.base", "imagePullPolicy"): "image_pull_policy"}
_SET_PER_STAGE = ("command", "args", "workingDir")  # the stage's entry point, in its workspace


class KubernetesConfig(Strict):
    image: Image = DEFAULT_IMAGE
    namespace: Annotated[K8sName | None, Field(description="a namespace, or null (the worker's own, in a cluster)")] = None
    gpus: Natural = 1
    node_selector: Annotated[dict[str, str], Field(description="a mapping of node label to value")] = {}
    tolerations: Annotated[list[Toleration], Field(description="a list of {key, operator, value, effect}")] = []
    workspaces: WorkspacesClaim = Field(default_factory=WorkspacesClaim)
    service_account: Annotated[K8sName | None, Field(description="a service account name, or null")] = None
    env_secret: Annotated[K8sName | None, Field(description="the name of a secret whose keys become environment variables, or null")] = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    # read when a step's pod is made, not with params.yaml: other runners' images need not hold the file
    pod_template: Annotated[str | None, Field(min_length=1, description="a pod template file (relative to the project, or absolute), or null")] = None

    def template(self) -> dict[str, Any] | None:
        """The pod template every step's pod starts from (a v1 Pod as a mapping), or None; InputError naming the file."""
        return None if self.pod_template is None else load_pod_template(PROJECT / self.pod_template)


def load_pod_template(path: Path) -> dict[str, Any]:
    """A pod template file, checked: one container `base`, nothing that runners.kubernetes or the stage sets."""
    import yaml

    try:
        pod = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(path, "-", "pod_template", f"cannot read it as YAML ({getattr(exc, 'strerror', None) or exc})") from None
    if not isinstance(pod, dict) or (pod.get("apiVersion"), pod.get("kind")) != ("v1", "Pod"):
        raise InputError(path, TOP_LEVEL, "kind", "expected a pod template: apiVersion v1, kind Pod")
    spec = pod.get("spec") if isinstance(pod.get("spec"), dict) else {}
    containers = spec.get("containers") if isinstance(spec.get("containers"), list) else []
    if [c.get("name") if isinstance(c, dict) else c for c in containers] != [TEMPLATE_CONTAINER]:
        raise InputError(path, "spec", "containers", f"expected one container named {TEMPLATE_CONTAINER} (the step's)")
    places = {"spec": spec, "spec.containers.base": containers[0]}
    for (item, field), setting in _SET_BY_PARAMS.items():
        if field in places[item]:
            raise InputError(path, item, field, f"set by params.yaml runners.kubernetes.{setting}: remove it here")
    for field in _SET_PER_STAGE:
        if field in containers[0]:
            raise InputError(path, "spec.containers.base", field, "set per stage by the runner: remove it here")
    resources = containers[0].get("resources") or {}
    if any("nvidia.com/gpu" in (resources.get(kind) or {}) for kind in ("limits", "requests")):
        raise InputError(path, "spec.containers.base.resources", "nvidia.com/gpu", "set by params.yaml runners.kubernetes.gpus: remove it here")
    if any(isinstance(v, dict) and v.get("name") == VOLUME for v in spec.get("volumes") or []):
        raise InputError(path, "spec.volumes", VOLUME, "the workspaces claim is runners.kubernetes.workspaces: use another name")
    return pod


class RunnersConfig(Strict):
    docker: DockerConfig = Field(default_factory=DockerConfig)
    kubernetes: KubernetesConfig = Field(default_factory=KubernetesConfig)


class _RunnersSection(Strict):  # so that a failure names `runners.<section>` as params.yaml spells it
    runners: RunnersConfig = Field(default_factory=RunnersConfig)


def runners_config(params: Mapping[str, Any], path: str | Path = "params.yaml") -> RunnersConfig:
    """params.yaml's `runners:` (defaults where it is absent); a bad value is one InputError naming the field."""
    section = {"runners": params["runners"]} if params.get("runners") is not None else {}
    check(_RunnersSection, section, path)
    return _RunnersSection.model_validate(section).runners


# ---------------------------------------------------------------- the entry point inside a container


def entry_argv(workspace: str | Path, name: str, try_number: int) -> list[str]:
    """The container's command for one stage: this module's `stage` entry point, by the image's python."""
    return ["python", "-m", "talbench.runners", "stage", str(workspace), name, "--try", str(try_number)]


def link_project(workspace: Path, project: Path = PROJECT) -> None:
    """Point the workspace's `components`/`configs` links at `project`'s folders (this interpreter's:
    in an image the project lives elsewhere than on the host that made the workspace). A link is
    replaced by renaming a new one over it, so a task running beside this one never finds it missing."""
    if not workspace.is_dir():
        raise InputError(workspace, "-", "workspace", "not a folder")
    for name in LINKED:
        link, target = workspace / name, (project / name).resolve()
        if not target.is_dir():
            raise InputError(target, "-", name, "missing: this interpreter's talbench does not come with its project folders")
        if link.is_symlink() and link.resolve() == target:
            continue
        if link.exists() and not link.is_symlink():
            raise InputError(link, "-", name, f"expected a link to {target}, found a {'folder' if link.is_dir() else 'file'}")
        temp = workspace / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
        temp.symlink_to(target, target_is_directory=True)
        try:
            os.replace(temp, link)
        finally:
            temp.unlink(missing_ok=True)  # gone after the rename; left only if the rename failed


def run_entry(workspace: Path, name: str, try_number: int = 1) -> int:
    """Run the stage as the local runner does; the exit status the outer task reads (see the module doc)."""
    last_error = ""

    def emit(line: str) -> None:  # streamed to the container's log line by line
        nonlocal last_error
        print(line, flush=True)
        if line.startswith("error:"):
            last_error = line

    def body() -> None:
        link_project(workspace)
        run_stage(workspace, name, try_number=try_number, emit=emit)

    try:
        return exit_status(body)
    except StageFailed as exc:
        print(f"talbench.runners: {exc}", file=sys.stderr, flush=True)
        return 1
    except fail_exception() as exc:  # Airflow's AirflowFailException, or the stand-in where Airflow is not installed
        if str(exc) != last_error:  # the stage's own error line is in the log already
            print(f"error: {exc}", file=sys.stderr, flush=True)
        return getattr(exc, "returncode", 2)


def _try_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m talbench.runners", description="talbench's command inside a container")
    commands = parser.add_subparsers(dest="command", required=True)
    stage = commands.add_parser("stage", help="run one stage of the workspace's dvc.snapshot.yaml as the local runner does")
    stage.add_argument("workspace", type=Path, help="the run's workspace (an absolute path, the same as on the worker)")
    stage.add_argument("name", help="the stage, e.g. train@thumos14-i3d")
    stage.add_argument("--try", dest="try_number", type=_try_number, default=1, help="Airflow's try number: above 1 a train stage resumes")
    args = parser.parse_args(argv)
    return run_entry(args.workspace.absolute(), args.name, args.try_number)


# ---------------------------------------------------------------- operators


def container_env(workspace: str | Path, env: Mapping[str, str] | None = None, names: Sequence[str] = ()) -> dict[str, str]:
    """The stage's environment (orchestration.stage_env of the worker's) narrowed to PASS_ENV and `names`."""
    full = stage_env(Path(workspace), env)
    return {key: full[key] for key in dict.fromkeys((*PASS_ENV, *names)) if key in full}


def docker_operator(task_id: str, workspace: str | Path, name: str, try_number: int, config: DockerConfig,
                    env: Mapping[str, str] | None = None) -> DockerOperator:
    """A DockerOperator that runs the stage's entry point with the workspaces root mounted at the same path."""
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    workspace = _absolute(workspace)
    root = str(workspace.parent)  # prepare makes every workspace in the root; the stage cache lives there too
    return DockerOperator(
        task_id=task_id,
        image=config.image,
        docker_url=config.docker_url,
        command=entry_argv(workspace, name, try_number),
        working_dir=str(workspace),
        environment=container_env(workspace, env, config.pass_env),
        mounts=[Mount(target=root, source=root, type="bind")],
        device_requests=[DeviceRequest(count=config.gpus, capabilities=[["gpu"]])] if config.gpus else None,
        network_mode=config.network_mode,
        shm_size=config.shm_size,
        auto_remove="success",
        mount_tmp_dir=False,  # the stage writes only to its workspace; a temporary host folder is not needed
    )


def kubernetes_operator(task_id: str, workspace: str | Path, name: str, try_number: int, config: KubernetesConfig,
                        env: Mapping[str, str] | None = None) -> KubernetesPodOperator:
    """A KubernetesPodOperator that runs the stage's entry point in a pod with the workspaces claim mounted:
    runners.kubernetes.pod_template's pod plus the stage's command, image, GPUs (train and evaluate
    only), placement, claim and secret."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    workspace = _inside(workspace, config.workspaces.mount_path)
    with refused_as_failure():  # a bad template: one line, no retry
        template = config.template()
    secret = config.env_secret
    return KubernetesPodOperator(
        task_id=task_id,
        namespace=config.namespace,
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        arguments=entry_argv(workspace, name, try_number),  # args, like Docker's command: the image's entrypoint stays
        pod_template_dict=template,
        # the operator has no working-dir argument: the base container of a pod template carries it
        full_pod_spec=k8s.V1Pod(spec=k8s.V1PodSpec(containers=[k8s.V1Container(name=TEMPLATE_CONTAINER, working_dir=str(workspace))])),
        env_vars=container_env(workspace, env),
        env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret))] if secret else None,
        container_resources=_resources(template, config.gpus if name.partition("@")[0] in GPU_KINDS else 0),
        node_selector=dict(config.node_selector) or None,
        tolerations=[k8s.V1Toleration(**t.model_dump()) for t in config.tolerations] or None,
        volumes=[k8s.V1Volume(name=VOLUME, persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(
            claim_name=config.workspaces.claim))],
        volume_mounts=[k8s.V1VolumeMount(name=VOLUME, mount_path=config.workspaces.mount_path)],
        service_account_name=config.service_account,
        on_finish_action="delete_succeeded_pod",  # a failed pod stays for `kubectl describe`
        get_logs=True,
        termination_message_policy="FallbackToLogsOnError",  # the log's tail, with the error line, in the pod's status
        log_pod_spec_on_failure=False,  # the spec holds the environment's values
    )


def _resources(template: dict[str, Any] | None, gpus: int) -> Any:
    """The template's container resources with `gpus` GPUs added: the operator's resources replace the
    template's whole, so they are merged here."""
    from kubernetes.client import models as k8s

    resources = ((template or {}).get("spec", {}).get("containers") or [{}])[0].get("resources") or {}
    gpu = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    limits, requests = {**(resources.get("limits") or {}), **gpu}, {**(resources.get("requests") or {}), **gpu}
    return k8s.V1ResourceRequirements(limits=limits or None, requests=requests or None) if limits or requests else None


def _absolute(workspace: str | Path) -> Path:
    path = PurePosixPath(os.path.normpath(workspace))
    if not path.is_absolute():
        raise ValueError(f"workspace {workspace}: expected an absolute path, the same on the worker and in the container")
    return Path(path)


def _inside(workspace: str | Path, mount_path: str) -> Path:
    """The workspace, which must be below the claim's mount path (its parent holds the stage cache)."""
    path = _absolute(workspace)
    if not path.parent.is_relative_to(os.path.normpath(mount_path)):
        raise ValueError(f"workspace {workspace} is not under runners.kubernetes.workspaces.mount_path "
                         f"({mount_path}): the pod would not see it; set TALBENCH_WORKSPACES on the worker inside that mount")
    return path


# ---------------------------------------------------------------- dispatch and exit codes


def docker_exit(exc: BaseException) -> tuple[int | None, list[str]]:
    """The container's exit code and output lines from DockerOperator's failure; (None, []) if it did not exit."""
    from airflow.providers.docker.exceptions import DockerContainerFailedException
    from airflow.providers.docker.operators.docker import stringify

    if not isinstance(exc, DockerContainerFailedException):
        return None, []
    # the provider's message holds the engine's wait() result: "Docker container failed: {'StatusCode': 2, ...}"
    found = re.search(r"'StatusCode': (-?\d+)", str(exc))
    return (int(found[1]) if found else None), [stringify(line) for line in exc.logs or []]


def pod_exit(pod: Any, container: str = "base") -> tuple[int | None, list[str]]:
    """The container's exit code and termination message lines from a pod's status; (None, []) if it did not exit."""
    from airflow.providers.cncf.kubernetes.utils.container import get_container_status

    status = get_container_status(pod, container)
    terminated = status.state.terminated if status is not None and status.state is not None else None
    if terminated is None:
        return None, []
    return terminated.exit_code, (terminated.message or "").splitlines()


def stage_failure(code: int | None, lines: Sequence[str], what: str) -> Exception:
    """Exit 2 or 3: AirflowFailException with the stage's error line (no retry); else StageFailed (retried)."""
    from airflow.sdk.exceptions import AirflowFailException

    if code in REFUSED:
        error = next((line for line in reversed(lines) if line.startswith("error:")), None)
        return AirflowFailException(error or f"{what}: exit {code} ({REFUSED[code]})")
    return StageFailed(f"{what}: {'exit ' + str(code) if code is not None else 'the container did not run to an exit'}")


def run_stage_in(runner: str, workspace: str | Path, name: str, *, try_number: int, context: Mapping[str, Any],
                 config: RunnersConfig, emit: Callable[[str], None] = print, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run the stage with `runner` from inside an Airflow task; the record for XCom ({"stage", "reused"}).

    `tracking_uri`: where the stage tracks when MLFLOW_TRACKING_URI is unset (orchestration.stage_env)."""
    if runner == "local":
        return run_stage(workspace, name, try_number=try_number, emit=emit, tracking_uri=tracking_uri)
    if runner not in RUNNERS:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"unknown runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    docker = runner == "docker"
    build = docker_operator if docker else kubernetes_operator
    env = stage_env(Path(workspace), tracking_uri=tracking_uri)
    with refused_as_failure():  # a bad TALBENCH_DOCKER_* value: one line, no retry
        section = docker_config(config.docker) if docker else config.kubernetes
    operator = build(context["ti"].task_id, workspace, name, try_number, section, env)
    emit(f"{runner}: {operator.image}: $ cd {workspace} && {shlex.join(entry_argv(workspace, name, try_number))}")
    try:
        operator.execute(context)  # streams the container's log into the task's
    except Exception as exc:
        code, lines = docker_exit(exc) if docker else pod_exit(operator.remote_pod)  # type: ignore[union-attr]
        raise stage_failure(code, lines, f"{runner} {name}") from exc
    return {"stage": name, "reused": None}  # whether the container reused cached outputs is in its log



def run_task_stage(context: Mapping[str, Any], workspace: str | Path, name: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """What a DAG's stage task does: run the stage with the DAG run's runner (its Param `runner`),
    configured by the workspace's params.yaml (`runners:`)."""
    from talbench.io import read_yaml_mapping

    params_file = Path(workspace) / "params.yaml"
    config = runners_config(read_yaml_mapping(params_file), params_file)
    return run_stage_in(context["params"]["runner"], workspace, name, try_number=context["ti"].try_number,
                        context=context, config=config, tracking_uri=tracking_uri)


if __name__ == "__main__":
    sys.exit(main())
