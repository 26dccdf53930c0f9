"""Axial, coronal and sagittal CT views with linked crosshair, structures and dose.

Everything drawn comes from a :class:`widgets.viewer_model.ViewerModel`; the views only
render and turn mouse/keyboard input into model changes. Rendering is plain raster Qt:
each slice is one ``QImage`` built from numpy through a uint8 window/level lookup table,
structure outlines and isodose lines are marching-squares segments drawn with one
``drawLines`` call each, and all of it is cached per slice so scrolling back and forth
costs a cache hit.

Mouse: left button sets the crosshair (drag to follow), right-drag changes window (left /
right) and level (up / down), middle-drag or Shift+left pans, the wheel scrolls slices,
Ctrl+wheel zooms about the pointer, double-click resets zoom. Keys: Up/Down or
PageUp/PageDown scroll slices, Home resets the view.

Contouring: with a :class:`widgets.contour_editor.ContourEditor` attached
(:meth:`CtViewer.set_editor`) and one of its tools active, the left button (and
double-click, Enter, Escape, Backspace) goes to the tool instead; Ctrl+left erases with
the brush and subtracts with the polygon and freehand tools. Right-drag window/level,
middle-drag or Shift+left pan and the wheel keep working while a tool is active.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from PySide6.QtCore import QLineF, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen, QTransform
from PySide6.QtWidgets import (QComboBox, QGridLayout, QHBoxLayout, QLabel, QLineEdit,
                               QSizePolicy, QSlider, QSplitter, QVBoxLayout, QWidget)

from widgets.contours import marching_squares
from widgets.slice_geometry import EDGE_LABELS, VIEWS
from widgets.viewer_model import (DOSE_MODES, WINDOW_PRESETS, ViewerModel, apply_lut,
                                  dose_wash_lut, window_lut)


class _Lru(OrderedDict):
    """A tiny LRU cache: enough slices to scroll back and forth without holding a volume."""

    def __init__(self, maxsize: int):
        super().__init__()
        self.maxsize = maxsize

    def get_or(self, key, make):
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = make()
        self[key] = value
        if len(self) > self.maxsize:
            self.popitem(last=False)
        return value


def _segments_to_lines(seg: np.ndarray) -> list:
    """(N, 4) (r0, c0, r1, c1) pixel-centre segments -> QLineF in image pixel space."""
    if seg.size == 0:
        return []
    # pixel (r, c) covers [c, c+1] x [r, r+1]; its centre is at +0.5
    xy = (seg[:, [1, 0, 3, 2]] + 0.5).tolist()
    return [QLineF(x0, y0, x1, y1) for x0, y0, x1, y1 in xy]


class SliceView(QWidget):
    """One orthogonal view of a :class:`ViewerModel`.

    Signals
    -------
    sliceChanged(str, int)
        This view's slice index changed (view name, array index along its slice axis).
    hovered(object)
        The pointer moved over the image: the model's :meth:`ViewerModel.sample` dict.
    rendered(str)
        A frame was painted (view name); tests and the benchmark count these.
    """

    sliceChanged = Signal(str, int)
    hovered = Signal(object)
    rendered = Signal(str)

    CROSSHAIR_COLOR = QColor(80, 200, 255, 120)
    CACHE_BYTES = 32 * 2**20

    def __init__(self, model: ViewerModel, view: str, parent=None, show_legend: bool = False):
        super().__init__(parent)
        if view not in VIEWS:
            raise ValueError(f"unknown view '{view}'")
        self.model = model
        self.view = view
        self.show_legend = show_legend
        self.zoom = 1.0
        self.pan = QPointF(0.0, 0.0)
        self.render_count = 0
        self._drag = None  # (mode, start pos, start window, start level, start pan)
        self._slice = -1
        self._images = _Lru(48)
        self._outlines = _Lru(512)
        self._isodoses = _Lru(48)
        self._washes = _Lru(24)
        self._lut = None
        self._lut_key = None
        self._frame = None
        self._frame_key_cached = None
        self._profiles: dict = {}
        self.editor = None  # a ContourEditor; its active tool gets the left button
        self._tool_drag = False
        self._setup_ui()
        model.volumeChanged.connect(self._on_volume_changed)
        model.cursorChanged.connect(self._on_cursor_changed)
        model.windowLevelChanged.connect(self._on_display_changed)
        model.structuresChanged.connect(self._on_display_changed)
        model.doseChanged.connect(self._on_dose_changed)
        if model.grid is not None:
            self._slice = model.cursor[model.mappings[view].slice_axis]

    def _setup_ui(self) -> None:
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.WheelFocus)
        self.setMinimumSize(160, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, True)

    # -- model events -----------------------------------------------------------------
    @property
    def mapping(self):
        return self.model.mappings.get(self.view)

    @property
    def slice_index(self) -> int:
        return self._slice

    def _on_volume_changed(self) -> None:
        for c in (self._images, self._outlines, self._isodoses, self._washes):
            c.clear()
        self._profiles.clear()
        self._frame = None
        self.zoom, self.pan = 1.0, QPointF(0.0, 0.0)
        m = self.mapping
        self._slice = self.model.cursor[m.slice_axis] if m is not None else -1
        if m is not None:
            # ~32 MB of RGB32 slices per cache and view: 256 slices of 128^2, 30 of 512^2
            n = int(min(max(self.CACHE_BYTES // (4 * m.n_rows * m.n_cols), 8), 256))
            self._images.maxsize = self._washes.maxsize = self._isodoses.maxsize = n
        self.update()

    def _on_cursor_changed(self, cursor) -> None:
        m = self.mapping
        if m is None:
            return
        s = int(cursor[m.slice_axis])
        if s != self._slice:
            self._slice = s
            self.sliceChanged.emit(self.view, s)
        self.update()  # the crosshair moves even when the slice does not

    def _on_display_changed(self, *args) -> None:
        self.update()

    def _on_dose_changed(self) -> None:
        self._isodoses.clear()
        self._washes.clear()
        self._frame = None
        self.update()

    # -- geometry -----------------------------------------------------------------------
    def image_transform(self) -> QTransform:
        """Image pixel space (x = column, y = row) -> widget pixels.

        At zoom 1 the model's focus box (the body, when known) fills the view; the pixel
        aspect ratio always follows the voxel spacing.
        """
        m = self.mapping
        w, h = max(self.width(), 1), max(self.height(), 1)
        r0, r1, c0, c1 = 0.0, float(m.n_rows), 0.0, float(m.n_cols)
        box = self.model.focus_box
        if box is not None:
            a = m.to_screen(box[0])
            b = m.to_screen(box[1])
            r0, r1 = min(a[0], b[0]), max(a[0], b[0]) + 1.0
            c0, c1 = min(a[1], b[1]), max(a[1], b[1]) + 1.0
        # a 6 % margin so outlines at the edge of the focus box stay visible
        fit = min(w / ((c1 - c0) * m.col_mm), h / ((r1 - r0) * m.row_mm)) / 1.06
        sx = fit * self.zoom * m.col_mm
        sy = fit * self.zoom * m.row_mm
        ox = w / 2.0 - (c0 + c1) / 2.0 * sx + self.pan.x()
        oy = h / 2.0 - (r0 + r1) / 2.0 * sy + self.pan.y()
        return QTransform(sx, 0.0, 0.0, sy, ox, oy)

    def widget_to_index(self, pos: QPointF) -> np.ndarray:
        """Widget position -> fractional array index on the current slice."""
        inv, _ = self.image_transform().inverted()
        p = inv.map(QPointF(pos))
        return self.mapping.to_index(p.y() - 0.5, p.x() - 0.5, self._slice)

    def index_to_widget(self, index) -> QPointF:
        row, col, _ = self.mapping.to_screen(index)
        return self.image_transform().map(QPointF(col + 0.5, row + 0.5))

    # -- rendering pieces (cached) --------------------------------------------------------
    def _ct_image(self, s: int) -> QImage:
        key = (s, self.model.window, self.model.level)

        def make():
            if self._lut_key != key[1:]:
                self._lut = window_lut(self.model.window, self.model.level)
                self._lut_key = key[1:]
            m = self.mapping
            if self.model.hu is None:
                buf = np.zeros((m.n_rows, m.n_cols), np.uint8)
            else:
                buf = apply_lut(m.extract(self.model.hu, s), self._lut)
            img = QImage(buf.data, buf.shape[1], buf.shape[0], buf.strides[0], QImage.Format.Format_Grayscale8)
            # The raster engine draws RGB32 directly; a Grayscale8 image would be converted
            # on every paint. The conversion also copies, so numpy's buffer may go.
            return img.convertToFormat(QImage.Format.Format_RGB32)

        return self._images.get_or(key, make)

    def _slice_profile(self, key, volume, reduce) -> np.ndarray:
        """Per-slice ``reduce`` (any / max) of a volume along this view's slice axis, computed
        once: most structures occupy few slices, and skipping empty ones is free."""
        prof = self._profiles.get(key)
        if prof is None:
            other = tuple(a for a in range(3) if a != self.mapping.slice_axis)
            prof = reduce(volume, axis=other)
            self._profiles[key] = prof
        return prof

    def _outline(self, s: int, layer) -> list:
        if not self._slice_profile(("mask", layer.name, id(layer.mask)), layer.mask, np.any)[s]:
            return []
        key = (s, layer.name, id(layer.mask))
        return self._outlines.get_or(
            key, lambda: _segments_to_lines(marching_squares(self.mapping.extract(layer.mask, s), 0.5)))

    def invalidate_structure(self, name: str) -> None:
        """Forget the cached outlines of ``name``: its mask was edited in place (the cache
        keys on the array's identity, which an in-place edit keeps)."""
        for key in [k for k in self._outlines if k[1] == name]:
            del self._outlines[key]
        for key in [k for k in self._profiles if k[0] == "mask" and k[1] == name]:
            del self._profiles[key]
        self._frame = None
        self.update()

    def _isodose_lines(self, s: int) -> list:
        model = self.model
        levels = model.isodose_levels_gy()
        key = (s, model.dose_version, tuple(lv[0] for lv in levels))

        def make():
            top = self._slice_profile(("dose", model.dose_version), model.dose_gy, np.max)[s]
            todo = [(gy, color) for gy, _, color in levels if 0 < gy <= top]
            if not todo:
                return []
            plane = np.ascontiguousarray(self.mapping.extract(model.dose_gy, s), dtype=np.float32)
            return [(color, _segments_to_lines(marching_squares(plane, gy))) for gy, color in todo]

        return self._isodoses.get_or(key, make)

    def _wash_image(self, s: int) -> QImage:
        model = self.model
        key = (s, model.dose_version, model.wash_opacity, model.reference_gy)

        def make():
            plane = self.mapping.extract(model.dose_gy, s)
            ref = model.reference_gy if model.reference_gy > 0 else 1.0
            # 0 .. 110 % of the reference over the map; below 5 % stays transparent.
            t = np.clip(plane / (1.1 * ref), 0.0, 1.0)
            idx = (t * 255).astype(np.uint8)
            idx[plane < 0.05 * ref] = 0
            buf = np.ascontiguousarray(dose_wash_lut(model.wash_opacity)[idx])
            img = QImage(buf.data, buf.shape[1], buf.shape[0], buf.strides[0], QImage.Format.Format_RGBA8888)
            img._keep = buf
            return img

        return self._washes.get_or(key, make)

    # -- Qt overrides --------------------------------------------------------------------
    def _frame_key(self) -> tuple:
        """Everything a frame depends on except the crosshair."""
        model = self.model
        t = self.image_transform()
        return (self._slice, self.width(), self.height(), self.devicePixelRatioF(),
                t.m11(), t.m22(), t.dx(), t.dy(), model.window, model.level, model.dose_version,
                model.dose_mode, model.wash_opacity, model.isodose_levels, model.isodose_unit,
                model.reference_gy, tuple((n, id(layer.mask), layer.visible, layer.color)
                                          for n, layer in model.structures.items()))

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        m = self.mapping
        if m is not None and self._slice < 0:
            self._slice = self.model.cursor[m.slice_axis]
        p = QPainter(self)
        try:
            if m is None:
                p.fillRect(self.rect(), QColor(0, 0, 0))
                p.setPen(QColor(150, 150, 150))
                p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "No patient loaded")
                return
            # The frame without the crosshair is kept: when another view moves the cursor
            # this view only blits it and draws the new crosshair (the common case while
            # scrolling: two of three views keep their slice).
            key = self._frame_key()
            if key != self._frame_key_cached or self._frame is None:
                self._frame = self._render_frame()
                self._frame_key_cached = key
            p.drawImage(0, 0, self._frame)
            p.setTransform(self.image_transform())
            self._paint_crosshair(p)
            if self.editor is not None and self.editor.tool is not None:
                self.editor.paint_overlay(p, self.view, self._slice)
        finally:
            p.end()
        self.render_count += 1
        self.rendered.emit(self.view)

    def _render_frame(self) -> QImage:
        dpr = self.devicePixelRatioF()
        frame = QImage(int(self.width() * dpr), int(self.height() * dpr), QImage.Format.Format_RGB32)
        frame.setDevicePixelRatio(dpr)
        frame.fill(QColor(0, 0, 0))
        m, s, model = self.mapping, self._slice, self.model
        p = QPainter(frame)
        try:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.zoom < 2.5)
            p.setTransform(self.image_transform())
            target = QRectF(0, 0, m.n_cols, m.n_rows)
            p.drawImage(target, self._ct_image(s))
            have_dose = model.dose_gy is not None and model.reference_gy > 0
            if have_dose and model.dose_mode in ("wash", "both") and model.wash_opacity > 0:
                p.drawImage(target, self._wash_image(s))
            # Integer-width cosmetic pens take fast paths (a 1.6 px antialiased pen cost 2-4x
            # more than 1 or 2 px): structures 2 px, isodoses 1 px
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            for layer in model.structures.values():
                if layer.visible:
                    lines = self._outline(s, layer)
                    if lines:
                        pen = QPen(QColor(*layer.color), 2.0)
                        pen.setCosmetic(True)  # same on-screen width at any zoom
                        p.setPen(pen)
                        p.drawLines(lines)
            if have_dose and model.dose_mode in ("isodose", "both"):
                for color, lines in self._isodose_lines(s):
                    if lines:
                        pen = QPen(QColor(*color), 1.0)
                        pen.setCosmetic(True)
                        p.setPen(pen)
                        p.drawLines(lines)
            p.resetTransform()
            self._paint_labels(p)
            if self.show_legend and have_dose and model.dose_mode != "off":
                self._paint_legend(p)
        finally:
            p.end()
        return frame

    def _paint_crosshair(self, p: QPainter) -> None:
        m = self.mapping
        row, col, _ = m.to_screen(self.model.cursor)
        # Solid, translucent, not antialiased: a dashed antialiased line across the view
        # cost more than the whole CT image (measured ~1 ms per line).
        pen = QPen(self.CROSSHAIR_COLOR, 1.0)
        pen.setCosmetic(True)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        p.setPen(pen)
        p.drawLines([QLineF(0, row + 0.5, m.n_cols, row + 0.5), QLineF(col + 0.5, 0, col + 0.5, m.n_rows)])

    def _paint_labels(self, p: QPainter) -> None:
        m = self.mapping
        font = QFont(self.font())
        font.setPointSizeF(max(font.pointSizeF(), 9.0))
        p.setFont(font)
        p.setPen(QColor(230, 230, 120))
        w, h = self.width(), self.height()
        left, right, top, bottom = EDGE_LABELS[self.view]
        p.drawText(QRectF(4, 0, 20, h), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft, left)
        p.drawText(QRectF(w - 24, 0, 20, h), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight, right)
        p.drawText(QRectF(0, 22, w, 18), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, top)
        p.drawText(QRectF(0, h - 20, w, 18), Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignBottom, bottom)
        p.setPen(QColor(220, 220, 220))
        pos = self.model.grid.axis_coords_mm(m.slice_axis)[self._slice]
        axis = "xyz"[int(self.model.grid.patient_axis_index[m.slice_axis])]
        p.drawText(QRectF(6, 4, w, 18), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop,
                   f"{self.view.capitalize()}  {self._slice + 1}/{m.n_slices}  {axis} = {pos:.1f} mm")
        p.drawText(QRectF(6, h - 22, w - 40, 18), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom,
                   f"W {self.model.window:.0f}  L {self.model.level:.0f}")

    def _paint_legend(self, p: QPainter) -> None:
        model = self.model
        rows = model.isodose_levels_gy()
        fm = p.fontMetrics()
        line_h = fm.height() + 2
        texts = []
        for gy, entered, color in rows:
            pct = 100.0 * gy / model.reference_gy if model.reference_gy > 0 else 0.0
            texts.append((f"{gy:5.1f} Gy  {pct:5.1f} %", color))
        width = max(fm.horizontalAdvance(t) for t, _ in texts) + 30
        x0 = self.width() - width - 8
        y0 = 44
        p.fillRect(QRectF(x0 - 4, y0 - 4, width + 8, line_h * len(texts) + 8), QColor(0, 0, 0, 150))
        for i, (t, color) in enumerate(texts):
            y = y0 + i * line_h
            p.fillRect(QRectF(x0, y + 3, 16, line_h - 6), QColor(*color))
            p.setPen(QColor(235, 235, 235))
            p.drawText(QRectF(x0 + 22, y, width, line_h), Qt.AlignmentFlag.AlignVCenter, t)

    def wheelEvent(self, event) -> None:  # noqa: N802
        if self.mapping is None:
            return
        steps = event.angleDelta().y() // 120 or (1 if event.angleDelta().y() > 0 else -1)
        if event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self._zoom_about(event.position(), 1.15 ** steps)
        else:
            self.model.step_slice(self.view, int(steps))
        event.accept()

    def _zoom_about(self, pos: QPointF, factor: float) -> None:
        new_zoom = min(max(self.zoom * factor, 0.25), 20.0)
        factor = new_zoom / self.zoom
        # keep the image point under the pointer where it is
        centre = QPointF(self.width() / 2.0, self.height() / 2.0)
        self.pan = (self.pan + centre - pos) * factor - (centre - pos)
        self.zoom = new_zoom
        self.update()

    def reset_view(self) -> None:
        self.zoom, self.pan = 1.0, QPointF(0.0, 0.0)
        self.update()

    # -- contouring -------------------------------------------------------------------
    def widget_to_plane(self, pos: QPointF) -> tuple[float, float]:
        """Widget position -> (row, col) on this view's screen plane, pixel centres at
        integers (the coordinates :class:`ContourEditor` paints in)."""
        inv, _ = self.image_transform().inverted()
        p = inv.map(QPointF(pos))
        return p.y() - 0.5, p.x() - 0.5

    def _tool_active(self) -> bool:
        return self.editor is not None and self.editor.tool is not None

    def _plane_px_per_widget_px(self) -> float:
        t = self.image_transform()
        return 1.0 / max(min(abs(t.m11()), abs(t.m22())), 1e-9)

    # -- mouse and keys -------------------------------------------------------------------
    def mousePressEvent(self, event) -> None:  # noqa: N802
        if self.mapping is None:
            return
        b, mods = event.button(), event.modifiers()
        pos = event.position()
        if b == Qt.MouseButton.MiddleButton or (b == Qt.MouseButton.LeftButton
                                                and mods & Qt.KeyboardModifier.ShiftModifier):
            self._drag = ("pan", pos, self.model.window, self.model.level, QPointF(self.pan))
        elif b == Qt.MouseButton.RightButton:
            self._drag = ("wl", pos, self.model.window, self.model.level, None)
        elif b == Qt.MouseButton.LeftButton and self._tool_active():
            self._tool_drag = True
            self.setFocus(Qt.FocusReason.MouseFocusReason)  # Enter / Escape reach the tool
            self.editor.press(self.view, self._slice, self.widget_to_plane(pos),
                              erase=bool(mods & Qt.KeyboardModifier.ControlModifier))
        elif b == Qt.MouseButton.LeftButton:
            self._drag = ("cross", pos, 0, 0, None)
            self.model.set_cursor(self.widget_to_index(pos))
        event.accept()

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        if self.mapping is None:
            return
        pos = event.position()
        if self._drag is not None:
            mode, start, w0, l0, pan0 = self._drag
            d = pos - start
            if mode == "pan":
                self.pan = pan0 + d
                self.update()
            elif mode == "wl":
                # 4 HU per pixel: a drag across a typical view sweeps the useful range.
                self.model.set_window_level(w0 + 4.0 * d.x(), l0 - 4.0 * d.y())
            elif mode == "cross":
                self.model.set_cursor(self.widget_to_index(pos))
        elif self._tool_active():
            self.editor.move(self.view, self._slice, self.widget_to_plane(pos))
        self.hovered.emit(self.model.sample(self.widget_to_index(pos)))

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._tool_drag and event.button() == Qt.MouseButton.LeftButton:
            self._tool_drag = False
            if self._tool_active():
                self.editor.release(self.view, self._slice, self.widget_to_plane(event.position()))
        self._drag = None

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        if self._tool_active() and event.button() == Qt.MouseButton.LeftButton:
            self.editor.double_click(self.view, self._slice, self.widget_to_plane(event.position()),
                                     self._plane_px_per_widget_px())
            return
        self.reset_view()

    def leaveEvent(self, event) -> None:  # noqa: N802
        if self.editor is not None:
            self.editor.leave()
        super().leaveEvent(event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if self.mapping is None:
            return super().keyPressEvent(event)
        k = event.key()
        if self._tool_active() and self.editor.key(k):
            return
        if k in (Qt.Key.Key_Up, Qt.Key.Key_PageUp):
            self.model.step_slice(self.view, 1 if k == Qt.Key.Key_Up else 10)
        elif k in (Qt.Key.Key_Down, Qt.Key.Key_PageDown):
            self.model.step_slice(self.view, -1 if k == Qt.Key.Key_Down else -10)
        elif k == Qt.Key.Key_Home:
            self.reset_view()
        else:
            super().keyPressEvent(event)


def format_readout(sample: dict, reference_gy: float = 0.0) -> str:
    """Planner-readable cursor read-out: position (mm, LPS), HU and dose."""
    if sample.get("position_mm") is None:
        return ""
    x, y, z = sample["position_mm"]
    parts = [f"x {x:7.1f}  y {y:7.1f}  z {z:7.1f} mm"]
    if sample.get("hu") is not None:
        parts.append(f"{sample['hu']:6.0f} HU")
    if sample.get("dose_gy") is not None:
        d = sample["dose_gy"]
        pct = f" ({100.0 * d / reference_gy:5.1f} %)" if reference_gy > 0 else ""
        parts.append(f"dose {d:6.2f} Gy{pct}")
    return "   |   ".join(parts)


class CtViewer(QWidget):
    """Three linked views plus window/level, dose-display controls and a read-out.

    Signals
    -------
    sliceChanged(str, int)
        Forwarded from any view: view name and new slice index.
    readout(str)
        The cursor read-out text (position mm, HU, dose) under the pointer.
    """

    sliceChanged = Signal(str, int)
    readout = Signal(str)

    def __init__(self, model: ViewerModel | None = None, parent=None):
        super().__init__(parent)
        self.model = model or ViewerModel(self)
        self.views: dict[str, SliceView] = {}
        self.editor = None  # see set_editor
        self._setup_ui()
        self.model.windowLevelChanged.connect(self._on_window_level_changed)
        self.model.doseChanged.connect(self._on_dose_settings_changed)

    def _setup_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        bar.addWidget(QLabel("Window"))
        self.preset_box = QComboBox()
        for name in WINDOW_PRESETS:
            self.preset_box.addItem(name.capitalize(), name)
        self.preset_box.addItem("Custom", "")
        self.preset_box.setToolTip("Window/level preset (right-drag in a view to adjust)")
        self.preset_box.currentIndexChanged.connect(self._on_preset_chosen)
        bar.addWidget(self.preset_box)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Dose"))
        self.dose_mode_box = QComboBox()
        for mode in DOSE_MODES:
            self.dose_mode_box.addItem({"isodose": "Isodose lines", "wash": "Colour wash",
                                        "both": "Lines + wash", "off": "Hidden"}[mode], mode)
        self.dose_mode_box.currentIndexChanged.connect(
            lambda _i: self.model.set_dose_display(mode=self.dose_mode_box.currentData()))
        bar.addWidget(self.dose_mode_box)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(int(self.model.wash_opacity * 100))
        self.opacity_slider.setMaximumWidth(110)
        self.opacity_slider.setToolTip("Colour-wash opacity")
        self.opacity_slider.valueChanged.connect(lambda v: self.model.set_dose_display(opacity=v / 100.0))
        bar.addWidget(self.opacity_slider)
        bar.addSpacing(12)
        bar.addWidget(QLabel("Levels"))
        self.levels_edit = QLineEdit(", ".join(f"{v:g}" for v in self.model.isodose_levels))
        self.levels_edit.setToolTip("Isodose levels, comma separated, in the unit on the right")
        self.levels_edit.setMaximumWidth(200)
        self.levels_edit.editingFinished.connect(self._on_levels_edited)
        bar.addWidget(self.levels_edit)
        self.unit_box = QComboBox()
        self.unit_box.addItem("%", "pct")
        self.unit_box.addItem("Gy", "gy")
        self.unit_box.currentIndexChanged.connect(self._on_levels_edited)
        bar.addWidget(self.unit_box)
        bar.addStretch(1)
        outer.addLayout(bar)

        split = QSplitter(Qt.Orientation.Horizontal)
        self.views["axial"] = SliceView(self.model, "axial", show_legend=True)
        right = QWidget()
        grid = QGridLayout(right)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setSpacing(2)
        self.views["coronal"] = SliceView(self.model, "coronal")
        self.views["sagittal"] = SliceView(self.model, "sagittal")
        grid.addWidget(self.views["coronal"], 0, 0)
        grid.addWidget(self.views["sagittal"], 1, 0)
        split.addWidget(self.views["axial"])
        split.addWidget(right)
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 1)
        outer.addWidget(split, 1)
        self.readout_label = QLabel(" ")
        self.readout_label.setObjectName("readout")
        outer.addWidget(self.readout_label)
        for v in self.views.values():
            v.sliceChanged.connect(self.sliceChanged)
            v.hovered.connect(self._on_hovered)
        self._sync_preset_box()

    # -- contouring -----------------------------------------------------------------------
    def set_editor(self, editor) -> None:
        """Route the left button of every view to ``editor``'s active tool (a
        :class:`widgets.contour_editor.ContourEditor` on this viewer's model)."""
        if editor is not None and editor.model is not self.model:
            raise ValueError("the contour editor must work on this viewer's model")
        self.editor = editor
        for v in self.views.values():
            v.editor = editor
        if editor is None:
            return
        editor.mask_changed.connect(self._on_mask_edited)
        editor.structure_edited.connect(self._on_mask_edited)
        editor.overlay_changed.connect(self._on_overlay_changed)
        editor.tool_changed.connect(self._on_tool_changed)
        self._on_tool_changed(editor.tool or "")

    def _on_mask_edited(self, name: str) -> None:
        for v in self.views.values():
            v.invalidate_structure(name)

    def _on_overlay_changed(self) -> None:
        for v in self.views.values():
            v.update()

    def _on_tool_changed(self, name: str) -> None:
        for v in self.views.values():
            if name:
                v.setCursor(Qt.CursorShape.CrossCursor)
            else:
                v.unsetCursor()

    # -- slots --------------------------------------------------------------------------
    def _on_preset_chosen(self, _index: int) -> None:
        name = self.preset_box.currentData()
        if name:
            self.model.apply_preset(name)

    def _on_window_level_changed(self, _w: float, _l: float) -> None:
        self._sync_preset_box()

    def _sync_preset_box(self) -> None:
        current = (self.model.window, self.model.level)
        name = next((k for k, wl in WINDOW_PRESETS.items() if wl == current), "")
        i = self.preset_box.findData(name)
        self.preset_box.blockSignals(True)
        self.preset_box.setCurrentIndex(i)
        self.preset_box.blockSignals(False)

    def _on_levels_edited(self, *_args) -> None:
        text = self.levels_edit.text().replace(";", ",")
        try:
            levels = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            self.levels_edit.setStyleSheet("color: #e05050;")
            self.levels_edit.setToolTip("Levels must be numbers separated by commas")
            return
        self.levels_edit.setStyleSheet("")
        self.model.set_dose_display(levels=levels, unit=self.unit_box.currentData())

    def _on_dose_settings_changed(self) -> None:
        i = self.dose_mode_box.findData(self.model.dose_mode)
        if i != self.dose_mode_box.currentIndex():
            self.dose_mode_box.blockSignals(True)
            self.dose_mode_box.setCurrentIndex(i)
            self.dose_mode_box.blockSignals(False)

    def _on_hovered(self, sample: dict) -> None:
        text = format_readout(sample, self.model.reference_gy)
        self.readout_label.setText(text or " ")
        self.readout.emit(text)
