"""The reviewer's screen of a blinded study: "Plan A" and "Plan B" side by side.

Two CT viewers (:class:`widgets.ct_viewer.CtViewer`, one model each) with linked slices,
window/level and isodose settings; both use the same reference dose, so an isodose
level in % is the same Gy on both sides. Below: one DVH with both plans (each structure
in its own colour, A solid, B dashed), the goal table with identical formatting for A
and B, and the questionnaire.

Blinding: the panel shows only what it is given, which is a
:class:`core.review.case_data.ReviewCaseData` (handles "A"/"B", no file names, no
labels, no loader notes) plus the questionnaire. It never names a plan other than
"Plan A" and "Plan B".

Keyboard (whenever the window is active): ``1`` agree, ``2`` disagree, ``3`` cannot
judge (answers the current statement and moves on), ``Up``/``Down`` or
``Tab``/``Shift+Tab`` move between statements (the comment field is the last one),
``Enter`` or ``N`` next case, ``P`` previous case. In the comment field digits and
letters are typed as text; ``Tab`` leaves it, ``Enter`` moves on to the next case.
Mouse wheel scrolls the slices (of both plans).
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont, QKeySequence, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QButtonGroup, QFrame, QGridLayout, QGroupBox,
                               QHBoxLayout, QHeaderView, QLabel, QLineEdit, QProgressBar, QPushButton,
                               QSplitter, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from core.review.questionnaire import AGREE, CANNOT_JUDGE, DISAGREE
from widgets.ct_viewer import CtViewer
from widgets.dvh_panel import DvhCurve, DvhPlot
from widgets.viewer_model import StructureLayer, ViewerModel

HANDLES = ("A", "B")
#: (value, key, button text) of the three answers, in key order.
CHOICES = ((AGREE, "1", "Agree"), (DISAGREE, "2", "Disagree"), (CANNOT_JUDGE, "3", "Cannot judge"))
_MET_COLOR = {True: QColor(40, 170, 80), False: QColor(220, 60, 60)}
# The chosen answer must stand out at a glance in both themes; the current statement too.
_CHECKED_STYLE = ("QPushButton:checked { background-color: palette(highlight); color: palette(highlighted-text); "
                  "font-weight: bold; }")
_ROW_STYLE = {True: "QFrame#reviewQuestion { border: 2px solid palette(highlight); border-radius: 3px; }",
              False: "QFrame#reviewQuestion { border: 1px solid palette(mid); border-radius: 3px; }"}


def plan_name(handle: str) -> str:
    """The only name a plan ever has on this screen."""
    return f"Plan {handle}"


def format_goal_value(value, unit: str, met) -> str:
    """One goal-table cell, formatted the same for both plans: ``69.93 Gy ✓``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    mark = {True: "  ✓", False: "  ✗", None: ""}[met]
    return f"{value:.2f} {unit}{mark}"


class _QuestionRow(QFrame):
    """One statement with its three answer buttons."""

    def __init__(self, number: int, question, parent=None):
        super().__init__(parent)
        self.question = question
        self.setObjectName("reviewQuestion")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(6, 3, 6, 3)
        self.label = QLabel(f"{number}. {question.text}")
        self.label.setWordWrap(True)
        lay.addWidget(self.label, 1)
        self.group = QButtonGroup(self)
        self.group.setExclusive(True)
        self.buttons = {}
        for value, key, text in CHOICES:
            b = QPushButton(f"{key}  {text}")
            b.setCheckable(True)
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys belong to the panel, not a button
            b.setToolTip(f"{text} (key {key})")
            b.setStyleSheet(_CHECKED_STYLE)
            self.group.addButton(b)
            self.buttons[value] = b
            lay.addWidget(b)

    def set_value(self, value) -> None:
        self.group.setExclusive(False)  # an exclusive group cannot show "nothing chosen"
        for v, b in self.buttons.items():
            b.setChecked(v == value)
        self.group.setExclusive(True)

    def value(self):
        return next((v for v, b in self.buttons.items() if b.isChecked()), None)

    def set_current(self, current: bool) -> None:
        f = QFont(self.label.font())
        f.setBold(current)
        self.label.setFont(f)
        self.setStyleSheet(_ROW_STYLE[bool(current)])


class ReviewPanel(QWidget):
    """Side-by-side blinded review of one case and its questionnaire.

    Signals
    -------
    answerChosen(str, str)
        The reviewer chose an answer: question id and value (``agree``, ``disagree``,
        ``cannot_judge``). Save it, then call :meth:`set_answers` with what is stored.
    commentChanged(str, str)
        The comment (question id, text) was edited and left (focus out, Tab, Enter).
    nextRequested()
        Enter / N / the "Next case" button.
    previousRequested()
        P / the "Previous case" button.
    """

    answerChosen = Signal(str, str)
    commentChanged = Signal(str, str)
    nextRequested = Signal()
    previousRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.models = {h: ViewerModel(self) for h in HANDLES}
        self.viewers: dict[str, CtViewer] = {}
        self.questionnaire = None
        self.rows: list[_QuestionRow] = []
        self.comment_question = None
        self.current = 0  # index into the statements; len(rows) is the comment field
        self.case_id = None
        self._comment_shown = ""
        self._syncing = False
        self._setup_ui()
        self._link_models()
        self._setup_keys()

    # -- layout ------------------------------------------------------------------------
    def _setup_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        head = QHBoxLayout()
        self.progress_label = QLabel("No study open")
        self.progress_label.setObjectName("reviewProgress")
        f = QFont(self.progress_label.font())
        f.setPointSizeF(f.pointSizeF() * 1.25)
        f.setBold(True)
        self.progress_label.setFont(f)
        head.addWidget(self.progress_label)
        self.progress_bar = QProgressBar()
        self.progress_bar.setMinimumWidth(200)
        self.progress_bar.setMaximumWidth(280)
        self.progress_bar.setFormat("%v of %m cases answered")
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        head.addWidget(self.progress_bar)
        head.addStretch(1)
        self.message_label = QLabel("")
        self.message_label.setObjectName("reviewMessage")
        head.addWidget(self.message_label)
        outer.addLayout(head)

        split = QSplitter(Qt.Orientation.Vertical)
        views = QSplitter(Qt.Orientation.Horizontal)
        for h in HANDLES:
            box = QGroupBox(plan_name(h))
            box.setObjectName(f"reviewPlan{h}")
            lay = QVBoxLayout(box)
            lay.setContentsMargins(2, 2, 2, 2)
            v = CtViewer(self.models[h])
            self.viewers[h] = v
            lay.addWidget(v)
            views.addWidget(box)
        split.addWidget(views)

        bottom = QSplitter(Qt.Orientation.Horizontal)
        dvh_box = QGroupBox("DVH")
        dl = QVBoxLayout(dvh_box)
        dl.setContentsMargins(2, 2, 2, 2)
        self.dvh_legend = QLabel(f"{plan_name('A')}: solid line      {plan_name('B')}: dashed line")
        dl.addWidget(self.dvh_legend)
        self.dvh = DvhPlot()
        self.dvh.empty_text = "No dose"
        dl.addWidget(self.dvh, 1)
        bottom.addWidget(dvh_box)

        goal_box = QGroupBox("Goals")
        gl = QVBoxLayout(goal_box)
        gl.setContentsMargins(2, 2, 2, 2)
        self.goal_table = QTableWidget(0, 3)
        self.goal_table.setHorizontalHeaderLabels(["Goal", plan_name("A"), plan_name("B")])
        self.goal_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.goal_table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.goal_table.verticalHeader().setVisible(False)
        hh = self.goal_table.horizontalHeader()
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in (1, 2):
            hh.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        gl.addWidget(self.goal_table)
        self.goal_note = QLabel("")
        gl.addWidget(self.goal_note)
        bottom.addWidget(goal_box)

        self.question_box = QGroupBox("Questionnaire")
        self.question_layout = QVBoxLayout(self.question_box)
        self.question_layout.setContentsMargins(4, 4, 4, 4)
        self.rows_widget = QWidget()
        self.rows_layout = QVBoxLayout(self.rows_widget)
        self.rows_layout.setContentsMargins(0, 0, 0, 0)
        self.question_layout.addWidget(self.rows_widget)
        self.comment_label = QLabel("Comment")
        self.question_layout.addWidget(self.comment_label)
        self.comment_edit = QLineEdit()
        self.comment_edit.setObjectName("reviewComment")
        self.comment_edit.setPlaceholderText("optional free text; Tab leaves the field")
        self.comment_edit.editingFinished.connect(self._on_comment_finished)
        self.question_layout.addWidget(self.comment_edit)
        nav = QGridLayout()
        self.prev_button = QPushButton("◀  Previous case (P)")
        self.prev_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.prev_button.clicked.connect(self.previousRequested)
        self.next_button = QPushButton("Next case (N / Enter)  ▶")
        self.next_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.next_button.clicked.connect(self._request_next)
        nav.addWidget(self.prev_button, 0, 0)
        nav.addWidget(self.next_button, 0, 1)
        self.question_layout.addLayout(nav)
        self.key_help = QLabel("Keys: 1 agree · 2 disagree · 3 cannot judge · ↑/↓ or Tab: statement · "
                               "N or Enter: next case · P: previous case")
        self.key_help.setWordWrap(True)
        self.question_layout.addWidget(self.key_help)
        self.question_layout.addStretch(1)
        bottom.addWidget(self.question_box)
        bottom.setStretchFactor(0, 3)
        bottom.setStretchFactor(1, 2)
        bottom.setStretchFactor(2, 3)
        split.addWidget(bottom)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        outer.addWidget(split, 1)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def _setup_keys(self) -> None:
        def key(seq, fn):
            s = QShortcut(QKeySequence(seq), self)
            s.setContext(Qt.ShortcutContext.WindowShortcut)
            s.activated.connect(fn)
            return s

        self.shortcuts = []
        for value, k, _text in CHOICES:
            self.shortcuts.append(key(k, lambda v=value: self.answer_current(v)))
        for seq in ("Down", "Tab"):
            self.shortcuts.append(key(seq, lambda: self.move(1)))
        for seq in ("Up", "Shift+Tab", "Backtab"):
            self.shortcuts.append(key(seq, lambda: self.move(-1)))
        for seq in ("Return", "Enter", "N"):
            self.shortcuts.append(key(seq, self._request_next))
        self.shortcuts.append(key("P", self.previousRequested.emit))

    # -- linked views ----------------------------------------------------------------------
    def _link_models(self) -> None:
        a, b = self.models["A"], self.models["B"]
        for src, dst in ((a, b), (b, a)):
            src.cursorChanged.connect(lambda idx, d=dst: d.set_cursor(idx))
            src.windowLevelChanged.connect(lambda w, lv, d=dst: d.set_window_level(w, lv))
            src.doseChanged.connect(lambda s=src, d=dst: self._copy_dose_display(s, d))

    @staticmethod
    def _display_settings(m: ViewerModel) -> tuple:
        return (m.dose_mode, m.wash_opacity, m.isodose_levels, m.isodose_unit)

    def _copy_dose_display(self, src: ViewerModel, dst: ViewerModel) -> None:
        if self._syncing or self._display_settings(src) == self._display_settings(dst):
            return
        self._syncing = True
        try:
            dst.set_dose_display(mode=src.dose_mode, opacity=src.wash_opacity, levels=src.isodose_levels,
                                 unit=src.isodose_unit)
            for h, v in self.viewers.items():  # the level fields are not bound to the model
                if v.model is dst:
                    v.levels_edit.setText(", ".join(f"{x:g}" for x in dst.isodose_levels))
                    v.unit_box.blockSignals(True)
                    v.unit_box.setCurrentIndex(v.unit_box.findData(dst.isodose_unit))
                    v.unit_box.blockSignals(False)
                    v.opacity_slider.blockSignals(True)
                    v.opacity_slider.setValue(int(round(dst.wash_opacity * 100)))
                    v.opacity_slider.blockSignals(False)
        finally:
            self._syncing = False

    # -- questionnaire ---------------------------------------------------------------------
    def set_questionnaire(self, questionnaire) -> None:
        """Build the statement rows (every question except the free-text one)."""
        for r in self.rows:
            r.setParent(None)
            r.deleteLater()
        self.rows = []
        self.questionnaire = questionnaire
        self.comment_question = None
        self.question_box.setTitle(questionnaire.title or "Questionnaire")
        n = 0
        for q in questionnaire.questions:
            if q.kind == "text":
                if self.comment_question is None:
                    self.comment_question = q
                continue
            n += 1
            row = _QuestionRow(n, q)
            row.group.buttonClicked.connect(lambda btn, r=row: self._on_button(r, btn))
            self.rows_layout.addWidget(row)
            self.rows.append(row)
        has_comment = self.comment_question is not None
        self.comment_label.setVisible(has_comment)
        self.comment_edit.setVisible(has_comment)
        if has_comment:
            self.comment_label.setText(self.comment_question.text)
        self.set_current(0)

    def _on_button(self, row: _QuestionRow, button) -> None:
        value = next(v for v, b in row.buttons.items() if b is button)
        self.set_current(self.rows.index(row))
        self.answerChosen.emit(row.question.id, value)
        self._advance()

    def answer_current(self, value: str) -> None:
        """Answer the current statement (keys 1/2/3) and move to the next open one."""
        if not self.rows or self.case_id is None or self.current >= len(self.rows):
            return
        row = self.rows[self.current]
        row.set_value(value)
        self.answerChosen.emit(row.question.id, value)
        self._advance()

    def _advance(self) -> None:
        # next unanswered statement after the current one, else the one after it
        # the next unanswered statement (wrapping round); when all are answered stay put, so
        # that N / Enter is the next key (not text typed into the comment field)
        n = len(self.rows)
        for k in range(1, n + 1):
            i = (self.current + k) % n
            if self.rows[i].value() is None:
                self.set_current(i)
                return

    def move(self, step: int) -> None:
        """Up/Down/Tab: the previous or next statement (the comment field comes last)."""
        slots = len(self.rows) + (1 if self.comment_question is not None else 0)
        if slots == 0:
            return
        self.set_current((self.current + step) % slots)

    def set_current(self, index: int) -> None:
        self.current = index
        for i, r in enumerate(self.rows):
            r.set_current(i == index)
        if self.comment_question is not None and index == len(self.rows):
            self.comment_edit.setFocus(Qt.FocusReason.TabFocusReason)
        elif self.comment_edit.hasFocus():
            self.setFocus(Qt.FocusReason.OtherFocusReason)  # leaving the field saves it

    def set_answers(self, answers: dict) -> None:
        """Show the stored answers (after a save, or when a case opens)."""
        for r in self.rows:
            r.set_value(answers.get(r.question.id))
        if self.comment_question is not None and not self.comment_edit.hasFocus():
            self._comment_shown = str(answers.get(self.comment_question.id, "") or "")
            self.comment_edit.setText(self._comment_shown)

    def answers(self) -> dict:
        """What the panel shows: ``{question id: value}`` (comment included if not empty)."""
        out = {r.question.id: r.value() for r in self.rows if r.value() is not None}
        if self.comment_question is not None and self.comment_edit.text():
            out[self.comment_question.id] = self.comment_edit.text()
        return out

    def comment_text(self) -> str:
        return self.comment_edit.text()

    def _on_comment_finished(self) -> None:
        # editingFinished also fires when focus merely passes through the field
        if self.comment_question is None or self.case_id is None:
            return
        text = self.comment_edit.text()
        if text != self._comment_shown:
            self._comment_shown = text
            self.commentChanged.emit(self.comment_question.id, text)

    def _request_next(self) -> None:
        if self.comment_edit.hasFocus():
            self._on_comment_finished()
        self.nextRequested.emit()

    # -- case display ----------------------------------------------------------------------
    def leave_comment(self) -> None:
        """Take the focus out of the comment field; an edited comment is emitted
        (``commentChanged``) for the case it was typed on."""
        if self.comment_edit.hasFocus():
            self.setFocus(Qt.FocusReason.OtherFocusReason)

    def show_case(self, data) -> None:
        """Display one case (:class:`core.review.case_data.ReviewCaseData`)."""
        self.leave_comment()  # before the case changes: a comment belongs to the case it was typed on
        self.case_id = data.case_id
        patient = data.patient
        for h in HANDLES:
            m = self.models[h]
            hu = patient.ct.hu if patient is not None and patient.ct is not None else None
            m.set_volume(hu, data.grid)
            if patient is not None:
                layers = [StructureLayer(s.name, s.mask, tuple(s.color), s.name not in data.hidden_structures,
                                         s.role.value)
                          for s in patient.structures.values() if not s.is_empty and s.role.value != "HELPER"]
                m.set_structures(layers)
                try:
                    body = patient.external_mask()
                except Exception:  # noqa: BLE001 - no body outline: fit the whole grid
                    body = None
                m.set_focus_mask(body)
            m.set_dose(data.doses_gy[h], data.reference_gy, plan_name(h))
        self._show_dvh(data)
        self._show_goals(data)
        self.set_answers(data.answers)
        first_open = next((i for i, r in enumerate(self.rows) if r.value() is None), 0)
        self.set_current(first_open)
        self.setFocus(Qt.FocusReason.OtherFocusReason)
        self.message_label.setText("")
        self.setEnabled(True)

    def _show_dvh(self, data) -> None:
        curves, colors = [], {}
        hidden = set(data.hidden_structures)
        for h in HANDLES:
            for c in data.dvh[h]:
                if c.structure in hidden:
                    continue
                curves.append(DvhCurve(c.structure, plan_name(h), c.color, c.dose_gy, c.volume_pct))
                colors[c.structure] = c.color
        self.dvh.colors = colors
        self.dvh.set_curves(curves)

    def _show_goals(self, data) -> None:
        t = self.goal_table
        t.setRowCount(len(data.goals))
        for i, g in enumerate(data.goals):
            t.setItem(i, 0, QTableWidgetItem(g.label))
            for j, h in enumerate(HANDLES, start=1):
                met = g.met.get(h)
                item = QTableWidgetItem(format_goal_value(g.achieved.get(h), g.unit, met))
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if met in _MET_COLOR:
                    item.setForeground(_MET_COLOR[met])
                t.setItem(i, j, item)
        if data.goal_source.startswith("template"):
            self.goal_note.setText(f"Goals of the {data.goal_source.split(' ', 1)[1]} protocol template; "
                                   "✓ met, ✗ not met")
        elif data.goal_source == "endpoints":
            self.goal_note.setText("No protocol template matches these structures: dose endpoints shown")
        else:
            self.goal_note.setText("")

    def set_progress(self, position: int, n_cases: int, n_complete: int, case_id: str = "", site: str = "") -> None:
        """Header: ``Case k of n`` (1-based k), the case and the count of finished cases."""
        extra = "  ·  ".join(x for x in (case_id, site) if x)
        self.progress_label.setText(f"Case {position + 1} of {n_cases}" + (f"  ·  {extra}" if extra else ""))
        self.progress_bar.setRange(0, max(n_cases, 1))
        self.progress_bar.setValue(n_complete)

    def show_message(self, text: str) -> None:
        """A short note in the header (e.g. "answer every statement first")."""
        self.message_label.setText(text)

    def show_finished(self, n_cases: int) -> None:
        """Every case answered: say so; P still goes back to revise."""
        self.case_id = None
        self.progress_label.setText(f"All {n_cases} cases answered")
        self.progress_bar.setRange(0, max(n_cases, 1))
        self.progress_bar.setValue(n_cases)
        self.message_label.setText("Thank you. Your answers are saved; close the window, or press P to revise.")
        for r in self.rows:
            r.set_value(None)
            r.set_current(False)
        self._comment_shown = ""
        self.comment_edit.setText("")
        for m in self.models.values():
            m.set_dose(None)
        self.dvh.set_curves([])
        self.goal_table.setRowCount(0)

    def set_loading(self, text: str = "loading…") -> None:
        self.message_label.setText(text)
