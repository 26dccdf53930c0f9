"""Water box and TG-119 phantoms, and the PATIENT-argument loader."""

import numpy as np
import pytest

from core.errors import Cancelled, InputError
from core.io.loader import load_patient
from core.io.phantoms import tg119_phantom, water_phantom
from core.patient import StructureRole
from core.progress import CancelToken


def test_water_phantom_geometry():
    p = water_phantom()
    g = p.grid
    assert g.shape == (200, 200, 200) and g.spacing_mm == (2.0, 2.0, 2.0)
    assert np.all(p.ct.hu == 0)
    # box centre at the LPS origin: the middle of the voxel centres is 0 on every axis
    assert np.allclose(g.bounds_mm().mean(axis=1), 0.0)
    # faces half a voxel beyond the outermost centres: +-200 mm, 40 cm side
    assert np.allclose(g.bounds_mm()[:, 0] - 1.0, -200.0) and np.allclose(g.bounds_mm()[:, 1] + 1.0, 200.0)
    # gantry 0 enters through the anterior face: y = -200 mm is array index -0.5 on the y axis
    assert np.allclose(g.patient_to_index([[0.0, -200.0, 0.0]])[0], [99.5, -0.5, 99.5])
    ext = p.by_role(StructureRole.EXTERNAL)
    assert len(ext) == 1 and ext[0].mask.all()
    assert ext[0].volume_cc(g) == pytest.approx(64000.0)   # 40 cm cube
    assert p.prescriptions == []


def test_tg119_phantom(tg119_dir):
    p = tg119_phantom(tg119_dir / "tg119.npz")
    g = p.grid
    assert g.shape == (129, 167, 167) and g.spacing_mm == (2.5, 3.0, 3.0)
    assert g.origin_mm == (-160.0, -250.0, -250.0) and g.axes == ("+z", "+y", "+x")
    # voxel counts from the data README: Core 1320 (29.7 cc), OuterTarget 7458 (167.8 cc), BODY 601736
    assert p.structures["Core"].n_voxels() == 1320 and p.structures["Core"].role is StructureRole.OAR
    assert p.structures["OuterTarget"].n_voxels() == 7458
    assert p.structures["OuterTarget"].role is StructureRole.TARGET
    assert p.structures["BODY"].n_voxels() == 601736 and p.structures["BODY"].role is StructureRole.EXTERNAL
    assert p.structures["OuterTarget"].volume_cc(g) == pytest.approx(167.8, abs=0.05)
    rx = p.prescriptions[0]
    assert (rx.structure, rx.dose_gy, rx.fractions) == ("OuterTarget", 50.0, 25)
    # the C-shape wraps the core: the core's centroid lies within 1 cm of the target's in x and z
    ct, cc = p.structures["OuterTarget"].centroid_mm(g), p.structures["Core"].centroid_mm(g)
    assert abs(ct[0] - cc[0]) < 10 and abs(ct[2] - cc[2]) < 10


def test_tg119_bad_file(tmp_path):
    bad = tmp_path / "tg.npz"
    np.savez(bad, ct_hu=np.zeros((3, 3, 3), np.int16), spacing_mm=[1, 1, 1], origin_mm=[0, 0, 0])
    with pytest.raises(InputError, match="missing mask_OuterTarget"):
        tg119_phantom(bad)


def test_loader_dispatch(tmp_path, tg119_dir, openkbp_dir):
    assert load_patient("phantom:tg119", phantom_file=tg119_dir / "tg119.npz").patient_id == "tg119"
    assert load_patient("phantom:Water").patient_id == "phantom_water"
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        load_patient(openkbp_dir / "validation" / "pt_201.npz", cancel=tok)
    assert load_patient(openkbp_dir / "validation" / "pt_201.npz").grid.shape == (128, 128, 128)
    with pytest.raises(InputError, match="unknown phantom 'foo'"):
        load_patient("phantom:foo")
    with pytest.raises(InputError, match="phantom file not found"):
        load_patient("phantom:tg119", phantom_file=tmp_path / "none.npz")
    with pytest.raises(InputError, match="no such file or folder") as exc:
        load_patient(tmp_path / "absent.npz")
    assert "absent.npz" in str(exc.value)
    txt = tmp_path / "x.txt"
    txt.write_text("x")
    with pytest.raises(InputError, match="not a patient"):
        load_patient(txt)
    # an empty folder is not a DICOM patient (DicomError is an InputError); until DICOM
    # import exists the loader says so in the same typed way
    with pytest.raises(InputError):
        load_patient(tmp_path)
