"""Project files: a saved session reopens to the same plans; a failed save never damages
the previous file."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from core.errors import Cancelled, InputError
from core.goals.goal import ClinicalGoal
from core.io.project import (Project, ProjectPlan, load_project, project_bytes, read_project_header,
                             restore_patient, save_project)
from core.progress import CancelToken

GOALS = (
    ClinicalGoal.from_dict({"priority": 1, "structure": "PTV70", "type": "min_dose_at_volume", "volume_pct": 95,
                            "dose_gy": 70.0}),
    ClinicalGoal.from_dict({"priority": 2, "structure": "SpinalCord", "type": "max_dose_at_volume", "volume_cc": 0.03,
                            "dose_gy": 45.0, "tolerance_pct": 5}),
)


def write_case(path, shape=(20, 24, 24), spacing=(4.0, 4.0, 3.0)):
    """A tiny OpenKBP-format case: body cylinder, spherical PTV70, a cord, a reference dose
    falling off from the PTV centre. Small enough to load in milliseconds."""
    idx = np.indices(shape).astype(np.float32)
    c = (np.array(shape, np.float32) - 1) / 2
    r2 = sum(((idx[k] - c[k]) * spacing[k]) ** 2 for k in range(3))
    radius_mm = 0.45 * shape[0] * spacing[0]
    body = ((idx[0] - c[0]) * spacing[0]) ** 2 + ((idx[1] - c[1]) * spacing[1]) ** 2 <= radius_mm ** 2
    ptv = r2 <= 14.0 ** 2
    cord = (((idx[0] - c[0] - 6) * spacing[0]) ** 2 + ((idx[1] - c[1]) * spacing[1]) ** 2 <= 5.0 ** 2) & body
    names = ["SpinalCord", "PTV70"]
    masks = (cord.astype(np.uint16) << 0) | (ptv.astype(np.uint16) << 1)
    dose_cgy = np.clip(7200.0 * (1.0 - np.sqrt(r2) / 60.0), 0, None) * body
    np.savez_compressed(path, ct=np.where(body, 1000, 0).astype(np.int16), masks=masks, roi_names=np.array(names),
                        possible_dose_mask=body, voxel_dimensions_mm=np.array(spacing, np.float32),
                        dose_cgy=dose_cgy.astype(np.float32))
    return path


@pytest.fixture
def case(tmp_path):
    return write_case(tmp_path / "pt_tiny.npz")


def _project(case, patient, saved_at=1000.0):
    ref = patient.doses["reference"].dose_gy
    rng = np.random.default_rng(0)
    plan_dose = (ref * 1.03 + rng.uniform(0, 0.5, ref.shape)).astype(np.float32)
    beams = {"name": "test", "beams": [{"gantry_deg": 0.0}], "meta": {}}
    seg = ({"beam_index": 0, "mlc": "millennium120", "mu": 12.5, "segments": [], "info": {"levels": 3}},)
    return Project(
        patient_spec=str(case), patient_id=patient.patient_id, grid=patient.grid,
        plans=(ProjectPlan("reference", "Clinical", patient_dose="reference", source="patient"),
               ProjectPlan("plan 1", "Automated", dose_gy=plan_dose, goals=GOALS,
                           weights_mu=np.arange(7, dtype=np.float32), deliverable_mu=np.arange(7) * 1.5,
                           beams=beams, segmented_beams=seg,
                           metrics={"all_p1_met": True, "total_mu": np.float32(512.5), "nan": float("nan")},
                           source="pipeline")),
        active_plan="plan 1", goals=GOALS[:1], site="hn",
        dicom={"study_instance_uid": "1.2.3", "frame_of_reference_uid": ""},
        saved_at=saved_at)


def test_round_trip_restores_every_plan_exactly(tmp_path, case):
    from core.io.openkbp import load_openkbp

    patient = load_openkbp(case)
    proj = _project(case, patient)
    path = save_project(tmp_path / "session.openatp", proj)
    back = load_project(path)
    assert back.patient_spec == str(case) and back.patient_id == "pt_tiny"
    assert back.grid.same_as(patient.grid, tol_mm=0) and back.grid.axes == patient.grid.axes
    assert back.active_plan == "plan 1" and back.saved_at == 1000.0 and back.site == "hn"
    assert [p.key for p in back.plans] == ["reference", "plan 1"]
    assert [p.label for p in back.plans] == ["Clinical", "Automated"]
    a, b = proj.plans[1], back.plans[1]
    np.testing.assert_array_equal(b.dose_gy, a.dose_gy)  # bit-exact: .npy inside the zip
    assert b.dose_gy.dtype == np.float32
    np.testing.assert_array_equal(b.weights_mu, np.arange(7, dtype=np.float32))
    np.testing.assert_array_equal(b.deliverable_mu, np.arange(7, dtype=np.float32) * 1.5)
    assert [g.to_dict() for g in b.goals] == [g.to_dict() for g in GOALS]
    assert [g.to_dict() for g in back.goals] == [GOALS[0].to_dict()]
    assert b.beams == a.beams and b.segmented_beams == a.segmented_beams
    assert b.metrics == {"all_p1_met": True, "total_mu": 512.5, "nan": None}  # strict JSON inside
    assert back.plans[0].dose_gy is None and back.plans[0].patient_dose == "reference"
    assert back.dicom == {"study_instance_uid": "1.2.3"}

    # reopening: the patient is reloaded from its spec and every plan's dose is restored
    patient2, doses = restore_patient(back, path)
    assert list(doses) == ["reference", "plan 1"]
    np.testing.assert_array_equal(doses["reference"].dose_gy, patient.doses["reference"].dose_gy)
    np.testing.assert_array_equal(doses["plan 1"].dose_gy, a.dose_gy)
    assert doses["plan 1"].grid is patient2.grid
    assert patient2.dicom["study_instance_uid"] == "1.2.3"
    # a human can read the index with any zip tool; the reference dose is not copied
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
    assert "project.json" in names and "plans/1/dose.npy" in names and "plans/0/dose.npy" not in names


def test_failed_save_leaves_the_old_file_intact(tmp_path, case, monkeypatch):
    """A crash while writing (simulated by raising at the fsync, after the bytes went to
    the temp file, and in the middle of building the archive) keeps the previous project."""
    from core.io import atomic
    from core.io.openkbp import load_openkbp

    patient = load_openkbp(case)
    path = tmp_path / "session.openatp"
    save_project(path, _project(case, patient, saved_at=1.0))
    before = path.read_bytes()

    def crash(_fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic.os, "fsync", crash)
    with pytest.raises(InputError, match="cannot write the project"):
        save_project(path, _project(case, patient, saved_at=2.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_project(path).saved_at == 1.0
    assert sorted(os.listdir(tmp_path)) == ["pt_tiny.npz", "session.openatp"]  # no temp file left

    # killed half-way through the archive (an exception between two plan arrays)
    calls = {"n": 0}
    real = zipfile.ZipFile.writestr

    def die_on_second(self, name, data, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # like a kill: not an error the code could handle
        return real(self, name, data, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_project(path, _project(case, patient, saved_at=3.0))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["pt_tiny.npz", "session.openatp"]


def test_cancelled_save_writes_nothing(tmp_path, case):
    from core.io.openkbp import load_openkbp

    patient = load_openkbp(case)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        save_project(tmp_path / "x.openatp", _project(case, patient), cancel=token)
    assert not (tmp_path / "x.openatp").exists()


def test_damaged_or_foreign_files_are_typed_errors(tmp_path, case):
    from core.io.openkbp import load_openkbp

    patient = load_openkbp(case)
    data = project_bytes(_project(case, patient))
    truncated = tmp_path / "truncated.openatp"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated.openatp"):
        load_project(truncated)
    foreign = tmp_path / "foreign.openatp"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("project.json", '{"format": "something-else"}')
    with pytest.raises(InputError, match="not an OpenATP project"):
        read_project_header(foreign)
    newer = tmp_path / "newer.openatp"
    with zipfile.ZipFile(newer, "w") as z:
        z.writestr("project.json", '{"format": "openatp-project", "version": 99}')
    with pytest.raises(InputError, match="newer OpenATP"):
        load_project(newer)
    missing_array = tmp_path / "missing.openatp"
    with zipfile.ZipFile(missing_array, "w") as z, zipfile.ZipFile(io.BytesIO(data)) as src:
        for n in src.namelist():
            if not n.endswith("dose.npy"):
                z.writestr(n, src.read(n))
    with pytest.raises(InputError, match="incomplete.*plans/1/dose.npy"):
        load_project(missing_array)


def test_project_validation_and_patient_checks(tmp_path, case):
    from core.io.openkbp import load_openkbp

    patient = load_openkbp(case)
    with pytest.raises(InputError, match="either its dose or the patient dose"):
        ProjectPlan("p", "p")
    with pytest.raises(InputError, match="not on the patient grid"):
        Project(str(case), "pt_tiny", patient.grid, plans=(ProjectPlan("p", "p", dose_gy=np.zeros((2, 2, 2))),))
    with pytest.raises(InputError, match="share the key"):
        Project(str(case), "pt_tiny", patient.grid, plans=(ProjectPlan("p", "p", patient_dose="reference"),) * 2)
    with pytest.raises(InputError, match="active plan"):
        Project(str(case), "pt_tiny", patient.grid, active_plan="nope")
    # the patient file was replaced by another case with another grid
    proj = _project(case, patient)
    write_case(case, shape=(18, 24, 24))
    with pytest.raises(InputError, match="has changed since the project was saved"):
        restore_patient(proj)
    # moved with the project: found beside it under the same name
    other = tmp_path / "moved"
    other.mkdir()
    write_case(other / "pt_tiny.npz")
    moved = Project(str(tmp_path / "gone" / "pt_tiny.npz"), "pt_tiny", proj.grid, plans=proj.plans,
                    active_plan="plan 1")
    p2, doses = restore_patient(moved, other / "session.openatp")
    assert p2.source == str(other / "pt_tiny.npz") and set(doses) == {"reference", "plan 1"}
