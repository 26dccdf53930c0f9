"""Icons by role, from qtawesome (Material Design Icons 6), with a plain fallback.

Code asks for an icon by what it means (``icon("open")``), never by font glyph, so the
icon set can change in one place.
"""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtGui import QIcon

ICON_NAMES = {
    "open": "mdi6.folder-open-outline",
    "open_dose": "mdi6.radioactive",
    "screenshot": "mdi6.camera-outline",
    "quit": "mdi6.exit-to-app",
    "plan": "mdi6.play-circle-outline",
    "cancel": "mdi6.close-circle-outline",
    "axial": "mdi6.alpha-a-box-outline",
    "reset_view": "mdi6.fit-to-screen-outline",
    "soft_tissue": "mdi6.human",
    "lung": "mdi6.lungs",
    "bone": "mdi6.bone",
    "isodose": "mdi6.chart-bell-curve",
    "wash": "mdi6.gradient-horizontal",
    "theme": "mdi6.theme-light-dark",
    "structures": "mdi6.shape-outline",
    "dvh": "mdi6.chart-line",
    "volume": "mdi6.cube-outline",
    "about": "mdi6.information-outline",
    "next_slice": "mdi6.chevron-up",
    "prev_slice": "mdi6.chevron-down",
    "show_all": "mdi6.eye-outline",
    "hide_all": "mdi6.eye-off-outline",
    "met": "mdi6.check-circle",
    "unmet": "mdi6.alert-circle",
    "changed": "mdi6.circle-medium",
    "add": "mdi6.plus",
    "remove": "mdi6.minus",
    "move_up": "mdi6.arrow-up",
    "move_down": "mdi6.arrow-down",
    "template": "mdi6.file-document-outline",
    "save": "mdi6.content-save-outline",
    "predict": "mdi6.brain",
    "goals": "mdi6.format-list-numbered",
    "optimize": "mdi6.tune-variant",
    "reoptimize": "mdi6.fire",
    "revert": "mdi6.history",
    "export": "mdi6.file-export-outline",
    "compare": "mdi6.compare-horizontal",
}


@lru_cache(maxsize=None)
def _cached(name: str, color: str) -> QIcon:
    glyph = ICON_NAMES.get(name)
    if glyph is None:
        return QIcon()
    try:
        import qtawesome as qta

        return qta.icon(glyph, color=color)
    except Exception:  # noqa: BLE001 - a missing icon font must never stop the GUI
        return QIcon()


_color = "#d0d0d0"


def set_icon_color(color: str) -> None:
    """Icon colour to match the theme (applies to icons created afterwards)."""
    global _color
    _color = color


def icon(name: str) -> QIcon:
    """The icon for role ``name`` (empty icon if unknown or the icon font is unavailable)."""
    return _cached(name, _color)


def status_icon(name: str, color: str) -> QIcon:
    """The icon for role ``name`` in a fixed colour (e.g. a green "met", a red "unmet"),
    whatever the theme."""
    return _cached(name, color)
