"""Crash reports and start-up checks of the GUI.

An exception nobody caught -- one escaping a Qt slot (``sys.excepthook``) or a Python
thread (``threading.excepthook``) -- is a defect. :class:`CrashHandler` writes a report
(traceback, versions, installation, the end of the log) to
``<user data>/crash-reports/crash-<time>-<pid>.txt``, logs it, and shows the planner a
dialog that names the file; the application stays open. Reports never go into the
installation (see :mod:`core.paths`).

:func:`display_problem` says in plain words why the GUI cannot open a window (no
``DISPLAY`` on Linux) before Qt aborts the process with a C++ message.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

log = logging.getLogger("openatp.crash")

_LOG_TAIL_LINES = 200


def write_crash_report(etype, value, tb, thread_name: str | None = None,
                       folder: str | Path | None = None) -> Path | None:
    """Write one crash report and return its path (None if it could not be written).

    Parameters
    ----------
    etype, value, tb
        The exception, as ``sys.excepthook`` receives it.
    thread_name : str, optional
        The thread it happened in (default: the GUI/main thread).
    folder : str or Path, optional
        Where to write; default ``<user data>/crash-reports``.
    """
    from core.io.atomic import atomic_write_text
    from core.logs import environment_report, log_file
    from core.paths import user_subdir

    trace = "".join(traceback.format_exception(etype, value, tb))
    log.error("unhandled exception in %s thread:\n%s", thread_name or "main", trace.rstrip())
    try:
        env = environment_report()
    except Exception as exc:  # noqa: BLE001 - a report without versions beats none
        env = f"(environment unavailable: {exc!r})"
    parts = [f"OpenATP crash report, {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
             f"thread: {thread_name or threading.current_thread().name}",
             f"command line: {' '.join(sys.argv)}",
             "", env, "", trace.rstrip()]
    lf = log_file()
    if lf is not None and lf.exists():
        try:
            tail = lf.read_text(encoding="utf-8", errors="replace").splitlines()[-_LOG_TAIL_LINES:]
            parts += ["", f"-- last {len(tail)} lines of {lf} --", *tail]
        except OSError:
            pass
    try:
        target = Path(folder) if folder is not None else user_subdir("crash")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = target / f"crash-{stamp}-{os.getpid()}-{int(time.time() * 1000) % 1000:03d}.txt"
        atomic_write_text(path, "\n".join(parts) + "\n")
    except Exception as exc:  # noqa: BLE001 - never raise from inside an excepthook
        log.error("could not write the crash report: %s", exc)
        return None
    log.error("crash report written to %s", path)
    return path


def crash_message(value: BaseException, report: Path | None) -> str:
    """What the planner reads: what happened, that the data is safe, where the report is."""
    where = (f"A crash report was saved to:\n{report}\n\nPlease send this file to your OpenATP support contact."
             if report is not None else "No crash report could be saved (the user data folder is not writable).")
    return (f"OpenATP hit an unexpected error ({type(value).__name__}: {value}).\n"
            f"The last action did not finish; your saved data is unchanged.\n\n{where}")


def show_crash_dialog(parent, value: BaseException, report: Path | None, details: str = ""):
    """A window-modal dialog naming the report; returns the box (opened, not blocking)."""
    from PySide6.QtWidgets import QMessageBox

    box = QMessageBox(QMessageBox.Icon.Critical, "OpenATP: unexpected error", crash_message(value, report),
                      QMessageBox.StandardButton.Ok, parent)
    box.setObjectName("crashDialog")
    box.setTextInteractionFlags(box.textInteractionFlags() | _selectable())
    if details:
        box.setDetailedText(details)
    box.open()  # does not block: a crash inside a modal loop must not nest loops
    return box


def _selectable():
    from PySide6.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse  # the path can be copied


class CrashHandler:
    """Installs ``sys.excepthook`` and ``threading.excepthook`` for the GUI.

    Parameters
    ----------
    notify : callable, optional
        ``notify(value, report_path, details)`` is called on the GUI thread after the report
        is written; default :func:`show_crash_dialog` on ``parent``. Tests pass their own to
        keep dialogs away.
    parent : QWidget, optional
        The dialog's parent window.
    folder : str or Path, optional
        Report folder (default ``<user data>/crash-reports``).

    Attributes
    ----------
    reports : list of Path
        Reports written by this handler, in order.
    """

    def __init__(self, notify: Callable | None = None, parent=None, folder: str | Path | None = None):
        self.notify = notify
        self.parent = parent
        self.folder = folder
        self.reports: list[Path] = []
        self._previous_sys = None
        self._previous_thread = None
        self._bridge = None

    # -- installation -------------------------------------------------------------------------------
    def install(self) -> CrashHandler:
        self._previous_sys = sys.excepthook
        self._previous_thread = threading.excepthook
        sys.excepthook = self._sys_hook
        threading.excepthook = self._thread_hook
        self._bridge = _make_bridge(self._notify_now)
        return self

    def uninstall(self) -> None:
        if sys.excepthook == self._sys_hook and self._previous_sys is not None:
            sys.excepthook = self._previous_sys
        if threading.excepthook == self._thread_hook and self._previous_thread is not None:
            threading.excepthook = self._previous_thread

    # -- hooks ------------------------------------------------------------------------------------------
    def _sys_hook(self, etype, value, tb) -> None:
        if issubclass(etype, KeyboardInterrupt):
            (self._previous_sys or sys.__excepthook__)(etype, value, tb)
            return
        self._handle(etype, value, tb, None)

    def _thread_hook(self, args) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "unknown"
        self._handle(args.exc_type, args.exc_value, args.exc_traceback, name)

    def _handle(self, etype, value, tb, thread_name) -> None:
        try:
            details = "".join(traceback.format_exception(etype, value, tb))
            if value is None:
                value = etype()
            value.__traceback_text__ = details  # app.application.error_text shows it
            report = write_crash_report(etype, value, tb, thread_name=thread_name, folder=self.folder)
            value.crash_report = report
            if report is not None:
                self.reports.append(report)
            if threading.current_thread() is threading.main_thread() or self._bridge is None:
                self._notify_now(value, report, details)
            else:  # dialogs only on the GUI thread: a queued signal carries it there
                self._bridge.crashed.emit((value, report, details))
        except Exception:  # noqa: BLE001 - an excepthook must not raise; fall back to stderr
            sys.__excepthook__(etype, value, tb)

    def _notify_now(self, value, report, details) -> None:
        if self.notify is not None:
            self.notify(value, report, details)
        else:
            show_crash_dialog(self.parent, value, report, details)


def _make_bridge(callback):
    """A QObject whose signal delivers thread crashes to the GUI thread (None without Qt)."""
    if "PySide6.QtCore" not in sys.modules:
        return None
    from PySide6.QtCore import QObject, Signal

    class _Bridge(QObject):
        crashed = Signal(object)

    bridge = _Bridge()
    bridge.crashed.connect(lambda payload: callback(*payload))
    return bridge


def display_problem(env=None, platform: str | None = None) -> str | None:
    """Why a window cannot open here, in a planner's (and IT's) words; None when it can.

    Only Linux/Unix is checked: there Qt's xcb platform needs ``DISPLAY`` (or Wayland's
    ``WAYLAND_DISPLAY``) and otherwise aborts the process. ``QT_QPA_PLATFORM`` set to
    anything (``offscreen``, ``vnc``, ...) is the user's explicit choice and passes.
    """
    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    if platform.startswith(("win", "darwin")) or env.get("QT_QPA_PLATFORM"):
        return None
    if env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"):
        return None
    return ("no display found (DISPLAY is not set): the OpenATP window needs a desktop session. "
            "The command-line tools work without one (e.g. 'openatp plan PATIENT --site hn --out DIR'); "
            "'openatp gui PATIENT --screenshot FILE' renders without a display")


__all__ = ["CrashHandler", "write_crash_report", "crash_message", "show_crash_dialog", "display_problem"]
