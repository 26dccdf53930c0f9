"""Conformity, homogeneity and LQ conversions against hand-computed values."""

import numpy as np
import pytest

from core.errors import InputError
from core.evaluation.indices import (bed, conformity_paddick, conformity_rtog, default_alpha_beta_gy, eqd2,
                                     homogeneity_icru83)

SHAPE = (20, 20, 20)
TARGET = np.zeros(SHAPE, bool)
TARGET[5:15, 5:15, 5:15] = True       # 1000 voxels


def test_conformity_perfect_spill_and_undercoverage():
    dose = np.where(TARGET, 60.0, 0.0)
    assert conformity_paddick(dose, TARGET, 60.0) == pytest.approx(1.0)
    assert conformity_rtog(dose, TARGET, 60.0) == pytest.approx(1.0)
    spill = dose.copy()
    spill[15:20, 5:15, 5:15] = 61.0   # 500 voxels outside the target above 60 Gy
    # TV_PIV = 1000, PIV = 1500: Paddick 1000^2 / (1000 * 1500), RTOG 1.5
    assert conformity_paddick(spill, TARGET, 60.0) == pytest.approx(2 / 3)
    assert conformity_rtog(spill, TARGET, 60.0) == pytest.approx(1.5)
    # the body mask limits PIV: excluding the spill region restores CI = 1
    body = np.ones(SHAPE, bool)
    body[15:] = False
    assert conformity_paddick(spill, TARGET, 60.0, body_mask=body) == pytest.approx(1.0)
    under = dose.copy()
    under[5:10] = 30.0                # half the target under-dosed
    assert conformity_paddick(under, TARGET, 60.0) == pytest.approx(0.5)
    assert conformity_rtog(under, TARGET, 60.0) == pytest.approx(0.5)
    assert np.isnan(conformity_paddick(np.zeros(SHAPE), TARGET, 60.0))
    with pytest.raises(InputError):
        conformity_paddick(dose, TARGET, 0.0)


def test_homogeneity():
    assert homogeneity_icru83(np.where(TARGET, 60.0, 0.0), TARGET) == 0.0
    # dose uniform over 57..63 Gy along one axis: D2 - D98 = 0.96 * 6 Gy, D50 = 60 Gy -> 0.096;
    # 10 slices of 0.6 Gy: quantiles within half a slice step (0.3 Gy) -> HI within 0.6/60
    dose = np.zeros(SHAPE)
    dose[5:15] = (57.0 + (np.arange(10) + 0.5) * 0.6)[:, None, None]
    assert homogeneity_icru83(dose, TARGET) == pytest.approx(0.096, abs=0.01)
    assert np.isnan(homogeneity_icru83(dose, np.zeros(SHAPE, bool)))


def test_lq_conversions():
    # 2 Gy fractions: EQD2 equals the physical dose for any alpha/beta
    for ab in (1.5, 3.0, 10.0):
        assert eqd2(70.0, 35, ab) == pytest.approx(70.0)
    assert bed(70.0, 35, 10.0) == pytest.approx(84.0)          # 70 (1 + 2/10)
    assert eqd2(8.0, 1, 3.0) == pytest.approx(8 * 11 / 5)       # single 8 Gy, late tissue: 17.6 Gy
    assert eqd2(20.0, 5, 10.0) == pytest.approx(20 * 14 / 12)   # 5 x 4 Gy, tumour
    # per voxel: d = D / n voxel by voxel
    out = eqd2(np.array([[70.0, 35.0]]), 35, 3.0)
    assert out.shape == (1, 2)
    assert np.allclose(out, [[70.0, 35.0 * (1.0 + 3.0) / 5.0]])
    assert np.allclose(bed(np.zeros(3), 5, 3.0), 0.0)
    with pytest.raises(InputError):
        eqd2(60.0, 0, 3.0)
    with pytest.raises(InputError):
        bed(60.0, 30, -1.0)


def test_default_alpha_beta():
    assert default_alpha_beta_gy("PTV70", is_target=True) == 10.0
    assert default_alpha_beta_gy("SpinalCord") == 2.0
    assert default_alpha_beta_gy("Brainstem") == 2.0
    assert default_alpha_beta_gy("LeftParotid") == 3.0
