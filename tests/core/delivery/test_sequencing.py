"""Leaf sequencing on synthetic fluence maps (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from core.delivery.mlc import MILLENNIUM_120, get_mlc_device
from core.delivery.segments import (Segment, SegmentedBeam, aperture_coverage, beam_deliverable_weights,
                                    deliverable_weights)
from core.delivery.sequencing import (SequencingOptions, decompose_sweep, decompose_xia_verhey, merge_identical,
                                      reconstruct, sequence_fluence, sequence_plan)
from core.errors import GeometryError, InputError


def lattice(nu=16, nv=12, du=5.0, dv=5.0, v_offset=0.0):
    """Beamlet centres on edges aligned with the 5 mm leaves: (k + 0.5) * 5 mm."""
    u = (np.arange(nu) - nu / 2 + 0.5) * du
    v = (np.arange(nv) - nv / 2 + 0.5) * dv + v_offset
    uu, vv = np.meshgrid(u, v, indexing="ij")
    return np.stack([uu.ravel(), vv.ravel()], axis=1)


def ring_weights(pos, seed=0):
    rng = np.random.default_rng(seed)
    r = np.hypot(pos[:, 0] - 5, pos[:, 1])
    return 100.0 * ((r < 35) & (r > 12)) + 40.0 * (r <= 12) + 10.0 * rng.random(len(pos)) * (r < 35)


# -- the decompositions ---------------------------------------------------------------------
@pytest.mark.parametrize("algo", [decompose_sweep, decompose_xia_verhey])
def test_decomposition_reproduces_integer_map_exactly(algo):
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.integers(0, 11, size=(7, 9))
        dec = algo(q)
        assert np.array_equal(reconstruct(dec, q.shape), q)
        assert np.array_equal(reconstruct(merge_identical(dec), q.shape), q)
        for units, ap in dec:
            assert units >= 1
            for r, (c0, c1) in ap.items():   # one interval per row, left <= right
                assert 0 <= c0 <= c1 < q.shape[1]


def test_sweep_uses_the_unidirectional_minimum_mu():
    # Bortfeld 1994: a row needs sum of positive gradients; the sweep's total is the max over rows
    q = np.array([[0, 3, 1, 4, 0], [2, 2, 2, 0, 0], [5, 0, 5, 0, 5]])
    tnmu = [np.clip(np.diff(np.concatenate([[0], r])), 0, None).sum() for r in q]   # 6, 2, 15
    dec = decompose_sweep(q)
    assert sum(u for u, _ in dec) == max(tnmu) == 15


def test_xia_verhey_peels_powers_of_two():
    # [3, 5, 2]: Delta=4 -> {col 1}; residual [3,1,2]; Delta=2 -> runs {0},{2}; residual [1,1,0]; Delta=1 -> {0..1}
    dec = decompose_xia_verhey(np.array([[3, 5, 2]]))
    assert dec == [(4, {0: (1, 1)}), (2, {0: (0, 0)}), (2, {0: (2, 2)}), (1, {0: (0, 1)})]


# -- one beam through the MLC ----------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["sweep", "xia_verhey"])
def test_segments_deliver_the_quantised_fluence_exactly(algorithm):
    pos = lattice()
    w = ring_weights(pos)
    opts = SequencingOptions(algorithm=algorithm, levels=10, min_segment_mu=0.0, max_segments=100)
    sb = sequence_fluence(w, pos, (5.0, 5.0), "millennium120", opts)
    step = sb.info["step_mu"]
    assert step == pytest.approx(w.max() / 10)
    delivered = beam_deliverable_weights(sb, pos, (5.0, 5.0))
    # 5 mm beamlets on 5 mm leaves, leaf tips on beamlet edges, closed pairs behind the
    # jaws: sum(MU x aperture) equals round(w / step) * step up to float round-off
    np.testing.assert_allclose(delivered, np.rint(w / step) * step, atol=1e-9 * w.max())
    # hence the quantisation bound: never more than half a level from the optimized weight
    assert np.abs(delivered - w).max() <= step / 2 + 1e-9
    assert sb.info["quantisation_max_error_mu"] <= sb.info["quantisation_bound_mu"] + 1e-9
    for s in sb.segments:
        assert s.problems(MILLENNIUM_120) == []
        assert np.all(s.leaf_b_mm - s.leaf_a_mm >= MILLENNIUM_120.min_gap_mm - 1e-9)
    assert sb.info["n_segments"] == sb.n_segments and sb.mu == pytest.approx(sb.info["mu"])


def test_rows_under_10mm_outer_leaves_are_combined():
    # rows at v = 102.5 and 107.5 share the 10 mm leaf 100..110: both get the mean fluence
    u = (np.arange(4) + 0.5) * 5
    pos = np.array([(x, y) for x in u for y in (102.5, 107.5)])
    w = np.array([20.0 if y < 105 else 60.0 for _, y in pos])
    sb = sequence_fluence(w, pos, (5.0, 5.0), "millennium120", SequencingOptions(levels=4, min_segment_mu=0.0))
    delivered = beam_deliverable_weights(sb, pos, (5.0, 5.0))
    np.testing.assert_allclose(delivered, 40.0, atol=1e-9)   # mean 40 is exactly level 2 of 4 (step 20)
    assert sb.info["pair_mapping_max_change_mu"] == pytest.approx(20.0)


def test_no_interdigitation_when_forbidden():
    pos = lattice()
    w = ring_weights(pos, seed=3)
    sb = sequence_fluence(w, pos, (5.0, 5.0), "millennium120",
                          SequencingOptions(interdigitation=False, min_segment_mu=0.0, max_segments=200))
    assert sb.n_segments > 0
    for s in sb.segments:
        assert s.problems(MILLENNIUM_120, interdigitation=False) == []
    # closed pairs between open ones keep the 0.5 mm minimum gap inside the field: each
    # such pair leaks at most mg/du = 10 % of a beamlet per segment, so the delivered map
    # is the quantised one plus a bounded, non-negative leak
    step = sb.info["step_mu"]
    delivered = beam_deliverable_weights(sb, pos, (5.0, 5.0))
    leak = delivered - np.rint(w / step) * step
    assert leak.min() >= -1e-9
    assert leak.max() <= 0.1 * sb.mu + 1e-9


def test_min_mu_drops_small_segments_and_reports_the_loss():
    pos = lattice(8, 4)
    w = np.full(len(pos), 100.0)
    w[0] = 104.0   # a 4 MU bump; 26 levels -> step 4 MU: the field is 25 units, the bump 1 unit
    opts = SequencingOptions(levels=26, min_segment_mu=5.0, max_segments=100)
    sb = sequence_fluence(w, pos, (5.0, 5.0), "millennium120", opts)
    assert all(s.mu >= 5.0 for s in sb.segments)
    assert sb.info["dropped_segments"] == 1
    # the dropped bump is 4 MU x one 25 mm^2 beamlet against 100 MU x 32 beamlets (+ the bump)
    assert sb.info["dropped_fluence_pct"] == pytest.approx(100 * 4 * 25 / (100 * 32 * 25 + 4 * 25), rel=1e-6)
    # min MU is per fraction: over 2 fractions the 4 MU course segment is 2 MU/fx, above 1.5
    opts2 = SequencingOptions(levels=26, min_segment_mu=1.5, fractions=2)
    sb2 = sequence_fluence(w, pos, (5.0, 5.0), "millennium120", opts2)
    assert sb2.info["dropped_segments"] == 0


def test_segment_cap_forces_coarser_levels():
    pos = lattice()
    w = ring_weights(pos, seed=5)
    free = sequence_fluence(w, pos, (5.0, 5.0), "millennium120",
                            SequencingOptions(levels=20, max_segments=1000, min_segment_mu=0))
    capped = sequence_fluence(w, pos, (5.0, 5.0), "millennium120",
                              SequencingOptions(levels=20, max_segments=8, min_segment_mu=0))
    assert free.n_segments > 8
    assert capped.n_segments <= 8
    assert capped.info["levels"] < 20 and capped.info["levels_requested"] == 20


def test_leaf_span_limit_is_respected_for_wide_fields():
    # a 200 mm wide field whose rows open at opposite ends: one bank would span > 145 mm
    u = (np.arange(40) - 20 + 0.5) * 5.0
    pos = np.array([(x, y) for x in u for y in (-2.5, 2.5)])
    low_left = (pos[:, 1] < 0) & (pos[:, 0] < -80)
    high_right = (pos[:, 1] > 0) & (pos[:, 0] > 80)
    w = 50.0 * (low_left | high_right)
    sb = sequence_fluence(w, pos, (5.0, 5.0), "millennium120", SequencingOptions(levels=1, min_segment_mu=0))
    assert sb.n_segments == 2   # split into one segment per row group
    for s in sb.segments:
        assert s.problems(MILLENNIUM_120) == []
    np.testing.assert_allclose(beam_deliverable_weights(sb, pos, (5.0, 5.0)), w, atol=1e-9)


def test_bad_input_is_a_typed_error():
    pos = lattice()
    with pytest.raises(InputError):
        sequence_fluence(-np.ones(len(pos)), pos, (5, 5), "millennium120")
    with pytest.raises(GeometryError):   # 40 cm MLC: a map at v = 210 mm is off the leaves
        sequence_fluence(np.ones(4), lattice(2, 2, v_offset=210.0), (5, 5), "millennium120")
    with pytest.raises(InputError):
        SequencingOptions(algorithm="nope")
    with pytest.raises(InputError):
        get_mlc_device("nope")
    with pytest.raises(InputError):
        Segment(np.zeros(60), -np.ones(60), (0, 1), (0, 1), 1.0)


def test_zero_fluence_gives_no_segments():
    pos = lattice(4, 4)
    sb = sequence_fluence(np.zeros(len(pos)), pos, (5, 5), "millennium120")
    assert sb.n_segments == 0 and sb.mu == 0.0


# -- coverage and dose ----------------------------------------------------------------------
def test_aperture_coverage_fractions():
    n = MILLENNIUM_120.n_pairs
    a = np.full(n, -1.0)
    b = np.full(n, -0.5)
    p = int(np.searchsorted(MILLENNIUM_120.boundaries, 0.0))   # pair 0..5 mm
    a[p], b[p] = -2.5, 5.0
    seg = Segment(a, b, (-10.0, 10.0), (0.0, 5.0), 1.0)
    # beamlet (0, 2.5) of 5 x 5 mm spans u -2.5..2.5: fully open; (5, 2.5): u 2.5..7.5, half open;
    # (0, -2.5): below the Y jaw: closed; (0, 5.0): half above the jaw
    cov = aperture_coverage(seg, MILLENNIUM_120, [0.0, 5.0, 0.0, 0.0], [2.5, 2.5, -2.5, 5.0], (5.0, 5.0))
    np.testing.assert_allclose(cov, [1.0, 0.5, 0.0, 0.5])


def test_sequenced_dose_agrees_with_fluence_dose():
    """dij @ deliverable weights vs dij @ optimized weights on a synthetic pencil-beam dij.

    Tolerance (derived, not tuned): |D_seq - D_opt| <= sum_j d_ij |w_seq,j - w_j| <=
    (step/2) sum_j d_ij, the quantisation bound carried through the non-negative dij; we
    also require that bound to be tight enough to matter (< 6 % of the maximum dose).
    """
    rng = np.random.default_rng(7)
    pos = lattice(12, 10)
    w = ring_weights(pos, seed=7)[: len(pos)]
    # voxels in a plane under the beam; beamlet dose: Gaussian pencil (sigma 4 mm)
    vx, vy = np.meshgrid(np.arange(-35, 35, 2.0), np.arange(-30, 30, 2.0), indexing="ij")
    vox = np.stack([vx.ravel(), vy.ravel()], axis=1)
    d2 = ((vox[:, None, :] - pos[None, :, :]) ** 2).sum(-1)
    dij = 0.01 * np.exp(-d2 / (2 * 4.0 ** 2)) * (1 + 0.05 * rng.random((len(vox), 1)))
    sbs = sequence_plan(w, np.zeros(len(pos), int), pos, (5.0, 5.0), options=SequencingOptions(min_segment_mu=0.0))
    w_seq = deliverable_weights(sbs, np.zeros(len(pos), int), pos, (5.0, 5.0))
    d_opt, d_seq = dij @ w, dij @ w_seq
    bound = sbs[0].info["step_mu"] / 2 * dij.sum(axis=1)
    assert np.all(np.abs(d_seq - d_opt) <= bound + 1e-9)
    assert bound.max() < 0.06 * d_opt.max()
    assert np.abs(d_seq - d_opt).max() < 0.03 * d_opt.max()   # observed ~1.5 %; quantisation errors partly cancel


def test_segmented_beam_roundtrips_through_dict():
    pos = lattice(6, 6)
    sb = sequence_fluence(ring_weights(pos), pos, (5, 5), "millennium120", SequencingOptions(min_segment_mu=0.0))
    again = SegmentedBeam.from_dict(sb.to_dict())
    assert again.n_segments == sb.n_segments and again.mu == pytest.approx(sb.mu)
    np.testing.assert_array_equal(again.segments[0].leaf_a_mm, sb.segments[0].leaf_a_mm)


def test_forbidden_interdigitation_splits_disjoint_neighbour_rows():
    # two adjacent 5 mm rows open over disjoint columns: one aperture when leaves may
    # interdigitate, two (one row each) when they may not
    u = (np.arange(6) + 0.5) * 5.0
    pos = np.array([(x, y) for x in u for y in (2.5, 7.5)])
    w = np.where(((pos[:, 1] < 5) & (pos[:, 0] < 10)) | ((pos[:, 1] > 5) & (pos[:, 0] > 15)), 80.0, 0.0)
    opts = dict(levels=1, min_segment_mu=0.0)
    allowed = sequence_fluence(w, pos, (5, 5), "millennium120", SequencingOptions(interdigitation=True, **opts))
    forbidden = sequence_fluence(w, pos, (5, 5), "millennium120", SequencingOptions(interdigitation=False, **opts))
    assert allowed.n_segments == 1 and forbidden.n_segments == 2
    for s in forbidden.segments:
        assert s.problems(MILLENNIUM_120, interdigitation=False) == []
    # the closed neighbour of each split segment sits behind a Y jaw: no leak, exact delivery
    np.testing.assert_allclose(beam_deliverable_weights(forbidden, pos, (5, 5)), w, atol=1e-9)
    np.testing.assert_allclose(beam_deliverable_weights(allowed, pos, (5, 5)), w, atol=1e-9)
    assert forbidden.mu == pytest.approx(2 * allowed.mu)
