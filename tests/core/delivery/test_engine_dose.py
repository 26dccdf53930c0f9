"""Sequenced dose through the real dose engine (SVD pencil beam, CPU, small water phantom).

Two checks:

1. *The segments -> beamlet-weights conversion is faithful*: the engine's dose of the
   segments' own fluence maps (1 mm pixels, what the MLC lets through) equals its dose of
   :func:`deliverable_weights`. With beamlets aligned to the 5 mm leaves both describe the
   same piecewise-constant fluence; they differ only in where the machine's off-axis
   horn is sampled (per 1 mm pixel vs once per 5 mm beamlet centre), which changes the
   primary fluence by well under 1 %: tolerance 1.5 % of the maximum dose.
2. *Sequenced vs ideal-fluence dose*: the engine is linear and non-negative in the
   weights, so ``|D(w_seq) - D(w)| <= D(|w_seq - w|)`` voxel by voxel, an exact bound
   computed with the engine itself (float32 slack 1e-4 of the maximum); and with 10 levels
   the target mean dose changes by less than 2 % (the quantisation is at most 5 % of the
   peak weight per beamlet and errors of both signs average out over a target).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup():
    from core.delivery.segments import deliverable_weights, fluence_on_grid
    from core.delivery.sequencing import SequencingOptions, sequence_plan
    from core.dose.beams import Beam, BeamSet
    from core.dose.engine import FluenceMap
    from core.io.phantoms import water_phantom
    from core.patient import Structure, StructureRole

    p = water_phantom(80.0, 4.0)
    c = np.array(p.grid.shape) // 2
    m = np.zeros(p.grid.shape, bool)
    m[c[0] - 3:c[0] + 3, c[1] - 4:c[1] + 4, c[2] - 3:c[2] + 3] = True
    p.add_structure(Structure("PTV", m, StructureRole.TARGET))
    beams = BeamSet(tuple(Beam(gantry_deg=a, mlc="millennium120") for a in (0.0, 120.0, 240.0))).resolve(p)
    u = (np.arange(-5, 5) + 0.5) * 5.0
    v = (np.arange(-4, 4) + 0.5) * 5.0   # beamlet rows on the 5 mm leaf pairs
    pos1 = np.array([(a, b) for a in u for b in v])
    beam_of = np.repeat(np.arange(3), len(pos1))
    pos = np.tile(pos1, (3, 1))
    # smooth modulated fluence, like an optimized IMRT beam
    w = 100 * (0.6 + 0.4 * np.cos(pos[:, 0] / 15.0) ** 2) * (1 + 0.3 * np.sin(pos[:, 1] / 7.0)) * (1 + 0.2 * beam_of)
    sbs = sequence_plan(w, beam_of, pos, (5.0, 5.0), beams, SequencingOptions(levels=10))
    ws = deliverable_weights(sbs, beam_of, pos, (5.0, 5.0))
    uu, vv = np.arange(-40, 40.01, 1.0), np.arange(-30, 30.01, 1.0)
    maps = [FluenceMap(fluence_on_grid(sb, uu, vv), float(uu[0]), float(vv[0]), 1.0) for sb in sbs]
    return p, beams, m, beam_of, pos, w, ws, maps


def _fwd(p, beams, fluence, beamlets=None):
    from core.dose.forward import forward_dose

    return forward_dose(p, beams, fluence=fluence, beamlets=beamlets, device="cpu").dose_gy.astype(np.float64)


def test_segment_fluence_dose_equals_deliverable_weight_dose(setup):
    p, beams, m, beam_of, pos, w, ws, maps = setup
    d_maps = _fwd(p, beams, maps)
    d_w = _fwd(p, beams, ws, (beam_of, pos, (5.0, 5.0)))
    assert np.abs(d_maps - d_w).max() <= 0.015 * d_w.max()


def test_sequenced_dose_agrees_with_ideal_fluence_dose(setup):
    p, beams, m, beam_of, pos, w, ws, maps = setup
    bl = (beam_of, pos, (5.0, 5.0))
    d_ideal = _fwd(p, beams, w, bl)
    d_seq = _fwd(p, beams, ws, bl)
    bound = _fwd(p, beams, np.abs(ws - w), bl)
    assert np.all(np.abs(d_seq - d_ideal) <= bound + 1e-4 * d_ideal.max())
    assert abs(d_seq[m].mean() - d_ideal[m].mean()) < 0.02 * d_ideal[m].mean()
