"""OpenKBP dose and DVH scores against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from core.prediction.scores import ScoreAccumulator, dose_score, dvh_metrics


def test_dose_score_is_mean_absolute_error_in_mask():
    ref = np.zeros((2, 2, 2))
    pred = ref.copy()
    pred[0, 0, 0], pred[1, 1, 1] = 3.0, -1.0
    mask = np.zeros_like(ref, bool)
    mask[0] = True
    assert dose_score(pred, ref, mask) == pytest.approx(3.0 / 4)


def test_dvh_metrics_on_a_ramp():
    # 1000 voxels of 1 mm^3 with doses 0..999 / 10 Gy: 0.1 cc = 100 voxels, so D0.1cc is
    # the 90th percentile; D99/D95/D1 are the 1st/5th/99th percentiles (numpy linear).
    dose = (np.arange(1000, dtype=float) / 10.0).reshape(10, 10, 10)
    mask = np.ones_like(dose, bool)
    m = dvh_metrics(dose, {"oar": (mask, "oar"), "ptv": (mask, "target")}, (1.0, 1.0, 1.0))
    assert m[("oar", "D_0.1_cc")] == pytest.approx(np.percentile(dose, 90))
    assert m[("oar", "mean")] == pytest.approx(49.95)
    assert m[("ptv", "D_99")] == pytest.approx(0.999, abs=1e-9)
    assert m[("ptv", "D_95")] == pytest.approx(4.995, abs=1e-9)
    assert m[("ptv", "D_1")] == pytest.approx(98.901, abs=1e-9)


def test_small_organ_d01cc_is_zero_and_empty_structures_skipped():
    dose = np.full((4, 4, 4), 5.0)
    small = np.zeros_like(dose, bool)
    small[0, 0, :2] = True  # 2 voxels of 8 mm^3 = 0.016 cc < 0.1 cc
    m = dvh_metrics(dose, {"s": (small, "oar"), "e": (np.zeros_like(small), "oar")}, (2.0, 2.0, 2.0))
    assert m[("s", "D_0.1_cc")] == 0.0 and ("e", "mean") not in m


def test_accumulator_pools_dvh_errors_over_patients():
    acc = ScoreAccumulator()
    mask = np.ones((3, 3, 3), bool)
    ref = np.full((3, 3, 3), 10.0)
    acc.add(ref + 1.0, ref, mask, {"o": (mask, "oar")}, (10.0, 10.0, 10.0))
    acc.add(ref + 3.0, ref, mask, {"o": (mask, "oar"), "t": (mask, "target")}, (10.0, 10.0, 10.0))
    r = acc.result()
    assert r["dose_score_gy"] == pytest.approx(2.0)
    # errors: patient 1: 1, 1; patient 2: 3, 3, 3, 3, 3 -> mean 17 / 7
    assert r["dvh_score_gy"] == pytest.approx(17.0 / 7.0)
