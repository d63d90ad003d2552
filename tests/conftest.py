"""Shared fixtures. The toy scene builder lives in fixtures/toy.py so tests can call it with arguments."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.toy import ToyScene, make_toy_scene

# pristine / data / finished: the tiny dataset and one finished evaluate.py run (fixtures/tiny_runs.py).
pytest_plugins = ["fixtures.tiny_runs"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def toy_scene(tmp_path: Path) -> ToyScene:
    return make_toy_scene(tmp_path)


@pytest.fixture
def strecha_root() -> Path:
    root = SHARED / "data" / "strecha"
    if not root.is_dir():
        pytest.skip(f"shared Strecha data not found at {root}")
    return root
