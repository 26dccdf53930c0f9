"""Review study: randomization, blinding, answers, resume, unblinding, locks and damage."""

import json
import os
import shutil
import sqlite3
import zipfile

import numpy as np
import pytest

from core.errors import InputError
from core.review.aggregate import aggregate, ratings_from_study
from core.review.study import (FIXED_MTIME, CaseInput, ReviewStudy, add_reviewer, assign_orders, create_study,
                               read_sources, unblind)
from tests.core.review.helpers import ARM_NAMES, AUTO_DIR, MANUAL_DIR, make_study

ALL = {"acceptable_a": "agree", "acceptable_b": "agree", "prefer_a": "agree", "generated_a": "agree"}


# -- randomization ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [6, 7, 20])
def test_assignment_balanced_per_reviewer(n):
    ids = [f"c{i}" for i in range(n)]
    for reviewer in ("ann", "bob", "cy", "dee"):
        order, auto_a = assign_orders(3, reviewer, ids)
        assert sorted(order) == sorted(ids)
        assert sum(auto_a.values()) in ({n // 2} if n % 2 == 0 else {n // 2, n // 2 + 1})


def test_assignment_reproducible_per_seed_and_unbiased_across_seeds():
    ids = [f"c{i}" for i in range(20)]
    assert assign_orders(11, "ann", ids) == assign_orders(11, "ann", list(reversed(ids)))
    assert assign_orders(11, "ann", ids) != assign_orders(12, "ann", ids)
    assert assign_orders(11, "ann", ids)[1] != assign_orders(11, "bob", ids)[1]
    # Each case shows the automated plan as A with probability 1/2 over seeds. 2000 draws:
    # sd = sqrt(2000/4) = 22.4; the bound 1000 +- 112 is 5 sd (false alarm ~6e-7).
    hits = np.zeros(5)
    for seed in range(2000):
        _, a = assign_orders(seed, "ann", ids[:5])
        hits += [a[c] for c in ids[:5]]
    assert np.all(np.abs(hits - 1000) < 112), hits


def test_stored_presentation_matches_seeded_assignment(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=7)
    before = {r: [cv.case_id for cv in st.cases_for(r)] for r in st.reviewers()}
    for r in st.reviewers():
        for cv in st.cases_for(r):
            st.save_answers(r, cv.case_id, ALL)
    st.close()
    unblind(study, key)
    with ReviewStudy(study) as st:
        handles = st.automated_handles()
        for r in ("ann", "bob", "cy"):
            order, auto_a = assign_orders(7, r, [f"pt_{i}" for i in range(1, 8)])
            assert before[r] == order  # the order the reviewer sees
            assert all(handles[(r, c)] == ("A" if auto_a[c] else "B") for c in order)


# -- blinding ----------------------------------------------------------------------------------
def _readable_bytes(study):
    """Every byte a reviewer can read in the study folder, npz members decompressed."""
    for p in sorted(study.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        yield p, data
        if p.suffix == ".npz":
            with zipfile.ZipFile(p) as z:
                for name in z.namelist():
                    yield p, name.encode() + z.read(name)


def test_blinding_no_readable_file_or_field_reveals_the_arm(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=8, with_patients=True, sites=["HN"])
    # a reviewer at work: answers in the WAL too
    st.save_answers("ann", st.next_case("ann").case_id, dict(ALL, comment="fine"))
    # not "clinical": the questionnaire itself says "clinically acceptable"
    needles = [ARM_NAMES[0], ARM_NAMES[1], AUTO_DIR, MANUAL_DIR, "automated", "manual",
               str(key), key.name, "dose_cgy"]
    assert not key.resolve().is_relative_to(study.resolve())
    n_files = 0
    for path, data in _readable_bytes(study):
        n_files += 1
        low = data.lower()
        for needle in needles:
            assert needle.lower().encode() not in low, f"{needle} readable in {path}"
    assert n_files >= 8 * 2 + 8 + 1
    # what the screen shows
    for r in st.reviewers():
        shown = repr(st.cases_for(r)) + json.dumps(st.status())
        for needle in needles:
            assert needle.lower() not in shown.lower(), needle
    # plan files: only the dose arrays, one fixed time stamp
    for cv in st.cases_for("ann"):
        for f in (cv.plan_a, cv.plan_b):
            with np.load(f) as z:
                assert sorted(z.files) == ["dose_gy", "origin_mm", "spacing_mm"]
            assert os.stat(f).st_mtime == FIXED_MTIME
    # the key is not in the reviewer database before unblinding
    con = sqlite3.connect(study / "answers.sqlite")
    assert con.execute("SELECT COUNT(*) FROM unblinded").fetchone()[0] == 0
    con.close()
    with pytest.raises(InputError, match="still blinded"):
        st.automated_handles()
    st.close()


def test_plan_row_order_does_not_follow_the_arm(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=40, reviewers=("ann",))
    st.close()
    src = read_sources(key)
    arm_of = {}
    con = sqlite3.connect(key)
    for tok, arm in con.execute("SELECT token, arm FROM sources"):
        arm_of[tok] = arm
    con.close()
    con = sqlite3.connect(study / "answers.sqlite")
    first = {}
    for tok, cid in con.execute("SELECT token, case_id FROM plans ORDER BY rowid"):
        first.setdefault(cid, arm_of[tok])
    con.close()
    n_auto_first = sum(a == "automated" for a in first.values())
    # Binomial(40, 1/2): 20 +- 10 is > 3 sd (false alarm ~1e-3 is too high for CI: use 5..35, ~1e-6)
    assert 5 <= n_auto_first <= 35
    assert len(src) == 80


def test_patient_copy_has_no_dose(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=2, with_patients=True)
    cv = st.cases_for("ann")[0]
    with np.load(study / cv.patient) as z:
        assert "dose_cgy" not in z.files and "ct" in z.files and "possible_dose_mask" in z.files
    st.close()


# -- answers -----------------------------------------------------------------------------------
def test_answers_resume_and_validation(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=3)
    first = st.next_case("bob")
    st.save_answer("bob", first.case_id, "acceptable_a", "Agree")
    st.save_answer("bob", first.case_id, "comment", "PTV coverage a bit low")
    assert st.next_case("bob").case_id == first.case_id  # not complete yet: resume here
    for q, v in ALL.items():
        st.save_answer("bob", first.case_id, q, v)
    st.close()
    with ReviewStudy(study) as st2:  # a new session resumes at the next case in bob's order
        order = [cv.case_id for cv in st2.cases_for("bob")]
        assert st2.next_case("bob").case_id == order[1]
        assert st2.answers_for("bob", first.case_id)["comment"] == "PTV coverage a bit low"
        with pytest.raises(InputError, match="not one of"):
            st2.save_answer("bob", order[1], "prefer_a", "maybe")
        with pytest.raises(InputError, match="no question 'q9'"):
            st2.save_answer("bob", order[1], "q9", "agree")
        with pytest.raises(InputError, match="no reviewer 'eve'"):
            st2.save_answer("eve", order[1], "prefer_a", "agree")
        with pytest.raises(InputError):  # all-or-nothing: a bad value saves nothing of the case
            st2.save_answers("bob", order[1], {"acceptable_a": "agree", "prefer_a": "maybe"})
        assert st2.answers_for("bob", order[1]) == {}


def test_unblind_needs_key_and_completion_then_closes_answering(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=4, reviewers=("ann", "bob"))
    for cv in st.cases_for("ann"):
        st.save_answers("ann", cv.case_id, ALL)
    st.close()
    other_st, other_study, other_key = make_study(tmp_path / "other", n_cases=2)
    other_st.close()
    with pytest.raises(InputError, match="another study"):
        unblind(study, other_key)
    with pytest.raises(InputError, match="bob: 4 case"):
        unblind(study, key)
    info = unblind(study, key, force=True)
    assert info["arm_names"] == {"automated": ARM_NAMES[0], "manual": ARM_NAMES[1]}
    assert info["incomplete"] == {"bob": 4}
    with ReviewStudy(study) as st:
        with pytest.raises(InputError, match="answers are closed"):
            st.save_answer("bob", "pt_1", "prefer_a", "agree")
        # a reviewer answering "Plan A was generated automatically: agree" every time is right
        # exactly when the automated plan was A: half of the cases by the balanced design.
        res = aggregate(ratings_from_study(st), ["ann"])
        assert res["identification"]["k"] == 2 and res["identification"]["n"] == 4


def test_add_reviewer_and_bad_create_input(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=4, reviewers=("ann",))
    st.close()
    add_reviewer(study, "dan", key)
    with ReviewStudy(study) as st:
        assert st.reviewers() == ["ann", "dan"] and len(st.cases_for("dan")) == 4
    with pytest.raises(InputError, match="not empty"):
        make_study(tmp_path, n_cases=2)
    with pytest.raises(InputError, match="unknown questionnaire version 'v9'"):
        make_study(tmp_path / "q", n_cases=2, questionnaire="v9")
    assert not (tmp_path / "q" / "study").exists()
    with pytest.raises(InputError, match="reviewer names repeat"):
        make_study(tmp_path / "r", n_cases=2, reviewers=("ann", "ann"))
    src = tmp_path / AUTO_DIR / "pt_1.npz"
    with pytest.raises(InputError, match="key must be kept outside the study folder"):
        create_study(tmp_path / "k" / "study", [CaseInput("pt_1", src, src)], ["ann"], 1,
                     key_path=tmp_path / "k" / "study" / "sub" / "key.sqlite")
    assert not (tmp_path / "k" / "study").exists()


# -- locks and damage ----------------------------------------------------------------------------
def test_locked_study_file_gives_clear_error_and_keeps_answers(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=2)
    c = st.next_case("ann").case_id
    st.save_answer("ann", c, "acceptable_a", "agree")
    st.close()
    other = sqlite3.connect(study / "answers.sqlite", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another reviewer's session holds the write lock
    try:
        with ReviewStudy(study, busy_timeout_ms=100) as st:
            with pytest.raises(InputError, match="locked by another reviewer") as exc:
                st.save_answer("ann", c, "acceptable_b", "agree")
            assert "answers.sqlite" in str(exc.value)
            assert st.answers_for("ann", c) == {"acceptable_a": "agree"}  # reading still works
    finally:
        other.execute("ROLLBACK")
        other.close()
    with ReviewStudy(study) as st:
        st.save_answer("ann", c, "acceptable_b", "agree")
        assert st.answers_for("ann", c) == {"acceptable_a": "agree", "acceptable_b": "agree"}


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_study_file_is_a_clear_error(tmp_path, damage):
    st, study, key = make_study(tmp_path, n_cases=3)
    for cv in st.cases_for("ann"):
        st.save_answers("ann", cv.case_id, ALL)
    st.close()
    f = study / "answers.sqlite"
    backup = tmp_path / "backup.sqlite"
    shutil.copyfile(f, backup)
    data = f.read_bytes()
    f.write_bytes(b"not a database at all" * 100 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(InputError, match="damaged|integrity") as exc:
        with ReviewStudy(study) as st:
            st.status()
    assert str(f) in str(exc.value)


def test_unknown_stored_questionnaire_format_is_refused(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=2)
    st.close()
    con = sqlite3.connect(study / "answers.sqlite")
    q = json.loads(con.execute("SELECT value FROM meta WHERE key='questionnaire'").fetchone()[0])
    q["format"] = 2
    con.execute("UPDATE meta SET value=? WHERE key='questionnaire'", (json.dumps(q),))
    con.commit()
    con.close()
    with pytest.raises(InputError, match="unknown questionnaire format 2"):
        ReviewStudy(study)
