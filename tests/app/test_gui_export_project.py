"""GUI export, recent patients, drag-and-drop, project save/open, autosave and plan
comparison, driven through the workstation's controllers on a tiny synthetic patient."""

from __future__ import annotations

import time
import types
import warnings

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication

import widgets  # noqa: F401
from tests.app.workstation import open_workstation
from app.controllers.project import set_session_goals
from tests.core.io.test_project import GOALS, write_case


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENATP_SETTINGS_DIR", str(tmp_path / "settings"))
    monkeypatch.setenv("OPENATP_USER_DIR", str(tmp_path / "user"))
    return tmp_path


@pytest.fixture
def workstation(qtbot, env):
    ws = open_workstation(qtbot)
    yield ws
    ws.runner.shutdown()
    ws.project.background.shutdown()


def _idle(qtbot, ws, timeout=20000):
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=timeout)
    assert ws.errors == [], ws.errors


def _load(qtbot, ws, spec):
    ws.patients.load(str(spec))
    qtbot.waitUntil(lambda: ws.session.has_patient and not ws.runner.busy, timeout=20000)
    assert ws.errors == [], ws.errors


def _add_planned(ws, key="plan 1", factor=1.05):
    """A plan as the pipeline leaves it: a dose and a PlanResult-like object with beams,
    MLC segments, weights and goals (a real pipeline run takes minutes)."""
    from app.session import PlanEntry
    from core.patient import Dose
    from tests.core.delivery.test_rtplan_export import _plan

    p = ws.session.patient
    beams, sbs, beam_of, _pos = _plan()
    dose = Dose(p.doses["reference"].dose_gy * np.float32(factor), p.grid, key)
    result = types.SimpleNamespace(dij=types.SimpleNamespace(beams=beams), segmented_beams=sbs, goals=list(GOALS),
                                   optimization=types.SimpleNamespace(weights=np.linspace(0, 5, beam_of.size)),
                                   deliverable_mu=np.linspace(0, 4, beam_of.size), metrics={"all_p1_met": True})
    ws.session.add_plan(PlanEntry(key, key, dose, {"result": result}))
    return dose, beams, sbs


def _drop(window, path):
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(path))])
    with warnings.catch_warnings():  # Qt 6 marks the only QDragEnterEvent constructor deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        enter = QDragEnterEvent(QPointF(40, 40).toPoint(), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                                Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    accepted = enter.isAccepted()
    drop = QDropEvent(QPointF(40, 40), Qt.DropAction.CopyAction, md, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, drop)
    return accepted


# -- export --------------------------------------------------------------------------------------
def test_export_writes_dicom_that_our_importer_reads_back(qtbot, workstation, env):
    import pydicom

    from core.io.dicom_export import dose_grid_scaling, to_dicom_order
    from core.io.dicom_import import load_dicom_folder

    ws = workstation
    _load(qtbot, ws, write_case(env / "pt_tiny.npz"))
    dose, beams, sbs = _add_planned(ws)
    assert ws.actions["file.export"].isEnabled()
    task = ws.export.export_to(env / "exports")
    _idle(qtbot, ws)
    assert task.outcome == "succeeded"
    folder = env / "exports" / "pt_tiny plan 1"
    res = ws.export.last_export
    assert res["folder"] == str(folder) and res["notes"] == []
    assert {"RTSTRUCT.dcm", "RTPLAN.dcm", "RTDOSE.dcm"} <= set(res["files"])
    assert len([f for f in res["files"] if f.startswith("CT_")]) == ws.session.patient.grid.shape[2]

    p = ws.session.patient
    q = load_dicom_folder(folder)
    hu, g = to_dicom_order(p.ct.hu, p.grid)
    assert q.grid.same_as(g, tol_mm=1e-6)
    np.testing.assert_array_equal(q.ct.hu, hu)
    assert set(q.structures) == set(p.structures)
    for name, s in p.structures.items():
        np.testing.assert_array_equal(q.structures[name].mask, to_dicom_order(s.mask, p.grid)[0])
    d, _ = to_dicom_order(dose.dose_gy, p.grid)
    err = 0.5 * dose_grid_scaling(float(d.max())) * (1 + 1e-6)
    assert np.abs(q.doses["reference"].dose_gy - d).max() <= err
    assert len(q.plans) == 1 and len(q.plans[0]["beams"]) == len(beams)
    assert q.plans[0]["total_mu"] == pytest.approx(sum(sb.mu for sb in sbs) / 35, abs=1e-3)
    # the RTDOSE references the RTPLAN written with it
    rd = pydicom.dcmread(folder / "RTDOSE.dcm")
    assert rd.ReferencedRTPlanSequence[0].ReferencedSOPInstanceUID == q.plans[0]["sop_instance_uid"]

    # a second export never replaces the first; a dose without beams has no RTPLAN, and says so
    ws.session.set_active_plan("reference")
    ws.export.export_to(env / "exports", include_ct=False)
    _idle(qtbot, ws)
    second = ws.export.last_export
    assert second["folder"] == str(env / "exports" / "pt_tiny reference")
    assert set(second["files"]) == {"RTSTRUCT.dcm", "RTDOSE.dcm"} and "RTPLAN left out" in second["notes"][0]
    assert (folder / "RTPLAN.dcm").exists()
    ws.export.export_to(env / "exports", include_ct=False)
    _idle(qtbot, ws)
    assert ws.export.last_export["folder"] == str(env / "exports" / "pt_tiny reference (2)")


# -- recent list, DICOM folder, drag and drop ----------------------------------------------------
def test_recent_list_updates_and_open_dicom_folder(qtbot, workstation, env, monkeypatch):
    from core.io.dicom_export import export_ct_series, export_rtstruct
    from core.io.openkbp import load_openkbp

    ws = workstation
    a = write_case(env / "pt_a.npz")
    b = write_case(env / "pt_b.npz", shape=(18, 24, 24))
    _load(qtbot, ws, a)
    _load(qtbot, ws, b)
    assert ws.patients.recent() == [str(b), str(a)]
    menu = ws.patients.recent_menu
    assert [act.data() for act in menu.actions() if act.data()] == [str(b), str(a)]
    _load(qtbot, ws, a)  # reopening moves it to the top, no duplicate
    assert ws.patients.recent() == [str(a), str(b)]
    for i in range(12):
        ws.patients.remember(str(env / f"gone_{i}.npz"))
    assert len(ws.patients.recent()) == 10 and ws.patients.recent()[0] == str(env / "gone_11.npz")
    # a vanished entry is dropped when picked, with a message
    ws.patients.open_recent(str(env / "gone_11.npz"))
    assert str(env / "gone_11.npz") not in ws.patients.recent()
    assert "no longer exists" in str(ws.errors.pop())
    # the list survives a restart (settings store)
    from app.application import make_settings

    assert make_settings().value("recent/patients")[0] == str(env / "gone_10.npz")

    # Open DICOM folder: a directory dialog, the folder loads and joins the list
    dcm = env / "dicom_case"
    p = load_openkbp(a)
    export_ct_series(p, dcm)
    export_rtstruct(p, dcm / "RS.dcm")
    monkeypatch.setattr("app.controllers.patients.QFileDialog.getExistingDirectory", lambda *a, **k: str(dcm))
    ws.actions["file.open_folder"].trigger()
    qtbot.waitUntil(lambda: ws.session.patient is not None and ws.session.patient.source == str(dcm), timeout=20000)
    _idle(qtbot, ws)
    assert ws.patients.recent()[0] == str(dcm) and set(ws.session.patient.structures) >= {"PTV70", "SpinalCord"}


def test_drop_opens_a_patient_then_a_dose(qtbot, workstation, env):
    from core.io.dosefile import save_dose_npz
    from core.patient import Dose

    ws = workstation
    case = write_case(env / "pt_drop.npz")
    assert _drop(ws.window, case)
    qtbot.waitUntil(lambda: ws.session.has_patient and not ws.runner.busy, timeout=20000)
    assert ws.session.patient.patient_id == "pt_drop" and ws.patients.recent()[0] == str(case)
    p = ws.session.patient
    dose_file = env / "alternative.npz"
    save_dose_npz(dose_file, Dose(p.doses["reference"].dose_gy * np.float32(0.9), p.grid, "alt"))
    assert _drop(ws.window, dose_file)
    _idle(qtbot, ws)
    assert list(ws.session.plans) == ["reference", "alternative"]
    # something OpenATP cannot open is refused at drag-enter and changes nothing
    other = env / "notes.txt"
    other.write_text("hello")
    assert not _drop(ws.window, other)
    assert not ws.runner.busy and ws.session.patient is p


# -- project save/open and autosave --------------------------------------------------------------
def _same_session(ws1, ws2):
    from app.controllers.project import session_goals

    s1, s2 = ws1.session, ws2.session
    assert list(s2.plans) == list(s1.plans)
    for k in s1.plans:
        assert s2.plans[k].label == s1.plans[k].label
        np.testing.assert_array_equal(s2.plans[k].dose.dose_gy, s1.plans[k].dose.dose_gy)
    assert s2.active_plan == s1.active_plan
    goals = [g.to_dict() for g in session_goals(ws1)]
    assert goals and [g.to_dict() for g in session_goals(ws2)] == goals


def test_project_save_and_open_through_the_window(qtbot, workstation, env):
    from app.controllers.export import plan_delivery

    ws = workstation
    _load(qtbot, ws, write_case(env / "pt_tiny.npz"))
    _add_planned(ws)
    set_session_goals(ws, GOALS[:1], "hn")
    ws.session.set_active_plan("reference")
    ws.project.save_to(env / "work.openatp")
    _idle(qtbot, ws)
    assert ws.project.path == env / "work.openatp" and ws.patients.recent()[0] == str(env / "work.openatp")

    ws2 = open_workstation(qtbot)
    try:
        assert _drop(ws2.window, env / "work.openatp")  # a project dropped on the window opens too
        _idle(qtbot, ws2)
        _same_session(ws, ws2)
        assert getattr(ws2.session, "site", "hn") == "hn" and ws2.project.path == env / "work.openatp"
        restored = ws2.session.plans["plan 1"]
        assert [g.to_dict() for g in restored.info["goals"]] == [g.to_dict() for g in GOALS]
        # the restored plan keeps beams and segments: it can still be exported with an RTPLAN
        beams, segs = plan_delivery(restored)
        orig_beams, orig_segs = plan_delivery(ws.session.plans["plan 1"])
        assert beams.to_dict() == orig_beams.to_dict()
        assert [s.to_dict() for s in segs] == [s.to_dict() for s in orig_segs]
    finally:
        ws2.runner.shutdown()
        ws2.project.background.shutdown()


def test_autosave_appears_only_on_change_and_restores_after_a_crash(qtbot, workstation, env):
    from app.controllers.project import autosave_dir

    ws = workstation
    assert not ws.project.autosave_enabled  # headless runs (screenshots, tests) do not autosave by themselves
    _load(qtbot, ws, write_case(env / "pt_tiny.npz"))
    ws.project.enable_autosave(interval_s=0.05)
    path = autosave_dir() / "session.openatp"
    assert path.parent == env / "user" / "autosave"
    qtbot.waitUntil(lambda: path.exists() and ws.project.last_autosave is not None, timeout=10000)
    first = path.stat().st_mtime_ns
    _add_planned(ws)
    set_session_goals(ws, GOALS)
    qtbot.waitUntil(lambda: path.stat().st_mtime_ns != first, timeout=10000)
    qtbot.waitUntil(lambda: not ws.project.needs_autosave(), timeout=10000)
    # nothing changed: no more writes (the timer keeps ticking)
    settled = path.stat().st_mtime_ns
    qtbot.wait(300)
    assert path.stat().st_mtime_ns == settled
    # the main runner never saw the autosaves: no progress bar, no busy state
    assert not ws.runner.busy

    # "crash": no clean exit recorded; the next start finds the autosave and restores it
    ws.project.disable_autosave()
    ws2 = open_workstation(qtbot)
    try:
        assert ws2.project.pending_autosave() == path
        box = ws2.project.offer_restore()  # what the next start shows (non-blocking)
        assert box is not None and "did not close normally" in box.text()
        box.button(box.StandardButton.Yes).click()
        qtbot.waitUntil(lambda: ws2.session.has_patient, timeout=10000)
        _idle(qtbot, ws2)
        _same_session(ws, ws2)
        assert ws2.project.path is None  # "Save" after a restore asks where to save
        assert ws2.session.state.startswith("restored 2 plans")
        # a clean exit: the autosave is no longer offered
        ws2.project.record_clean_exit()
        assert ws2.project.pending_autosave() is None
    finally:
        ws2.runner.shutdown()
        ws2.project.background.shutdown()
    # declining a pending autosave keeps it aside instead of letting the next autosave overwrite it
    time.sleep(0.01)
    ws.session.set_active_plan("reference")
    ws.project.autosave_now()
    qtbot.waitUntil(lambda: ws.project.pending_autosave() == path, timeout=10000)
    ws.project.decline_autosave()
    assert ws.project.pending_autosave() is None and (path.parent / "previous.openatp").exists()


# -- comparison through the window -----------------------------------------------------------------
def test_compare_plans_through_the_window(qtbot, workstation, env):
    from core.goals.evaluate import evaluate_goals
    from core.goals.goal import ClinicalGoal

    ws = workstation
    _load(qtbot, ws, write_case(env / "pt_tiny.npz"))
    dose, _, _ = _add_planned(ws, factor=1.08)
    assert ws.actions["plan.compare"].isEnabled()
    ws.actions["plan.compare"].trigger()
    _idle(qtbot, ws)
    w = ws.compare.widget
    assert ws.window.central_tabs.currentWidget() is w
    assert w.plan_keys() == ("reference", "plan 1")
    p = ws.session.patient
    masks = {n: s.mask for n, s in p.structures.items()}
    ref = p.doses["reference"].dose_gy

    def expected(goals):
        ra = evaluate_goals(goals, ref, masks, p.grid.voxel_volume_cc)
        rb = evaluate_goals(goals, dose.dose_gy, masks, p.grid.voxel_volume_cc)
        return [v for x, y in zip(ra, rb) for v in (x.achieved, y.achieved, y.achieved - x.achieved)]

    # no session goal list yet: the goals plan 1 was optimised for
    assert [v for r in w.table_rows() for v in r[3:6]] == pytest.approx(expected(GOALS))
    assert "goals of plan 1" in w.summary_label.text()
    # the planner edits the goal list: the comparison follows it
    mean = [ClinicalGoal.from_dict({"priority": 1, "structure": "SpinalCord", "type": "max_mean", "dose_gy": 20.0})]
    set_session_goals(ws, mean)
    ws.compare.refresh()  # (a session that signals "goals" refreshes by itself; older ones do not)
    _idle(qtbot, ws)
    assert [v for r in w.table_rows() for v in r[3:6]] == pytest.approx(expected(mean))
    # both sides show their plan's dose; a new plan joins the choosers
    assert w.model_a.dose_gy is ref and w.model_b.dose_gy is dose.dose_gy
    _add_planned(ws, key="plan 2", factor=0.95)
    _idle(qtbot, ws)
    assert [w.box_b.itemData(i) for i in range(w.box_b.count())] == ["reference", "plan 1", "plan 2"]
    # closing the tab returns to the image views
    ws.window.central_tabs.tabCloseRequested.emit(1)
    assert ws.window.central_tabs.currentWidget() is ws.window.viewer and ws.window.central_tabs.count() == 1
