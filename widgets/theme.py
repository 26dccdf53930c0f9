"""A dark and a light theme: a QPalette on the Fusion style plus a small stylesheet."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette

from widgets.icons import set_icon_color

THEMES = ("dark", "light")

_DARK = {
    "window": "#2b2d31", "base": "#1e1f22", "alt": "#26282c", "text": "#dcdde0",
    "button": "#34363b", "highlight": "#3d7bd9", "htext": "#ffffff", "mid": "#45474d",
    "disabled": "#7d7f85", "tooltip": "#3a3c41", "link": "#6ea8ff", "icon": "#d0d2d6",
}
_LIGHT = {
    "window": "#eef0f3", "base": "#ffffff", "alt": "#f4f5f7", "text": "#1d1f23",
    "button": "#e3e6ea", "highlight": "#2f6fd0", "htext": "#ffffff", "mid": "#c4c8ce",
    "disabled": "#9aa0a8", "tooltip": "#ffffe8", "link": "#1a5fc8", "icon": "#33363b",
}


def palette(name: str) -> QPalette:
    c = _DARK if name == "dark" else _LIGHT
    p = QPalette()
    R = QPalette.ColorRole
    p.setColor(R.Window, QColor(c["window"]))
    p.setColor(R.WindowText, QColor(c["text"]))
    p.setColor(R.Base, QColor(c["base"]))
    p.setColor(R.AlternateBase, QColor(c["alt"]))
    p.setColor(R.Text, QColor(c["text"]))
    p.setColor(R.Button, QColor(c["button"]))
    p.setColor(R.ButtonText, QColor(c["text"]))
    p.setColor(R.Highlight, QColor(c["highlight"]))
    p.setColor(R.HighlightedText, QColor(c["htext"]))
    p.setColor(R.ToolTipBase, QColor(c["tooltip"]))
    p.setColor(R.ToolTipText, QColor(c["text"]))
    p.setColor(R.Mid, QColor(c["mid"]))
    p.setColor(R.Link, QColor(c["link"]))
    p.setColor(R.PlaceholderText, QColor(c["disabled"]))
    for role in (R.WindowText, R.Text, R.ButtonText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(c["disabled"]))
    return p


def stylesheet(name: str) -> str:
    c = _DARK if name == "dark" else _LIGHT
    return f"""
QDockWidget::title {{ background: {c['button']}; padding: 4px 6px; }}
QToolBar {{ border: none; spacing: 2px; padding: 2px; }}
QStatusBar QLabel {{ padding: 0 8px; }}
QLabel#readout {{ font-family: monospace; padding: 2px 6px; }}
QLabel#statusDevice, QLabel#statusPatient, QLabel#statusPlan {{
    border-left: 1px solid {c['mid']}; }}
QTableWidget {{ gridline-color: {c['mid']}; }}
QHeaderView::section {{ background: {c['button']}; padding: 3px; border: none;
    border-right: 1px solid {c['mid']}; }}
"""


def apply_theme(app, name: str) -> str:
    """Apply theme ``name`` (``dark`` or ``light``) to ``app``; returns the name used."""
    name = name if name in THEMES else "dark"
    app.setStyle("Fusion")
    app.setPalette(palette(name))
    app.setStyleSheet(stylesheet(name))
    set_icon_color((_DARK if name == "dark" else _LIGHT)["icon"])
    return name
