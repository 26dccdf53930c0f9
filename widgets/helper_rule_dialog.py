"""A dialog that makes a helper structure from a rule (:mod:`core.helper_structures`).

The planner picks what to make (margin, boolean, ring, OAR minus PTV, PTV minus OAR, hot
or cold patch from the plan's dose), names it, chooses its source structures from the
patient's and sets the rule's parameters (mm, %, region, minimum volume). Accepting
builds the rule object: its own validation (a ring whose inner margin is not below the
outer one, a boolean of one structure, an empty name ...) raises
:class:`~core.errors.InputError`, whose message is shown in the dialog, which stays open.
An optional ``check`` callback (the caller's: name clash, empty source, no dose) is asked
the same way. The dialog builds nothing: :meth:`HelperRuleDialog.rule` is the result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout,
                               QLabel, QLineEdit, QListWidget, QListWidgetItem, QStackedWidget, QVBoxLayout,
                               QWidget)

from core import helper_structures as hs
from core.errors import InputError

#: The kinds offered, in menu order, with the text the planner reads.
KIND_TEXT = {
    hs.RuleKind.MARGIN: "Margin: grow or shrink a structure",
    hs.RuleKind.BOOLEAN: "Boolean: union, intersection or subtraction",
    hs.RuleKind.RING: "Ring around a target",
    hs.RuleKind.OAR_MINUS_PTV: "OAR minus PTV",
    hs.RuleKind.PTV_MINUS_OAR: "PTV minus OAR (PTV OPT)",
    hs.RuleKind.HOT_PATCH: "Hot patch from the plan dose",
    hs.RuleKind.COLD_PATCH: "Cold patch in a target from the plan dose",
}

_OP_TEXT = {hs.BooleanOp.UNION: "Union (A or B ...)", hs.BooleanOp.INTERSECTION: "Intersection (A and B ...)",
            hs.BooleanOp.SUBTRACT: "Subtract (A minus B ...)"}
_OP_JOIN = {hs.BooleanOp.UNION: "_or_", hs.BooleanOp.INTERSECTION: "_and_", hs.BooleanOp.SUBTRACT: "_minus_"}


def _spin(value: float, lo: float, hi: float, suffix: str, decimals: int = 1, step: float = 1.0,
          tip: str = "") -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(decimals)
    s.setSingleStep(step)
    s.setValue(value)
    s.setSuffix(suffix)
    s.setKeyboardTracking(False)
    if tip:
        s.setToolTip(tip)
    return s


class _CheckList(QListWidget):
    """Structure names with a check box each (the sources of a rule that takes several)."""

    def __init__(self, names: Sequence[str], checked: Sequence[str] = (), parent=None):
        super().__init__(parent)
        for n in names:
            it = QListWidgetItem(n)
            it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            it.setCheckState(Qt.CheckState.Checked if n in checked else Qt.CheckState.Unchecked)
            self.addItem(it)
        self.setMaximumHeight(120)

    def checked(self) -> tuple:
        return tuple(self.item(i).text() for i in range(self.count())
                     if self.item(i).checkState() == Qt.CheckState.Checked)

    def set_checked(self, names) -> None:
        names = set(names)
        for i in range(self.count()):
            it = self.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in names else Qt.CheckState.Unchecked)


class HelperRuleDialog(QDialog):
    """Kind, name, sources and parameters of a helper-structure rule.

    Parameters
    ----------
    structures : mapping of name -> role, or sequence of names
        The patient's structures (roles ``TARGET``, ``OAR``, ``EXTERNAL``, ``HELPER``
        order the choices: targets first where a target is asked for, organs where an
        organ is).
    has_dose : bool
        A plan dose is there: the hot and cold patch kinds are offered only then.
    kind : RuleKind or str, optional
        The kind chosen when the dialog opens.
    check : callable(rule), optional
        Asked before accepting; an InputError it raises is shown and the dialog stays open.

    Signals
    -------
    ruleAccepted(object)
        The planner accepted: the :class:`core.helper_structures.HelperRule` built.
    """

    ruleAccepted = Signal(object)

    def __init__(self, structures: Mapping[str, str] | Sequence[str], *, has_dose: bool = False,
                 kind: hs.RuleKind | str | None = None, check: Callable | None = None, parent=None):
        super().__init__(parent)
        if isinstance(structures, Mapping):
            self.roles = {str(k): str(getattr(v, "value", v)).upper() for k, v in structures.items()}
        else:
            self.roles = {str(n): "" for n in structures}
        self.has_dose = bool(has_dose)
        self.check = check
        self._rule: hs.HelperRule | None = None
        self._name_touched = False
        self._setup_ui()
        self.set_kind(kind if kind is not None else hs.RuleKind.RING)

    # -- names by role ----------------------------------------------------------------------
    def _names(self, first_roles=(), skip_roles=("EXTERNAL",)) -> list[str]:
        names = [n for n, r in self.roles.items() if r not in skip_roles]
        return sorted(names, key=lambda n: (self.roles[n] not in first_roles, list(self.roles).index(n)))

    def _with_role(self, role: str) -> list[str]:
        return [n for n, r in self.roles.items() if r == role]

    def _combo(self, names) -> QComboBox:
        c = QComboBox()
        c.addItems(list(names))
        c.currentIndexChanged.connect(self._suggest_name)
        return c

    # -- UI ------------------------------------------------------------------------------------
    def _setup_ui(self) -> None:
        self.setWindowTitle("Helper structure from a rule")
        lay = QVBoxLayout(self)
        top = QFormLayout()
        self.kind_box = QComboBox()
        for k, text in KIND_TEXT.items():
            self.kind_box.addItem(text, k.value)
            if k in (hs.RuleKind.HOT_PATCH, hs.RuleKind.COLD_PATCH) and not self.has_dose:
                item = self.kind_box.model().item(self.kind_box.count() - 1)
                item.setEnabled(False)
                item.setToolTip("needs a plan dose: optimize (or open a dose) first")
        top.addRow("Make", self.kind_box)
        self.name_edit = QLineEdit()
        self.name_edit.textEdited.connect(self._on_name_edited)
        top.addRow("Name", self.name_edit)
        lay.addLayout(top)

        self.pages = QStackedWidget()
        self._page_of: dict = {}
        for kind, build in ((hs.RuleKind.MARGIN, self._margin_page), (hs.RuleKind.BOOLEAN, self._boolean_page),
                            (hs.RuleKind.RING, self._ring_page), (hs.RuleKind.OAR_MINUS_PTV, self._oar_page),
                            (hs.RuleKind.PTV_MINUS_OAR, self._ptv_page), (hs.RuleKind.HOT_PATCH, self._hot_page),
                            (hs.RuleKind.COLD_PATCH, self._cold_page)):
            page = QWidget()
            form = QFormLayout(page)
            build(form)
            self._page_of[kind] = self.pages.addWidget(page)
        lay.addWidget(self.pages)

        self.error_label = QLabel("")
        self.error_label.setObjectName("error")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #e05050;")
        lay.addWidget(self.error_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        lay.addWidget(buttons)
        self.kind_box.currentIndexChanged.connect(self._on_kind)
        for spin in self.findChildren(QDoubleSpinBox):
            spin.valueChanged.connect(self._suggest_name)
        for box in self.findChildren(QCheckBox):
            box.toggled.connect(self._suggest_name)

    def _margin_page(self, form: QFormLayout) -> None:
        self.margin_source = self._combo(self._names(("TARGET",)))
        form.addRow("Structure", self.margin_source)
        self.margin_mm = _spin(5.0, 0.0, 100.0, " mm", tip="Isotropic margin")
        form.addRow("Margin", self.margin_mm)
        self.margin_shrink = QCheckBox("Shrink instead of grow")
        form.addRow("", self.margin_shrink)
        self.margin_crop = QCheckBox("Crop to the body")
        self.margin_crop.setChecked(True)
        form.addRow("", self.margin_crop)

    def _boolean_page(self, form: QFormLayout) -> None:
        self.bool_op = QComboBox()
        for op, text in _OP_TEXT.items():
            self.bool_op.addItem(text, op.value)
        self.bool_op.currentIndexChanged.connect(self._suggest_name)
        form.addRow("Operation", self.bool_op)
        names = self._names(("TARGET",))
        self.bool_first = self._combo(names)
        form.addRow("A", self.bool_first)
        self.bool_others = _CheckList(names)
        self.bool_others.itemChanged.connect(self._suggest_name)
        form.addRow("B ...", self.bool_others)
        self.bool_crop = QCheckBox("Crop to the body")
        self.bool_crop.setChecked(True)
        form.addRow("", self.bool_crop)

    def _ring_page(self, form: QFormLayout) -> None:
        self.ring_target = self._combo(self._names(("TARGET",)))
        form.addRow("Target", self.ring_target)
        self.ring_inner = _spin(5.0, 0.0, 100.0, " mm", tip="Gap between the target surface and the ring")
        form.addRow("Inner margin", self.ring_inner)
        self.ring_outer = _spin(15.0, 0.0, 200.0, " mm", tip="Outer edge of the ring from the target surface")
        form.addRow("Outer margin", self.ring_outer)
        self.ring_exclude = QCheckBox("Leave out every target")
        self.ring_exclude.setChecked(True)
        form.addRow("", self.ring_exclude)

    def _oar_page(self, form: QFormLayout) -> None:
        self.oar_organ = self._combo(self._names(("OAR",)))
        form.addRow("Organ", self.oar_organ)
        self.oar_ptvs = _CheckList(self._names(("TARGET",)), checked=self._with_role("TARGET"))
        self.oar_ptvs.itemChanged.connect(self._suggest_name)
        form.addRow("minus", self.oar_ptvs)
        self.oar_margin = _spin(3.0, 0.0, 50.0, " mm", tip="The PTVs are grown by this before subtracting")
        form.addRow("PTV margin", self.oar_margin)

    def _ptv_page(self, form: QFormLayout) -> None:
        self.ptv_target = self._combo(self._names(("TARGET",)))
        form.addRow("PTV", self.ptv_target)
        self.ptv_oars = _CheckList(self._names(("OAR",)))
        self.ptv_oars.itemChanged.connect(self._suggest_name)
        form.addRow("minus", self.ptv_oars)
        self.ptv_margin = _spin(3.0, 0.0, 50.0, " mm", tip="The organs are grown by this before subtracting")
        form.addRow("Organ margin", self.ptv_margin)

    def _hot_page(self, form: QFormLayout) -> None:
        self.hot_threshold = _spin(95.0, 0.0, 200.0, " % of Rx",
                                   tip="Voxels receiving at least this much of the prescription")
        form.addRow("Threshold", self.hot_threshold)
        self.hot_margin = _spin(10.0, 0.0, 50.0, " mm",
                                tip="Stay this far outside the targets (the fall-off next to a PTV is no hot spot)")
        form.addRow("Outside targets by", self.hot_margin)
        self.hot_min_cc = _spin(0.1, 0.0, 1000.0, " cc", decimals=2, step=0.1,
                                tip="Connected parts smaller than this are left out (single hot voxels are noise)")
        form.addRow("Smallest part", self.hot_min_cc)
        self.hot_region = QComboBox()
        self.hot_region.addItem("(anywhere in the body)", None)
        for n in self._names(("OAR",)):
            self.hot_region.addItem(n, n)
        form.addRow("Only inside", self.hot_region)
        self.hot_rx = _spin(0.0, 0.0, 200.0, " Gy", decimals=2,
                            tip="100 % of the threshold; 0 = the patient's highest prescription")
        self.hot_rx.setSpecialValueText("highest prescription")
        form.addRow("Prescription", self.hot_rx)

    def _cold_page(self, form: QFormLayout) -> None:
        self.cold_target = self._combo(self._names(("TARGET",)))
        form.addRow("Target", self.cold_target)
        self.cold_threshold = _spin(95.0, 0.0, 200.0, " % of Rx",
                                    tip="Target voxels receiving less than this much of their prescription")
        form.addRow("Threshold", self.cold_threshold)
        self.cold_min_cc = _spin(0.1, 0.0, 1000.0, " cc", decimals=2, step=0.1,
                                 tip="Connected parts smaller than this are left out")
        form.addRow("Smallest part", self.cold_min_cc)
        self.cold_rx = _spin(0.0, 0.0, 200.0, " Gy", decimals=2,
                             tip="100 % of the threshold; 0 = the target's own prescription")
        self.cold_rx.setSpecialValueText("the target's prescription")
        form.addRow("Prescription", self.cold_rx)

    # -- kind and name ---------------------------------------------------------------------------
    def kind(self) -> hs.RuleKind:
        return hs.RuleKind(self.kind_box.currentData())

    def set_kind(self, kind: hs.RuleKind | str) -> None:
        """Choose what to make (a dose patch without a dose falls back to a ring)."""
        kind = hs.RuleKind(getattr(kind, "value", kind))
        if kind in (hs.RuleKind.HOT_PATCH, hs.RuleKind.COLD_PATCH) and not self.has_dose:
            kind = hs.RuleKind.RING
        self.kind_box.setCurrentIndex(self.kind_box.findData(kind.value))
        self._on_kind()

    def _on_kind(self, *_args) -> None:
        self.pages.setCurrentIndex(self._page_of[self.kind()])
        self.error_label.setText("")
        self._suggest_name()

    def _on_name_edited(self, text: str) -> None:
        self._name_touched = bool(text.strip())

    def suggested_name(self) -> str:
        """What the current choices would be called (unique among the patient's structures)."""
        k = self.kind()
        if k is hs.RuleKind.MARGIN:
            base = f"{self.margin_source.currentText()}_{'shrink' if self.margin_shrink.isChecked() else 'exp'}" \
                   f"{self.margin_mm.value():g}mm"
        elif k is hs.RuleKind.BOOLEAN:
            op = hs.BooleanOp(self.bool_op.currentData())
            base = _OP_JOIN[op].join((self.bool_first.currentText(),) + self.bool_others.checked())
        elif k is hs.RuleKind.RING:
            base = f"Ring_{self.ring_target.currentText()}_{self.ring_inner.value():g}_{self.ring_outer.value():g}mm"
        elif k is hs.RuleKind.OAR_MINUS_PTV:
            base = f"{self.oar_organ.currentText()}-PTV"
        elif k is hs.RuleKind.PTV_MINUS_OAR:
            base = f"{self.ptv_target.currentText()}_OPT"
        elif k is hs.RuleKind.HOT_PATCH:
            base = "Patch_hot"
        else:
            base = f"Patch_cold_{self.cold_target.currentText()}"
        name, i = base, 1
        while name in self.roles:
            i += 1
            name = f"{base}_{i}"
        return name

    def _suggest_name(self, *_args) -> None:
        if not self._name_touched and hasattr(self, "ok_button"):
            self.name_edit.setText(self.suggested_name())

    # -- the rule ------------------------------------------------------------------------------------
    def build_rule(self) -> hs.HelperRule:
        """The rule the current choices describe; raises InputError with the rule's own message."""
        k = self.kind()
        name = self.name_edit.text()
        if k is hs.RuleKind.MARGIN:
            return hs.MarginRule(name, source=self.margin_source.currentText(), margin_mm=self.margin_mm.value(),
                                 shrink=self.margin_shrink.isChecked(), crop_to_body=self.margin_crop.isChecked())
        if k is hs.RuleKind.BOOLEAN:
            return hs.BooleanRule(name, op=self.bool_op.currentData(),
                                  sources=(self.bool_first.currentText(),) + self.bool_others.checked(),
                                  crop_to_body=self.bool_crop.isChecked())
        if k is hs.RuleKind.RING:
            return hs.RingRule(name, target=self.ring_target.currentText(), inner_mm=self.ring_inner.value(),
                               outer_mm=self.ring_outer.value(), exclude_targets=self.ring_exclude.isChecked())
        if k is hs.RuleKind.OAR_MINUS_PTV:
            return hs.OarMinusPtvRule(name, oar=self.oar_organ.currentText(), ptvs=self.oar_ptvs.checked(),
                                      margin_mm=self.oar_margin.value())
        if k is hs.RuleKind.PTV_MINUS_OAR:
            return hs.PtvMinusOarRule(name, ptv=self.ptv_target.currentText(), oars=self.ptv_oars.checked(),
                                      margin_mm=self.ptv_margin.value())
        if k is hs.RuleKind.HOT_PATCH:
            return hs.HotPatchRule(name, threshold_pct=self.hot_threshold.value(),
                                   prescription_gy=self.hot_rx.value() or None, region=self.hot_region.currentData(),
                                   target_margin_mm=self.hot_margin.value(), min_volume_cc=self.hot_min_cc.value())
        return hs.ColdPatchRule(name, target=self.cold_target.currentText(), threshold_pct=self.cold_threshold.value(),
                                prescription_gy=self.cold_rx.value() or None, min_volume_cc=self.cold_min_cc.value())

    def rule(self) -> hs.HelperRule | None:
        """The accepted rule (None until the dialog was accepted)."""
        return self._rule

    def accept(self) -> None:
        try:
            rule = self.build_rule()
            if self.check is not None:
                self.check(rule)
        except InputError as exc:
            self.error_label.setText(str(exc))
            return
        self._rule = rule
        self.error_label.setText("")
        super().accept()
        self.ruleAccepted.emit(rule)


__all__ = ["HelperRuleDialog", "KIND_TEXT"]
