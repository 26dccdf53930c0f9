"""RTPLAN export: DICOM structure, and the round trip through our importer."""

from __future__ import annotations

import numpy as np
import pytest

from core.delivery.segments import deliverable_weights, segmented_beams_from_plan
from core.delivery.sequencing import SequencingOptions, sequence_plan
from core.dose.beams import Beam, BeamSet
from core.errors import InputError
from core.geometry import Grid
from core.io.dicom_import import read_rtplan
from core.io.rtplan_export import export_rtplan
from core.patient import Patient, Prescription, Structure, StructureRole


def _patient():
    grid = Grid((10, 12, 12), (3.0, 3.0, 3.0), (-15.0, -18.0, -18.0))
    m = np.zeros(grid.shape, bool)
    m[3:7, 4:8, 4:8] = True
    p = Patient("RT_TEST", grid)
    p.add_structure(Structure("PTV70", m, StructureRole.TARGET))
    p.prescriptions.append(Prescription("PTV70", 70.0, 35))
    p.dicom.update(patient_name="Test^Plan", study_instance_uid="1.2.3.4", frame_of_reference_uid="1.2.3.5")
    return p


def _plan(n_beams=3, seed=0):
    rng = np.random.default_rng(seed)
    u = (np.arange(10) - 5 + 0.5) * 5.0
    v = (np.arange(8) - 4 + 0.5) * 5.0
    pos1 = np.array([(x, y) for x in u for y in v])
    beam_of = np.repeat(np.arange(n_beams), len(pos1))
    pos = np.tile(pos1, (n_beams, 1))
    w = 3500.0 * rng.random(len(pos)) * (np.hypot(pos[:, 0], pos[:, 1]) < 22)
    beams = BeamSet(tuple(Beam(gantry_deg=g, collimator_deg=c, isocenter_mm=(1.0, -2.0, 3.0), mlc="millennium120")
                          for g, c in zip((0.0, 120.0, 240.0)[:n_beams], (0.0, 10.0, 350.0)[:n_beams])))
    sbs = sequence_plan(w, beam_of, pos, (5.0, 5.0), beams, SequencingOptions(fractions=35))
    return beams, sbs, beam_of, pos


def test_rtplan_roundtrip_through_importer(tmp_path):
    patient = _patient()
    beams, sbs, beam_of, pos = _plan()
    path = export_rtplan(patient, beams, sbs, tmp_path / "RTPLAN.dcm")
    plan = read_rtplan(path)
    assert plan["fractions"] == 35
    assert plan["frame_of_reference_uid"] == "1.2.3.5"
    assert plan["prescriptions"][0]["dose_gy"] == pytest.approx(70.0)
    assert len(plan["beams"]) == 3
    for b, sb, beam in zip(plan["beams"], sbs, beams):
        assert b["gantry_deg"] == pytest.approx(beam.gantry_deg)
        assert b["collimator_deg"] == pytest.approx(beam.collimator_deg)
        assert b["isocenter_mm"] == pytest.approx([1.0, -2.0, 3.0])
        # BeamMeterset is per fraction, written to 1e-4 MU
        assert b["mu"] == pytest.approx(sb.mu / 35, abs=6e-5)
        cps = b["control_points"]
        assert len(cps) == 2 * sb.n_segments
        assert cps[0]["cumulative_meterset_weight"] == 0.0 and cps[-1]["cumulative_meterset_weight"] == 1.0
        for k, seg in enumerate(sb.segments):
            for cp in (cps[2 * k], cps[2 * k + 1]):   # step and shoot: both CPs of a segment share the aperture
                leaves = np.concatenate([seg.leaf_a_mm, seg.leaf_b_mm])
                np.testing.assert_allclose(cp["mlc_mm"]["MLCX"], leaves, atol=0.005)
                np.testing.assert_allclose(cp["jaws_mm"]["ASYMX"], seg.jaw_x_mm, atol=0.005)
            assert cps[2 * k + 1]["cumulative_mu"] - cps[2 * k]["cumulative_mu"] == pytest.approx(seg.mu / 35, rel=1e-6)
        assert b["limiting_devices"]["MLCX"]["n_pairs"] == 60
    assert plan["total_mu"] == pytest.approx(sum(sb.mu for sb in sbs) / 35, abs=1e-3)
    assert patient.dicom["rtplan_sop_instance_uid"] == plan["sop_instance_uid"]


def test_rtplan_recomputes_the_same_dose(tmp_path):
    """Segments read back from the file deliver the same beamlet weights, hence the same dose.

    Tolerance: leaf/jaw positions are written to 0.01 mm and cumulative weights to 1e-8,
    so the per-beamlet weight may change by ~0.01/5 of a segment's MU: 1e-3 relative is
    ample and still catches any lost segment (>= 1 % of a beam's MU).
    """
    patient = _patient()
    beams, sbs, beam_of, pos = _plan(seed=1)
    export_rtplan(patient, beams, sbs, tmp_path / "RTPLAN.dcm")
    back = segmented_beams_from_plan(read_rtplan(tmp_path / "RTPLAN.dcm"))
    w0 = deliverable_weights(sbs, beam_of, pos, (5.0, 5.0))
    w1 = deliverable_weights(back, beam_of, pos, (5.0, 5.0))
    np.testing.assert_allclose(w1, w0, rtol=1e-3, atol=1e-3 * w0.max())
    rng = np.random.default_rng(2)
    dij = rng.random((200, len(w0))) * (rng.random((200, len(w0))) < 0.1) * 1e-3
    np.testing.assert_allclose(dij @ w1, dij @ w0, rtol=1e-3)


def test_rtplan_dicom_attributes(tmp_path):
    import pydicom

    patient = _patient()
    beams, sbs, _, _ = _plan(n_beams=1)
    export_rtplan(patient, beams, sbs, tmp_path / "p.dcm")
    ds = pydicom.dcmread(tmp_path / "p.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.5" and ds.Modality == "RTPLAN"
    assert ds.RTPlanGeometry == "TREATMENT_DEVICE"   # no RTSTRUCT referenced
    b = ds.BeamSequence[0]
    assert [d.RTBeamLimitingDeviceType for d in b.BeamLimitingDeviceSequence] == ["ASYMX", "ASYMY", "MLCX"]
    bounds = [float(x) for x in b.BeamLimitingDeviceSequence[2].LeafPositionBoundaries]
    assert len(bounds) == 61 and bounds[0] == -200 and bounds[-1] == 200 and bounds[10] == -100 and bounds[11] == -95
    assert b.NumberOfControlPoints == len(b.ControlPointSequence) == 2 * sbs[0].n_segments
    w = [float(cp.CumulativeMetersetWeight) for cp in b.ControlPointSequence]
    assert np.all(np.diff(w) >= 0) and w[-1] == 1.0 and float(b.FinalCumulativeMetersetWeight) == 1.0
    assert ds.FractionGroupSequence[0].ReferencedBeamSequence[0].ReferencedBeamNumber == b.BeamNumber
    assert ds.PatientName == "Test^Plan"


def test_rtplan_export_refuses_empty_plan(tmp_path):
    patient = _patient()
    beams, sbs, _, _ = _plan(n_beams=1)
    from core.delivery.segments import SegmentedBeam

    with pytest.raises(InputError):
        export_rtplan(patient, beams, [SegmentedBeam(0, "millennium120", ())], tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
