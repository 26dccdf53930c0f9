"""Goals from a predicted dose, checked on a real OpenKBP case with its clinical dose as "prediction"."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.goals.evaluate import evaluate_goals
from core.goals.from_prediction import goals_from_dose, goals_from_prediction
from core.goals.goal import ClinicalGoal, GoalKind
from core.goals.templates import goals_for_patient


@pytest.fixture(scope="module")
def case(openkbp_dir):
    from core.io.openkbp import load_openkbp

    return load_openkbp(openkbp_dir / "validation" / "pt_201.npz")


def test_reference_dose_gives_its_own_values(case):
    goals, _ = goals_for_patient(case, "hn")  # adds the template's rings to the case
    assert any(g.structure.startswith("Ring_") for g in goals)
    dose = case.doses["reference"]
    out, warnings = goals_from_prediction(goals, case, dose)
    assert warnings == []
    masks = {n: s.mask for n, s in case.structures.items()}
    res = evaluate_goals(goals, dose.dose_gy, masks, case.grid.voxel_volume_cc)
    targets = {s.name for s in case.targets}
    for g, new, r in zip(goals, out, res):
        if g.priority == 1 or g.kind is GoalKind.ALARA:
            assert new == g  # musts keep the planner's value
            continue
        if g.structure in targets:
            # target goals are protocol values: pt_201's reference plan reaches only
            # D20 = 68.8 Gy on PTV70, which must not become a limit below 70 Gy, and only
            # D95 = 64.5 Gy, which must not become the coverage aim
            assert new == g
            if g.structure == "PTV70":
                assert r.achieved < 70.0
            continue
        t_ = g.tolerance_pct / 100
        expect = r.achieved * (1 + t_ if g.kind.is_lower_bound else 1 - t_)
        assert new.value == pytest.approx(expect, abs=1e-3), g.label
        assert new.structure == g.structure and new.priority == g.priority and "from dose" in new.note
    # with tolerance 0 the reference dose meets every personalised goal exactly
    zero = [ClinicalGoal(g.priority, g.structure, g.kind, g.dose_gy, g.volume_pct, g.volume_cc) for g in goals]
    z, _ = goals_from_prediction(zero, case, dose)
    assert all(r.met for r in evaluate_goals([g for g in z if g.priority > 1 and g.structure not in targets],
                                             dose.dose_gy, masks, case.grid.voxel_volume_cc))
    # the parotid mean goal now reads the reference plan's parotid mean
    lp = [g for g in z if g.structure == "LeftParotid"][0]
    assert lp.dose_gy == pytest.approx(float(dose.dose_gy[masks["LeftParotid"]].mean()), abs=1e-3)


def test_control_goals_are_kept_and_tolerance_tightens_the_right_way():
    dose = np.linspace(0, 40, 1000).reshape(10, 10, 10).astype(np.float32)
    m = np.ones_like(dose, bool)
    goals = [ClinicalGoal(2, "S", GoalKind.MAX_MEAN, 30.0, tolerance_pct=10),
             ClinicalGoal(2, "S", GoalKind.MIN_MEAN, 10.0, tolerance_pct=10),
             ClinicalGoal(2, "S", GoalKind.MAX_MEAN, 5.0, control=True),
             ClinicalGoal(2, "S", GoalKind.MAX_VOLUME_AT_DOSE, 30.0, volume_pct=50, tolerance_pct=10),
             ClinicalGoal(3, "S", GoalKind.ALARA)]
    out, _ = goals_from_dose(goals, dose, {"S": m}, 0.001)
    mean = float(dose.mean())
    assert out[0].dose_gy == pytest.approx(0.9 * mean, abs=1e-3)   # ask for less dose than predicted
    assert out[1].dose_gy == pytest.approx(1.1 * mean, abs=1e-3)   # ask for more coverage than predicted
    assert out[2] == goals[2] and out[4] == goals[4]
    assert out[3].volume_pct == pytest.approx(0.9 * 25.0, abs=1e-3)


def test_bad_predictions():
    g = [ClinicalGoal(2, "S", GoalKind.MAX_MEAN, 30.0)]
    m = {"S": np.ones((2, 2, 2), bool)}
    with pytest.raises(InputError, match="negative"):
        goals_from_dose(g, -np.ones((2, 2, 2)), m, 1.0)
    with pytest.raises(InputError, match="no structure named 'T'"):
        goals_from_dose([ClinicalGoal(2, "T", GoalKind.MAX_MEAN, 3.0)], np.ones((2, 2, 2)), m, 1.0)
    out, w = goals_from_dose(g, np.ones((2, 2, 2)), {"S": np.zeros((2, 2, 2), bool)}, 1.0)
    assert out == g and "empty" in w[0]
