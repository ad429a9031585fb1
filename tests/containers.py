"""What the container tests share: podman's environment and the project image.

The image is built at most once per test session, and not at all when an image with the current
tree's input hash exists (infra/docker/build.py labels it). Without a working podman a test skips
with the reason, or FAILS where TALBENCH_REQUIRE_CONTAINERS=1 (CI sets it): never silently.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRE = "TALBENCH_REQUIRE_CONTAINERS"
TEST_IMAGE = "localhost/talbench-test:cpu"  # not the user's localhost/talbench:latest, which may be the GPU build


@functools.cache
def image_build() -> ModuleType:
    """infra/docker/build.py as a module (it is a script, not part of the talbench package)."""
    spec = importlib.util.spec_from_file_location("talbench_image_build", ROOT / "infra/docker/build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def podman_env() -> dict[str, str]:
    return image_build().podman_env()


@functools.cache
def _podman_problem() -> str | None:
    try:
        done = subprocess.run(["podman", "info", "--format", "{{.Store.GraphDriverName}}"], env=podman_env(),
                              capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        return "podman is not installed (apt-get install podman runc debootstrap)"
    if done.returncode != 0:
        return f"podman info failed: {(done.stderr.strip().splitlines() or ['exit ' + str(done.returncode)])[-1]}"
    return None


def require_podman() -> None:
    """Skip (or fail, where containers are required) when podman cannot run containers here."""
    problem = _podman_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{REQUIRE}=1 but {problem}")
    pytest.skip(problem)


def project_image() -> str:
    """The project image (CPU base) of the current tree, built here if not already built."""
    require_podman()
    tag, problem = _built()
    if problem:
        pytest.fail(f"building {TEST_IMAGE}: {problem}")
    return tag


@functools.cache
def _built() -> tuple[str, str | None]:
    """One build a session: a failed one is not tried again by every test."""
    build = image_build()
    try:
        return build.build(TEST_IMAGE, cpu=True), None
    except build.BuildError as exc:
        return TEST_IMAGE, str(exc)


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run podman with the project's settings; output captured, never raises on a non-zero exit."""
    return subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout)
