"""Site templates: every built-in file validates, names map through synonyms, users can add their own."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import InputError
from core.goals.goal import GoalKind
from core.goals.templates import (ProtocolTemplate, available_sites, builtin_protocol_dir, canonical_name,
                                  goals_for_patient, load_template, user_protocol_dir)

SITES = ["breast", "cervix", "hn", "lung", "prostate", "rectum", "tg119"]


def test_all_builtin_templates_validate_and_cite_every_goal():
    assert available_sites() == SITES or set(SITES) <= set(available_sites())
    for site in SITES:
        t = load_template(site)
        assert t.version == "1.0" and t.title and t.prescriptions
        assert all(c for c in t.cites), f"{site}: every goal cites its source"
        assert any(g.priority == 1 and g.kind is GoalKind.MIN_DOSE_AT_VOLUME for g in t.goals), site
        assert not any(g.control for g in t.goals)
    assert load_template("nasopharynx").site == "hn"
    assert load_template("HN").site == "hn"


@pytest.mark.parametrize("name", ["Parotid_L", "L Parotid", "LeftParotid", "Lt_Parotid", "PAROTID_LT", "parotid left"])
def test_left_parotid_synonyms(name):
    t = load_template("hn")
    assert t.match_structures([name, "RightParotid"]) == {"LeftParotid": name, "RightParotid": "RightParotid"}


def test_sides_are_never_confused_and_exact_names_win():
    assert canonical_name("Parotid_L") != canonical_name("Parotid_R")
    t = load_template("hn")
    m = t.match_structures(["Parotid_R", "Spinal Cord", "PTV_70", "PTV63", "Brain_Stem", "Cord"])
    assert m["RightParotid"] == "Parotid_R" and "LeftParotid" not in m
    assert m["PTV70"] == "PTV_70" and m["PTV63"] == "PTV63" and m["Brainstem"] == "Brain_Stem"
    assert m["SpinalCord"] == "Spinal Cord"  # first match in the template's own order


def test_goals_for_openkbp_names_and_missing_structures():
    t = load_template("hn")
    names = ["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Larynx", "Mandible", "PTV56", "PTV70"]
    goals, warnings = t.goals_for(names, {"PTV70": 70.0, "PTV56": 56.0})
    assert {g.structure for g in goals} <= set(names) | {r.name for r in t.rings}
    assert any("PTV63" in w for w in warnings) and any("Esophagus" in w for w in warnings)
    ring = [g for g in goals if g.structure == "Ring_PTV70_5_15mm"][0]
    assert ring.dose_gy == pytest.approx(0.95 * 70.0) and ring.volume_cc == 0.03 and ring.priority == 4


def test_rings_are_added_to_a_real_openkbp_case(openkbp_dir):
    from core.io.openkbp import load_openkbp

    p = load_openkbp(openkbp_dir / "validation" / "pt_201.npz")
    goals, warnings = goals_for_patient(p, "hn")
    ring = p.structures["Ring_PTV70_5_15mm"]
    assert ring.rule["kind"] == "ring" and ring.n_voxels() > 0
    for t in p.targets:
        assert not (ring.mask & t.mask).any()  # rings never take target voxels
    assert not (ring.mask & ~p.external_mask()).any()
    # every ring keeps its inner distance from every target, not only from its own
    from core.optimization.conformity import distance_outside_mm

    all_targets = np.any([t.mask for t in p.targets], axis=0)
    dist = distance_outside_mm(all_targets, p.grid)
    for r in ("Ring_PTV70_5_15mm", "Ring_PTV56_10_30mm"):
        m = p.structures[r].mask
        assert m.any() and dist[m].min() > {"Ring_PTV70_5_15mm": 5.0, "Ring_PTV56_10_30mm": 10.0}[r]
    # the template's ring is the drawing tool's ring of the same distances (one definition of
    # "5-15 mm from the PTV surface"), less what lies near any target or outside the body
    from core.structures import ring as drawn_ring

    drawn = drawn_ring(p.structures["PTV70"].mask, p.grid, 5.0, 15.0, external=p.external_mask())
    assert np.array_equal(ring.mask, drawn & (dist > 5.0))
    assert all(g.structure in p.structures for g in goals)


def test_user_templates_replace_builtin_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENATP_USER_DIR", str(tmp_path))
    assert user_protocol_dir() == tmp_path / "protocols"
    d = json.loads((builtin_protocol_dir() / "tg119.json").read_text())
    d["version"] = "2.1"
    d["goals"][2]["dose_gy"] = 20.0
    user_protocol_dir().mkdir(parents=True)
    (user_protocol_dir() / "my_tg119.json").write_text(json.dumps(d))
    t = load_template("tg119")
    assert t.version == "2.1" and t.goals[2].dose_gy == 20.0


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("version"), "'version' is missing"),
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d["goals"].append({"priority": 1, "structure": "Nowhere", "type": "alara"}), "not listed"),
    (lambda d: d["goals"][0].update(cite="nope"), "citation 'nope'"),
    (lambda d: d["goals"][0].update(volume_pct=101), "D101 % is impossible"),
    (lambda d: d["structures"]["Core"].update(synonyms=["Outer Target"]), "synonym clash"),
    (lambda d: d.update(rings=[{"name": "R", "target": "Core", "inner_mm": 0, "outer_mm": 5, "priority": 3,
                                "max_dose_pct": 90}]), "not a target"),
])
def test_schema_errors_name_the_problem(edit, match):
    d = json.loads((builtin_protocol_dir() / "tg119.json").read_text())
    edit(d)
    with pytest.raises(InputError, match=match):
        ProtocolTemplate.from_dict(d, "x.json")


def test_unknown_site():
    with pytest.raises(InputError, match="no protocol template for site 'liver'"):
        load_template("liver")
