"""Dose-influence matrix: structure, agreement with the forward dose, bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.dose.beams import load_template
from core.dose.forward import forward_dose
from core.dose.influence import DoseInfluence, compute_influence, structure_rows
from core.errors import Cancelled
from core.evaluation.gamma import gamma_index
from core.progress import CancelToken, Progress
from tests.core.dose.phantoms import water_box


@pytest.fixture(scope="module")
def case():
    p = water_box((200.0, 200.0, 160.0), (4.0, 4.0, 4.0), target=((0.0, 10.0, 0.0), (25.0, 20.0, 20.0)))
    beams = load_template("imrt5")
    events = []
    dij = compute_influence(p, beams, 5.0, dose_grid_mm=4.0, device="cpu", progress=Progress(events.append))
    return p, beams, dij, events


def test_matrix_contract(case):
    p, beams, dij, events = case
    assert isinstance(dij, DoseInfluence)
    m = dij.matrix
    assert m.layout == torch.sparse_csr and m.dtype == torch.float32
    assert m.shape == (len(dij.voxel_index), len(dij.beamlet_beam))
    assert dij.beamlet_pos_mm.shape == (dij.n_beamlets, 2)
    assert set(np.unique(dij.beamlet_beam)) == set(range(len(beams)))
    # rows restricted to the external contour = the whole box here
    assert len(dij.voxel_index) == p.grid.size
    # column indices sorted within rows (torch's CSR invariant), no duplicates
    crow, col = m.crow_indices().long(), m.col_indices().long()
    same_row = torch.repeat_interleave(torch.arange(m.shape[0]), crow[1:] - crow[:-1])
    key = same_row * m.shape[1] + col
    assert bool(torch.all(key[1:] > key[:-1]))
    with torch.sparse.check_sparse_tensor_invariants():
        torch.sparse_csr_tensor(m.crow_indices(), m.col_indices(), m.values(), m.shape)
    assert events and events[-1].fraction == pytest.approx(1.0)
    # beamlets cover the target's projection: the two beamlets beside the isocentre (rows
    # centred at v = +-b/2, between leaf boundaries) are in every beam
    for ib in range(len(beams)):
        pos = dij.beamlet_pos_mm[dij.beamlet_beam == ib]
        for v in (-2.5, 2.5):
            assert np.any(np.all(np.abs(pos - (0.0, v)) < 1e-6, axis=1))


def test_matrix_times_fluence_equals_forward_dose(case):
    """D @ w vs. the forward dose of the same beamlet weights (FFT convolution, no
    truncation). The matrix is exact within 15 mm of each beamlet and samples the scatter
    tail without bias, so the mean agrees to 0.5 % and each voxel carries sampling noise
    (a few % of the local tail dose): gamma 2 %/2 mm over 10 % of max must pass 99 %."""
    p, beams, dij, _ = case
    rng = np.random.default_rng(0)
    w = 100.0 * rng.uniform(0.3, 1.0, dij.n_beamlets)
    d_mat = dij.dose_on_grid(w)
    d_fwd = forward_dose(p, beams, w, beamlets=(dij.beamlet_beam, dij.beamlet_pos_mm, dij.beamlet_size_mm),
                         device="cpu").dose_gy
    sel = d_fwd > 0.1 * d_fwd.max()
    mean_rel = (d_mat[sel].sum() - d_fwd[sel].sum()) / d_fwd[sel].sum()
    assert abs(mean_rel) < 0.005, mean_rel
    g = gamma_index(d_fwd, d_mat, p.grid.spacing_mm, 2.0, 2.0, 10.0)
    assert g.pass_rate >= 0.99, g.pass_rate
    # the target gets the high dose in both
    t = p.structure("PTV").mask
    assert d_mat[t].mean() > 2 * d_mat[~t].mean()


def test_structure_rows_and_coarse_grid(case):
    p, beams, dij, _ = case
    rows = structure_rows(dij, p, "PTV")
    assert rows.sum() == p.structure("PTV").mask.sum()
    coarse = compute_influence(p, load_template("imrt5"), 5.0, dose_grid_mm=8.0,
                               device="cpu", engine_options={"tail_samples": 2})
    assert coarse.grid.spacing_mm == (8.0, 8.0, 8.0)
    r2 = structure_rows(coarse, p, "PTV")
    assert 0 < r2.sum() < rows.sum()


def test_cancel():
    p = water_box((120.0, 120.0, 120.0), (6.0, 6.0, 6.0), target=((0.0, 0.0, 0.0), (15.0, 15.0, 15.0)))
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        compute_influence(p, load_template("imrt5"), device="cpu", cancel=tok)
