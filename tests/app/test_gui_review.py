"""The review window end to end on a small synthetic study: keyboard answering, quit and
resume, blinding of everything on screen, a locked study file, the CLI and the menu action."""

import os
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QAbstractButton, QComboBox, QGroupBox, QLabel, QLineEdit, QProgressBar,
                               QTableWidget, QWidget)

import widgets  # noqa: F401
from app.cli import main
from core.review.study import CaseInput, ReviewStudy, create_study
from tests.conftest import REPO
from tests.core.review.helpers import ARM_NAMES, AUTO_DIR, MANUAL_DIR

N_CASES = 5
NAMES = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible",
         "PTV56", "PTV63", "PTV70"]


def _write_case(path, seed):
    """A small OpenKBP-format case: body cylinder, PTV70 sphere, cord and a parotid."""
    shape = (20, 24, 14)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    c = np.array(shape) / 2.0 + [0.3 * seed, 0.0, 0.0]
    body = (i - c[0]) ** 2 + (j - c[1]) ** 2 <= 8.5 ** 2
    ptv = ((i - c[0]) ** 2 + (j - c[1] + 2) ** 2 + (k - c[2]) ** 2) <= 3.2 ** 2
    cord = ((i - c[0] - 5) ** 2 + (j - c[1]) ** 2 <= 1.5 ** 2) & body
    parotid = ((i - c[0] + 1) ** 2 + (j - c[1] - 5) ** 2 + (k - c[2]) ** 2) <= 2.0 ** 2
    masks = np.zeros(shape, np.uint16)
    for name, m in (("PTV70", ptv), ("SpinalCord", cord), ("LeftParotid", parotid)):
        masks |= m.astype(np.uint16) << NAMES.index(name)
    ct = np.where(body, 1000, 0).astype(np.int16)
    np.savez_compressed(path, ct=ct, masks=masks, roi_names=np.array(NAMES), possible_dose_mask=body,
                        voxel_dimensions_mm=np.array([3.0, 3.0, 3.0], np.float32))
    r2 = (i - c[0]) ** 2 + (j - c[1] + 2) ** 2 + (k - c[2]) ** 2
    return np.where(body, 74.0 * np.exp(-r2 / 40.0), 0.0).astype(np.float32)


@pytest.fixture
def study(tmp_path):
    """A 5-case study whose source folders and arm names are distinctive strings to search for."""
    from core.io.dosefile import save_dose_npz
    from core.io.loader import load_patient
    from core.patient import Dose

    cases = []
    for n in range(N_CASES):
        cid = f"pt_{n + 1}"
        pfile = tmp_path / "patients_src" / f"{cid}.npz"
        pfile.parent.mkdir(exist_ok=True)
        dose = _write_case(pfile, n)
        grid = load_patient(pfile).grid
        auto, manual = tmp_path / AUTO_DIR / f"{cid}.npz", tmp_path / MANUAL_DIR / f"{cid}.npz"
        for path, d in ((auto, dose), (manual, dose * np.float32(0.96))):
            path.parent.mkdir(exist_ok=True)
            save_dose_npz(path, Dose(d, grid, path.parent.name))
        cases.append(CaseInput(cid, auto, manual, pfile, "HN"))
    key = tmp_path / "coordinator" / "study.key.sqlite"
    st = create_study(tmp_path / "study", cases, ["ann", "bob"], 11, key_path=key, arm_names=ARM_NAMES)
    st.close()
    return tmp_path / "study", key


@pytest.fixture(autouse=True)
def _settings(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENATP_SETTINGS_DIR", str(tmp_path))


def _open(qtbot, study_dir, reviewer):
    from app.application import ensure_qapp
    from app.controllers.review import open_review

    ensure_qapp()
    window, session = open_review(study_dir, reviewer, headless=True)
    qtbot.addWidget(window)
    window.resize(1400, 900)
    window.show()
    qtbot.waitExposed(window)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5000)
    with qtbot.waitSignal(session.caseShown, timeout=20000):
        session.resume()
    return window, session


def _keys(qtbot, widget, keys):
    for k in keys:
        qtbot.keyClick(widget, k)


def test_reviewer_answers_three_cases_quits_and_resumes_at_case_4(qtbot, study):
    study_dir, _ = study
    with ReviewStudy(study_dir, readonly=True) as st:
        order = [cv.case_id for cv in st.cases_for("ann")]
    window, session = _open(qtbot, study_dir, "ann")
    panel = window.panel
    K = Qt.Key
    assert session.position == 0 and panel.progress_label.text().startswith(f"Case 1 of {N_CASES}")
    given = {}
    for k in range(3):
        assert session.position == k and session.cases[k].case_id == order[k]
        # N before the case is finished keeps the reviewer here
        _keys(qtbot, panel, [K.Key_1, K.Key_N])
        assert session.position == k and "Answer every statement" in panel.message_label.text()
        _keys(qtbot, panel, [K.Key_2, K.Key_3, K.Key_1])
        given[order[k]] = {"acceptable_a": "agree", "acceptable_b": "disagree", "prefer_a": "cannot_judge",
                           "generated_a": "agree"}
        # saved on every key press, before the case is left
        assert ReviewStudy(study_dir, readonly=True).answers_for("ann", order[k]) == given[order[k]]
        if k == 1:
            _keys(qtbot, panel, [K.Key_Tab])  # to the comment field; digits there are text
            assert panel.comment_edit.hasFocus()
            qtbot.keyClicks(panel.comment_edit, "cord 3 Gy hotter")
            given[order[k]]["comment"] = "cord 3 Gy hotter"
        with qtbot.waitSignal(session.caseShown, timeout=20000):
            qtbot.keyClick(panel.comment_edit if k == 1 else panel, K.Key_Return)
    assert session.position == 3 and panel.progress_label.text().startswith(f"Case 4 of {N_CASES}")
    assert panel.progress_bar.value() == 3
    _keys(qtbot, panel, [K.Key_3])  # one answer on case 4 and a comment still being typed, then quit
    panel.set_current(len(panel.rows))
    qtbot.keyClicks(panel.comment_edit, "unsure")
    window.quit_action.trigger()
    assert session.study is None  # closed: file released
    with ReviewStudy(study_dir, readonly=True) as st:
        for cid, ans in given.items():
            assert st.answers_for("ann", cid) == ans
        assert st.answers_for("ann", order[3]) == {"acceptable_a": "cannot_judge", "comment": "unsure"}
        assert st.status()["reviewers"]["ann"]["completed"] == 3
        assert st.status()["reviewers"]["bob"]["completed"] == 0
    # reopen: resumes at case 4 with its answer shown, earlier answers kept
    window2, session2 = _open(qtbot, study_dir, "ann")
    assert session2.position == 3 and session2.cases[3].case_id == order[3]
    assert window2.panel.rows[0].value() == "cannot_judge" and window2.panel.current == 1
    assert window2.panel.progress_bar.value() == 3
    with qtbot.waitSignal(session2.caseShown, timeout=20000):
        qtbot.keyClick(window2.panel, K.Key_P)
    assert session2.position == 2 and window2.panel.answers() == given[order[2]]
    with qtbot.waitSignal(session2.caseShown, timeout=20000):
        qtbot.keyClick(window2.panel, K.Key_P)
    assert window2.panel.comment_edit.text() == "cord 3 Gy hotter"
    # answering the last two cases ends on the thank-you page
    session2.go_to(3)
    qtbot.waitUntil(lambda: session2.position == 3, timeout=20000)
    for _ in range(2):
        _keys(qtbot, window2.panel, [K.Key_1, K.Key_1, K.Key_1, K.Key_1])
        with qtbot.waitSignal(session2.caseShown if session2.position < N_CASES - 1 else session2.finishedAll,
                              timeout=20000):
            qtbot.keyClick(window2.panel, K.Key_N)
    assert session2.position is None and window2.panel.progress_label.text() == f"All {N_CASES} cases answered"
    window2.close()
    with ReviewStudy(study_dir, readonly=True) as st:
        assert st.status()["reviewers"]["ann"]["completed"] == N_CASES


def _visible_texts(window) -> list:
    """Every text the window can show: labels, buttons, fields, tips, titles, tables, combo
    items, menus, the DVH's plan names and the dose labels of the views."""
    out = [window.windowTitle()]
    for w in window.findChildren(QWidget) + [window]:
        out += [w.toolTip(), w.statusTip(), w.whatsThis(), w.windowTitle(), w.accessibleName()]
        if isinstance(w, (QLabel, QAbstractButton, QLineEdit)):
            out.append(w.text())
        if isinstance(w, QLineEdit):
            out.append(w.placeholderText())
        if isinstance(w, QGroupBox):
            out.append(w.title())
        if isinstance(w, QProgressBar):
            out.append(w.text())
        if isinstance(w, QComboBox):
            out += [w.itemText(i) for i in range(w.count())]
        if isinstance(w, QTableWidget):
            for r in range(w.rowCount()):
                for c in range(w.columnCount()):
                    it = w.item(r, c)
                    out += [it.text(), it.toolTip()] if it is not None else []
            out += [w.horizontalHeaderItem(c).text() for c in range(w.columnCount()) if w.horizontalHeaderItem(c)]
        for a in w.actions():
            out += [a.text(), a.toolTip(), a.statusTip()]
    panel = window.panel
    out += list(panel.dvh.plans) + [c.plan for c in panel.dvh.curves]
    out += [m.dose_label for m in panel.models.values()]
    return [t for t in out if t]


def test_nothing_on_screen_names_the_source(qtbot, study):
    study_dir, key = study
    window, session = _open(qtbot, study_dir, "bob")
    tokens = [p.stem for cv in session.cases for p in (cv.plan_a, cv.plan_b)]
    needles = [*ARM_NAMES, AUTO_DIR, MANUAL_DIR, "automated", "manual", key.name, "key.sqlite", str(study_dir),
               "answers.sqlite", ".npz", *tokens]
    for position in (0, 1):
        if session.position != position:
            with qtbot.waitSignal(session.caseShown, timeout=20000):
                session.go_to(position)
        texts = _visible_texts(window)
        assert len(texts) > 30 and "Plan A" in texts and "Plan B" in texts
        blob = "\n".join(texts).lower()
        for needle in needles:
            assert needle.lower() not in blob, needle
        # the goal table and DVH were filled (the scan saw real content)
        assert window.panel.goal_table.rowCount() >= 2 and window.panel.dvh.curves
    window.close()


def test_locked_study_file_keeps_the_answer_unsaved_and_says_so(qtbot, study, monkeypatch):
    import app.controllers.review as review_ctl

    monkeypatch.setattr(review_ctl, "GUI_BUSY_TIMEOUT_MS", 100)
    study_dir, _ = study
    window, session = _open(qtbot, study_dir, "ann")
    errors = []
    session.show_error = lambda exc, title="": errors.append(exc)
    cid = session.cases[0].case_id
    other = sqlite3.connect(study_dir / "answers.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another reviewer's session is writing
    try:
        qtbot.keyClick(window.panel, Qt.Key.Key_1)
        assert len(errors) == 1 and "locked by another reviewer" in str(errors[0])
        assert window.panel.rows[0].value() is None  # the screen shows what is stored
    finally:
        other.execute("ROLLBACK")
        other.close()
    window.panel.set_current(0)
    qtbot.keyClick(window.panel, Qt.Key.Key_1)
    assert len(errors) == 1 and window.panel.rows[0].value() == "agree"
    assert ReviewStudy(study_dir, readonly=True).answers_for("ann", cid) == {"acceptable_a": "agree"}
    window.close()


def test_cli_review_gui_screenshot_and_bad_reviewer(qtbot, study, tmp_path, capsys):
    study_dir, _ = study
    png = tmp_path / "review.png"
    # a process of its own, as a reviewer starts it: the command runs and ends a Qt event
    # loop (QApplication.exec), after which this process's Qt would not run another test
    r = subprocess.run([sys.executable, "main.py", "review", "gui", str(study_dir), "--reviewer", "bob",
                        "--screenshot", str(png), "--size", "1200x800"], cwd=REPO, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bad input fails before any window: in-process is fine
    assert main(["review", "gui", str(study_dir), "--reviewer", "eve", "--screenshot", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no reviewer 'eve'" in err


def test_file_menu_opens_a_review_window(qtbot, study):
    from app.application import Workstation, ensure_qapp

    study_dir, _ = study
    ensure_qapp()
    ws = Workstation(headless=True, theme="dark")
    qtbot.addWidget(ws.window)
    try:
        action = ws.actions["file.open_review"]
        assert action.text().replace("&", "") == "Open review study…" and action.isEnabled()
        assert action in ws.window.menuBar().actions()[0].menu().actions()
        window = ws.review.open(study_dir, "bob")
        qtbot.addWidget(window)
        qtbot.waitUntil(lambda: window.session.position == 0 or bool(ws.errors), timeout=20000)
        assert ws.errors == []
        assert window.panel.progress_label.text().startswith(f"Case 1 of {N_CASES}")
        assert ws.review.open(study_dir, "nobody") is None
        assert "no reviewer 'nobody'" in str(ws.errors[-1])
        window.close()
        assert ws.review.windows == []
    finally:
        ws.runner.shutdown()
