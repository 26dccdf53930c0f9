"""RTPLAN export of a sequenced step-and-shoot plan (DICOM RT Plan Storage).

Layout (DICOM PS3.3 C.8.8.14 RT Beams module, the way step-and-shoot IMRT is written by
commercial planning systems): every segment is a *pair* of control points with the same
jaw and leaf positions; the first carries the cumulative meterset weight before the
segment, the second after it (``FinalCumulativeMetersetWeight`` = 1, so the weights are
fractions of the beam's MU). The beam's MU per fraction is ``BeamMeterset`` in the
fraction group. Beam-limiting devices: ``ASYMX``, ``ASYMY`` and ``MLCX`` with its
``LeafPositionBoundaries``; ``LeafJawPositions`` of MLCX list bank A (-x) then bank B.

MU: :class:`core.delivery.segments.Segment` holds course MU (the dose-influence matrix's
unit); the RTPLAN states MU per fraction, ``mu / fractions``.

UIDs: patient, study and frame-of-reference come from ``patient.dicom`` when present (an
imported patient keeps registering with its CT); otherwise they are created and recorded
there with the same keys :mod:`core.io.dicom_export` uses, so an RTDOSE or RTSTRUCT written
later references the same study. The plan's SOP instance UID is recorded as
``patient.dicom["rtplan_sop_instance_uid"]`` (the RTDOSE export references it).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.io.atomic import atomic_write_bytes

RT_PLAN_STORAGE = "1.2.840.10008.5.1.4.1.1.481.5"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


def _ds(x: float, decimals: int = 4) -> str:
    """A DICOM decimal string (<= 16 chars) with at most ``decimals`` decimals."""
    s = f"{float(x):.{decimals}f}".rstrip("0").rstrip(".")
    s = "0" if s in ("-0", "") else s
    if len(s) > 16:
        s = f"{float(x):.10g}"
    return s


def _angle(a: float) -> float:
    a = float(a) % 360.0
    return 0.0 if abs(a - 360.0) < 1e-9 else a


def _uid() -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid())


def _beam_attr(beam, name, default=None):
    v = getattr(beam, name, None)
    if v is None and isinstance(beam, dict):
        v = beam.get(name)
    return default if v is None else v


def export_rtplan(patient, beams, segmented_beams, path, *, fractions: int | None = None,
                  prescription=None, plan_label: str = "OpenATP", plan_name: str = "OpenATP IMRT",
                  machine_name: str = "OpenATP_6MV", dose_rate_mu_per_min: float = 600.0,
                  structure_set_uid: str | None = None, approval: str = "UNAPPROVED") -> Path:
    """Write a step-and-shoot RTPLAN.

    Parameters
    ----------
    patient : core.patient.Patient
        For identity, UIDs (``patient.dicom``) and the default prescription.
    beams : BeamSet or sequence of Beam
        Beam geometry: ``gantry_deg``, ``couch_deg``, ``collimator_deg``, ``isocenter_mm``
        (LPS mm, must be set), ``sad_mm``, ``energy_mv``.
    segmented_beams : sequence of SegmentedBeam
        ``beam_index`` refers into ``beams``; beams without segments are left out.
    path : str or Path
        Output file (written atomically).
    fractions : int, optional
        Default: the prescription's fractions, else 1.
    prescription : core.patient.Prescription, optional
        Default: the patient's first prescription (written as the target dose reference).
    plan_label, plan_name, machine_name : str
    dose_rate_mu_per_min : float
    structure_set_uid : str, optional
        SOP instance UID of the RTSTRUCT the plan refers to (default
        ``patient.dicom["rtstruct_sop_instance_uid"]``); without one the plan geometry is
        ``TREATMENT_DEVICE`` as the standard requires.
    approval : str
        ``ApprovalStatus``; OpenATP never claims a plan is approved.

    Returns
    -------
    Path of the written file.
    """
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    from core.io.dicom_export import _base_dataset

    beams = list(beams)
    sbs = [sb for sb in segmented_beams if sb.n_segments > 0]
    if not sbs:
        raise InputError("the plan has no segments to export: sequence the fluence first")
    for sb in sbs:
        if not 0 <= sb.beam_index < len(beams):
            raise InputError(f"segmented beam {sb.beam_index + 1} has no beam in the beam set ({len(beams)} beams)")
        if _beam_attr(beams[sb.beam_index], "isocenter_mm") is None:
            raise InputError(f"beam {sb.beam_index + 1} has no isocentre: resolve the beam set before export")
    if prescription is None and getattr(patient, "prescriptions", None):
        prescription = patient.prescriptions[0]
    if fractions is None:
        fractions = int(prescription.fractions) if prescription is not None else 1
    if int(fractions) != fractions or fractions < 1:
        raise InputError(f"fractions must be a positive integer, got {fractions}")
    fractions = int(fractions)

    d = patient.dicom
    if not d.get("frame_of_reference_uid"):
        d["frame_of_reference_uid"] = _uid()
    if not d.get("study_instance_uid"):
        d["study_instance_uid"] = _uid()
    sop = _uid()

    # the header every OpenATP export shares (patient, study, frame of reference, dates)
    ds = _base_dataset(patient, RT_PLAN_STORAGE, sop, "RTPLAN", _uid())
    date, time = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ManufacturerModelName = "OpenATP"
    ds.SoftwareVersions = "OpenATP"
    ds.SeriesDescription = "OpenATP plan"
    ds.OperatorsName = ""

    # RT General Plan
    ds.RTPlanLabel = plan_label[:16]
    ds.RTPlanName = plan_name[:64]
    ds.RTPlanDate, ds.RTPlanTime = date, time
    ss_uid = structure_set_uid or d.get("rtstruct_sop_instance_uid")
    if ss_uid:
        ds.RTPlanGeometry = "PATIENT"
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_STRUCTURE_SET_STORAGE
        ref.ReferencedSOPInstanceUID = ss_uid
        ds.ReferencedStructureSetSequence = Sequence([ref])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    ds.ApprovalStatus = approval

    # Patient setup: head-first supine (the patient model's stated convention)
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    setup.SetupTechnique = "ISOCENTRIC"
    ds.PatientSetupSequence = Sequence([setup])

    # Prescription
    if prescription is not None:
        dr = Dataset()
        dr.DoseReferenceNumber = 1
        dr.DoseReferenceUID = _uid()
        dr.DoseReferenceStructureType = "SITE"
        dr.DoseReferenceDescription = str(prescription.structure)[:64]
        dr.DoseReferenceType = "TARGET"
        dr.DeliveryMaximumDose = _ds(1.1 * prescription.dose_gy)
        dr.TargetPrescriptionDose = _ds(prescription.dose_gy)
        ds.DoseReferenceSequence = Sequence([dr])

    # Beams
    beam_seq, ref_beams = [], []
    for number, sb in enumerate(sbs, start=1):
        beam = beams[sb.beam_index]
        mlc = sb.mlc
        beam_mu_fx = sb.mu / fractions
        b = Dataset()
        b.BeamNumber = number
        gantry = _angle(_beam_attr(beam, "gantry_deg", 0.0))
        b.BeamName = f"G{gantry:03.0f}"[:16]
        b.BeamDescription = f"OpenATP IMRT beam {sb.beam_index + 1}, {sb.n_segments} segments"
        b.BeamType = "STATIC"
        b.RadiationType = "PHOTON"
        b.TreatmentMachineName = machine_name[:16]
        b.Manufacturer = mlc.manufacturer or "OpenATP"
        b.ManufacturerModelName = mlc.model_name or mlc.name
        b.PrimaryDosimeterUnit = "MU"
        b.SourceAxisDistance = _ds(_beam_attr(beam, "sad_mm", 1000.0))
        b.TreatmentDeliveryType = "TREATMENT"
        b.NumberOfWedges = 0
        b.NumberOfCompensators = 0
        b.NumberOfBoli = 0
        b.NumberOfBlocks = 0
        b.ReferencedPatientSetupNumber = 1
        devs = []
        for kind, n in (("ASYMX", 1), ("ASYMY", 1)):
            dv = Dataset()
            dv.RTBeamLimitingDeviceType = kind
            dv.NumberOfLeafJawPairs = n
            devs.append(dv)
        dv = Dataset()
        dv.RTBeamLimitingDeviceType = "MLCX"
        dv.NumberOfLeafJawPairs = mlc.n_pairs
        dv.LeafPositionBoundaries = [_ds(v) for v in mlc.leaf_boundaries_mm]
        devs.append(dv)
        b.BeamLimitingDeviceSequence = Sequence(devs)

        cps = []
        cum = 0.0
        total = sb.mu
        iso = [_ds(v) for v in _beam_attr(beam, "isocenter_mm")]
        for k, seg in enumerate(sb.segments):
            for half in (0, 1):
                cp = Dataset()
                cp.ControlPointIndex = len(cps)
                if not cps:
                    cp.NominalBeamEnergy = _ds(_beam_attr(beam, "energy_mv", 6.0))
                    cp.DoseRateSet = _ds(dose_rate_mu_per_min)
                    cp.GantryAngle = _ds(gantry)
                    cp.GantryRotationDirection = "NONE"
                    cp.BeamLimitingDeviceAngle = _ds(_angle(_beam_attr(beam, "collimator_deg", 0.0)))
                    cp.BeamLimitingDeviceRotationDirection = "NONE"
                    cp.PatientSupportAngle = _ds(_angle(_beam_attr(beam, "couch_deg", 0.0)))
                    cp.PatientSupportRotationDirection = "NONE"
                    cp.TableTopEccentricAngle = "0"
                    cp.TableTopEccentricRotationDirection = "NONE"
                    cp.IsocenterPosition = iso
                    # Type 2C on the first control point: present, empty = not specified
                    cp.TableTopVerticalPosition = ""
                    cp.TableTopLongitudinalPosition = ""
                    cp.TableTopLateralPosition = ""
                # positions on every control point: a viewer never has to carry them over
                pos = []
                for kind, vals in (("ASYMX", seg.jaw_x_mm), ("ASYMY", seg.jaw_y_mm),
                                   ("MLCX", np.concatenate([seg.leaf_a_mm, seg.leaf_b_mm]))):
                    p = Dataset()
                    p.RTBeamLimitingDeviceType = kind
                    p.LeafJawPositions = [_ds(v, 2) for v in vals]
                    pos.append(p)
                cp.BeamLimitingDevicePositionSequence = Sequence(pos)
                if half == 1:
                    cum += seg.mu
                last = k == len(sb.segments) - 1 and half == 1
                cp.CumulativeMetersetWeight = "1" if last else _ds(cum / total if total > 0 else 0.0, 8)
                cps.append(cp)
        b.NumberOfControlPoints = len(cps)
        b.FinalCumulativeMetersetWeight = "1"
        b.ControlPointSequence = Sequence(cps)
        beam_seq.append(b)
        rb = Dataset()
        rb.ReferencedBeamNumber = number
        rb.BeamMeterset = _ds(beam_mu_fx, 4)
        ref_beams.append(rb)
    ds.BeamSequence = Sequence(beam_seq)

    fg = Dataset()
    fg.FractionGroupNumber = 1
    fg.NumberOfFractionsPlanned = fractions
    fg.NumberOfBeams = len(beam_seq)
    fg.NumberOfBrachyApplicationSetups = 0
    fg.ReferencedBeamSequence = Sequence(ref_beams)
    ds.FractionGroupSequence = Sequence([fg])

    import pydicom

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    d["rtplan_sop_instance_uid"] = sop
    return path
