"""Work-around for a reference-count defect of the installed PySide6 on Python 3.11.

Measured here (PySide6/shiboken6 6.12.0, ``cp310-abi3`` wheel, CPython 3.11.7): every
call of a ``void`` Qt method from Python (``QWidget.update()``, ``setEnabled()``, ...)
drops one reference to ``None``, and every ``Signal.emit`` drops one reference to
``True``. On CPython >= 3.12 those singletons are immortal, so the missing increments are
harmless there (which is presumably why the wheel ships like this); on 3.11 ``True`` starts
with about 150 references, so a window that emits a few hundred signals aborts with
"Fatal Python error: bool_dealloc". We emulate 3.12's immortality once, at import: each
singleton's count is raised by 2**40, which no session can leak away.

The patch is applied only on CPython < 3.12 and only when the defect is actually
observed (one ``emit`` is probed), so a fixed PySide6 makes it a no-op.
"""

from __future__ import annotations

import ctypes
import sys

_BOOST = 1 << 40
_applied = False


def _emit_leaks_true() -> bool:
    from PySide6.QtCore import QObject, Signal

    class _Probe(QObject):
        sig = Signal()

    probe = _Probe()
    before = sys.getrefcount(True)
    for _ in range(4):
        probe.sig.emit()
    return sys.getrefcount(True) < before


def ensure_singletons_immortal() -> bool:
    """Apply the work-around if needed; returns True when it is (or was) applied."""
    global _applied
    if _applied:
        return True
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    if not _emit_leaks_true():
        return False
    for obj in (None, True, False):
        # ob_refcnt is the first Py_ssize_t of every CPython object header.
        ctypes.c_ssize_t.from_address(id(obj)).value += _BOOST
    _applied = True
    return True
