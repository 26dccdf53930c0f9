"""Crash reports, the log file, `openatp --version`, the About box and the no-display
message. Dialogs are opened offscreen and closed by the test (never exec'd)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest

from tests.conftest import REPO


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    d = tmp_path / "userdata"
    monkeypatch.setenv("OPENATP_USER_DIR", str(d))
    monkeypatch.setenv("OPENATP_SETTINGS_DIR", str(tmp_path))
    return d


def _raise(exc):
    try:
        raise exc
    except BaseException:
        return sys.exc_info()


def test_excepthook_writes_report_and_notifies_with_its_path(user_dir):
    from app.crash import CrashHandler

    seen = []
    before = sys.excepthook, threading.excepthook
    handler = CrashHandler(notify=lambda value, report, details: seen.append((value, report, details))).install()
    try:
        assert sys.excepthook == handler._sys_hook and threading.excepthook == handler._thread_hook
        sys.excepthook(*_raise(ZeroDivisionError("division by zero in a slot")))
    finally:
        handler.uninstall()
    assert (sys.excepthook, threading.excepthook) == before
    [(value, report, details)] = seen
    assert report is not None and report.parent == user_dir / "crash-reports" and handler.reports == [report]
    text = report.read_text()
    assert "ZeroDivisionError: division by zero in a slot" in text and "Traceback" in text
    assert "OpenATP 0.1.0" in text and "torch" in text and "installation:" in text
    assert value.crash_report == report and "Traceback" in details


def test_thread_exception_reaches_the_gui_thread(user_dir, qtbot):
    from app.crash import CrashHandler

    seen = []
    handler = CrashHandler(notify=lambda v, r, d: seen.append((v, r, threading.current_thread()))).install()
    try:
        t = threading.Thread(target=lambda: 1 / 0, name="autosave")
        t.start()
        t.join()
        qtbot.waitUntil(lambda: bool(seen), timeout=5000)  # delivered by a queued signal
    finally:
        handler.uninstall()
    value, report, thread = seen[0]
    assert isinstance(value, ZeroDivisionError) and thread is threading.main_thread()
    assert "thread: autosave" in report.read_text()


def test_exception_escaping_a_qt_slot_is_reported(user_dir, qtbot):
    from PySide6.QtCore import QObject, Signal

    from app.crash import CrashHandler

    class Emitter(QObject):
        fired = Signal()

    seen = []
    handler = CrashHandler(notify=lambda v, r, d: seen.append(r)).install()
    try:
        e = Emitter()
        e.fired.connect(lambda: {}["missing key"])
        e.fired.emit()
    finally:
        handler.uninstall()
    assert len(seen) == 1 and "KeyError: 'missing key'" in seen[0].read_text()


def test_keyboard_interrupt_is_not_a_crash(user_dir):
    from app.crash import CrashHandler

    calls = []
    handler = CrashHandler(notify=lambda *a: calls.append(a))
    handler._previous_sys = lambda *a: calls.append("previous")
    handler._sys_hook(*_raise(KeyboardInterrupt()))
    assert calls == ["previous"] and not (user_dir / "crash-reports").exists()


def test_unwritable_user_folder_still_notifies(tmp_path, monkeypatch):
    from app.crash import CrashHandler, crash_message

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("OPENATP_USER_DIR", str(blocker))  # mkdir under a file fails, even as root
    seen = []
    CrashHandler(notify=lambda v, r, d: seen.append(r))._sys_hook(*_raise(RuntimeError("boom")))
    assert seen == [None]
    assert "No crash report could be saved" in crash_message(RuntimeError("boom"), None)


def test_crash_dialog_names_the_report(qtbot, tmp_path):
    from PySide6.QtWidgets import QWidget

    from app.crash import show_crash_dialog

    parent = QWidget()
    qtbot.addWidget(parent)
    report = tmp_path / "crash-reports" / "crash-1.txt"
    box = show_crash_dialog(parent, ValueError("bad value"), report, "Traceback ...")
    try:
        assert box.isVisible() and str(report) in box.text() and "ValueError: bad value" in box.text()
        assert box.detailedText() == "Traceback ..."
    finally:
        box.close()


def test_worker_defect_dialog_names_a_report(qtbot, user_dir):
    """A defect a worker caught (not an unhandled one) also leaves a report when a planner sees it."""
    from PySide6.QtWidgets import QMessageBox

    from app.application import Workstation, ensure_qapp

    ensure_qapp()
    ws = Workstation(headless=False, theme="dark")
    qtbot.addWidget(ws.window)
    try:
        try:
            1 / 0
        except ZeroDivisionError as exc:
            ws.show_error(exc, "Broken task")
        box = ws.window.findChild(QMessageBox)
        reports = list((user_dir / "crash-reports").glob("crash-*.txt"))
        assert len(reports) == 1 and str(reports[0]) in box.text()
        box.close()
    finally:
        ws.runner.shutdown()


def test_about_box_lists_libraries_and_model_cards(qtbot, user_dir):
    from app.main_window import MainWindow
    from widgets.viewer_model import ViewerModel

    win = MainWindow(ViewerModel())
    qtbot.addWidget(win)
    box = win.show_about()
    try:
        text = box.text()
        for name in ("OpenATP 0.1.0", "Python", "numpy", "torch", "PySide6", "VTK", "pydicom",
                     "Head-and-neck dose prediction model", str(user_dir)):
            assert name in text, name
        assert "OpenKBP" in box.detailedText()  # the full card
    finally:
        box.close()


def test_log_file_setup_is_once_and_in_user_folder(user_dir, monkeypatch):
    from core.logs import log_file, setup_logging, teardown_logging

    teardown_logging()
    try:
        path = setup_logging("test")
        assert path == user_dir / "logs" / "openatp.log" and log_file() == path
        assert setup_logging("again") == path  # no second handler
        logging.getLogger("openatp.test").info("planned something")
        for h in logging.getLogger().handlers:
            h.flush()
        text = path.read_text()
        assert "OpenATP 0.1.0 started (test)" in text and "planned something" in text and "torch" in text
    finally:
        teardown_logging()
    monkeypatch.setenv("OPENATP_LOG", "off")
    assert setup_logging("off") is None and log_file() is None


def test_display_problem():
    from app.crash import display_problem

    assert "no display found" in display_problem(env={}, platform="linux")
    assert display_problem(env={"DISPLAY": ":0"}, platform="linux") is None
    assert display_problem(env={"WAYLAND_DISPLAY": "wayland-0"}, platform="linux") is None
    assert display_problem(env={"QT_QPA_PLATFORM": "offscreen"}, platform="linux") is None
    assert display_problem(env={}, platform="win32") is None


def _cli(args, env_extra, drop=(), timeout=60):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra)
    return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_version_output_and_log(tmp_path):
    r = _cli(["--version"], {"OPENATP_USER_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "openatp 0.1.0"  # what scripts parse
    for name in ("Python 3.", "numpy", "torch", "PySide6", "VTK", "pydicom"):
        assert name in lines[1], name
    assert any(ln.startswith("model hn: ") for ln in lines[2:])
    assert "started (cli --version)" in (tmp_path / "logs" / "openatp.log").read_text()


def test_gui_without_display_says_so_and_cli_still_works(tmp_path, demo_case):
    drop = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")
    env = {"OPENATP_USER_DIR": str(tmp_path), "OPENATP_SETTINGS_DIR": str(tmp_path)}
    r = _cli(["gui", str(demo_case)], env, drop)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "no display found" in lines[0], r.stderr
    r = _cli(["info", str(demo_case), "--json"], env, drop)
    assert r.returncode == 0 and '"structures"' in r.stdout, r.stderr


def test_unwritable_user_folder_means_no_log_file_not_a_failure(tmp_path, monkeypatch, capsys):
    from core.logs import setup_logging, teardown_logging

    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("OPENATP_USER_DIR", str(blocker))
    teardown_logging()
    try:
        assert setup_logging("test") is None
        assert setup_logging("again") is None  # no second console handler, no second warning
        err = capsys.readouterr().err
        assert err.count("openatp: warning: no log file") == 1, err
    finally:
        teardown_logging()
