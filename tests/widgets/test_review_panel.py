"""Review panel: keyboard answering, linked views with one isodose scale, neutral DVH and goal table."""

import numpy as np
import pytest
from PySide6.QtCore import Qt

from core.evaluation.dvh import cumulative_dvh
from core.patient import CtImage, Patient, Prescription, Structure, StructureRole
from core.review.case_data import GoalRow, ReviewCaseData, StructureDvh
from core.review.questionnaire import get_questionnaire
from tests.widgets.conftest import make_phantom
from widgets.review_panel import ReviewPanel, format_goal_value


def _case(position=0, answers=None):
    grid, hu, masks, dose, _ = make_phantom()
    roles = {"PTV": StructureRole.TARGET, "Bone": StructureRole.OAR, "Body": StructureRole.EXTERNAL}
    colors = {"PTV": (255, 0, 0), "Bone": (0, 200, 0), "Body": (0, 0, 255)}
    structures = {n: Structure(n, masks[n], roles[n], colors[n]) for n in masks}
    patient = Patient("case_x", grid, CtImage(hu, grid), structures, [Prescription("PTV", 60.0, 30)])
    doses = {"A": dose, "B": (dose * 0.9).astype(np.float32)}
    dvh = {h: [StructureDvh(n, colors[n], *cumulative_dvh(doses[h], masks[n], grid)[::2]) for n in masks]
           for h in "AB"}
    goals = [GoalRow("P1 PTV D95 >= 57 Gy", "Gy", {"A": 57.8, "B": 52.02}, {"A": True, "B": False}),
             GoalRow("Bone mean", "Gy", {"A": 20.0, "B": None}, {"A": None, "B": None})]
    return ReviewCaseData("case_x", "HN", position, 5, patient, grid, doses, 60.0, dvh, goals, "template hn",
                          ("Body",), dict(answers or {}))


@pytest.fixture
def panel(qtbot):
    p = ReviewPanel()
    qtbot.addWidget(p)
    p.resize(1400, 900)
    p.set_questionnaire(get_questionnaire())
    p.show()
    qtbot.waitExposed(p)
    p.activateWindow()
    qtbot.waitUntil(lambda: p.isActiveWindow(), timeout=3000)
    return p


def test_keys_answer_move_and_navigate(qtbot, panel):
    got, nexts, prevs = [], [], []
    panel.answerChosen.connect(lambda q, v: got.append((q, v)))
    panel.nextRequested.connect(lambda: nexts.append(1))
    panel.previousRequested.connect(lambda: prevs.append(1))
    panel.show_case(_case())
    panel.setFocus()
    assert panel.current == 0
    qtbot.keyClick(panel, Qt.Key.Key_1)           # A acceptable: agree -> moves to statement 2
    qtbot.keyClick(panel, Qt.Key.Key_3)           # B: cannot judge
    qtbot.keyClick(panel, Qt.Key.Key_Down)        # skip "prefer"
    qtbot.keyClick(panel, Qt.Key.Key_2)           # generated_a: disagree -> back to the open "prefer"
    assert panel.current == 2
    qtbot.keyClick(panel, Qt.Key.Key_Up)
    qtbot.keyClick(panel, Qt.Key.Key_Tab)
    qtbot.keyClick(panel, Qt.Key.Key_2)           # prefer_a: disagree
    assert got == [("acceptable_a", "agree"), ("acceptable_b", "cannot_judge"), ("generated_a", "disagree"),
                   ("prefer_a", "disagree")]
    assert panel.answers() == dict(got)
    qtbot.keyClick(panel, Qt.Key.Key_N)
    qtbot.keyClick(panel, Qt.Key.Key_Return)
    qtbot.keyClick(panel, Qt.Key.Key_P)
    assert len(nexts) == 2 and len(prevs) == 1
    # the comment field is the last stop; digits and letters typed there are text, not answers
    comments = []
    panel.commentChanged.connect(lambda q, t: comments.append((q, t)))
    assert panel.current == 2  # all answered: the cursor stayed on the last one given
    qtbot.keyClick(panel, Qt.Key.Key_Tab)
    qtbot.keyClick(panel, Qt.Key.Key_Tab)
    assert panel.comment_edit.hasFocus()
    qtbot.keyClicks(panel.comment_edit, "cord 2 hot, n")
    assert panel.comment_edit.text() == "cord 2 hot, n" and len(got) == 4 and len(nexts) == 2
    qtbot.keyClick(panel.comment_edit, Qt.Key.Key_Tab)  # leaving the field saves the comment
    assert comments[-1] == ("comment", "cord 2 hot, n") and not panel.comment_edit.hasFocus()
    # clicking a button answers too
    panel.rows[0].buttons["disagree"].click()
    assert got[-1] == ("acceptable_a", "disagree")


def test_stored_answers_shown_and_cursor_on_first_open_statement(qtbot, panel):
    panel.show_case(_case(answers={"acceptable_a": "agree", "acceptable_b": "disagree", "comment": "ok"}))
    assert panel.rows[0].value() == "agree" and panel.rows[1].value() == "disagree"
    assert panel.rows[2].value() is None and panel.current == 2
    assert panel.comment_edit.text() == "ok"
    panel.set_progress(3, 5, 2, "case_x", "HN")
    assert panel.progress_label.text().startswith("Case 4 of 5")
    assert panel.progress_bar.value() == 2 and panel.progress_bar.maximum() == 5


def test_views_linked_same_isodose_scale_neutral_dvh_and_goals(qtbot, panel):
    data = _case()
    panel.show_case(data)
    a, b = panel.models["A"], panel.models["B"]
    # one reference dose for both: the same % is the same Gy on each side
    assert a.reference_gy == b.reference_gy == 60.0
    assert a.isodose_levels_gy() == b.isodose_levels_gy()
    np.testing.assert_array_equal(a.dose_gy, data.doses_gy["A"])
    np.testing.assert_array_equal(b.dose_gy, data.doses_gy["B"])
    assert (a.dose_label, b.dose_label) == ("Plan A", "Plan B")
    a.step_slice("axial", 3)
    assert b.cursor == a.cursor
    b.set_cursor((2, 5, 7))
    assert a.cursor == (2, 5, 7)
    a.set_window_level(1500, -600)
    assert (b.window, b.level) == (1500.0, -600.0)
    panel.viewers["B"].levels_edit.setText("100, 50")
    panel.viewers["B"].levels_edit.editingFinished.emit()
    assert a.isodose_levels == b.isodose_levels == (100.0, 50.0)
    assert panel.viewers["A"].levels_edit.text() == "100, 50"
    b.set_dose_display(mode="wash")
    assert a.dose_mode == "wash"
    # the body outline is hidden in both views and the DVH
    assert not a.structures["Body"].visible and not b.structures["Body"].visible
    # DVH: plans named only "Plan A" / "Plan B", A first (solid), B second (dashed); each
    # structure has one colour for both plans
    plot = panel.dvh
    assert plot.plans == ["Plan A", "Plan B"]
    assert {c.structure for c in plot.curves} == {"PTV", "Bone"}
    for name in ("PTV", "Bone"):
        cs = [c for c in plot.curves if c.structure == name]
        assert len(cs) == 2 and cs[0].color == cs[1].color
    # goal table: the same format in both columns
    t = panel.goal_table
    assert [t.horizontalHeaderItem(i).text() for i in range(3)] == ["Goal", "Plan A", "Plan B"]
    assert (t.item(0, 1).text(), t.item(0, 2).text()) == ("57.80 Gy  ✓", "52.02 Gy  ✗")
    assert (t.item(1, 1).text(), t.item(1, 2).text()) == ("20.00 Gy", "–")
    assert t.item(0, 1).textAlignment() == t.item(0, 2).textAlignment()
    assert t.item(0, 1).font() == t.item(0, 2).font()


def test_format_goal_value():
    assert format_goal_value(69.934, "Gy", True) == "69.93 Gy  ✓"
    assert format_goal_value(12.0, "%", False) == "12.00 %  ✗"
    assert format_goal_value(float("nan"), "Gy", None) == "–"


def test_finished_page(qtbot, panel):
    panel.show_case(_case())
    panel.show_finished(5)
    assert panel.progress_label.text() == "All 5 cases answered"
    assert panel.models["A"].dose_gy is None and panel.dvh.curves == []
    got = []
    panel.answerChosen.connect(lambda q, v: got.append(q))
    qtbot.keyClick(panel, Qt.Key.Key_1)
    assert got == []  # nothing to answer on the thank-you page
