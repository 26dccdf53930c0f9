"""Scoring rules and aggregates against hand-counted values."""

import math

import pytest

from core.errors import InputError
from core.review.aggregate import Rating, aggregate, keywords, score
from core.review.questionnaire import BUILTIN, Questionnaire, get_questionnaire

Q = get_questionnaire()


def test_published_cannot_judge_rules():
    # auto is B; "cannot judge" on B's acceptability -> not acceptable; on preference -> counts
    # for the automated plan only if acceptable (it is not) -> manual preferred; on the
    # generation method -> misidentified.
    s = score({"acceptable_a": "agree", "acceptable_b": "cannot_judge", "prefer_a": "cannot_judge",
               "generated_a": "cannot_judge"}, "B", Q)
    assert s["automated_acceptable"] is False and s["manual_acceptable"] is True
    assert s["automated_preferred"] is False and s["identified"] is False
    # auto is A and acceptable: "cannot judge" on preference -> automated preferred
    s = score({"acceptable_a": "agree", "acceptable_b": "disagree", "prefer_a": "cannot_judge",
               "generated_a": "agree"}, "A", Q)
    assert s["automated_acceptable"] is True and s["manual_acceptable"] is False
    assert s["automated_preferred"] is True and s["identified"] is True
    # auto is B: "Plan A is preferable: disagree" prefers B = automated; "A generated
    # automatically: disagree" names B = correct; "agree" names A = wrong
    s = score({"prefer_a": "disagree", "generated_a": "disagree"}, "B", Q)
    assert s["automated_preferred"] is True and s["identified"] is True
    assert s["automated_acceptable"] is None  # not answered
    assert score({"generated_a": "agree"}, "B", Q)["identified"] is False
    with pytest.raises(InputError):
        score({}, "C", Q)


def _r(rev, case, site, aa, ma, ap, ident, comment=""):
    return Rating(rev, case, site, "A", True, aa, ma, ap, ident, comment)


T, F = True, False
# case: (site, [(aa, ma, ap, identified) for reviewers r1, r2, r3])
DESIGN = {
    "c1": ("S1", [(T, T, T, T), (T, T, T, F), (T, F, T, T)]),
    "c2": ("S1", [(T, T, F, T), (F, T, F, F), (T, T, T, T)]),
    "c3": ("S2", [(F, T, F, F), (F, T, F, F), (F, T, F, T)]),
    "c4": ("S2", [(T, F, T, T), (T, T, F, T), (T, T, T, T)]),
}


def _ratings():
    out = []
    for c, (site, rows) in DESIGN.items():
        for rev, row in zip(("r1", "r2", "r3"), rows):
            out.append(_r(rev, c, site, *row, comment="parotid sparing good" if row[2] else "cord too hot"))
    return out


def test_aggregates_hand_counted():
    res = aggregate(_ratings())
    assert res["n_reviewers"] == 3 and res["n_cases"] == 4 and res["n_complete_cases"] == 4
    # automated accepted by 3, 2, 0, 3 reviewers -> k=0: 1/4, k=2: 1/4, k=3 (unanimous): 2/4
    acc = res["accepted_by"]
    assert [acc["by_k"][str(k)]["cases"] for k in range(4)] == [1, 0, 1, 2]
    assert acc["unanimous"] == 0.5 and acc["at_least_one"] == 0.75
    # preferred by 3, 1, 0, 2 -> one case each
    assert [res["preferred_by"]["by_k"][str(k)]["cases"] for k in range(4)] == [1, 1, 1, 1]
    a = res["acceptance"]
    assert (a["automated"]["k"], a["automated"]["n"]) == (8, 12)
    assert (a["manual"]["k"], a["manual"]["n"]) == (10, 12)
    ident = res["identification"]
    assert (ident["k"], ident["n"]) == (8, 12)
    # two-sided exact binomial: 2 * P(X >= 8 | 12, 1/2) = 2 * (495+220+66+12+1) / 4096
    assert ident["p_binomial_vs_chance"] == pytest.approx(2 * 794 / 4096, rel=1e-12)
    # Fleiss' kappa of automated acceptability: rows (3,0) (2,1) (0,3) (3,0): P_bar = 5/6,
    # P_e = (2/3)^2 + (1/3)^2 = 5/9 -> kappa = (5/6 - 5/9) / (4/9) = 5/8
    assert res["fleiss_kappa"]["automated_acceptable"] == pytest.approx(5 / 8)
    assert res["per_reviewer"]["r1"]["acceptance"]["automated"]["k"] == 3
    s1 = res["per_site"]["S1"]
    assert s1["accepted_by"]["by_k"]["3"]["cases"] == 1 and s1["accepted_by"]["by_k"]["2"]["cases"] == 1
    assert res["cases"][2] == {"case_id": "c3", "site": "S2", "n_rated": 3, "automated_accepted_by": 0,
                               "manual_accepted_by": 3, "automated_preferred_by": 0, "identified_by": 1,
                               "preference_group": "automated preferred by 0/3"}
    # 3 + 1 + 0 + 2 = 6 ratings prefer the automated plan ("parotid sparing good"), 6 do not
    kw = {w["word"]: w["count"] for w in res["keywords"]}
    assert kw["parotid"] == 6 and kw["cord"] == 6 and "too" not in kw
    assert {"word": "cord", "count": 6} in res["keywords_by_preference"]["manual_preferred"]
    assert "cord" not in {w["word"] for w in res["keywords_by_preference"]["automated_preferred"]}


def test_incomplete_ratings_leave_the_case_out_of_the_distribution():
    rs = _ratings()
    rs[0] = Rating("r1", "c1", "S1", "A", False, None, None, None, None)
    res = aggregate(rs)
    assert res["n_complete_cases"] == 3 and res["accepted_by"]["n_cases"] == 3
    assert res["acceptance"]["automated"]["n"] == 11
    assert res["n_incomplete_ratings"] == 1


def test_kappa_undefined_when_everyone_always_agrees():
    rs = [_r(r, c, "", T, T, T, T) for r in ("r1", "r2") for c in ("c1", "c2")]
    assert math.isnan(aggregate(rs)["fleiss_kappa"]["automated_acceptable"])


def test_questionnaire_versions():
    q = get_questionnaire("published-v1")
    assert q.required_ids == ("acceptable_a", "acceptable_b", "prefer_a", "generated_a")
    assert Questionnaire.from_dict(q.to_dict()) == q  # round trip through the stored JSON
    assert q.validate_answer("prefer_a", "Cannot judge") == "cannot_judge"
    with pytest.raises(InputError, match="unknown questionnaire version 'published-v0'.*published-v1"):
        get_questionnaire("published-v0")
    with pytest.raises(InputError, match="unknown questionnaire format 3"):
        Questionnaire.from_dict(dict(BUILTIN["published-v1"], format=3))
    with pytest.raises(InputError, match="plan 'A' or 'B'"):
        Questionnaire.from_dict({"format": 1, "version": "x", "questions": [
            {"id": "acc", "kind": "acceptable", "text": "ok?"}]})


def test_custom_questionnaire_from_file(tmp_path):
    f = tmp_path / "q.json"
    f.write_text('{"format": 1, "version": "site-hn-v2", "questions": ['
                 '{"id": "acceptable_a", "kind": "acceptable", "plan": "A", "text": "A ok"},'
                 '{"id": "acceptable_b", "kind": "acceptable", "plan": "B", "text": "B ok"},'
                 '{"id": "parotids", "kind": "likert", "text": "Parotid sparing of A is adequate"}]}')
    q = get_questionnaire(f)
    assert q.version == "site-hn-v2" and q.by_kind("prefer") is None
    s = score({"acceptable_a": "agree", "acceptable_b": "disagree", "parotids": "agree"}, "B", q)
    assert s["automated_acceptable"] is False and s["automated_preferred"] is None


def test_keywords():
    assert keywords(["The cord dose is too high", "cord ok; PTV cold spot", ""])[:1] == [("cord", 2)]
