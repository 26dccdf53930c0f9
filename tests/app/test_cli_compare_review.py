"""`openatp compare` and `openatp review` end to end on real OpenKBP cases (small slice).

Plan set A is the OpenKBP clinical dose (the case files themselves, a DOSE input by
cli.md); plan set B is that dose scaled by a known factor per patient. Every DVH dose
endpoint is positively homogeneous (Dx, mean, max of f*D are f times those of D), so
the relative difference 100 (a - b) / a of each patient is exactly 100 (1 - f): an
analytic reference. float32 dose storage limits agreement to ~1e-5 relative.
"""

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from scipy import stats

from app.cli import main
from core.io.dosefile import load_dose, save_dose_npz
from core.io.loader import load_patient
from core.patient import Dose

IDS = ("pt_201", "pt_203", "pt_204")
FACTORS = {"pt_201": 0.97, "pt_203": 0.99, "pt_204": 0.94}
REQUIRED = {"structure", "metric", "mean_a", "mean_b", "mean_diff", "rel_diff_pct", "rel_diff_ci95", "p",
            "p_bonferroni", "significant"}


@pytest.fixture(scope="module")
def cohort(openkbp_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    pats, b = root / "patients", root / "plans_b"
    pats.mkdir()
    b.mkdir()
    for pid in IDS:
        (pats / f"{pid}.npz").symlink_to(openkbp_dir / "validation" / f"{pid}.npz")
        p = load_patient(pats / f"{pid}.npz")
        ref = load_dose(pats / f"{pid}.npz", p)
        save_dose_npz(b / f"{pid}.npz", Dose(ref.dose_gy * np.float32(FACTORS[pid]), p.grid, "scaled"))
    return root, pats, b


def _run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_scaled_doses_analytic(cohort, capsys):
    root, pats, b = cohort
    out_dir = root / "cmp"
    code, out, err = _run(capsys, ["compare", str(pats), str(b), "--patients", str(pats), "--out", str(out_dir),
                                   "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n_patients"] == 3
    rows = doc["endpoints"]
    assert rows and all(REQUIRED <= set(r) for r in rows)
    m = len(rows)
    expected = 100 * (1 - np.mean(list(FACTORS.values())))
    checked = 0
    for r in rows:
        per = json.loads((out_dir / "compare.json").read_text())["endpoints"][rows.index(r)]["per_patient"]
        a = np.array([x["a"] for x in per])
        bb = np.array([x["b"] for x in per])
        if r["metric"] in ("D95", "D2", "D98", "mean", "max") and np.all(a > 0.5):
            sign = -1 if (r["structure"].startswith("PTV") and r["metric"] in ("D95", "D98")) else 1
            assert r["rel_diff_pct"] == pytest.approx(sign * expected, abs=1e-3)
            np.testing.assert_allclose(bb, a * np.array([FACTORS[x["patient_id"]] for x in per]), rtol=1e-5)
            checked += 1
        if r["metric"] == "HI":  # scale-invariant
            assert abs(r["mean_diff"]) < 1e-4
        if r["p"] is not None:
            ref = stats.ttest_rel(a, bb).pvalue
            assert r["p"] == pytest.approx(ref, rel=1e-9)
            assert r["p_bonferroni"] == pytest.approx(min(1.0, ref * m), rel=1e-9)
            assert r["significant"] == (min(1.0, ref * m) < 0.05)
    assert checked >= 20
    # structures missing in some patients are left out, with a note (pt_203/204 lack Mandible)
    assert any("Mandible" in n for n in doc["notes"])
    assert not any(r["structure"] == "Mandible" for r in rows)
    # outputs: report with parseable SVG dot plot, CSVs
    html = (out_dir / "report.html").read_text()
    svg = html[html.index("<svg"): html.index("</svg>") + 6]
    ET.fromstring(svg)
    assert svg.count("<circle") >= 3 * checked
    with open(out_dir / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == m


def test_compare_unmatched_patients_exit_2(cohort, capsys, tmp_path):
    root, pats, b = cohort
    partial = tmp_path / "b"
    partial.mkdir()
    (partial / "pt_201.npz").symlink_to(b / "pt_201.npz")
    (partial / "pt_999.npz").symlink_to(b / "pt_203.npz")
    code, out, err = _run(capsys, ["compare", str(pats), str(partial), "--patients", str(pats),
                                   "--out", str(tmp_path / "o"), "--json"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "only in PLANS_A: pt_203, pt_204" in err and "only in PLANS_B: pt_999" in err


def test_review_cli_flow_and_preference_groups(cohort, capsys, tmp_path):
    root, pats, b = cohort
    study = tmp_path / "study"
    code, out, err = _run(capsys, ["review", "create", str(study), str(b), str(pats), "--patients", str(pats),
                                   "--reviewers", "ann,bob", "--seed", "4", "--arm-names", "AutoArmQ,ClinArmZ",
                                   "--json"])
    assert code == 0, err
    created = json.loads(out)
    assert created["n_cases"] == 3 and created["reviewers"] == ["ann", "bob"]
    assert not (study / "answers.sqlite").read_bytes().count(b"AutoArmQ")
    code, out, err = _run(capsys, ["review", "status", str(study), "--reviewer", "ann", "--json"])
    assert code == 0 and "AutoArmQ" not in out and str(b) not in out
    status = json.loads(out)
    assert [c["complete"] for c in status["cases"]] == [False] * 3
    # what the review screen loads: the patient copy (no clinical dose) and both plans on its grid
    first = status["cases"][0]
    shown = load_patient(study / first["patient"])
    assert shown.doses == {} and "PTV70" in shown.structures
    plans = [load_dose(study / first[k], shown).dose_gy for k in ("plan_a", "plan_b")]
    ref = load_dose(pats / f"{first['case_id']}.npz", load_patient(pats / f"{first['case_id']}.npz")).dose_gy
    lo, hi = sorted(plans, key=lambda d: float(d.sum()))
    np.testing.assert_allclose(hi, ref, rtol=1e-6)
    np.testing.assert_allclose(lo, ref * np.float32(FACTORS[first["case_id"]]), rtol=1e-5)
    for reviewer in ("ann", "bob"):
        for _ in IDS:
            code, out, err = _run(capsys, ["review", "answer", str(study), "--reviewer", reviewer, "--set",
                                           "acceptable_a=agree", "--set", "acceptable_b=cannot judge", "--set",
                                           "prefer_a=cannot_judge", "--set", "generated_a=disagree", "--json"])
            assert code == 0, err
    assert json.loads(out)["next_case"] is None
    code, out, err = _run(capsys, ["review", "results", str(study), "--json"])
    assert code == 2 and "still blinded" in err and out == ""
    code, out, err = _run(capsys, ["review", "unblind", str(study), "--json"])
    assert code == 0 and json.loads(out)["arm_names"]["automated"] == "AutoArmQ"
    code, out, err = _run(capsys, ["review", "answer", str(study), "--reviewer", "ann", "--case", "pt_201",
                                   "--set", "prefer_a=agree"])
    assert code == 2 and "answers are closed" in err
    code, out, err = _run(capsys, ["review", "results", str(study), "--json"])
    assert code == 0, err
    res = json.loads(out)
    # Each reviewer accepted A only. Automated is A in 1 or 2 of 3 cases (balanced per reviewer),
    # so per reviewer automated acceptable + manual acceptable = 3, and "cannot judge" on
    # preference = automated preferred exactly where it was accepted; "disagree" on
    # "A generated automatically" is right exactly where automated was B.
    acc, man = res["acceptance"]["automated"], res["acceptance"]["manual"]
    assert acc["n"] == man["n"] == 6 and acc["k"] + man["k"] == 6 and acc["k"] in (2, 3, 4)
    assert res["automated_preferred"]["k"] == acc["k"]
    assert res["identification"]["k"] == man["k"]
    for name in ("results.json", "ratings.csv", "cases.csv", "preference_groups.csv", "results.html"):
        assert (study / "results" / name).is_file()
    page = (study / "results" / "results.html").read_text()
    for i in range(2):
        start = page.index("<svg", page.index("<svg") + 1 if i else 0)
        ET.fromstring(page[start: page.index("</svg>", start) + 6])
    # preference groups feed `compare --groups`
    code, out, err = _run(capsys, ["compare", str(pats), str(b), "--patients", str(pats), "--out",
                                   str(tmp_path / "cmp"), "--groups", str(study / "results" / "preference_groups.csv"),
                                   "--metrics", "mean", "--structures", "PTV70,SpinalCord", "--json"])
    assert code == 0, err
    doc = json.loads(out)
    assert doc["n_patients"] == 3 and len(doc["endpoints"]) == 2
    with open(study / "results" / "preference_groups.csv") as f:
        prefs = [r["preference"] for r in csv.DictReader(f)]
    expected = sorted({v for v in prefs if prefs.count(v) >= 2})  # groups of one patient are skipped
    assert sorted(g["group"]["value"] for g in doc["groups"]) == expected
    for g in doc["groups"]:
        assert g["group"]["by"] == "preference" and g["n_patients"] == prefs.count(g["group"]["value"])


def test_review_create_bad_input_exit_2(cohort, capsys, tmp_path):
    root, pats, b = cohort
    code, out, err = _run(capsys, ["review", "create", str(tmp_path / "s"), str(b), str(pats), "--patients",
                                   str(pats), "--reviewers", "ann", "--questionnaire", "published-v7"])
    assert code == 2 and "unknown questionnaire version 'published-v7'" in err and err.count("\n") == 1
    assert not (tmp_path / "s").exists()
    code, out, err = _run(capsys, ["compare", str(pats), str(b), "--patients", str(pats), "--out",
                                   str(tmp_path / "o"), "--structures", "Mandible"])
    assert code == 2 and "pt_203 lacks Mandible" in err
