"""Goal editor: validated in-place edits, priorities by position, changed marks, templates."""

import json

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QLineEdit

import widgets  # noqa: F401  (PySide6 reference-count work-around before any Qt use)
from core.goals.goal import ClinicalGoal, GoalKind
from widgets.goal_table import (CHANGED_ROLE, COL_ACHIEVED, COL_AT, COL_KIND, COL_MET, COL_PREDICTED, COL_PRIORITY,
                                COL_STRUCTURE, COL_TOL, COL_VALUE, MET_ROLE, GoalTable)

STRUCTURES = ["PTV70", "SpinalCord", "Parotid_L", "Larynx"]


def _goals():
    return [
        ClinicalGoal(1, "PTV70", GoalKind.MIN_DOSE_AT_VOLUME, dose_gy=70.0, volume_pct=95.0),
        ClinicalGoal(1, "SpinalCord", GoalKind.MAX_DOSE_AT_VOLUME, dose_gy=45.0, volume_cc=0.03),
        ClinicalGoal(2, "Parotid_L", GoalKind.MAX_MEAN, dose_gy=26.0, tolerance_pct=5.0),
        ClinicalGoal(3, "Larynx", GoalKind.MAX_VOLUME_AT_DOSE, dose_gy=50.0, volume_pct=30.0),
    ]


@pytest.fixture
def table(qtbot):
    t = GoalTable()
    qtbot.addWidget(t)
    t.set_structures(STRUCTURES)
    t.set_goals(_goals())
    t.resize(900, 300)
    t.show()
    qtbot.waitExposed(t)
    return t


def _text(t, row, col):
    return t.model.data(t.model.index(row, col), Qt.ItemDataRole.DisplayRole)


def _edit_through_editor(qtbot, t, row, col, set_value):
    """Open the cell's editor as a double-click would, type into it, commit."""
    idx = t.model.index(row, col)
    t.view.setCurrentIndex(idx)
    t.view.edit(idx)
    editor = t.view.indexWidget(idx) or t.view.focusWidget()
    assert editor is not None
    set_value(editor)
    t.view.itemDelegate().commitData.emit(editor)
    t.view.itemDelegate().closeEditor.emit(editor)
    return editor


def test_shows_goals_with_units(table):
    t = table
    assert [_text(t, r, COL_PRIORITY) for r in range(4)] == ["P1", "P1", "P2", "P3"]
    assert _text(t, 0, COL_AT) == "95 %" and _text(t, 1, COL_AT) == "0.03 cc" and _text(t, 3, COL_AT) == "50 Gy"
    assert _text(t, 0, COL_VALUE) == "70 Gy" and _text(t, 3, COL_VALUE) == "30 %"
    assert _text(t, 2, COL_TOL) == "5" and _text(t, 0, COL_ACHIEVED) == "—"
    assert t.model.flags(t.model.index(2, COL_AT)) & Qt.ItemFlag.ItemIsEditable == Qt.ItemFlag.NoItemFlags


def test_value_edit_through_editor_emits_goals_changed(qtbot, table):
    t = table

    def type_value(ed):
        assert isinstance(ed, QDoubleSpinBox) and ed.suffix() == " Gy"
        ed.setValue(24.0)

    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        _edit_through_editor(qtbot, t, 2, COL_VALUE, type_value)
    new = sig.args[0]
    assert isinstance(new[2], ClinicalGoal) and new[2].dose_gy == 24.0 and new[2].structure == "Parotid_L"
    assert new[:2] == _goals()[:2] and new[3] == _goals()[3]


def test_structure_and_kind_editors_are_combos_of_the_patient_names_and_the_enum(qtbot, table):
    t = table

    def pick_larynx(ed):
        assert isinstance(ed, QComboBox)
        assert [ed.itemText(i) for i in range(ed.count())] == STRUCTURES
        ed.setCurrentIndex(STRUCTURES.index("Larynx"))

    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        _edit_through_editor(qtbot, t, 2, COL_STRUCTURE, pick_larynx)
    assert sig.args[0][2].structure == "Larynx"

    def pick_vx(ed):
        assert isinstance(ed, QComboBox) and ed.count() == len(GoalKind)
        ed.setCurrentIndex(ed.findData(GoalKind.MAX_VOLUME_AT_DOSE.value))

    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        _edit_through_editor(qtbot, t, 2, COL_KIND, pick_vx)
    g = sig.args[0][2]
    # a mean goal turned into a volume goal keeps its dose as the dose level
    assert g.kind is GoalKind.MAX_VOLUME_AT_DOSE and g.dose_gy == 26.0 and g.volume_pct == 50.0


def test_invalid_edits_are_refused_with_the_dataclass_message(qtbot, table):
    t = table
    before = t.goals()
    emitted = []
    t.goals_changed.connect(emitted.append)
    # 7000 "Gy" is a cGy slip: the spin box lets it through, the goal dataclass refuses it
    _edit_through_editor(qtbot, t, 0, COL_VALUE, lambda ed: ed.setValue(7000.0))
    assert t.goals() == before and emitted == []
    assert t.message.isVisible() and "cGy" in t.message.text()
    # D100 % is impossible
    _edit_through_editor(qtbot, t, 0, COL_AT, lambda ed: ed.setText("100 %"))
    assert t.goals() == before and "strictly between 0 and 100" in t.message.text()
    # tolerance beyond 50 %
    assert not t.model.setData(t.model.index(2, COL_TOL), 60.0)
    assert "tolerance_pct" in t.message.text()
    # a structure the patient does not have
    assert not t.model.setData(t.model.index(2, COL_STRUCTURE), "Brain")
    assert "no structure named 'Brain'" in t.message.text()
    # text that is no number
    assert not t.model.setData(t.model.index(0, COL_AT), "lots")
    assert t.goals() == before and emitted == []
    # a valid edit clears the message
    assert t.model.setData(t.model.index(0, COL_AT), "0.5 cc")
    assert t.goals()[0].volume_cc == 0.5 and t.goals()[0].volume_pct is None
    assert not t.message.isVisible() and len(emitted) == 1


def test_priority_edit_resorts_rows(qtbot, table):
    t = table
    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        assert t.model.setData(t.model.index(3, COL_PRIORITY), 1)
    assert [(g.priority, g.structure) for g in sig.args[0]] == \
        [(1, "PTV70"), (1, "SpinalCord"), (1, "Larynx"), (2, "Parotid_L")]
    assert not t.model.setData(t.model.index(0, COL_PRIORITY), 0)
    assert "priority" in t.message.text()


def test_drag_and_drop_reorder_changes_priorities(qtbot, table):
    t, m = table, table.model
    # drag the P3 Larynx goal to the top: it becomes a P1 goal
    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        assert not m.dropMimeData(m.mimeData([m.index(3, 0)]), Qt.DropAction.MoveAction, 0, 0, QModelIndex())
    assert [(g.priority, g.structure) for g in sig.args[0]] == \
        [(1, "Larynx"), (1, "PTV70"), (1, "SpinalCord"), (2, "Parotid_L")]
    # drag the cord goal below the parotid goal: it joins P2
    m.dropMimeData(m.mimeData([m.index(2, 0)]), Qt.DropAction.MoveAction, 4, 0, QModelIndex())
    assert [(g.priority, g.structure) for g in t.goals()] == \
        [(1, "Larynx"), (1, "PTV70"), (2, "Parotid_L"), (2, "SpinalCord")]
    # the view accepts internal moves
    assert t.view.dragDropMode() == t.view.DragDropMode.InternalMove


def test_move_buttons_step_through_positions_and_priorities(qtbot, table):
    t = table
    t.select_row(2)  # P2 Parotid_L
    t.up_button.click()  # first of its priority: joins P1, same place
    assert [(g.priority, g.structure) for g in t.goals()] == \
        [(1, "PTV70"), (1, "SpinalCord"), (1, "Parotid_L"), (3, "Larynx")]
    t.up_button.click()  # now above the cord inside P1
    assert [g.structure for g in t.goals()][:3] == ["PTV70", "Parotid_L", "SpinalCord"]
    assert t.selected_row() == 1
    t.select_row(3)
    t.down_button.click()  # last row: a new, lower priority
    assert t.goals()[3].priority == 4
    t.select_row(0)
    t.up_button.click()  # P1 at the top stays
    assert t.goals()[0].priority == 1 and t.goals()[0].structure == "PTV70"


def test_add_and_remove(qtbot, table):
    t = table
    t.select_row(2)
    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        t.add_button.click()
    goals = sig.args[0]
    assert len(goals) == 5 and goals[3].priority == 2 and goals[3].control and t.selected_row() == 3
    assert goals[3].structure in STRUCTURES
    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        t.remove_button.click()
    assert sig.args[0] == _goals()
    t.select_row(0)
    t.view.setFocus()
    qtbot.keyClick(t.view, Qt.Key.Key_Delete)
    assert [g.structure for g in t.goals()] == ["SpinalCord", "Parotid_L", "Larynx"]


def test_changed_rows_marked_until_mark_optimized(qtbot, table):
    t, m = table, table.model
    assert m.changed_rows() == []  # nothing optimized yet: nothing to compare with
    t.mark_optimized()
    m.setData(m.index(2, COL_VALUE), 22.0)
    assert m.changed_rows() == [2]
    assert m.data(m.index(2, COL_STRUCTURE), CHANGED_ROLE) is True
    assert m.data(m.index(2, COL_STRUCTURE), Qt.ItemDataRole.FontRole).bold()
    assert m.data(m.index(2, COL_PRIORITY), Qt.ItemDataRole.DecorationRole) is not None
    assert m.data(m.index(1, COL_STRUCTURE), Qt.ItemDataRole.FontRole) is None
    m.remove_goals([3])
    assert m.removed_count() == 1 and "1 changed, 1 removed" in t.summary.text()
    # an edit undone by hand is no longer a change
    m.setData(m.index(2, COL_VALUE), 26.0)
    assert m.changed_rows() == []
    # the plan was optimized with the edited list (maybe while the planner kept editing)
    m.setData(m.index(2, COL_VALUE), 20.0)
    optimized_with = t.goals()
    m.setData(m.index(0, COL_VALUE), 70.5)
    t.mark_optimized(optimized_with)
    assert m.changed_rows() == [0]


def test_achieved_predicted_and_met_follow_edits(qtbot, table):
    t, m = table, table.model
    t.set_values(achieved={("PTV70", "D95"): 69.0, ("Parotid_L", "mean"): 25.0},
                 predicted={("PTV70", "D95"): 68.2})
    assert _text(t, 0, COL_ACHIEVED) == "69.00 Gy" and _text(t, 0, COL_PREDICTED) == "68.20 Gy"
    assert m.data(m.index(0, COL_MET), MET_ROLE) is False and m.data(m.index(2, COL_MET), MET_ROLE) is True
    assert m.data(m.index(1, COL_MET), MET_ROLE) is None and _text(t, 1, COL_ACHIEVED) == "—"
    assert "1/2 met" in t.summary.text()
    # lowering the coverage goal to what was achieved makes it met; the metric is the same
    m.setData(m.index(0, COL_VALUE), 69.0)
    assert m.data(m.index(0, COL_MET), MET_ROLE) is True
    # another volume is another metric: not evaluated until re-optimized
    m.setData(m.index(0, COL_AT), "98")
    assert m.data(m.index(0, COL_MET), MET_ROLE) is None


def test_template_menu_lists_builtin_and_institution_templates(qtbot, table, tmp_path, monkeypatch):
    from core.goals.templates import load_template, save_user_template, template_from_goals

    monkeypatch.setenv("OPENATP_USER_DIR", str(tmp_path))
    doc, _ = template_from_goals(_goals()[:2], "hn_local", "Local head and neck", base=load_template("hn"))
    save_user_template(doc)
    t = table
    t._fill_template_menu()
    actions = {a.data(): a for a in t.template_menu.actions() if a.data()}
    assert {"hn", "prostate", "hn_local"} <= set(actions)
    assert "(institution)" in actions["hn_local"].text() and "(institution)" not in actions["hn"].text()
    with qtbot.waitSignal(t.templateRequested, timeout=1000) as sig:
        actions["hn_local"].trigger()
    assert sig.args == ["hn_local"]


def test_goals_file_load(qtbot, table, tmp_path):
    t = table
    good = tmp_path / "g.json"
    good.write_text(json.dumps({"goals": [{"priority": 2, "structure": "Larynx", "type": "max_mean", "dose_gy": 40},
                                          {"priority": 1, "structure": "PTV70", "type": "min_dose_at_volume",
                                           "volume_pct": 95, "dose_gy": 70}]}))
    with qtbot.waitSignal(t.goals_changed, timeout=1000) as sig:
        assert t.load_goals_file(good)
    assert [g.structure for g in sig.args[0]] == ["PTV70", "Larynx"]  # sorted by priority
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"goals": [{"priority": 1, "structure": "Brain", "type": "max_mean", "dose_gy": 40}]}))
    assert not t.load_goals_file(bad)
    assert "Brain" in t.message.text() and [g.structure for g in t.goals()] == ["PTV70", "Larynx"]
