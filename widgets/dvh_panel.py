"""Cumulative DVH plot with plan overlay, goal markers, cursor read-out and endpoint table.

The panel displays DVHs it is given; computing them is the core's job
(:func:`core.evaluation.dvh.cumulative_dvh`), done by the application. Several plans are
overlaid: the first plan is drawn solid, the others dashed (then dotted), each structure
in its own colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QSplitter, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)


@dataclass(frozen=True, eq=False)
class DvhCurve:
    """One cumulative DVH.

    Attributes
    ----------
    structure, plan : str
    color : (r, g, b)
    dose_gy : (B,) ndarray, bin doses in Gy, increasing
    volume_pct : (B,) ndarray, % of the structure receiving at least ``dose_gy[i]``
    """

    structure: str
    plan: str
    color: tuple
    dose_gy: np.ndarray
    volume_pct: np.ndarray

    def volume_at(self, dose_gy: float) -> float:
        """% volume receiving at least ``dose_gy`` (linear between bins, 0 beyond the last)."""
        return float(np.interp(dose_gy, self.dose_gy, self.volume_pct, right=0.0))


@dataclass(frozen=True)
class GoalMarker:
    """A dose-volume goal drawn on the plot.

    ``kind`` is ``"max"`` (the curve should pass below the point: a triangle pointing down)
    or ``"min"`` (the curve should pass above: pointing up). ``met`` colours the outline
    (green met, red missed, grey unknown).
    """

    structure: str
    dose_gy: float
    volume_pct: float
    kind: str = "max"
    met: bool | None = None


_PLAN_STYLES = (Qt.PenStyle.SolidLine, Qt.PenStyle.DashLine, Qt.PenStyle.DotLine, Qt.PenStyle.DashDotLine)


class DvhPlot(QWidget):
    """The plot itself.

    Signals
    -------
    cursorMoved(float)
        Dose (Gy) under the pointer.
    """

    cursorMoved = Signal(float)
    MARGINS = (52, 14, 16, 36)  # left, top, right, bottom in px

    def __init__(self, parent=None):
        super().__init__(parent)
        self.curves: list[DvhCurve] = []
        self.goals: list[GoalMarker] = []
        self.colors: dict[str, tuple] = {}
        self.plans: list[str] = []
        self.visible_structures: set | None = None
        self.cursor_gy: float | None = None
        self.max_dose_gy = 1.0
        self.empty_text = "No dose to show: open a dose (Ctrl+D) or run a plan (Ctrl+R)"
        self.setMouseTracking(True)
        self.setMinimumSize(260, 180)

    # -- data ------------------------------------------------------------------------------
    def set_curves(self, curves) -> None:
        self.curves = list(curves)
        self.plans = list(dict.fromkeys(c.plan for c in self.curves))
        top = max((float(c.dose_gy[np.flatnonzero(c.volume_pct > 0)[-1]])
                   for c in self.curves if np.any(c.volume_pct > 0)), default=1.0)
        self.max_dose_gy = _nice_ceiling(top * 1.05)
        self.update()

    def set_goals(self, goals) -> None:
        self.goals = list(goals)
        self.update()

    def shown_curves(self) -> list:
        return [c for c in self.curves
                if self.visible_structures is None or c.structure in self.visible_structures]

    # -- mapping -----------------------------------------------------------------------------
    def plot_rect(self) -> QRectF:
        left, top, right, bottom = self.MARGINS
        return QRectF(left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10))

    def to_widget(self, dose_gy: float, volume_pct: float) -> QPointF:
        r = self.plot_rect()
        return QPointF(r.left() + dose_gy / self.max_dose_gy * r.width(),
                       r.bottom() - volume_pct / 100.0 * r.height())

    def to_data(self, pos: QPointF) -> tuple[float, float]:
        r = self.plot_rect()
        return ((pos.x() - r.left()) / r.width() * self.max_dose_gy,
                (r.bottom() - pos.y()) / r.height() * 100.0)

    def _polygon(self, c: DvhCurve) -> QPolygonF:
        # Sample the curve at ~2 points per horizontal pixel: visually exact, and a 0.01 Gy
        # DVH (thousands of bins) does not cost thousands of QPointF per repaint.
        r = self.plot_rect()
        n = int(max(r.width() * 2, 16))
        d = np.linspace(0.0, self.max_dose_gy, n)
        v = np.interp(d, c.dose_gy, c.volume_pct, right=0.0)
        x = r.left() + d / self.max_dose_gy * r.width()
        y = r.bottom() - v / 100.0 * r.height()
        return QPolygonF([QPointF(a, b) for a, b in zip(x.tolist(), y.tolist())])

    # -- Qt overrides ----------------------------------------------------------------------
    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        try:
            pal = self.palette()
            p.fillRect(self.rect(), pal.base())
            r = self.plot_rect()
            text_color = pal.text().color()
            grid_color = QColor(text_color)
            grid_color.setAlpha(45)
            p.setFont(QFont(self.font().family(), 8))
            # grid and axes
            step = _nice_step(self.max_dose_gy / 8.0)
            d = 0.0
            while d <= self.max_dose_gy + 1e-9:
                x = self.to_widget(d, 0).x()
                p.setPen(grid_color)
                p.drawLine(QPointF(x, r.top()), QPointF(x, r.bottom()))
                p.setPen(text_color)
                p.drawText(QRectF(x - 25, r.bottom() + 2, 50, 14), Qt.AlignmentFlag.AlignHCenter, f"{d:g}")
                d += step
            for v in range(0, 101, 20):
                y = self.to_widget(0, v).y()
                p.setPen(grid_color)
                p.drawLine(QPointF(r.left(), y), QPointF(r.right(), y))
                p.setPen(text_color)
                p.drawText(QRectF(0, y - 7, r.left() - 4, 14),
                           Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{v}")
            p.drawText(QRectF(r.left(), r.bottom() + 16, r.width(), 16), Qt.AlignmentFlag.AlignHCenter, "Dose (Gy)")
            p.save()
            p.translate(12, r.center().y())
            p.rotate(-90)
            p.drawText(QRectF(-60, -8, 120, 16), Qt.AlignmentFlag.AlignHCenter, "Volume (%)")
            p.restore()
            p.setPen(text_color)
            p.drawRect(r)
            if not self.curves:
                p.drawText(r, Qt.AlignmentFlag.AlignCenter, self.empty_text)
            p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            p.setClipRect(r.adjusted(-1, -2, 1, 1))
            for c in self.shown_curves():
                style = _PLAN_STYLES[min(self.plans.index(c.plan), len(_PLAN_STYLES) - 1)]
                p.setPen(QPen(QColor(*c.color), 2.0, style))
                p.drawPolyline(self._polygon(c))
            for g in self.goals:
                if self.visible_structures is not None and g.structure not in self.visible_structures:
                    continue
                self._paint_goal(p, g)
            p.setClipping(False)
            if self.cursor_gy is not None and 0 <= self.cursor_gy <= self.max_dose_gy:
                self._paint_cursor(p, text_color)
        finally:
            p.end()

    def _paint_goal(self, p: QPainter, g: GoalMarker) -> None:
        pt = self.to_widget(g.dose_gy, g.volume_pct)
        s = 6.0
        path = QPainterPath()
        if g.kind == "max":  # pointing down: stay below
            path.moveTo(pt.x() - s, pt.y() - s)
            path.lineTo(pt.x() + s, pt.y() - s)
        else:
            path.moveTo(pt.x() - s, pt.y() + s)
            path.lineTo(pt.x() + s, pt.y() + s)
        path.lineTo(pt)
        path.closeSubpath()
        outline = {True: QColor(40, 200, 80), False: QColor(230, 50, 50), None: QColor(150, 150, 150)}[g.met]
        p.setPen(QPen(outline, 1.5))
        p.setBrush(QColor(*self.colors.get(g.structure, (200, 200, 200))))
        p.drawPath(path)
        p.setBrush(Qt.BrushStyle.NoBrush)

    def _paint_cursor(self, p: QPainter, text_color: QColor) -> None:
        r = self.plot_rect()
        x = self.to_widget(self.cursor_gy, 0).x()
        p.setPen(QPen(text_color, 1.0, Qt.PenStyle.DashLine))
        p.drawLine(QPointF(x, r.top()), QPointF(x, r.bottom()))
        lines = [f"{self.cursor_gy:.2f} Gy"]
        for c in self.shown_curves()[:12]:
            suffix = f" [{c.plan}]" if len(self.plans) > 1 else ""
            lines.append(f"{c.structure}{suffix}: {c.volume_at(self.cursor_gy):.1f} %")
        fm = p.fontMetrics()
        w = max(fm.horizontalAdvance(t) for t in lines) + 10
        h = fm.height() * len(lines) + 6
        bx = x + 8 if x + 8 + w < r.right() else x - 8 - w
        box = QRectF(bx, r.top() + 4, w, h)
        bg = QColor(self.palette().base().color())
        bg.setAlpha(220)
        p.fillRect(box, bg)
        p.setPen(text_color)
        for i, t in enumerate(lines):
            p.drawText(QRectF(bx + 5, r.top() + 7 + i * fm.height(), w, fm.height()), Qt.AlignmentFlag.AlignLeft, t)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        d, _ = self.to_data(event.position())
        if self.plot_rect().contains(event.position()):
            self.cursor_gy = max(d, 0.0)
            self.cursorMoved.emit(self.cursor_gy)
        else:
            self.cursor_gy = None
        self.update()

    def leaveEvent(self, event) -> None:  # noqa: N802
        self.cursor_gy = None
        self.update()


def _nice_step(raw: float) -> float:
    if raw <= 0:
        return 1.0
    mag = 10 ** np.floor(np.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def _nice_ceiling(v: float) -> float:
    step = _nice_step(v / 8.0)
    return float(max(np.ceil(v / step) * step, step))


class DvhPanel(QWidget):
    """DVH plot above an endpoint table.

    Signals
    -------
    cursorMoved(float)
        Dose under the pointer, Gy.
    """

    cursorMoved = Signal(float)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._setup_ui()

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        split = QSplitter(Qt.Orientation.Vertical)
        self.plot = DvhPlot()
        self.plot.cursorMoved.connect(self.cursorMoved)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setSortingEnabled(False)
        split.addWidget(self.plot)
        split.addWidget(self.table)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay.addWidget(split)

    def set_curves(self, curves, colors: dict | None = None) -> None:
        """Curves to draw (list of :class:`DvhCurve`); ``colors`` by structure for goal markers."""
        self.plot.colors = dict(colors or {c.structure: c.color for c in curves})
        self.plot.set_curves(curves)

    def set_goals(self, goals) -> None:
        self.plot.set_goals(goals)

    def set_visible_structures(self, names) -> None:
        """Show only these structures' curves (``None``: all)."""
        self.plot.visible_structures = None if names is None else set(names)
        self.plot.update()

    def set_endpoints(self, columns: list, rows: list) -> None:
        """Fill the endpoint table: ``columns`` headers, ``rows`` lists of values (floats
        are shown with 2 decimals, NaN as a dash)."""
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels([str(c) for c in columns])
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if isinstance(v, float):
                    text = "–" if v != v else f"{v:.2f}"
                else:
                    text = str(v)
                item = QTableWidgetItem(text)
                if isinstance(v, float):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(i, j, item)
