"""Each goal penalty is zero exactly when its goal is met, and its gradient points the right way.

"Met" here is the exact comparison of the achieved value (``core.goals.evaluate``, the
project's DVH convention) with the goal value -- no display slack -- so the test checks
that the optimizer's penalty and the planner's verdict agree to the last voxel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.goals.evaluate import achieved_value
from core.goals.goal import ClinicalGoal, GoalKind
from core.optimization.objectives import GoalTerm, goal_penalty

VOXEL_CC = 0.027  # 3 mm voxels

GOALS = [
    ClinicalGoal(1, "S", GoalKind.MIN_DOSE_AT_VOLUME, dose_gy=50.0, volume_pct=95),
    ClinicalGoal(1, "S", GoalKind.MAX_DOSE_AT_VOLUME, dose_gy=55.0, volume_pct=10),
    ClinicalGoal(1, "S", GoalKind.MAX_DOSE_AT_VOLUME, dose_gy=54.0, volume_cc=0.03),
    ClinicalGoal(1, "S", GoalKind.MIN_DOSE_AT_VOLUME, dose_gy=54.5, volume_cc=2.0),
    ClinicalGoal(1, "S", GoalKind.MAX_MEAN, dose_gy=52.0),
    ClinicalGoal(1, "S", GoalKind.MIN_MEAN, dose_gy=51.0),
    ClinicalGoal(1, "S", GoalKind.MAX_VOLUME_AT_DOSE, dose_gy=53.0, volume_pct=20),
]


def _term(goal, n):
    return GoalTerm(goal, torch.arange(n), VOXEL_CC, scale_gy=max(goal.dose_gy, 1.0))


def _met_exact(goal, dose):
    a = achieved_value(goal, dose, VOXEL_CC)
    return a >= goal.value if goal.kind.is_lower_bound else a <= goal.value


@pytest.mark.parametrize("goal", GOALS, ids=lambda g: g.label)
def test_penalty_zero_exactly_when_met(goal):
    rng = np.random.default_rng(0)
    n = 400
    seen = {True: 0, False: 0}
    # doses spread around the goal's value so that both outcomes occur many times
    for trial in range(300):
        centre = 52.0 + rng.uniform(-4, 4)
        dose = centre + rng.normal(0, rng.uniform(0.2, 3.0), n)
        p = float(goal_penalty(_term(goal, n), torch.tensor(dose)))
        met = _met_exact(goal, dose)
        seen[met] += 1
        assert (p == 0.0) == met, (trial, p, achieved_value(goal, dose, VOXEL_CC))
        assert p >= 0.0
    assert seen[True] > 20 and seen[False] > 20  # both branches exercised


@pytest.mark.parametrize("goal", GOALS, ids=lambda g: g.label)
def test_gradient_matches_finite_differences_and_points_the_right_way(goal):
    rng = np.random.default_rng(1)
    n = 300
    # a dose that violates the goal: too cold for lower bounds, too hot for upper bounds
    base = 47.0 if goal.kind.is_lower_bound else 56.0
    dose = torch.tensor(base + rng.normal(0, 1.5, n), dtype=torch.float64, requires_grad=True)
    term = _term(goal, n)
    p = goal_penalty(term, dose)
    assert float(p.detach()) > 0
    (g,) = torch.autograd.grad(p, dose)
    # central differences along random directions; h small enough that no voxel changes
    # rank (gaps between sorted doses are ~1e-3 Gy here), so the penalty is smooth there
    h = 1e-6
    for _ in range(5):
        v = torch.tensor(rng.normal(size=n))
        fp = float(goal_penalty(term, (dose + h * v).detach()))
        fm = float(goal_penalty(term, (dose - h * v).detach()))
        fd = (fp - fm) / (2 * h)
        assert fd == pytest.approx(float(g @ v), rel=1e-4, abs=1e-10)
    # sign: raising any dose never helps an upper-bound goal and never hurts a lower-bound one
    if goal.kind.is_lower_bound:
        assert float(g.max()) <= 0.0 and float(g.min()) < 0.0
    else:
        assert float(g.min()) >= 0.0 and float(g.max()) > 0.0
    # a small step against the gradient lowers the penalty
    p2 = float(goal_penalty(term, (dose - 1e-3 * g / g.norm()).detach()))
    assert p2 < float(p.detach())


def test_alara_is_never_zero_and_pushes_down():
    goal = ClinicalGoal(3, "S", GoalKind.ALARA)
    dose = torch.full((50,), 10.0, dtype=torch.float64, requires_grad=True)
    p = goal_penalty(GoalTerm(goal, torch.arange(50), VOXEL_CC, 50.0), dose)
    (g,) = torch.autograd.grad(p, dose)
    assert float(p.detach()) > 0 and bool((g > 0).all())
