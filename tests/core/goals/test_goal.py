"""ClinicalGoal: the GOALS-file form of docs/cli.md, validation, and evaluation on the DVH convention."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import InputError
from core.evaluation import dvh
from core.goals.evaluate import evaluate_goals, is_met
from core.goals.goal import ClinicalGoal, GoalKind, goals_to_json, load_goals, save_goals

CLI_EXAMPLE = {"goals": [
    {"priority": 1, "structure": "OuterTarget", "type": "min_dose_at_volume", "volume_pct": 95, "dose_gy": 50.0},
    {"priority": 2, "structure": "OuterTarget", "type": "max_dose_at_volume", "volume_pct": 10, "dose_gy": 55.0},
    {"priority": 2, "structure": "Core", "type": "max_dose_at_volume", "volume_pct": 10, "dose_gy": 25.0},
    {"priority": 3, "structure": "Core", "type": "max_mean", "dose_gy": 15.0, "tolerance_pct": 5},
]}


def test_cli_example_round_trips_exactly(tmp_path):
    p = tmp_path / "goals.json"
    p.write_text(json.dumps(CLI_EXAMPLE))
    goals = load_goals(p)
    assert [g.label for g in goals] == ["P1 OuterTarget D95 >= 50 Gy", "P2 OuterTarget D10 <= 55 Gy",
                                        "P2 Core D10 <= 25 Gy", "P3 Core mean <= 15 Gy"]
    assert json.loads(goals_to_json(goals)) == CLI_EXAMPLE
    save_goals(tmp_path / "again.json", goals)
    assert load_goals(tmp_path / "again.json") == goals


def test_every_kind_parses():
    more = [{"priority": 1, "structure": "Cord", "type": "max_dose_at_volume", "volume_cc": 0.03, "dose_gy": 45},
            {"priority": 2, "structure": "Lung", "type": "max_volume_at_dose", "dose_gy": 20, "volume_pct": 37},
            {"priority": 2, "structure": "PTV", "type": "min_mean", "dose_gy": 60},
            {"priority": 4, "structure": "Heart", "type": "alara"},
            {"priority": 2, "structure": "Heart", "type": "max_mean", "dose_gy": 4, "control": True, "note": "by hand"}]
    goals = [ClinicalGoal.from_dict(d) for d in more]
    assert [g.kind for g in goals] == [GoalKind.MAX_DOSE_AT_VOLUME, GoalKind.MAX_VOLUME_AT_DOSE, GoalKind.MIN_MEAN,
                                       GoalKind.ALARA, GoalKind.MAX_MEAN]
    assert goals[0].metric == "D0.03cc" and goals[1].metric == "V20Gy" and goals[1].value == 37
    assert goals[4].control and goals[4].to_dict()["control"] is True
    assert [g.to_dict() for g in goals][:4] == more[:4]


@pytest.mark.parametrize("d, match", [
    ({"priority": 1, "structure": "PTV", "type": "min_dose_at_volume", "volume_pct": 95, "dose_gy": -5},
     "cannot be negative"),
    ({"priority": 1, "structure": "PTV", "type": "min_dose_at_volume", "volume_pct": 101, "dose_gy": 50},
     "D101 % is impossible"),
    ({"priority": 1, "structure": "PTV", "type": "min_dose_at_volume", "volume_pct": 95, "dose_gy": 5000}, "cGy"),
    ({"priority": 1, "structure": "PTV", "type": "min_dose_at_volume", "volume_pct": 95, "dose_cgy": 5000},
     "doses are given in Gy"),
    ({"priority": 1, "structure": "PTV", "type": "max_mean", "dose_gy": 20, "unit": "%"}, "units are fixed"),
    ({"priority": 1, "structure": "PTV", "type": "max_mean", "dose_gy": 20, "volume_pct": 5}, "takes no volume"),
    ({"priority": 1, "structure": "PTV", "type": "max_dose_at_volume", "dose_gy": 20},
     "exactly one of volume_pct or volume_cc"),
    ({"priority": 1, "structure": "PTV", "type": "max_volume_at_dose", "dose_gy": 20, "volume_cc": 5}, "volume_pct"),
    ({"priority": 0, "structure": "PTV", "type": "max_mean", "dose_gy": 20}, "priority"),
    ({"priority": 1.5, "structure": "PTV", "type": "max_mean", "dose_gy": 20}, "priority"),
    ({"priority": 1, "structure": "", "type": "max_mean", "dose_gy": 20}, "structure name"),
    ({"priority": 1, "structure": "PTV", "type": "D95", "dose_gy": 20}, "unknown type"),
    ({"priority": 1, "structure": "PTV", "type": "max_mean"}, "dose_gy is required"),
    ({"priority": 1, "structure": "PTV", "type": "max_mean", "dose_gy": "high"}, "must be a number"),
    ({"structure": "PTV", "type": "max_mean", "dose_gy": 2}, "'priority' is missing"),
])
def test_bad_goals_are_input_errors(d, match):
    with pytest.raises(InputError, match=match):
        ClinicalGoal.from_dict(d)


def test_bad_goals_file_names_the_file(tmp_path):
    p = tmp_path / "g.json"
    p.write_text("{not json")
    with pytest.raises(InputError) as exc:
        load_goals(p)
    assert str(p) in str(exc.value)
    p.write_text(json.dumps({"goals": [CLI_EXAMPLE["goals"][0], {"priority": 1, "structure": "X", "type": "alara",
                                                                  "volume_pct": 3}]}))
    with pytest.raises(InputError, match="goal #2"):
        load_goals(p)
    with pytest.raises(InputError, match="not found"):
        load_goals(tmp_path / "missing.json")


def test_evaluation_equals_the_dvh_module():
    """Achieved values are exactly core.evaluation.dvh's endpoints (one convention everywhere)."""
    rng = np.random.default_rng(3)
    dose = rng.gamma(4.0, 5.0, size=(6, 7, 8)).astype(np.float32)
    mask = rng.random((6, 7, 8)) < 0.6
    vcc = 0.125
    goals = [ClinicalGoal(1, "S", GoalKind.MIN_DOSE_AT_VOLUME, 10.0, 95),
             ClinicalGoal(1, "S", GoalKind.MAX_DOSE_AT_VOLUME, 30.0, volume_cc=0.1),
             ClinicalGoal(1, "S", GoalKind.MAX_DOSE_AT_VOLUME, 30.0, volume_cc=2.0),
             ClinicalGoal(1, "S", GoalKind.MAX_MEAN, 20.0),
             ClinicalGoal(1, "S", GoalKind.MAX_VOLUME_AT_DOSE, 25.0, 30)]
    res = evaluate_goals(goals, dose, {"S": mask}, vcc)
    v = dvh.structure_doses(dose, mask)
    assert res[0].achieved == dvh.dose_at_volume_pct(v, 95)
    assert res[1].achieved == dvh.dose_at_volume_cc(v, 0.1, vcc)
    assert res[2].achieved == dvh.dose_at_volume_cc(v, 2.0, vcc)
    assert res[3].achieved == pytest.approx(dvh.mean_dose(v), rel=1e-12)
    assert res[4].achieved == dvh.volume_at_dose_pct(v, 25.0)
    for r in res:
        assert r.met == is_met(r.goal, r.achieved)
    # verdict: a hair on the safe side of the goal is met, a visible step over it is not
    g = goals[3]
    assert is_met(g, 20.004) and not is_met(g, 20.02)
