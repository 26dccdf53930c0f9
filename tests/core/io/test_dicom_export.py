"""DICOM export -> re-import gives the same arrays and geometry."""

import numpy as np
import pydicom
import pytest

from core.errors import InputError
from core.geometry import OPENKBP_AXES, Grid
from core.io.dicom_export import (dose_grid_scaling, export_ct_series, export_rtdose, export_rtstruct,
                                  to_dicom_order)
from core.io.dicom_import import load_dicom_folder
from core.patient import CtImage, Dose, Patient, Structure, StructureRole
from tests.core.io.test_dicom_import import build_case


def _export_all(p, folder):
    ct_files = export_ct_series(p, folder)
    export_rtstruct(p, folder / "RS.dcm")
    export_rtdose(p.doses["reference"], p, folder / "RD.dcm")
    return ct_files


def _max_scaling_error(dose_gy):
    return 0.5 * dose_grid_scaling(float(dose_gy.max())) * (1 + 1e-6)


def test_dicom_round_trip_is_exact(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    build_case(src)
    p = load_dicom_folder(src)
    out = tmp_path / "out"
    _export_all(p, out)
    q = load_dicom_folder(out)
    assert q.grid.same_as(p.grid, tol_mm=1e-6) and q.grid.axes == p.grid.axes
    assert q.ct.hu.dtype == np.int16
    np.testing.assert_array_equal(q.ct.hu, p.ct.hu)
    assert set(q.structures) == set(p.structures)
    for name, s in p.structures.items():
        t = q.structures[name]
        np.testing.assert_array_equal(t.mask, s.mask, err_msg=name)
        assert (t.role, t.color, t.has_contours) == (s.role, s.color, s.has_contours), name
    d0, d1 = p.doses["reference"].dose_gy, q.doses["reference"].dose_gy
    assert np.max(np.abs(d1 - d0)) <= _max_scaling_error(d0) + 1e-6 * d0.max()  # float32 storage
    assert q.dicom["frame_of_reference_uid"] == p.dicom["frame_of_reference_uid"]


def test_references_and_uids(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    build_case(src, dose=False, plan=False)
    p = load_dicom_folder(src)
    original_ct = set(p.dicom["ct_sop_instance_uids"])
    out = tmp_path / "out"
    ct_files = export_ct_series(p, out)
    export_rtstruct(p, out / "RS.dcm")
    export_rtdose(Dose(np.full(p.grid.shape, 1.5, np.float32), p.grid), p, out / "RD.dcm")
    cts = [pydicom.dcmread(f) for f in ct_files]
    rs = pydicom.dcmread(out / "RS.dcm")
    rd = pydicom.dcmread(out / "RD.dcm")
    for_uid = cts[0].FrameOfReferenceUID
    assert {c.FrameOfReferenceUID for c in cts} == {for_uid} and rd.FrameOfReferenceUID == for_uid
    assert len({c.SeriesInstanceUID for c in cts}) == 1
    fr = rs.ReferencedFrameOfReferenceSequence[0]
    assert fr.FrameOfReferenceUID == for_uid
    se = fr.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert se.SeriesInstanceUID == cts[0].SeriesInstanceUID
    assert [c.ReferencedSOPInstanceUID for c in se.ContourImageSequence] == [c.SOPInstanceUID for c in cts]
    # the written CT is a new object (new UIDs) in the original frame of reference
    assert original_ct.isdisjoint(c.SOPInstanceUID for c in cts)
    assert for_uid == pydicom.dcmread(next(src.glob("IMG*.dcm"))).FrameOfReferenceUID
    uids = [c.SOPInstanceUID for c in cts] + [rs.SOPInstanceUID, rd.SOPInstanceUID, for_uid]
    assert all(pydicom.uid.UID(u).is_valid for u in uids) and len(set(uids)) == len(uids)
    # every contour references the CT slice at its own z
    by_uid = {c.SOPInstanceUID: float(c.ImagePositionPatient[2]) for c in cts}
    for rc in rs.ROIContourSequence:
        for c in rc.get("ContourSequence", []):
            assert by_uid[c.ContourImageSequence[0].ReferencedSOPInstanceUID] == pytest.approx(float(c.ContourData[2]))
    assert float(rd.DoseGridScaling) == dose_grid_scaling(1.5)
    assert rd.pixel_array.max() * float(rd.DoseGridScaling) == pytest.approx(1.5, rel=1e-9)


@pytest.mark.parametrize("axes", [("+y", "+x", "-z"), ("-z", "+x", "-y"), ("+x", "-y", "+z"), ("+z", "+y", "+x")])
def test_to_dicom_order_keeps_every_voxel_in_place(axes):
    g = Grid((4, 5, 6), (1.5, 2.0, 2.5), (10.0, -20.0, 30.0), axes)
    v = np.arange(g.size).reshape(g.shape)
    vd, gd = to_dicom_order(v, g)
    assert gd.axes == ("+z", "+y", "+x")
    idx = np.argwhere(np.ones(g.shape, bool))
    di = np.rint(gd.patient_to_index(g.index_to_patient(idx))).astype(int)
    np.testing.assert_array_equal(vd[tuple(di.T)], v[tuple(idx.T)])  # same value at the same place
    assert sorted(vd.shape) == sorted(g.shape)


def _phantom_in_openkbp_axes():
    """A patient on a (y, x, -z) grid like OpenKBP's, with structures that have holes."""
    g = Grid((30, 26, 12), (3.9, 3.7, 2.5), (-60.0, -45.0, 20.0), OPENKBP_AXES)
    a0, a1, a2 = np.indices(g.shape)
    hu = (a0 * 7 - a1 * 3 + a2 * 11 - 500).astype(np.int16)  # every voxel distinct in its row
    body = (np.abs(a0 - 15) < 13) & (np.abs(a1 - 13) < 11)
    ring = ((a0 - 15) ** 2 + (a1 - 13) ** 2 < 64) & ((a0 - 15) ** 2 + (a1 - 13) ** 2 >= 9) & (a2 > 2) & (a2 < 9)
    islands = ((np.abs(a0 - 5) < 2) | (np.abs(a0 - 25) < 2)) & (np.abs(a1 - 20) < 2) & (a2 % 2 == 0)
    dose = (40.0 + 0.3 * a0 + 0.2 * a1 - 0.5 * a2).astype(np.float32) * body
    p = Patient("kbp-like", g, CtImage(hu, g))
    p.add_structure(Structure("BODY", body, StructureRole.EXTERNAL, (0, 255, 0)))
    p.add_structure(Structure("PTV70", ring, StructureRole.TARGET, (255, 0, 0)))
    p.add_structure(Structure("Parotid_L", islands, StructureRole.OAR, (0, 0, 255)))
    p.add_structure(Structure("opt_empty", np.zeros(g.shape, bool), StructureRole.HELPER, (9, 9, 9),
                              has_contours=False))
    p.doses["reference"] = Dose(dose, g, "reference")
    return p


def test_openkbp_axes_export_reimports_in_dicom_order(tmp_path):
    p = _phantom_in_openkbp_axes()
    _export_all(p, tmp_path)
    q = load_dicom_folder(tmp_path)
    assert q.grid.axes == ("+z", "+y", "+x")
    hu_d, g_d = to_dicom_order(p.ct.hu, p.grid)
    assert q.grid.same_as(g_d, tol_mm=1e-6)
    np.testing.assert_array_equal(q.ct.hu, hu_d)
    for name, s in p.structures.items():
        np.testing.assert_array_equal(q.structures[name].mask, to_dicom_order(s.mask, p.grid)[0], err_msg=name)
        assert q.structures[name].role is s.role
    d_d = to_dicom_order(p.doses["reference"].dose_gy, p.grid)[0]
    assert np.max(np.abs(q.doses["reference"].dose_gy - d_d)) < 1e-5
    # Independent of to_dicom_order: a voxel's patient position maps to the re-imported
    # voxel holding the same HU value.
    idx = np.argwhere(np.ones(p.grid.shape, bool))[::37]
    xyz = p.grid.index_to_patient(idx)
    qidx = q.grid.patient_to_index(xyz)
    np.testing.assert_allclose(qidx, np.rint(qidx), atol=1e-6)
    qi = np.rint(qidx).astype(int)
    np.testing.assert_array_equal(q.ct.hu[tuple(qi.T)], p.ct.hu[tuple(idx.T)])
    np.testing.assert_allclose(q.grid.index_to_patient(qi), xyz, atol=1e-6)


def test_real_openkbp_case_round_trip(tmp_path, openkbp_dir):
    from core.io.openkbp import load_openkbp

    case = sorted((openkbp_dir / "validation").glob("pt_*.npz"))[0]
    p = load_openkbp(case)
    _export_all(p, tmp_path)
    q = load_dicom_folder(tmp_path)
    np.testing.assert_array_equal(q.ct.hu, to_dicom_order(p.ct.hu, p.grid)[0])
    for name, s in p.structures.items():
        np.testing.assert_array_equal(q.structures[name].mask, to_dicom_order(s.mask, p.grid)[0], err_msg=name)
    d0 = to_dicom_order(p.doses["reference"].dose_gy, p.grid)[0]
    assert np.max(np.abs(q.doses["reference"].dose_gy - d0)) <= _max_scaling_error(d0) + 1e-5


def test_uids_consistent_in_any_export_order(tmp_path):
    p = _phantom_in_openkbp_axes()
    export_rtstruct(p, tmp_path / "RS.dcm")  # before the CT: creates the CT UIDs it references
    ct_files = export_ct_series(p, tmp_path)
    rs = pydicom.dcmread(tmp_path / "RS.dcm")
    refs = rs.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert [c.ReferencedSOPInstanceUID for c in refs.ContourImageSequence] == \
        [pydicom.dcmread(f).SOPInstanceUID for f in ct_files]


def test_float_hu_round_trip_within_slope(tmp_path):
    g = Grid((3, 8, 9), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    hu = np.random.default_rng(3).uniform(-1000, 2000, g.shape).astype(np.float32)
    p = Patient("f", g, CtImage(hu, g))
    files = export_ct_series(p, tmp_path)
    slope = float(pydicom.dcmread(files[0]).RescaleSlope)
    q = load_dicom_folder(tmp_path)
    assert q.ct.hu.dtype == np.float32
    np.testing.assert_allclose(q.ct.hu, hu, atol=0.5 * slope + 1e-3)


def test_export_refuses_bad_input(tmp_path):
    g = Grid((2, 4, 4), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    p = Patient("x", g)
    with pytest.raises(InputError, match="no CT"):
        export_ct_series(p, tmp_path)
    with pytest.raises(InputError, match="negative"):
        export_rtdose(Dose(np.full(g.shape, -1.0, np.float32), g), p, tmp_path / "RD.dcm")
