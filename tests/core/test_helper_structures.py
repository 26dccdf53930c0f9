"""Helper structures from rules: analytic shapes, dose patches, regeneration, JSON, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core import helper_structures as hs
from core.errors import InputError
from core.geometry import Grid
from core.goals.goal import ClinicalGoal, GoalKind
from core.patient import Patient, Prescription, Structure, StructureRole

S = 2.0           # voxel size (mm): 40^3 voxels, 80 mm box, every rule runs in milliseconds
N = 40


def _radius() -> np.ndarray:
    c = (np.indices((N, N, N)).astype(float) - (N - 1) / 2) * S
    return np.sqrt((c ** 2).sum(0))


def _patient(ptv_r: float = 12.0, body_r: float | None = 38.0) -> Patient:
    """A sphere PTV of radius ``ptv_r`` mm in a spherical body (``body_r`` None: the whole box)."""
    r = _radius()
    p = Patient("helpers", Grid((N, N, N), (S, S, S), (0.0, 0.0, 0.0)))
    p.add_structure(Structure("BODY", r <= (body_r if body_r is not None else np.inf), StructureRole.EXTERNAL))
    p.add_structure(Structure("PTV", r <= ptv_r, StructureRole.TARGET))
    p.prescriptions.append(Prescription("PTV", 60.0, 30))
    return p


def _box(z, y, x) -> np.ndarray:
    m = np.zeros((N, N, N), bool)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = True
    return m


def _shell_cc(r_in: float, r_out: float) -> float:
    return 4.0 / 3.0 * np.pi * (r_out ** 3 - r_in ** 3)


# -- geometric rules on analytic shapes ---------------------------------------------------------
@pytest.mark.parametrize("radius, inner, outer", [(12.0, 0.0, 5.0), (12.0, 5.0, 15.0), (10.5, 2.0, 7.0)])
def test_ring_volume_matches_the_analytic_shell(radius, inner, outer):
    # Tolerance from the voxel size: each shell surface lies between its nominal radius and
    # 0.3 voxel beyond it (core.structures: curved surfaces come out up to ~0.3 voxel
    # farther out), and the digitised sphere itself is within ~0.1 voxel of radius R. So
    # V - V_analytic lies in [-0.1 s, +0.3 s] x (area of both surfaces). A ring off by one
    # voxel (s) on either surface falls outside.
    p = _patient(radius)
    s = hs.make_helper(p, hs.RingRule("Ring", "PTV", inner, outer))
    v = s.n_voxels() * S ** 3
    va = _shell_cc(radius + inner, radius + outer)
    area = 4 * np.pi * ((radius + outer) ** 2 + (radius + inner) ** 2)
    assert -0.1 * S * area <= v - va <= 0.3 * S * area, (v, va)
    assert not (s.mask & p.structures["PTV"].mask).any()
    assert s.role is StructureRole.HELPER and s.rule["kind"] == "ring" and "source_hash" in s.rule


def test_margin_grows_and_shrinks_a_sphere_by_its_radius():
    p = _patient(12.0)
    grown = hs.make_helper(p, hs.MarginRule("PTV+6", "PTV", 6.0)).n_voxels() * S ** 3
    shrunk = hs.make_helper(p, hs.MarginRule("PTV-4", "PTV", 4.0, shrink=True)).n_voxels() * S ** 3
    # the same surface argument as for rings: radius within [-0.1, +0.3] voxel of R +/- m
    for v, r in ((grown, 18.0), (shrunk, 8.0)):
        area = 4 * np.pi * r ** 2
        assert -0.3 * S * area <= v - 4 / 3 * np.pi * r ** 3 <= 0.3 * S * area, (v, r)


def test_margin_is_cropped_to_the_body():
    p = _patient(12.0)
    p.add_structure(Structure("Skin_OAR", _box((18, 22), (18, 22), (35, 40)), StructureRole.OAR))
    m = hs.make_helper(p, hs.MarginRule("OAR+10", "Skin_OAR", 10.0))
    assert not (m.mask & ~p.structures["BODY"].mask).any()
    uncropped = hs.build_mask(p, hs.MarginRule("x", "Skin_OAR", 10.0, crop_to_body=False))
    assert uncropped.sum() > m.n_voxels()


def test_booleans_on_boxes_are_exact():
    p = _patient(body_r=None)
    a, b = _box((5, 15), (5, 15), (5, 15)), _box((10, 20), (10, 20), (10, 20))
    p.add_structure(Structure("A", a, StructureRole.OAR))
    p.add_structure(Structure("B", b, StructureRole.OAR))
    union = hs.make_helper(p, hs.BooleanRule("AuB", "union", ("A", "B"))).n_voxels()
    inter = hs.make_helper(p, hs.BooleanRule("AnB", "intersection", ("A", "B"))).n_voxels()
    minus = hs.make_helper(p, hs.BooleanRule("A-B", "subtract", ("A", "B"))).n_voxels()
    assert (union, inter, minus) == (1000 + 1000 - 125, 125, 1000 - 125)


def test_oar_minus_ptv_removes_exactly_the_margin_slices():
    # An OAR box on top of a wider PTV box: the PTV grown by 4 mm (two voxels) covers exactly
    # two OAR slices, because the OAR sits well inside the PTV's face (faces move by exactly
    # the margin when it is a multiple of the voxel size; only edges are rounded).
    p = _patient(body_r=None)
    p.add_structure(Structure("PTV2", _box((10, 20), (5, 35), (5, 35)), StructureRole.TARGET))
    p.add_structure(Structure("OAR", _box((20, 30), (15, 25), (15, 25)), StructureRole.OAR))
    s = hs.make_helper(p, hs.OarMinusPtvRule("OAR-PTV", "OAR", ("PTV2",), 4.0))
    assert s.n_voxels() == 8 * 10 * 10
    assert not s.mask[20:22].any() and s.mask[22:30].any()
    opt = hs.make_helper(p, hs.PtvMinusOarRule("PTV2-OAR", "PTV2", ("OAR",), 0.0))
    assert opt.n_voxels() == 10 * 30 * 30  # touching boxes, no margin: nothing removed
    opt4 = hs.make_helper(p, hs.PtvMinusOarRule("PTV2-OAR", "PTV2", ("OAR",), 4.0))
    # The grown OAR is the box's Minkowski sum with a ball: every voxel centre within
    # m + s/2 = 5 mm of a box voxel centre (the surface lies half a voxel out). Its face
    # takes the two PTV slices under the box, its rounded edges the voxels around that
    # footprint whose centres are within 5 mm of the box: count them from the geometry.
    idx = np.indices((N, N, N))
    gap2 = sum((np.maximum(0, np.maximum(lo - idx[k], idx[k] - (hi - 1))) * S) ** 2
               for k, (lo, hi) in enumerate(((20, 30), (15, 25), (15, 25))))
    expected = p.structures["PTV2"].mask & ~(gap2 <= 5.0 ** 2 + 1e-9)
    assert np.array_equal(opt4.mask, expected)
    assert not opt4.mask[18:20, 15:25, 15:25].any() and opt4.mask[17, 15:25, 15:25].all()


# -- dose patches ---------------------------------------------------------------------------------
def _hot_dose() -> tuple[Patient, np.ndarray]:
    """60 Gy in the PTV, 20 Gy elsewhere, a 66 Gy cube far from the PTV and one hot voxel."""
    p = _patient(10.0)
    dose = np.full((N, N, N), 20.0, np.float32)
    dose[p.structures["PTV"].mask] = 60.0
    dose[5:9, 18:22, 18:22] = 66.0          # 64 voxels, 0.512 cc: a hot spot
    dose[30, 30, 10] = 70.0                 # a single hot voxel (0.008 cc): noise
    dose[20, 20, 26] = 58.0                 # just outside the PTV (r = 11 mm), within 2 mm of it
    return p, dose


def test_hot_patch_is_the_hot_voxels_outside_the_targets():
    p, dose = _hot_dose()
    s = hs.make_helper(p, hs.HotPatchRule("Hot", 90.0), dose)      # >= 54 Gy
    expected = (dose >= 54.0) & ~p.structures["PTV"].mask & p.structures["BODY"].mask
    assert np.array_equal(s.mask, expected) and s.n_voxels() == 64 + 1 + 1
    # a minimum part volume drops the single voxel; a target margin drops the voxel beside the PTV
    s2 = hs.build_mask(p, hs.HotPatchRule("Hot2", 90.0, min_volume_cc=0.1, target_margin_mm=4.0), dose)
    assert s2.sum() == 64 and s2[5:9, 18:22, 18:22].all()
    # inside a region only
    p.add_structure(Structure("Region", _box((25, 35), (25, 35), (5, 15)), StructureRole.OAR))
    s3 = hs.build_mask(p, hs.HotPatchRule("Hot3", 90.0, region="Region"), dose)
    assert s3.sum() == 1 and s3[30, 30, 10]
    assert s.color == hs.HOT_PATCH_COLOR and s.rule["threshold_pct"] == 90.0


def test_hot_patch_bad_input_names_the_problem():
    p, dose = _hot_dose()
    with pytest.raises(InputError, match=r"'Hot' is empty.*>= 120 %.*72.00 Gy.*dose max there 70.00 Gy"):
        hs.make_helper(p, hs.HotPatchRule("Hot", 120.0), dose)
    body = p.structures["BODY"].mask
    p.add_structure(Structure("Air", ~body & _box((0, 3), (0, 3), (0, 3)), StructureRole.HELPER))
    with pytest.raises(InputError, match="region 'Air' lies outside the body"):
        hs.make_helper(p, hs.HotPatchRule("Hot", 90.0, region="Air"), dose)
    with pytest.raises(InputError, match="made from a dose"):
        hs.make_helper(p, hs.HotPatchRule("Hot", 90.0))
    assert "Hot" not in p.structures  # nothing half-added


def test_cold_patch_is_the_target_voxels_below_the_level():
    p = _patient(10.0)
    ptv = p.structures["PTV"].mask
    dose = np.where(ptv, 60.0, 10.0).astype(np.float32)
    cold = ptv & (np.indices(ptv.shape)[0] >= 22)       # the top slices of the sphere get 52 Gy
    dose[cold] = 52.0
    s = hs.make_helper(p, hs.ColdPatchRule("Cold", "PTV", 95.0), dose)
    assert np.array_equal(s.mask, cold) and s.color == hs.COLD_PATCH_COLOR
    with pytest.raises(InputError, match="every voxel of 'PTV' receives >= 80 %"):
        hs.make_helper(p, hs.ColdPatchRule("Cold", "PTV", 80.0), dose)


# -- regeneration ---------------------------------------------------------------------------------
def test_regenerate_rebuilds_only_what_changed_in_dependency_order():
    p = _patient(10.0)
    p.add_structure(Structure("OAR", _box((22, 30), (15, 25), (15, 25)), StructureRole.OAR))
    grow = hs.MarginRule("PTV+4", "PTV", 4.0)
    ring = hs.RingRule("Ring", "PTV+4", 0.0, 6.0, exclude_targets=False)   # made from another helper
    opt = hs.OarMinusPtvRule("OAR-PTV", "OAR", ("PTV+4",))
    rep = hs.regenerate(p, [ring, opt, grow])                              # listed out of order
    assert set(rep.updated) == {"PTV+4", "Ring", "OAR-PTV"} and not rep.unchanged
    assert hs.regenerate(p, [ring, opt, grow]).unchanged == ("PTV+4", "Ring", "OAR-PTV")
    before = p.structures["Ring"].mask.copy()
    p.structures["PTV"].mask = _radius() <= 14.0                            # the target was edited
    rep = hs.regenerate(p, [ring, opt, grow])
    assert set(rep.updated) == {"PTV+4", "Ring", "OAR-PTV"}
    assert p.structures["Ring"].n_voxels() > before.sum()
    assert not (p.structures["OAR-PTV"].mask & p.structures["PTV+4"].mask).any()
    # an unrelated edit rebuilds nothing
    p.add_structure(Structure("Other", _box((0, 2), (0, 2), (0, 2)), StructureRole.OAR))
    assert not hs.regenerate(p, [ring, opt, grow]).updated


def test_regenerate_keeps_dose_patches_without_a_dose_and_is_all_or_nothing():
    p, dose = _hot_dose()
    hot = hs.HotPatchRule("Hot", 90.0, min_volume_cc=0.1)
    ring = hs.RingRule("Ring", "PTV", 2.0, 6.0)
    hs.regenerate(p, [hot, ring], dose)
    assert hs.regenerate(p, [hot, ring]).kept == ("Hot",)
    cooler = dose.copy()
    cooler[5:7] = 20.0
    assert "Hot" in hs.regenerate(p, [hot, ring], cooler).updated
    assert p.structures["Hot"].n_voxels() == 32
    # a failing rule leaves every structure as it was (the ring's source changed, but the
    # patch is now empty: nothing is committed)
    p.structures["PTV"].mask = _radius() <= 12.0
    ring_before = p.structures["Ring"].mask.copy()
    with pytest.raises(InputError, match="'Hot' is empty"):
        hs.regenerate(p, [ring, hot], np.full((N, N, N), 1.0, np.float32))
    assert np.array_equal(p.structures["Ring"].mask, ring_before)


def test_name_clashes_cycles_and_missing_sources():
    p = _patient()
    p.add_structure(Structure("Drawn", _box((0, 4), (0, 4), (0, 4)), StructureRole.HELPER))
    with pytest.raises(InputError, match="'Drawn' already exists and was not made by a rule"):
        hs.make_helper(p, hs.MarginRule("Drawn", "PTV", 2.0))
    hs.make_helper(p, hs.MarginRule("PTV+2", "PTV", 2.0))
    hs.make_helper(p, hs.MarginRule("PTV+2", "PTV", 4.0))                  # a rule-made one is replaced
    assert p.structures["PTV+2"].rule["margin_mm"] == 4.0
    with pytest.raises(InputError, match="cannot be made from itself"):
        hs.make_helper(p, hs.MarginRule("PTV", "PTV", 2.0))
    with pytest.raises(InputError, match="source structure 'Cord' does not exist"):
        hs.make_helper(p, hs.RingRule("R", "Cord", 0, 5))
    with pytest.raises(InputError, match="in a circle"):
        hs.regenerate(p, [hs.MarginRule("X", "Y", 1.0), hs.MarginRule("Y", "X", 1.0)])
    p.add_structure(Structure("Inside", _radius() <= 4.0, StructureRole.OAR))
    with pytest.raises(InputError, match="'Inside-PTV' is empty"):
        hs.make_helper(p, hs.OarMinusPtvRule("Inside-PTV", "Inside", ("PTV",)))
    with pytest.raises(InputError, match="inner_mm < outer_mm"):
        hs.RingRule("R", "PTV", 5, 5)


# -- JSON -------------------------------------------------------------------------------------------
ALL_RULES = [
    hs.MarginRule("M", "PTV", {"L": 5, "S": 2}),
    hs.MarginRule("M3", "PTV", (2, 4, 4), shrink=True, crop_to_body=False),
    hs.BooleanRule("B", "subtract", ("A", "B2", "C")),
    hs.RingRule("R", "PTV", 3, 12),
    hs.OarMinusPtvRule("O", "Parotid", ("PTV70", "PTV56"), 3.0),
    hs.PtvMinusOarRule("P", "PTV70", ("Cord",), 5.0),
    hs.HotPatchRule("H", 95, region="Mandible", target_margin_mm=5, min_volume_cc=0.1),
    hs.ColdPatchRule("C", "PTV70", 95, prescription_gy=70.0),
]


def test_every_rule_round_trips_through_json(tmp_path):
    text = hs.rules_to_json(ALL_RULES)
    assert hs.rules_from_json(text) == ALL_RULES
    hs.save_rules(tmp_path / "rules.json", ALL_RULES)
    assert hs.load_rules(tmp_path / "rules.json") == ALL_RULES
    assert json.loads(text)["rules"][0] == {"kind": "margin", "name": "M", "source": "PTV",
                                            "margin_mm": {"L": 5.0, "S": 2.0}, "shrink": False, "crop_to_body": True}
    p = _patient()
    hs.make_helper(p, hs.RingRule("Ring", "PTV", 2, 6))
    assert hs.rules_from_patient(p) == [hs.RingRule("Ring", "PTV", 2, 6)]


@pytest.mark.parametrize("doc, match", [
    ({"format": "other", "rules": []}, "helper-rules file holds"),
    ({"format": hs.FORMAT, "rules": [{"kind": "blob", "name": "x"}]}, "unknown kind 'blob'"),
    ({"format": hs.FORMAT, "rules": [{"kind": "ring", "name": "x", "target": "P", "inner_mm": 0, "outer_mm": 5,
                                      "colour": 1}]}, "unknown field"),
    ({"format": hs.FORMAT, "rules": [{"kind": "hot_patch", "name": "x", "threshold_pct": -5}]}, "0 ... 200 %"),
    ({"format": hs.FORMAT, "rules": [{"kind": "margin", "name": "x", "source": "P", "margin_mm": 1},
                                     {"kind": "margin", "name": "x", "source": "P", "margin_mm": 2}]},
     "same structure"),
    ({"format": hs.FORMAT, "version": 9, "rules": []}, "newer"),
])
def test_bad_rule_files(doc, match):
    with pytest.raises(InputError, match=match):
        hs.rules_from_json(doc)


# -- hand-drawn patches and conflicts --------------------------------------------------------------
def test_drawn_patch_checks_and_crops():
    p = _patient()
    body = p.structures["BODY"].mask
    with pytest.raises(InputError, match="'P1' is empty"):
        hs.add_patch(p, "P1", np.zeros((N, N, N), bool))
    with pytest.raises(InputError, match="wholly outside the body"):
        hs.add_patch(p, "P1", ~body & _box((0, 2), (0, 2), (0, 2)))
    with pytest.raises(InputError, match="'PTV' already exists"):
        hs.add_patch(p, "PTV", _box((18, 20), (18, 20), (18, 20)))
    assert "P1" not in p.structures
    s, warnings = hs.add_patch(p, "P1", _box((18, 22), (18, 22), (30, 40)))
    assert s.n_voxels() == int((_box((18, 22), (18, 22), (30, 40)) & body).sum()) and "outside the body" in warnings[0]


def test_patch_conflicts_name_the_p1_goal():
    p = _patient(10.0)
    p.add_structure(Structure("Near", _box((19, 21), (19, 21), (26, 28)), StructureRole.HELPER))   # 2-6 mm out
    p.add_structure(Structure("Far", _box((2, 4), (19, 21), (19, 21)), StructureRole.HELPER))
    cov = ClinicalGoal(1, "PTV", GoalKind.MIN_DOSE_AT_VOLUME, 60.0, 95)
    near = ClinicalGoal(2, "Near", GoalKind.MAX_DOSE_AT_VOLUME, 50.0, volume_cc=0.03)
    far = ClinicalGoal(2, "Far", GoalKind.MAX_DOSE_AT_VOLUME, 50.0, volume_cc=0.03)
    msgs = hs.patch_conflicts(p, "Near", near, [cov, near])
    assert len(msgs) == 1 and "P1 PTV D95 >= 60 Gy" in msgs[0] and "within 5 mm" in msgs[0]
    assert hs.patch_conflicts(p, "Far", far, [cov, far]) == []


# -- template helpers --------------------------------------------------------------------------------
def test_template_helpers_on_a_patient_whose_ptv_overlaps_the_cord():
    from core.goals.templates import add_template_helpers, goals_for_patient, load_template

    p = _patient(12.0)
    p.structures["PTV"].name = "PTV70"
    p.structures["PTV70"] = p.structures.pop("PTV")
    p.prescriptions = [Prescription("PTV70", 70.0, 35)]
    p.add_structure(Structure("SpinalCord", _box((0, 40), (27, 30), (19, 22)), StructureRole.OAR))   # 3 mm behind
    p.add_structure(Structure("Parotid_L", _box((16, 24), (16, 24), (24, 34)), StructureRole.OAR))   # half in the PTV
    t = load_template("hn")
    made = add_template_helpers(p, t)
    assert set(made.structures) == {"PTV70-OAR", "LeftParotid-PTV"}
    opt = p.structures["PTV70-OAR"]
    assert opt.role is StructureRole.HELPER and opt.n_voxels() < p.structures["PTV70"].n_voxels()
    assert [g.label for g in made.goals] == ["P2 PTV70-OAR D95 >= 70 Gy"] and made.goals[0].control
    assert any("RightParotid" in n for n in made.notes)
    assert not (p.structures["LeftParotid-PTV"].mask & p.structures["PTV70"].mask).any()
    # the pipeline's entry point adds them on request only (plans stay as they were otherwise)
    goals, _ = goals_for_patient(p, t, add_helpers=True)
    assert "PTV70-OAR" in {g.structure for g in goals}
    assert "PTV70-OAR" not in {g.structure for g in goals_for_patient(p, t)[0]}
    for site in ("prostate", "lung"):
        assert load_template(site).helpers


@pytest.mark.parametrize("helper, match", [
    ({"kind": "blob", "name": "X"}, "kind must be one of"),
    ({"kind": "ptv_opt", "name": "Core_OPT", "ptv": "OuterTarget", "oars": ["Core"]}, "clashes"),
    ({"kind": "ptv_opt", "name": "T-C", "ptv": "Core", "oars": ["Core"]}, "not an TARGET"),
    ({"kind": "oar_minus_ptv", "name": "C-T", "oar": "Core", "ptvs": ["OuterTarget"],
      "goal": {"priority": 2, "type": "max_mean", "dose_pct": 50}}, "dose_pct needs a target"),
    ({"kind": "ring", "name": "R", "target": "OuterTarget", "inner_mm": 5, "outer_mm": 5}, "inner_mm < outer_mm"),
    ({"kind": "ptv_opt", "name": "T-C", "ptv": "OuterTarget", "oars": ["Core"],
      "goal": {"priority": 2, "type": "min_dose_at_volume", "volume_pct": 101, "dose_pct": 100}}, "D101"),
])
def test_template_helper_schema_errors(helper, match):
    from core.goals.templates import ProtocolTemplate, builtin_protocol_dir

    d = json.loads((builtin_protocol_dir() / "tg119.json").read_text())
    d["helpers"] = [helper]
    with pytest.raises(InputError, match=match):
        ProtocolTemplate.from_dict(d, "x.json")
