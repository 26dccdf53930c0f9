"""The toy C-shape problem (``toy.py``) as a fixture: (grid, masks, dose-influence matrix)."""

from __future__ import annotations

import warnings

import pytest

from tests.core.optimization.toy import c_shape, toy_dij


@pytest.fixture(scope="module")
def toy():
    grid, masks = c_shape(40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dij = toy_dij(grid, masks["Body"])
    return grid, masks, dij
