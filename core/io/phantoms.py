"""Built-in test patients: a water box and the AAPM TG-119 C-shape phantom.

Phantoms register under a short key in :data:`PHANTOMS` (``phantom:<key>`` on the
command line, see :mod:`core.io.loader`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import InputError
from core.geometry import DICOM_AXES, Grid
from core.patient import CtImage, Patient, Prescription, Structure, StructureRole

#: Water box: side length and voxel size.
WATER_SIDE_MM = 400.0
WATER_VOXEL_MM = 2.0


def water_phantom(side_mm: float = WATER_SIDE_MM, voxel_mm: float = WATER_VOXEL_MM) -> Patient:
    """A cube of water (HU 0) filling its grid, centred on the LPS origin.

    Geometry (DICOM array order ``(z, y, x)``, head-first supine): with the defaults, 200
    voxels of 2 mm per axis; voxel centres run from -199 to +199 mm, so the box faces lie
    at +-200 mm on x, y and z. The box centre is (0, 0, 0), a natural isocentre.
    Gantry 0 (IEC 61217, supine) irradiates from anterior: the beam travels along +y and
    enters through the anterior face at **y = -200 mm**, the surface at the top of the
    beam's-eye view. An isocentre at (0, 0, 0) therefore lies at 200 mm depth (SSD 800 mm
    for SAD 1000 mm); an SSD 1000 mm set-up puts the isocentre on the surface, (0, -200, 0)
    mm, and a point at depth d mm on the central axis lies at (0, -200 + d, 0) mm.

    The whole box is the single EXTERNAL structure ``"External"``; no prescription.
    """
    n = int(round(side_mm / voxel_mm))
    if n < 1 or abs(n * voxel_mm - side_mm) > 1e-6:
        raise InputError(f"water phantom side {side_mm} mm is not a whole number of {voxel_mm} mm voxels")
    half = (n - 1) * voxel_mm / 2.0
    grid = Grid((n, n, n), (voxel_mm,) * 3, (-half,) * 3, DICOM_AXES)
    patient = Patient(patient_id="phantom_water", grid=grid,
                      ct=CtImage(np.zeros(grid.shape, dtype=np.int16), grid), source="phantom:water")
    patient.add_structure(Structure("External", np.ones(grid.shape, dtype=bool), StructureRole.EXTERNAL,
                                    (0, 255, 0)))
    return patient


#: TG-119 structures: name -> (role, colour).
TG119_STRUCTURES = {
    "OuterTarget": (StructureRole.TARGET, (230, 25, 75)),
    "Core": (StructureRole.OAR, (0, 130, 200)),
    "BODY": (StructureRole.EXTERNAL, (0, 255, 0)),
}
#: TG-119 C-shape prescription (Ezzell et al., Med. Phys. 36:5359, 2009): 50 Gy in 25 fractions.
TG119_PRESCRIPTION = Prescription("OuterTarget", 50.0, 25)


def tg119_phantom(path: str | Path) -> Patient:
    """The TG-119 C-shape phantom from the shared ``tg119.npz`` (pyRadPlan 0.5.0 / matRad).

    Arrays are ``[z, y, x]`` (DICOM order, identity direction cosines), spacing
    (2.5, 3, 3) mm and origin (-160, -250, -250) mm as the file states them. Structures:
    OuterTarget (TARGET), Core (OAR), BODY (EXTERNAL); prescription 50 Gy in 25 fractions
    to OuterTarget.

    Raises
    ------
    InputError
        The file is missing, not an npz, or lacks / misshapes a key; the message names it.
    """
    from core.io.openkbp import read_npz

    path = Path(path)
    a = read_npz(path)
    need = ["ct_hu", "spacing_mm", "origin_mm"] + [f"mask_{n}" for n in TG119_STRUCTURES]
    missing = [k for k in need if k not in a]
    if missing:
        raise InputError(f"not a TG-119 phantom file: missing {', '.join(missing)}", path)
    if "axis_order" in a and str(a["axis_order"]) != "zyx":
        raise InputError(f"axis_order is '{a['axis_order']}', expected 'zyx'", path)
    hu = a["ct_hu"]
    if hu.ndim != 3 or not np.issubdtype(hu.dtype, np.number):
        raise InputError(f"'ct_hu' must be a numeric 3D array, got {hu.dtype} {hu.shape}", path)
    try:
        grid = Grid(hu.shape, tuple(np.ravel(a["spacing_mm"])), tuple(np.ravel(a["origin_mm"])), DICOM_AXES)
    except InputError as exc:
        raise InputError(exc.message, path) from None
    patient = Patient(patient_id="tg119", grid=grid, ct=CtImage(hu.astype(np.int16), grid),
                      source=f"phantom:tg119 ({path})")
    for name, (role, color) in TG119_STRUCTURES.items():
        m = a[f"mask_{name}"]
        if m.shape != hu.shape:
            raise InputError(f"'mask_{name}' has shape {m.shape}, the CT has {hu.shape}", path)
        patient.add_structure(Structure(name, m.astype(bool), role, color))
    patient.prescriptions.append(TG119_PRESCRIPTION)
    return patient


#: ``phantom:<key>`` -> (builder taking the optional phantom file, needs a file?)
PHANTOMS: dict[str, tuple[Callable[[Path | None], Patient], bool]] = {
    "water": (lambda _path: water_phantom(), False),
    "tg119": (lambda path: tg119_phantom(path), True),
}
