"""Refinement through the window: optimize cold -> hot patch from the plan's dose -> its
goal in the goal table -> Refine plan (warm, same matrix) -> a new plan version whose patch
maximum went down with every met P1 goal kept; a rule-made ring follows an edit of its
source; bad input (no plan, empty patch, a region outside the body, a name clash) is a
clear message with nothing changed.

The patient is the small synthetic head-and-neck phantom of the pipeline tests (14 x 36 x 36
voxels of 4 mm, PTV70 and a spinal cord), as in ``test_gui_planning_steps.py``. Its plan
has no spot >= 95 % of the prescription 10 mm outside the PTV (the ring goal holds the
fall-off there), so the patch is taken at 70 % and 5 mm out: 24 voxels (1.5 cc) whose
maximum (52-53 Gy; the cold plan varies a little from run to run) the refinement lowered by
9-10 % in one warm round in runs here.
"""

import numpy as np
import pytest

import widgets  # noqa: F401  (PySide6 reference-count work-around before any Qt use)
from core import helper_structures as hs
from app.controllers.refinement import PATCH_GOAL_PCT_OF_MAX


def _idle(ws) -> bool:
    # a structure change starts its DVH task after a short debounce: wait for that one too,
    # or the next step would find the runner busy
    return not ws.runner.busy and not ws.display._dvh_timer.isActive()


def _run(qtbot, ws, task, timeout=120000):
    """Wait for a step's worker to succeed, then for everything it started (DVHs, regeneration)."""
    assert task is not None, ws.errors
    with qtbot.waitSignal(task.succeeded, timeout=timeout, raising=True):
        pass
    qtbot.waitUntil(lambda: _idle(ws), timeout=timeout)
    assert ws.errors == [], ws.errors


def _error(ws) -> str:
    """The message the planner was shown (headless: collected), then forgotten."""
    assert ws.errors, "no message was shown"
    msg = str(ws.errors[-1])
    ws.errors.clear()
    return msg


def _goals_by_label(metrics):
    from core.goals.goal import ClinicalGoal

    return {ClinicalGoal.from_dict({k: v for k, v in g.items() if k not in ("achieved", "met")}).label: g
            for g in metrics["goals"]}


def test_hot_patch_goal_refine_lowers_the_patch_and_keeps_p1(qtbot, loaded, monkeypatch):
    ws = loaded
    session, table, actions = ws.session, ws.window.goal_table, ws.actions
    _run(qtbot, ws, ws.planning.load_template("hn"))
    assert not actions["plan.refine"].isEnabled()            # nothing to refine yet
    _run(qtbot, ws, ws.planning.optimize())
    v1 = session.history[0]
    r1 = session.plans[v1.key].info["result"]
    dij = session.dij
    assert actions["plan.refine"].isEnabled() and actions["contour.hot_patch"].isEnabled()

    # from here on no dose matrix may be computed: the refinement reuses the plan's
    import core.dose.influence

    def no_new_matrix(*a, **k):
        raise AssertionError("a dose-influence matrix was computed")
    monkeypatch.setattr(core.dose.influence, "compute_influence", no_new_matrix)

    # -- hot patch from the shown plan's dose, its goal added ------------------------------------
    _run(qtbot, ws, ws.refinement.hot_patch(threshold_pct=70.0, margin_mm=5.0, add_goal=True))
    patient = session.patient
    patch = patient.structures["Patch_hot"]
    assert patch.role.value == "HELPER" and patch.rule["kind"] == "hot_patch" and patch.n_voxels() >= 5
    dose1 = session.plans[v1.key].dose.dose_gy
    assert dose1[patch.mask].min() >= 0.70 * 70.0 - 1e-3       # the patch is where the plan was >= 70 %
    max_before = float(dose1[patch.mask].max())
    goal = next(g for g in session.goals if g.structure == "Patch_hot")
    assert goal.priority == 3 and goal.metric == "D0.03cc"
    row = next(i for i, g in enumerate(table.goals()) if g.structure == "Patch_hot")
    assert table.model.changed_rows() == [row]                # new: not optimized yet
    # the table shows how far the plan is from it: the goal asks 95 % of the near-max now
    near_max = table.model.achieved(row)
    assert near_max <= max_before and goal.dose_gy == pytest.approx(PATCH_GOAL_PCT_OF_MAX / 100.0 * near_max, abs=0.01)
    assert table.model.met(row) is False
    assert "Patch_hot" in ws.viewer_model.structures          # shown in the views
    assert ws.refinement.focus() == {"Patch_hot"}

    # -- Refine plan (F10): warm, same matrix, a new version ----------------------------------------
    actions["plan.refine"].trigger()
    task = next(t for t in ws.runner.tasks if t.name == "Refining plan")
    _run(qtbot, ws, task)
    assert len(session.history) == 2
    v2 = session.history[1]
    r2 = session.plans[v2.key].info["result"]
    assert "refined" in v2.name and v2.warm and session.active_plan == v2.key
    assert r2.dij is dij and session.dij is dij and r2.metrics["dose_matrix_reused"]
    assert session.optimization is r2.optimization
    assert goal in v2.goals and goal not in v1.goals
    max_after = float(r2.final_dose.dose_gy[patch.mask].max())
    before, after = _goals_by_label(r1.metrics), _goals_by_label(r2.metrics)
    # issue #9: the patch's near-max (its goal, D0.03cc) at least 5 % lower and the goal met;
    # the hottest single voxel, on the patch's edge next to the target, lower too
    # (measured: near-max 51.92 -> 45.76 Gy, -11.9 %; single voxel 52.03 -> 49.52 Gy, -4.8 %)
    assert after[goal.label]["met"] and after[goal.label]["achieved"] <= 0.95 * near_max, (near_max, after[goal.label])
    assert max_after < max_before, (max_before, max_after)
    assert r2.metrics["refine"]["patches"]["Patch_hot"]["max_change_pct"] == pytest.approx(
        100 * (max_after / max_before - 1), abs=0.01)
    lost = [k for k, g in before.items() if g["priority"] == 1 and g["met"] and not after[k]["met"]]
    assert lost == [] and r2.metrics["all_p1_met"] == r1.metrics["all_p1_met"]
    assert table.model.changed_rows() == []                   # the table shows the refined plan
    assert table.model.achieved(row) == pytest.approx(after[goal.label]["achieved"], abs=0.05)
    assert v2.name in ws.window.dvh_panel.plot.plans
    assert ws.refinement.focus() == set()                     # the patch was refined
    assert "Patch_hot" in session.state and "%" in session.state
    print(f"\npatch near-max {near_max:.2f} -> {after[goal.label]['achieved']:.2f} Gy, "
          f"max {max_before:.2f} -> {max_after:.2f} Gy ({100 * (max_after / max_before - 1):+.1f} %), "
          f"refine {r2.metrics['timings_s']['optimize']:.2f} s optimize vs cold "
          f"{r1.metrics['timings_s']['optimize']:.2f} s")


def test_rule_made_ring_follows_an_edit_of_its_source(qtbot, loaded):
    ws = loaded
    session = ws.session
    rule = hs.RingRule("Ring_cord", target="SpinalCord", inner_mm=0.0, outer_mm=8.0)
    _run(qtbot, ws, ws.refinement.make_helper(rule))
    patient = session.patient
    ring0 = patient.structures["Ring_cord"].mask.copy()
    assert ring0.any() and "Ring_cord" in ws.viewer_model.structures
    assert ws.refinement.regenerate() is None                 # nothing stale: no task

    # widen the cord with the polygon tool on its central axial slice
    ed = ws.contouring.editor
    cord = patient.structures["SpinalCord"].mask
    centre = np.argwhere(cord).mean(axis=0).round().astype(int)
    m = ws.viewer_model.mappings["axial"]
    r, c, s = m.to_screen(centre)
    ed.set_active_structure("SpinalCord")
    assert ed.fill_polygon("axial", int(s), [(r - 2, c + 1), (r - 2, c + 6), (r + 2, c + 6), (r + 2, c + 1)])
    qtbot.waitUntil(lambda: _idle(ws), timeout=20000)
    assert ws.errors == []
    grown = patient.structures["SpinalCord"].mask
    assert grown.sum() > cord.sum()
    ring1 = patient.structures["Ring_cord"].mask
    assert not np.array_equal(ring1, ring0)                   # regenerated ...
    assert np.array_equal(ring1, hs.build_mask(patient, rule))  # ... from the edited cord
    assert not (ring1 & grown).any()
    assert ws.refinement.regenerate() is None                 # and no loop: it is up to date
    assert patient.structures["Ring_cord"].rule["source_hash"] == hs.source_hash(patient, rule)


def test_bad_input_is_a_clear_message_and_changes_nothing(qtbot, loaded):
    from app.session import PlanEntry
    from core.patient import Dose, Structure, StructureRole

    ws = loaded
    session = ws.session
    patient = session.patient
    names = list(patient.structures)
    session.set_active_plan(None)
    assert ws.refinement.hot_patch_dialog() is None
    assert "needs a plan" in _error(ws)
    assert ws.refinement.refine() is None and "no goals" in _error(ws)

    # a dose that is hot only inside the PTV: no hot patch outside it
    grid = patient.grid
    ptv = patient.structures["PTV70"].mask
    dose = np.where(ptv, 72.0, 20.0).astype(np.float32)
    session.add_plan(PlanEntry("test dose", "test dose", Dose(dose, grid, "test")))
    qtbot.waitUntil(lambda: _idle(ws), timeout=20000)  # its DVHs
    task = ws.refinement.hot_patch()
    with qtbot.waitSignal(task.failed, timeout=20000):
        pass
    qtbot.waitUntil(lambda: _idle(ws), timeout=20000)
    msg = _error(ws)
    assert "Patch_hot" in msg and "is empty" in msg and "66.50 Gy" in msg
    assert list(patient.structures) == names

    # a region outside the body
    body = patient.external_mask()
    patient.add_structure(Structure("Couch", ~body, StructureRole.HELPER))
    names = list(patient.structures)
    task = ws.refinement.hot_patch(threshold_pct=10.0, margin_mm=0.0, region="Couch")
    with qtbot.waitSignal(task.failed, timeout=20000):
        pass
    qtbot.waitUntil(lambda: _idle(ws), timeout=20000)
    assert "outside the body" in _error(ws) and list(patient.structures) == names

    # a name clash with a structure not made by a rule
    assert ws.refinement.make_helper(hs.RingRule("SpinalCord", target="PTV70", outer_mm=10.0)) is None
    assert "already exists" in _error(ws)
    # the dialog says so too, and stays open
    dlg = ws.refinement.helper_from_rule_dialog("ring")
    dlg.name_edit.setText("SpinalCord")
    dlg.accept()
    assert dlg.isVisible() and "already exists" in dlg.error_label.text()
    dlg.name_edit.setText("Ring_PTV")
    dlg.accept()
    assert not dlg.isVisible()
    qtbot.waitUntil(lambda: _idle(ws), timeout=20000)
    assert ws.errors == [] and "Ring_PTV" in patient.structures
    assert patient.structures["Ring_PTV"].role is StructureRole.HELPER


def test_cancel_keeps_the_best_round(qtbot, loaded):
    from PySide6.QtCore import Qt

    ws = loaded
    session = ws.session
    _run(qtbot, ws, ws.planning.load_template("hn"))
    _run(qtbot, ws, ws.planning.optimize())
    _run(qtbot, ws, ws.refinement.hot_patch(threshold_pct=70.0, margin_mm=5.0, add_goal=True))
    v1 = session.history[0]

    # cancelled before any round: nothing changes
    task = ws.refinement.refine()
    task.worker.progress.connect(lambda f, msg, eta: task.cancel(), Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(task.cancelled, timeout=60000):
        pass
    qtbot.waitUntil(lambda: _idle(ws), timeout=60000)
    assert ws.errors == [] and [v.key for v in session.history] == [v1.key]
    assert session.state == "refinement cancelled: the plan is unchanged"
    assert session.optimization is v1.optimization

    # cancelled once a round was accepted: that round is kept as a (cancelled) version
    task = ws.refinement.refine()
    task.worker.progress.connect(lambda f, msg, eta: task.cancel() if "accepted" in msg else None,
                                 Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(task.cancelled, timeout=60000):
        pass
    qtbot.waitUntil(lambda: _idle(ws), timeout=60000)
    assert ws.errors == [] and len(session.history) == 2, session.state
    v2 = session.history[1]
    assert v2.cancelled and "refined" in v2.name and session.active_plan == v2.key
    assert session.optimization is v2.optimization and session.optimization is not v1.optimization
    assert session.plans[v2.key].dose.label == "cancelled"
    patch = session.patient.structures["Patch_hot"].mask
    assert session.plans[v2.key].dose.dose_gy[patch].max() < session.plans[v1.key].dose.dose_gy[patch].max()
    assert ws.refinement.focus() == {"Patch_hot"}            # not refined to the end: still the focus
