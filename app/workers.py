"""Run a core callable on a QThread with progress, ETA and cancel (docs/architecture.md 4).

One pattern for every long task: a :class:`Worker` (QObject) is moved to a QThread; it
calls ``fn(*args, progress=Progress, cancel=CancelToken, **kwargs)`` there and reports
back through signals only. Workers never touch widgets. Cancel sets the
:class:`core.progress.CancelToken`; the core raises :class:`core.errors.Cancelled` at its
next check and the worker reports ``cancelled``. No ``processEvents()`` anywhere: the GUI
thread keeps running its event loop while the thread works.
"""

from __future__ import annotations

import time
import traceback

from PySide6.QtCore import QObject, QThread, Signal, Slot

import widgets  # noqa: F401  (applies the PySide6 reference-count work-around first)
from core.errors import Cancelled
from core.progress import CancelToken, Progress, ProgressEvent


class Worker(QObject):
    """Runs one callable once, on whatever thread it lives in.

    Signals
    -------
    progress(float, str, object)
        Fraction 0..1, message, ETA in seconds (or None).
    finished(object)
        The callable's return value.
    failed(object)
        The exception it raised (an :class:`core.errors.OpenATPError` for planner-facing
        problems; anything else is a defect and carries ``__traceback_text__``).
    cancelled(object)
        :class:`core.errors.Cancelled`; its ``result`` keeps the last good result.
    """

    progress = Signal(float, str, object)
    finished = Signal(object)
    failed = Signal(object)
    cancelled = Signal(object)

    def __init__(self, fn, *args, **kwargs):
        super().__init__()
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self.cancel_token = CancelToken()
        self._last_emit = 0.0
        self._last_message = None

    #: Seconds between forwarded progress reports: a core loop may report thousands of
    #: times a second, and each report is an event the GUI thread must process.
    MIN_INTERVAL_S = 0.05

    def _on_core_progress(self, ev: ProgressEvent) -> None:
        # Called on the worker thread: a queued signal carries it to the GUI thread.
        now = time.monotonic()
        if ev.fraction < 1.0 and ev.message == self._last_message and now - self._last_emit < self.MIN_INTERVAL_S:
            return
        self._last_emit, self._last_message = now, ev.message
        self.progress.emit(float(ev.fraction), ev.message, ev.eta_s)

    @Slot()
    def run(self) -> None:
        try:
            result = self._fn(*self._args, progress=Progress(self._on_core_progress),
                              cancel=self.cancel_token, **self._kwargs)
        except Cancelled as exc:
            self.cancelled.emit(exc)
        except Exception as exc:  # noqa: BLE001 - reported to the GUI thread, never swallowed
            exc.__traceback_text__ = traceback.format_exc()
            self.failed.emit(exc)
        else:
            self.finished.emit(result)

    def cancel(self) -> None:
        """Ask the running callable to stop at its next cancel check (thread-safe)."""
        self.cancel_token.cancel()


class Task(QObject):
    """A worker and its thread; emits ``done`` once the thread has really stopped.

    Signals
    -------
    progress(float, str, object)
        Forwarded from the worker.
    succeeded(object), failed(object), cancelled(object)
        Exactly one of these, on the GUI thread.
    done()
        The thread has finished; the task can be dropped.
    """

    progress = Signal(float, str, object)
    succeeded = Signal(object)
    failed = Signal(object)
    cancelled = Signal(object)
    done = Signal()

    def __init__(self, name: str, fn, *args, parent=None, **kwargs):
        super().__init__(parent)
        self.name = name
        self.thread = QThread()
        self.thread.setObjectName(f"openatp-{name}")
        self.worker = Worker(fn, *args, **kwargs)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.progress.connect(self.progress)
        self.worker.finished.connect(self._on_finished)
        self.worker.failed.connect(self._on_failed)
        self.worker.cancelled.connect(self._on_cancelled)
        self.thread.finished.connect(self._on_thread_finished)
        self.outcome = None  # "succeeded" | "failed" | "cancelled"
        self.result = None
        self.cancel_token = self.worker.cancel_token
        # Python-side state: the Qt objects are deleted once the thread ends, and a caller
        # holding this task must still be able to ask whether it runs.
        self._started = False
        self._ended = False

    def start(self) -> None:
        self._started = True
        self.thread.start()

    def cancel(self) -> None:
        self.cancel_token.cancel()  # a plain Python object: safe even after the thread ended

    @property
    def running(self) -> bool:
        return self._started and not self._ended

    def wait(self, ms: int = 10000) -> bool:
        if self._ended or not self._started:
            return True
        return self.thread.wait(ms)

    def _finish(self, outcome: str, value) -> None:
        self.outcome, self.result = outcome, value
        self.thread.quit()

    def _on_finished(self, result) -> None:
        self._finish("succeeded", result)
        self.succeeded.emit(result)

    def _on_failed(self, exc) -> None:
        self._finish("failed", exc)
        self.failed.emit(exc)

    def _on_cancelled(self, exc) -> None:
        self._finish("cancelled", exc)
        self.cancelled.emit(exc)

    def _on_thread_finished(self) -> None:
        self._ended = True
        self.worker.deleteLater()
        self.done.emit()


class TaskRunner(QObject):
    """Starts tasks and keeps them alive until their threads end.

    Signals
    -------
    started(object)
        A :class:`Task` was started (e.g. to attach a progress widget).
    busyChanged(bool)
        Whether any task is running.
    """

    started = Signal(object)
    busyChanged = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._tasks: list[Task] = []

    def run(self, name: str, fn, *args, on_success=None, on_failure=None, on_cancel=None, **kwargs) -> Task:
        """Run ``fn(*args, progress=..., cancel=..., **kwargs)`` on a new thread."""
        task = Task(name, fn, *args, parent=self, **kwargs)
        if on_success is not None:
            task.succeeded.connect(on_success)
        if on_failure is not None:
            task.failed.connect(on_failure)
        if on_cancel is not None:
            task.cancelled.connect(on_cancel)
        task.done.connect(lambda t=task: self._on_task_done(t))
        was_busy = self.busy
        self._tasks.append(task)
        task.start()
        self.started.emit(task)
        if not was_busy:
            self.busyChanged.emit(True)
        return task

    @property
    def busy(self) -> bool:
        return bool(self._tasks)

    @property
    def tasks(self) -> list:
        return list(self._tasks)

    def cancel_all(self) -> None:
        for t in self._tasks:
            t.cancel()

    def shutdown(self, ms: int = 5000) -> None:
        """Cancel everything and wait for the threads (window close)."""
        self.cancel_all()
        for t in list(self._tasks):
            # The task's own quit() (in _finish) would arrive through this thread's event
            # loop, which is blocked here; quit() now makes the thread's exec() return as
            # soon as the cancelled worker returns.
            if t.running:
                t.thread.quit()
            t.wait(ms)

    def _on_task_done(self, task: Task) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
            task.thread.deleteLater()
            task.deleteLater()
        if not self._tasks:
            self.busyChanged.emit(False)
