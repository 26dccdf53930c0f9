"""Conformity control: the fall-off limits outside targets, the homogeneity limits inside
them (with a simultaneous boost), helper rings, and that the shape terms do what they are
for on the toy C-shape (a tighter prescription isodose, a more homogeneous target)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from core.errors import InputError
from core.geometry import Grid
from core.goals.goal import ClinicalGoal, GoalKind
from core.optimization.conformity import FalloffSpec, falloff_limits, homogeneity_limits
from core.optimization.fluence import OptimizerOptions, optimize_fluence

GRID = Grid((1, 1, 41), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))


def _line(lo, hi):
    m = np.zeros(GRID.shape, bool)
    m[0, 0, lo:hi] = True
    return m


def test_falloff_limit_is_rx_at_the_surface_and_falls_exponentially():
    spec = FalloffSpec(start=1.0, end=0.4, falloff_mm=8.0)
    lim, dist = falloff_limits([(_line(0, 5), 50.0)], GRID, spec)
    assert np.isnan(lim[0, 0, :5]).all() and (dist[0, 0, :5] == 0).all()
    # voxel 5 is 2 mm from the target, voxel 9 10 mm
    assert lim[0, 0, 5] == pytest.approx(50 * (0.4 + 0.6 * np.exp(-2 / 8)), rel=1e-5)
    assert lim[0, 0, 9] == pytest.approx(50 * (0.4 + 0.6 * np.exp(-10 / 8)), rel=1e-5)
    assert np.all(np.diff(lim[0, 0, 5:]) < 0)


def test_homogeneity_limit_is_own_rx_plus_allowance_except_near_a_boost():
    boost, elective = _line(0, 5), _line(0, 30)   # the elective target contains the boost
    spec = FalloffSpec(start=1.0, end=0.4, falloff_mm=8.0)
    lim, rx = homogeneity_limits([(boost, 70.0), (elective, 56.0)], GRID, spec, over_pct=3.0)
    assert np.isnan(lim[0, 0, 30:]).all() and (rx[0, 0, 30:] == 0).all()   # outside every target
    assert (rx[0, 0, :5] == 70.0).all() and (rx[0, 0, 5:30] == 56.0).all()  # each voxel's own Rx
    assert lim[0, 0, :5] == pytest.approx(70 * 1.03)            # the boost: its own Rx (the higher one)
    # next to the boost the elective voxel may carry the boost's fall-off ...
    assert lim[0, 0, 5] == pytest.approx(70 * (0.4 + 0.6 * np.exp(-2 / 8)), rel=1e-5)
    # ... far from it only its own 56 Gy + 3 %
    assert lim[0, 0, 29] == pytest.approx(56 * 1.03)
    assert np.all(lim[0, 0, 5:30] >= 56 * 1.03 - 1e-4)


def test_bad_input():
    with pytest.raises(InputError):
        homogeneity_limits([], GRID, FalloffSpec(), 3.0)
    with pytest.raises(InputError):
        homogeneity_limits([(_line(0, 5), 50.0)], GRID, FalloffSpec(), -1.0)
    with pytest.raises(InputError):
        FalloffSpec(start=0.5, end=0.8)
    with pytest.raises(InputError):
        OptimizerOptions(homogeneity_pct=-2.0)


def _ci_and_d2(toy, weights):
    """van't Riet conformity at 47.5 Gy and the target's near-maximum (D2)."""
    grid, masks, dij = toy
    dose = dij.dose_on_grid(weights)
    t, body = masks["Target"], masks["Body"]
    piv = ((dose >= 47.5) & body).sum()
    tvpi = ((dose >= 47.5) & t).sum()
    return tvpi ** 2 / (t.sum() * piv), float(np.percentile(dose[t], 98))


GOALS = [ClinicalGoal(1, "Target", GoalKind.MIN_DOSE_AT_VOLUME, 50.0, 95),
         ClinicalGoal(2, "Core", GoalKind.MAX_DOSE_AT_VOLUME, 25.0, 10)]


def _optimize(toy, **options):
    grid, masks, dij = toy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opts = OptimizerOptions(max_dose_pct=110.0, **options)
        r = optimize_fluence(dij, GOALS, masks, {"Target": 50.0}, options=opts)
    assert all(lv["accepted"] for lv in r["levels"])
    return _ci_and_d2(toy, r["weights"])


def test_conformity_control_tightens_the_prescription_isodose(toy):
    ci_off, _ = _optimize(toy, conformity=None, homogeneity_pct=None)
    ci_on, _ = _optimize(toy)
    assert ci_on > ci_off + 0.1, (ci_on, ci_off)


def test_homogeneity_control_cools_the_target(toy):
    _, d2_off = _optimize(toy, conformity=None, homogeneity_pct=None)
    _, d2_on = _optimize(toy, conformity=None, homogeneity_weight=30.0)
    assert d2_on < d2_off - 0.5, (d2_on, d2_off)


def test_distance_maps_are_reused_for_the_same_mask_and_never_for_another():
    from scipy import ndimage

    from core.optimization.conformity import distance_outside_mm

    a = _line(0, 5)
    b = _line(2, 7)
    ra = distance_outside_mm(a, GRID)
    assert distance_outside_mm(a.copy(), GRID) is ra       # a warm start asks again: no recomputation
    assert not ra.flags.writeable                          # shared, so nobody may change it
    rb = distance_outside_mm(b, GRID)
    assert rb is not ra
    for m, r in ((a, ra), (b, rb)):
        np.testing.assert_allclose(r, ndimage.distance_transform_edt(~m, sampling=GRID.spacing_mm), rtol=1e-6)
    coarse = Grid(GRID.shape, tuple(2 * s for s in GRID.spacing_mm), GRID.origin_mm)
    assert np.allclose(distance_outside_mm(a, coarse), 2 * ra)  # the spacing is part of the key
