"""DOSE files (docs/cli.md): read onto a patient's grid, write atomically.

Accepted as DOSE:

* a DOSE ``.npz``: ``dose_gy`` (float32, Gy) on the patient's grid in the patient's array
  order, ``spacing_mm`` (3) and ``origin_mm`` (3) in that order (optional ``axes``, as
  :func:`save_dose_npz` writes it). Shape and spacing must match the patient grid;
  an origin that differs only gives a warning (the file is *defined* to be on the grid);
* an OpenKBP case ``.npz`` (``pt_N.npz``): its clinical dose ``dose_cgy / 100`` is used,
  so ``openatp dvh pt_N.npz --dose pt_N.npz`` evaluates the reference plan;
* an RTDOSE DICOM file: read by :func:`core.io.dicom_import.read_rtdose` and resampled
  trilinearly onto the patient grid (zero outside the dose grid).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import GeometryError, InputError
from core.geometry import Grid, resample_to_grid
from core.patient import Dose, Patient

#: Spacing may differ by float rounding only (float32 vs float64 writers).
SPACING_TOL_MM = 1e-3
#: Dose below this is treated as float noise of a writer, below it is an error.
NEGATIVE_TOL_GY = 1e-4


def _fmt(shape) -> str:
    return " x ".join(str(int(s)) for s in shape)


def _check_values(d: np.ndarray, path: Path, key: str) -> None:
    if d.ndim != 3:
        raise InputError(f"'{key}' must be a 3D array, got shape {d.shape}", path)
    if not (np.issubdtype(d.dtype, np.floating) or np.issubdtype(d.dtype, np.integer)):
        raise InputError(f"'{key}' must be numeric, got {d.dtype}", path)
    if not np.all(np.isfinite(d)):
        raise InputError(f"'{key}' holds non-finite values (NaN or infinity)", path)
    if d.size and float(d.min()) < -NEGATIVE_TOL_GY:
        raise InputError(f"'{key}' holds negative doses (minimum {float(d.min()):.4g})", path)


def _check_on_grid(shape, spacing, grid: Grid, path: Path, what: str) -> None:
    if tuple(int(s) for s in shape) != grid.shape:
        raise GeometryError(f"{what} is {_fmt(shape)} voxels but the patient grid is {_fmt(grid.shape)} "
                            "(a DOSE file must be on the patient's grid, in its array order)", path)
    if not np.allclose(np.asarray(spacing, float), grid.spacing_mm, rtol=0, atol=SPACING_TOL_MM):
        raise GeometryError(f"{what} has voxel spacing {np.round(np.asarray(spacing, float), 4).tolist()} mm "
                            f"but the patient grid has {np.round(grid.spacing_mm, 4).tolist()} mm", path)


def _vector3(arrays: dict, key: str, path: Path) -> np.ndarray:
    if key not in arrays:
        raise InputError(f"DOSE file lacks '{key}'", path)
    v = np.asarray(arrays[key]).ravel()
    if v.size != 3 or not np.issubdtype(v.dtype, np.number) or not np.all(np.isfinite(v)):
        raise InputError(f"'{key}' must be 3 numbers, got {v.tolist()}", path)
    return v.astype(float)


def load_dose(path: str | Path, patient: Patient, warnings: list | None = None) -> Dose:
    """Read a DOSE file, an OpenKBP case's dose or an RTDOSE onto ``patient.grid``.

    Parameters
    ----------
    path : str or Path
        See the module docstring for the accepted formats.
    patient : Patient
        The patient the dose belongs to; the result is on ``patient.grid``.
    warnings : list, optional
        Planner-readable warnings are appended here (origin mismatch, partial coverage).

    Returns
    -------
    Dose
        ``dose_gy`` : float32 Gy on ``patient.grid`` (the patient's array order);
        ``label`` : the file name.

    Raises
    ------
    InputError, GeometryError
        Missing/unreadable file, missing keys, shape or spacing not the patient's, an
        RTDOSE that does not overlap the patient; the message names the file.
    """
    from core.io.openkbp import is_openkbp_case, openkbp_dose_gy, read_npz

    warnings = [] if warnings is None else warnings
    path = Path(path)
    if not path.exists():
        raise InputError("no such dose file", path)
    if path.is_dir():
        raise InputError("is a folder: give the DOSE .npz or the RTDOSE file itself", path)
    grid = patient.grid
    if path.suffix.lower() == ".npz":
        arrays = read_npz(path)
        if "dose_gy" in arrays:
            d = arrays["dose_gy"]
            _check_values(d, path, "dose_gy")
            spacing = _vector3(arrays, "spacing_mm", path)
            origin = _vector3(arrays, "origin_mm", path)
            if "axes" in arrays:
                axes = tuple(str(a) for a in np.ravel(arrays["axes"]))
                if axes != grid.axes:
                    raise GeometryError(f"dose axes {list(axes)} differ from the patient's {list(grid.axes)}", path)
            _check_on_grid(d.shape, spacing, grid, path, "the dose")
            if not np.allclose(origin, grid.origin_mm, rtol=0, atol=0.01):
                warnings.append(f"{path}: dose origin {np.round(origin, 2).tolist()} mm differs from the patient "
                                f"grid's {np.round(grid.origin_mm, 2).tolist()} mm; taken as on the patient grid")
            return Dose(d.astype(np.float32), grid, path.name)
        if is_openkbp_case(arrays):
            if "dose_cgy" not in arrays:
                raise InputError("this OpenKBP case holds no dose ('dose_cgy')", path)
            _check_values(arrays["dose_cgy"], path, "dose_cgy")
            vox = np.asarray(arrays.get("voxel_dimensions_mm", grid.spacing_mm), float).ravel()
            _check_on_grid(arrays["dose_cgy"].shape, vox, grid, path, "the case's dose")
            return Dose(openkbp_dose_gy(arrays, path), grid, path.name)
        raise InputError("neither a DOSE file ('dose_gy') nor an OpenKBP case ('dose_cgy')", path)
    return _load_rtdose(path, patient, warnings)


def _load_rtdose(path: Path, patient: Patient, warnings: list) -> Dose:
    try:
        from core.io.dicom_import import read_rtdose
    except ModuleNotFoundError as exc:
        if exc.name == "core.io.dicom_import":
            raise InputError("not an .npz DOSE file, and DICOM RTDOSE import is not available in this build",
                             path) from None
        raise
    src = read_rtdose(path, warnings=warnings)
    dst = patient.grid
    # Overlap of the two grids' voxel boxes in patient coordinates (half a voxel beyond centres).
    sb, db = src.grid.bounds_mm(), dst.bounds_mm()
    shalf = np.zeros(3)
    shalf[src.grid.patient_axis_index] = np.asarray(src.grid.spacing_mm) / 2
    dhalf = np.zeros(3)
    dhalf[dst.patient_axis_index] = np.asarray(dst.spacing_mm) / 2
    lo = np.maximum(sb[:, 0] - shalf, db[:, 0] - dhalf)
    hi = np.minimum(sb[:, 1] + shalf, db[:, 1] + dhalf)
    if np.any(hi <= lo):
        raise GeometryError("the RTDOSE grid does not overlap the patient (check the frame of reference)", path)
    dose = resample_to_grid(src.dose_gy, src.grid, dst, order=1, fill=0.0)
    covered = resample_to_grid(np.ones(src.grid.shape, np.uint8), src.grid, dst, order=0, fill=0).astype(bool)
    try:
        body = patient.external_mask()
    except GeometryError:
        body = np.ones(dst.shape, bool)
    n_body = int(np.count_nonzero(body))
    if n_body:
        frac = np.count_nonzero(covered & body) / n_body
        if frac == 0.0:
            raise GeometryError("the RTDOSE grid does not reach the patient's body", path)
        if frac < 0.999:
            warnings.append(f"{path}: the dose grid covers only {100 * frac:.1f} % of the body; "
                            "dose outside it is taken as 0")
    return Dose(np.clip(dose, 0, None).astype(np.float32), dst, path.name)


def save_dose_npz(path: str | Path, dose: Dose) -> None:
    """Write ``dose`` as a DOSE file (atomically): ``dose_gy`` float32, ``spacing_mm``,
    ``origin_mm`` (array axis order) and ``axes`` (the grid's axis codes)."""
    from core.io.atomic import atomic_save_npz

    g = dose.grid
    atomic_save_npz(path, dose_gy=np.asarray(dose.dose_gy, dtype=np.float32),
                    spacing_mm=np.asarray(g.spacing_mm, dtype=np.float64),
                    origin_mm=np.asarray(g.origin_mm, dtype=np.float64),
                    axes=np.asarray(g.axes))
