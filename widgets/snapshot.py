"""A widget as a PNG image: the window screenshots of the workstation and the review window."""

from __future__ import annotations

from PySide6.QtCore import QBuffer, QIODevice


def widget_png_bytes(widget) -> bytes:
    """``widget`` rendered (children included; VTK too on a real display) as PNG bytes."""
    pixmap = widget.grab()
    buf = QBuffer()
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    pixmap.save(buf, "PNG")
    return bytes(buf.data())


def save_widget_png(widget, path) -> None:
    """Write ``widget``'s PNG to ``path`` atomically (never a half-written image)."""
    from core.io.atomic import atomic_write_bytes

    atomic_write_bytes(path, widget_png_bytes(widget))
