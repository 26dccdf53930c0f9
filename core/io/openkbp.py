"""OpenKBP head-and-neck cases (``pt_N.npz``) as :class:`~core.patient.Patient` objects.

Format (``../shared/data/openkbp/README.md``; Babier et al., "OpenKBP: the open-access
knowledge-based planning grand challenge and dataset", Med. Phys. 48:5549, 2021):
every array is 128 x 128 x 128 in the OpenKBP index order ``(y, x, -z)``
(:data:`core.geometry.OPENKBP_AXES`); ``ct`` is HU + 1000 clipped at 0, ``dose_cgy``
the clinical plan's dose in cGy, ``masks`` a bit field over ``roi_names``,
``possible_dose_mask`` the patient outline, ``voxel_dimensions_mm`` the voxel size in
array axis order.

Geometry: OpenKBP files carry no position, so the grid origin (centre of voxel
``[0, 0, 0]``) is placed at (0, 0, 0) mm on each axis's patient coordinate. Distances,
volumes and directions are right; absolute LPS positions are arbitrary but consistent
between a case and every DOSE file written for it.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.geometry import OPENKBP_AXES, Grid
from core.patient import CtImage, Dose, Patient, Prescription, Structure, StructureRole, default_color

#: Keys every case must hold; ``dose_cgy`` is optional (a case without a clinical plan).
REQUIRED_KEYS = ("ct", "masks", "roi_names", "voxel_dimensions_mm", "possible_dose_mask")

#: OpenKBP plans deliver every PTV level in 35 fractions (simultaneous integrated boost).
OPENKBP_FRACTIONS = 35

#: The PTV name carries its prescription (README): PTV70 -> 70 Gy, etc.
PTV_PRESCRIPTION_GY = {"PTV70": 70.0, "PTV63": 63.0, "PTV56": 56.0}

#: Errors numpy / zipfile raise for a file that is not a readable npz archive.
NPZ_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError)


def read_npz(path: str | Path) -> dict:
    """All arrays of an ``.npz`` file, read eagerly, as a dict.

    Raises
    ------
    InputError
        The file is missing, is not an npz archive, is truncated or holds pickled objects;
        the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    if path.is_dir():
        raise InputError("is a folder, expected an .npz file", path)
    # Look at the magic bytes first: numpy would call any unknown file a "pickle".
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror or exc})", path) from None
    if magic.startswith(b"\x93NUMPY"):
        raise InputError("not an .npz archive (a single .npy array?)", path)
    if not magic.startswith(b"PK"):
        raise InputError("not an .npz archive (not a zip file)", path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except NPZ_READ_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pickle" in reason.lower():
            reason = "holds Python objects (pickles), which are not loaded for safety"
        elif isinstance(exc, (zipfile.BadZipFile, EOFError, zlib.error)):
            reason = f"not a readable .npz archive (truncated or corrupt: {reason})"
        else:
            reason = f"not a readable .npz archive ({reason})"
        raise InputError(reason, path) from None


def is_openkbp_case(arrays: dict) -> bool:
    """True when an npz's arrays look like an OpenKBP case (rather than a DOSE file)."""
    return "masks" in arrays and "roi_names" in arrays and "ct" in arrays


def _check_case(arrays: dict, path: Path) -> tuple:
    missing = [k for k in REQUIRED_KEYS if k not in arrays]
    if missing:
        raise InputError(f"not an OpenKBP case: missing {', '.join(missing)}", path)
    ct, masks, pdm = arrays["ct"], arrays["masks"], arrays["possible_dose_mask"]
    shape = ct.shape
    if ct.ndim != 3 or min(shape) < 1:
        raise InputError(f"'ct' must be a 3D array, got shape {shape}", path)
    if not (np.issubdtype(ct.dtype, np.integer) or np.issubdtype(ct.dtype, np.floating)):
        raise InputError(f"'ct' must be numeric, got {ct.dtype}", path)
    for key in ("masks", "possible_dose_mask") + (("dose_cgy",) if "dose_cgy" in arrays else ()):
        if arrays[key].shape != shape:
            raise InputError(f"'{key}' has shape {arrays[key].shape}, 'ct' has {shape}: they must match", path)
    if not np.issubdtype(masks.dtype, np.integer):
        raise InputError(f"'masks' must be an integer bit field, got {masks.dtype}", path)
    if not (pdm.dtype == bool or np.issubdtype(pdm.dtype, np.integer)):
        raise InputError(f"'possible_dose_mask' must be boolean, got {pdm.dtype}", path)
    names = arrays["roi_names"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise InputError(f"'roi_names' must be a list of names, got {names.dtype} {names.shape}", path)
    if names.size > 8 * masks.dtype.itemsize:
        raise InputError(f"{names.size} roi_names but 'masks' ({masks.dtype}) holds only "
                         f"{8 * masks.dtype.itemsize} bits", path)
    vox = np.asarray(arrays["voxel_dimensions_mm"], dtype=float).ravel()
    if vox.size != 3 or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise InputError(f"'voxel_dimensions_mm' must be 3 positive numbers, got {vox.tolist()}", path)
    if "dose_cgy" in arrays:
        d = arrays["dose_cgy"]
        if not (np.issubdtype(d.dtype, np.integer) or np.issubdtype(d.dtype, np.floating)):
            raise InputError(f"'dose_cgy' must be numeric, got {d.dtype}", path)
        if np.issubdtype(d.dtype, np.floating) and not np.all(np.isfinite(d)):
            raise InputError("'dose_cgy' holds non-finite values", path)
        if d.min() < 0:
            raise InputError("'dose_cgy' holds negative doses", path)
    return shape, vox


def openkbp_grid(shape, voxel_dimensions_mm) -> Grid:
    """The grid of an OpenKBP case: OpenKBP axes, origin (0, 0, 0) (see module docstring)."""
    return Grid(tuple(shape), tuple(float(v) for v in voxel_dimensions_mm), (0.0, 0.0, 0.0), OPENKBP_AXES)


def openkbp_dose_gy(arrays: dict, path: str | Path) -> np.ndarray:
    """The reference dose of an OpenKBP case's arrays in Gy (float32)."""
    if "dose_cgy" not in arrays:
        raise InputError("this OpenKBP case holds no dose ('dose_cgy')", path)
    return (arrays["dose_cgy"].astype(np.float32) / np.float32(100.0))


def load_openkbp(path: str | Path, progress=None, cancel=None) -> Patient:
    """Read an OpenKBP case file.

    Parameters
    ----------
    path : str or Path
        ``pt_N.npz`` in the OpenKBP compact format.
    progress, cancel : optional
        Accepted for the loader interface; reading one case takes well under a second.

    Returns
    -------
    Patient
        ``grid``: OpenKBP axes ``(+y, +x, -z)``, spacing ``voxel_dimensions_mm``, origin 0.
        ``ct.hu``: int16 HU = ``ct - 1000`` (OpenKBP's 0, air or outside, becomes -1000).
        ``structures``: every ROI with at least one voxel (PTVs TARGET, the rest OAR) plus
        ``"External"`` (EXTERNAL) from ``possible_dose_mask``; absent ROIs are listed in
        ``warnings``. ``prescriptions``: one per present PTV, 35 fractions.
        ``doses["reference"]``: ``dose_cgy / 100`` Gy, when the file has a dose.

    Raises
    ------
    InputError
        Missing keys, wrong shapes or dtypes, not an npz, truncated; the message names the file.
    """
    from core.progress import check_cancel, report

    path = Path(path)
    arrays = read_npz(path)
    shape, vox = _check_case(arrays, path)
    check_cancel(cancel)
    grid = openkbp_grid(shape, vox)
    hu = (arrays["ct"].astype(np.int32) - 1000).clip(-1024, 32767).astype(np.int16)
    patient = Patient(patient_id=path.stem, grid=grid, ct=CtImage(hu, grid), source=str(path))

    masks = arrays["masks"]
    absent = []
    for i, raw_name in enumerate(arrays["roi_names"]):
        name = str(raw_name).strip()
        if not name:
            continue
        mask = ((masks >> i) & 1).astype(bool)
        if not mask.any():
            absent.append(name)
            continue
        role = StructureRole.TARGET if name.upper().startswith("PTV") else StructureRole.OAR
        patient.add_structure(Structure(name, mask, role, default_color(i)))
        if name in PTV_PRESCRIPTION_GY:
            patient.prescriptions.append(Prescription(name, PTV_PRESCRIPTION_GY[name], OPENKBP_FRACTIONS))
    if absent:
        patient.warnings.append(f"structures absent in this case (no voxels): {', '.join(absent)}")
    # highest dose level first: the primary prescription
    patient.prescriptions.sort(key=lambda p: -p.dose_gy)

    pdm = arrays["possible_dose_mask"].astype(bool)
    patient.possible_dose_mask = pdm
    if pdm.any():
        patient.add_structure(Structure("External", pdm, StructureRole.EXTERNAL, (0, 255, 0)))
    else:
        patient.warnings.append("possible_dose_mask is empty: no External structure")

    if "dose_cgy" in arrays:
        patient.doses["reference"] = Dose(openkbp_dose_gy(arrays, path), grid, "reference")
    else:
        patient.warnings.append("no reference dose in this case ('dose_cgy' absent)")
    report(progress, 1, 1, "loaded OpenKBP case")
    return patient
