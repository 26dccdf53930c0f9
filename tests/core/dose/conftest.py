"""Dose tests run torch on one thread: on the shared 2-core CI machine, torch's two-thread
ops wait on each other's scheduler slices and run several times slower (measured: TG-119
5 mm dose-influence matrix 9 s on one thread vs. 71 s on two under load 4)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
