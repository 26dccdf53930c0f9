"""Planning steps for interactive planning, and institution templates saved from a goal list."""

import json

import numpy as np
import pytest

from core.errors import Cancelled, InputError
from core.goals.evaluate import evaluate_goals
from core.goals.goal import ClinicalGoal, GoalKind
from core.progress import CancelToken, Progress
from tests.core.test_pipeline import GOALS, small_patient


@pytest.fixture(scope="module")
def patient():
    return small_patient()


@pytest.fixture(scope="module")
def dij(patient):
    from core.dose.beams import parse_beams
    from core.dose.influence import compute_influence

    return compute_influence(patient, parse_beams("imrt5"), beamlet_mm=5.0, device="cpu")


def test_goal_values_are_the_core_evaluation(patient):
    from core.planning_steps import goal_key, goal_values

    rng = np.random.default_rng(3)
    dose = rng.uniform(0, 70, patient.grid.shape).astype(np.float32)
    vals = goal_values(GOALS, patient, dose)
    masks = {n: s.mask for n, s in patient.structures.items()}
    for r in evaluate_goals(GOALS, dose, masks, patient.grid.voxel_volume_cc):
        assert vals[goal_key(r.goal)] == pytest.approx(r.achieved)
    # a max and a min on the same metric share one value
    flipped = ClinicalGoal(2, "PTV70", GoalKind.MAX_DOSE_AT_VOLUME, dose_gy=75.0, volume_pct=95.0)
    assert goal_key(flipped) == goal_key(GOALS[0])


def test_optimize_step_bad_input(patient, dij):
    from core.planning_steps import optimize_step

    with pytest.raises(InputError, match="empty"):
        optimize_step(patient, [], dij=dij)
    with pytest.raises(InputError, match="does not have: Brain"):
        optimize_step(patient, [ClinicalGoal(1, "Brain", GoalKind.MAX_MEAN, dose_gy=10.0)], dij=dij)
    with pytest.raises(InputError, match="beamlets"):
        optimize_step(patient, GOALS, dij=dij, warm_start=np.ones(dij.n_beamlets + 1))
    with pytest.raises(InputError, match="dose-influence matrix"):
        optimize_step(patient, GOALS, warm_start=np.ones(dij.n_beamlets))


def test_cancel_keeps_the_matrix_and_the_best_fluence_then_warm_start_finishes(patient, dij):
    from core.pipeline import PlanOptions
    from core.planning_steps import PartialPlan, optimize_step, values_from_metrics

    cancel = CancelToken()

    def on_progress(ev):  # cancel at the optimizer's first report (same thread: deterministic)
        if ev.message.startswith("optimize"):
            cancel.cancel()

    opts = PlanOptions(device="cpu")
    with pytest.raises(Cancelled) as info:
        optimize_step(patient, GOALS, dij=dij, options=opts, progress=Progress(on_progress), cancel=cancel)
    partial = info.value.result
    assert isinstance(partial, PartialPlan) and partial.dij is dij and partial.goals == GOALS
    # the optimizer had started: its best fluence so far comes back, on the matrix's beamlets
    assert partial.optimization is not None and partial.optimization.weights.shape == (dij.n_beamlets,)
    done = optimize_step(patient, GOALS, dij=partial.dij, warm_start=partial.optimization, options=opts)
    assert done.metrics["warm_start"] and done.metrics["dose_matrix_reused"] and done.dij is dij
    achieved = values_from_metrics(done.metrics)
    met = {(g["structure"],
            ClinicalGoal.from_dict({k: v for k, v in g.items() if k not in ("achieved", "met")}).metric):
           g["achieved"] for g in done.metrics["goals"]}
    assert achieved == pytest.approx(met, abs=1e-3)


def test_cancel_before_the_matrix_is_done_keeps_nothing(patient):
    from core.planning_steps import optimize_step

    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(Cancelled) as info:
        optimize_step(patient, GOALS, site="hn", cancel=cancel)
    assert info.value.result.dij is None and info.value.result.optimization is None


def test_template_from_goals_round_trips_through_the_user_folder(tmp_path, monkeypatch):
    from dataclasses import replace

    from core.goals.templates import (available_templates, goals_for_patient, load_template, save_user_template,
                                      template_from_goals)
    from core.patient import Structure, StructureRole

    monkeypatch.setenv("OPENATP_USER_DIR", str(tmp_path))
    p = small_patient()
    # a patient whose cord is spelled differently from the template
    cord = p.structures.pop("SpinalCord")
    p.add_structure(Structure("Spinal_Cord", cord.mask, StructureRole.OAR))
    goals, _ = goals_for_patient(p, "hn")
    assert "Ring_PTV70_5_15mm" in {g.structure for g in goals}
    i = next(i for i, g in enumerate(goals) if g.structure == "Spinal_Cord" and g.priority == 1)
    goals[i] = replace(goals[i], dose_gy=40.0, control=True)
    j = next(i for i, g in enumerate(goals) if g.structure.startswith("Ring"))
    goals[j] = goals[j].with_value(60.0)
    goals.append(ClinicalGoal(3, "BODY", GoalKind.MAX_MEAN, dose_gy=15.0))
    doc, warnings = template_from_goals(goals, "hn_clinic", "HN clinic", base=load_template("hn"),
                                        roles={"BODY": "EXTERNAL"}, prescriptions=p.prescriptions)
    assert warnings == []
    assert any(g["structure"] == "SpinalCord" and g["dose_gy"] == 40.0 for g in doc["goals"])  # template name
    assert "Spinal_Cord" not in doc["structures"] and doc["structures"]["BODY"]["role"] == "EXTERNAL"
    assert all("control" not in g for g in doc["goals"])
    ring = {r["name"]: r for r in doc["rings"]}
    assert set(ring) == {"Ring_PTV70_5_15mm"}  # the PTV56 ring had no goal (no PTV56 here)
    path = save_user_template(doc)
    assert path == tmp_path / "protocols" / "hn_clinic.json" and json.loads(path.read_text())["site"] == "hn_clinic"
    assert "hn_clinic" in available_templates() and "hn" in available_templates()
    again, _ = goals_for_patient(p, "hn_clinic")
    # the same goals for the same patient (the ring value through its % of the prescription)
    key = [(g.priority, g.structure, g.kind, g.metric, round(g.value or 0, 2)) for g in goals]
    assert sorted(key, key=str) == sorted([(g.priority, g.structure, g.kind, g.metric, round(g.value or 0, 2))
                                           for g in again], key=str)
    with pytest.raises(InputError, match="already exists"):
        save_user_template(doc)
    save_user_template(doc, overwrite=True)
    with pytest.raises(InputError, match="site key"):
        template_from_goals(goals, "HN clinic!", "x")
    with pytest.raises(InputError, match="empty"):
        template_from_goals([], "x", "x")
