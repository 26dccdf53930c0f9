"""Plan versions: save and load atomically, lineage, compare, revert, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import InputError
from core.goals.goal import ClinicalGoal, GoalKind
from core.plan_history import PlanHistory

GOALS = [ClinicalGoal(1, "PTV", GoalKind.MIN_DOSE_AT_VOLUME, 60.0, 95),
         ClinicalGoal(3, "Cord", GoalKind.MAX_MEAN, 20.0)]


def _metrics(ptv, cord):
    return {"goals": [dict(GOALS[0].to_dict(), achieved=ptv, met=ptv >= 60),
                      dict(GOALS[1].to_dict(), achieved=cord, met=cord <= 20)], "all_p1_met": ptv >= 60,
            "odd": float("nan")}


def test_versions_round_trip_and_revert(tmp_path):
    h = PlanHistory(tmp_path / "plan")
    assert len(h) == 0 and h.latest is None
    w1 = np.linspace(0, 5, 30).astype(np.float32)
    dose = np.full((4, 5, 6), 2.5, np.float32)
    v1 = h.add(GOALS, w1, metrics=_metrics(59.8, 18.0), note="automated", dose_gy=dose)
    tighter = [GOALS[0], GOALS[1].with_value(15.0)]
    v2 = h.add(tighter, w1 * 1.1, name="cord pushed", parent=v1.name, metrics=_metrics(60.1, 16.5))
    assert (v1.name, v2.name) == ("v1", "cord pushed") and h.next_name() == "v3"

    again = PlanHistory(tmp_path / "plan")                   # a new session reads the same versions
    assert again.names == ["v1", "cord pushed"]
    assert again.get("v1").note == "automated" and again.get("cord pushed").parent == "v1"
    goals, w = again.revert("v1")
    assert goals == GOALS and np.array_equal(w, w1)
    assert again.revert("cord pushed")[0][1].dose_gy == 15.0
    assert np.array_equal(again.dose("v1"), dose) and again.dose("cord pushed") is None
    assert again.lineage("cord pushed") == ["cord pushed", "v1"]
    rows = {r["label"]: r for r in again.compare("v1", "cord pushed")}
    assert rows["P3 Cord mean <= 20 Gy"]["change"] == pytest.approx(-1.5)
    assert rows["P1 PTV D95 >= 60 Gy"]["met_a"] is False and rows["P1 PTV D95 >= 60 Gy"]["met_b"] is True
    index = json.loads((tmp_path / "plan" / "history" / "history.json").read_text())
    assert index["format"] == "openatp-plan-history" and index["versions"][0]["metrics"]["odd"] is None
    assert not list((tmp_path / "plan" / "history").glob("*.tmp"))   # atomic writes leave no temp files


def test_bad_input_changes_nothing(tmp_path):
    h = PlanHistory(tmp_path)
    h.add(GOALS, np.ones(4))
    with pytest.raises(InputError, match="'v1' already exists"):
        h.add(GOALS, np.ones(4), name="v1")
    with pytest.raises(InputError, match="no plan version named 'nope'"):
        h.add(GOALS, np.ones(4), parent="nope")
    with pytest.raises(InputError, match="not negative"):
        h.add(GOALS, -np.ones(4))
    with pytest.raises(InputError, match="name"):
        h.add(GOALS, np.ones(4), name="../escape")
    with pytest.raises(InputError, match="clinical goals"):
        h.add([], np.ones(4))
    assert PlanHistory(tmp_path).names == ["v1"]
    (tmp_path / "history" / "v1.npz").unlink()
    with pytest.raises(InputError, match="v1.npz is missing"):
        PlanHistory(tmp_path).weights("v1")
    (tmp_path / "history" / "history.json").write_text("{\"format\": \"x\"}")
    with pytest.raises(InputError, match="not an OpenATP plan history"):
        PlanHistory(tmp_path)
