"""Qt widgets of the planning workstation; they take a model and emit signals, and never
import ``app``. Importing this package applies :mod:`widgets.qt_compat` first."""

from widgets.qt_compat import ensure_singletons_immortal as _ensure_singletons_immortal

_ensure_singletons_immortal()
