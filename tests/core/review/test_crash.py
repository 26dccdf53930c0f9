"""Answers survive a reviewer process killed (SIGKILL) in the middle of saving."""

import os
import signal
import subprocess
import sys

from core.review.study import ReviewStudy
from tests.conftest import REPO
from tests.core.review.helpers import make_study

WRITER = r"""
import sys
sys.path.insert(0, sys.argv[2])
from core.review.study import ReviewStudy
st = ReviewStudy(sys.argv[1])
cases = st.case_ids()
qs = ("acceptable_a", "acceptable_b", "prefer_a", "generated_a", "comment")
i = 0
while True:
    for c in cases:
        for q in qs:
            v = f"comment {i}" if q == "comment" else ("agree", "disagree", "cannot_judge")[i % 3]
            st.save_answer("ann", c, q, v)
            print(i, c, q, v, flush=True)  # printed only after the commit returned
            i += 1
"""

N_SEEN = 150


def test_answers_survive_sigkill_mid_write(tmp_path):
    st, study, key = make_study(tmp_path, n_cases=4, reviewers=("ann", "bob"))
    st.save_answer("bob", "pt_1", "comment", "bob's earlier answer")
    st.close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(study), str(REPO)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.split(" ", 3))
            if len(seen) >= N_SEEN:
                break
        assert len(seen) >= N_SEEN, proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)  # while it is writing the next answers
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with ReviewStudy(study) as st:  # opens: integrity check passes
        log = st.store.query("SELECT id, case_id, question_id, value FROM answer_log WHERE reviewer='ann' "
                             "ORDER BY id")
        # every answer reported as saved is there, in order (at most the one in flight beyond)
        assert len(log) >= N_SEEN
        for (i, c, q, v), (_, lc, lq, lv) in zip(seen, log):
            assert (c, q, v.rstrip("\n")) == (lc, lq, lv)
        # the current answers are the last logged value of each question
        last = {}
        for _, c, q, v in log:
            last[(c, q)] = v
        for (c, q), v in last.items():
            assert st.answers_for("ann", c)[q] == v
        assert st.answers_for("bob", "pt_1") == {"comment": "bob's earlier answer"}
        assert st.store.query("PRAGMA integrity_check")[0][0] == "ok"


FINITE_WRITER = r"""
import sys
sys.path.insert(0, sys.argv[2])
from core.review.study import ReviewStudy
st = ReviewStudy(sys.argv[1])
reviewer, n = sys.argv[3], int(sys.argv[4])
cases = st.case_ids()
for i in range(n):
    st.save_answer(reviewer, cases[i % len(cases)], "comment", f"{reviewer} {i}")
"""


def test_two_reviewers_saving_at_the_same_time_lose_nothing(tmp_path):
    # WAL + busy_timeout: concurrent writers queue for the lock instead of failing
    st, study, key = make_study(tmp_path, n_cases=3, reviewers=("ann", "bob"))
    st.close()
    n = 60
    procs = [subprocess.Popen([sys.executable, "-c", FINITE_WRITER, str(study), str(REPO), r, str(n)],
                              stderr=subprocess.PIPE, text=True) for r in ("ann", "bob")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with ReviewStudy(study) as st:
        for r in ("ann", "bob"):
            rows = st.store.query("SELECT value FROM answer_log WHERE reviewer = ? ORDER BY id", (r,))
            assert [v for (v,) in rows] == [f"{r} {i}" for i in range(n)]
