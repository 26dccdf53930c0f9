"""Patient model: validation, roles, external-mask fallbacks."""

import numpy as np
import pytest

from core.errors import GeometryError, InputError
from core.geometry import Grid
from core.patient import (CtImage, Dose, Patient, Prescription, Structure, StructureRole, body_from_ct,
                          guess_role)

G = Grid((8, 10, 12), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def _patient(**kw):
    return Patient("p", G, **kw)


@pytest.mark.parametrize("name,dtype,role", [
    ("PTV_70", None, StructureRole.TARGET), ("ctv", None, StructureRole.TARGET),
    ("BODY", None, StructureRole.EXTERNAL), ("Parotid_L", None, StructureRole.OAR),
    ("z_ring", None, StructureRole.HELPER), ("anything", "PTV", StructureRole.TARGET),
    ("Outline", "EXTERNAL", StructureRole.EXTERNAL), ("Couch", "SUPPORT", StructureRole.HELPER),
])
def test_guess_role(name, dtype, role):
    assert guess_role(name, dtype) is role


def test_structure_volume_and_centroid():
    m = np.zeros(G.shape, bool)
    m[2:4, 3:5, 4:6] = True   # 8 voxels of 2 mm^3
    s = Structure("S", m)
    assert s.n_voxels() == 8
    assert s.volume_cc(G) == pytest.approx(8 * 2e-3)
    # centroid index (2.5, 3.5, 4.5) -> (x, y, z) = (4.5, 3.5, 5.0) mm in DICOM order
    assert np.allclose(s.centroid_mm(G), [4.5, 3.5, 5.0])
    with pytest.raises(GeometryError):
        Structure("E", np.zeros(G.shape, bool)).centroid_mm(G)


def test_structure_and_prescription_validation():
    with pytest.raises(InputError):
        Structure(" ", np.zeros(G.shape, bool))
    with pytest.raises(InputError):
        Structure("flat", np.zeros((3, 3), bool))
    with pytest.raises(InputError):
        Prescription("PTV", -1.0, 30)
    with pytest.raises(InputError):
        Prescription("PTV", 60.0, 0)
    with pytest.raises(InputError):
        Prescription("PTV", 60.0, 1)          # 60 Gy in one fraction is not plausible
    assert Prescription("PTV", 70.0, 35).dose_per_fraction_gy == pytest.approx(2.0)


def test_dose_and_ct_shape_checks():
    with pytest.raises(GeometryError):
        Dose(np.zeros((2, 2, 2)), G)
    bad = np.zeros(G.shape)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError):
        Dose(bad, G)
    with pytest.raises(GeometryError):
        CtImage(np.zeros((2, 2, 2)), G)


def test_add_structure_rules():
    p = _patient()
    p.add_structure(Structure("A", np.ones(G.shape, bool)))
    with pytest.raises(InputError):
        p.add_structure(Structure("A", np.ones(G.shape, bool)))
    with pytest.raises(GeometryError):
        p.add_structure(Structure("B", np.ones((2, 2, 2), bool)))
    with pytest.raises(InputError):
        p.structure("missing")


def test_external_mask_fallbacks():
    hu = np.full(G.shape, -1000, np.int16)
    hu[2:6, 2:8, 2:10] = 0
    hu[3:5, 4:6, 4:6] = -1000      # internal air: holes are filled slice by slice
    p = _patient(ct=CtImage(hu, G))
    body = p.external_mask()
    assert body.sum() == 4 * 6 * 8
    assert p.warnings and "thresholding" in p.warnings[0]
    pdm = np.zeros(G.shape, bool)
    pdm[1, 1, 1] = True
    p.possible_dose_mask = pdm
    assert p.external_mask().sum() == 1
    ext = np.zeros(G.shape, bool)
    ext[0:2] = True
    p.add_structure(Structure("BODY", ext, StructureRole.EXTERNAL))
    assert p.external_mask().sum() == ext.sum()
    with pytest.raises(GeometryError):
        _patient().external_mask()
    with pytest.raises(GeometryError):
        body_from_ct(np.full((3, 3, 3), -1000))
