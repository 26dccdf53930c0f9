"""DVH endpoints against an analytic dose gradient, and the OpenKBP conventions."""

import numpy as np
import pytest

from core.evaluation.dvh import (ENDPOINT_KEYS, cumulative_dvh, dose_at_volume_cc, dose_at_volume_pct,
                                 dvh_endpoints, volume_at_dose_cc, volume_at_dose_pct)
from core.geometry import Grid

# A 100-slice box, 10 x 10 voxels of 2 mm per slice (0.8 cc a slice, 80 cc in all), dose
# rising linearly along axis 0: slice i gets (i + 0.5) * 0.7 Gy, i.e. the dose is uniformly
# distributed over 0..70 Gy. Analytic: Dx = 70 (1 - x/100) Gy, D(v cc) = 70 (1 - v/80) Gy,
# mean 35 Gy, V(d) = 100 (1 - d/70) %. Discretisation: every voxel of a slice carries the
# slice-centre dose, so a dose quantile is off by at most half a slice step (0.35 Gy) and
# a volume by at most one slice (1 %).
N, STEP = 100, 0.7
GRID = Grid((N + 4, 12, 12), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
HALF_STEP = STEP / 2 + 1e-9
MASK = np.zeros(GRID.shape, bool)
MASK[2:2 + N, 1:11, 1:11] = True
DOSE = np.zeros(GRID.shape, np.float32)
DOSE[2:2 + N] = ((np.arange(N) + 0.5) * STEP)[:, None, None]
DOSE[:2] = 500.0      # outside the structure: must not leak into its DVH


def analytic_dx(x):
    return 70.0 * (1 - x / 100.0)


def test_endpoints_match_the_linear_gradient():
    warnings = []
    ep = dvh_endpoints(DOSE, MASK, GRID, warnings=warnings, name="box")
    assert tuple(ep) == ENDPOINT_KEYS
    assert warnings == []
    assert ep["volume_cc"] == pytest.approx(80.0)
    assert ep["mean"] == pytest.approx(35.0, abs=1e-4)
    assert ep["max"] == pytest.approx(70.0 - STEP / 2, abs=1e-4)
    assert ep["min"] == pytest.approx(STEP / 2, abs=1e-4)
    for x in (1, 2, 5, 50, 95, 98, 99):
        assert abs(ep[f"D{x}"] - analytic_dx(x)) <= HALF_STEP, x
    for v in (0.03, 0.1):
        assert abs(ep[f"D{v}cc"] - 70.0 * (1 - v / 80.0)) <= HALF_STEP, v


def test_volume_at_dose_and_cumulative_dvh():
    vals = DOSE[MASK]
    for d in (10.0, 35.0, 35.1, 62.3):
        assert abs(volume_at_dose_pct(vals, d) - 100 * (1 - d / 70)) <= 1.0 + 1e-9
        assert abs(volume_at_dose_cc(vals, d, GRID.voxel_volume_cc) - 80 * (1 - d / 70)) <= 0.8 + 1e-9
    bins, vcc, vpct = cumulative_dvh(DOSE, MASK, GRID, bin_gy=0.05)
    assert bins[0] == 0 and vcc[0] == pytest.approx(80.0) and vpct[0] == pytest.approx(100.0)
    assert np.all(np.diff(vcc) <= 0) and vcc[-1] == 0 and bins[-1] > DOSE[MASK].max()
    assert np.all(np.abs(vpct - np.clip(100 * (1 - bins / 70), 0, 100)) <= 1.0 + 1e-9)
    # a voxel exactly at a bin edge counts as receiving that dose
    b2, v2, _ = cumulative_dvh(np.full((2, 2, 2), 2.0), np.ones((2, 2, 2), bool), Grid((2, 2, 2), (1, 1, 1), (0, 0, 0)),
                               bin_gy=0.5)
    assert v2[list(b2).index(2.0)] == pytest.approx(8e-3)


def test_openkbp_percentile_convention():
    # the outside check recomputes endpoints with OpenKBP's formulas; they must agree exactly
    rng = np.random.default_rng(3)
    vals = rng.gamma(5.0, 10.0, size=777)
    voxel_cc = 3.906 * 3.906 * 2.5 / 1000
    for x in (1, 2, 5, 50, 95, 98, 99):
        assert dose_at_volume_pct(vals, x) == np.percentile(vals, 100 - x)
    n_v = max(1, round(0.1 / voxel_cc))      # 3 voxels on OpenKBP's 3.906 x 3.906 x 2.5 mm grid
    assert n_v == 3
    assert dose_at_volume_cc(vals, 0.1, voxel_cc) == np.percentile(vals, 100 - 100 * n_v / vals.size)
    # Dx% is the minimum dose to the hottest x %: 10 values 1..10, D10 -> between 9 and 10
    assert dose_at_volume_pct(np.arange(1.0, 11.0), 10) == pytest.approx(9.1)


def test_edge_cases():
    grid = Grid((4, 4, 4), (2.0, 2.0, 2.0), (0, 0, 0))     # 0.008 cc voxels: 0.1 cc = 12 voxels
    dose = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    warnings = []
    empty = dvh_endpoints(dose, np.zeros((4, 4, 4), bool), grid, warnings=warnings, name="E")
    assert empty["volume_cc"] == 0 and all(np.isnan(empty[k]) for k in ENDPOINT_KEYS[1:])
    assert "'E' is empty" in warnings[0]
    tiny = np.zeros((4, 4, 4), bool)
    tiny[0, 0, :2] = True                                    # 2 voxels = 0.016 cc < 0.1 cc
    ep = dvh_endpoints(dose, tiny, grid, warnings=warnings, name="T")
    assert ep["D0.1cc"] == ep["max"] == 1.0
    assert "'T' is smaller than 0.1 cc" in warnings[1]
    with pytest.raises(Exception):
        dose_at_volume_pct([1.0], 120)
