"""Preprocessing: structure names, the canonical frame, and the round trip back to the patient grid."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.geometry import DICOM_AXES, OPENKBP_AXES, Grid
from core.patient import CtImage, Patient, Prescription, Structure, StructureRole
from core.prediction.preprocess import (CANONICAL_SPACING_MM, canonical_to_patient, map_structures, pool_dose,
                                        patient_to_canonical, upsample_dose)
from core.prediction.sites import get_site

from .synth import sphere

SITE = get_site("hn")


def dicom_patient(names=("Parotid_R", "Cord", "PTV_70", "Lens_L"), rx=True) -> Patient:
    grid = Grid((24, 40, 44), (2.5, 2.0, 2.0), (-30.0, -45.0, -40.0), DICOM_AXES)
    g = np.indices(grid.shape, dtype=float)
    body = ((g[1] - 20) ** 2 / 16 ** 2 + (g[2] - 22) ** 2 / 18 ** 2) <= 1.0
    hu = np.where(body, 20, -1000).astype(np.int16)
    p = Patient("synthetic", grid, ct=CtImage(hu, grid))
    p.add_structure(Structure("BODY", body, StructureRole.EXTERNAL))
    shapes = {"Parotid_R": sphere(grid.shape, (12, 18, 10), 4), "Cord": sphere(grid.shape, (12, 30, 22), 3),
              "PTV_70": sphere(grid.shape, (12, 16, 22), 6), "Lens_L": sphere(grid.shape, (12, 10, 30), 2)}
    for n in names:
        role = StructureRole.TARGET if n.startswith("PTV") else StructureRole.OAR
        p.add_structure(Structure(n, shapes[n] & body, role))
    if rx and "PTV_70" in names:
        p.prescriptions.append(Prescription("PTV_70", 70.0, 35))
    return p


def test_synonyms_map_and_unknown_names_are_reported():
    m = map_structures(dicom_patient(), SITE)
    assert m.oars == {"RightParotid": "Parotid_R", "SpinalCord": "Cord"}
    assert m.targets == {"PTV_70": 70.0}
    assert m.unknown == ["Lens_L"]
    assert any("Lens_L" in w for w in m.warnings)


def test_prescription_from_the_name_when_none_given():
    assert map_structures(dicom_patient(rx=False), SITE).targets == {"PTV_70": 70.0}


def test_no_target_is_an_input_error():
    with pytest.raises(InputError, match="no target"):
        map_structures(dicom_patient(names=("Parotid_R", "Cord")), SITE)


def test_target_without_prescription_is_an_input_error():
    p = dicom_patient(names=("Cord",))
    p.add_structure(Structure("PTV_boost", p.structure("Cord").mask, StructureRole.TARGET))
    with pytest.raises(InputError, match="prescription"):
        map_structures(p, SITE)


def _linear_field(xyz):
    return 10.0 + 0.3 * xyz[:, 0] - 0.2 * xyz[:, 1] + 0.1 * xyz[:, 2]


def test_dicom_grid_round_trip_returns_the_patient_grid():
    from scipy.ndimage import binary_erosion

    p = dicom_patient()
    case, mapping, mgrid, lo = patient_to_canonical(p, SITE)
    assert mgrid.axes == OPENKBP_AXES and mgrid.spacing_mm == CANONICAL_SPACING_MM
    # The canonical crop holds the OAR where the patient has it: the parotid's centroid
    # (patient mm) must agree to within one canonical voxel.
    k = SITE.oars.index("RightParotid")
    c_model = case.grid.index_to_patient(np.argwhere(case.oars[k]).mean(0))[0]
    c_patient = p.structure("Parotid_R").centroid_mm(p.grid)
    assert np.linalg.norm(c_model - c_patient) < 4.0
    # A field linear in patient coordinates, sampled on the crop and sent back, must come
    # back exactly where trilinear interpolation is exact: body voxels away from the edge.
    idx = np.indices(case.body.shape).reshape(3, -1).T
    field_crop = _linear_field(case.grid.index_to_patient(idx)).reshape(case.body.shape).astype(np.float32)
    body_p = p.external_mask()
    back = canonical_to_patient(field_crop, case, mgrid, lo, p.grid, body_p)
    assert back.shape == p.grid.shape
    assert np.all(back[~body_p] == 0)
    inner = binary_erosion(body_p, iterations=2)
    pidx = np.argwhere(inner)
    expect = _linear_field(p.grid.index_to_patient(pidx))
    # float32 arithmetic on values ~10-40: 1e-3 Gy is far above rounding and far below any
    # misplacement (one voxel shifts the field by >= 0.2 Gy).
    np.testing.assert_allclose(back[inner], expect, atol=1e-3)


def test_openkbp_frame_is_used_as_is():
    from .synth import openkbp_arrays

    a = openkbp_arrays()
    grid = Grid(a["ct"].shape, tuple(a["voxel_dimensions_mm"]), (0, 0, 0), OPENKBP_AXES)
    p = Patient("k", grid, ct=CtImage(a["ct"].astype(np.int16) - 1000, grid))
    p.possible_dose_mask = a["possible_dose_mask"]
    p.add_structure(Structure("PTV70", ((a["masks"] >> 9) & 1).astype(bool), StructureRole.TARGET))
    case, _, mgrid, lo = patient_to_canonical(p, SITE)
    assert mgrid is grid
    ref = a["dose_cgy"] / 100.0
    sl = tuple(slice(int(l_), int(l_) + s) for l_, s in zip(lo, case.body.shape))
    back = canonical_to_patient(ref[sl].astype(np.float32), case, mgrid, lo, grid, p.external_mask())
    np.testing.assert_array_equal(back, np.where(p.external_mask(), ref, 0).astype(np.float32))


@pytest.mark.parametrize("pool", [1, 2])
def test_mask_normalised_resampling_keeps_a_constant_dose(pool):
    # A constant dose inside an irregular body must come back constant: plain averaging
    # with the zeros outside would lower every skin voxel.
    body = sphere((16, 16, 16), (7.3, 8.1, 7.7), 6.5)
    dose = np.where(body, 50.0, 0.0).astype(np.float32)
    lo = pool_dose(dose, body, pool)
    assert lo.shape == tuple(16 // pool for _ in range(3))
    up = upsample_dose(lo, (lo > 0).astype(np.float32), body, pool)
    np.testing.assert_allclose(up[body], 50.0, rtol=1e-5)
    assert np.all(up[~body] == 0)
