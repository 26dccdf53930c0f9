"""Fixtures shared by the prediction tests."""

from __future__ import annotations

import pytest

from .synth import write_case


@pytest.fixture(scope="module")
def four_case_cache(tmp_path_factory):
    """A compact training cache of four small synthetic OpenKBP cases (seeds 1-4)."""
    from core.prediction.cache import build_cache

    d = tmp_path_factory.mktemp("okbp_four")
    (d / "train").mkdir()
    for s in (1, 2, 3, 4):
        write_case(d / "train" / f"pt_{s}.npz", shape=(28, 28, 24), seed=s)
    build_cache(d / "train", d / "tr.npz")
    return d / "tr.npz"
