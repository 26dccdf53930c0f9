"""Build small DICOM-RT data sets in tests with pydicom, independent of core.io.dicom_export.

Like dicompyler-core's tests: every file is made from scratch here, so an importer bug
cannot be hidden by a matching exporter bug.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
RTDOSE = "1.2.840.10008.5.1.4.1.1.481.2"
RTPLAN = "1.2.840.10008.5.1.4.1.1.481.5"


def _ds_str(v) -> str:
    s = f"{float(v):.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


def _base(sop_class, modality, uids, patient_id="TEST001"):
    meta = FileMetaDataset()
    sop = generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.Modality = modality
    ds.PatientName = "Test^Phantom"
    ds.PatientID = patient_id
    ds.StudyInstanceUID = uids["study"]
    ds.SeriesInstanceUID = uids.get("series") or generate_uid()
    ds.FrameOfReferenceUID = uids["for"]
    return ds


def new_uids() -> dict:
    return {"study": generate_uid(), "for": generate_uid(), "series": generate_uid()}


def write(ds, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def make_ct_series(folder, raw: np.ndarray, z_mm, *, pixel_spacing=(2.0, 2.0), origin_xy=(-50.0, -40.0),
                   slope=1.0, intercept=-1024.0, uids=None, iop=(1, 0, 0, 0, 1, 0), names=None,
                   instance_numbers=None, patient_id="TEST001", signed=False) -> tuple[list, dict]:
    """CT files, one per slice of ``raw`` (slices, rows, cols) of stored values at ``z_mm``.

    ``origin_xy`` is ImagePositionPatient (x, y); ``pixel_spacing`` is (row spacing, column
    spacing). ``names``/``instance_numbers`` let a test shuffle both independently of z.
    """
    uids = uids or new_uids()
    folder = Path(folder)
    paths = []
    for k, z in enumerate(z_mm):
        ds = _base(CT, "CT", uids, patient_id)
        ds.ImagePositionPatient = [_ds_str(origin_xy[0]), _ds_str(origin_xy[1]), _ds_str(z)]
        ds.ImageOrientationPatient = [_ds_str(v) for v in iop]
        ds.PixelSpacing = [_ds_str(pixel_spacing[0]), _ds_str(pixel_spacing[1])]
        ds.SliceThickness = "2"
        ds.InstanceNumber = (instance_numbers[k] if instance_numbers is not None else k + 1)
        ds.Rows, ds.Columns = raw.shape[1], raw.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleSlope = _ds_str(slope)
        ds.RescaleIntercept = _ds_str(intercept)
        ds.PixelData = raw[k].astype("<i2" if signed else "<u2").tobytes()
        name = names[k] if names is not None else f"CT_{k:03d}.dcm"
        paths.append(write(ds, folder / name))
    return paths, uids


def circle(cx, cy, z, r, n=180, clockwise=False) -> np.ndarray:
    """(n, 3) closed polygon approximating a circle, LPS mm."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    if clockwise:
        t = -t
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t), np.full(n, float(z))], axis=1)


def rect(x0, x1, y0, y1, z) -> np.ndarray:
    return np.array([[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]], dtype=float)


def make_rtstruct(path, rois, uids, *, ct_series_uid=None, patient_id="TEST001", frame_uid=None):
    """RTSTRUCT with ``rois``: list of dicts ``name``, ``contours`` (list of (N, 3) mm, or
    ("POINT", xyz)), optional ``type`` (RTROIInterpretedType) and ``color``."""
    ds = _base(RTSTRUCT, "RTSTRUCT", {**uids, "series": generate_uid()}, patient_id)
    del ds.FrameOfReferenceUID  # an RTSTRUCT names its frame in the sequences below
    f_uid = frame_uid or uids["for"]
    ds.StructureSetLabel = "test"
    fr = Dataset()
    fr.FrameOfReferenceUID = f_uid
    if ct_series_uid:
        se = Dataset()
        se.SeriesInstanceUID = ct_series_uid
        st = Dataset()
        st.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        st.ReferencedSOPInstanceUID = uids["study"]
        st.RTReferencedSeriesSequence = Sequence([se])
        fr.RTReferencedStudySequence = Sequence([st])
    ds.ReferencedFrameOfReferenceSequence = Sequence([fr])
    ssr, rcs, obs = [], [], []
    for i, roi in enumerate(rois, start=1):
        r = Dataset()
        r.ROINumber = i
        r.ReferencedFrameOfReferenceUID = f_uid
        r.ROIName = roi["name"]
        ssr.append(r)
        rc = Dataset()
        rc.ReferencedROINumber = i
        rc.ROIDisplayColor = list(roi.get("color", (255, 0, 0)))
        items = []
        for c in roi.get("contours", []):
            it = Dataset()
            if isinstance(c, tuple) and c[0] == "POINT":
                it.ContourGeometricType = "POINT"
                pts = np.asarray(c[1], float).reshape(1, 3)
            else:
                it.ContourGeometricType = "CLOSED_PLANAR"
                pts = np.asarray(c, float)
            it.NumberOfContourPoints = len(pts)
            it.ContourData = [_ds_str(v) for v in pts.ravel()]
            items.append(it)
        if items:
            rc.ContourSequence = Sequence(items)
        rcs.append(rc)
        o = Dataset()
        o.ObservationNumber = i
        o.ReferencedROINumber = i
        o.RTROIInterpretedType = roi.get("type", "ORGAN")
        obs.append(o)
    ds.StructureSetROISequence = Sequence(ssr)
    ds.ROIContourSequence = Sequence(rcs)
    ds.RTROIObservationsSequence = Sequence(obs)
    return write(ds, path)


def make_rtdose(path, dose_gy: np.ndarray, uids, *, origin_xyz=(-50.0, -40.0, 0.0), spacing=(2.0, 2.0, 2.0),
                scaling=1e-5, absolute_offsets=False, descending=False, patient_id="TEST001", summation="PLAN"):
    """RTDOSE of ``dose_gy`` (frames, rows, cols) Gy; ``spacing`` = (row, col, frame) mm.

    ``descending``: frames stored superior to inferior (negative GridFrameOffsetVector steps).
    """
    ds = _base(RTDOSE, "RTDOSE", {**uids, "series": generate_uid()}, patient_id)
    nf = dose_gy.shape[0]
    step = -spacing[2] if descending else spacing[2]
    data = dose_gy[::-1] if descending else dose_gy
    z0 = origin_xyz[2] + (nf - 1) * spacing[2] if descending else origin_xyz[2]
    ds.ImagePositionPatient = [_ds_str(origin_xyz[0]), _ds_str(origin_xyz[1]), _ds_str(z0)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [_ds_str(spacing[0]), _ds_str(spacing[1])]
    offsets = np.arange(nf) * step + (z0 if absolute_offsets else 0.0)
    ds.GridFrameOffsetVector = [_ds_str(v) for v in offsets]
    ds.NumberOfFrames = nf
    ds.FrameIncrementPointer = 0x3004000C
    ds.Rows, ds.Columns = dose_gy.shape[1], dose_gy.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = summation
    ds.DoseGridScaling = _ds_str(scaling) if scaling >= 1e-6 else f"{scaling:.6e}"
    ds.PixelData = np.rint(data / float(ds.DoseGridScaling)).astype("<u4").tobytes()
    return write(ds, path)


def make_rtplan(path, uids, *, rx_gy=60.0, fractions=30, roi_number=None, description="PTV",
                gantry=(0.0, 120.0, 240.0), mu=(100.0, 110.0, 120.0), patient_id="TEST001"):
    """RTPLAN with one target prescription and static beams with an MLC and jaws."""
    ds = _base(RTPLAN, "RTPLAN", {**uids, "series": generate_uid()}, patient_id)
    ds.RTPlanLabel = "TestPlan"
    ds.RTPlanName = "Test plan"
    dr = Dataset()
    dr.DoseReferenceNumber = 1
    dr.DoseReferenceStructureType = "VOLUME" if roi_number else "SITE"
    if roi_number:
        dr.ReferencedROINumber = roi_number
    dr.DoseReferenceDescription = description
    dr.DoseReferenceType = "TARGET"
    dr.TargetPrescriptionDose = _ds_str(rx_gy)
    ds.DoseReferenceSequence = Sequence([dr])
    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = fractions
    fg.NumberOfBeams = len(gantry)
    refs = []
    for i, m in enumerate(mu, start=1):
        rb = Dataset()
        rb.ReferencedBeamNumber = i
        rb.BeamMeterset = _ds_str(m)
        refs.append(rb)
    fg.ReferencedBeamSequence = Sequence(refs)
    ds.FractionGroupSequence = Sequence([fg])
    beams = []
    for i, g in enumerate(gantry, start=1):
        b = Dataset()
        b.BeamNumber = i
        b.BeamName = f"G{int(g)}"
        b.BeamType = "STATIC"
        b.RadiationType = "PHOTON"
        b.SourceAxisDistance = "1000"
        b.TreatmentMachineName = "TestLinac"
        bl = []
        for t, n in (("ASYMX", 1), ("ASYMY", 1), ("MLCX", 4)):
            d = Dataset()
            d.RTBeamLimitingDeviceType = t
            d.NumberOfLeafJawPairs = n
            if t == "MLCX":
                d.LeafPositionBoundaries = ["-20", "-10", "0", "10", "20"]
            bl.append(d)
        b.BeamLimitingDeviceSequence = Sequence(bl)
        b.FinalCumulativeMetersetWeight = "1"
        cps = []
        for k, w in enumerate((0.0, 0.5, 1.0)):
            cp = Dataset()
            cp.ControlPointIndex = k
            cp.CumulativeMetersetWeight = _ds_str(w)
            if k == 0:
                cp.NominalBeamEnergy = "6"
                cp.GantryAngle = _ds_str(g)
                cp.BeamLimitingDeviceAngle = "10"
                cp.PatientSupportAngle = "0"
                cp.IsocenterPosition = ["1.5", "-2.5", "10"]
                pos = []
                for t, v in (("ASYMX", [-30, 30]), ("ASYMY", [-20, 20]), ("MLCX", [-5] * 4 + [5] * 4)):
                    p = Dataset()
                    p.RTBeamLimitingDeviceType = t
                    p.LeafJawPositions = [str(x) for x in v]
                    pos.append(p)
                cp.BeamLimitingDevicePositionSequence = Sequence(pos)
            elif k == 1:  # second segment: only the MLC moves, everything else carries over
                p = Dataset()
                p.RTBeamLimitingDeviceType = "MLCX"
                p.LeafJawPositions = [str(x) for x in [-10] * 4 + [0] * 4]
                cp.BeamLimitingDevicePositionSequence = Sequence([p])
            cps.append(cp)
        b.ControlPointSequence = Sequence(cps)
        b.NumberOfControlPoints = len(cps)
        beams.append(b)
    ds.BeamSequence = Sequence(beams)
    return write(ds, path)
