from __future__ import annotations

from pathlib import Path

import pytest

from talbench.data.registry import Registry, load_registry

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry(ROOT / "params.yaml")
