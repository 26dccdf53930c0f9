"""Scoring and aggregation of an unblinded review study.

Scoring (per reviewer and case, rules in :mod:`core.review.questionnaire`):

* ``automated_acceptable`` / ``manual_acceptable``: the acceptability statement of the
  plan shown with that arm; "cannot judge" = not acceptable;
* ``automated_preferred``: from "Plan A is preferable to Plan B"; "cannot judge" =
  automated preferred if that reviewer found the automated plan acceptable (published);
* ``identified``: "Plan A was generated automatically" answered correctly; "cannot
  judge" = misidentified (published).

Aggregates (over complete ratings: every required question answered):

* share of cases whose automated plan was accepted / preferred by exactly k of the N
  reviewers, k = 0..N (``unanimous`` = N), counted over cases every reviewer finished;
* acceptance of each arm over all ratings with the exact Clopper-Pearson 95 % CI
  (ratings of one case by several reviewers are not independent; the interval treats
  them as if they were and is therefore somewhat narrow; the per-reviewer rows are
  the independent view);
* identification accuracy with a two-sided exact binomial test against chance (0.5);
* the same per reviewer and per site; Fleiss' kappa of each scored outcome over cases
  rated by all reviewers; keyword counts of the comments.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass

from core.errors import InputError
from core.evaluation.stats import binomial_test, fleiss_kappa, proportion_ci95
from core.review.questionnaire import AGREE, CANNOT_JUDGE, Questionnaire

OUTCOMES = ("automated_acceptable", "manual_acceptable", "automated_preferred", "identified")

_STOPWORDS = set("""a an and are as at be but by for from has have i if in is it its no not of on or
so than that the their there this to too was were which with plan plans very more less would could
should can cannot b also than then both all some any""".split())


@dataclass(frozen=True)
class Rating:
    """One reviewer's scored answers for one case (None where the statement is absent or unanswered)."""

    reviewer: str
    case_id: str
    site: str
    automated_handle: str
    complete: bool
    automated_acceptable: bool | None
    manual_acceptable: bool | None
    automated_preferred: bool | None
    identified: bool | None
    comment: str = ""


def _other(handle: str) -> str:
    return "B" if handle == "A" else "A"


def score(answers: dict, automated_handle: str, questionnaire: Questionnaire) -> dict:
    """Scored outcomes of one reviewer's answers to one case.

    Parameters
    ----------
    answers : dict
        ``{question_id: "agree" | "disagree" | "cannot_judge" | comment text}``.
    automated_handle : "A" or "B"
        Which plan was the automated one for this reviewer and case.
    questionnaire : Questionnaire

    Returns
    -------
    dict
        ``automated_acceptable``, ``manual_acceptable``, ``automated_preferred``,
        ``identified`` (bool or None when not asked/answered) and ``comment``.
    """
    if automated_handle not in ("A", "B"):
        raise InputError(f"automated handle must be 'A' or 'B', got {automated_handle!r}")
    manual_handle = _other(automated_handle)

    def acceptable(handle):
        q = questionnaire.by_kind("acceptable", handle)
        if q is None or q.id not in answers:
            return None
        return answers[q.id] == AGREE  # cannot judge / disagree: not acceptable

    auto_ok = acceptable(automated_handle)
    manual_ok = acceptable(manual_handle)
    preferred = None
    q = questionnaire.by_kind("prefer")
    if q is not None and q.id in answers:
        v = answers[q.id]
        if v == CANNOT_JUDGE:
            preferred = bool(auto_ok)  # published: counts for the automated plan if it is acceptable
        else:
            a_preferred = v == AGREE
            preferred = a_preferred == (automated_handle == "A")
    identified = None
    q = questionnaire.by_kind("generated")
    if q is not None and q.id in answers:
        v = answers[q.id]
        if v == CANNOT_JUDGE:
            identified = False  # published: cannot judge is a misidentification
        else:
            named = "A" if v == AGREE else "B"
            identified = named == automated_handle
    comment_q = questionnaire.by_kind("text")
    comment = answers.get(comment_q.id, "") if comment_q else ""
    return {"automated_acceptable": auto_ok, "manual_acceptable": manual_ok,
            "automated_preferred": preferred, "identified": identified, "comment": comment}


def ratings_from_study(study) -> list:
    """Scored :class:`Rating` of every (reviewer, case) of an unblinded study."""
    handles = study.automated_handles()
    answers = study.all_answers()
    sites = study.sites()
    q = study.questionnaire
    out = []
    for reviewer in study.reviewers():
        for case_id in study.case_ids():
            ans = answers.get((reviewer, case_id), {})
            s = score(ans, handles[(reviewer, case_id)], q)
            out.append(Rating(reviewer, case_id, sites.get(case_id, ""), handles[(reviewer, case_id)],
                              all(k in ans for k in q.required_ids), **s))
    return out


def _share(k: int, n: int) -> dict:
    p = proportion_ci95(k, n)
    return {"k": p.k, "n": p.n, "share": p.share, "ci95": list(p.ci95)}


def _count_by_case(ratings: list, outcome: str, reviewers: list) -> dict:
    """Cases rated by every reviewer -> number of reviewers with ``outcome`` True."""
    by_case: dict = {}
    for r in ratings:
        if r.complete and getattr(r, outcome) is not None:
            by_case.setdefault(r.case_id, {})[r.reviewer] = bool(getattr(r, outcome))
    return {c: sum(v.values()) for c, v in by_case.items() if set(v) == set(reviewers)}


def _distribution(counts: dict, n_reviewers: int) -> dict:
    n_cases = len(counts)
    hist = Counter(counts.values())
    return {"n_cases": n_cases,
            "by_k": {str(k): {"cases": hist.get(k, 0),
                              "share": hist.get(k, 0) / n_cases if n_cases else math.nan}
                     for k in range(n_reviewers + 1)},
            "unanimous": hist.get(n_reviewers, 0) / n_cases if n_cases else math.nan,
            "at_least_one": (n_cases - hist.get(0, 0)) / n_cases if n_cases else math.nan}


def _summary(ratings: list) -> dict:
    done = [r for r in ratings if r.complete]

    def count(outcome):
        vals = [getattr(r, outcome) for r in done if getattr(r, outcome) is not None]
        return sum(vals), len(vals)

    k, n = count("identified")
    ident = _share(k, n)
    ident["p_binomial_vs_chance"] = binomial_test(k, n, 0.5)
    return {"n_ratings": len(done),
            "acceptance": {"automated": _share(*count("automated_acceptable")),
                           "manual": _share(*count("manual_acceptable"))},
            "automated_preferred": _share(*count("automated_preferred")),
            "identification": ident}


def kappa(ratings: list, outcome: str, reviewers: list) -> float:
    """Fleiss' kappa of a boolean outcome over cases rated (complete) by every reviewer."""
    by_case: dict = {}
    for r in ratings:
        if r.complete and getattr(r, outcome) is not None:
            by_case.setdefault(r.case_id, {})[r.reviewer] = bool(getattr(r, outcome))
    rows = [[sum(v.values()), len(v) - sum(v.values())] for v in by_case.values() if set(v) == set(reviewers)]
    if not rows or len(reviewers) < 2:
        return math.nan
    return fleiss_kappa(rows)


def keywords(comments, top: int = 20) -> list:
    """``[(word, count)]`` of the commonest words (3+ letters, stop words removed)."""
    c = Counter()
    for text in comments:
        for w in re.findall(r"[a-z][a-z\-]{2,}", (text or "").lower()):
            if w not in _STOPWORDS:
                c[w] += 1
    return c.most_common(top)


def aggregate(ratings: list, reviewers: list | None = None) -> dict:
    """All aggregates of scored ratings (see module docstring); JSON-ready."""
    reviewers = sorted(reviewers or {r.reviewer for r in ratings})
    n_rev = len(reviewers)
    out = {"n_reviewers": n_rev, "reviewers": reviewers,
           "n_cases": len({r.case_id for r in ratings}),
           "n_complete_cases": sum(
               all(any(r.case_id == c and r.reviewer == rv and r.complete for r in ratings) for rv in reviewers)
               for c in {r.case_id for r in ratings}),
           "n_incomplete_ratings": sum(not r.complete for r in ratings)}
    out.update(_summary(ratings))
    out["accepted_by"] = _distribution(_count_by_case(ratings, "automated_acceptable", reviewers), n_rev)
    out["preferred_by"] = _distribution(_count_by_case(ratings, "automated_preferred", reviewers), n_rev)
    out["per_reviewer"] = {rv: _summary([r for r in ratings if r.reviewer == rv]) for rv in reviewers}
    sites = sorted({r.site for r in ratings if r.site})
    per_site = {}
    for s in sites:
        sub = [r for r in ratings if r.site == s]
        d = _summary(sub)
        d["accepted_by"] = _distribution(_count_by_case(sub, "automated_acceptable", reviewers), n_rev)
        d["preferred_by"] = _distribution(_count_by_case(sub, "automated_preferred", reviewers), n_rev)
        per_site[s] = d
    out["per_site"] = per_site
    out["fleiss_kappa"] = {o: kappa(ratings, o, reviewers) for o in OUTCOMES}
    comments = [r.comment for r in ratings if r.comment]
    out["keywords"] = [{"word": w, "count": n} for w, n in keywords(comments)]
    pref = [r for r in ratings if r.complete and r.automated_preferred is not None]
    out["keywords_by_preference"] = {
        "automated_preferred": [{"word": w, "count": n} for w, n in keywords(
            r.comment for r in pref if r.automated_preferred and r.comment)],
        "manual_preferred": [{"word": w, "count": n} for w, n in keywords(
            r.comment for r in pref if not r.automated_preferred and r.comment)]}
    out["cases"] = case_table(ratings, reviewers)
    return out


def case_table(ratings: list, reviewers: list) -> list:
    """Per case: site, how many reviewers accepted/preferred the automated plan, identified it."""
    rows = []
    for cid in sorted({r.case_id for r in ratings}):
        rs = [r for r in ratings if r.case_id == cid]
        done = [r for r in rs if r.complete]
        n_pref = sum(bool(r.automated_preferred) for r in done)
        rows.append({"case_id": cid, "site": rs[0].site, "n_rated": len(done),
                     "automated_accepted_by": sum(bool(r.automated_acceptable) for r in done),
                     "manual_accepted_by": sum(bool(r.manual_acceptable) for r in done),
                     "automated_preferred_by": n_pref,
                     "identified_by": sum(bool(r.identified) for r in done),
                     "preference_group": preference_group(n_pref, len(done))})
    return rows


def preference_group(n_preferred: int, n_rated: int) -> str:
    """Label for grouping dosimetry by preference: ``automated k/N``; ``incomplete`` when unrated."""
    if n_rated == 0:
        return "unrated"
    return f"automated preferred by {n_preferred}/{n_rated}"


def ratings_rows(ratings: list) -> list:
    """Ratings as flat dicts (CSV export)."""
    return [asdict(r) for r in ratings]
