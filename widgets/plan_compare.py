"""Two plans side by side: linked image views, a DVH overlay and a goal-by-goal table.

The widget displays what it is given: the image and each plan's dose go into two
:class:`widgets.viewer_model.ViewerModel` objects (one per plan, sharing the CT and
structure arrays), the DVH curves into a :class:`widgets.dvh_panel.DvhPanel` (plan A
solid, plan B dashed) and the goal results of both plans into the difference table. The
application computes DVHs and goal results in the core and hands them over.

The two models are kept in step: moving the crosshair or the slice, changing
window/level, structure visibility or the dose display in one changes the other; zoom and
pan follow too. The difference column is B - A in the goal's unit (Gy, or % for Vx
goals), coloured green where B is better for that goal (higher for coverage goals, lower
for limits) and red where it is worse.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QEvent, QObject, QPointF, Qt, QTimer, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QLabel, QSplitter,
                               QStackedWidget, QTableWidget, QTableWidgetItem, QToolButton, QVBoxLayout, QWidget)

from widgets.ct_viewer import SliceView, format_readout
from widgets.dvh_panel import DvhPanel
from widgets.slice_geometry import VIEWS
from widgets.viewer_model import DOSE_MODES, WINDOW_PRESETS, StructureLayer, ViewerModel

#: Columns of the goal difference table.
GOAL_COLUMNS = ("P", "Structure", "Goal", "Plan A", "Plan B", "B − A", "Met A", "Met B")
COL_A, COL_B, COL_DIFF, COL_MET_A, COL_MET_B = 3, 4, 5, 6, 7

_GREEN = QColor(60, 190, 90)
_RED = QColor(225, 70, 70)
_GREY = QColor(150, 150, 150)
#: Differences smaller than this (goal unit) are shown uncoloured: below what planners read.
DIFF_NOISE = 0.005


def _met_text(met) -> str:
    return {True: "✓", False: "✗", None: "–"}[met]


def _goal_text(goal) -> str:
    """``D95 >= 70 Gy`` (the label without priority and structure)."""
    label = goal.label
    prefix = f"P{goal.priority} {goal.structure} "
    return label[len(prefix):] if label.startswith(prefix) else label


def difference_better(goal, diff: float) -> bool | None:
    """Is B better than A by ``diff`` (= B - A) for this goal? None: no difference."""
    if diff is None or not math.isfinite(diff) or abs(diff) < DIFF_NOISE:
        return None
    higher_is_better = bool(getattr(goal.kind, "is_lower_bound", False))
    return (diff > 0) == higher_is_better


class _ZoomFollower(QObject):
    """After a zoom/pan gesture in one view, copy its zoom and pan to its partner."""

    GESTURES = (QEvent.Type.Wheel, QEvent.Type.MouseMove, QEvent.Type.MouseButtonRelease,
                QEvent.Type.MouseButtonDblClick, QEvent.Type.KeyPress)

    def __init__(self, pairs, parent=None):
        super().__init__(parent)
        self.partner = {}
        for a, b in pairs:
            self.partner[a] = b
            self.partner[b] = a
            a.installEventFilter(self)
            b.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        if obj in self.partner and event.type() in self.GESTURES:
            # The view handles the event after this filter: compare on the next loop turn.
            # Only a view whose zoom or pan the event changed is copied, so that a stale
            # check of the other view cannot undo a newer gesture.
            before = (obj.zoom, QPointF(obj.pan))
            QTimer.singleShot(0, lambda o=obj, b=before: self.copy(o, b))
        return False

    def copy(self, src, before=None) -> None:
        dst = self.partner.get(src)
        if dst is None or (before is not None and (src.zoom, src.pan) == before):
            return
        if dst.zoom != src.zoom or dst.pan != src.pan:
            dst.zoom, dst.pan = src.zoom, QPointF(src.pan)
            dst.update()


class PlanCompare(QWidget):
    """Plan A and plan B side by side.

    Parameters
    ----------
    model_a, model_b : ViewerModel, optional
        The display state of each side (created when not given). They are linked here.

    Signals
    -------
    plansChosen(str, str)
        The planner picked another plan A or B (keys), or swapped them.
    readout(str)
        Position, HU and both doses under the pointer.
    """

    plansChosen = Signal(str, str)
    readout = Signal(str)

    def __init__(self, model_a: ViewerModel | None = None, model_b: ViewerModel | None = None, parent=None):
        super().__init__(parent)
        self.model_a = model_a or ViewerModel(self)
        self.model_b = model_b or ViewerModel(self)
        self.views_a: dict[str, SliceView] = {}
        self.views_b: dict[str, SliceView] = {}
        self.labels = ("A", "B")
        self.results: list = []  # [(goal, result A, result B)] as shown
        self._syncing = False
        self._setup_ui()
        self._link_models()

    # -- construction -------------------------------------------------------------------------
    def _setup_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(2, 2, 2, 2)
        outer.setSpacing(2)
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        bar.addWidget(QLabel("Plan A"))
        self.box_a = QComboBox()
        self.box_b = QComboBox()
        for box in (self.box_a, self.box_b):
            box.setMinimumWidth(110)
            box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
            box.currentIndexChanged.connect(self._on_plan_box_changed)
        self.box_a.setToolTip("Plan A: drawn solid on the DVH; the reference of the differences")
        self.box_b.setToolTip("Plan B: drawn dashed on the DVH; differences are B − A")
        bar.addWidget(self.box_a)
        self.swap_button = QToolButton()
        self.swap_button.setText("⇄")
        self.swap_button.setToolTip("Swap plan A and plan B")
        self.swap_button.clicked.connect(self._on_swap)
        bar.addWidget(self.swap_button)
        bar.addWidget(QLabel("Plan B"))
        bar.addWidget(self.box_b)
        bar.addSpacing(12)
        bar.addWidget(QLabel("View"))
        self.view_box = QComboBox()
        for v in VIEWS:
            self.view_box.addItem(v.capitalize(), v)
        self.view_box.currentIndexChanged.connect(self._on_view_chosen)
        bar.addWidget(self.view_box)
        bar.addWidget(QLabel("Window"))
        self.preset_box = QComboBox()
        for name in WINDOW_PRESETS:
            self.preset_box.addItem(name.capitalize(), name)
        self.preset_box.addItem("Custom", "")
        self.preset_box.currentIndexChanged.connect(self._on_preset_chosen)
        bar.addWidget(self.preset_box)
        bar.addWidget(QLabel("Dose"))
        self.dose_mode_box = QComboBox()
        for mode in DOSE_MODES:
            self.dose_mode_box.addItem({"isodose": "Isodose lines", "wash": "Colour wash",
                                        "both": "Lines + wash", "off": "Hidden"}[mode], mode)
        self.dose_mode_box.currentIndexChanged.connect(
            lambda _i: self.model_a.set_dose_display(mode=self.dose_mode_box.currentData()))
        bar.addWidget(self.dose_mode_box)
        bar.addStretch(1)
        outer.addLayout(bar)

        vsplit = QSplitter(Qt.Orientation.Vertical)
        images = QSplitter(Qt.Orientation.Horizontal)
        self.stack_a, self.title_a = self._side(self.model_a, self.views_a, images)
        self.stack_b, self.title_b = self._side(self.model_b, self.views_b, images)
        self._zoom = _ZoomFollower([(self.views_a[v], self.views_b[v]) for v in VIEWS], self)
        vsplit.addWidget(images)

        bottom = QSplitter(Qt.Orientation.Horizontal)
        self.dvh = DvhPanel()
        self.dvh.table.hide()  # endpoints of both plans live in the goal table beside it
        self.dvh.plot.empty_text = "Pick two plans to compare"
        bottom.addWidget(self.dvh)
        table_pane = QWidget()
        tlay = QVBoxLayout(table_pane)
        tlay.setContentsMargins(0, 0, 0, 0)
        tlay.setSpacing(2)
        self.summary_label = QLabel("")
        self.summary_label.setObjectName("compareSummary")
        self.summary_label.setWordWrap(True)
        tlay.addWidget(self.summary_label)
        self.goal_table = QTableWidget(0, len(GOAL_COLUMNS))
        self.goal_table.setObjectName("goalDifferences")
        self.goal_table.setHorizontalHeaderLabels(list(GOAL_COLUMNS))
        self.goal_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.goal_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.goal_table.verticalHeader().setVisible(False)
        self.goal_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.goal_table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)  # the goal text
        tlay.addWidget(self.goal_table, 1)
        bottom.addWidget(table_pane)
        bottom.setStretchFactor(0, 2)
        bottom.setStretchFactor(1, 3)
        vsplit.addWidget(bottom)
        vsplit.setStretchFactor(0, 3)
        vsplit.setStretchFactor(1, 2)
        outer.addWidget(vsplit, 1)
        self.readout_label = QLabel(" ")
        self.readout_label.setObjectName("compareReadout")
        outer.addWidget(self.readout_label)
        self._set_titles()
        self._sync_controls()

    def _side(self, model: ViewerModel, views: dict, parent: QSplitter):
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(1)
        title = QLabel("")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        title.setStyleSheet("font-weight: bold;")
        lay.addWidget(title)
        stack = QStackedWidget()
        for v in VIEWS:
            views[v] = SliceView(model, v, show_legend=True)
            views[v].hovered.connect(self._on_hovered)
            stack.addWidget(views[v])
        lay.addWidget(stack, 1)
        parent.addWidget(box)
        return stack, title

    def _link_models(self) -> None:
        a, b = self.model_a, self.model_b
        a.cursorChanged.connect(lambda c: self._mirror(b.set_cursor, c))
        b.cursorChanged.connect(lambda c: self._mirror(a.set_cursor, c))
        a.windowLevelChanged.connect(lambda w, lv: self._mirror(b.set_window_level, w, lv))
        b.windowLevelChanged.connect(lambda w, lv: self._mirror(a.set_window_level, w, lv))
        a.structuresChanged.connect(lambda: self._mirror(self._copy_visibility, a, b))
        b.structuresChanged.connect(lambda: self._mirror(self._copy_visibility, b, a))
        a.doseChanged.connect(lambda: self._mirror(self._copy_dose_display, a, b))
        b.doseChanged.connect(lambda: self._mirror(self._copy_dose_display, b, a))
        for m in (a, b):
            m.windowLevelChanged.connect(lambda *_: self._sync_controls())
            m.doseChanged.connect(self._sync_controls)
            m.structuresChanged.connect(self._sync_dvh_visibility)

    def _mirror(self, fn, *args) -> None:
        # Each model re-emits what it is told; the guard stops the echo at one hop.
        if self._syncing:
            return
        self._syncing = True
        try:
            fn(*args)
        finally:
            self._syncing = False

    @staticmethod
    def _copy_visibility(src: ViewerModel, dst: ViewerModel) -> None:
        for name, layer in src.structures.items():
            if name in dst.structures:
                dst.set_structure_visible(name, layer.visible)

    @staticmethod
    def _copy_dose_display(src: ViewerModel, dst: ViewerModel) -> None:
        if (dst.dose_mode, dst.wash_opacity, dst.isodose_unit, dst.isodose_levels) != \
                (src.dose_mode, src.wash_opacity, src.isodose_unit, src.isodose_levels):
            dst.set_dose_display(mode=src.dose_mode, opacity=src.wash_opacity, levels=src.isodose_levels,
                                 unit=src.isodose_unit)

    # -- data in ------------------------------------------------------------------------------
    def set_plans(self, plans, a: str | None = None, b: str | None = None) -> None:
        """Fill both plan choosers with ``[(key, label)]`` and select ``a`` and ``b`` (no signal)."""
        for box, key in ((self.box_a, a), (self.box_b, b)):
            box.blockSignals(True)
            try:
                box.clear()
                for k, label in plans:
                    box.addItem(label, k)
                box.setCurrentIndex(box.findData(key) if key is not None else -1)
                box.setEnabled(bool(plans))
            finally:
                box.blockSignals(False)

    def plan_keys(self) -> tuple:
        """Keys of the plans chosen as A and B (None where nothing is chosen)."""
        return self.box_a.currentData(), self.box_b.currentData()

    def set_images(self, hu, grid, layers, focus_mask=None) -> None:
        """The CT (HU on ``grid``, or None), structures (:class:`StructureLayer`) and the
        body mask the views fit to; both sides share the arrays."""
        with_guard = self._syncing
        self._syncing = True  # both models get the same state: nothing to mirror
        try:
            for m in (self.model_a, self.model_b):
                m.set_volume(hu, grid)
                m.set_structures([StructureLayer(s.name, s.mask, tuple(s.color), s.visible, s.role) for s in layers])
                m.set_focus_mask(focus_mask)
        finally:
            self._syncing = with_guard
        for va, vb in zip(self.views_a.values(), self.views_b.values()):
            va.reset_view()
            vb.reset_view()
        self._sync_dvh_visibility()

    def set_doses(self, dose_a, dose_b, reference_gy: float | None, label_a: str = "A", label_b: str = "B") -> None:
        """Each side's dose (Gy on the image grid, or None); ``reference_gy`` is 100 % on both
        sides, so that equal isodose levels mean equal doses."""
        ref = reference_gy if reference_gy and reference_gy > 0 else None
        if ref is None:
            tops = [float(d.max()) for d in (dose_a, dose_b) if d is not None and d.size]
            ref = max(tops) if tops else None
        self.model_a.set_dose(dose_a, ref, label_a)
        self.model_b.set_dose(dose_b, ref, label_b)
        self.labels = (label_a, label_b)
        self._set_titles()

    def set_dvh(self, curves) -> None:
        """DVH curves (:class:`widgets.dvh_panel.DvhCurve`) of plan A first, then plan B."""
        self.dvh.set_curves(curves)
        self._sync_dvh_visibility()

    def set_goal_results(self, results_a, results_b, note: str = "") -> None:
        """Fill the difference table from the two plans' goal results.

        Parameters
        ----------
        results_a, results_b : sequences of ``core.goals.evaluate.GoalResult``
            Same goals in the same order (``goal``, ``achieved`` in the goal's unit or
            None, ``met``).
        note : str
            Where the goals came from (shown under the table's tool tip and the summary).
        """
        if len(results_a) != len(results_b):
            raise ValueError("both plans must be evaluated on the same goals")
        t = self.goal_table
        t.setRowCount(0)
        t.setRowCount(len(results_a))
        self.results = []
        for i, (ra, rb) in enumerate(zip(results_a, results_b)):
            g = ra.goal
            if rb.goal is not g and getattr(rb.goal, "to_dict", lambda: None)() != getattr(g, "to_dict", lambda: 0)():
                raise ValueError(f"row {i + 1}: the two results are for different goals")
            self.results.append((g, ra, rb))
            diff = None if ra.achieved is None or rb.achieved is None else float(rb.achieved) - float(ra.achieved)
            cells = [(f"P{g.priority}", g.priority), (g.structure, g.structure), (_goal_text(g), g.label)]
            for r in (ra, rb):
                cells.append(("–" if r.achieved is None else f"{r.achieved:.2f} {g.unit}",
                              None if r.achieved is None else float(r.achieved)))
            cells.append(("–" if diff is None else f"{diff:+.2f} {g.unit}", diff))
            cells += [(_met_text(ra.met), ra.met), (_met_text(rb.met), rb.met)]
            for j, (text, value) in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, value)
                if j >= COL_A:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if j in (COL_MET_A, COL_MET_B):
                    item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                    item.setForeground(QBrush({True: _GREEN, False: _RED, None: _GREY}[value]))
                if j == COL_DIFF:
                    better = difference_better(g, diff)
                    if better is not None:
                        item.setForeground(QBrush(_GREEN if better else _RED))
                        item.setToolTip("B is better for this goal" if better else "B is worse for this goal")
                t.setItem(i, j, item)
        t.setToolTip(note)
        self._set_titles()
        self._update_summary(note)

    def clear_results(self, message: str = "") -> None:
        self.goal_table.setRowCount(0)
        self.results = []
        self.dvh.set_curves([])
        self.summary_label.setText(message)

    # -- reading back (tests, export of the table) -----------------------------------------------
    def table_rows(self) -> list[list]:
        """The table as values: ``[priority, structure, goal label, A, B, B-A, met A, met B]``."""
        t = self.goal_table
        return [[t.item(i, j).data(Qt.ItemDataRole.UserRole) for j in range(t.columnCount())]
                for i in range(t.rowCount())]

    def current_view(self) -> str:
        return self.view_box.currentData()

    # -- slots --------------------------------------------------------------------------------
    def _on_plan_box_changed(self, _index: int) -> None:
        self._set_titles()
        a, b = self.plan_keys()
        if a is not None and b is not None:
            self.plansChosen.emit(a, b)

    def _on_swap(self) -> None:
        a, b = self.plan_keys()
        if a is None or b is None:
            return
        for box, key in ((self.box_a, b), (self.box_b, a)):
            box.blockSignals(True)
            box.setCurrentIndex(box.findData(key))
            box.blockSignals(False)
        self._set_titles()
        self.plansChosen.emit(b, a)

    def _on_view_chosen(self, _index: int) -> None:
        i = list(VIEWS).index(self.view_box.currentData())
        self.stack_a.setCurrentIndex(i)
        self.stack_b.setCurrentIndex(i)

    def set_view(self, view: str) -> None:
        self.view_box.setCurrentIndex(self.view_box.findData(view))

    def _on_preset_chosen(self, _index: int) -> None:
        name = self.preset_box.currentData()
        if name:
            self.model_a.apply_preset(name)

    def _sync_controls(self) -> None:
        m = self.model_a
        name = next((k for k, wl in WINDOW_PRESETS.items() if wl == (m.window, m.level)), "")
        for box, data in ((self.preset_box, name), (self.dose_mode_box, m.dose_mode)):
            i = box.findData(data)
            if i != box.currentIndex():
                box.blockSignals(True)
                box.setCurrentIndex(i)
                box.blockSignals(False)

    def _sync_dvh_visibility(self) -> None:
        if self.model_a.structures:
            self.dvh.set_visible_structures([n for n, layer in self.model_a.structures.items() if layer.visible])

    def _set_titles(self) -> None:
        la, lb = self.labels
        same = self.plan_keys()[0] is not None and self.plan_keys()[0] == self.plan_keys()[1]
        self.title_a.setText(f"A: {la}   (solid)")
        self.title_b.setText(f"B: {lb}   (dashed)" + ("   — the same plan as A" if same else ""))
        self.goal_table.setHorizontalHeaderItem(COL_A, QTableWidgetItem(f"A: {la}"))
        self.goal_table.setHorizontalHeaderItem(COL_B, QTableWidgetItem(f"B: {lb}"))

    def _update_summary(self, note: str) -> None:
        def count(side: int, p1: bool = False) -> str:
            rows = [r for r in self.results if not p1 or r[0].priority == 1]
            met = sum(1 for r in rows if r[side].met)
            return f"{met}/{len(rows)}"

        if not self.results:
            self.summary_label.setText(note or "no goals to compare")
            return
        self.summary_label.setText(f"goals met  A {count(1)} (P1 {count(1, True)})   ·   "
                                   f"B {count(2)} (P1 {count(2, True)})" + (f"   ·   {note}" if note else ""))

    def _on_hovered(self, sample: dict) -> None:
        # position and HU from the generic read-out; the doses of both sides after it
        text = format_readout({**sample, "dose_gy": None})
        idx = sample.get("index")
        if text and idx is not None:
            da = self.model_a.sample(idx)["dose_gy"]
            db = self.model_b.sample(idx)["dose_gy"]
            if da is not None or db is not None:
                fa = "–" if da is None else f"{da:.2f}"
                fb = "–" if db is None else f"{db:.2f}"
                text += f"   |   A {fa} Gy   B {fb} Gy"
                if da is not None and db is not None:
                    text += f"   B − A {db - da:+.2f} Gy"
        self.readout_label.setText(text or " ")
        self.readout.emit(text)


__all__ = ["PlanCompare", "GOAL_COLUMNS", "difference_better"]
