"""Plan copies in a study: file sizes say nothing about the arm; both plans share a grid;
the review screen's case data carries no source."""

import os

import numpy as np
import pytest

from core.errors import InputError
from core.review.case_data import load_review_case
from core.review.study import CaseInput, ReviewStudy, create_study, read_sources


def _dose(path, dose, spacing=(2.0, 2.0, 2.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, dose_gy=dose.astype(np.float32), spacing_mm=np.array(spacing),
                        origin_mm=np.zeros(3))


def test_plan_file_sizes_are_equal_whatever_the_source_compression(tmp_path):
    # The arms compress very differently: a smooth dose in whole cGy (like a clinical
    # OpenKBP dose) and the same dose with float noise (like a predicted or optimised
    # one); stored compressed, the noisy plan's file was ~3x larger on every case.
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.arange(n) for n in (20, 24, 28)], indexing="ij")
    smooth = np.round(70.0 * np.exp(-((z - 10) ** 2 + (y - 12) ** 2 + (x - 14) ** 2) / 60.0), 2)
    cases = []
    for i in range(4):
        auto, manual = tmp_path / "a" / f"p{i}.npz", tmp_path / "m" / f"p{i}.npz"
        _dose(auto, smooth + rng.normal(0, 0.3, smooth.shape))
        _dose(manual, smooth)
        cases.append(CaseInput(f"p{i}", auto, manual))
    src_sizes = {os.path.getsize(c.plan_automated) / os.path.getsize(c.plan_manual) for c in cases}
    assert min(src_sizes) > 1.5  # the sources do differ a lot
    st = create_study(tmp_path / "study", cases, ["ann"], 3, key_path=tmp_path / "key.sqlite")
    st.close()
    sizes = {os.path.getsize(p) for p in (tmp_path / "study" / "plans").glob("*.npz")}
    assert len(sizes) == 1, sizes
    # and the copies hold the source doses (float32), unchanged
    src = read_sources(tmp_path / "key.sqlite")
    with ReviewStudy(tmp_path / "study") as st:
        for cv in st.cases_for("ann"):
            for f in (cv.plan_a, cv.plan_b):
                tok = f.stem
                with np.load(f) as zf:
                    copy = zf["dose_gy"]
                match = [s for (cid, arm), s in src.items() if cid == cv.case_id]
                originals = [np.load(s)["dose_gy"] for s in match]
                assert any(np.array_equal(copy, o) for o in originals), tok


def test_plans_on_different_grids_are_refused(tmp_path):
    a, m = tmp_path / "a" / "p1.npz", tmp_path / "m" / "p1.npz"
    _dose(a, np.ones((4, 5, 6)))
    _dose(m, np.ones((4, 5, 6)), spacing=(2.5, 2.5, 2.5))
    with pytest.raises(InputError, match=r"case p1: the two plans are on different dose grids"):
        create_study(tmp_path / "study", [CaseInput("p1", a, m)], ["ann"], 1, key_path=tmp_path / "key.sqlite")
    assert not (tmp_path / "study").exists() and not (tmp_path / "key.sqlite").exists()


def test_case_data_without_patient_names_no_source(tmp_path):
    a, m = tmp_path / "AUTO_SRC_x" / "p1.npz", tmp_path / "MAN_SRC_y" / "p1.npz"
    _dose(a, np.full((4, 5, 6), 60.0))
    _dose(m, np.full((4, 5, 6), 50.0))
    st = create_study(tmp_path / "study", [CaseInput("p1", a, m)], ["ann"], 1, key_path=tmp_path / "key.sqlite")
    cv = st.cases_for("ann")[0]
    st.close()
    data = load_review_case(tmp_path / "study", cv, 1)
    assert sorted(data.doses_gy) == ["A", "B"]
    assert sorted(float(d.max()) for d in data.doses_gy.values()) == [50.0, 60.0]
    # one reference for both sides: with no prescription, the higher maximum
    assert data.reference_gy == 60.0 and data.goals == [] and data.goal_source == "none"
    texts = [v for v in vars(data).values() if isinstance(v, str)]
    assert texts and not any("SRC" in t or ".npz" in t or "plans" in t for t in texts), texts
