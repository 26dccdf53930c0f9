"""Cohort statistics on hand-made endpoint tables: every number is checked against a hand
calculation or scipy.stats on the same values; file handling on tiny synthetic plan sets."""

import math

import numpy as np
import pytest
from scipy import stats

from core.errors import InputError
from core.evaluation.cohort import (compare_groups, compare_tables, discover_plan_set, eqd2_gy,
                                    higher_is_better, match_plan_sets, parse_metric, read_groups)


def _tables():
    # 3 patients, 2 endpoints. Cord mean: a=(10,20,30), b=(9,18,27) -> d=(1,2,3), rel 10 % each.
    # PTV D95: a=(50,60,40), b=(51,60,42) -> d=(-1,0,-2), rel (-2, 0, -5) %, flipped -> (2, 0, 5).
    a = {"p1": {("Cord", "mean"): 10.0, ("PTV", "D95"): 50.0},
         "p2": {("Cord", "mean"): 20.0, ("PTV", "D95"): 60.0},
         "p3": {("Cord", "mean"): 30.0, ("PTV", "D95"): 40.0}}
    b = {"p1": {("Cord", "mean"): 9.0, ("PTV", "D95"): 51.0},
         "p2": {("Cord", "mean"): 18.0, ("PTV", "D95"): 60.0},
         "p3": {("Cord", "mean"): 27.0, ("PTV", "D95"): 42.0}}
    return a, b


def test_compare_tables_hand_values():
    a, b = _tables()
    res = compare_tables(a, b, targets={"PTV"})
    assert res.n_patients == 3 and res.n_tests == 2
    cord = res.endpoint("Cord", "mean")
    assert cord.mean_a == 20 and cord.mean_b == 18 and cord.mean_diff == pytest.approx(2.0)
    # all three relative differences are exactly 10 %: mean 10, zero-width CI
    assert cord.rel_diff_pct == pytest.approx(10.0)
    assert cord.rel_diff_ci95 == pytest.approx((10.0, 10.0))
    # closed-form df=2 p (see test_stats) and Bonferroni over 2 endpoints
    p = 1 - math.sqrt(12 / 14)
    assert cord.p == pytest.approx(p, rel=1e-10)
    assert cord.p_bonferroni == pytest.approx(2 * p, rel=1e-10)
    assert cord.significant is False  # 0.148 > 0.05
    ptv = res.endpoint("PTV", "D95")
    assert ptv.higher_is_better and not cord.higher_is_better
    # coverage sign flipped: B's higher D95 is positive (B better): mean of (2, 0, 5) = 7/3
    assert ptv.rel_diff_pct == pytest.approx(7 / 3)
    assert ptv.mean_diff == pytest.approx(-1.0)  # mean_diff keeps the plain a - b
    lo, hi = ptv.rel_diff_ci95
    half = stats.t.ppf(0.975, 2) * np.std([2, 0, 5], ddof=1) / math.sqrt(3)
    assert lo == pytest.approx(7 / 3 - half) and hi == pytest.approx(7 / 3 + half)
    assert ptv.p == pytest.approx(stats.ttest_rel([50, 60, 40], [51, 60, 42]).pvalue, rel=1e-12)


def test_bonferroni_significance_over_number_of_endpoints():
    rng = np.random.default_rng(1)
    n, m = 12, 5
    a, b = {}, {}
    for i in range(n):
        a[f"p{i}"] = {("S", f"m{k}"): 20 + rng.normal() for k in range(m)}
        b[f"p{i}"] = {key: v - 0.5 - 0.3 * rng.normal() for key, v in a[f"p{i}"].items()}
    res = compare_tables(a, b)
    assert res.n_tests == m
    for e in res.endpoints:
        ref = stats.ttest_rel(e.values_a, e.values_b).pvalue
        assert e.p == pytest.approx(ref, rel=1e-12)
        assert e.p_bonferroni == pytest.approx(min(1.0, ref * m), rel=1e-12)
        assert e.significant == (min(1.0, ref * m) < 0.05)
        assert e.p_wilcoxon == pytest.approx(stats.wilcoxon(e.values_a, e.values_b).pvalue, rel=1e-12)


def test_unmatched_patients_are_listed():
    a, b = _tables()
    del b["p2"]
    b["p9"] = dict(a["p1"])
    with pytest.raises(InputError, match=r"only in A: p2.*only in B: p9"):
        compare_tables(a, b)
    plans_a = {"pt_1": 1, "pt_2": 1, "pt_10": 1}
    plans_b = {"pt_1": 1, "pt_10": 1, "pt_11": 1}
    with pytest.raises(InputError, match=r"only in PLANS_A: pt_2; only in PLANS_B: pt_11"):
        match_plan_sets(plans_a, plans_b)
    with pytest.raises(InputError, match="no patient in --patients for: pt_10"):
        match_plan_sets({"pt_1": 1, "pt_10": 1}, {"pt_1": 1, "pt_10": 1}, {"pt_1": 1})
    assert match_plan_sets({"pt_10": 1, "pt_2": 1}, {"pt_2": 1, "pt_10": 1}) == ["pt_2", "pt_10"]


def test_missing_and_undefined_endpoints():
    a, b = _tables()
    del b["p3"][("PTV", "D95")]
    with pytest.raises(InputError, match="p3: PTV D95"):
        compare_tables(a, b)
    a, b = _tables()
    a["p1"][("PTV", "CI")] = float("nan")
    for t in (a, b):
        for pid in ("p2", "p3"):
            t[pid][("PTV", "CI")] = 0.8
    b["p1"][("PTV", "CI")] = 0.7
    res = compare_tables(a, b, targets={"PTV"})
    assert res.n_tests == 2 and any("PTV CI left out: undefined for p1" in n for n in res.notes)


def test_zero_reference_is_left_out_of_relative_difference_only():
    a = {"p1": {("S", "mean"): 0.0}, "p2": {("S", "mean"): 10.0}, "p3": {("S", "mean"): 20.0}}
    b = {"p1": {("S", "mean"): 1.0}, "p2": {("S", "mean"): 9.0}, "p3": {("S", "mean"): 19.0}}
    e = compare_tables(a, b).endpoints[0]
    assert e.rel_diff_n == 2 and e.rel_diff_pct == pytest.approx((10 + 5) / 2)
    assert e.mean_diff == pytest.approx((-1 + 1 + 1) / 3)


def test_groups_are_separate_bonferroni_families():
    a, b = _tables()
    for pid, v in (("p4", 40.0), ("p5", 15.0)):
        a[pid] = {("Cord", "mean"): v, ("PTV", "D95"): 55.0}
        b[pid] = {("Cord", "mean"): v * 0.8, ("PTV", "D95"): 54.0}
    groups = {"p1": {"site": "X"}, "p2": {"site": "X"}, "p3": {"site": "Y"}, "p4": {"site": "Y"},
              "p5": {"site": "Z"}}
    res = compare_groups(a, b, groups, targets={"PTV"})
    assert [g.group for g in res] == [("site", "X"), ("site", "Y")]  # Z has one patient: skipped
    y = res[1]
    assert y.patient_ids == ("p3", "p4") and y.n_tests == 2
    assert y.endpoint("Cord", "mean").rel_diff_pct == pytest.approx((10 + 20) / 2)


def test_metric_parsing_and_coverage_sign():
    assert parse_metric("V20Gy").kind == "v_gy" and parse_metric("V20Gy").level == 20
    assert parse_metric("V95").kind == "v_pct" and parse_metric("D0.1cc").kind == "dvh"
    with pytest.raises(InputError, match="unknown endpoint 'D42'"):
        parse_metric("D42")
    assert higher_is_better("D95", True) and higher_is_better("V95", True) and higher_is_better("CI", True)
    assert higher_is_better("D98_EQD2", True)
    assert not higher_is_better("D2", True) and not higher_is_better("HI", True)
    assert not higher_is_better("D95", False) and not higher_is_better("V20Gy", False)


def test_eqd2_worked_examples():
    # 70 Gy in 35 x 2 Gy is 70 Gy EQD2 for any alpha/beta; 60 Gy in 20 x 3 Gy at a/b = 3:
    # 60 (3 + 3) / (2 + 3) = 72 Gy; at a/b = 10: 60 x 13 / 12 = 65 Gy.
    assert eqd2_gy(70.0, 35, 10.0) == pytest.approx(70.0)
    assert eqd2_gy(60.0, 20, 3.0) == pytest.approx(72.0)
    assert eqd2_gy(60.0, 20, 10.0) == pytest.approx(65.0)


def test_plan_set_discovery_and_groups_file(tmp_path):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "pt_1.npz").write_bytes(b"x")
    (tmp_path / "set" / "pt_2").mkdir()
    (tmp_path / "set" / "pt_2" / "dose.npz").write_bytes(b"x")
    (tmp_path / "set" / ".pt_3.partial").mkdir()
    found = discover_plan_set(tmp_path / "set")
    assert sorted(found) == ["pt_1", "pt_2"] and found["pt_2"].name == "dose.npz"
    with pytest.raises(InputError, match="plan set folder not found"):
        discover_plan_set(tmp_path / "nope")
    g = tmp_path / "g.csv"
    g.write_text("patient_id,site,preference\npt_1,HN,auto\npt_2,HN,\n")
    assert read_groups(g) == {"pt_1": {"site": "HN", "preference": "auto"}, "pt_2": {"site": "HN"}}
    (tmp_path / "bad.csv").write_text("id,site\n1,a\n")
    with pytest.raises(InputError, match="patient_id"):
        read_groups(tmp_path / "bad.csv")


def _patient(tmp_path=None):
    from core.geometry import Grid
    from core.patient import Patient, Prescription, Structure, StructureRole

    grid = Grid((4, 4, 4), (5.0, 5.0, 5.0), (0.0, 0.0, 0.0))
    p = Patient("syn", grid)
    ptv = np.zeros(grid.shape, bool)
    ptv[1:3, 1:3, 1:3] = True
    cord = np.zeros(grid.shape, bool)
    cord[0, :, 0] = True
    p.add_structure(Structure("PTV60", ptv, StructureRole.TARGET))
    p.add_structure(Structure("SpinalCord", cord, StructureRole.OAR))
    p.prescriptions.append(Prescription("PTV60", 60.0, 20))
    return p


def test_plan_endpoints_eqd2_v_values_and_indices():
    from core.evaluation.cohort import EndpointOptions, plan_endpoints

    p = _patient()
    dose = np.full(p.grid.shape, 60.0, np.float32)
    dose[p.structures["SpinalCord"].mask] = 30.0
    opts = EndpointOptions(metrics=tuple(parse_metric(m) for m in ("mean", "D95", "V20Gy", "V95", "CI", "HI")))
    ep = plan_endpoints(p, dose, ["PTV60", "SpinalCord"], {"PTV60"}, opts, 20)
    assert ep[("PTV60", "mean")] == pytest.approx(60.0) and ep[("PTV60", "V95")] == 100.0
    # the 60 Gy isodose covers all 64 voxels except the 4 cord voxels; TV = 8 inside it:
    # Paddick CI = 8^2 / (8 * 60)
    assert ep[("PTV60", "CI")] == pytest.approx(64 / (8 * 60))
    assert ep[("PTV60", "HI")] == pytest.approx(0.0)
    assert ep[("SpinalCord", "V20Gy")] == 100.0 and ("SpinalCord", "CI") not in ep
    # EQD2 with 20 fractions: target a/b 10: 60 (3 + 10) / 12 = 65 Gy; cord a/b 2 (default
    # for cord): 30 in 20 x 1.5 Gy -> 30 (1.5 + 2) / 4 = 26.25 Gy; its override to 3 Gy: 30 x 4.5 / 5 = 27
    opts_eq = EndpointOptions(metrics=opts.metrics, eqd2=True)
    eq = plan_endpoints(p, dose, ["PTV60", "SpinalCord"], {"PTV60"}, opts_eq, 20)
    assert eq[("PTV60", "mean_EQD2")] == pytest.approx(65.0, rel=1e-6)
    assert eq[("PTV60", "V95_EQD2")] == 100.0  # prescription converted too
    assert eq[("SpinalCord", "mean_EQD2")] == pytest.approx(26.25, rel=1e-6)
    opts_ab = EndpointOptions(metrics=opts.metrics, eqd2=True, alpha_beta_gy={"SpinalCord": 3.0})
    assert plan_endpoints(p, dose, ["SpinalCord"], set(), opts_ab, 20)[("SpinalCord", "mean_EQD2")] == \
        pytest.approx(27.0, rel=1e-6)


def test_allow_missing_analyses_each_endpoint_on_the_patients_that_have_it():
    a, b = _tables()
    del a["p2"][("PTV", "D95")], b["p2"][("PTV", "D95")]
    res = compare_tables(a, b, targets={"PTV"}, allow_missing=True)
    ptv = res.endpoint("PTV", "D95")
    assert res.n_patients == 3 and ptv.n == 2 and ptv.patient_ids == ("p1", "p3")
    assert ptv.p == pytest.approx(stats.ttest_rel([50, 40], [51, 42]).pvalue, rel=1e-12)
    assert ptv.rel_diff_pct == pytest.approx((2 + 5) / 2)
    assert res.endpoint("Cord", "mean").n == 3 and res.n_tests == 2
    del a["p3"][("PTV", "D95")], b["p3"][("PTV", "D95")]
    res = compare_tables(a, b, targets={"PTV"}, allow_missing=True)
    assert res.n_tests == 1 and any("only 1 patient" in n for n in res.notes)
