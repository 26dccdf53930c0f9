"""DICOM-RT import: RT data sets built in the test (tests/core/io/dicom_factory.py) and
pydicom's bundled RT files."""

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from core.errors import Cancelled, DicomError, InputError
from core.geometry import Grid
from core.io.dicom_import import (dose_from_target_name, load_dicom_folder, prescriptions_from_names,
                                  read_rtdose, read_rtplan)
from core.progress import CancelToken, Progress
from core.patient import StructureRole
from tests.core.io import dicom_factory as f

NZ, NY, NX = 40, 64, 64
Z = np.arange(NZ) * 2.0 - 10.0          # slices at -10 .. 68 mm
PS = (2.0, 1.5)                          # row spacing (y), column spacing (x): unequal on purpose
OXY = (-50.0, -40.0)                     # x: -50 .. 44.5, y: -40 .. 86
R_SPHERE, C_SPHERE = 20.0, (0.0, 20.0, 30.0)
R_CYL, C_CYL, Z_CYL = 12.0, (-22.0, 50.0), (6.0, 24.0)   # cylinder contours on z = 6 .. 24


def sphere_contours(n=180):
    cx, cy, cz = C_SPHERE
    return [f.circle(cx, cy, z, np.sqrt(R_SPHERE**2 - (z - cz) ** 2), n) for z in Z if abs(z - cz) < R_SPHERE]


def cylinder_contours(n=180):
    return [f.circle(C_CYL[0], C_CYL[1], z, R_CYL, n, clockwise=True) for z in Z if Z_CYL[0] <= z <= Z_CYL[1]]


def ct_raw():
    # stored value encodes the slice index, so the sort order is visible in the HU
    raw = np.zeros((NZ, NY, NX), np.uint16)
    raw[:] = (np.arange(NZ) * 10 + 24)[:, None, None]
    raw[:, :, :5] = 1000
    return raw


def body_contours():
    return [f.rect(-45, 40, -35, 80, z) for z in Z]


def standard_rois():
    return [{"name": "BODY", "contours": body_contours(), "type": "EXTERNAL", "color": (0, 255, 0)},
            {"name": "PTV60", "contours": sphere_contours(), "type": "PTV", "color": (255, 0, 0)},
            {"name": "Cord", "contours": cylinder_contours(), "type": "ORGAN", "color": (0, 0, 255)},
            {"name": "Empty", "contours": []},
            {"name": "Iso", "contours": [("POINT", (0.0, 20.0, 30.0))], "type": "ISOCENTER"}]


def build_case(folder, *, shuffle=True, dose=True, plan=True, rois=None, z=Z, slope=1.0, intercept=-1024.0):
    raw = ct_raw()[: len(z)]
    n = len(z)
    names = instance = None
    if shuffle:
        rng = np.random.default_rng(42)
        names = [f"IMG{v:04d}.dcm" for v in rng.permutation(n)]
        instance = list(rng.permutation(n) + 1)
    _, uids = f.make_ct_series(folder, raw, z, pixel_spacing=PS, origin_xy=OXY, names=names,
                               instance_numbers=instance, slope=slope, intercept=intercept)
    f.make_rtstruct(folder / "RS.dcm", standard_rois() if rois is None else rois, uids, ct_series_uid=uids["series"])
    if dose:
        f.make_rtdose(folder / "RD.dcm", dose_field(), uids, origin_xyz=(-30.0, -10.0, 0.0), spacing=(3.0, 3.0, 2.5))
    if plan:
        f.make_rtplan(folder / "RP.dcm", uids, rx_gy=60.0, fractions=30, roi_number=2)
    return uids


def dose_field():
    # linear in every index: trilinear resampling reproduces it exactly inside the grid
    k, j, i = np.meshgrid(np.arange(16), np.arange(20), np.arange(24), indexing="ij")
    return (10.0 + 1.0 * k + 0.5 * j + 0.25 * i).astype(np.float64)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("case")
    uids = build_case(folder)
    return folder, uids, load_dicom_folder(folder)


# -- CT ------------------------------------------------------------------------------------
def test_ct_sorted_by_position_not_name_or_instance_number(case):
    _, uids, p = case
    hu = p.ct.hu
    assert hu.dtype == np.int16
    np.testing.assert_array_equal(hu[:, 10, 10], np.arange(NZ) * 10 + 24 - 1024)
    assert p.grid.axes == ("+z", "+y", "+x")
    assert p.grid.shape == (NZ, NY, NX)
    np.testing.assert_allclose(p.grid.spacing_mm, (2.0, 2.0, 1.5))
    np.testing.assert_allclose(p.grid.origin_mm, (-10.0, -40.0, -50.0))
    # voxel [k, r, c] lies at x = -50 + 1.5 c, y = -40 + 2 r, z = -10 + 2 k
    np.testing.assert_allclose(p.grid.index_to_patient([3, 5, 7]), [[-50 + 10.5, -40 + 10, -4.0]])
    assert p.dicom["frame_of_reference_uid"] == uids["for"]
    assert p.dicom["ct_series_instance_uid"] == uids["series"]


@pytest.mark.parametrize("slope,intercept,dtype", [(2.0, -1000.0, np.int16), (0.5, -1024.5, np.float32)])
def test_rescale_slope_intercept(tmp_path, slope, intercept, dtype):
    raw = ct_raw()[:3]
    f.make_ct_series(tmp_path, raw, Z[:3], slope=slope, intercept=intercept)
    p = load_dicom_folder(tmp_path)
    assert p.ct.hu.dtype == dtype
    np.testing.assert_allclose(p.ct.hu, raw.astype(np.float64) * slope + intercept, rtol=0, atol=1e-3)


def test_flipped_row_direction_becomes_negative_axis(tmp_path):
    # Rows run toward patient right (-x): IPP x is the largest x; no pixel is moved.
    raw = ct_raw()[:4]
    f.make_ct_series(tmp_path, raw, Z[:4], iop=(-1, 0, 0, 0, 1, 0), origin_xy=(44.5, -40.0), pixel_spacing=PS)
    p = load_dicom_folder(tmp_path)
    assert p.grid.axes == ("+z", "+y", "-x")
    np.testing.assert_allclose(p.grid.index_to_patient([0, 0, 0]), [[44.5, -40.0, -10.0]])
    np.testing.assert_allclose(p.grid.index_to_patient([0, 0, 63]), [[44.5 - 63 * 1.5, -40.0, -10.0]])


def test_missing_slice_is_an_error_naming_the_gap(tmp_path):
    z = np.delete(Z, 17)  # z = 24 mm missing
    build_case(tmp_path, z=z, dose=False, plan=False, rois=[])
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    msg = str(ei.value)
    assert str(tmp_path) in msg and "22.00 and 26.00" in msg and "1 slice(s)" in msg


def test_uneven_spacing_is_resampled_with_a_warning(tmp_path):
    z = np.concatenate([np.arange(0, 10, 2.0), 10 + np.arange(0, 12, 3.0)])  # 2 mm then 3 mm steps
    f.make_ct_series(tmp_path, ct_raw()[: len(z)], z)
    p = load_dicom_folder(tmp_path)
    assert any("unevenly spaced" in w for w in p.warnings)
    assert p.ct.hu.dtype == np.float32
    zc = p.grid.axis_coords_mm(0)
    assert zc[0] == 0.0 and zc[-1] == pytest.approx(19.0)
    # stored value is 10 * index + 24: linear interpolation in z between the original slices
    orig = (np.arange(len(z)) * 10 + 24 - 1024).astype(float)
    np.testing.assert_allclose(p.ct.hu[:, 10, 10], np.interp(zc, z, orig), atol=1e-3)


def test_structures_on_a_resampled_ct_have_no_holes(tmp_path):
    # 2 mm slices then 3 mm slices, a ROI drawn on every original slice: after resampling
    # to 2 mm every new slice inside the ROI's extent must hold it.
    z = np.concatenate([np.arange(0, 10, 2.0), 10 + np.arange(0, 15, 3.0)])
    _, uids = f.make_ct_series(tmp_path, ct_raw()[: len(z)], z, pixel_spacing=PS, origin_xy=OXY)
    f.make_rtstruct(tmp_path / "RS.dcm", [{"name": "Col", "contours": [f.rect(-10, 10, 0, 20, v) for v in z]}], uids)
    p = load_dicom_folder(tmp_path)
    filled = p.structure("Col").mask.any(axis=(1, 2))
    assert filled.all(), p.grid.axis_coords_mm(0)[~filled]


def test_mixed_series_error_names_them(tmp_path):
    _, u1 = f.make_ct_series(tmp_path, ct_raw()[:3], Z[:3], names=["a1.dcm", "a2.dcm", "a3.dcm"])
    _, u2 = f.make_ct_series(tmp_path, ct_raw()[:2], Z[:2], names=["b1.dcm", "b2.dcm"],
                             uids={**u1, "series": pydicom.uid.generate_uid()})
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    msg = str(ei.value)
    assert "2 CT series" in msg and u1["series"] in msg and u2["series"] in msg


def test_oblique_orientation_is_an_error(tmp_path):
    c, s = np.cos(0.2), np.sin(0.2)
    f.make_ct_series(tmp_path, ct_raw()[:3], Z[:3], iop=(c, s, 0, -s, c, 0))
    with pytest.raises(DicomError, match="oblique"):
        load_dicom_folder(tmp_path)


# -- structures ----------------------------------------------------------------------------
def _centres():
    return np.meshgrid(Z, -40 + 2.0 * np.arange(NY), -50 + 1.5 * np.arange(NX), indexing="ij")


def test_sphere_and_cylinder_masks_are_the_analytic_voxel_centres(case):
    # Voxel-centre rule: the mask must be exactly the voxels whose centre lies inside the
    # analytic shape, except centres closer to the surface than the 180-gon's chord
    # error (r (1 - cos(pi/180)) < 0.0031 mm), which may fall either way.
    _, _, p = case
    z, y, x = _centres()
    cx, cy, cz = C_SPHERE
    d = np.hypot(x - cx, y - cy)
    r_slice = np.sqrt(np.maximum(R_SPHERE**2 - (z - cz) ** 2, 0))
    sure = np.abs(d - r_slice) > 0.0031 + 1e-9
    inside = (d < r_slice) & (np.abs(z - cz) < R_SPHERE)
    m = p.structure("PTV60").mask
    assert (m[sure] == inside[sure]).all() and sure.mean() > 0.999
    dc = np.hypot(x - C_CYL[0], y - C_CYL[1])
    sure = np.abs(dc - R_CYL) > 0.0019
    inside = (dc < R_CYL) & (z >= Z_CYL[0]) & (z <= Z_CYL[1])
    m = p.structure("Cord").mask
    assert (m[sure] == inside[sure]).all()


def test_sphere_and_cylinder_volumes_within_2_percent(case):
    # What remains is sampling: counting 2 x 1.5 x 2 mm voxel centres inside a 20 mm
    # sphere is 1.3 % low here, inside a 12 mm circle repeated on every plane 1.9 % low
    # (lattice-point counts of a circle scatter by about perimeter x pixel / area).
    # 2 % is the bound the project set for contour import.
    _, _, p = case
    v_sphere = 4 / 3 * np.pi * R_SPHERE**3 / 1000
    assert p.structure("PTV60").volume_cc(p.grid) == pytest.approx(v_sphere, rel=0.02)
    # The cylinder's contours sit on 10 planes 2 mm apart, each standing for a 2 mm slab:
    # an analytic cylinder of length 10 x 2 mm.
    n_planes = int(np.sum((Z >= Z_CYL[0]) & (Z <= Z_CYL[1])))
    v_cyl = np.pi * R_CYL**2 * n_planes * 2.0 / 1000
    assert p.structure("Cord").volume_cc(p.grid) == pytest.approx(v_cyl, rel=0.02)


def test_body_rectangle_is_exact(case):
    # Rectangle x -45..40, y -35..80: voxel centres x = -50 + 1.5 c, y = -40 + 2 r strictly
    # inside (no centre lies on an edge for these numbers).
    _, _, p = case
    c = -50 + 1.5 * np.arange(NX)
    r = -40 + 2.0 * np.arange(NY)
    expect2d = ((r > -35) & (r < 80))[:, None] & ((c > -45) & (c < 40))[None, :]
    body = p.structure("BODY").mask
    assert (body == expect2d[None]).all()


def test_roles_colors_empty_and_point_rois(case):
    _, _, p = case
    assert p.structure("BODY").role is StructureRole.EXTERNAL
    assert p.structure("PTV60").role is StructureRole.TARGET
    assert p.structure("Cord").role is StructureRole.OAR
    assert p.structure("Cord").color == (0, 0, 255)
    empty = p.structure("Empty")
    assert not empty.has_contours and empty.is_empty
    assert any("'Empty' has no contour data" in w for w in p.warnings)
    assert "Iso" not in p.structures and p.dicom["roi_points"]["Iso"] == [[0.0, 20.0, 30.0]]


def test_ring_with_hole_and_two_islands_on_one_slice(tmp_path):
    z0 = Z[10]
    # edges chosen so that no voxel centre lies on them (a centre on an edge is a tie)
    rois = [{"name": "Ring", "contours": [f.circle(0, 20, z0, 15.3, 360), f.circle(0, 20, z0, 7.3, 360),
                                          f.rect(-40.2, -30.2, 61, 71, z0), f.rect(25.2, 35.2, 61, 71, z0)]}]
    build_case(tmp_path, dose=False, plan=False, rois=rois)
    p = load_dicom_folder(tmp_path)
    m = p.structure("Ring").mask
    assert m[[k for k in range(NZ) if k != 10]].sum() == 0
    x = -50 + 1.5 * np.arange(NX)[None, :]
    y = -40 + 2.0 * np.arange(NY)[:, None]
    d = np.hypot(x - 0, y - 20)
    ring = (d > 7.3) & (d < 15.3)
    islands = ((x > -40.2) & (x < -30.2) | (x > 25.2) & (x < 35.2)) & (y > 61) & (y < 71)
    # a 360-gon lies within 0.0012 mm of its circle: ignore centres closer than that
    certain = (np.abs(d - 7.3) > 2e-3) & (np.abs(d - 15.3) > 2e-3)
    assert (m[10][certain] == (ring | islands)[certain]).all()
    assert m[10][islands].all() and islands.sum() > 20


def test_non_axial_contour_is_ignored_with_a_warning(tmp_path):
    sagittal = np.array([[0.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 20.0, 20.0], [0.0, 0.0, 20.0]])
    rois = [{"name": "Sag", "contours": [sagittal, f.rect(-5, 5, 0, 10, Z[10])]}]
    build_case(tmp_path, dose=False, plan=False, rois=rois)
    p = load_dicom_folder(tmp_path)
    assert any("'Sag'" in w and "1 contour(s) not drawn on an axial plane" in w for w in p.warnings)
    assert p.structure("Sag").mask.any(axis=(1, 2)).nonzero()[0].tolist() == [10]


def test_contour_entirely_outside_is_an_error_naming_the_roi(tmp_path):
    rois = [{"name": "Far", "contours": [f.circle(0, 0, 500.0, 10)]}]
    build_case(tmp_path, dose=False, plan=False, rois=rois)
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert "'Far'" in str(ei.value) and "RS.dcm" in str(ei.value)


def test_contour_partly_outside_is_clipped_with_a_warning(tmp_path):
    rois = [{"name": "Edge", "contours": [f.rect(30, 60, 0, 10, z) for z in Z[:5]]}]
    build_case(tmp_path, dose=False, plan=False, rois=rois)
    p = load_dicom_folder(tmp_path)
    assert any("'Edge'" in w and "outside" in w for w in p.warnings)
    m = p.structure("Edge").mask
    assert m[:5, :, -1].any() and m[:5].sum() > 0


def test_rtstruct_in_other_frame_of_reference_is_an_error(tmp_path):
    _, uids = f.make_ct_series(tmp_path, ct_raw()[:3], Z[:3])
    f.make_rtstruct(tmp_path / "RS.dcm", [{"name": "A", "contours": [f.circle(0, 0, Z[1], 5)]}], uids,
                    frame_uid=pydicom.uid.generate_uid())
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert "RS.dcm" in str(ei.value) and "frame of reference" in str(ei.value)


# -- dose and plan -------------------------------------------------------------------------
def test_rtdose_offsets_relative_absolute_descending_agree(tmp_path):
    uids = f.new_uids()
    kw = dict(origin_xyz=(-30.0, -10.0, 4.0), spacing=(3.0, 3.0, 2.5))
    doses = [read_rtdose(f.make_rtdose(tmp_path / f"{n}.dcm", dose_field(), uids, **extra, **kw))
             for n, extra in (("rel", {}), ("abs", {"absolute_offsets": True}), ("desc", {"descending": True}))]
    for d in doses:
        assert d.grid.same_as(doses[0].grid) and d.grid.axes == ("+z", "+y", "+x")
        np.testing.assert_allclose(d.grid.origin_mm, (4.0, -10.0, -30.0))
        # stored as round(dose / 1e-5): error at most half a scaling step
        np.testing.assert_allclose(d.dose_gy, dose_field(), atol=0.5e-5 + 1e-5 * 1e-3)


def test_beam_doses_without_plan_dose_are_summed(tmp_path):
    uids = build_case(tmp_path, dose=False, plan=False, rois=[])
    kw = dict(origin_xyz=(-30.0, -10.0, 0.0), spacing=(3.0, 3.0, 2.5), summation="BEAM")
    f.make_rtdose(tmp_path / "RD1.dcm", dose_field(), uids, **kw)
    f.make_rtdose(tmp_path / "RD2.dcm", 2 * dose_field(), uids, **kw)
    p = load_dicom_folder(tmp_path)
    np.testing.assert_allclose(p.dicom["rtdose_native"].dose_gy, 3 * dose_field(), atol=2e-5)
    assert any("summed" in w for w in p.warnings)


def test_dicom_modules_import_cheaply():
    # the CLI imports the loader on every start: pydicom only when a DICOM file is read
    import subprocess
    import sys

    from tests.conftest import REPO
    code = ("import sys, core.io.dicom_import, core.io.dicom_export, core.io.rasterize; "
            "print(sorted(m for m in ('torch', 'pydicom', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_dose_resampled_to_ct_and_native_kept(case):
    _, _, p = case
    native = p.dicom["rtdose_native"]
    assert native.grid.shape == (16, 20, 24)
    ref = p.doses["reference"]
    assert ref.grid.same_as(p.grid)
    # CT voxel at x=-20.0 (c=20), y=0 (r=20), z=10 (k=10): dose index (z-0)/2.5=4, (y+10)/3, (x+30)/3
    k, j, i = 10 / 2.5, 10 / 3, 10 / 3
    assert ref.dose_gy[10, 20, 20] == pytest.approx(10 + k + 0.5 * j + 0.25 * i, abs=1e-3)
    assert ref.dose_gy[0, 0, 0] == 0.0  # outside the dose grid
    # uncovered fraction of BODY: voxel centres beyond the dose grid's outer voxel faces
    # (x -31.5..40.5, y -11.5..48.5, z -1.25..38.75 mm), counted here independently
    body = p.structure("BODY").mask
    z, y, x = (p.grid.axis_coords_mm(k) for k in range(3))
    cov = (((z >= -1.25) & (z <= 38.75))[:, None, None] & ((y >= -11.5) & (y <= 48.5))[None, :, None]
           & ((x >= -31.5) & (x <= 40.5))[None, None, :])
    frac = 100 * (body & ~cov).sum() / body.sum()
    assert any(f"{frac:.1f} % of the body lies outside" in w for w in p.warnings), (frac, p.warnings)


def test_rtplan_and_prescription(case):
    _, _, p = case
    assert p.prescriptions[0].structure == "PTV60"
    assert p.prescriptions[0].dose_gy == 60.0 and p.prescriptions[0].fractions == 30
    plan = p.plans[0]
    assert plan["label"] == "TestPlan" and plan["fractions"] == 30
    assert [b["gantry_deg"] for b in plan["beams"]] == [0.0, 120.0, 240.0]
    b = plan["beams"][1]
    assert b["mu"] == 110.0 and b["sad_mm"] == 1000.0 and b["energy_mv"] == 6.0
    assert b["collimator_deg"] == 10.0 and b["couch_deg"] == 0.0 and b["isocenter_mm"] == [1.5, -2.5, 10.0]
    cp = b["control_points"]
    assert [c["cumulative_meterset_weight"] for c in cp] == [0.0, 0.5, 1.0]
    assert cp[1]["mlc_mm"]["MLCX"] == [-10.0] * 4 + [0.0] * 4
    assert cp[2]["jaws_mm"]["ASYMX"] == [-30.0, 30.0]  # carried over from control point 0
    assert cp[1]["cumulative_mu"] == pytest.approx(55.0)


@pytest.mark.parametrize("name,dose", [("PTV70", 70), ("PTV_70", 70), ("PTV 70Gy", 70), ("PTV7000", 70),
                                       ("ptv_50.4", 50.4), ("PTV_5040cGy", 50.4), ("PTV63_eval", 63),
                                       ("PTV1", None), ("PTV", None), ("Parotid_L", None)])
def test_dose_from_target_name(name, dose):
    assert dose_from_target_name(name) == dose


def test_prescriptions_from_names_assume_2gy_fractions():
    warns = []
    rx = prescriptions_from_names(["PTV70", "PTV56", "PTV"], warns)
    assert [(r.structure, r.dose_gy, r.fractions) for r in rx] == [("PTV70", 70, 35), ("PTV56", 56, 35)]
    assert len(warns) == 1 and "assumed 35 fractions" in warns[0] and "2 Gy per fraction" in warns[0]


def test_prescription_from_names_without_plan(tmp_path):
    build_case(tmp_path, dose=False, plan=False)
    p = load_dicom_folder(tmp_path)
    assert [(r.structure, r.dose_gy, r.fractions) for r in p.prescriptions] == [("PTV60", 60.0, 30)]
    assert any("assumed 30 fractions" in w for w in p.warnings)


# -- dose review ---------------------------------------------------------------------------
def test_dose_review_without_ct(tmp_path):
    uids = build_case(tmp_path)
    for q in tmp_path.glob("IMG*.dcm"):
        q.unlink()
    # a dose grid holding the whole sphere (z 10..50 mm) but not the whole body
    big = np.full((28, 24, 20), 2.0)
    f.make_rtdose(tmp_path / "RD.dcm", big, uids, origin_xyz=(-30.0, -10.0, 0.0), spacing=(3.0, 3.0, 2.5))
    p = load_dicom_folder(tmp_path)
    assert p.ct is None
    assert any("images are missing" in w for w in p.warnings)
    assert p.grid.same_as(p.dicom["rtdose_native"].grid)
    np.testing.assert_allclose(p.doses["reference"].dose_gy, big, atol=1e-5)
    # the sphere rasterised on the 3 x 3 x 2.5 mm dose grid keeps its volume
    assert p.structure("PTV60").volume_cc(p.grid) == pytest.approx(4 / 3 * np.pi * R_SPHERE**3 / 1000, rel=0.03)
    assert any("'BODY'" in w and "outside the dose grid" in w for w in p.warnings)


def test_dose_review_with_incomplete_ct(tmp_path):
    build_case(tmp_path)
    (tmp_path / sorted(q.name for q in tmp_path.glob("IMG*.dcm"))[0]).unlink()
    ct_files = sorted(tmp_path.glob("IMG*.dcm"), key=lambda q: float(pydicom.dcmread(q).ImagePositionPatient[2]))
    ct_files[len(ct_files) // 2].unlink()  # a slice in the middle: a gap, not a shorter scan
    p = load_dicom_folder(tmp_path)
    assert p.ct is None and any("images are missing" in w and "incomplete" in w for w in p.warnings)


# -- bad input -----------------------------------------------------------------------------
def test_missing_folder(tmp_path):
    with pytest.raises(InputError) as ei:
        load_dicom_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(ei.value)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here\n" * 20)
    (tmp_path / "blob.dcm").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert str(tmp_path) in str(ei.value) and "no DICOM" in str(ei.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DicomError, match="no files"):
        load_dicom_folder(empty)


def test_non_dicom_file_among_dicom_is_skipped_with_warning(tmp_path):
    build_case(tmp_path, dose=False, plan=False, rois=[])
    (tmp_path / "readme.txt").write_text("exported by hand\n")
    p = load_dicom_folder(tmp_path)
    assert p.ct.hu.shape == (NZ, NY, NX)
    assert any("not DICOM" in w and "readme.txt" in w for w in p.warnings)


def test_truncated_file_is_an_error_with_its_path(tmp_path):
    paths, _ = f.make_ct_series(tmp_path, ct_raw()[:4], Z[:4])
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert str(paths[2]) in str(ei.value) and ("truncated" in str(ei.value) or "corrupt" in str(ei.value))


def test_truncated_rtstruct_is_an_error_with_its_path(tmp_path):
    build_case(tmp_path, dose=False, plan=False)
    rs = tmp_path / "RS.dcm"
    data = rs.read_bytes()
    rs.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert str(rs) in str(ei.value) and "truncated" in str(ei.value)


def test_rtstruct_missing_roi_number_is_a_dicom_error(tmp_path):
    build_case(tmp_path, dose=False, plan=False)
    ds = pydicom.dcmread(tmp_path / "RS.dcm")
    del ds.StructureSetROISequence[1].ROINumber
    ds.save_as(tmp_path / "RS.dcm")
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert str(tmp_path / "RS.dcm") in str(ei.value) and "RTSTRUCT is incomplete" in str(ei.value)


def test_rtdose_not_dicom(tmp_path):
    (tmp_path / "x.dcm").write_text("text")
    with pytest.raises(DicomError, match="not a DICOM file"):
        read_rtdose(tmp_path / "x.dcm")


# -- pydicom's bundled RT files ------------------------------------------------------------
def test_bundled_rtdose():
    d = read_rtdose(get_testdata_file("rtdose.dcm"))
    assert d.grid.shape == (15, 10, 10)
    np.testing.assert_allclose(d.grid.spacing_mm, (5.0, 10.0, 10.0))
    np.testing.assert_allclose(d.grid.origin_mm, (-761.87, 199.43125, 189.43125))
    raw = pydicom.dcmread(get_testdata_file("rtdose.dcm")).pixel_array
    np.testing.assert_allclose(d.dose_gy, raw * 1e-6, rtol=1e-6)


def test_bundled_rtplan():
    plan = read_rtplan(get_testdata_file("rtplan.dcm"))
    assert plan["fractions"] == 30
    assert plan["prescriptions"][0]["dose_gy"] == pytest.approx(30.826203)
    b = plan["beams"][0]
    assert b["gantry_deg"] == 0.0 and b["sad_mm"] == 1000.0 and b["energy_mv"] == 6.0
    assert b["mu"] == pytest.approx(116.0036697)
    assert b["isocenter_mm"] == pytest.approx([235.711172833292, 244.135437110782, -724.97815409918])
    assert b["control_points"][1]["jaws_mm"]["X"] == [-100.0, 100.0]


def test_bundled_rtstruct_on_a_ct_in_its_frame(tmp_path):
    # pydicom's rtstruct.dcm lacks the DICOM preamble; its 'patient' ROI is a 400 x 300 mm
    # box on z = -200, -190, -180. A CT on 5 mm pixels whose centres avoid the box edges
    # gives exactly 80 x 60 voxels per plane.
    src = pydicom.dcmread(get_testdata_file("rtstruct.dcm"), force=True)
    for_uid = src.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    uids = {"study": src.StudyInstanceUID, "for": for_uid, "series": pydicom.uid.generate_uid()}
    f.make_ct_series(tmp_path, np.zeros((3, 100, 100), np.uint16), [-200.0, -190.0, -180.0],
                     pixel_spacing=(5.0, 5.0), origin_xy=(-247.5, -247.5), uids=uids,
                     patient_id=str(src.PatientID))
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rtstruct.dcm")
    p = load_dicom_folder(tmp_path)
    body = p.structure("patient")
    assert body.role is StructureRole.EXTERNAL
    assert body.mask.sum(axis=(1, 2)).tolist() == [4800, 4800, 4800]
    assert set(p.dicom["roi_points"]) == {"Isocenter 1", "Isocenter 2"}


def test_bundled_rtstruct_and_rtdose_of_different_patients(tmp_path):
    shutil.copy(get_testdata_file("rtstruct.dcm"), tmp_path / "rs.dcm")
    shutil.copy(get_testdata_file("rtdose.dcm"), tmp_path / "rd.dcm")
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert str(tmp_path) in str(ei.value) and "several patients" in str(ei.value)


def test_dose_review_rtdose_in_other_frame_is_an_error(tmp_path):
    uids = f.new_uids()
    f.make_rtstruct(tmp_path / "RS.dcm", [{"name": "A", "contours": [f.circle(0, 0, 4.0, 5)]}], uids)
    f.make_rtdose(tmp_path / "RD.dcm", dose_field(), {**uids, "for": pydicom.uid.generate_uid()})
    with pytest.raises(DicomError) as ei:
        load_dicom_folder(tmp_path)
    assert "frame of reference" in str(ei.value) and "RD.dcm" in str(ei.value)


# -- speed helpers and progress -------------------------------------------------------------
def test_progress_reaches_one_and_cancel_stops(tmp_path):
    build_case(tmp_path, dose=False, plan=False)
    events = []
    load_dicom_folder(tmp_path, progress=Progress(events.append))
    fr = [e.fraction for e in events]
    assert fr[-1] == 1.0 and all(b >= a - 1e-12 for a, b in zip(fr, fr[1:]))
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        load_dicom_folder(tmp_path, cancel=token)
