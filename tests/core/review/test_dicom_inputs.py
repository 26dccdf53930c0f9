"""DICOM inputs: DICOM patient folders and RTDOSE plan sets, for a review study (the
patient copy must drop RTDOSE/RTPLAN, which would reveal the clinical plan) and for
the cohort comparison (RTDOSE found in plan folders, resampled onto the patient)."""

import numpy as np
import pydicom
import pytest

from core.evaluation.cohort import EndpointOptions, compare_plan_sets, parse_metric
from core.review.study import CaseInput, ReviewStudy, create_study
from tests.core.io import dicom_factory as f

Z = np.arange(12) * 2.0          # slices at 0 .. 22 mm
PS, OXY = (2.0, 2.0), (-30.0, -20.0)
FACTOR = 0.9


def _dose():
    # linear in every index: trilinear resampling onto the CT grid keeps it exact, and
    # scaling the RTDOSE by FACTOR scales every resampled voxel by FACTOR
    k, j, i = np.meshgrid(np.arange(10), np.arange(16), np.arange(24), indexing="ij")
    return 20.0 + 1.0 * k + 0.5 * j + 0.25 * i


def _case(folder, shift):
    raw = np.full((len(Z), 24, 30), 1024, np.uint16)
    _, uids = f.make_ct_series(folder, raw, Z, pixel_spacing=PS, origin_xy=OXY)
    rois = [{"name": "BODY", "type": "EXTERNAL", "contours": [f.rect(-28, 28, -18, 24, z) for z in Z]},
            {"name": "PTV60", "type": "PTV", "contours": [f.circle(shift, 0, z, 8) for z in Z if 4 <= z <= 16]},
            {"name": "Cord", "type": "ORGAN", "contours": [f.circle(-15, 15, z, 4) for z in Z]}]
    f.make_rtstruct(folder / "RS.dcm", rois, uids, ct_series_uid=uids["series"])
    f.make_rtdose(folder / "RD.dcm", _dose(), uids, origin_xyz=(-30.0, -20.0, 0.0), spacing=(3.0, 3.0, 2.5))
    f.make_rtplan(folder / "RP.dcm", uids, rx_gy=60.0, fractions=30, roi_number=2)
    return uids


@pytest.fixture(scope="module")
def dicom_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    for n, pid in enumerate(("p1", "p2", "p3")):
        uids = _case(root / "patients" / pid, shift=3.0 * n)
        # set A: ID.dcm RTDOSE files; set B: ID/ folders holding a scaled RTDOSE
        f.make_rtdose(root / "A" / f"{pid}.dcm", _dose(), uids, origin_xyz=(-30.0, -20.0, 0.0),
                      spacing=(3.0, 3.0, 2.5))
        f.make_rtdose(root / "B" / pid / "RD_plan.dcm", _dose() * FACTOR, uids, origin_xyz=(-30.0, -20.0, 0.0),
                      spacing=(3.0, 3.0, 2.5))
    return root


def test_compare_rtdose_plan_sets(dicom_cohort):
    root = dicom_cohort
    opts = EndpointOptions(metrics=tuple(parse_metric(m) for m in ("mean", "max", "D95")))
    res = compare_plan_sets(root / "A", root / "B", root / "patients", opts).overall
    assert res.n_patients == 3 and {e.structure for e in res.endpoints} == {"PTV60", "Cord"}
    for e in res.endpoints:
        np.testing.assert_allclose(e.values_b, np.array(e.values_a) * FACTOR, rtol=1e-4)  # RTDOSE stores 1e-5 Gy steps
        sign = -1 if e.higher_is_better else 1
        assert e.rel_diff_pct == pytest.approx(sign * 100 * (1 - FACTOR), abs=0.01)


def test_review_study_copies_dicom_patients_without_dose(dicom_cohort, tmp_path):
    root = dicom_cohort
    cases = [CaseInput(pid, root / "B" / pid, root / "A" / f"{pid}.dcm", root / "patients" / pid)
             for pid in ("p1", "p2", "p3")]
    with create_study(tmp_path / "study", cases, ["ann"], 1, key_path=tmp_path / "key.sqlite") as st:
        cv = st.cases_for("ann")[0]
        copied = sorted((st.dir / cv.patient).iterdir())
        modalities = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in copied}
        assert modalities == {"CT", "RTSTRUCT"} and len(copied) == len(Z) + 1
        # the plans were resampled onto the patient grid: one is FACTOR x the other
        a, b = (np.load(p)["dose_gy"] for p in (cv.plan_a, cv.plan_b))
        lo, hi = sorted((a, b), key=lambda d: d.sum())
        np.testing.assert_allclose(lo, hi * FACTOR, rtol=1e-4, atol=1e-4)
    with ReviewStudy(tmp_path / "study") as st:
        assert len(st.case_ids()) == 3
