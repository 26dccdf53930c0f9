"""Plan comparison widget: linked views, DVH overlay equal to the core's DVHs, and a goal
table whose differences are the core's goal evaluations subtracted."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication

from core.goals.evaluate import evaluate_goals
from core.goals.goal import ClinicalGoal
from core.patient import CtImage, Patient, Structure, StructureRole
from widgets.dvh_panel import DvhCurve
from widgets.plan_compare import COL_DIFF, PlanCompare, difference_better
from widgets.viewer_model import StructureLayer

GOALS = [
    ClinicalGoal.from_dict({"priority": 1, "structure": "PTV", "type": "min_dose_at_volume", "volume_pct": 95,
                            "dose_gy": 50.0}),
    ClinicalGoal.from_dict({"priority": 2, "structure": "Bone", "type": "max_dose_at_volume", "volume_cc": 0.03,
                            "dose_gy": 40.0}),
    ClinicalGoal.from_dict({"priority": 2, "structure": "Bone", "type": "max_volume_at_dose", "dose_gy": 20.0,
                            "volume_pct": 30.0}),
    ClinicalGoal.from_dict({"priority": 3, "structure": "Body", "type": "max_mean", "dose_gy": 15.0}),
]


def _setup(qtbot, phantom):
    grid, hu, masks, dose, _xyz = phantom
    # plan B: hotter in the centre, cooler at the edge (a different plan, not a scaled copy)
    r = dose / dose.max()
    dose_b = (dose * (0.8 + 0.35 * r)).astype(np.float32)
    w = PlanCompare()
    qtbot.addWidget(w)
    w.resize(1200, 800)
    layers = [StructureLayer(n, m, c, True, role) for (n, m), c, role in
              zip(masks.items(), [(255, 0, 0), (200, 200, 200), (0, 255, 0)], ["TARGET", "OAR", "EXTERNAL"])]
    w.set_images(hu, grid, layers, masks["Body"])
    w.set_plans([("a", "Plan one"), ("b", "Plan two")], "a", "b")
    w.set_doses(dose, dose_b, 60.0, "Plan one", "Plan two")
    w.show()
    qtbot.waitExposed(w)
    return w, dose, dose_b


def _patient(phantom):
    grid, hu, masks, dose, _ = phantom
    p = Patient("phantom", grid, ct=CtImage(hu, grid))
    p.add_structure(Structure("PTV", masks["PTV"], StructureRole.TARGET))
    p.add_structure(Structure("Bone", masks["Bone"], StructureRole.OAR))
    p.add_structure(Structure("Body", masks["Body"], StructureRole.EXTERNAL))
    return p


def test_slices_crosshair_and_display_stay_synchronized(qtbot, phantom):
    w, _, _ = _setup(qtbot, phantom)
    a, b = w.model_a, w.model_b
    assert a.cursor == b.cursor
    # crosshair set in A moves B
    a.set_cursor((5, 10, 12))
    assert b.cursor == (5, 10, 12)
    # scrolling B's axial view (the wheel) moves A's slice too
    vb = w.views_b["axial"]
    before = a.cursor
    ev = QWheelEvent(QPointF(50, 50), QPointF(vb.mapToGlobal(QPoint(50, 50))), QPoint(0, 0), QPoint(0, 120),
                     Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(vb, ev)
    assert a.cursor != before and a.cursor == b.cursor
    assert w.views_a["axial"].slice_index == vb.slice_index
    # window/level, structure visibility and dose display follow, both ways, without echo loops
    b.apply_preset("bone")
    assert (a.window, a.level) == (1800.0, 400.0) and w.preset_box.currentData() == "bone"
    a.set_structure_visible("Bone", False)
    assert not b.structures["Bone"].visible
    w.dose_mode_box.setCurrentIndex(w.dose_mode_box.findData("wash"))
    assert a.dose_mode == b.dose_mode == "wash"
    b.set_dose_display(levels=[100, 50], unit="pct")
    assert a.isodose_levels == (100.0, 50.0)
    # zoom (Ctrl+wheel) on A is copied to B on the next event-loop turn
    va = w.views_a["axial"]
    ev = QWheelEvent(QPointF(60, 60), QPointF(va.mapToGlobal(QPoint(60, 60))), QPoint(0, 0), QPoint(0, 240),
                     Qt.MouseButton.NoButton, Qt.KeyboardModifier.ControlModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(va, ev)
    qtbot.waitUntil(lambda: vb.zoom == va.zoom and va.zoom > 1.0, timeout=2000)
    assert vb.pan == va.pan
    # both sides show their own dose on the same 100 % reference
    assert a.reference_gy == b.reference_gy == 60.0
    assert a.dose_gy is not b.dose_gy
    # the view chooser switches both sides
    w.set_view("coronal")
    assert w.stack_a.currentWidget() is w.views_a["coronal"] and w.stack_b.currentWidget() is w.views_b["coronal"]


def test_difference_table_is_core_evaluation_b_minus_a(qtbot, phantom):
    from app.controllers.compare import compare_task

    w, dose_a, dose_b = _setup(qtbot, phantom)
    patient = _patient(phantom)
    result = compare_task(patient, ("a", "Plan one", dose_a), ("b", "Plan two", dose_b), GOALS, "test goals")
    w.set_goal_results(result["results_a"], result["results_b"], result["note"])
    masks = {n: s.mask for n, s in patient.structures.items()}
    core_a = evaluate_goals(GOALS, dose_a, masks, patient.grid.voxel_volume_cc)
    core_b = evaluate_goals(GOALS, dose_b, masks, patient.grid.voxel_volume_cc)
    rows = w.table_rows()
    assert len(rows) == len(GOALS)
    t = w.goal_table
    for i, (g, ra, rb) in enumerate(zip(GOALS, core_a, core_b)):
        prio, structure, label, a, b, diff, met_a, met_b = rows[i]
        assert (prio, structure, label) == (g.priority, g.structure, g.label)
        assert a == ra.achieved and b == rb.achieved  # the core's numbers, unrounded
        assert diff == pytest.approx(rb.achieved - ra.achieved, abs=1e-12)
        assert (met_a, met_b) == (ra.met, rb.met)
        # what the planner reads: two decimals in the goal's unit, signed difference
        assert t.item(i, COL_DIFF).text() == f"{rb.achieved - ra.achieved:+.2f} {g.unit}"
    # the differences are real (plan B differs from A on every goal), so the test can fail
    assert all(abs(r[5]) > 0.01 for r in rows)
    # colour: B's higher PTV D95 is better, a higher OAR value is worse
    assert difference_better(GOALS[0], 1.0) is True and difference_better(GOALS[1], 1.0) is False
    assert difference_better(GOALS[3], 0.001) is None
    green = t.item(0, COL_DIFF).foreground().color()
    assert (green.green() > green.red()) == (rows[0][5] > 0)
    n_a, n_b = sum(bool(r.met) for r in core_a), sum(bool(r.met) for r in core_b)
    assert f"A {n_a}/4" in w.summary_label.text() and f"B {n_b}/4" in w.summary_label.text()
    # mismatched goal lists are refused
    with pytest.raises(ValueError):
        w.set_goal_results(result["results_a"], result["results_b"][:-1])


def test_dvh_overlay_matches_core_dvhs_a_solid_b_dashed(qtbot, phantom):
    from app.controllers.compare import compare_task
    from core.evaluation.dvh import cumulative_dvh

    w, dose_a, dose_b = _setup(qtbot, phantom)
    patient = _patient(phantom)
    result = compare_task(patient, ("a", "Plan one", dose_a), ("b", "Plan two", dose_b), GOALS)
    w.set_dvh([DvhCurve(c["structure"], c["plan"], c["color"], c["dose_gy"], c["volume_pct"])
               for c in result["curves"]])
    plot = w.dvh.plot
    assert plot.plans == ["Plan one", "Plan two"]  # A first: drawn solid; B dashed
    assert len(plot.curves) == 2 * len(patient.structures)
    for c in plot.curves:
        dose = dose_a if c.plan == "Plan one" else dose_b
        bins, _vcc, vpct = cumulative_dvh(dose, patient.structures[c.structure].mask, patient.grid)
        np.testing.assert_array_equal(c.dose_gy, bins)
        np.testing.assert_array_equal(c.volume_pct, vpct)
    ptv_a = next(c for c in plot.curves if c.structure == "PTV" and c.plan == "Plan one")
    ptv_b = next(c for c in plot.curves if c.structure == "PTV" and c.plan == "Plan two")
    assert not np.array_equal(ptv_a.volume_pct, ptv_b.volume_pct)
    assert "Body" in {c.structure for c in plot.shown_curves()}
    w.model_b.set_structure_visible("Body", False)
    assert "Body" not in {c.structure for c in plot.shown_curves()}


def test_plan_choice_and_swap_emit_keys(qtbot, phantom):
    w, _, _ = _setup(qtbot, phantom)
    with qtbot.waitSignal(w.plansChosen) as sig:
        w.swap_button.click()
    assert sig.args == ["b", "a"] and w.plan_keys() == ("b", "a")
    with qtbot.waitSignal(w.plansChosen) as sig:
        w.box_b.setCurrentIndex(w.box_b.findData("b"))
    assert sig.args == ["b", "b"]
    assert "same plan" in w.title_b.text()
