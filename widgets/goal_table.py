"""Goal editor: the prioritized clinical goal list as an editable, reorderable table.

:class:`GoalTableModel` (a ``QAbstractTableModel``) holds the goals
(:class:`core.goals.goal.ClinicalGoal`), the values the last plan and the prediction
reached, and the goal list of the last optimization; :class:`GoalTable` shows it with
validated editors, drag-and-drop reordering and the template buttons.

Rules the table keeps:

* Rows stay sorted by priority (1 first); the order inside a priority is the planner's.
* Every edit builds a new goal through the dataclass, so the dataclass's validation is the
  only one: an edit it refuses is not applied and its message is shown.
* Moving a row changes its priority only as far as its place demands: dropped below a
  row it joins that row's priority; "move up" on the first row of a priority joins the
  priority above (and "move down" on the last row the one below).
* A row whose goal is not in the goal list of the last optimization is marked (bold and a
  dot) until :meth:`GoalTableModel.mark_optimized`.
* Predicted and achieved values are looked up by ``(structure, metric)``
  (:func:`core.planning_steps.goal_key`), so a goal whose value, direction or priority
  was edited keeps its achieved value and its met icon follows the new value at once.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

from PySide6.QtCore import QAbstractTableModel, QByteArray, QMimeData, QModelIndex, Qt, Signal
from PySide6.QtGui import QFont, QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFileDialog, QHBoxLayout,
                               QHeaderView, QLabel, QLineEdit, QMenu, QSpinBox, QStyledItemDelegate, QTableView,
                               QToolButton, QVBoxLayout, QWidget)

from core.errors import InputError, OpenATPError
from core.goals.evaluate import is_met
from core.goals.goal import ClinicalGoal, GoalKind
from core.planning_steps import goal_key
from widgets.icons import icon, status_icon

COLUMNS = ("P", "Structure", "Goal", "At", "Value", "Tol %", "Predicted", "Achieved", "Met")
COL_PRIORITY, COL_STRUCTURE, COL_KIND, COL_AT, COL_VALUE, COL_TOL, COL_PREDICTED, COL_ACHIEVED, COL_MET = \
    range(len(COLUMNS))
EDITABLE = (COL_PRIORITY, COL_STRUCTURE, COL_KIND, COL_AT, COL_VALUE, COL_TOL)

#: How each goal kind reads in the table (the combo box stores the enum, never this text).
KIND_TEXT = {
    GoalKind.MIN_DOSE_AT_VOLUME: "D(vol) ≥",
    GoalKind.MAX_DOSE_AT_VOLUME: "D(vol) ≤",
    GoalKind.MAX_MEAN: "Mean ≤",
    GoalKind.MIN_MEAN: "Mean ≥",
    GoalKind.MAX_VOLUME_AT_DOSE: "V(dose) ≤",
    GoalKind.ALARA: "Mean ALARA",
}
KIND_TIP = {
    GoalKind.MIN_DOSE_AT_VOLUME: "minimum dose to the hottest x % (or x cc): coverage",
    GoalKind.MAX_DOSE_AT_VOLUME: "maximum dose to the hottest x % (or x cc); 0.03 cc is the near-maximum",
    GoalKind.MAX_MEAN: "maximum mean dose",
    GoalKind.MIN_MEAN: "minimum mean dose",
    GoalKind.MAX_VOLUME_AT_DOSE: "at most y % of the structure receives x Gy or more",
    GoalKind.ALARA: "mean dose as low as possible (no threshold)",
}

MIME_ROWS = "application/x-openatp-goal-rows"
MET_COLOR, UNMET_COLOR = "#3cb371", "#e05050"
#: Role answering whether a row's goal is met (True/False, None: not evaluated).
MET_ROLE = Qt.ItemDataRole.UserRole + 1
#: Role answering whether a row changed since the last optimization.
CHANGED_ROLE = Qt.ItemDataRole.UserRole + 2


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    return f"{v:.2f} {unit}".strip()


def at_text(goal: ClinicalGoal) -> str:
    """The goal's volume (``95 %``, ``0.03 cc``) or dose level (``50 Gy``); ``—`` for means."""
    if goal.kind in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME):
        return f"{goal.volume_pct:g} %" if goal.volume_pct is not None else f"{goal.volume_cc:g} cc"
    if goal.kind is GoalKind.MAX_VOLUME_AT_DOSE:
        return f"{goal.dose_gy:g} Gy"
    return "—"


def _number(text: str, what: str) -> float:
    try:
        return float(text.replace(",", "."))
    except ValueError:
        raise InputError(f"{what}: '{text}' is not a number") from None


def goal_with_at(goal: ClinicalGoal, text: str) -> ClinicalGoal:
    """``goal`` with its volume (``95``, ``95 %``, ``0.03 cc``) or dose level (``50 Gy``) from ``text``."""
    t = str(text).strip().lower()
    where = f"'{goal.label}'"
    if goal.kind in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME):
        if t.endswith("cc"):
            return replace(goal, volume_cc=_number(t[:-2].strip(), where), volume_pct=None)
        return replace(goal, volume_pct=_number(t.rstrip("%").strip(), where), volume_cc=None)
    if goal.kind is GoalKind.MAX_VOLUME_AT_DOSE:
        if t.endswith("cgy"):
            raise InputError(f"{where}: the dose level is given in Gy")
        return replace(goal, dose_gy=_number(t.removesuffix("gy").strip(), where))
    raise InputError(f"{where}: a {KIND_TEXT[goal.kind]} goal has no volume or dose level")


def goal_with_kind(goal: ClinicalGoal, kind: GoalKind) -> ClinicalGoal:
    """``goal`` turned into another kind, keeping what still applies (dose, volume).

    The missing parameters get placeholders a planner then edits: 95 % for a minimum dose,
    0.03 cc (near-max) for a maximum dose, 50 % of the structure for a volume goal, 20 Gy
    where a kind without a dose becomes one with.
    """
    kind = GoalKind(kind)
    if kind is goal.kind:
        return goal
    dose = goal.dose_gy if goal.dose_gy else 20.0
    kw = dict(priority=goal.priority, structure=goal.structure, kind=kind, tolerance_pct=goal.tolerance_pct,
              control=goal.control, note=goal.note)
    if kind in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME):
        if goal.volume_cc is not None:
            kw.update(volume_cc=goal.volume_cc)
        elif goal.volume_pct is not None and goal.kind is not GoalKind.MAX_VOLUME_AT_DOSE and goal.volume_pct > 0:
            kw.update(volume_pct=goal.volume_pct)
        elif kind is GoalKind.MIN_DOSE_AT_VOLUME:
            kw.update(volume_pct=95.0)
        else:
            kw.update(volume_cc=0.03)
        kw.update(dose_gy=dose)
    elif kind is GoalKind.MAX_VOLUME_AT_DOSE:
        vol = goal.volume_pct if goal.volume_pct is not None and goal.kind is not GoalKind.MIN_DOSE_AT_VOLUME \
            and goal.kind is not GoalKind.MAX_DOSE_AT_VOLUME else 50.0
        kw.update(dose_gy=dose, volume_pct=vol)
    elif kind in (GoalKind.MAX_MEAN, GoalKind.MIN_MEAN):
        kw.update(dose_gy=dose)
    return ClinicalGoal(**kw)


class GoalTableModel(QAbstractTableModel):
    """The goal list of one plan, for :class:`GoalTable` (or any view).

    Signals
    -------
    goalsEdited(list)
        The planner changed the goals (edit, add, remove, reorder, load): the new list.
        Not emitted by :meth:`set_goals`.
    editRejected(str)
        An edit was refused; the message says why in a planner's words.
    """

    goalsEdited = Signal(list)
    editRejected = Signal(str)

    def __init__(self, goals=(), parent=None):
        super().__init__(parent)
        self._goals: list[ClinicalGoal] = list(goals)
        self._baseline: Counter | None = None
        self._baseline_n = 0
        self._achieved: dict = {}
        self._predicted: dict = {}
        self.structure_names: list[str] = []

    # -- content --------------------------------------------------------------------------------
    def goals(self) -> list[ClinicalGoal]:
        return list(self._goals)

    def goal(self, row: int) -> ClinicalGoal:
        return self._goals[row]

    def set_goals(self, goals, optimized: bool = False) -> None:
        """Replace the list (sorted by priority, stable). ``optimized``: it is the goal list
        the shown plan was optimized with, so nothing is marked as changed."""
        self.beginResetModel()
        self._goals = sorted(goals, key=lambda g: g.priority)
        if optimized:
            self._set_baseline(self._goals)
        self.endResetModel()

    def set_structures(self, names) -> None:
        """Structure names offered by the structure editor (the patient's)."""
        self.structure_names = list(names)

    def set_values(self, achieved: dict | None = None, predicted: dict | None = None) -> None:
        """Values by :func:`core.planning_steps.goal_key` (goal units): ``achieved`` on the
        shown plan, ``predicted`` on the predicted dose; ``None`` leaves one unchanged."""
        if achieved is not None:
            self._achieved = dict(achieved)
        if predicted is not None:
            self._predicted = dict(predicted)
        if self._goals:
            self.dataChanged.emit(self.index(0, COL_PREDICTED), self.index(len(self._goals) - 1, COL_MET))

    def achieved(self, row: int) -> float | None:
        return self._achieved.get(goal_key(self._goals[row]))

    def predicted(self, row: int) -> float | None:
        return self._predicted.get(goal_key(self._goals[row]))

    def met(self, row: int) -> bool | None:
        a = self.achieved(row)
        return None if a is None else bool(is_met(self._goals[row], a))

    # -- changes since the last optimization ----------------------------------------------------
    def _set_baseline(self, goals) -> None:
        self._baseline = Counter(goals)
        self._baseline_n = len(list(goals))

    def mark_optimized(self, goals=None) -> None:
        """The plan now shown was optimized with ``goals`` (default: the current list):
        rows equal to one of them lose their changed mark."""
        self._set_baseline(self._goals if goals is None else list(goals))
        if self._goals:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._goals) - 1, len(COLUMNS) - 1))

    def forget_optimization(self) -> None:
        """No plan was optimized with any list yet (a new patient): nothing is marked."""
        self._baseline, self._baseline_n = None, 0
        if self._goals:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._goals) - 1, len(COLUMNS) - 1))

    def changed_rows(self) -> list[int]:
        """Rows whose goal is not in the last optimization's list (none before the first)."""
        if self._baseline is None:
            return []
        left = Counter(self._baseline)
        out = []
        for i, g in enumerate(self._goals):
            if left[g] > 0:
                left[g] -= 1
            else:
                out.append(i)
        return out

    def removed_count(self) -> int:
        """How many rows fewer than in the last optimization's list (an edited goal counts
        as changed, not as removed)."""
        if self._baseline is None:
            return 0
        return max(0, self._baseline_n - len(self._goals))

    def is_changed(self, row: int) -> bool:
        return row in self.changed_rows()

    # -- Qt model -------------------------------------------------------------------------------
    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self._goals)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal:
            if role == Qt.ItemDataRole.DisplayRole:
                return COLUMNS[section]
            if role == Qt.ItemDataRole.ToolTipRole:
                return ("Priority (1 = must)", "Structure", "Kind of goal", "Volume (% or cc) or dose level (Gy)",
                        "Goal value", "How much a value from the prediction is tightened",
                        "Value on the predicted dose", "Value on the plan shown", "Met on the plan shown")[section]
        return None

    def flags(self, index):
        base = Qt.ItemFlag.ItemIsDropEnabled
        if not index.isValid():
            return base
        f = base | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsDragEnabled
        g = self._goals[index.row()]
        col = index.column()
        if col in EDITABLE and not (col == COL_AT and at_text(g) == "—") and \
                not (col == COL_VALUE and g.kind is GoalKind.ALARA):
            f |= Qt.ItemFlag.ItemIsEditable
        return f

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row, col = index.row(), index.column()
        g = self._goals[row]
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(g, row, col)
        if role == Qt.ItemDataRole.EditRole:
            return {COL_PRIORITY: g.priority, COL_STRUCTURE: g.structure, COL_KIND: g.kind.value,
                    COL_AT: at_text(g), COL_VALUE: g.value, COL_TOL: g.tolerance_pct}.get(col)
        if role == Qt.ItemDataRole.DecorationRole:
            if col == COL_PRIORITY and self.is_changed(row):
                return icon("changed")
            if col == COL_MET:
                met = self.met(row)
                if met is not None:
                    return status_icon("met", MET_COLOR) if met else status_icon("unmet", UNMET_COLOR)
            return None
        if role == Qt.ItemDataRole.FontRole and self.is_changed(row):
            f = QFont()
            f.setBold(True)
            return f
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = g.label + (f"\n{g.note}" if g.note else "")
            if col == COL_KIND:
                tip = KIND_TIP[g.kind]
            if self.is_changed(row):
                tip += "\nchanged since the last optimization: re-optimize to apply"
            return tip
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_PRIORITY, COL_VALUE, COL_TOL, COL_PREDICTED,
                                                                  COL_ACHIEVED, COL_AT):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == MET_ROLE:
            return self.met(row)
        if role == CHANGED_ROLE:
            return self.is_changed(row)
        return None

    def _display(self, g: ClinicalGoal, row: int, col: int):
        if col == COL_PRIORITY:
            return f"P{g.priority}"
        if col == COL_STRUCTURE:
            return g.structure
        if col == COL_KIND:
            return KIND_TEXT[g.kind]
        if col == COL_AT:
            return at_text(g)
        if col == COL_VALUE:
            # values from a prediction carry 3 decimals; planners read doses to 0.01 Gy
            return "—" if g.value is None else f"{round(g.value, 2):g} {g.unit}"
        if col == COL_TOL:
            return f"{g.tolerance_pct:g}" if g.tolerance_pct else ""
        if col == COL_PREDICTED:
            return _fmt(self.predicted(row), g.unit)
        if col == COL_ACHIEVED:
            return _fmt(self.achieved(row), g.unit)
        if col == COL_MET:
            met = self.met(row)
            return "" if met is None else ("met" if met else "not met")
        return None

    def setData(self, index, value, role=Qt.ItemDataRole.EditRole) -> bool:  # noqa: N802
        if role != Qt.ItemDataRole.EditRole or not index.isValid():
            return False
        row, col = index.row(), index.column()
        g = self._goals[row]
        try:
            new = self._edited(g, col, value)
        except OpenATPError as exc:
            self.editRejected.emit(exc.message)
            return False
        if new == g:
            return False
        self._goals[row] = new
        if col == COL_PRIORITY:
            self._resort()
        else:
            self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
        self.goalsEdited.emit(self.goals())
        return True

    def _edited(self, g: ClinicalGoal, col: int, value) -> ClinicalGoal:
        # Every branch builds the new goal through the dataclass: its __post_init__ is the
        # one validation, with the planner-facing message.
        if col == COL_PRIORITY:
            try:
                p = int(value)
            except (TypeError, ValueError):
                raise InputError(f"'{g.label}': priority must be a whole number >= 1, got {value!r}") from None
            return replace(g, priority=p)
        if col == COL_STRUCTURE:
            name = str(value).strip()
            if self.structure_names and name not in self.structure_names:
                raise InputError(f"'{g.label}': the patient has no structure named '{name}'")
            return replace(g, structure=name)
        if col == COL_KIND:
            try:
                kind = value if isinstance(value, GoalKind) else GoalKind(str(value))
            except ValueError:
                raise InputError(f"'{g.label}': unknown kind of goal '{value}'") from None
            return goal_with_kind(g, kind)
        if col == COL_AT:
            return goal_with_at(g, str(value))
        if col == COL_VALUE:
            if g.kind is GoalKind.ALARA:
                raise InputError(f"'{g.label}': 'as low as possible' has no value")
            return g.with_value(_number(str(value), f"'{g.label}'"))
        if col == COL_TOL:
            return replace(g, tolerance_pct=_number(str(value), f"'{g.label}'"))
        raise InputError(f"column '{COLUMNS[col]}' cannot be edited")

    def _resort(self) -> None:
        self.layoutAboutToBeChanged.emit()
        old = list(self._goals)
        order = sorted(range(len(old)), key=lambda i: old[i].priority)
        self._goals = [old[i] for i in order]
        persistent = self.persistentIndexList()
        new_row = {o: n for n, o in enumerate(order)}
        self.changePersistentIndexList(persistent, [self.index(new_row[p.row()], p.column()) for p in persistent])
        self.layoutChanged.emit()

    # -- rows -----------------------------------------------------------------------------------
    def add_goal(self, goal: ClinicalGoal | None = None, after: int | None = None) -> int:
        """Insert ``goal`` (default: a placeholder mean-dose goal the planner then edits)
        after row ``after`` (default: at the end); returns its row."""
        if goal is None:
            prio = self._goals[after].priority if after is not None and 0 <= after < len(self._goals) else \
                (self._goals[-1].priority if self._goals else 1)
            name = next((n for n in self.structure_names), None) or "structure"
            goal = ClinicalGoal(prio, name, GoalKind.MAX_MEAN, dose_gy=20.0, control=True,
                                note="added by the planner")
        rows = [i for i, g in enumerate(self._goals) if g.priority <= goal.priority]
        row = len(self._goals) if not rows else rows[-1] + 1
        if after is not None and 0 <= after < len(self._goals) and self._goals[after].priority == goal.priority:
            row = after + 1
        self.beginInsertRows(QModelIndex(), row, row)
        self._goals.insert(row, goal)
        self.endInsertRows()
        self.goalsEdited.emit(self.goals())
        return row

    def remove_goals(self, rows) -> None:
        rows = sorted({int(r) for r in rows if 0 <= int(r) < len(self._goals)}, reverse=True)
        if not rows:
            return
        for r in rows:
            self.beginRemoveRows(QModelIndex(), r, r)
            del self._goals[r]
            self.endRemoveRows()
        self.goalsEdited.emit(self.goals())

    def removeRows(self, row, count, parent=QModelIndex()) -> bool:  # noqa: N802
        if parent.isValid() or row < 0 or row + count > len(self._goals) or count <= 0:
            return False
        self.remove_goals(range(row, row + count))
        return True

    def move_goal(self, src: int, dst: int) -> int:
        """Drag-and-drop move: the goal of row ``src`` is inserted before row ``dst`` (rows
        counted before the move; ``len`` = at the end) and takes the priority of the row now
        above it (at the top: the first row's). Returns its new row."""
        n = len(self._goals)
        if not 0 <= src < n:
            return src
        dst = max(0, min(int(dst), n))
        new_row = dst if dst <= src else dst - 1
        rest = self._goals[:src] + self._goals[src + 1:]
        neighbour = rest[new_row - 1] if new_row > 0 else (rest[0] if rest else None)
        prio = neighbour.priority if neighbour is not None else self._goals[src].priority
        moved = replace(self._goals[src], priority=prio)
        if new_row != src:
            self.beginMoveRows(QModelIndex(), src, src, QModelIndex(), dst)
            del self._goals[src]
            self._goals.insert(new_row, moved)
            self.endMoveRows()
        elif moved == self._goals[src]:
            return src
        else:
            self._goals[src] = moved
        self.dataChanged.emit(self.index(new_row, 0), self.index(new_row, len(COLUMNS) - 1))
        self.goalsEdited.emit(self.goals())
        return new_row

    def _set_priority(self, row: int, prio: int) -> int:
        self._goals[row] = replace(self._goals[row], priority=prio)
        self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))
        self.goalsEdited.emit(self.goals())
        return row

    def move_up(self, row: int) -> int:
        """One step up: above a row of the same priority, or into the priority above when
        the goal is the first of its priority (P1 at the top stays). Returns the new row."""
        if not 0 <= row < len(self._goals):
            return row
        g = self._goals[row]
        if row == 0:
            return self._set_priority(row, g.priority - 1) if g.priority > 1 else row
        above = self._goals[row - 1]
        if above.priority != g.priority:
            return self._set_priority(row, above.priority)
        self.beginMoveRows(QModelIndex(), row, row, QModelIndex(), row - 1)
        self._goals[row - 1], self._goals[row] = g, above
        self.endMoveRows()
        self.goalsEdited.emit(self.goals())
        return row - 1

    def move_down(self, row: int) -> int:
        """One step down: below a row of the same priority, or into the priority below when
        the goal is the last of its priority (a new, lower priority at the bottom)."""
        if not 0 <= row < len(self._goals):
            return row
        g = self._goals[row]
        if row == len(self._goals) - 1:
            return self._set_priority(row, g.priority + 1)
        below = self._goals[row + 1]
        if below.priority != g.priority:
            return self._set_priority(row, below.priority)
        self.beginMoveRows(QModelIndex(), row, row, QModelIndex(), row + 2)
        self._goals[row], self._goals[row + 1] = below, g
        self.endMoveRows()
        self.goalsEdited.emit(self.goals())
        return row + 1

    # -- drag and drop --------------------------------------------------------------------------
    def supportedDropActions(self):  # noqa: N802
        return Qt.DropAction.MoveAction

    def supportedDragActions(self):  # noqa: N802
        return Qt.DropAction.MoveAction

    def mimeTypes(self):  # noqa: N802
        return [MIME_ROWS]

    def mimeData(self, indexes):  # noqa: N802
        rows = sorted({i.row() for i in indexes if i.isValid()})
        md = QMimeData()
        md.setData(MIME_ROWS, QByteArray(json.dumps(rows).encode()))
        return md

    def canDropMimeData(self, data, action, row, column, parent) -> bool:  # noqa: N802
        return action == Qt.DropAction.MoveAction and data.hasFormat(MIME_ROWS)

    def dropMimeData(self, data, action, row, column, parent) -> bool:  # noqa: N802
        if not self.canDropMimeData(data, action, row, column, parent):
            return False
        rows = json.loads(bytes(data.data(MIME_ROWS)).decode() or "[]")
        if len(rows) != 1:
            return False
        dst = row if row >= 0 else (parent.row() if parent.isValid() else len(self._goals))
        self.move_goal(rows[0], dst)
        # False: the move is done; the view must not also remove the source row.
        return False


class GoalDelegate(QStyledItemDelegate):
    """Editors per column: priority spin box, structure and kind combo boxes, a text field
    for the volume or dose level, spin boxes with the unit for value and tolerance."""

    def createEditor(self, parent, option, index):  # noqa: N802
        model = index.model()
        col = index.column()
        g = model.goal(index.row())
        if col == COL_PRIORITY:
            w = QSpinBox(parent)
            w.setRange(1, 99)
            w.setPrefix("P")
            return w
        if col == COL_STRUCTURE:
            w = QComboBox(parent)
            names = list(model.structure_names)
            if g.structure not in names:
                names.insert(0, g.structure)
            w.addItems(names)
            return w
        if col == COL_KIND:
            w = QComboBox(parent)
            for k in GoalKind:
                w.addItem(KIND_TEXT[k], k.value)
                w.setItemData(w.count() - 1, KIND_TIP[k], Qt.ItemDataRole.ToolTipRole)
            return w
        if col == COL_VALUE:
            w = QDoubleSpinBox(parent)
            w.setDecimals(2)
            # Wider than any sensible value on purpose: the goal dataclass refuses the
            # implausible ones with a message (e.g. 7000 "Gy" that was meant as cGy).
            w.setRange(0.0, 100000.0)
            w.setSuffix(f" {g.unit}")
            return w
        if col == COL_TOL:
            w = QDoubleSpinBox(parent)
            w.setDecimals(1)
            w.setRange(0.0, 99.0)
            w.setSuffix(" %")
            return w
        if col == COL_AT:
            w = QLineEdit(parent)
            w.setPlaceholderText("95 %, 0.03 cc or 50 Gy")
            return w
        return super().createEditor(parent, option, index)

    def setEditorData(self, editor, index):  # noqa: N802
        v = index.model().data(index, Qt.ItemDataRole.EditRole)
        if isinstance(editor, QComboBox):
            i = editor.findData(v) if editor.itemData(0) is not None else editor.findText(str(v))
            editor.setCurrentIndex(max(i, 0))
        elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
            editor.setValue(v if v is not None else 0)
        elif isinstance(editor, QLineEdit):
            editor.setText(str(v))
        else:
            super().setEditorData(editor, index)

    def setModelData(self, editor, model, index):  # noqa: N802
        if isinstance(editor, QComboBox):
            d = editor.currentData()
            model.setData(index, d if d is not None else editor.currentText())
        elif isinstance(editor, (QSpinBox, QDoubleSpinBox)):
            editor.interpretText()
            model.setData(index, editor.value())
        elif isinstance(editor, QLineEdit):
            model.setData(index, editor.text())
        else:
            super().setModelData(editor, model, index)


class GoalTable(QWidget):
    """The goal editor.

    Signals
    -------
    goals_changed(list)
        The planner changed the goal list (any edit, add, remove, reorder, file load): the
        new list of :class:`~core.goals.goal.ClinicalGoal`.
    templateRequested(str)
        The planner picked a site template (its key) to load; building the goals for the
        patient is the caller's job (it adds helper structures to the patient).
    saveTemplateRequested()
        The planner asked to save the list as an institution template.
    """

    goals_changed = Signal(list)
    templateRequested = Signal(str)
    saveTemplateRequested = Signal()

    def __init__(self, model: GoalTableModel | None = None, parent=None):
        super().__init__(parent)
        self.model = model if model is not None else GoalTableModel(parent=self)
        self._setup_ui()
        self.model.goalsEdited.connect(self._on_goals_edited)
        self.model.editRejected.connect(self._on_edit_rejected)
        self.model.modelReset.connect(self._update_summary)
        self.model.dataChanged.connect(lambda *_: self._update_summary())
        self._update_summary()

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        bar = QHBoxLayout()

        def button(role, tip, slot):
            b = QToolButton()
            b.setIcon(icon(role))
            b.setToolTip(tip)
            b.setAutoRaise(True)
            b.clicked.connect(slot)
            bar.addWidget(b)
            return b

        self.add_button = button("add", "Add a goal (after the selected one)", self._on_add)
        self.remove_button = button("remove", "Remove the selected goal (Delete)", self._on_remove)
        self.up_button = button("move_up", "Move up: higher priority", self._on_up)
        self.down_button = button("move_down", "Move down: lower priority", self._on_down)
        bar.addSpacing(8)
        self.template_button = QToolButton()
        self.template_button.setText("Load template…")
        self.template_button.setIcon(icon("template"))
        self.template_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.template_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.template_button.setAutoRaise(True)
        self.template_menu = QMenu(self.template_button)
        self.template_menu.aboutToShow.connect(self._fill_template_menu)
        self.template_button.setMenu(self.template_menu)
        bar.addWidget(self.template_button)
        self.save_button = QToolButton()
        self.save_button.setText("Save as institution template…")
        self.save_button.setIcon(icon("save"))
        self.save_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.save_button.setAutoRaise(True)
        self.save_button.clicked.connect(self.saveTemplateRequested)
        bar.addWidget(self.save_button)
        bar.addStretch(1)
        lay.addLayout(bar)

        self.view = QTableView()
        self.view.setModel(self.model)
        self.view.setItemDelegate(GoalDelegate(self.view))
        self.view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.view.setDragEnabled(True)
        self.view.setAcceptDrops(True)
        self.view.setDropIndicatorShown(True)
        self.view.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.view.setDragDropOverwriteMode(False)
        self.view.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.view.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                  | QAbstractItemView.EditTrigger.EditKeyPressed
                                  | QAbstractItemView.EditTrigger.AnyKeyPressed)
        self.view.verticalHeader().setVisible(False)
        self.view.verticalHeader().setDefaultSectionSize(22)
        self.view.setAlternatingRowColors(True)
        header = self.view.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        for col, width in ((COL_PRIORITY, 52), (COL_STRUCTURE, 130), (COL_KIND, 90), (COL_AT, 70), (COL_VALUE, 80),
                           (COL_TOL, 52), (COL_PREDICTED, 84), (COL_ACHIEVED, 84)):
            self.view.setColumnWidth(col, width)
        lay.addWidget(self.view, 1)
        self._delete = QShortcut(QKeySequence(QKeySequence.StandardKey.Delete), self.view)
        self._delete.setContext(Qt.ShortcutContext.WidgetShortcut)
        self._delete.activated.connect(self._on_remove)

        self.summary = QLabel()
        self.summary.setObjectName("goalSummary")
        self.message = QLabel()
        self.message.setObjectName("goalMessage")
        self.message.setStyleSheet(f"color: {UNMET_COLOR};")
        self.message.setWordWrap(True)
        self.message.hide()
        lay.addWidget(self.message)
        lay.addWidget(self.summary)

    # -- public ---------------------------------------------------------------------------------
    def set_goals(self, goals, optimized: bool = False) -> None:
        """Show ``goals`` (no ``goals_changed``); see :meth:`GoalTableModel.set_goals`."""
        self.model.set_goals(goals, optimized)
        self.message.hide()

    def goals(self) -> list:
        return self.model.goals()

    def set_structures(self, names) -> None:
        self.model.set_structures(names)

    def set_values(self, achieved: dict | None = None, predicted: dict | None = None) -> None:
        self.model.set_values(achieved, predicted)
        self._update_summary()

    def mark_optimized(self, goals=None) -> None:
        """Clear the changed marks: the shown plan was optimized with ``goals`` (default: these)."""
        self.model.mark_optimized(goals)
        self._update_summary()

    def selected_row(self) -> int | None:
        rows = self.view.selectionModel().selectedRows()
        return rows[0].row() if rows else None

    def select_row(self, row: int) -> None:
        if 0 <= row < self.model.rowCount():
            self.view.selectRow(row)

    # -- slots ----------------------------------------------------------------------------------
    def _on_add(self) -> None:
        try:
            row = self.model.add_goal(after=self.selected_row())
        except OpenATPError as exc:
            self._on_edit_rejected(exc.message)
            return
        self.select_row(row)

    def _on_remove(self) -> None:
        row = self.selected_row()
        if row is not None:
            self.model.remove_goals([row])
            self.select_row(min(row, self.model.rowCount() - 1))

    def _on_up(self) -> None:
        row = self.selected_row()
        if row is not None:
            self.select_row(self.model.move_up(row))

    def _on_down(self) -> None:
        row = self.selected_row()
        if row is not None:
            self.select_row(self.model.move_down(row))

    def _fill_template_menu(self) -> None:
        from core.goals.templates import available_templates, user_protocol_dir

        self.template_menu.clear()
        try:
            templates = available_templates()
        except OpenATPError as exc:  # one broken user file must not hide the others' reason
            self._on_edit_rejected(f"protocol templates cannot be read: {exc}")
            templates = {}
        user = str(user_protocol_dir())
        for key, t in sorted(templates.items()):
            where = " (institution)" if str(t.path).startswith(user) else ""
            a = self.template_menu.addAction(f"{t.title} [{key}]{where}")
            a.setData(key)
            a.triggered.connect(lambda _c=False, k=key: self.templateRequested.emit(k))
        self.template_menu.addSeparator()
        a = self.template_menu.addAction("Goals file (.json)…")
        a.triggered.connect(self._open_goals_file)

    def _open_goals_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open goals", "", "Goals (*.json);;All files (*)")
        if path:
            self.load_goals_file(path)

    def load_goals_file(self, path) -> bool:
        """Replace the list by a GOALS file (``docs/cli.md``); a bad file is refused with its reason."""
        from core.goals.goal import load_goals

        try:
            goals = load_goals(path)
        except OpenATPError as exc:
            self._on_edit_rejected(str(exc))
            return False
        missing = sorted({g.structure for g in goals} - set(self.model.structure_names))
        if self.model.structure_names and missing:
            self._on_edit_rejected(f"{path}: goals name structures the patient does not have: {', '.join(missing)}")
            return False
        self.model.set_goals(goals)
        self._on_goals_edited(self.model.goals())
        return True

    def _on_goals_edited(self, goals: list) -> None:
        self.message.hide()
        self._update_summary()
        self.goals_changed.emit(goals)

    def _on_edit_rejected(self, text: str) -> None:
        self.message.setText(text)
        self.message.setToolTip(text)
        self.message.show()

    def _update_summary(self) -> None:
        m = self.model
        n = m.rowCount()
        changed, removed = len(m.changed_rows()), m.removed_count()
        evaluated = [m.met(r) for r in range(n) if m.met(r) is not None]
        parts = [f"{n} goal{'s' if n != 1 else ''}"]
        if evaluated:
            parts.append(f"{sum(evaluated)}/{len(evaluated)} met")
        if changed or removed:
            what = [f"{changed} changed"] if changed else []
            if removed:
                what.append(f"{removed} removed")
            parts.append(" ● " + ", ".join(what) + " since the last optimization: re-optimize to apply")
        self.summary.setText("  ·  ".join(parts))
