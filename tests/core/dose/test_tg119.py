"""TG-119 with pyRadPlan 0.5.0's reference plan: same beams, bixels and fluence.

Gamma 3 %/3 mm (global, reference maximum) against ``dose_pyradplan_gy`` over voxels above
10 % of its maximum, after one global scale factor (the machines' absolute calibrations
differ: pyRadPlan's bixel weights are not MU). The dose is computed on a 5 mm grid (to fit
CI time) and interpolated to the CT grid, which costs accuracy, so passing here is a
conservative check of the 3 mm result the benchmark reports.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.dose.forward import forward_dose
from core.evaluation.gamma import gamma_index
from tests.core.dose.tg119 import load_tg119


@pytest.fixture(scope="module")
def tg119(tg119_dir):
    return load_tg119(tg119_dir)


def test_tg119_gamma_against_pyradplan(tg119):
    patient, ref = tg119
    d = forward_dose(patient, ref["beams"], ref["weights"], beamlets=(ref["beam_of"], ref["pos_mm"], 5.0),
                     dose_grid_mm=5.0, device="cpu", engine_options={"hlut": ref["hlut"]}).dose_gy
    r = ref["dose_gy"]
    sel = r > 0.1 * r.max()
    scale = float(np.sum(r[sel] * d[sel]) / np.sum(d[sel] ** 2))
    g = gamma_index(r, d * scale, patient.grid.spacing_mm, 3.0, 3.0, 10.0)
    print(f"TG-119 5 mm grid: scale {scale:.3f} (reference Gy per our Gy), gamma 3%/3mm pass {g.pass_rate:.4f}")
    assert g.pass_rate >= 0.95
    # The comparison is not trivially passing: the same dose moved 6 mm (two voxels) along
    # x, twice the distance criterion, fails in the gradients around the target.
    shifted = np.roll(d * scale, 2, axis=2)
    assert gamma_index(r, shifted, patient.grid.spacing_mm, 3.0, 3.0, 10.0).pass_rate < 0.9
    # The weights are pyRadPlan's (not MU): the factor is ~98 (their Gy per unit weight
    # over ours per MU); a mapping error (e.g. a mirrored beam frame) would show here.
    assert 80 < scale < 120
