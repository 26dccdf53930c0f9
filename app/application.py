"""The Qt application: QApplication, theme, settings, error dialogs, and the workstation
object that owns the session, the task runner, the window and the controllers.

``run_gui(patient=..., screenshot=...)`` is what ``openatp gui`` calls. With
``screenshot`` it loads the patient, waits for every task (load, DVHs) to finish, renders
the window, writes the PNG and exits; a load error then ends the run with the typed error
(the CLI prints it on one line and exits 2).
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import widgets  # noqa: F401  (applies the PySide6 reference-count work-around first)
from PySide6.QtCore import QObject, QSettings, Qt, QTimer, qInstallMessageHandler
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox

from app import actions as action_table
from app.session import Session
from app.workers import TaskRunner
from core.errors import Cancelled, OpenATPError
from widgets.theme import THEMES, apply_theme
from widgets.viewer_model import ViewerModel

ORGANISATION = "OpenATP"
APPLICATION = "OpenATP Workstation"


def make_settings() -> QSettings:
    """Settings store; ``OPENATP_SETTINGS_DIR`` redirects it (tests, kiosks) to an ini file."""
    d = os.environ.get("OPENATP_SETTINGS_DIR")
    if d:
        return QSettings(os.path.join(d, "openatp.ini"), QSettings.Format.IniFormat)
    return QSettings(ORGANISATION, APPLICATION)


_QUIET = ("This plugin does not support propagateSizeHints()",)


def _qt_message_handler(mode, context, message):
    # The offscreen platform reports harmless "not supported" notes; everything else is
    # passed on as Qt would print it.
    if not any(q in message for q in _QUIET):
        sys.stderr.write(message + "\n")


def ensure_qapp(argv=None) -> QApplication:
    app = QApplication.instance()
    if app is None:
        qInstallMessageHandler(_qt_message_handler)
        QApplication.setAttribute(Qt.ApplicationAttribute.AA_ShareOpenGLContexts)  # VTK + Qt docks
        app = QApplication(list(argv or [sys.argv[0]]))
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    icon_path = Path(__file__).resolve().parents[1] / "resources" / "icons" / "openatp.svg"
    if icon_path.exists():
        app.setWindowIcon(QIcon(str(icon_path)))
    return app


#: The planning modules are imported this long after start, while the planner looks at the
#: patient: importing them holds the interpreter lock for up to half a second, which on a
#: worker started by the Plan button stalled the GUI thread (bench/gui.py responsiveness).
PRELOAD_DELAY_MS = 3000
_PRELOAD = ("torch", "core.pipeline", "core.optimization.fluence", "core.dose.influence", "core.prediction.predict",
            "core.delivery.sequencing", "core.evaluation.dvh", "scipy.optimize")


def preload_planning_modules() -> None:
    """Import the planning core on a plain background thread (no task, no progress bar)."""
    import importlib
    import threading

    def run():
        for name in _PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a module that fails here fails again, reported, when used
                return

    threading.Thread(target=run, name="openatp-preload", daemon=True).start()


def error_text(exc: BaseException) -> tuple[str, str]:
    """(message for the planner, details) of an exception."""
    if isinstance(exc, OpenATPError):
        return str(exc), ""
    details = getattr(exc, "__traceback_text__", None) or "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (f"An unexpected error stopped this task ({type(exc).__name__}: {exc}). "
            "Your data is unchanged. Please report it with the details below."), details


class Workstation(QObject):
    """Session, runner, viewer model, window and controllers, wired together.

    The action table's handler paths are resolved on this object: ``patients.*``,
    ``display.*``, ``planning.*`` and ``window.*``.
    """

    def __init__(self, headless: bool = False, settings: QSettings | None = None, theme: str | None = None):
        super().__init__()
        from app.controllers.display import DisplayController
        from app.controllers.patients import PatientController
        from app.controllers.planning import PlanningController
        from app.main_window import MainWindow

        self.headless = headless  # no modal dialogs: errors are collected and printed
        self.errors: list[BaseException] = []
        self.settings = settings if settings is not None else make_settings()
        self.app = QApplication.instance()
        self.theme = apply_theme(self.app, theme or str(self.settings.value("theme", "dark")))
        self.session = Session(self)
        self.runner = TaskRunner(self)
        self.viewer_model = ViewerModel(self)
        self.window = MainWindow(self.viewer_model)
        self.patients = PatientController(self)
        self.display = DisplayController(self)
        self.planning = PlanningController(self)
        from app.controllers.compare import CompareController
        from app.controllers.export import ExportController
        from app.controllers.project import ProjectController

        self.export = ExportController(self)  # File > Export DICOM…
        self.project = ProjectController(self)  # File > Save/Open project, autosave
        self.compare = CompareController(self)  # Plan > Compare plans…
        from app.controllers.contouring import ContouringController

        self.contouring = ContouringController(self)  # Contour menu, contouring toolbar
        from app.controllers.review import ReviewController

        self.review = ReviewController(self)  # File > Open review study…
        from app.controllers.refinement import RefinementController

        self.refinement = RefinementController(self)  # helper rules, hot patch, Refine plan (issue #9)
        self.actions = action_table.build_actions(self, self.window)
        self.window.install_actions(self.actions)
        self.patients.install_recent_menu(self.actions["file.open_recent"])
        self.actions[f"view.theme_{self.theme}"].setChecked(True)
        self.actions["view.wl_soft"].setChecked(True)
        self.actions["view.dose_lines"].setChecked(True)
        self.window.themeChanged.connect(self._on_theme_changed)
        self.window.closing.connect(self._on_closing)
        self.window.task_progress.cancelRequested.connect(self.runner.cancel_all)
        self.runner.started.connect(self._on_task_started)
        self.runner.busyChanged.connect(lambda _b: self.update_actions())
        self.session.changed.connect(lambda _w: self.update_actions())
        self.viewer_model.windowLevelChanged.connect(self._sync_window_actions)
        self.window.set_status(device="not probed", patient="no patient", plan="")
        self.update_actions()

    # -- state -------------------------------------------------------------------------------
    def state(self) -> dict:
        session = self.session
        return {"has_patient": session.has_patient,
                "has_dose": self.viewer_model.dose_gy is not None,
                "busy": self.runner.busy,
                "has_goals": bool(session.goals),
                "can_warm_start": session.can_warm_start,
                "shows_version": session.version(session.active_plan) is not None}

    def update_actions(self) -> None:
        action_table.update_enabled(self.actions, self.state())

    def _sync_window_actions(self, window: float, level: float) -> None:
        from widgets.viewer_model import WINDOW_PRESETS

        ids = {"soft tissue": "view.wl_soft", "lung": "view.wl_lung", "bone": "view.wl_bone"}
        match = next((ids[k] for k, wl in WINDOW_PRESETS.items() if k in ids and wl == (window, level)), None)
        for i in ids.values():
            self.actions[i].setChecked(i == match)

    def _on_task_started(self, task) -> None:
        tp = self.window.task_progress
        tp.start(task.name)
        task.progress.connect(tp.on_progress)
        task.done.connect(lambda: None if self.runner.busy else tp.reset())

    def _on_theme_changed(self, name: str) -> None:
        self.theme = name
        self.settings.setValue("theme", name)

    def _on_closing(self) -> None:
        if not self.headless:
            self.window.save_layout(self.settings)
            self.settings.sync()
        self.runner.shutdown()

    # -- device ---------------------------------------------------------------------------------
    def probe_device(self, spec: str = "auto") -> None:
        """Find CPU/GPU on a worker (importing torch takes a second; never on the GUI thread)."""
        if (spec or "").lower() == "cpu":
            self.window.set_status(device="CPU")  # asked for, always there: no need to load torch
            return
        def probe(progress=None, cancel=None):
            from core.device import device_name, resolve_device

            return device_name(resolve_device(spec))

        def done(name):
            self.window.set_status(device=name.replace("cuda", "GPU").replace("cpu", "CPU"))

        self.runner.run("Checking compute device", probe, on_success=done,
                        on_failure=lambda e: self.window.set_status(device=f"unavailable ({e})"))

    # -- messages -------------------------------------------------------------------------------
    def notify(self, text: str) -> None:
        """A warning the planner should see, without stopping the work."""
        if self.headless:
            print(f"openatp: warning: {text}", file=sys.stderr)
        self.window.statusBar().showMessage(text, 8000)

    def show_error(self, exc: BaseException, title: str = "OpenATP") -> None:
        """The one place errors reach the planner: typed errors in their words, the rest with details."""
        if isinstance(exc, Cancelled):
            self.window.statusBar().showMessage("cancelled", 4000)
            return
        self.errors.append(exc)
        message, details = error_text(exc)
        if self.headless:
            return  # run_gui re-raises the first error: the CLI prints it once and exits 2
        if not isinstance(exc, OpenATPError) and not hasattr(exc, "crash_report"):
            from app.crash import write_crash_report  # a defect caught by a worker: keep a report too

            exc.crash_report = write_crash_report(type(exc), exc, exc.__traceback__, thread_name="worker")
            if exc.crash_report is not None:
                message += f"\n\nA crash report was saved to:\n{exc.crash_report}"
        box = QMessageBox(QMessageBox.Icon.Warning if isinstance(exc, OpenATPError) else QMessageBox.Icon.Critical,
                          title, message, QMessageBox.StandardButton.Ok, self.window)
        if details:
            box.setDetailedText(details)
        box.open()  # window-modal, does not block the event loop


def run_gui(patient: str | None = None, screenshot: str | None = None, phantom_file=None,
            theme: str | None = None, size=(1600, 1000), panel: str | None = None, device: str = "auto") -> int:
    """Open the workstation (``openatp gui``); see the module docstring."""
    t0 = time.perf_counter()
    from app.crash import display_problem
    from core.logs import setup_logging

    setup_logging("gui")
    problem = None if QApplication.instance() is not None else display_problem()
    if problem:
        if screenshot is None:
            raise OpenATPError(problem)  # Qt would abort the process with a C++ message instead
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
    app = ensure_qapp()
    headless = screenshot is not None
    ws = Workstation(headless=headless, theme=theme)
    win = ws.window
    restored = False
    if headless:
        win.resize(*size)  # reproducible screenshots: no saved layout
    else:
        restored = win.restore_layout(ws.settings)
        if not restored:
            win.resize(*size)
    from app.crash import CrashHandler, show_crash_dialog

    def on_crash(value, report, details):
        # Exceptions escaping a slot or a thread: a crash report in the user data folder and a
        # dialog naming it; the application stays alive.
        if headless:
            ws.show_error(value, "Unexpected error")
        else:
            show_crash_dialog(win, value, report, details)

    crash = CrashHandler(on_crash, parent=win).install()
    win.show()
    # Qt makes the last tabified dock current when the window first shows; pick the front
    # tab after show (the 3D view, hidden behind the DVH, then never starts VTK).
    if panel == "3d":
        win.volume_dock.raise_()
    elif panel == "dvh" or not restored:
        win.dvh_dock.raise_()
    if patient:
        ws.patients.load(patient, phantom_file=phantom_file)
    if not headless:
        # a crash left an autosave newer than the last clean exit: offer it (non-blocking)
        QTimer.singleShot(0, ws.project.offer_restore)
    exit_code = {"rc": 0}
    if headless:
        def finish():
            if ws.runner.busy:
                return  # the next busyChanged(False) calls again
            try:
                ws.runner.busyChanged.disconnect(on_idle)
            except (RuntimeError, TypeError):
                pass
            if ws.errors:
                exit_code["rc"] = 2
                app.quit()
                return
            # One more turn of the event loop so the last DVH/dose updates are painted
            # (and, on a real display, VTK has rendered).
            QTimer.singleShot(300 if panel == "3d" else 50, shoot)

        def shoot():
            win.save_png(screenshot)
            print(f"openatp: screenshot {screenshot} ({time.perf_counter() - t0:.2f} s after start)", file=sys.stderr)
            app.quit()

        def on_idle(busy):
            if not busy:
                finish()

        ws.runner.busyChanged.connect(on_idle)
        if not ws.runner.busy:
            QTimer.singleShot(0, finish)
    # Probe CPU/GPU for the status bar once the first frame is up (torch import is slow).
    QTimer.singleShot(200, lambda: ws.probe_device(device))
    if not screenshot:
        QTimer.singleShot(PRELOAD_DELAY_MS, preload_planning_modules)
    app.exec()
    crash.uninstall()
    ws.runner.shutdown()
    if headless and ws.errors:
        err = ws.errors[0]
        if isinstance(err, OpenATPError):
            raise err
        raise RuntimeError(error_text(err)[0])
    return exit_code["rc"]


__all__ = ["Workstation", "run_gui", "ensure_qapp", "make_settings", "error_text", "THEMES"]
