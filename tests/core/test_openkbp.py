"""OpenKBP case loading, its bad-input errors, and DOSE files on an OpenKBP grid."""

import numpy as np
import pytest

from core.errors import GeometryError, InputError
from core.geometry import OPENKBP_AXES
from core.io.dosefile import load_dose, save_dose_npz
from core.io.openkbp import load_openkbp
from core.patient import Dose, StructureRole

NAMES = np.array(["Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx",
                  "Mandible", "PTV56", "PTV63", "PTV70"])


def small_case(n=12):
    """A synthetic OpenKBP-format case: PTV70 and SpinalCord present, the rest absent."""
    ct = np.zeros((n, n, n), np.int16)
    ct[2:-2, 2:-2, 2:-2] = 1000          # water, HU 0
    masks = np.zeros((n, n, n), np.uint16)
    masks[4:8, 4:8, 4:8] |= 1 << 9       # PTV70
    masks[8:10, 5:7, :] |= 1 << 1        # SpinalCord
    dose = np.zeros((n, n, n), np.uint16)
    dose[4:8, 4:8, 4:8] = 7000
    return {"ct": ct, "dose_cgy": dose, "possible_dose_mask": ct > 0, "masks": masks, "roi_names": NAMES,
            "voxel_dimensions_mm": np.array([3.0, 3.0, 2.5], np.float32)}


def write(tmp_path, arrays, name="pt_1.npz"):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


def test_real_case_matches_raw_arrays(openkbp_dir):
    path = openkbp_dir / "validation" / "pt_202.npz"
    raw = np.load(path)
    p = load_openkbp(path)
    assert p.grid.axes == OPENKBP_AXES
    assert p.grid.shape == (128, 128, 128)
    assert np.allclose(p.grid.spacing_mm, raw["voxel_dimensions_mm"])
    assert p.grid.origin_mm == (0.0, 0.0, 0.0)
    # HU = ct - 1000: OpenKBP 0 (air/outside) -> -1000
    assert p.ct.hu.dtype == np.int16
    assert np.array_equal(p.ct.hu, raw["ct"].astype(np.int32) - 1000)
    assert p.ct.hu.min() == -1000
    for i, name in enumerate(raw["roi_names"]):
        bit = ((raw["masks"] >> i) & 1).astype(bool)
        if bit.any():
            assert np.array_equal(p.structures[name].mask, bit)
            assert p.structures[name].role is (StructureRole.TARGET if name.startswith("PTV") else StructureRole.OAR)
        else:
            assert name not in p.structures
    # pt_202 lacks Esophagus and Larynx: listed as a warning
    assert any("Esophagus" in w and "Larynx" in w for w in p.warnings)
    assert p.structures["External"].role is StructureRole.EXTERNAL
    assert np.array_equal(p.structures["External"].mask, raw["possible_dose_mask"])
    assert np.array_equal(p.possible_dose_mask, raw["possible_dose_mask"])
    assert np.allclose(p.doses["reference"].dose_gy, raw["dose_cgy"] / 100.0)
    rx = {r.structure: (r.dose_gy, r.fractions) for r in p.prescriptions}
    assert rx == {"PTV70": (70.0, 35), "PTV63": (63.0, 35), "PTV56": (56.0, 35)}


def test_anatomy_consistent_with_openkbp_axes(openkbp_dir):
    # why: the axis statement (axis0 +y posterior, axis1 +x left, axis2 -z) must put the
    # cord posterior of the mandible, the left parotid at larger x, the brainstem superior
    p = load_openkbp(openkbp_dir / "validation" / "pt_201.npz")
    c = {n: p.structures[n].centroid_mm(p.grid) for n in
         ("SpinalCord", "Mandible", "LeftParotid", "RightParotid", "Brainstem", "Larynx")}
    assert c["SpinalCord"][1] > c["Mandible"][1]          # posterior = larger y
    assert c["LeftParotid"][0] > c["RightParotid"][0]     # left = larger x
    assert c["Brainstem"][2] > c["Larynx"][2]             # superior = larger z


def test_small_case_and_missing_dose(tmp_path):
    a = small_case()
    p = load_openkbp(write(tmp_path, a))
    assert set(p.structures) == {"SpinalCord", "PTV70", "External"}
    assert [(r.structure, r.dose_gy) for r in p.prescriptions] == [("PTV70", 70.0)]
    del a["dose_cgy"]
    p = load_openkbp(write(tmp_path, a, "nodose.npz"))
    assert "reference" not in p.doses
    assert any("no reference dose" in w for w in p.warnings)


@pytest.mark.parametrize("mutate,words", [
    (lambda a: a.pop("masks"), "missing masks"),
    (lambda a: a.update(masks=a["masks"][:, :, :5]), "'masks' has shape"),
    (lambda a: a.update(ct=a["ct"][0]), "3D"),
    (lambda a: a.update(masks=a["masks"].astype(np.float32)), "integer bit field"),
    (lambda a: a.update(voxel_dimensions_mm=np.array([3.0, 0.0, 2.5])), "voxel_dimensions_mm"),
    (lambda a: a.update(roi_names=np.arange(10)), "roi_names"),
    (lambda a: a.update(dose_cgy=-a["dose_cgy"].astype(np.int32)), "negative"),
])
def test_bad_cases(tmp_path, mutate, words):
    a = small_case()
    mutate(a)
    path = write(tmp_path, a)
    with pytest.raises(InputError) as exc:
        load_openkbp(path)
    assert words in str(exc.value)
    assert str(path) in str(exc.value)


def test_not_npz_truncated_npy_pickle(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    good = write(tmp_path, small_case())
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    npy = tmp_path / "arr.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    pick = tmp_path / "pick.npz"
    np.savez(pick, ct=np.array([{"a": 1}], dtype=object))
    for path, words in [(text, "not an .npz archive (not a zip"), (trunc, "not a readable .npz"), (npy, "not an .npz"),
                        (pick, "pickles"), (tmp_path / "absent.npz", "no such file")]:
        with pytest.raises(InputError) as exc:
            load_openkbp(path)
        assert words in str(exc.value), (path, str(exc.value))
        assert str(path) in str(exc.value)


def test_dose_file_round_trip_and_errors(tmp_path):
    p = load_openkbp(write(tmp_path, small_case()))
    d = np.random.default_rng(1).uniform(0, 70, p.grid.shape).astype(np.float32)
    out = tmp_path / "dose.npz"
    save_dose_npz(out, Dose(d, p.grid, "x"))
    z = np.load(out)
    assert set(z.files) >= {"dose_gy", "spacing_mm", "origin_mm"}
    assert z["dose_gy"].dtype == np.float32
    back = load_dose(out, p)
    assert np.array_equal(back.dose_gy, d)
    # an OpenKBP case is accepted as a DOSE: its clinical dose in Gy
    case = load_dose(tmp_path / "pt_1.npz", p)
    assert np.allclose(case.dose_gy, small_case()["dose_cgy"] / 100.0)
    # wrong shape, wrong spacing, missing keys, negative dose, origin differs (warning only)
    bad = tmp_path / "bad.npz"
    np.savez(bad, dose_gy=d[:, :, :5], spacing_mm=p.grid.spacing_mm, origin_mm=p.grid.origin_mm)
    with pytest.raises(GeometryError, match="patient grid is 12 x 12 x 12"):
        load_dose(bad, p)
    np.savez(bad, dose_gy=d, spacing_mm=[3.0, 3.0, 3.0], origin_mm=p.grid.origin_mm)
    with pytest.raises(GeometryError, match="spacing"):
        load_dose(bad, p)
    np.savez(bad, dose_gy=d, origin_mm=p.grid.origin_mm)
    with pytest.raises(InputError, match="spacing_mm"):
        load_dose(bad, p)
    np.savez(bad, something=d)
    with pytest.raises(InputError, match="neither a DOSE"):
        load_dose(bad, p)
    np.savez(bad, dose_gy=-d, spacing_mm=p.grid.spacing_mm, origin_mm=p.grid.origin_mm)
    with pytest.raises(InputError, match="negative"):
        load_dose(bad, p)
    np.savez(bad, dose_gy=d, spacing_mm=p.grid.spacing_mm, origin_mm=[5.0, 0.0, 0.0])
    warnings = []
    load_dose(bad, p, warnings=warnings)
    assert warnings and "origin" in warnings[0]


def test_rtdose_onto_an_openkbp_patient(tmp_path, demo_case):
    # RTDOSE written in DICOM order (z, y, x) and read back onto the OpenKBP grid (y, x, -z):
    # voxel centres coincide, so trilinear resampling is exact up to the 32-bit dose scaling
    from core.geometry import Grid
    from core.io.dicom_export import export_rtdose
    from core.io.loader import load_patient

    p = load_patient(demo_case)
    ref = p.doses["reference"]
    rd = tmp_path / "RD.dcm"
    export_rtdose(ref, p, rd)
    warnings = []
    back = load_dose(rd, p, warnings=warnings)
    assert np.abs(back.dose_gy - ref.dose_gy).max() < 1e-4 * ref.dose_gy.max()
    assert warnings == []
    # a dose grid covering only the upper half of axis 2: warning, zero outside
    g = p.grid
    half = Grid((128, 128, 64), g.spacing_mm, g.origin_mm, g.axes)
    export_rtdose(Dose(ref.dose_gy[:, :, :64], half), p, rd)
    back = load_dose(rd, p, warnings=warnings)
    assert any("covers only" in w for w in warnings)
    assert np.all(back.dose_gy[:, :, 64:] == 0)
    assert np.abs(back.dose_gy[:, :, :64] - ref.dose_gy[:, :, :64]).max() < 1e-4 * ref.dose_gy.max()
    # a dose grid 2 m away does not overlap the patient
    far = Grid((10, 10, 10), g.spacing_mm, (2000.0, 0.0, 0.0), g.axes)
    export_rtdose(Dose(np.ones((10, 10, 10), np.float32), far), p, rd)
    with pytest.raises(GeometryError, match="does not overlap"):
        load_dose(rd, p)
