"""Contour editing on the CT views: brush, eraser, polygon and freehand tools, slice
interpolation, per-structure undo/redo and new structures.

The editor works on the structure masks of a :class:`widgets.viewer_model.ViewerModel`
and on any of its three views. A view hands the editor the pointer position in its own
*screen plane* coordinates (fractional pixel-centre row and column of the displayed
slice); the editor paints into ``SliceMapping.extract(mask, slice)``, which is a view of
the 3D mask in screen order, so one piece of code serves axial, coronal and sagittal
drawing whatever the array axis order.

Copy on write: a stroke (or an undo, redo or interpolation) works on a copy of the mask
and swaps it into the structure's layer, so a worker that is reading the old mask (DVHs,
a plan) sees a consistent array, and an unfinished stroke never reaches the patient. The
owner (the application) copies the finished mask into the patient when
``structure_edited`` fires.

Undo records only the bounding box of what changed (before and after), per structure.
Voxels drawn outside the body are removed when a stroke ends, with a notice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPainter, QPen, QPolygonF

from core.errors import InputError
from widgets.viewer_model import StructureLayer, ViewerModel

TOOLS = ("brush", "eraser", "polygon", "freehand")
ROLES = ("HELPER", "TARGET", "OAR", "EXTERNAL")
BRUSH_RADIUS_RANGE_MM = (0.5, 50.0)
MAX_UNDO = 100  # edits kept per structure; each holds only its changed box
# Widget pixels within which a new polygon vertex counts as the previous one (the second
# press of a double-click must not add a vertex of its own).
_SAME_VERTEX_PX = 3.0

# Colours offered to new structures: distinct from the importer's palette's first entries
# and from the isodose colours, readable on grey CT.
_NEW_COLOURS = [(255, 128, 0), (0, 200, 255), (255, 80, 200), (120, 255, 120), (255, 255, 0),
                (160, 120, 255), (255, 60, 60), (0, 255, 200)]


@dataclass
class _Edit:
    """One undo step: the changed box of one structure before and after."""

    box: tuple
    before: np.ndarray
    after: np.ndarray
    label: str


def _bbox3(changed: np.ndarray) -> tuple | None:
    if not changed.any():
        return None
    out = []
    for k in range(3):
        nz = np.flatnonzero(changed.any(axis=tuple(j for j in range(3) if j != k)))
        out.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(out)


def capsule_mask(shape, row_mm: float, col_mm: float, p0, p1, radius_mm: float):
    """Pixels of a plane whose centre is within ``radius_mm`` of the segment ``p0``-``p1``.

    Parameters
    ----------
    shape : (rows, cols)
    row_mm, col_mm : float
        Pixel height and width, mm.
    p0, p1 : (row, col) float
        Segment ends in pixel-centre coordinates (a click is ``p0 == p1``: a disc).
    radius_mm : float

    Returns
    -------
    box : (slice, slice) or None
        Where the result lies in the plane (``None``: entirely off the plane).
    inside : bool ndarray of the box's shape

    Notes
    -----
    The pixel nearest to each end is always included, so a brush smaller than a pixel
    still marks the pixel under the pointer.
    """
    nr, nc = int(shape[0]), int(shape[1])
    (r0, c0), (r1, c1) = (float(p0[0]), float(p0[1])), (float(p1[0]), float(p1[1]))
    rr_pix, rc_pix = radius_mm / row_mm, radius_mm / col_mm
    lo_r = max(int(math.floor(min(r0, r1) - rr_pix)), 0)
    hi_r = min(int(math.ceil(max(r0, r1) + rr_pix)) + 1, nr)
    lo_c = max(int(math.floor(min(c0, c1) - rc_pix)), 0)
    hi_c = min(int(math.ceil(max(c0, c1) + rc_pix)) + 1, nc)
    if lo_r >= hi_r or lo_c >= hi_c:
        return None, None
    rr, cc = np.meshgrid(np.arange(lo_r, hi_r, dtype=float), np.arange(lo_c, hi_c, dtype=float), indexing="ij")
    y, x = (rr - r0) * row_mm, (cc - c0) * col_mm
    dy, dx = (r1 - r0) * row_mm, (c1 - c0) * col_mm
    seg2 = dx * dx + dy * dy
    t = np.clip((x * dx + y * dy) / seg2, 0.0, 1.0) if seg2 > 0 else 0.0
    inside = (x - t * dx) ** 2 + (y - t * dy) ** 2 <= radius_mm ** 2
    for r, c in ((r0, c0), (r1, c1)):
        ir, ic = int(round(r)), int(round(c))
        if lo_r <= ir < hi_r and lo_c <= ic < hi_c:
            inside[ir - lo_r, ic - lo_c] = True
    return (slice(lo_r, hi_r), slice(lo_c, hi_c)), inside


# -- tools ---------------------------------------------------------------------------------
class _Tool:
    """How one tool turns pointer events on a view into edits. ``rc`` is the (row, col)
    screen-plane position; ``px`` converts a widget-pixel distance into plane pixels."""

    name = ""

    def press(self, ed, view, s, rc, erase) -> None: ...
    def move(self, ed, view, s, rc) -> None: ...
    def release(self, ed, view, s, rc) -> None: ...
    def double_click(self, ed, view, s, rc, px) -> None: ...
    def key(self, ed, key) -> bool:
        return False
    def cancel(self, ed) -> None: ...
    def paint(self, ed, p: QPainter, view, s, mapping) -> None: ...


class _BrushTool(_Tool):
    """Paint (or, as the eraser, erase) a disc of the brush radius along the drag."""

    def __init__(self, erase: bool):
        self.erase = erase
        self.name = "eraser" if erase else "brush"
        self._last = None
        self._value = True

    def press(self, ed, view, s, rc, erase) -> None:
        self._value = not (self.erase or erase)  # Ctrl with the brush erases too
        if ed.begin_stroke(view, s):
            self._last = rc
            ed.paint_segment(rc, rc, value=self._value)

    def move(self, ed, view, s, rc) -> None:
        if self._last is not None and ed.stroke_active:
            ed.paint_segment(self._last, rc, value=self._value)
            self._last = rc

    def release(self, ed, view, s, rc) -> None:
        if self._last is not None:
            self._last = None
            ed.end_stroke("erase" if not self._value else "brush")

    def cancel(self, ed) -> None:
        if self._last is not None:
            self._last = None
            ed.end_stroke("brush")

    def paint(self, ed, p, view, s, mapping) -> None:
        hov = ed.hover_position
        if hov is None or hov[0] != view:
            return
        _, r, c = hov
        rx = ed.brush_radius_mm / mapping.col_mm
        ry = ed.brush_radius_mm / mapping.row_mm
        pen = QPen(QColor(255, 255, 255, 200) if self.name == "brush" else QColor(255, 90, 90, 220), 1.0)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawEllipse(QRectF(c + 0.5 - rx, r + 0.5 - ry, 2 * rx, 2 * ry))


class _PolygonTool(_Tool):
    """Click vertices; double-click or Enter closes and fills, Backspace drops the last
    vertex, Escape abandons. Ctrl on the first click subtracts the polygon instead."""

    name = "polygon"

    def __init__(self):
        self.points: list = []
        self.view = None
        self.slice = -1
        self.erase = False
        self._rubber = None

    def press(self, ed, view, s, rc, erase) -> None:
        if self.points and (view != self.view or s != self.slice):
            self.cancel(ed)  # a polygon belongs to one slice of one view
        if not self.points:
            self.view, self.slice, self.erase = view, s, erase
        self.points.append(tuple(rc))
        ed.overlay_changed.emit()

    def move(self, ed, view, s, rc) -> None:
        if self.points and view == self.view and s == self.slice:
            self._rubber = tuple(rc)
            ed.overlay_changed.emit()

    def double_click(self, ed, view, s, rc, px) -> None:
        if not self.points or view != self.view or s != self.slice:
            return
        last = self.points[-1]
        if math.hypot(rc[0] - last[0], rc[1] - last[1]) > _SAME_VERTEX_PX * px:
            self.points.append(tuple(rc))
        self._close(ed)

    def key(self, ed, key) -> bool:
        if not self.points:
            return False
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self._close(ed)
        elif key == Qt.Key.Key_Escape:
            self.cancel(ed)
        elif key == Qt.Key.Key_Backspace:
            self.points.pop()
            ed.overlay_changed.emit()
        else:
            return False
        return True

    def _close(self, ed) -> None:
        pts, view, s, erase = self._dedup(self.points), self.view, self.slice, self.erase
        self.points, self._rubber = [], None
        if len(pts) < 3:
            ed.message.emit("a polygon needs at least three corners: nothing drawn")
            ed.overlay_changed.emit()
            return
        ed.fill_polygon(view, s, pts, value=not erase)
        ed.overlay_changed.emit()

    @staticmethod
    def _dedup(points) -> list:
        out = []
        for p in points:
            if not out or math.hypot(p[0] - out[-1][0], p[1] - out[-1][1]) > 1e-6:
                out.append(p)
        return out

    def cancel(self, ed) -> None:
        if self.points:
            self.points, self._rubber = [], None
            ed.overlay_changed.emit()

    def paint(self, ed, p, view, s, mapping) -> None:
        if not self.points or view != self.view or s != self.slice:
            return
        pts = [QPointF(c + 0.5, r + 0.5) for r, c in self.points]
        if self._rubber is not None:
            pts.append(QPointF(self._rubber[1] + 0.5, self._rubber[0] + 0.5))
        pen = QPen(QColor(255, 255, 255, 230), 1.0)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.drawPolyline(QPolygonF(pts))
        for q in pts[: len(self.points)]:
            p.drawEllipse(q, 0.6, 0.6)


class _FreehandTool(_Tool):
    """Drag a closed outline; releasing fills it (Ctrl: subtracts it)."""

    name = "freehand"

    def __init__(self):
        self.points: list = []
        self.view = None
        self.slice = -1
        self.erase = False

    def press(self, ed, view, s, rc, erase) -> None:
        self.points, self.view, self.slice, self.erase = [tuple(rc)], view, s, erase
        ed.overlay_changed.emit()

    def move(self, ed, view, s, rc) -> None:
        if self.points and view == self.view and s == self.slice:
            self.points.append(tuple(rc))
            ed.overlay_changed.emit()

    def release(self, ed, view, s, rc) -> None:
        if not self.points:
            return
        if view == self.view and s == self.slice:
            self.points.append(tuple(rc))
        pts = _PolygonTool._dedup(self.points)
        self.points = []
        if len(pts) >= 3:
            ed.fill_polygon(self.view, self.slice, pts, value=not self.erase)
        else:
            ed.message.emit("drag around the region to outline it: nothing drawn")
        ed.overlay_changed.emit()

    def cancel(self, ed) -> None:
        if self.points:
            self.points = []
            ed.overlay_changed.emit()

    def paint(self, ed, p, view, s, mapping) -> None:
        if len(self.points) < 2 or view != self.view or s != self.slice:
            return
        pen = QPen(QColor(255, 255, 255, 230), 1.0)
        pen.setCosmetic(True)
        p.setPen(pen)
        p.drawPolyline(QPolygonF([QPointF(c + 0.5, r + 0.5) for r, c in self.points]))


# -- the editor ----------------------------------------------------------------------------
class ContourEditor(QObject):
    """Editing state and operations on the structure masks of a viewer model.

    Signals
    -------
    structure_edited(str)
        A structure's mask changed for good (a finished stroke, a polygon, an undo, a redo,
        an interpolation): the owner stores the layer's new mask in the patient.
    structure_added(str)
        A new structure (empty) was added to the model by :meth:`new_structure`.
    mask_changed(str)
        The structure's mask changed during a stroke (views redraw it live).
    message(str)
        Something the planner should read (cropped to the body, nothing to undo, ...).
    tool_changed(str)
        The active tool (``""`` when the views are back to navigation).
    active_structure_changed(str)
        The structure edits go into (``""`` when none).
    undo_changed()
        Undo/redo availability may have changed.
    overlay_changed()
        A tool preview (polygon in progress, brush outline) needs a repaint.
    """

    structure_edited = Signal(str)
    structure_added = Signal(str)
    mask_changed = Signal(str)
    message = Signal(str)
    tool_changed = Signal(str)
    active_structure_changed = Signal(str)
    undo_changed = Signal()
    overlay_changed = Signal()

    def __init__(self, model: ViewerModel, parent=None):
        super().__init__(parent)
        self.model = model
        self.brush_radius_mm = 5.0
        self.body_mask: np.ndarray | None = None
        self.hover_position = None  # (view, row, col) under the pointer, for the brush outline
        self._tools = {"brush": _BrushTool(False), "eraser": _BrushTool(True),
                       "polygon": _PolygonTool(), "freehand": _FreehandTool()}
        self._tool: _Tool | None = None
        self._active: str | None = None
        self._undo: dict[str, list[_Edit]] = {}
        self._redo: dict[str, list[_Edit]] = {}
        self._known: dict[str, np.ndarray] = {}  # the mask each stack was recorded on
        self._last_view: dict[str, str] = {}
        self._stroke = None
        # Names taken besides the shown structures (the owner may hold structures the views
        # do not show, e.g. empty ones): a callable returning an iterable of names.
        self.known_names = lambda: ()
        model.volumeChanged.connect(self._on_volume_changed)
        model.structuresChanged.connect(self._on_structures_changed)

    # -- settings ------------------------------------------------------------------------
    @property
    def tool(self) -> str | None:
        return self._tool.name if self._tool is not None else None

    def set_tool(self, name: str | None) -> None:
        """Activate a tool of :data:`TOOLS`; ``None`` (or ``""``) returns to navigation."""
        name = name or None
        if name is not None and name not in TOOLS:
            raise InputError(f"unknown contouring tool '{name}' (have {', '.join(TOOLS)})")
        if name == self.tool:
            return
        if self._tool is not None:
            self._tool.cancel(self)
        self._tool = self._tools[name] if name else None
        self.tool_changed.emit(name or "")
        self.overlay_changed.emit()

    def set_brush_radius_mm(self, radius_mm: float) -> None:
        lo, hi = BRUSH_RADIUS_RANGE_MM
        r = float(radius_mm)
        if not math.isfinite(r) or not lo <= r <= hi:
            raise InputError(f"brush radius must be {lo:g} to {hi:g} mm, got {radius_mm}")
        self.brush_radius_mm = r
        self.overlay_changed.emit()

    def set_body_mask(self, mask: np.ndarray | None) -> None:
        """The body outline drawn voxels are cropped to (``None``: no cropping)."""
        if mask is not None and self.model.grid is not None and tuple(mask.shape) != tuple(self.model.grid.shape):
            raise InputError("the body outline does not match the image grid")
        self.body_mask = None if mask is None else np.asarray(mask, dtype=bool)

    @property
    def active_structure(self) -> str | None:
        return self._active

    def set_active_structure(self, name: str | None) -> None:
        name = name or None
        if name is not None and name not in self.model.structures:
            raise InputError(f"no structure named '{name}' to draw into")
        if name != self._active:
            self._finish_pending()
            self._active = name
            self.active_structure_changed.emit(name or "")
            self.undo_changed.emit()

    # -- structures ----------------------------------------------------------------------
    def new_structure(self, name: str, color=None, role: str = "HELPER") -> str:
        """Add an empty structure to draw into and make it the active one.

        Parameters
        ----------
        name : str
            Must differ (ignoring case and surrounding blanks) from every structure shown.
        color : (r, g, b), optional
            Default: a colour no shown structure uses.
        role : str
            One of :data:`ROLES`; helper structures (patches, rings) by default.

        Raises
        ------
        InputError
            No image, an empty name, a name clash or an unknown role; nothing changes.
        """
        if self.model.grid is None:
            raise InputError("open a patient before drawing structures")
        clean = (name or "").strip()
        if not clean:
            raise InputError("a new structure needs a name")
        taken = list(self.model.structures) + [str(n) for n in self.known_names()]
        clash = next((n for n in taken if n.strip().lower() == clean.lower()), None)
        if clash is not None:
            raise InputError(f"a structure named '{clash}' already exists: choose another name "
                             "(nothing was changed)")
        role = str(getattr(role, "value", role)).upper()
        if role not in ROLES:
            raise InputError(f"structure role must be one of {', '.join(ROLES)}, got '{role}'")
        if color is None:
            used = {tuple(layer.color) for layer in self.model.structures.values()}
            fallback = _NEW_COLOURS[len(self.model.structures) % len(_NEW_COLOURS)]
            color = next((c for c in _NEW_COLOURS if c not in used), fallback)
        color = tuple(int(v) for v in tuple(color)[:3])
        layer = StructureLayer(clean, np.zeros(self.model.grid.shape, bool), color, True, role)
        self._finish_pending()
        self.model.set_structures(list(self.model.structures.values()) + [layer])
        self._known[clean] = layer.mask
        self.structure_added.emit(clean)
        self.set_active_structure(clean)
        return clean

    def is_empty(self, name: str) -> bool:
        layer = self.model.structures.get(name)
        return layer is None or not layer.mask.any()

    # -- strokes (screen-plane coordinates of one view) -----------------------------------
    @property
    def stroke_active(self) -> bool:
        return self._stroke is not None

    def begin_stroke(self, view: str, slice_index: int) -> bool:
        """Start an edit of the active structure on one slice of ``view``."""
        self._finish_stroke_if_any()
        if self.model.grid is None:
            return False
        name = self._active
        if name is None or name not in self.model.structures:
            self.message.emit("choose a structure to draw into, or make a new one")
            return False
        layer = self.model.structures[name]
        old = layer.mask
        layer.mask = old.copy()  # copy on write: readers of the old mask see no half stroke
        self._stroke = {"name": name, "view": view, "slice": int(slice_index), "old": old, "box": None}
        self._last_view[name] = view
        if not layer.visible:
            self.model.set_structure_visible(name, True)
        return True

    def _plane(self):
        st = self._stroke
        layer = self.model.structures[st["name"]]
        return self.model.mappings[st["view"]].extract(layer.mask, st["slice"])

    def _grow_box(self, box) -> None:
        r, c = box
        b = self._stroke["box"]
        self._stroke["box"] = (r.start, r.stop, c.start, c.stop) if b is None else (
            min(b[0], r.start), max(b[1], r.stop), min(b[2], c.start), max(b[3], c.stop))

    def paint_segment(self, p0, p1, value: bool = True) -> None:
        """Brush from ``p0`` to ``p1`` (screen-plane row, col) in the current stroke."""
        if self._stroke is None:
            return
        m = self.model.mappings[self._stroke["view"]]
        plane = self._plane()
        box, inside = capsule_mask(plane.shape, m.row_mm, m.col_mm, p0, p1, self.brush_radius_mm)
        if box is None:
            return
        sub = plane[box]
        if value:
            sub |= inside
        else:
            sub &= ~inside
        self._grow_box(box)
        self.mask_changed.emit(self._stroke["name"])

    def fill_polygon(self, view: str, slice_index: int, points, value: bool = True) -> bool:
        """Fill (or with ``value=False`` clear) a closed polygon as one edit.

        ``points`` are (row, col) screen-plane vertices; a pixel belongs when its centre
        is inside (even-odd rule, :func:`core.io.rasterize.fill_polygons`).
        """
        from core.io.rasterize import fill_polygons

        if not self.begin_stroke(view, slice_index):
            return False
        plane = self._plane()
        filled = fill_polygons([np.asarray(points, dtype=float)], plane.shape)
        if filled.any():
            rows = np.flatnonzero(filled.any(axis=1))
            cols = np.flatnonzero(filled.any(axis=0))
            box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
            sub = plane[box]
            if value:
                sub |= filled[box]
            else:
                sub &= ~filled[box]
            self._grow_box(box)
        return self.end_stroke("polygon" if value else "cut")

    def end_stroke(self, label: str = "edit") -> bool:
        """Finish the stroke: crop to the body, record undo, emit ``structure_edited``."""
        st, self._stroke = self._stroke, None
        if st is None:
            return False
        name = st["name"]
        layer = self.model.structures.get(name)
        if layer is None:
            return False
        if st["box"] is None:
            layer.mask = st["old"]
            self.mask_changed.emit(name)
            return False
        box = self._plane_box_to_3d(st["view"], st["slice"], st["box"])
        return self._commit(name, st["old"], layer.mask, box, label)

    def cancel_stroke(self) -> None:
        """Drop an unfinished stroke: the structure keeps its mask from before it."""
        st, self._stroke = self._stroke, None
        if st is not None and st["name"] in self.model.structures:
            self.model.structures[st["name"]].mask = st["old"]
            self.mask_changed.emit(st["name"])

    def _finish_stroke_if_any(self) -> None:
        if self._stroke is not None:
            self.end_stroke()

    def _finish_pending(self) -> None:
        if self._tool is not None:
            self._tool.cancel(self)
        self._finish_stroke_if_any()

    def _plane_box_to_3d(self, view: str, s: int, box) -> tuple:
        m = self.model.mappings[view]
        r0, r1, c0, c1 = box
        if m.row_flip:
            r0, r1 = m.n_rows - r1, m.n_rows - r0
        if m.col_flip:
            c0, c1 = m.n_cols - c1, m.n_cols - c0
        out = [None] * 3
        out[m.slice_axis] = slice(s, s + 1)
        out[m.row_axis] = slice(r0, r1)
        out[m.col_axis] = slice(c0, c1)
        return tuple(out)

    def _commit(self, name: str, old: np.ndarray, new: np.ndarray, box, label: str) -> bool:
        """Record ``old`` -> ``new`` (changed only inside ``box``, or anywhere if None)."""
        layer = self.model.structures[name]
        if box is None:
            box = _bbox3(old != new)
            if box is None:
                layer.mask = old
                self.mask_changed.emit(name)
                self.message.emit(f"nothing changed in '{name}'")
                return False
        sub_new, sub_old = new[box], old[box]
        cropped = 0
        if self.body_mask is not None and layer.role != "EXTERNAL":  # the body itself may grow
            outside = sub_new & ~sub_old & ~self.body_mask[box]
            cropped = int(np.count_nonzero(outside))
            if cropped:
                sub_new[outside] = False
        changed = sub_new != sub_old
        vox_cc = self.model.grid.voxel_volume_cc
        if not changed.any():
            layer.mask = old  # nothing to record: keep the array the patient holds
            self.mask_changed.emit(name)
            self.message.emit(f"the drawing lies outside the body: nothing added to '{name}'"
                              if cropped else f"nothing changed in '{name}'")
            return False
        inner = _bbox3(changed)
        box = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
        edit = _Edit(box, old[box].copy(), new[box].copy(), label)
        stack = self._undo.setdefault(name, [])
        stack.append(edit)
        del stack[:-MAX_UNDO]
        self._redo[name] = []
        self._known[name] = new
        self.mask_changed.emit(name)
        self.structure_edited.emit(name)
        self.undo_changed.emit()
        if cropped:
            self.message.emit(f"{cropped} voxels ({cropped * vox_cc:.2f} cc) of '{name}' lay outside "
                              "the body and were removed")
        if not new.any():
            self.message.emit(f"'{name}' is empty now: an empty structure takes no goals")
        return True

    # -- undo / redo ---------------------------------------------------------------------
    def can_undo(self, name: str | None = None) -> bool:
        return bool(self._undo.get(name or self._active or ""))

    def can_redo(self, name: str | None = None) -> bool:
        return bool(self._redo.get(name or self._active or ""))

    def undo(self, name: str | None = None) -> bool:
        """Undo the last edit of ``name`` (default: the active structure)."""
        return self._step(name, self._undo, self._redo, "before", "undo")

    def redo(self, name: str | None = None) -> bool:
        """Redo the last undone edit of ``name`` (default: the active structure)."""
        return self._step(name, self._redo, self._undo, "after", "redo")

    def _step(self, name, src, dst, side: str, word: str) -> bool:
        self._finish_pending()
        name = name or self._active
        if name is None:
            self.message.emit(f"choose a structure: nothing to {word}")
            return False
        stack = src.get(name)
        if not stack:
            why = (": it is as it was before its first edit" if word == "undo" and self._redo.get(name)
                   else "")
            self.message.emit(f"nothing to {word} for '{name}'{why}")
            return False
        layer = self.model.structures.get(name)
        if layer is None:
            return False
        e = stack.pop()
        new = layer.mask.copy()
        new[e.box] = getattr(e, side)
        layer.mask = new
        self._known[name] = new
        dst.setdefault(name, []).append(e)
        # the notice first: what the owner says about the result (e.g. now empty) comes last
        self.message.emit(f"{word}: {e.label} of '{name}'")
        self.mask_changed.emit(name)
        self.structure_edited.emit(name)
        self.undo_changed.emit()
        return True

    # -- interpolation -------------------------------------------------------------------
    def interpolate(self, view: str | None = None, name: str | None = None) -> bool:
        """Fill the empty slices between drawn slices of a structure along ``view``'s
        normal (default: the view last drawn in, else axial), as one undoable edit."""
        from core.contour_interpolation import interpolate_gaps

        self._finish_pending()
        name = name or self._active
        if name is None or name not in self.model.structures:
            self.message.emit("choose a structure to interpolate")
            return False
        view = view or self._last_view.get(name, "axial")
        layer = self.model.structures[name]
        m = self.model.mappings[view]
        try:
            new, filled = interpolate_gaps(layer.mask, m.slice_axis, self.model.grid.spacing_mm)
        except InputError as exc:
            self.message.emit(f"cannot interpolate '{name}': {exc}")
            return False
        if not filled:
            self.message.emit(f"'{name}' has no empty slices between its drawn slices in the {view} view")
            return False
        old = layer.mask
        layer.mask = new
        ok = self._commit(name, old, new, None, "interpolation")
        if ok:
            self.message.emit(f"interpolated {len(filled)} {view} slices of '{name}'")
        return ok

    # -- pointer events from a view ------------------------------------------------------
    def press(self, view: str, s: int, rc, erase: bool = False) -> None:
        if self._tool is not None:
            self._tool.press(self, view, s, rc, erase)

    def move(self, view: str, s: int, rc) -> None:
        self.hover_position = (view, float(rc[0]), float(rc[1]))
        if self._tool is not None:
            self._tool.move(self, view, s, rc)
            if self._tool.name in ("brush", "eraser"):
                self.overlay_changed.emit()

    def release(self, view: str, s: int, rc) -> None:
        if self._tool is not None:
            self._tool.release(self, view, s, rc)

    def double_click(self, view: str, s: int, rc, plane_px_per_widget_px: float = 1.0) -> None:
        if self._tool is not None:
            self._tool.double_click(self, view, s, rc, plane_px_per_widget_px)

    def key(self, key) -> bool:
        return self._tool.key(self, key) if self._tool is not None else False

    def leave(self) -> None:
        if self.hover_position is not None:
            self.hover_position = None
            self.overlay_changed.emit()

    def paint_overlay(self, p: QPainter, view: str, s: int) -> None:
        """Draw the tool preview; ``p`` maps image pixels (x = column, y = row)."""
        if self._tool is not None and view in self.model.mappings:
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            self._tool.paint(self, p, view, s, self.model.mappings[view])

    # -- model events --------------------------------------------------------------------
    def _on_volume_changed(self) -> None:
        # A new patient: nothing of the old one can be undone into it.
        if self._tool is not None:
            self._tool.cancel(self)
        self._stroke = None
        self._undo.clear()
        self._redo.clear()
        self._known.clear()
        self._last_view.clear()
        self.hover_position = None
        if self._active is not None:
            self._active = None
            self.active_structure_changed.emit("")
        self.undo_changed.emit()

    def _on_structures_changed(self) -> None:
        # A structure replaced from outside (reloaded, regenerated) cannot take the undo
        # steps recorded on its old mask.
        dropped = False
        for name in list(self._known):
            layer = self.model.structures.get(name)
            if layer is None or layer.mask is not self._known[name]:
                if self._stroke is not None and self._stroke["name"] == name:
                    continue
                self._known.pop(name)
                dropped |= bool(self._undo.pop(name, None)) | bool(self._redo.pop(name, None))
        if self._active is not None and self._active not in self.model.structures:
            self._active = None
            self.active_structure_changed.emit("")
        if dropped:
            self.undo_changed.emit()
