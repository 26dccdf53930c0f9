"""The workstation window with the demo patient: loading, actions, DVHs, settings."""

import numpy as np
import pytest

import widgets  # noqa: F401
from PySide6.QtCore import Qt
from app import actions as action_table


def _load_demo(qtbot, ws, demo_case):
    ws.patients.load(str(demo_case))
    qtbot.waitUntil(lambda: ws.session.has_patient and not ws.runner.busy, timeout=20000)


def test_action_table_is_complete():
    ids = [s.id for s in action_table.ACTIONS]
    assert len(ids) == len(set(ids))
    shortcuts = [s.shortcut for s in action_table.ACTIONS if s.shortcut]
    assert len(shortcuts) == len(set(shortcuts))
    for s in action_table.ACTIONS:
        assert s.menu in action_table.MENUS and s.enabled_when in action_table.ENABLED_WHEN
    # an icon role the icon table does not know gives an empty icon (export and compare had none)
    from widgets.icons import ICON_NAMES

    assert [s.id for s in action_table.ACTIONS if s.icon and s.icon not in ICON_NAMES] == []


def test_demo_patient_loads_and_everything_follows(qtbot, workstation, demo_case):
    ws = workstation
    # before: nothing that needs a patient is enabled
    assert not ws.actions["plan.run"].isEnabled() and ws.actions["file.open"].isEnabled()
    _load_demo(qtbot, ws, demo_case)
    p = ws.session.patient
    assert ws.errors == []
    assert ws.viewer_model.grid is p.grid and ws.viewer_model.hu is p.ct.hu
    assert ws.viewer_model.dose_gy is p.doses["reference"].dose_gy
    assert ws.viewer_model.reference_gy == pytest.approx(70.0)
    assert ws.actions["plan.run"].isEnabled() and ws.actions["view.dose_wash"].isEnabled()
    assert "pt_demo" in ws.window.patient_label.text()
    # one DVH curve per non-empty structure, equal to the core's DVH
    from core.evaluation.dvh import cumulative_dvh

    curves = {c.structure: c for c in ws.window.dvh_panel.plot.curves}
    assert set(curves) == {n for n, s in p.structures.items() if not s.is_empty}
    bins, _, vpct = cumulative_dvh(p.doses["reference"].dose_gy, p.structures["PTV70"].mask, p.grid)
    np.testing.assert_array_equal(curves["PTV70"].volume_pct, vpct)
    # the endpoint table holds the core's D95 of PTV70
    from core.evaluation.dvh import dvh_endpoints

    ep = dvh_endpoints(p.doses["reference"].dose_gy, p.structures["PTV70"].mask, p.grid)
    table = ws.window.dvh_panel.table
    row = next(r for r in range(table.rowCount()) if table.item(r, 0).text() == "PTV70")
    assert float(table.item(row, 3).text()) == pytest.approx(ep["D95"], abs=0.005)
    # the External structure is hidden by default, in the views and the DVH
    assert not ws.viewer_model.structures["External"].visible
    assert "External" not in {c.structure for c in ws.window.dvh_panel.plot.shown_curves()}
    # actions drive the display
    ws.actions["view.wl_bone"].trigger()
    assert (ws.viewer_model.window, ws.viewer_model.level) == (1800.0, 400.0)
    ws.actions["view.dose_wash"].trigger()
    assert ws.viewer_model.dose_mode == "wash"


def test_automated_plan_through_the_window(qtbot, workstation, tmp_path):
    """Plan action -> core pipeline on a worker -> a new plan shown, P1 goals evaluated."""
    from tests.app.test_cli_plan import write_openkbp_like
    from tests.core.test_pipeline import small_patient

    ws = workstation
    case = tmp_path / "pt_small.npz"
    write_openkbp_like(case, small_patient())
    ws.patients.load(str(case))
    qtbot.waitUntil(lambda: ws.session.has_patient and not ws.runner.busy, timeout=20000)
    ws.actions["plan.run"].trigger()
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=240000)
    assert ws.errors == []
    assert ws.session.state.endswith("ready"), ws.session.state
    entry = list(ws.session.plans.values())[-1]
    result = entry.info["result"]
    assert result.site == "hn"  # guessed from PTV70 / SpinalCord
    assert entry.dose.dose_gy.shape == ws.session.patient.grid.shape
    assert {g["structure"] for g in result.metrics["goals"]} >= {"PTV70", "SpinalCord"}


def test_bad_patient_is_a_typed_error_and_window_survives(qtbot, workstation, tmp_path):
    ws = workstation
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"this is not a numpy archive")
    ws.patients.load(str(bad))
    qtbot.waitUntil(lambda: not ws.runner.busy and bool(ws.errors), timeout=10000)
    from core.errors import OpenATPError

    assert isinstance(ws.errors[0], OpenATPError) and "broken.npz" in str(ws.errors[0])
    assert not ws.session.has_patient and ws.window.isVisible()


def test_layout_persists(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENATP_SETTINGS_DIR", str(tmp_path))
    from app.application import make_settings
    from app.main_window import MainWindow
    from widgets.viewer_model import ViewerModel

    w1 = MainWindow(ViewerModel())
    qtbot.addWidget(w1)
    w1.resize(760, 620)  # inside the 800 x 800 offscreen screen: restoreGeometry clamps to it
    w1.show()
    qtbot.waitExposed(w1)
    w1.volume_dock.setFloating(False)
    w1.structure_dock.hide()
    saved = (w1.width(), w1.height())  # the window may have grown to its minimum size
    s = make_settings()
    w1.save_layout(s)
    s.sync()
    w2 = MainWindow(ViewerModel())
    qtbot.addWidget(w2)
    assert w2.restore_layout(make_settings())
    w2.show()
    qtbot.waitExposed(w2)
    assert w2.structure_dock.isHidden() and not w2.dvh_dock.isHidden()
    assert w2.height() == saved[1]
    assert w2.width() == min(saved[0], w2.screen().availableGeometry().width() - 2)


def test_second_plan_overlays_dashed_and_can_be_shown(qtbot, workstation, demo_case, tmp_path):
    from core.io.dosefile import save_dose_npz
    from core.patient import Dose

    ws = workstation
    _load_demo(qtbot, ws, demo_case)
    p = ws.session.patient
    cooler = Dose(p.doses["reference"].dose_gy * 0.9, p.grid, "cooler")
    path = tmp_path / "cooler.npz"
    save_dose_npz(path, cooler)
    ws.patients.load_dose(str(path))
    qtbot.waitUntil(lambda: len(ws.session.plans) == 2 and not ws.runner.busy, timeout=20000)
    assert ws.errors == []
    plot = ws.window.dvh_panel.plot
    assert plot.plans == ["reference", "cooler"]  # first solid, second dashed
    ptv = {c.plan: c for c in plot.curves if c.structure == "PTV70"}
    # a dose scaled by 0.9 has the DVH scaled by 0.9 along the dose axis
    for d in (20.0, 50.0, 63.0):
        assert ptv["cooler"].volume_at(0.9 * d) == pytest.approx(ptv["reference"].volume_at(d), abs=0.5)
    assert ws.session.active_plan == "cooler"
    np.testing.assert_allclose(ws.viewer_model.dose_gy, cooler.dose_gy)
    box = ws.window.plan_box
    assert [box.itemData(i) for i in range(box.count())] == ["reference", "cooler"]
    box.setCurrentIndex(0)
    assert ws.session.active_plan == "reference"
    assert ws.viewer_model.dose_gy is p.doses["reference"].dose_gy


def test_theme_switch_is_remembered(qtbot, workstation):
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    from app.application import make_settings

    ws = workstation
    dark = QApplication.instance().palette().color(QPalette.ColorRole.Window).lightness()
    ws.actions["view.theme_light"].trigger()
    light = QApplication.instance().palette().color(QPalette.ColorRole.Window).lightness()
    assert light > dark + 100
    assert make_settings().value("theme") == "light"
    ws.actions["view.theme_dark"].trigger()


def test_double_click_centres_views_and_slot_errors_are_caught(qtbot, workstation, demo_case):
    ws = workstation
    _load_demo(qtbot, ws, demo_case)
    mask = ws.session.patient.structures["Brainstem"].mask
    ws.window.structure_list.structureActivated.emit("Brainstem")
    centre = np.round(np.argwhere(mask).mean(axis=0)).astype(int)
    assert tuple(ws.viewer_model.cursor) == tuple(centre)
    # a defect inside a worker is reported (with details), never kills the window
    ws.runner.run("broken", lambda progress=None, cancel=None: 1 / 0,
                  on_failure=lambda e: ws.show_error(e, "Broken task"))
    qtbot.waitUntil(lambda: not ws.runner.busy and bool(ws.errors), timeout=10000)
    from app.application import error_text

    msg, details = error_text(ws.errors[-1])
    assert "ZeroDivisionError" in msg and "Traceback" in details
    assert ws.window.isVisible()


def test_goals_become_dvh_markers_with_core_verdicts(qtbot, workstation, demo_case, tmp_path):
    import json

    from core.evaluation.dvh import dvh_endpoints

    ws = workstation
    _load_demo(qtbot, ws, demo_case)
    p = ws.session.patient
    ep = dvh_endpoints(p.doses["reference"].dose_gy, p.structures["PTV70"].mask, p.grid)
    goals = {"goals": [
        # one goal just met and one just missed by the reference dose (0.5 Gy either side of D95)
        {"priority": 1, "structure": "PTV70", "type": "min_dose_at_volume", "volume_pct": 95,
         "dose_gy": round(ep["D95"] - 0.5, 2)},
        {"priority": 2, "structure": "PTV70", "type": "max_dose_at_volume", "volume_pct": 95,
         "dose_gy": round(ep["D95"] - 0.5, 2)},
        {"priority": 3, "structure": "SpinalCord", "type": "max_mean", "dose_gy": 30.0},  # no DVH point
    ]}
    path = tmp_path / "goals.json"
    path.write_text(json.dumps(goals))
    ws.patients.load_goals(str(path))
    markers = ws.window.dvh_panel.plot.goals
    assert [(m.structure, m.kind, m.met) for m in markers] == [("PTV70", "min", True), ("PTV70", "max", False)]
    assert markers[0].volume_pct == 95.0 and markers[0].dose_gy == goals["goals"][0]["dose_gy"]


def test_planning_progress_eta_and_cancel_through_the_window(qtbot, workstation, demo_case, monkeypatch):
    """A stand-in pipeline (the real one is another module's job) reports progress; the
    task bar shows it with an ETA, the cancel button stops it, the last good dose is kept."""
    import sys
    import threading
    import time
    import types

    from core.patient import Dose
    from core.progress import check_cancel, report

    ws = workstation
    _load_demo(qtbot, ws, demo_case)
    ref = ws.session.patient.doses["reference"]
    started = threading.Event()

    def plan_patient(patient, site=None, options=None, progress=None, cancel=None):
        last = None
        for i in range(2000):
            last = Dose(ref.dose_gy * (0.5 + i / 4000), ref.grid, "plan")
            report(progress, i + 1, 2000, "optimising")
            started.set()
            check_cancel(cancel, result=last)
            time.sleep(0.005)
        return last

    stand_in = types.SimpleNamespace(plan_patient=plan_patient, PlanOptions=lambda **kw: kw,
                                     guess_site=lambda patient: "hn", model_available=lambda site: False,
                                     DEFAULT_TIME_BUDGET_S=100.0)
    monkeypatch.setitem(sys.modules, "core.pipeline", stand_in)
    tp = ws.window.task_progress
    ws.actions["plan.run"].trigger()
    assert started.wait(10)
    qtbot.waitUntil(lambda: tp.bar.value() > 0 and tp.eta_label.text().startswith("ETA"), timeout=10000)
    assert tp.title_label.text() == "Automated plan" and tp.message_label.text() == "optimising"
    assert ws.actions["plan.cancel"].isEnabled() and not ws.actions["plan.run"].isEnabled()
    qtbot.mouseClick(tp.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=10000)
    assert ws.session.state == "planning cancelled (last result kept)"
    assert ws.session.active_plan == "plan 1"
    kept = ws.session.plans["plan 1"].dose.dose_gy
    assert 0.5 * ref.dose_gy.max() <= kept.max() < ref.dose_gy.max()
    assert tp.isHidden() and not ws.actions["plan.cancel"].isEnabled()
