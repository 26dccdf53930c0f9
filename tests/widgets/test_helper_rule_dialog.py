"""The helper-rule dialog: each kind builds the rule its fields describe; the rule's own
validation (and the caller's check) is shown in the dialog, which stays open."""

import pytest
from PySide6.QtCore import Qt

import widgets  # noqa: F401  (PySide6 reference-count work-around before any Qt use)
from core import helper_structures as hs
from core.errors import InputError
from widgets.helper_rule_dialog import HelperRuleDialog

ROLES = {"BODY": "EXTERNAL", "PTV70": "TARGET", "PTV56": "TARGET", "SpinalCord": "OAR", "Parotid_L": "OAR",
         "Mandible": "OAR"}


@pytest.fixture
def dialog(qtbot):
    dlg = HelperRuleDialog(ROLES, has_dose=True)
    qtbot.addWidget(dlg)
    dlg.show()
    qtbot.waitExposed(dlg)
    return dlg


def _accept(qtbot, dlg):
    got = []
    dlg.ruleAccepted.connect(got.append)
    qtbot.mouseClick(dlg.ok_button, Qt.MouseButton.LeftButton)
    return got


def test_margin(qtbot, dialog):
    d = dialog
    d.set_kind("margin")
    d.margin_source.setCurrentText("SpinalCord")
    d.margin_mm.setValue(3.0)
    assert d.name_edit.text() == "SpinalCord_exp3mm"   # suggested from the choices
    got = _accept(qtbot, d)
    assert got == [hs.MarginRule("SpinalCord_exp3mm", source="SpinalCord", margin_mm=3.0)]
    assert d.rule() == got[0] and d.result() == d.DialogCode.Accepted


def test_boolean_subtract_keeps_the_order(qtbot, dialog):
    d = dialog
    d.set_kind(hs.RuleKind.BOOLEAN)
    d.bool_op.setCurrentIndex(d.bool_op.findData("subtract"))
    d.bool_first.setCurrentText("PTV70")
    d.bool_others.set_checked(["SpinalCord", "Mandible"])
    d.name_edit.setText("PTV70_cut")
    (rule,) = _accept(qtbot, d)
    assert isinstance(rule, hs.BooleanRule) and rule.op is hs.BooleanOp.SUBTRACT
    assert rule.sources == ("PTV70", "SpinalCord", "Mandible") and rule.name == "PTV70_cut"


def test_ring_defaults_and_targets_first(qtbot, dialog):
    d = dialog
    d.set_kind("ring")
    assert d.ring_target.currentText() == "PTV70"          # a target is offered first
    assert d.ring_target.findText("BODY") == -1            # the body is no ring source
    (rule,) = _accept(qtbot, d)
    assert rule == hs.RingRule("Ring_PTV70_5_15mm", target="PTV70", inner_mm=5.0, outer_mm=15.0)


def test_oar_minus_ptv_and_ptv_minus_oar(qtbot, dialog):
    d = dialog
    d.set_kind("oar_minus_ptv")
    assert d.oar_organ.currentText() == "SpinalCord"       # organs first
    assert d.oar_ptvs.checked() == ("PTV70", "PTV56")       # every target by default
    d.oar_margin.setValue(5.0)
    (rule,) = _accept(qtbot, d)
    assert rule == hs.OarMinusPtvRule("SpinalCord-PTV", oar="SpinalCord", ptvs=("PTV70", "PTV56"), margin_mm=5.0)

    d2 = HelperRuleDialog(ROLES, has_dose=True, kind="ptv_minus_oar")
    qtbot.addWidget(d2)
    d2.ptv_target.setCurrentText("PTV56")
    d2.ptv_oars.set_checked(["Parotid_L"])
    (rule,) = _accept(qtbot, d2)
    assert rule == hs.PtvMinusOarRule("PTV56_OPT", ptv="PTV56", oars=("Parotid_L",), margin_mm=3.0)


def test_hot_and_cold_patches(qtbot, dialog):
    d = dialog
    d.set_kind("hot_patch")
    d.hot_threshold.setValue(90.0)
    d.hot_margin.setValue(5.0)
    d.hot_region.setCurrentIndex(d.hot_region.findData("Mandible"))
    (rule,) = _accept(qtbot, d)
    assert rule == hs.HotPatchRule("Patch_hot", threshold_pct=90.0, region="Mandible", target_margin_mm=5.0,
                                   min_volume_cc=0.1)
    assert rule.prescription_gy is None                      # 0 Gy = the patient's prescription

    d2 = HelperRuleDialog(dict(ROLES, Patch_hot="HELPER"), has_dose=True, kind="cold_patch")
    qtbot.addWidget(d2)
    d2.cold_target.setCurrentText("PTV56")
    d2.cold_rx.setValue(56.0)
    (rule,) = _accept(qtbot, d2)
    assert rule == hs.ColdPatchRule("Patch_cold_PTV56", target="PTV56", threshold_pct=95.0, prescription_gy=56.0,
                                    min_volume_cc=0.1)
    d3 = HelperRuleDialog(dict(ROLES, Patch_hot="HELPER"), has_dose=True, kind="hot_patch")
    qtbot.addWidget(d3)
    assert d3.name_edit.text() == "Patch_hot_2"             # the name in use is not offered again


def test_dose_patches_need_a_dose(qtbot):
    d = HelperRuleDialog(ROLES, has_dose=False, kind="hot_patch")
    qtbot.addWidget(d)
    assert d.kind() is hs.RuleKind.RING                      # no dose: falls back
    i = d.kind_box.findData("hot_patch")
    assert not d.kind_box.model().item(i).isEnabled()


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d.set_kind("ring"), d.ring_inner.setValue(20.0), d.ring_outer.setValue(10.0)), "inner_mm < outer_mm"),
    (lambda d: (d.set_kind("boolean"), d.bool_others.set_checked([])), "at least 2"),
    (lambda d: (d.set_kind("ring"), d.name_edit.setText("  ")), "needs a name"),
    (lambda d: (d.set_kind("ptv_minus_oar"),), "at least 1"),
    (lambda d: (d.set_kind("hot_patch"), d.hot_threshold.setValue(0.0)), "0 ... 200"),
])
def test_invalid_input_is_shown_and_the_dialog_stays_open(qtbot, dialog, setup, message):
    d = dialog
    setup(d)
    got = _accept(qtbot, d)
    assert got == [] and d.rule() is None
    assert d.isVisible() and d.result() != d.DialogCode.Accepted
    assert message in d.error_label.text(), d.error_label.text()
    # fixed: accepted, the message goes
    d.set_kind("margin")
    assert d.error_label.text() == ""
    assert len(_accept(qtbot, d)) == 1 and not d.isVisible()


def test_the_callers_check_is_shown_too(qtbot):
    def check(rule):
        if rule.name == "Ring_PTV70_5_15mm":
            raise InputError(f"a structure named '{rule.name}' already exists: choose another name")

    d = HelperRuleDialog(ROLES, check=check)
    qtbot.addWidget(d)
    d.show()
    assert _accept(qtbot, d) == [] and "already exists" in d.error_label.text() and d.isVisible()
    d.name_edit.setText("Ring_mine")
    d.name_edit.textEdited.emit("Ring_mine")
    d.ring_outer.setValue(20.0)                               # a typed name is not overwritten
    assert d.name_edit.text() == "Ring_mine"
    (rule,) = _accept(qtbot, d)
    assert rule.name == "Ring_mine" and rule.outer_mm == 20.0
