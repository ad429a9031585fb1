from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from talbench.data.archive import safe_extract
from talbench.data.registry import Registry, load_registry
from talbench.data.synthetic import write_twin

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def thumos_project(registry: Registry) -> Callable[[Path, str, dict[str, Any], list[int]], Path]:
    """make(root, experiment, overrides, seeds): a project folder at `root`, the THUMOS twin (ci) where
    the fetch stage puts it and params.yaml holding only `experiment` (with `overrides`, trained with `seeds`)."""
    return lambda root, experiment, overrides, seeds: _thumos_project(root, registry, experiment, overrides, seeds)


def _thumos_project(root: Path, registry: Registry, experiment: str, overrides: dict[str, Any], seeds: list[int]) -> Path:
    data = root / "data" / "synthetic"
    safe_extract(write_twin(registry.dataset("thumos14"), "ci", 0, data / "archives").archive, data / "thumos14")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    entry = params["experiments"][experiment] | {"config": str(ROOT / "configs/ci/thumos_i3d.yaml"), "overrides": overrides}
    params["experiments"] = {experiment: entry}
    params["pipeline"] |= {"datasets": ["thumos14"], "seeds": seeds}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root
