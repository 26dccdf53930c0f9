"""DICOM-RT import: CT series, RTSTRUCT, RTDOSE and RTPLAN -> :class:`core.patient.Patient`.

What a physicist can rely on
----------------------------
* **CT slice order** comes from geometry: slices are sorted by their position along the
  slice normal (``ImageOrientationPatient`` row x column cosines, dotted with
  ``ImagePositionPatient``), never by file name or ``InstanceNumber``. Array axis 0 always
  runs toward patient superior (``+z``); flipped row/column directions (e.g. feet-first
  or mirrored images) become ``-x``/``-y`` grid axes, so no pixel is moved.
* **HU**: ``RescaleSlope``/``RescaleIntercept`` are applied per slice. The result is
  ``int16`` when every slope and intercept is an integer and the values fit, else ``float32``.
* **Slice spacing**: differences within 1 % (at least 0.01 mm) of the median spacing are
  rounding in the files and ignored. A step above 1.5 x the median spacing is a missing
  slice: the import stops with an error naming where (contours and dose on a missing
  slice cannot be trusted), unless the folder also holds an RTDOSE, in which case it loads
  for dose review on the dose grid (``ct=None``, with a warning that images are missing).
  Other uneven spacing (e.g. a protocol that changes slice thickness) is resampled
  linearly to the median spacing, with a warning; HU then become ``float32``.
* **Orientation**: only axial images (row/column cosines along patient x/y, within 1e-3)
  are accepted; tilted-gantry, sagittal or coronal series give a clear error.
* **Mixed series**: several CT series in one folder is an error that names them, since
  choosing one silently could plan on the wrong scan.
* **Structures** are rasterised with :mod:`core.io.rasterize`: a voxel is inside when its
  centre is inside the contours of its plane (even-odd rule: holes and islands work).
  On the CT grid each contour goes to the slice nearest its z (within half a slice); on
  a resampled CT or a dose grid each contour plane stands for a slab reaching half-way
  to its neighbouring planes (:func:`core.io.rasterize.rasterize_contours`). A
  structure entirely outside the images is an error naming it; one partly outside is
  clipped with a warning (what commercial planning systems do). ROIs without contour
  data are kept empty with ``has_contours=False`` and a warning; POINT ROIs (isocentre
  markers) are not structures: their coordinates go to ``patient.dicom["roi_points"]``.
* **RTDOSE** is read on its own grid (``DoseGridScaling`` applied, relative or absolute
  ``GridFrameOffsetVector``), resampled trilinearly to the CT grid into
  ``patient.doses["reference"]``; the native dose stays in ``patient.dicom["rtdose_native"]``.
  A dose grid that misses part of the body gives a warning with the uncovered fraction.
* **Prescriptions** come from the RTPLAN (``DoseReferenceSequence`` target prescription
  dose, fractions from ``FractionGroupSequence``), else from target names (``PTV70``,
  ``PTV_70``, ``PTV 70Gy``, ``PTV7000`` (cGy), ``PTV_50.4``); unknown fractions are set
  for 2 Gy per fraction to the highest prescription, with a warning saying so.

Every problem with the input raises :class:`core.errors.DicomError` (or ``InputError``)
carrying the file or folder path and one sentence; recoverable oddities are appended
to ``patient.warnings`` (and logged).
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings as _pywarnings
from pathlib import Path

import numpy as np

from core.errors import DicomError, InputError
from core.geometry import Grid, resample_to_grid
from core.io.rasterize import rasterize_contours
from core.patient import CtImage, Dose, Patient, Prescription, Structure, StructureRole, guess_role
from core.progress import check_cancel, report

log = logging.getLogger(__name__)

CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
RTDOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
RTPLAN_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.481.5", "1.2.840.10008.5.1.4.1.1.481.8"}

_ORIENT_TOL = 1e-3          # direction cosines this close to an axis count as on it
_SPACING_RTOL = 0.01        # slice steps within 1 % of the median are file rounding
_SPACING_ATOL_MM = 0.01
_GAP_FACTOR = 1.5           # a step this many times the median is a missing slice
_INPLANE_TOL_MM = 0.05      # row/column origin may wander this much between slices
_PLANAR_TOL_MM = 0.1        # an axial contour's z may vary this much (rounding in the file)


class _IncompleteSeries(DicomError):
    """The CT series has missing slices (the caller may fall back to dose review)."""


@contextlib.contextmanager
def _malformed(path, what: str):
    """Turn a missing or malformed attribute deep in a dataset into a DicomError naming the
    file (pydicom raises AttributeError/KeyError/TypeError/ValueError for those)."""
    try:
        yield
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        raise DicomError(f"the {what} is incomplete or malformed ({type(exc).__name__}: {exc})", path) from None


# -- reading files -------------------------------------------------------------------------
def _dcmread(path: Path):
    """Read one file. Returns a dataset, or ``None`` when the file is not DICOM at all.

    Raises DicomError for a file that claims to be DICOM but cannot be parsed (truncated
    or corrupt). Files without the 128-byte preamble are read with ``force`` and accepted
    only when they hold a DICOM class or modality (pydicom's own ``rtstruct.dcm`` is one).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise DicomError(f"cannot read the file ({exc.strerror})", path) from None
    has_magic = len(head) == 132 and head[128:132] == b"DICM"
    if not has_magic and head[:2] not in (b"\x08\x00", b"\x02\x00", b"\x00\x08", b"\x00\x02"):
        # A preamble-less DICOM stream starts with a group 0002 or 0008 tag (either byte
        # order); anything else is not DICOM, and forcing pydicom through it (a large
        # image or archive) would only waste time and memory.
        return None
    try:
        with _pywarnings.catch_warnings():
            _pywarnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), force=not has_magic)
    except InvalidDicomError:
        return None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for broken files
        if has_magic:
            raise DicomError(f"the DICOM file is truncated or corrupt ({type(exc).__name__})", path) from None
        return None
    if not has_magic:
        sop = str(ds.get("SOPClassUID", "") or "")
        mod = str(ds.get("Modality", "") or "")
        if not (sop.startswith("1.2.840.10008.") or mod.isalpha()):
            return None
    short = _short_element(ds)
    if short is not None:
        if not has_magic and "SOPClassUID" not in ds and "Modality" not in ds:
            return None
        raise DicomError(f"the DICOM file is truncated (element {short} is cut short)", path)
    if "SOPClassUID" not in ds and "Modality" not in ds:
        if has_magic:
            raise DicomError("the DICOM file is truncated or holds no SOP class or modality", path)
        return None
    return ds


def _short_element(ds):
    """Tag of the first element whose stored value is shorter than its declared length.

    pydicom keeps elements raw until used and does not complain when a file ends inside
    a value; comparing raw lengths finds truncation without converting any value.
    """
    from pydicom.dataelem import RawDataElement

    for elem in ds.elements():
        if isinstance(elem, RawDataElement):
            if elem.length != 0xFFFFFFFF and elem.value is not None and len(elem.value) < elem.length:
                return elem.tag
        elif elem.VR == "SQ":
            for item in elem.value or []:
                t = _short_element(item)
                if t is not None:
                    return t
    return None


def _contour_points(item) -> np.ndarray | None:
    """ContourData as a float array, parsed straight from the raw bytes when possible
    (pydicom's per-value DS objects dominate load time for large structure sets)."""
    from pydicom.dataelem import RawDataElement

    if 0x30060050 not in item:
        return None
    elem = item.get_item(0x30060050)
    if isinstance(elem, RawDataElement) and elem.value:
        try:
            return np.array(bytes(elem.value).split(b"\\"), dtype=float)
        except ValueError:
            pass  # odd formatting: let pydicom parse it
    data = item.ContourData
    if data is None or data == "":
        return None
    return np.asarray([float(v) for v in (data if hasattr(data, "__iter__") and not isinstance(data, str)
                                          else [data])], dtype=float)


def _kind(ds) -> str:
    mod = str(ds.get("Modality", "")).upper()
    sop = str(ds.get("SOPClassUID", ""))
    if mod == "RTSTRUCT" or sop == RTSTRUCT_SOP_CLASS:
        return "RTSTRUCT"
    if mod == "RTDOSE" or sop == RTDOSE_SOP_CLASS:
        return "RTDOSE"
    if mod == "RTPLAN" or sop in RTPLAN_SOP_CLASSES:
        return "RTPLAN"
    if mod == "CT" or sop in CT_SOP_CLASSES:
        return "CT"
    return mod or "OTHER"


def _pixels(ds, path: Path) -> np.ndarray:
    try:
        with _pywarnings.catch_warnings():
            _pywarnings.simplefilter("ignore")
            return ds.pixel_array
    except Exception as exc:  # noqa: BLE001
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if "PixelData" not in ds:
            raise DicomError("the image holds no pixel data (truncated file?)", path) from None
        if ts is not None and getattr(ts, "is_compressed", False):
            raise DicomError(f"the pixel data is compressed ({ts.name}) and cannot be decoded here: "
                             f"{exc}", path) from None
        raise DicomError(f"the pixel data is truncated or corrupt: {exc}", path) from None


def _floats(ds, keyword: str, n: int, path: Path) -> np.ndarray:
    v = ds.get(keyword)
    if v is None:
        raise DicomError(f"the required attribute {keyword} is missing", path)
    seq = [v] if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") else list(v)
    try:
        arr = np.array([float(x) for x in seq], dtype=float)
    except (TypeError, ValueError):
        raise DicomError(f"{keyword} is not numeric: {v!r}", path) from None
    if arr.size != n or not np.all(np.isfinite(arr)):
        raise DicomError(f"{keyword} must hold {n} finite numbers, got {list(arr)}", path)
    return arr


# -- orientation ---------------------------------------------------------------------------
def _axis_code(vec: np.ndarray, path: Path, what: str) -> str:
    """'+x'/'-y'/... for a direction cosine along a patient axis; error otherwise."""
    k = int(np.argmax(np.abs(vec)))
    unit = np.zeros(3)
    unit[k] = np.sign(vec[k])
    if np.max(np.abs(vec - unit)) > _ORIENT_TOL:
        raise DicomError(f"the {what} direction {np.round(vec, 4).tolist()} is oblique: only axial images "
                         "(rows and columns along the patient's x and y axes) can be planned on", path)
    return ("+" if unit[k] > 0 else "-") + "xyz"[k]


def _inplane_geometry(ds, path: Path) -> tuple[str, str, np.ndarray, np.ndarray]:
    """(row-axis code, col-axis code, row cosine, col cosine) of an axial image.

    The *row axis* of the array (axis 1) advances along the column direction cosine
    ``IOP[3:6]``; the *column axis* (axis 2) along the row cosine ``IOP[0:3]``.
    """
    iop = _floats(ds, "ImageOrientationPatient", 6, path)
    row_cos, col_cos = iop[:3], iop[3:]
    c_code = _axis_code(row_cos, path, "image row")
    r_code = _axis_code(col_cos, path, "image column")
    if "z" in (c_code[1], r_code[1]):
        raise DicomError("the images are sagittal or coronal: only axial images can be planned on", path)
    return r_code, c_code, row_cos, col_cos


def _inplane_origin_spacing(ds, path: Path, r_code: str, c_code: str) -> tuple[tuple, tuple]:
    ipp = _floats(ds, "ImagePositionPatient", 3, path)
    ps = _floats(ds, "PixelSpacing", 2, path)
    if np.any(ps <= 0):
        raise DicomError(f"PixelSpacing must be positive, got {ps.tolist()}", path)
    origin = (ipp["xyz".index(r_code[1])], ipp["xyz".index(c_code[1])])
    return origin, (float(ps[0]), float(ps[1]))


# -- CT series -----------------------------------------------------------------------------
def _hu_of(ds, path: Path) -> tuple[np.ndarray, bool]:
    """HU of one slice and whether they are exact integers."""
    raw = _pixels(ds, path)
    if raw.ndim != 2:
        raise DicomError(f"multi-frame (enhanced) CT images are not supported: this file holds {raw.shape[0]} "
                         "frames; export the series as single-frame CT images", path)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    if slope.is_integer() and intercept.is_integer():
        lo = float(raw.min(initial=0)) * slope + intercept
        hi = float(raw.max(initial=0)) * slope + intercept
        if min(lo, hi) >= -32768 and max(lo, hi) <= 32767:
            hu = raw.astype(np.int32)
            if slope != 1:
                hu *= int(slope)
            hu += int(intercept)
            return hu.astype(np.int16), True
        return (raw.astype(np.float64) * slope + intercept).astype(np.float32), False
    return (raw.astype(np.float64) * slope + intercept).astype(np.float32), False


def _load_ct_series(items: list, warns: list, progress=None, cancel=None) -> tuple[CtImage, dict]:
    """Build the CT volume from (path, dataset) pairs of one series."""
    p0, ds0 = items[0]
    r_code, c_code, row_cos, col_cos = _inplane_geometry(ds0, p0)
    normal = np.cross(row_cos, col_cos)
    shape2d = (int(ds0.Rows), int(ds0.Columns))
    ps0 = _floats(ds0, "PixelSpacing", 2, p0)
    pos, inplane = [], []
    for p, ds in items:
        iop = _floats(ds, "ImageOrientationPatient", 6, p)
        if np.max(np.abs(iop - np.concatenate([row_cos, col_cos]))) > _ORIENT_TOL:
            raise DicomError("this image's orientation differs from the rest of its series", p)
        if (int(ds.Rows), int(ds.Columns)) != shape2d:
            raise DicomError(f"this image is {ds.Rows} x {ds.Columns} pixels, the series is "
                             f"{shape2d[0]} x {shape2d[1]}", p)
        if np.max(np.abs(_floats(ds, "PixelSpacing", 2, p) - ps0)) > 1e-4:
            raise DicomError("this image's pixel spacing differs from the rest of its series", p)
        ipp = _floats(ds, "ImagePositionPatient", 3, p)
        pos.append(float(np.dot(normal, ipp)))
        inplane.append(ipp)
    pos = np.asarray(pos)
    # Axis 0 must run toward +z: sort along the normal, then reverse if the normal points down.
    order = np.argsort(pos, kind="stable")
    if normal[2] < 0:
        order = order[::-1]
    items = [items[i] for i in order]
    z = np.asarray([inplane[i][2] for i in order])
    ipps = np.asarray([inplane[i] for i in order])
    drift = np.max(np.abs(ipps[:, :2] - ipps[0, :2]), axis=0) if len(ipps) > 1 else np.zeros(2)
    if np.max(drift) > _INPLANE_TOL_MM:
        raise DicomError(f"the image origins shift by up to {np.max(drift):.2f} mm in-plane from slice to "
                         "slice (gantry tilt?): such series cannot be used without reformatting", items[0][0])
    n = len(items)
    if n > 1:
        dz = np.diff(z)
        dup = np.nonzero(dz < 1e-3)[0]
        if dup.size:
            i = int(dup[0])
            raise DicomError(f"two images lie at the same position z = {z[i]:.2f} mm: "
                             f"{items[i][0].name} and {items[i + 1][0].name}", items[i][0].parent)
        med = float(np.median(dz))
        gaps = np.nonzero(dz > _GAP_FACTOR * med)[0]
        if gaps.size:
            desc = "; ".join(f"between z = {z[i]:.2f} and {z[i + 1]:.2f} mm "
                             f"({int(round(dz[i] / med)) - 1} slice(s) of {med:.2f} mm missing)"
                             for i in gaps[:3])
            more = f" and {gaps.size - 3} more gaps" if gaps.size > 3 else ""
            raise _IncompleteSeries(f"the CT series is incomplete: {desc}{more}", items[0][0].parent)
        uneven = np.max(np.abs(dz - med)) > max(_SPACING_ATOL_MM, _SPACING_RTOL * med)
        spacing_z = (z[-1] - z[0]) / (n - 1)
    else:
        uneven = False
        spacing_z = float(ds0.get("SliceThickness", 0) or 0) or 1.0
        warns.append(f"the CT series has a single slice; slice thickness taken as {spacing_z:g} mm")
    # pixels
    first = ipps[0]
    o_r, o_c = first["xyz".index(r_code[1])], first["xyz".index(c_code[1])]
    vol = np.empty((n,) + shape2d, dtype=np.int16)
    for k, (p, ds) in enumerate(items):
        check_cancel(cancel)
        hu, ex = _hu_of(ds, p)
        if not ex and vol.dtype != np.float32:
            vol = vol.astype(np.float32)  # one slice with a fractional rescale: all float
        vol[k] = hu
        report(progress, k + 1, n, "reading CT pixels")
    info = {"ct_sop_instance_uids": [str(ds.SOPInstanceUID) for _, ds in items],
            "slice_z_mm": z.tolist()}
    if uneven:
        n_new = int(round((z[-1] - z[0]) / med)) + 1
        z_new = z[0] + np.arange(n_new) * ((z[-1] - z[0]) / (n_new - 1))
        j = np.clip(np.searchsorted(z, z_new, side="right") - 1, 0, n - 2)
        w = ((z_new - z[j]) / (z[j + 1] - z[j])).astype(np.float32)[:, None, None]
        v = vol.astype(np.float32)
        vol = (1 - w) * v[j] + w * v[j + 1]
        spacing_z = float(z_new[1] - z_new[0])
        warns.append(f"the CT slices are unevenly spaced (steps {dz.min():.2f} to {dz.max():.2f} mm): "
                     f"resampled to {n_new} slices of {spacing_z:.3f} mm by linear interpolation")
        info = {"resampled_from_z_mm": z.tolist()}
    ps = _floats(ds0, "PixelSpacing", 2, p0)
    grid = Grid(vol.shape, (spacing_z, ps[0], ps[1]), (z[0], o_r, o_c), ("+z", r_code, c_code))
    return CtImage(vol, grid), info


# -- RTDOSE --------------------------------------------------------------------------------
def _rtdose_from_ds(ds, path: Path, warns: list) -> Dose:
    r_code, c_code, row_cos, col_cos = _inplane_geometry(ds, path)
    normal = np.cross(row_cos, col_cos)
    if abs(abs(normal[2]) - 1) > _ORIENT_TOL:
        raise DicomError("the dose grid is not axial", path)
    arr = _pixels(ds, path)
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape[0] != nframes:
        raise DicomError(f"the dose holds {arr.shape[0]} frames but NumberOfFrames says {nframes}", path)
    scale = float(ds.get("DoseGridScaling", 1.0) or 1.0)
    if not np.isfinite(scale) or scale <= 0:
        raise DicomError(f"DoseGridScaling must be a positive number, got {ds.get('DoseGridScaling')}", path)
    dose = arr.astype(np.float64) * scale
    ipp = _floats(ds, "ImagePositionPatient", 3, path)
    if nframes > 1 or "GridFrameOffsetVector" in ds:
        off = ds.get("GridFrameOffsetVector")
        if off is None:
            raise DicomError("a multi-frame dose needs GridFrameOffsetVector", path)
        off = np.array([float(v) for v in (off if hasattr(off, "__iter__") and not isinstance(off, str)
                                           else [off])])
        if off.size != nframes:
            raise DicomError(f"GridFrameOffsetVector has {off.size} values for {nframes} frames", path)
        # Relative form starts at 0 (offsets along the normal from ImagePositionPatient);
        # the absolute form (allowed for axial doses) starts at ImagePositionPatient's z.
        if abs(off[0]) < 1e-6:
            z = ipp[2] + off * normal[2]
        elif abs(off[0] - ipp[2]) < 1e-3:
            z = off.copy()
        else:
            raise DicomError(f"GridFrameOffsetVector starts at {off[0]:g}: neither 0 (relative) nor the image "
                             f"position z {ipp[2]:g} (absolute)", path)
    else:
        z = np.array([ipp[2]])
    order = np.argsort(z, kind="stable")
    z = z[order]
    dose = dose[order]
    if nframes > 1:
        dz = np.diff(z)
        if np.min(dz) <= 0:
            raise DicomError("two dose frames lie at the same position", path)
        med = float(np.median(dz))
        if np.max(np.abs(dz - med)) > max(_SPACING_ATOL_MM, _SPACING_RTOL * med):
            raise DicomError(f"the dose frames are unevenly spaced ({dz.min():.2f} to {dz.max():.2f} mm)", path)
        spacing_z = (z[-1] - z[0]) / (nframes - 1)
    else:
        spacing_z = float(ds.get("SliceThickness", 0) or 0) or 1.0
    units = str(ds.get("DoseUnits", "GY")).upper()
    if units != "GY":
        warns.append(f"{path.name}: dose units are {units}, not GY: values kept as stored and labelled Gy")
    if np.any(dose < 0):
        warns.append(f"{path.name}: negative dose values (min {dose.min():.3g}) set to 0")
        dose = np.maximum(dose, 0)
    (o_r, o_c), (s_r, s_c) = _inplane_origin_spacing(ds, path, r_code, c_code)
    grid = Grid(dose.shape, (spacing_z, s_r, s_c), (z[0], o_r, o_c), ("+z", r_code, c_code))
    label = str(ds.get("DoseSummationType", "dose") or "dose").lower()
    return Dose(dose.astype(np.float32), grid, label=f"rtdose {label}")


def read_rtdose(path, warnings: list | None = None) -> Dose:
    """Read an RTDOSE file on its own grid.

    Parameters
    ----------
    path : str or Path
    warnings : list, optional
        Receives planner-readable warnings (non-Gy units, negative values).

    Returns
    -------
    Dose
        ``dose_gy`` : (frames, rows, cols) float32, Gy (``DoseGridScaling`` applied), on a
        grid with axes ``("+z", ±y, ±x)``; frames sorted toward +z.
    """
    path = Path(path)
    if not path.is_file():
        raise DicomError("the RTDOSE file does not exist", path)
    ds = _dcmread(path)
    if ds is None:
        raise DicomError("not a DICOM file", path)
    if _kind(ds) != "RTDOSE":
        raise DicomError(f"not an RTDOSE file (modality {ds.get('Modality', '?')})", path)
    warns = [] if warnings is None else warnings
    with _malformed(path, "RTDOSE"):
        dose = _rtdose_from_ds(ds, path, warns)
    for w in warns:
        log.info(w)
    return dose


# -- RTPLAN --------------------------------------------------------------------------------
def _f(v, default=None):
    try:
        return None if v is None or v == "" else float(v)
    except (TypeError, ValueError):
        return default


def _rtplan_from_ds(ds, path: Path) -> dict:
    fractions = None
    beam_mu, beam_dose = {}, {}
    fgs = ds.get("FractionGroupSequence") or []
    if fgs:
        fg = fgs[0]
        fractions = int(fg.NumberOfFractionsPlanned) if fg.get("NumberOfFractionsPlanned") else None
        for rb in fg.get("ReferencedBeamSequence") or []:
            bn = int(rb.ReferencedBeamNumber)
            beam_mu[bn] = _f(rb.get("BeamMeterset"))
            beam_dose[bn] = _f(rb.get("BeamDose"))
    prescriptions = []
    for dr in ds.get("DoseReferenceSequence") or []:
        d = _f(dr.get("TargetPrescriptionDose"))
        if d is None or str(dr.get("DoseReferenceType", "")).upper() != "TARGET":
            continue
        prescriptions.append({"dose_gy": d, "fractions": fractions,
                              "roi_number": int(dr.ReferencedROINumber) if dr.get("ReferencedROINumber") else None,
                              "description": str(dr.get("DoseReferenceDescription", "") or ""),
                              "dose_reference_number": int(dr.get("DoseReferenceNumber", 0) or 0)})
    beams = []
    for b in ds.get("BeamSequence") or []:
        bn = int(b.BeamNumber)
        devices = {str(d.RTBeamLimitingDeviceType): {
            "n_pairs": int(d.get("NumberOfLeafJawPairs", 0) or 0),
            "leaf_boundaries_mm": [float(v) for v in d.get("LeafPositionBoundaries") or []]}
            for d in b.get("BeamLimitingDeviceSequence") or []}
        cps, state = [], {}
        for cp in b.get("ControlPointSequence") or []:
            # DICOM only repeats what changes from one control point to the next: carry the rest.
            for kw, key in (("GantryAngle", "gantry_deg"), ("BeamLimitingDeviceAngle", "collimator_deg"),
                            ("PatientSupportAngle", "couch_deg"), ("NominalBeamEnergy", "energy_mv"),
                            ("DoseRateSet", "dose_rate_mu_per_min"),
                            ("SourceToSurfaceDistance", "ssd_mm")):
                if cp.get(kw) is not None and cp.get(kw) != "":
                    state[key] = float(cp.get(kw))
            if cp.get("GantryRotationDirection"):
                state["gantry_rotation"] = str(cp.GantryRotationDirection)
            if cp.get("IsocenterPosition"):
                state["isocenter_mm"] = [float(v) for v in cp.IsocenterPosition]
            positions = dict(state.get("positions", {}))
            for dp in cp.get("BeamLimitingDevicePositionSequence") or []:
                positions[str(dp.RTBeamLimitingDeviceType)] = [float(v) for v in dp.LeafJawPositions]
            state["positions"] = positions
            cmw = _f(cp.get("CumulativeMetersetWeight"))
            jaws = {k: v for k, v in positions.items() if not k.startswith("MLC")}
            mlc = {k: v for k, v in positions.items() if k.startswith("MLC")}
            cps.append({"index": int(cp.get("ControlPointIndex", len(cps)) or len(cps)),
                        "cumulative_meterset_weight": cmw,
                        **{k: v for k, v in state.items() if k != "positions"},
                        "jaws_mm": jaws, "mlc_mm": mlc})
        first = cps[0] if cps else {}
        final_w = _f(b.get("FinalCumulativeMetersetWeight"), 1.0) or 1.0
        mu = beam_mu.get(bn)
        for cp in cps:
            w = cp["cumulative_meterset_weight"]
            cp["cumulative_mu"] = None if (mu is None or w is None) else mu * w / final_w
        beams.append({
            "number": bn, "name": str(b.get("BeamName", "") or f"beam {bn}"),
            "type": str(b.get("BeamType", "") or ""), "radiation_type": str(b.get("RadiationType", "") or ""),
            "machine": str(b.get("TreatmentMachineName", "") or ""),
            "delivery_type": str(b.get("TreatmentDeliveryType", "") or ""),
            "sad_mm": _f(b.get("SourceAxisDistance")),
            "energy_mv": first.get("energy_mv"), "gantry_deg": first.get("gantry_deg"),
            "gantry_stop_deg": cps[-1].get("gantry_deg") if cps else None,
            "couch_deg": first.get("couch_deg"), "collimator_deg": first.get("collimator_deg"),
            "isocenter_mm": first.get("isocenter_mm"), "mu": mu, "beam_dose_gy": beam_dose.get(bn),
            "final_cumulative_meterset_weight": final_w, "limiting_devices": devices,
            "control_points": cps})
    return {"label": str(ds.get("RTPlanLabel", "") or ""), "name": str(ds.get("RTPlanName", "") or ""),
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
            "fractions": fractions, "prescriptions": prescriptions, "beams": beams,
            "total_mu": float(sum(v for v in beam_mu.values() if v is not None)), "path": str(path)}


def read_rtplan(path) -> dict:
    """Read an RTPLAN into a plain dict.

    Returns
    -------
    dict
        ``label``, ``name``, ``sop_instance_uid``, ``frame_of_reference_uid``, ``fractions``,
        ``prescriptions`` (list of ``{"dose_gy", "fractions", "roi_number", "description"}``
        from target dose references), ``total_mu`` and ``beams``: list of ``{"number", "name",
        "type", "radiation_type", "machine", "sad_mm", "energy_mv", "gantry_deg",
        "gantry_stop_deg", "couch_deg", "collimator_deg", "isocenter_mm" (LPS mm), "mu"
        (BeamMeterset), "beam_dose_gy", "limiting_devices", "control_points"}``. Each
        control point is complete (unchanged values carried from the previous one):
        ``gantry_deg``, ``collimator_deg``, ``couch_deg``, ``energy_mv``, ``isocenter_mm``,
        ``cumulative_meterset_weight``, ``cumulative_mu``, ``jaws_mm`` ({"X"/"Y"/"ASYMX"...:
        positions}) and ``mlc_mm`` ({"MLCX": leaf positions, bank A then bank B}).
    """
    path = Path(path)
    if not path.is_file():
        raise DicomError("the RTPLAN file does not exist", path)
    ds = _dcmread(path)
    if ds is None:
        raise DicomError("not a DICOM file", path)
    if _kind(ds) != "RTPLAN":
        raise DicomError(f"not an RTPLAN file (modality {ds.get('Modality', '?')})", path)
    with _malformed(path, "RTPLAN"):
        return _rtplan_from_ds(ds, path)


# -- prescriptions from names ----------------------------------------------------------------
_RX_NAME_RE = re.compile(r"^(?:PTV|CTV|GTV|ITV)[\s_\-]*(\d+(?:[.,]\d+)?)\s*(c?gy)?(?![\d.])", re.IGNORECASE)


def dose_from_target_name(name: str) -> float | None:
    """Prescription dose (Gy) written in a target's name, or None.

    ``PTV70``, ``PTV_70``, ``PTV 70Gy``, ``PTV_50.4`` -> Gy; ``PTV7000``, ``PTV_5040cGy`` -> cGy.
    A bare number is read as Gy between 5 and 100 and as cGy from 200 up; other bare
    numbers (``PTV1``, ``PTV2``: numbering, not dose) are ignored.
    """
    m = _RX_NAME_RE.match(name.strip())
    if not m:
        return None
    value = float(m.group(1).replace(",", "."))
    unit = (m.group(2) or "").lower()
    if unit == "cgy":
        return value / 100.0 if value > 0 else None
    if unit == "gy":
        return value if value > 0 else None
    if 5 <= value <= 100:
        return value
    if value >= 200:
        return value / 100.0
    return None


def prescriptions_from_names(names, warnings: list, fractions: int | None = None) -> list:
    """Prescriptions parsed from target names (see :func:`dose_from_target_name`).

    When ``fractions`` is unknown, all prescriptions share the number of fractions that
    gives 2 Gy per fraction to the highest one (simultaneous integrated boost), and a
    warning says so.
    """
    found = [(n, d) for n in names if (d := dose_from_target_name(n)) is not None]
    if not found:
        return []
    if fractions is None:
        top = max(d for _, d in found)
        fractions = max(1, int(round(top / 2.0)))
        warnings.append(f"number of fractions unknown: assumed {fractions} fractions "
                        f"(2 Gy per fraction to the highest prescription, {top:g} Gy)")
    return [Prescription(n, d, fractions) for n, d in found]


# -- RTSTRUCT ------------------------------------------------------------------------------
def _struct_frames(ds) -> set:
    uids = {str(f.FrameOfReferenceUID) for f in ds.get("ReferencedFrameOfReferenceSequence") or []
            if f.get("FrameOfReferenceUID")}
    uids |= {str(r.ReferencedFrameOfReferenceUID) for r in ds.get("StructureSetROISequence") or []
             if r.get("ReferencedFrameOfReferenceUID")}
    return uids


def _struct_series(ds) -> set:
    out = set()
    for f in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for st in f.get("RTReferencedStudySequence") or []:
            for se in st.get("RTReferencedSeriesSequence") or []:
                if se.get("SeriesInstanceUID"):
                    out.add(str(se.SeriesInstanceUID))
    return out


def _structures_from_ds(ds, path: Path, grid: Grid, match: str, strict_outside: bool,
                        patient: Patient, warns: list, progress=None, cancel=None) -> dict:
    """Rasterise every ROI of an RTSTRUCT on ``grid``; returns {roi_number: name}."""
    rois = {}
    for r in ds.get("StructureSetROISequence") or []:
        rois[int(r.ROINumber)] = str(r.get("ROIName", "") or f"ROI {r.ROINumber}").strip() or f"ROI {r.ROINumber}"
    types = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
             for o in ds.get("RTROIObservationsSequence") or [] if o.get("ReferencedROINumber") is not None}
    contours = {}
    for rc in ds.get("ROIContourSequence") or []:
        contours[int(rc.ReferencedROINumber)] = rc
    number_to_name = {}
    n_rois = len(rois)
    for k, (num, name) in enumerate(rois.items()):
        check_cancel(cancel)
        report(progress, k, max(n_rois, 1), f"structure {name}")
        base, i = name, 2
        while name in patient.structures:
            name = f"{base} ({i})"
            i += 1
        if name != base:
            warns.append(f"two ROIs are named '{base}': the second is called '{name}'")
        rc = contours.get(num)
        color = tuple(int(v) for v in rc.ROIDisplayColor) if rc is not None and rc.get("ROIDisplayColor") \
            and len(rc.ROIDisplayColor) == 3 else None
        closed, points, tilted = [], [], 0
        for c in (rc.get("ContourSequence") or []) if rc is not None else []:
            pts = _contour_points(c)
            if pts is None or pts.size == 0:
                continue
            if not np.all(np.isfinite(pts)):
                raise DicomError(f"ROI '{name}': a contour holds non-numeric coordinates", path)
            if pts.size % 3:
                raise DicomError(f"ROI '{name}': a contour has {pts.size} coordinates, not a multiple of 3", path)
            pts = pts.reshape(-1, 3)
            gtype = str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            if gtype == "POINT":
                points.extend(pts.tolist())
            elif gtype == "CLOSED_PLANAR" and len(pts) >= 3:
                if np.ptp(pts[:, 2]) > _PLANAR_TOL_MM:
                    tilted += 1  # a sagittal/coronal/oblique contour cannot be filled on axial slices
                else:
                    closed.append(pts)
            # OPEN_PLANAR / OPEN_NONPLANAR lines enclose no volume: not filled
        if tilted:
            warns.append(f"ROI '{name}': {tilted} contour(s) not drawn on an axial plane were ignored")
        dtype = types.get(num)
        is_marker = (dtype or "").upper() in ("ISOCENTER", "MARKER")
        if not closed and (points or is_marker):  # a point ROI: a position, not a volume
            patient.dicom.setdefault("roi_points", {})[name] = points
            number_to_name[num] = name
            continue
        role = guess_role(name, dtype)
        col = color or _default_color(len(patient.structures))
        if not closed:
            warns.append(f"ROI '{name}' has no contour data: kept empty")
            patient.add_structure(Structure(name, np.zeros(grid.shape, bool), role, col, has_contours=False))
            number_to_name[num] = name
            continue
        mask, rep = rasterize_contours(closed, grid, match=match)
        if rep.fully_outside or (rep.n_points_outside == rep.n_points and rep.n_voxels == 0):
            zs = np.concatenate([c[:, 2] for c in closed])
            zb = grid.bounds_mm()[2]
            msg = (f"ROI '{name}' lies entirely outside the {'images' if strict_outside else 'dose grid'} "
                   f"(contours at z {zs.min():.1f} to {zs.max():.1f} mm; grid spans z {zb[0]:.1f} to {zb[1]:.1f} mm)")
            if strict_outside:
                raise DicomError(msg, path)
            warns.append(msg + ": kept empty")
        elif rep.n_points_outside or rep.n_contours_off_grid:
            warns.append(f"ROI '{name}': {100 * rep.fraction_points_outside:.1f} % of its contour points lie "
                         f"outside the {'images' if strict_outside else 'dose grid'}; the part inside is kept")
        elif rep.n_voxels == 0:
            warns.append(f"ROI '{name}' is smaller than a voxel: its contours enclose no voxel centre")
        patient.add_structure(Structure(name, mask, role, col, has_contours=True))
        number_to_name[num] = name
    report(progress, 1, 1, "structures done")
    return number_to_name


def _default_color(i: int) -> tuple:
    from core.patient import default_color

    return default_color(i)


# -- resampling ------------------------------------------------------------------------------
# -- folder loading --------------------------------------------------------------------------
def _same_grid_fraction_uncovered(body: np.ndarray, grid: Grid, dose_grid: Grid) -> float:
    """Fraction of ``body`` voxels (on ``grid``) whose centres lie outside ``dose_grid``.

    Both grids are axis-aligned, so coverage separates into one test per array axis.
    """
    lo_hi = dose_grid.bounds_mm()
    half = np.zeros(3)
    half[dose_grid.patient_axis_index] = np.asarray(dose_grid.spacing_mm) / 2
    inside_axes = []
    for k in range(3):
        ax = grid.patient_axis_index[k]
        c = grid.axis_coords_mm(k)
        inside_axes.append((c >= lo_hi[ax, 0] - half[ax] - 1e-6) & (c <= lo_hi[ax, 1] + half[ax] + 1e-6))
    covered = inside_axes[0][:, None, None] & inside_axes[1][None, :, None] & inside_axes[2][None, None, :]
    n = int(body.sum())
    return 0.0 if n == 0 else float((body & ~covered).sum()) / n


def _files_in(folder: Path) -> list:
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue
        if p.name.upper() == "DICOMDIR":
            continue
        out.append(p)
    return out


def load_dicom_folder(path, progress=None, cancel=None) -> Patient:
    """Load a folder (searched recursively) of DICOM CT + RTSTRUCT (+ RTDOSE, RTPLAN).

    Parameters
    ----------
    path : str or Path
        The folder.
    progress : core.progress.Progress, optional
    cancel : core.progress.CancelToken, optional

    Returns
    -------
    Patient
        On the CT grid (axes ``("+z", ±y, ±x)``), or, for a dose-review folder whose CT
        series is absent or incomplete but that holds RTSTRUCT + RTDOSE, on the dose grid
        with ``ct=None`` and a warning that the images are missing. See the module
        docstring for the rules applied.

    Raises
    ------
    InputError
        The folder does not exist or is not a folder.
    DicomError
        No usable DICOM, truncated file, several CT series or patients, oblique images,
        missing CT slices (without RTDOSE), RTSTRUCT/RTDOSE in another frame of reference,
        a structure entirely outside the images.
    """
    folder = Path(path)
    if not folder.exists():
        raise InputError("the folder does not exist", folder)
    if not folder.is_dir():
        raise InputError("is not a folder (give the folder that holds the DICOM files)", folder)
    files = _files_in(folder)
    if not files:
        raise DicomError("the folder holds no files", folder)
    warns: list = []
    read_prog = progress.stage(0.0, 0.5, "reading") if progress is not None else None
    by_kind: dict = {}
    not_dicom = []
    for i, p in enumerate(files):
        check_cancel(cancel)
        ds = _dcmread(p)
        report(read_prog, i + 1, len(files), p.name)
        if ds is None:
            not_dicom.append(p)
            continue
        by_kind.setdefault(_kind(ds), []).append((p, ds))
    usable = {k: v for k, v in by_kind.items() if k in ("CT", "RTSTRUCT", "RTDOSE", "RTPLAN")}
    if not usable:
        if not_dicom and not by_kind:
            raise DicomError(f"no DICOM files found ({len(not_dicom)} other file(s), e.g. {not_dicom[0].name})",
                             folder)
        raise DicomError("no CT, RTSTRUCT, RTDOSE or RTPLAN files found (modalities present: "
                         f"{', '.join(sorted(by_kind)) or 'none'})", folder)
    if not_dicom:
        names = ", ".join(p.name for p in not_dicom[:5]) + (" ..." if len(not_dicom) > 5 else "")
        warns.append(f"skipped {len(not_dicom)} file(s) that are not DICOM: {names}")
    for k in sorted(set(by_kind) - set(usable)):
        warns.append(f"ignored {len(by_kind[k])} {k} file(s): OpenATP uses CT, RTSTRUCT, RTDOSE and RTPLAN")
    ids = {str(ds.get("PatientID", "") or "") for items in usable.values() for _, ds in items}
    ids.discard("")
    if len(ids) > 1:
        raise DicomError(f"the folder holds files of several patients (IDs {', '.join(sorted(ids))})", folder)

    # CT series
    ct, ct_info, ct_ds, ct_problem = None, {}, None, None
    series: dict = {}
    for p, ds in usable.get("CT", []):
        series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    if len(series) > 1:
        def _describe(uid, v):
            label = str(v[0][1].get("SeriesDescription", "") or "")
            return f"{uid} ({len(v)} images{', ' + label if label else ''})"

        desc = "; ".join(_describe(uid, v) for uid, v in series.items())
        raise DicomError(f"the folder holds {len(series)} CT series, keep one per folder: {desc}", folder)
    structs = usable.get("RTSTRUCT", [])
    doses = usable.get("RTDOSE", [])
    if series:
        items = next(iter(series.values()))
        ct_ds = items[0][1]
        try:
            with _malformed(items[0][0].parent, "CT series"):
                ct, ct_info = _load_ct_series(items, warns, progress.stage(0.5, 0.65, "CT") if progress else None,
                                              cancel)
        except _IncompleteSeries as exc:
            if not (structs and doses):
                raise
            ct_problem = exc.message
    ref_ds = ct_ds if ct_ds is not None else (structs or doses or usable["RTPLAN"])[0][1]
    for_uid = str(ct_ds.get("FrameOfReferenceUID", "")) if ct_ds is not None else ""

    # RTSTRUCT selection (must share the CT's frame of reference)
    struct_p, struct_ds = None, None
    if structs:
        if for_uid:
            matching = [(p, ds) for p, ds in structs if not _struct_frames(ds) or for_uid in _struct_frames(ds)]
            if not matching:
                p, ds = structs[0]
                raise DicomError(f"the RTSTRUCT belongs to frame of reference {', '.join(sorted(_struct_frames(ds)))}"
                                 f", but the CT is in {for_uid}: the structures do not belong to these images", p)
        else:
            matching = structs
        if len(matching) > 1:
            ct_series_uid = next(iter(series)) if series else None
            pref = [m for m in matching if ct_series_uid in _struct_series(m[1])] or matching
            pref.sort(key=lambda m: (str(m[1].get("StructureSetDate", "")), str(m[1].get("StructureSetTime", ""))))
            struct_p, struct_ds = pref[-1]
            warns.append(f"{len(structs)} structure sets found: using {struct_p.name} "
                         f"('{struct_ds.get('StructureSetLabel', '')}')")
        else:
            struct_p, struct_ds = matching[0]
        if struct_ds is not None and not _struct_frames(struct_ds):
            warns.append(f"{struct_p.name}: the RTSTRUCT names no frame of reference; assumed to be the CT's")
        if not for_uid and _struct_frames(struct_ds):
            for_uid = sorted(_struct_frames(struct_ds))[0]

    # RTDOSE selection
    dose_native, dose_p = None, None
    if doses:
        if not for_uid:
            for_uid = str(doses[0][1].get("FrameOfReferenceUID", ""))
        ok = [(p, ds) for p, ds in doses if str(ds.get("FrameOfReferenceUID", "")) in ("", for_uid)]
        ok_paths = {p for p, _ in ok}
        for p, ds in doses:
            if p not in ok_paths:
                if not ok:
                    raise DicomError(f"the RTDOSE is in frame of reference {ds.get('FrameOfReferenceUID')}, the "
                                     f"images/structures in {for_uid}: the dose does not belong to them", p)
                warns.append(f"{p.name}: RTDOSE in another frame of reference, ignored")
        plan_type = [m for m in ok if str(m[1].get("DoseSummationType", "")).upper() == "PLAN"]
        if plan_type:
            dose_p, dds = plan_type[0]
            with _malformed(dose_p, "RTDOSE"):
                dose_native = _rtdose_from_ds(dds, dose_p, warns)
            if len(ok) > 1:
                warns.append(f"{len(ok)} RTDOSE files found: using the plan dose {dose_p.name}")
        else:
            parts = []
            for p, ds in ok:
                with _malformed(p, "RTDOSE"):
                    parts.append((p, _rtdose_from_ds(ds, p, warns)))
            dose_p, dose_native = parts[0]
            if len(parts) > 1:
                if all(d.grid.same_as(dose_native.grid) for _, d in parts):
                    total = np.sum([d.dose_gy for _, d in parts], axis=0)
                    dose_native = Dose(total, dose_native.grid, label="rtdose sum")
                    warns.append(f"{len(parts)} RTDOSE files without a plan dose: summed "
                                 f"({', '.join(p.name for p, _ in parts)})")
                else:
                    warns.append(f"{len(parts)} RTDOSE files on different grids: using {dose_p.name} only")

    # grid: CT, else dose review on the dose grid
    if ct is None:
        if not (struct_ds is not None and dose_native is not None):
            what = ct_problem or "no CT images"
            need = "an RTSTRUCT" if struct_ds is None else "an RTDOSE"
            raise DicomError(f"{what}, and no dose review is possible without {need}"
                             if ct_problem or structs or doses else f"{what} found", folder)
        grid = dose_native.grid
        warns.append("images are missing: " + (ct_problem or "the folder holds no CT series") +
                     "; loaded for dose review with the structures on the dose grid")
    else:
        grid = ct.grid
    patient = Patient(patient_id=str(ref_ds.get("PatientID", "") or folder.name), grid=grid, ct=ct,
                      source=str(folder))
    patient.dicom.update({
        "patient_id": str(ref_ds.get("PatientID", "") or ""),
        "patient_name": str(ref_ds.get("PatientName", "") or ""),
        "study_instance_uid": str(ref_ds.get("StudyInstanceUID", "") or ""),
        "frame_of_reference_uid": for_uid,
    })
    if ct is not None and ct_ds is not None:
        patient.dicom["ct_series_instance_uid"] = str(ct_ds.get("SeriesInstanceUID", ""))
        patient.dicom["ct_series_description"] = str(ct_ds.get("SeriesDescription", "") or "")
        if "ct_sop_instance_uids" in ct_info:
            patient.dicom["ct_sop_instance_uids"] = ct_info["ct_sop_instance_uids"]

    # structures
    roi_names: dict = {}
    if struct_ds is not None:
        patient.dicom["rtstruct_path"] = str(struct_p)
        # contours sit on the CT slices unless the grid is the dose grid or a resampled CT
        on_slices = ct is not None and "resampled_from_z_mm" not in ct_info
        with _malformed(struct_p, "RTSTRUCT"):
            roi_names = _structures_from_ds(struct_ds, struct_p, grid, "slice" if on_slices else "slab",
                                            ct is not None, patient, warns,
                                            progress.stage(0.65, 0.9, "structures") if progress else None, cancel)
    else:
        warns.append("no RTSTRUCT in the folder: the patient has no structures")

    # dose on the patient grid
    if dose_native is not None:
        check_cancel(cancel)
        patient.dicom["rtdose_native"] = dose_native
        patient.dicom["rtdose_path"] = str(dose_p)
        if dose_native.grid.same_as(grid):
            patient.doses["reference"] = Dose(dose_native.dose_gy, grid, label="reference")
        else:
            patient.doses["reference"] = Dose(resample_to_grid(dose_native.dose_gy, dose_native.grid, grid),
                                              grid, label="reference")
            body = _body_for_coverage(patient)
            if body is not None:
                frac = _same_grid_fraction_uncovered(body, grid, dose_native.grid)
                if frac > 0.001:
                    warns.append(f"the dose grid does not cover the whole body: {100 * frac:.1f} % of the body "
                                 "lies outside it (dose there is 0; dose review of structures inside is still valid)")
        report(progress, 0.95, 1.0, "dose")

    # plans and prescriptions
    for p, ds in usable.get("RTPLAN", []):
        with _malformed(p, "RTPLAN"):
            plan = _rtplan_from_ds(ds, p)
        if plan["frame_of_reference_uid"] and for_uid and plan["frame_of_reference_uid"] != for_uid:
            warns.append(f"{p.name}: RTPLAN in another frame of reference, kept for reference only")
        patient.plans.append(plan)
    patient.prescriptions = _prescriptions(patient, roi_names, warns)
    patient.warnings.extend(warns)
    for w in warns:
        log.info("%s: %s", folder, w)
    report(progress, 1.0, 1.0, "loaded")
    return patient


def _body_for_coverage(patient: Patient) -> np.ndarray | None:
    ext = [s for s in patient.by_role(StructureRole.EXTERNAL) if not s.is_empty]
    if ext:
        return ext[0].mask
    if patient.ct is not None:
        from core.patient import body_from_ct

        try:
            return body_from_ct(patient.ct.hu)
        except InputError:
            return None
    return None


def _prescriptions(patient: Patient, roi_names: dict, warns: list) -> list:
    targets = [s.name for s in patient.targets]
    for plan in patient.plans:
        if not plan["prescriptions"]:
            continue
        out = []
        for rx in plan["prescriptions"]:
            name = roi_names.get(rx["roi_number"]) if rx["roi_number"] is not None else None
            if name is None and rx["description"] in patient.structures:
                name = rx["description"]
            if name is None:
                by_dose = [t for t in targets if dose_from_target_name(t) is not None
                           and abs(dose_from_target_name(t) - rx["dose_gy"]) < 0.05]
                cand = by_dose if len(by_dose) == 1 else (targets if len(targets) == 1 else [])
                if cand:
                    name = cand[0]
                else:
                    name = rx["description"] or "target"
                    warns.append(f"RTPLAN prescription of {rx['dose_gy']:g} Gy names no structure found here "
                                 f"('{name}')")
            fx = rx["fractions"]
            if fx is None:
                fx = max(1, int(round(rx["dose_gy"] / 2.0)))
                warns.append(f"number of fractions unknown: assumed {fx} fractions (2 Gy per fraction)")
            try:
                out.append(Prescription(name, rx["dose_gy"], fx))
            except InputError as exc:
                warns.append(f"RTPLAN prescription ignored: {exc}")
        if out:
            return out
    fractions = next((p["fractions"] for p in patient.plans if p.get("fractions")), None)
    return prescriptions_from_names(targets, warns, fractions)
