"""The batched goal penalties equal the per-goal ones: values, gradients and achieved values.

``GoalBatch`` (one segmented evaluation of all goals of a level, gradient by hand) must
give what ``goal_penalty`` with autograd and ``achieved_torch`` give, on overlapping
structures of different sizes, for every goal kind, on both order-statistic paths
(selection per goal, the CPU's; one segmented sort, the GPU's). Doses are continuous
random numbers (no ties), so the two agree to float64 round-off.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.goals.goal import ClinicalGoal, GoalKind
from core.optimization.batched import GoalBatch
from core.optimization.objectives import GoalTerm, achieved_torch, goal_penalty

K = GoalKind
N_ROWS = 3000


def _entries():
    """(term, value) pairs over overlapping row sets of different sizes; values near the doses."""
    sets = {"big": np.arange(0, 2400), "mid": np.arange(1500, 2100), "small": np.arange(2200, 2290),
            "tiny": np.arange(2900, 2930)}
    goals = [
        ("big", ClinicalGoal(1, "big", K.MIN_DOSE_AT_VOLUME, dose_gy=50.0, volume_pct=95), 50.3),
        ("big", ClinicalGoal(2, "big", K.MAX_DOSE_AT_VOLUME, dose_gy=55.0, volume_pct=10), None),
        ("mid", ClinicalGoal(2, "mid", K.MAX_DOSE_AT_VOLUME, dose_gy=54.0, volume_cc=0.03), 53.0),
        ("mid", ClinicalGoal(2, "mid", K.MIN_DOSE_AT_VOLUME, dose_gy=54.5, volume_cc=2.0), None),
        ("small", ClinicalGoal(3, "small", K.MAX_MEAN, dose_gy=48.0), 47.0),
        ("small", ClinicalGoal(3, "small", K.MIN_MEAN, dose_gy=53.0), None),
        ("tiny", ClinicalGoal(3, "tiny", K.ALARA), None),
        ("mid", ClinicalGoal(3, "mid", K.MAX_VOLUME_AT_DOSE, dose_gy=53.0, volume_pct=20), 15.0),
        ("small", ClinicalGoal(4, "small", K.MAX_VOLUME_AT_DOSE, dose_gy=40.0, volume_pct=99.5), None),
        ("big", ClinicalGoal(4, "big", K.MAX_DOSE_AT_VOLUME, dose_gy=52.0, volume_pct=50), None),
    ]
    out = []
    for name, g, v in goals:
        rows = torch.as_tensor(sets[name])
        out.append((GoalTerm(g, rows, 0.027, max(g.dose_gy or 0.0, 0.05 * 70, 1.0)), v))
    return out


def _reference(entries, d, coef):
    dd = d.clone().requires_grad_(True)
    ps = [goal_penalty(t, dd, v) for t, v in entries]
    total = sum(c * p for c, p in zip(coef.tolist(), ps))
    total.backward()
    return torch.stack([p.detach() for p in ps]), dd.grad


@pytest.mark.parametrize("use_sort", [False, True], ids=["select", "sort"])
def test_batched_penalties_and_gradient_equal_the_per_goal_ones(use_sort):
    rng = np.random.default_rng(3)
    entries = _entries()
    batch = GoalBatch(entries, "cpu", use_sort=use_sort)
    nonzero = 0
    for trial in range(20):
        d = torch.as_tensor(52.0 + rng.uniform(-3, 3) + rng.normal(0, rng.uniform(0.5, 4.0), N_ROWS))
        coef = torch.as_tensor(rng.uniform(0.1, 10.0, len(entries)))
        p_ref, g_ref = _reference(entries, d, coef)
        p = batch.penalties(d)
        g = batch.gradient(coef, N_ROWS)
        np.testing.assert_allclose(p.numpy(), p_ref.numpy(), rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-9, atol=1e-14)
        nonzero += int((p_ref > 0).sum())
    assert nonzero > 40  # unmet goals, so that gradients were compared, not zeros


@pytest.mark.parametrize("use_sort", [False, True], ids=["select", "sort"])
def test_batched_achieved_equals_per_goal_achieved(use_sort):
    rng = np.random.default_rng(4)
    entries = _entries()
    batch = GoalBatch([(t, None) for t, _ in entries], "cpu", use_sort=use_sort)
    for _ in range(5):
        d = torch.as_tensor(50.0 + rng.normal(0, 5.0, N_ROWS)).float()
        got, want = batch.achieved(d), [achieved_torch(t, d) for t, _ in entries]
        for (t, _), a, b in zip(entries, got, want):
            # achieved_torch takes a volume-at-dose percentage in float32; the batch in float64
            rtol = 1e-6 if t.goal.kind is K.MAX_VOLUME_AT_DOSE else 1e-12
            assert a == pytest.approx(b, rel=rtol), t.goal.label


def test_a_tie_at_the_quantile_splits_the_gradient_as_autograd_does():
    # all voxels equal: every one sits on the order statistic (torch.minimum's tie rule)
    g = ClinicalGoal(1, "s", K.MAX_DOSE_AT_VOLUME, dose_gy=50.0, volume_pct=10)
    entries = [(GoalTerm(g, torch.arange(100), 0.027, 50.0), None)]
    d = torch.full((100,), 51.0, dtype=torch.float64)
    coef = torch.ones(1, dtype=torch.float64)
    p_ref, g_ref = _reference(entries, d, coef)
    batch = GoalBatch(entries, "cpu")
    p = batch.penalties(d)
    gb = batch.gradient(coef, 100)
    assert float(p) == pytest.approx(float(p_ref), rel=1e-12)
    np.testing.assert_allclose(gb.numpy(), g_ref.numpy(), rtol=1e-12, atol=1e-15)


def test_batched_objective_equals_the_per_goal_objective_on_the_toy(toy):
    """The optimizer's whole objective and gradient (goals, conformity, homogeneity, organ
    push, maximum dose, hottest voxels, smoothness) through both paths, at random fluences
    and at every kind of level."""
    from core.optimization.fluence import OptimizerOptions, _Level, _Problem
    from tests.core.optimization.test_fluence import RX, TG119_LIKE

    grid, masks, dij = toy
    probs = [_Problem(dij, TG119_LIKE, masks, RX, OptimizerOptions(batched_penalties=b), torch.device("cpu"), [])
             for b in (False, True)]
    assert not probs[0].batched and probs[1].batched
    rng = np.random.default_rng(0)
    for trial in range(6):
        x = rng.uniform(0.5, 1.5, probs[0].n_beamlets)
        level = _Level(2, [(1, 54.7, 1.0), (2, 24.8, 0.1)], [(0, 50.25)], 100.0, final=trial % 2 == 1,
                       obj_norm=0.7, max_dose_shift_gy=0.3 * trial, hottest_weight=1.0 if trial > 2 else 0.0)
        if trial == 4:
            level.shape_weight = 0.2
        (fa, ga), (fb, gb) = (p.fg(x, level) for p in probs)
        assert fb == pytest.approx(fa, rel=1e-12)
        assert probs[1].last_obj == pytest.approx(probs[0].last_obj, rel=1e-12)
        np.testing.assert_allclose(gb, ga, rtol=1e-9, atol=1e-12 * np.abs(ga).max())
        assert probs[1].achieved(x) == pytest.approx(probs[0].achieved(x), rel=1e-9)
        # the batched evaluation brought every goal's achieved value and the maximum back with it
        ach_b, dmax_b = probs[1].last_achieved()
        ach_a, dmax_a = probs[0].last_achieved()
        assert ach_b == pytest.approx(ach_a, rel=1e-9) and dmax_b == pytest.approx(dmax_a, rel=1e-12)
        assert ach_a == pytest.approx(probs[0].achieved(x), rel=1e-12)


def test_a_volume_at_dose_goal_held_at_100_percent_is_always_met():
    # a repair can shift a held V(x Gy) value to 100 %: every voxel may then be hot
    g = ClinicalGoal(3, "s", K.MAX_VOLUME_AT_DOSE, dose_gy=40.0, volume_pct=30)
    term = GoalTerm(g, torch.arange(50), 0.027, 40.0)
    batch = GoalBatch([(term, 100.0)], "cpu")
    d = torch.linspace(0.0, 80.0, 50, dtype=torch.float64)
    assert float(batch.penalties(d)[0]) == 0.0
    assert not batch.gradient(torch.ones(1, dtype=torch.float64), 50).any()
    assert batch.achieved(d)[0] == pytest.approx(achieved_torch(term, d), rel=1e-6)


def test_graphed_evaluations_fall_back_to_eager_when_a_capture_fails():
    """Where a capture cannot be made (here: no CUDA), the caller is told to evaluate
    eagerly, every time, and the reason is kept; nothing is replayed."""
    from core.optimization.cuda_graphs import GraphedEvaluations

    graphs = GraphedEvaluations(capture_after=2)
    d = torch.arange(5, dtype=torch.float64)
    calls = []

    def fn(dd):
        calls.append(1)
        if not torch.cuda.is_available():
            return dd * 2
        raise RuntimeError("forced failure")

    assert graphs.run("k", d, fn) is None and not calls      # first sighting: not worth a capture
    assert graphs.run("k", d, fn) is None                     # capture attempted, failed
    assert graphs.disabled and graphs.note.startswith("CUDA graphs off")
    assert graphs.run("k", d, fn) is None and graphs.n_replayed == 0
