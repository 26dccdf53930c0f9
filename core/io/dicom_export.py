"""DICOM export: CT series, RTSTRUCT and RTDOSE that re-import to the same arrays.

All three exports share one set of UIDs kept in ``patient.dicom`` (study, frame of
reference, CT series and one SOP instance per CT slice): the first export that needs
them creates them with :func:`pydicom.uid.generate_uid` and records them there, so the
CT, RTSTRUCT and RTDOSE of one export reference each other whatever the order.
A patient imported from DICOM keeps its frame of reference and study (so the exports
register with the original images and plan). Its exported CT is a new series with new
UIDs; an RTSTRUCT exported *before* any CT export references the original CT images
(unchanged, so still valid), one exported after references the new series.

Arrays in another axis order (OpenKBP's ``(y, x, -z)``, phantoms) are transposed and
flipped to DICOM axial order ``(z, y, x)`` with axes ``("+z", "+y", "+x")`` first
(:func:`to_dicom_order`); the patient coordinates of every voxel are unchanged.

Round-trip guarantees (tested): masks exactly (contours are pixel-edge outlines, holes
as separate contours, re-filled with the even-odd rule), integer HU exactly (float HU
within half the chosen ``RescaleSlope``), dose within half the ``DoseGridScaling``
(chosen so the maximum dose uses the full uint32 range), geometry to 1e-6 mm.
Every file is written atomically (:mod:`core.io.atomic`).
"""

from __future__ import annotations

import datetime as _dt
import io
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.geometry import DICOM_AXES, Grid
from core.io.atomic import atomic_write_bytes
from core.io.rasterize import mask_to_contours
from core.patient import Dose, Patient, StructureRole
from core.progress import check_cancel, report

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
_AXIAL_IOP = ["1", "0", "0", "0", "1", "0"]


# -- geometry ------------------------------------------------------------------------------
def to_dicom_order(values: np.ndarray | None, grid: Grid) -> tuple[np.ndarray | None, Grid]:
    """Transpose/flip an array on ``grid`` to DICOM axial order (z, y, x), axes all positive.

    Parameters
    ----------
    values : ndarray of ``grid.shape`` or None
        The array (None: only the grid is converted).
    grid : Grid

    Returns
    -------
    values_dicom : ndarray (P, R, C) = (z, y, x) or None
        A view where possible.
    grid_dicom : Grid
        Axes ``("+z", "+y", "+x")``; ``grid_dicom.index_to_patient`` of a voxel equals
        ``grid.index_to_patient`` of the voxel it came from.
    """
    pai = grid.patient_axis_index
    perm = [int(np.nonzero(pai == ax)[0][0]) for ax in (2, 1, 0)]  # source axis of z, y, x
    shape = tuple(grid.shape[k] for k in perm)
    spacing = tuple(grid.spacing_mm[k] for k in perm)
    origin = []
    for k in perm:
        o = grid.origin_mm[k]
        if grid.signs[k] < 0:  # index 0 becomes the far end: the minimum coordinate
            o = o - (grid.shape[k] - 1) * grid.spacing_mm[k]
        origin.append(o)
    new = Grid(shape, spacing, tuple(origin), DICOM_AXES)
    if values is None:
        return None, new
    if values.shape != grid.shape:
        raise InputError(f"array {values.shape} does not match its grid {grid.shape}")
    out = np.transpose(values, perm)
    flips = tuple(t for t, k in enumerate(perm) if grid.signs[k] < 0)
    if flips:
        out = np.flip(out, axis=flips)
    return out, new


# -- helpers -------------------------------------------------------------------------------
def _ds(v: float) -> str:
    """A DICOM DS string (at most 16 characters) of ``v`` with the most precision that fits."""
    v = float(v)
    if v == 0:
        return "0"
    for fmt in ("{:.10g}", "{:.9g}", "{:.8g}", "{:.7g}", "{:.6g}", "{:.5g}"):
        s = fmt.format(v)
        if len(s) <= 16:
            return s
    return "{:.4e}".format(v)


def _coord(v: np.ndarray) -> list:
    """Contour / position coordinates in mm as DS strings, 1e-6 mm resolution."""
    out = []
    for x in np.asarray(v, dtype=float).ravel():
        s = f"{x:.6f}".rstrip("0").rstrip(".")
        out.append("0" if s in ("-0", "") else s)
    return out


def _raw_ds(tag: int, values: np.ndarray):
    """A DS element of coordinates (mm, 1e-6 mm resolution) stored as its encoded bytes:
    pydicom validates every value of a DS set the ordinary way, which dominates export
    time for large structure sets. ``%.6f`` of |v| < 1e8 mm fits DS's 16 characters."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    v = np.asarray(values, dtype=float).ravel()
    if v.size and np.max(np.abs(v)) >= 1e8:
        raise InputError("a contour coordinate beyond 100 km cannot be written")
    b = ("%.6f\\" * v.size % tuple(v.tolist()))[:-1].encode("ascii")
    if len(b) % 2:
        b += b" "
    return RawDataElement(Tag(tag), "DS", len(b), b, 0, False, True)


def _mark_encoded(item) -> None:
    """Tell pydicom this item is already in the file's encoding (explicit VR little endian).

    Without it ``dcmwrite`` re-parses every raw element of a new dataset (to correct
    ambiguous VRs and re-encode strings), which is 15 x slower for a large structure set.
    Only numbers, code strings and UIDs are in these items, so nothing needs re-encoding.
    """
    item.set_original_encoding(False, True, getattr(item, "_character_set", None))


def _uid():
    from pydicom.uid import generate_uid

    return generate_uid()


def _now() -> tuple[str, str]:
    t = _dt.datetime.now()
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")


def _ensure_uids(patient: Patient, dicom_grid: Grid, new_ct: bool = False) -> dict:
    """The shared UIDs of this patient's exports (created and recorded on first use).

    CT UIDs made by an earlier export for the same grid are always reused, so the files
    of one export reference each other in any order. CT UIDs that came from an import
    are reused by RTSTRUCT/RTDOSE exports (they then reference the original images, which
    are unchanged), but never by :func:`export_ct_series` (``new_ct=True``): a written
    copy is a new object and gets new UIDs.
    """
    d = patient.dicom
    if not d.get("frame_of_reference_uid"):
        d["frame_of_reference_uid"] = str(_uid())
    if not d.get("study_instance_uid"):
        d["study_instance_uid"] = str(_uid())
    n = dicom_grid.shape[0]
    have = len(d.get("ct_sop_instance_uids") or []) == n and bool(d.get("ct_series_instance_uid"))
    made_for = d.get("ct_uids_grid")
    if made_for is not None:
        reusable = have and Grid.from_dict(made_for).same_as(dicom_grid, tol_mm=1e-6)
    else:  # UIDs from an import: valid only while the grid is the original DICOM slice stack
        reusable = (have and not new_ct and patient.ct is not None and patient.grid.axes == DICOM_AXES
                    and patient.grid.same_as(dicom_grid, tol_mm=1e-6))
    if not reusable:
        d["ct_series_instance_uid"] = str(_uid())
        d["ct_sop_instance_uids"] = [str(_uid()) for _ in range(n)]
        d["ct_uids_grid"] = dicom_grid.to_dict()
    return d


def _base_dataset(patient: Patient, sop_class: str, sop_uid: str, modality: str, series_uid: str):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    date, time = _now()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.StudyDate, ds.StudyTime = date, time
    ds.Modality = modality
    ds.Manufacturer = "OpenATP"
    ds.PatientName = patient.dicom.get("patient_name") or patient.patient_id
    ds.PatientID = patient.dicom.get("patient_id") or patient.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.ReferringPhysicianName = ""
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.StudyInstanceUID = patient.dicom["study_instance_uid"]
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.FrameOfReferenceUID = patient.dicom["frame_of_reference_uid"]
    ds.PositionReferenceIndicator = ""
    return ds


def _write(ds, path: Path) -> None:
    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    atomic_write_bytes(path, buf.getvalue())


# -- CT ------------------------------------------------------------------------------------
def export_ct_series(patient: Patient, folder, progress=None, cancel=None) -> list:
    """Write the patient's CT as one axial DICOM CT series.

    Parameters
    ----------
    patient : Patient
        Must have a CT. Its UIDs are recorded in ``patient.dicom`` (see module docstring).
    folder : str or Path
        Created if needed; files are named ``CT_0001.dcm`` ... (slice 1 = most inferior).

    Returns
    -------
    list of Path
        The files written, inferior to superior.
    """
    if patient.ct is None:
        raise InputError("the patient has no CT images to export (dose-review patient?)")
    hu, g = to_dicom_order(patient.ct.hu, patient.ct.grid)
    uids = _ensure_uids(patient, g, new_ct=True)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slope, intercept, raw, signed = _encode_hu(hu)
    paths = []
    n = g.shape[0]
    for k in range(n):
        check_cancel(cancel)
        sop = uids["ct_sop_instance_uids"][k]
        ds = _base_dataset(patient, CT_IMAGE_STORAGE, sop, "CT", uids["ct_series_instance_uid"])
        ds.SeriesDescription = "OpenATP export"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.InstanceNumber = k + 1
        z = g.origin_mm[0] + k * g.spacing_mm[0]
        ds.ImagePositionPatient = _coord([g.origin_mm[2], g.origin_mm[1], z])
        ds.ImageOrientationPatient = _AXIAL_IOP
        ds.PixelSpacing = [_ds(g.spacing_mm[1]), _ds(g.spacing_mm[2])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds(g.spacing_mm[0])
        ds.SliceLocation = _coord([z])[0]
        ds.Rows, ds.Columns = g.shape[1], g.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept = intercept
        ds.RescaleSlope = slope
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(raw[k]).astype("<i2" if signed else "<u2").tobytes()
        p = folder / f"CT_{k + 1:04d}.dcm"
        _write(ds, p)
        paths.append(p)
        report(progress, k + 1, n, "writing CT")
    return paths


def _encode_hu(hu: np.ndarray) -> tuple[str, str, np.ndarray, bool]:
    """(slope, intercept, stored values, signed) so that slope * stored + intercept = HU."""
    if np.issubdtype(hu.dtype, np.integer) or (np.all(np.isfinite(hu)) and np.all(hu == np.rint(hu))):
        lo, hi = float(hu.min()), float(hu.max())
        if lo >= -32768 and hi <= 32767:
            return "1", "0", hu.astype(np.int16), True
    if not np.all(np.isfinite(hu)):
        raise InputError("the CT holds non-finite values and cannot be exported")
    lo, hi = float(hu.min()), float(hu.max())
    intercept = _ds(np.floor(lo))
    slope = _ds(max((hi - float(intercept)) / 65535.0, 1e-6) * (1 + 1e-9))
    raw = np.clip(np.rint((hu.astype(np.float64) - float(intercept)) / float(slope)), 0, 65535).astype(np.uint16)
    return slope, intercept, raw, False


# -- RTSTRUCT ------------------------------------------------------------------------------
def _interpreted_type(name: str, role: StructureRole) -> str:
    if role is StructureRole.TARGET:
        up = name.strip().upper()
        for t in ("PTV", "CTV", "GTV", "ITV"):
            if up.startswith(t):
                return t
        return "PTV"
    return {StructureRole.EXTERNAL: "EXTERNAL", StructureRole.OAR: "ORGAN",
            StructureRole.HELPER: "CONTROL"}[role]


def export_rtstruct(patient: Patient, path, progress=None, cancel=None) -> Path:
    """Write every structure as an RTSTRUCT referencing the patient's CT series.

    Contours are the pixel-edge outlines of each axial plane of the mask (holes and
    islands as separate contours), so the even-odd, voxel-centre rule of the importer
    gives back the same mask. Structures without contours are written as ROIs with no
    contour data.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    _, g = to_dicom_order(None, patient.grid)
    uids = _ensure_uids(patient, g)
    path = Path(path)
    sop = str(_uid())
    ds = _base_dataset(patient, RTSTRUCT_STORAGE, sop, "RTSTRUCT", str(_uid()))
    ds.SeriesDescription = "OpenATP structures"
    ds.StructureSetLabel = "OpenATP"
    ds.StructureSetName = "OpenATP"
    ds.StructureSetDate, ds.StructureSetTime = _now()
    ct_refs = patient.ct is not None
    contour_images = []
    if ct_refs:
        for u in uids["ct_sop_instance_uids"]:
            ci = Dataset()
            ci.ReferencedSOPClassUID = CT_IMAGE_STORAGE
            ci.ReferencedSOPInstanceUID = u
            contour_images.append(ci)
    fr = Dataset()
    fr.FrameOfReferenceUID = uids["frame_of_reference_uid"]
    if ct_refs:
        se = Dataset()
        se.SeriesInstanceUID = uids["ct_series_instance_uid"]
        se.ContourImageSequence = Sequence(contour_images)
        st = Dataset()
        st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (by convention)
        st.ReferencedSOPInstanceUID = uids["study_instance_uid"]
        st.RTReferencedSeriesSequence = Sequence([se])
        fr.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    rois, conts, obs = [], [], []
    structures = list(patient.structures.values())
    for i, s in enumerate(structures, start=1):
        check_cancel(cancel)
        r = Dataset()
        r.ROINumber = i
        r.ReferencedFrameOfReferenceUID = uids["frame_of_reference_uid"]
        r.ROIName = s.name
        r.ROIGenerationAlgorithm = "MANUAL" if s.rule is None else "SEMIAUTOMATIC"
        rois.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = i
        rc.ROIDisplayColor = [int(c) for c in s.color[:3]]
        mask, mg = to_dicom_order(s.mask, patient.grid)
        items = []
        if s.has_contours or not s.is_empty:
            for poly in mask_to_contours(mask, mg):
                c = Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                c[0x30060050] = _raw_ds(0x30060050, poly)  # ContourData
                if ct_refs:
                    k = int(round((poly[0, 2] - mg.origin_mm[0]) / mg.spacing_mm[0]))
                    ci = Dataset()
                    ci.ReferencedSOPClassUID = CT_IMAGE_STORAGE
                    ci.ReferencedSOPInstanceUID = uids["ct_sop_instance_uids"][k]
                    _mark_encoded(ci)
                    c.ContourImageSequence = Sequence([ci])
                _mark_encoded(c)
                items.append(c)
        if items:
            rc.ContourSequence = Sequence(items)
        conts.append(rc)
        o = Dataset()
        o.ObservationNumber = i
        o.ReferencedROINumber = i
        o.RTROIInterpretedType = _interpreted_type(s.name, s.role)
        o.ROIInterpreter = ""
        obs.append(o)
        report(progress, i, len(structures), f"contours of {s.name}")
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(conts)
    ds.RTROIObservationsSequence = Sequence(obs)
    ds.ApprovalStatus = "UNAPPROVED"
    _write(ds, path)
    patient.dicom["rtstruct_sop_instance_uid"] = sop
    return path


# -- RTDOSE --------------------------------------------------------------------------------
def dose_grid_scaling(max_dose_gy: float) -> float:
    """The DoseGridScaling (Gy per stored unit) used for a dose whose maximum is given.

    The maximum maps close to the top of uint32 (4 294 967 295), so the rounding error is
    at most half a unit: about ``max_dose_gy * 1.2e-10``. The value is the exact
    16-character DS string written to the file.
    """
    if not np.isfinite(max_dose_gy) or max_dose_gy < 0:
        raise InputError(f"the maximum dose must be a finite non-negative number, got {max_dose_gy}")
    if max_dose_gy == 0:
        return 1e-6
    s = float(f"{max_dose_gy / 4.0e9:.8e}")
    return s


def export_rtdose(dose: Dose, patient: Patient, path, summation: str = "PLAN",
                  plan_sop_instance_uid: str | None = None) -> Path:
    """Write ``dose`` as an RTDOSE in the patient's frame of reference.

    Parameters
    ----------
    dose : Dose
        On any axis-aligned grid (usually the patient's); negative values are an error.
    patient : Patient
    path : str or Path
    summation : str
        DoseSummationType (``PLAN``, ``BEAM``, ...).
    plan_sop_instance_uid : str, optional
        Written as ReferencedRTPlanSequence when given.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    values, g = to_dicom_order(dose.dose_gy, dose.grid)
    _, pg = to_dicom_order(None, patient.grid)
    uids = _ensure_uids(patient, pg)
    vmin = float(values.min()) if values.size else 0.0
    if vmin < -1e-6:
        raise InputError(f"dose '{dose.label}' has negative values (min {vmin:.3g} Gy): cannot write an RTDOSE")
    vmax = float(values.max()) if values.size else 0.0
    scale = dose_grid_scaling(vmax)
    raw = np.clip(np.rint(values.astype(np.float64) / scale), 0, 2**32 - 1).astype("<u4")
    sop = str(_uid())
    ds = _base_dataset(patient, RTDOSE_STORAGE, sop, "RTDOSE", str(_uid()))
    ds.SeriesDescription = f"OpenATP dose {dose.label}"
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = _coord([g.origin_mm[2], g.origin_mm[1], g.origin_mm[0]])
    ds.ImageOrientationPatient = _AXIAL_IOP
    ds.PixelSpacing = [_ds(g.spacing_mm[1]), _ds(g.spacing_mm[2])]
    ds.SliceThickness = _ds(g.spacing_mm[0])
    ds.NumberOfFrames = g.shape[0]
    ds.FrameIncrementPointer = 0x3004000C  # GridFrameOffsetVector
    ds.GridFrameOffsetVector = _coord(np.arange(g.shape[0]) * g.spacing_mm[0])
    ds.Rows, ds.Columns = g.shape[1], g.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation
    ds.DoseGridScaling = f"{scale:.8e}"
    ds.TissueHeterogeneityCorrection = "IMAGE"
    plan_uid = plan_sop_instance_uid or patient.dicom.get("rtplan_sop_instance_uid")
    if plan_uid:
        rp = Dataset()
        rp.ReferencedSOPClassUID = RTPLAN_STORAGE
        rp.ReferencedSOPInstanceUID = plan_uid
        ds.ReferencedRTPlanSequence = Sequence([rp])
    ds.PixelData = np.ascontiguousarray(raw).tobytes()
    path = Path(path)
    _write(ds, path)
    return path
