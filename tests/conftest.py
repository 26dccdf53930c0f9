"""Shared test fixtures: paths to the shared data, small synthetic phantoms."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OPENKBP = SHARED / "data" / "openkbp"
TG119 = SHARED / "data" / "tg119"
DEMO_CASE = REPO / "resources" / "demo" / "pt_demo.npz"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"test data missing: {path} (CI provides ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def openkbp_dir() -> Path:
    return _need(OPENKBP)


@pytest.fixture(scope="session")
def tg119_dir() -> Path:
    return _need(TG119)


@pytest.fixture(scope="session")
def demo_case() -> Path:
    return _need(DEMO_CASE)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Torch on one thread for the whole suite: on the shared 2-core CI machine two torch
    threads wait on each other's scheduler slices and run several times slower (measured:
    TG-119 5 mm dose-influence matrix 9 s on one thread vs. 71 s on two under load 4)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
