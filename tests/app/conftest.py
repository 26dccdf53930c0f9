"""Shared fixtures of the workstation tests."""

import pytest

import widgets  # noqa: F401  (PySide6 reference-count work-around before any Qt use)


@pytest.fixture
def workstation(qtbot, tmp_path, monkeypatch):
    """A shown workstation window (headless: errors are collected, not shown as dialogs) with
    its settings and user data in the test's temporary folder; its tasks stop afterwards."""
    monkeypatch.setenv("OPENATP_SETTINGS_DIR", str(tmp_path / "settings"))
    monkeypatch.setenv("OPENATP_USER_DIR", str(tmp_path / "user"))
    from tests.app.workstation import open_workstation

    ws = open_workstation(qtbot)
    yield ws
    ws.runner.shutdown()


@pytest.fixture
def loaded(qtbot, workstation, tmp_path):
    """The workstation with the small synthetic head-and-neck case of the pipeline tests
    (written as an OpenKBP-like file and opened through the loader)."""
    from tests.app.test_cli_plan import write_openkbp_like
    from tests.core.test_pipeline import small_patient

    ws = workstation
    case = tmp_path / "pt_small.npz"
    write_openkbp_like(case, small_patient())
    ws.patients.load(str(case))
    qtbot.waitUntil(lambda: ws.session.has_patient and not ws.runner.busy, timeout=20000)
    return ws
