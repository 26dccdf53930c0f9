"""Review benchmark: time between cases in the blinded review window. Prints one JSON document.

    python bench/review.py [--cases 20] [--think 1.0]     # offscreen when there is no DISPLAY

A study is built in a temporary folder from the first ``--cases`` OpenKBP validation
cases (128^3): arm 1 is the clinical dose, arm 2 the same dose scaled by 0.97 (the
dose values do not matter for timing; both are full 128^3 plans). Then:

``load_case_s``
    :func:`core.review.case_data.load_review_case` per case, on this thread: patient
    copy, both plans, DVHs of every structure for both, the goal table.
``switch_s`` (``fast`` and ``paced``)
    In the review window (offscreen, 1600 x 1000), a reviewer answers the four
    statements with keys 1-4 and presses N; the time from the N key to the next case on
    screen (views, DVH, goal table painted) is one switch. ``fast`` presses N as soon as
    the case is shown (the prefetch of the next case may still be running: the worst
    case); ``paced`` waits ``--think`` seconds per case first, as a reader does (the
    next case is then already prefetched). The target is < 2 s per switch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VALIDATION = REPO.parent / "shared" / "data" / "openkbp" / "validation"


def build_study(root: Path, n_cases: int):
    import numpy as np

    from core.io.dosefile import load_dose, save_dose_npz
    from core.io.loader import load_patient
    from core.patient import Dose
    from core.review.study import CaseInput, create_study

    files = sorted(VALIDATION.glob("pt_*.npz"))[:n_cases]
    if not files:
        raise SystemExit(f"no OpenKBP validation cases in {VALIDATION}")
    cases = []
    (root / "arm2").mkdir(parents=True)
    for f in files:
        p = load_patient(f)
        ref = load_dose(f, p)
        scaled = root / "arm2" / f.name
        save_dose_npz(scaled, Dose(ref.dose_gy * np.float32(0.97), p.grid, "scaled"))
        cases.append(CaseInput(f.stem, scaled, f, f, "hn"))
    t = time.perf_counter()
    st = create_study(root / "study", cases, ["bench"], 1, key_path=root / "key.sqlite")
    create_s = time.perf_counter() - t
    st.close()
    return root / "study", create_s


def bench_core(study_dir: Path) -> list:
    from core.review.case_data import load_review_case
    from core.review.study import ReviewStudy

    with ReviewStudy(study_dir, readonly=True) as st:
        cases = st.cases_for("bench")
    out = []
    for cv in cases:
        t = time.perf_counter()
        load_review_case(study_dir, cv, len(cases))
        out.append(time.perf_counter() - t)
    return out


def bench_gui(study_dir: Path, think_s: float) -> dict:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen" if not os.environ.get("DISPLAY") else "xcb")
    import widgets  # noqa: F401
    from PySide6.QtCore import QEventLoop, Qt, QTimer
    from PySide6.QtTest import QTest

    from app.application import ensure_qapp
    from app.controllers.review import open_review

    app = ensure_qapp()
    window, session = open_review(study_dir, "bench", headless=True)
    window.resize(1600, 1000)
    window.show()
    window.activateWindow()
    panel = window.panel

    def wait_for(signal, timeout_ms=60000):
        loop = QEventLoop()
        signal.connect(loop.quit)
        QTimer.singleShot(timeout_ms, loop.quit)
        loop.exec()
        signal.disconnect(loop.quit)

    def pause(s):
        loop = QEventLoop()
        QTimer.singleShot(int(s * 1000), loop.quit)
        loop.exec()

    t = time.perf_counter()
    session.resume()
    wait_for(session.caseShown)
    first_s = time.perf_counter() - t
    fast, paced = [], []
    n = session.n_cases
    for k in range(n - 1):
        mode = fast if k % 2 == 0 else paced
        if mode is paced:
            pause(think_s)
        for key in (Qt.Key.Key_1, Qt.Key.Key_1, Qt.Key.Key_2, Qt.Key.Key_3):
            QTest.keyClick(panel, key)
        t = time.perf_counter()
        QTest.keyClick(panel, Qt.Key.Key_N)
        if session.position != k + 1:
            wait_for(session.caseShown)
        panel.repaint()  # the switch ends when the new case is painted
        for v in panel.viewers.values():
            for sv in v.views.values():
                sv.repaint()
        mode.append(time.perf_counter() - t)
    window.close()
    app.processEvents()
    return {"first_case_s": round(first_s, 3), "fast": fast, "paced": paced, "n_cases": n}


def summary(xs: list) -> dict:
    if not xs:
        return {}
    return {"n": len(xs), "mean": round(statistics.mean(xs), 3), "median": round(statistics.median(xs), 3),
            "max": round(max(xs), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--think", type=float, default=1.0, help="seconds a paced reviewer looks at a case")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="openatp-bench-review-") as tmp:
        study, create_s = build_study(Path(tmp), args.cases)
        core_s = bench_core(study)
        gui = bench_gui(study, args.think)
    all_switch = gui["fast"] + gui["paced"]
    doc = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "qt_platform": os.environ.get("QT_QPA_PLATFORM")},
           "n_cases": args.cases, "grid": "128^3 OpenKBP", "create_study_s": round(create_s, 2),
           "load_case_s": summary(core_s), "first_case_s": gui["first_case_s"],
           "switch_s": {"fast": summary(gui["fast"]), "paced": summary(gui["paced"]),
                        "all": summary(all_switch)},
           "target_s": 2.0, "meets_target": bool(all_switch) and max(all_switch) < 2.0}
    print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
