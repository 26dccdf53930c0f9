"""The review window: the blinded review panel, a status bar and File > Quit.

Opened by ``openatp review gui STUDY --reviewer NAME`` (:func:`run_review_gui`) or from
the workstation's File > Open review study… (:class:`app.controllers.review.ReviewController`).
The window composes widgets only; :class:`app.controllers.review.ReviewSession` drives it.
Its title and status bar show the reviewer's name and progress, never a path.
"""

from __future__ import annotations

import sys
import time
import traceback

import widgets  # noqa: F401  (applies the PySide6 reference-count work-around first)
from PySide6.QtCore import QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QLabel, QMainWindow, QMessageBox

from widgets.review_panel import ReviewPanel
from widgets.snapshot import save_widget_png, widget_png_bytes
from widgets.task_progress import TaskProgress


class ReviewWindow(QMainWindow):
    """Top-level window around a :class:`widgets.review_panel.ReviewPanel`.

    Signals
    -------
    closing()
        The window is about to close (the session saves a comment being typed and closes
        the study file).
    """

    closing = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.session = None
        self._reviewer = ""
        self._setup_ui()

    def _setup_ui(self) -> None:
        self.setWindowTitle("OpenATP review")
        self.panel = ReviewPanel()
        self.setCentralWidget(self.panel)
        menu = self.menuBar().addMenu("&File")
        self.quit_action = QAction("&Quit (answers are saved)", self)
        self.quit_action.setShortcut(QKeySequence("Ctrl+Q"))
        self.quit_action.triggered.connect(self.close)
        menu.addAction(self.quit_action)
        sb = self.statusBar()
        self.task_progress = TaskProgress()
        sb.addWidget(self.task_progress, 1)
        self.reviewer_label = QLabel("")
        self.reviewer_label.setObjectName("reviewReviewer")
        sb.addPermanentWidget(self.reviewer_label)

    def task_progress_from(self, runner) -> None:
        """Show the runner's tasks (case loading) in the status bar."""
        def started(task):
            self.task_progress.start(task.name)
            task.progress.connect(self.task_progress.on_progress)
            task.done.connect(lambda: None if runner.busy else self.task_progress.reset())

        runner.started.connect(started)

    def set_reviewer(self, name: str) -> None:
        self._reviewer = name
        self.reviewer_label.setText(f"reviewer: {name}")
        self.set_case_title(None, 0)

    def set_case_title(self, position, n_cases: int) -> None:
        where = f" — case {position + 1} of {n_cases}" if position is not None else ""
        self.setWindowTitle(f"OpenATP review — {self._reviewer}{where}")

    def show_error(self, exc: BaseException, title: str = "OpenATP review") -> None:
        from app.application import error_text

        message, details = error_text(exc)
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        if details:
            box.setDetailedText(details)
        box.open()

    def png_bytes(self) -> bytes:
        return widget_png_bytes(self)

    def save_png(self, path) -> None:
        save_widget_png(self, path)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.closing.emit()
        super().closeEvent(event)


def run_review_gui(study, reviewer: str, screenshot: str | None = None, theme: str | None = None,
                   size=(1600, 1000), case: int | None = None) -> int:
    """``openatp review gui``: the review window, resumed at the reviewer's first open case.

    With ``screenshot`` it waits until the case is on screen, saves the window as a PNG and
    exits (errors then end the run with the typed error: one line, exit 2). ``case``
    (1-based position in the reviewer's order) opens that case instead of resuming.
    """
    from app.application import ensure_qapp, error_text, make_settings
    from app.controllers.review import open_review
    from core.errors import OpenATPError
    from widgets.theme import apply_theme

    t0 = time.perf_counter()
    app = ensure_qapp()
    headless = screenshot is not None
    apply_theme(app, theme or str(make_settings().value("theme", "dark")))
    window, session = open_review(study, reviewer, headless=headless)
    previous_hook = sys.excepthook

    def excepthook(etype, value, tb):
        value.__traceback_text__ = "".join(traceback.format_exception(etype, value, tb))
        session.show_error(value, "Unexpected error")

    sys.excepthook = excepthook
    window.resize(*size)
    window.show()
    if headless:
        def shoot():
            if session.errors:
                app.quit()
                return
            if session.runner.busy:  # the next case is being prefetched: let it finish first
                QTimer.singleShot(100, shoot)
                return
            window.save_png(screenshot)
            print(f"openatp: screenshot {screenshot} ({time.perf_counter() - t0:.2f} s after start)", file=sys.stderr)
            app.quit()

        def settle(*_):
            QTimer.singleShot(150, shoot)  # one more turn so the views have painted

        session.caseShown.connect(settle)
        session.finishedAll.connect(settle)
        session.runner.busyChanged.connect(lambda busy: (not busy and session.errors) and app.quit())
    if case is not None:
        if not 1 <= case <= session.n_cases:
            from core.errors import InputError

            session.close()
            raise InputError(f"--case must be 1 .. {session.n_cases}, got {case}")
        session.go_to(case - 1)
    else:
        session.resume()
    app.exec()
    sys.excepthook = previous_hook
    session.close()
    if headless and session.errors:
        err = session.errors[0]
        if isinstance(err, OpenATPError):
            raise err
        raise RuntimeError(error_text(err)[0])
    return 0
