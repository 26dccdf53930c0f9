"""Progress reporting and cancellation without any GUI dependency.

Long core functions take ``progress=None, cancel=None``. They call
``progress.update(done, total, message, **metrics)`` and ``cancel.check()``; the CLI
sink draws a bar on stderr, the GUI sink forwards to a Qt signal. Nested stages use
:meth:`Progress.stage`, which maps a sub-task's 0..1 onto a slice of the parent's.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from core.errors import Cancelled


class CancelToken:
    """Thread-safe flag a GUI button or a signal handler sets; workers poll it."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self, result=None) -> None:
        """Raise :class:`Cancelled` (carrying ``result``) if cancel was requested."""
        if self._event.is_set():
            raise Cancelled(result=result)


def check_cancel(cancel: CancelToken | None, result=None) -> None:
    """``cancel.check()`` that accepts ``None``."""
    if cancel is not None:
        cancel.check(result)


@dataclass
class ProgressEvent:
    """One report: overall fraction in [0, 1], a message and optional metrics."""

    fraction: float
    message: str = ""
    metrics: dict = field(default_factory=dict)
    elapsed_s: float = 0.0

    @property
    def eta_s(self) -> float | None:
        if self.fraction <= 0.0 or self.fraction >= 1.0:
            return None
        return self.elapsed_s * (1.0 - self.fraction) / self.fraction


class Progress:
    """Progress reporter; ``callback`` receives :class:`ProgressEvent` objects.

    Parameters
    ----------
    callback : callable, optional
        Called on every update; ``None`` discards updates.
    lo, hi : float
        The slice of the root's [0, 1] that this reporter covers (set by :meth:`stage`).
    """

    def __init__(self, callback: Callable[[ProgressEvent], None] | None = None,
                 lo: float = 0.0, hi: float = 1.0, _t0: float | None = None,
                 prefix: str = "") -> None:
        self._callback = callback
        self._lo = lo
        self._hi = hi
        self._t0 = time.perf_counter() if _t0 is None else _t0
        self._prefix = prefix

    def update(self, done: float, total: float = 1.0, message: str = "", **metrics) -> None:
        if self._callback is None:
            return
        frac = 0.0 if total <= 0 else min(max(done / total, 0.0), 1.0)
        overall = self._lo + (self._hi - self._lo) * frac
        msg = f"{self._prefix}{message}" if self._prefix else message
        self._callback(ProgressEvent(overall, msg, dict(metrics), time.perf_counter() - self._t0))

    def stage(self, lo: float, hi: float, name: str = "") -> "Progress":
        """A child reporter whose 0..1 maps onto ``[lo, hi]`` of this one."""
        span = self._hi - self._lo
        return Progress(self._callback, self._lo + span * lo, self._lo + span * hi,
                        self._t0, prefix=f"{name}: " if name else self._prefix)


def report(progress: Progress | None, done: float, total: float = 1.0, message: str = "",
           **metrics) -> None:
    """``progress.update`` that accepts ``None``."""
    if progress is not None:
        progress.update(done, total, message, **metrics)


class StderrBar:
    """Callback drawing a one-line bar on stderr, only when stderr is a terminal."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self._stream = stream or sys.stderr
        self._width = width
        self._enabled = hasattr(self._stream, "isatty") and self._stream.isatty()
        self._last = -1.0

    def __call__(self, ev: ProgressEvent) -> None:
        if not self._enabled:
            return
        if ev.fraction - self._last < 0.005 and ev.fraction < 1.0:
            return
        self._last = ev.fraction
        n = int(ev.fraction * self._width)
        eta = f" ETA {ev.eta_s:4.0f}s" if ev.eta_s is not None else ""
        extra = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in ev.metrics.items())
        line = f"\r[{'#' * n}{'.' * (self._width - n)}] {ev.fraction * 100:5.1f}%{eta} {ev.message} {extra}"
        self._stream.write(line[:160].ljust(100))
        if ev.fraction >= 1.0:
            self._stream.write("\n")
        self._stream.flush()

    def close(self) -> None:
        if self._enabled and 0 <= self._last < 1.0:
            self._stream.write("\n")
            self._stream.flush()
