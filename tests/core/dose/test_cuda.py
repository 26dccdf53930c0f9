"""CPU and CUDA run the same code: results agree to float32 round-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.dose.beams import load_template, parse_beams
from core.dose.forward import forward_dose
from core.dose.influence import compute_influence
from tests.core.dose.phantoms import water_box


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cpu_and_cuda_identical():
    """Same algorithm, same random numbers (drawn on the CPU for both): differences come
    from float32 summation order and transcendental functions only (1e-4 of the maximum);
    the sparse structure is identical except for entries exactly at a roulette threshold."""
    p = water_box((160.0, 160.0, 160.0), (4.0, 4.0, 4.0), target=((0.0, 0.0, 0.0), (20.0, 20.0, 20.0)))
    fc = forward_dose(p, parse_beams("gantry=0,field=60x60;gantry=120,field=40x60"), device="cpu").dose_gy
    fg = forward_dose(p, parse_beams("gantry=0,field=60x60;gantry=120,field=40x60"), device="cuda").dose_gy
    assert np.max(np.abs(fc - fg)) <= 1e-4 * fc.max()
    dc = compute_influence(p, load_template("imrt5"), device="cpu")
    dg = compute_influence(p, load_template("imrt5"), device="cuda")
    assert dg.matrix.device.type == "cuda"
    w = np.full(dc.n_beamlets, 100.0)
    a, b = dc.dose_on_grid(w), dg.dose_on_grid(w)
    assert abs(dc.meta["nnz"] - dg.meta["nnz"]) <= 1e-3 * dc.meta["nnz"]
    assert np.max(np.abs(a - b)) <= 1e-3 * a.max()
