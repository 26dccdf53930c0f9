"""Project files (``.openatp``): a planning session saved so that reopening restores it.

A project names its patient (the PATIENT argument of ``docs/cli.md``, reloaded on open,
never copied: the images stay where the clinic keeps them) and holds the session's plans:
each plan's dose, label, goals, metrics and, for optimised plans, the optimizer weights,
beams and MLC segments (so a reopened plan can still be exported as an RTPLAN).

File layout (a zip archive, readable with any zip tool)::

    project.json            format, version, patient, plans (metadata), goals, active plan
    plans/<n>/dose.npy      (P, R, C) float32, Gy, on the patient grid (array axis order)
    plans/<n>/weights_mu.npy, plans/<n>/deliverable_mu.npy   (B,) float32 (optional)

Doses that came with the patient (an OpenKBP case's reference dose, an imported RTDOSE)
are not copied: the plan records ``patient_dose`` and takes the dose from the reloaded
patient. Arrays are read with ``allow_pickle=False``.

Saving is crash-safe: the archive is built in memory and written by
:func:`core.io.atomic.atomic_write_bytes` (temp file in the same folder, fsync,
``os.replace``), so a crash or a kill at any moment leaves either the previous file or
the new one, never a mixture.
"""

from __future__ import annotations

import io
import json
import math
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.geometry import Grid
from core.goals.goal import ClinicalGoal
from core.io.atomic import atomic_write_bytes
from core.progress import check_cancel, report

PROJECT_FORMAT = "openatp-project"
PROJECT_VERSION = 1
PROJECT_SUFFIX = ".openatp"

#: Deflate level: 1 compresses a 128^3 dose (mostly zeros) to ~4 % in ~20 ms; level 6
#: saves a further 10 % of the size at 2.5x the time, which autosave pays every minute.
_COMPRESS_LEVEL = 1

#: patient.dicom keys kept so that re-exports after reopening stay in the same study.
_DICOM_KEYS = ("frame_of_reference_uid", "study_instance_uid")


def _goal_tuple(goals, where: str) -> tuple:
    out = []
    for g in goals or ():
        if isinstance(g, ClinicalGoal):
            out.append(g)
        elif isinstance(g, dict):
            out.append(ClinicalGoal.from_dict(g))
        else:
            raise InputError(f"{where}: goals must be ClinicalGoal objects or GOALS-file entries")
    return tuple(out)


def _json_safe(o):
    from core.jsonsafe import json_safe

    return json_safe(o)


@dataclass(frozen=True, eq=False)
class ProjectPlan:
    """One plan of a project.

    Parameters
    ----------
    key : str
        Unique key in the session (``"reference"``, ``"plan 1"``).
    label : str
        Name shown to the planner.
    dose_gy : (P, R, C) float32 ndarray, Gy, on the patient grid; or None
        None exactly when ``patient_dose`` names a dose that comes with the patient.
    patient_dose : str, optional
        Key in ``patient.doses`` this plan's dose is taken from on reopening.
    goals : tuple of ClinicalGoal
        The goals the plan was optimised for (empty for a dose without a plan).
    weights_mu : (B,) float32 ndarray, optional
        Optimised beamlet weights (MU), for warm re-optimisation.
    deliverable_mu : (B,) float32 ndarray, optional
        Weights after leaf sequencing.
    beams : dict, optional
        ``BeamSet.to_dict()`` of the plan's beams.
    segmented_beams : tuple of dict, optional
        ``SegmentedBeam.to_dict()`` of each sequenced beam.
    metrics : dict
        JSON-serialisable facts (goal results, timings, MU).
    source : str
        Where the dose came from (a file path, ``"pipeline"``, ``"patient"``).
    """

    key: str
    label: str
    dose_gy: np.ndarray | None = None
    patient_dose: str | None = None
    goals: tuple = ()
    weights_mu: np.ndarray | None = None
    deliverable_mu: np.ndarray | None = None
    beams: dict | None = None
    segmented_beams: tuple | None = None
    metrics: dict = field(default_factory=dict)
    source: str = ""

    def __post_init__(self):
        key = str(self.key or "").strip()
        if not key:
            raise InputError("a plan in a project needs a key")
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "label", str(self.label or key))
        if (self.dose_gy is None) == (self.patient_dose is None):
            raise InputError(f"plan '{key}': give either its dose or the patient dose it uses, not both")
        if self.dose_gy is not None:
            d = np.asarray(self.dose_gy, dtype=np.float32)
            if d.ndim != 3:
                raise InputError(f"plan '{key}': the dose must be a 3D array, got shape {d.shape}")
            if not np.all(np.isfinite(d)):
                raise InputError(f"plan '{key}': the dose holds non-finite values")
            object.__setattr__(self, "dose_gy", d)
        for name in ("weights_mu", "deliverable_mu"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v, dtype=np.float32).ravel()
                if not np.all(np.isfinite(v)):
                    raise InputError(f"plan '{key}': {name} holds non-finite values")
                object.__setattr__(self, name, v)
        object.__setattr__(self, "goals", _goal_tuple(self.goals, f"plan '{key}'"))
        if self.segmented_beams is not None:
            object.__setattr__(self, "segmented_beams", tuple(dict(s) for s in self.segmented_beams))
        object.__setattr__(self, "metrics", _json_safe(dict(self.metrics or {})))


@dataclass(frozen=True, eq=False)
class Project:
    """A saved planning session.

    Parameters
    ----------
    patient_spec : str
        The PATIENT the session was opened from (absolute path, or ``phantom:NAME``).
    patient_id : str
        Checked against the reloaded patient.
    grid : Grid
        The patient grid every plan dose lies on (checked on reopening).
    plans : tuple of ProjectPlan
        In session order; keys unique.
    active_plan : str, optional
        Key of the plan the views showed.
    goals : tuple of ClinicalGoal
        The session's goal list (the goal editor's).
    site : str, optional
        The protocol template the goal list came from.
    phantom_file : str, optional
        The file a ``phantom:`` spec was built from.
    dicom : dict
        Study and frame-of-reference UIDs made by earlier exports.
    saved_at : float
        Unix time of saving (autosave compares it with the last clean exit).
    """

    patient_spec: str
    patient_id: str
    grid: Grid
    plans: tuple = ()
    active_plan: str | None = None
    goals: tuple = ()
    site: str | None = None
    phantom_file: str | None = None
    dicom: dict = field(default_factory=dict)
    saved_at: float = 0.0

    def __post_init__(self):
        if not str(self.patient_spec or "").strip():
            raise InputError("a project needs the patient it was made for")
        if not isinstance(self.grid, Grid):
            raise InputError("a project needs the patient's grid")
        plans = tuple(self.plans)
        if not all(isinstance(p, ProjectPlan) for p in plans):
            raise InputError("a project holds ProjectPlan objects only")
        keys = [p.key for p in plans]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise InputError(f"two plans in the project share the key(s) {', '.join(dup)}")
        for p in plans:
            if p.dose_gy is not None and tuple(p.dose_gy.shape) != tuple(self.grid.shape):
                raise InputError(f"plan '{p.key}': dose {p.dose_gy.shape} is not on the patient grid {self.grid.shape}")
        if self.active_plan is not None and self.active_plan not in keys:
            raise InputError(f"the active plan '{self.active_plan}' is not among the project's plans")
        if not math.isfinite(float(self.saved_at)):
            raise InputError("saved_at must be a finite time")
        object.__setattr__(self, "plans", plans)
        object.__setattr__(self, "goals", _goal_tuple(self.goals, "project"))
        object.__setattr__(self, "patient_spec", str(self.patient_spec))
        object.__setattr__(self, "dicom", {k: str(v) for k, v in dict(self.dicom or {}).items() if v})

    def plan(self, key: str) -> ProjectPlan:
        for p in self.plans:
            if p.key == key:
                return p
        raise InputError(f"no plan '{key}' in the project")


# -- saving --------------------------------------------------------------------------------------
def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def project_bytes(project: Project, progress=None, cancel=None) -> bytes:
    """The ``.openatp`` archive of ``project`` as bytes (see the module docstring)."""
    plans_meta = []
    arrays: list[tuple[str, np.ndarray]] = []
    for n, p in enumerate(project.plans):
        meta = {"key": p.key, "label": p.label, "source": p.source, "patient_dose": p.patient_dose,
                "goals": [g.to_dict() for g in p.goals], "metrics": p.metrics, "beams": p.beams,
                "segmented_beams": None if p.segmented_beams is None else list(p.segmented_beams), "arrays": {}}
        for name in ("dose_gy", "weights_mu", "deliverable_mu"):
            a = getattr(p, name)
            if a is not None:
                member = f"plans/{n}/{'dose' if name == 'dose_gy' else name}.npy"
                meta["arrays"][name] = member
                arrays.append((member, a))
        plans_meta.append(meta)
    doc = {"format": PROJECT_FORMAT, "version": PROJECT_VERSION,
           "saved_at": float(project.saved_at or time.time()),
           "patient": {"spec": project.patient_spec, "phantom_file": project.phantom_file,
                       "patient_id": project.patient_id, "grid": project.grid.to_dict(), "dicom": project.dicom},
           "active_plan": project.active_plan, "site": project.site, "goals": [g.to_dict() for g in project.goals],
           "plans": plans_meta}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=_COMPRESS_LEVEL) as z:
        total = len(arrays) + 1
        for i, (member, a) in enumerate(arrays):
            check_cancel(cancel)
            z.writestr(member, _npy_bytes(a))
            report(progress, i + 1, total, "saving plans")
        # the index last: an archive without it is recognisably incomplete
        z.writestr("project.json", json.dumps(_json_safe(doc), indent=1))
    report(progress, 1, 1, "saved")
    return buf.getvalue()


def save_project(path: str | Path, project: Project, progress=None, cancel=None) -> Path:
    """Write ``project`` to ``path`` atomically (the old file survives any failure).

    Parameters
    ----------
    path : str or Path
        Usually ``*.openatp``; parent folders are created.
    project : Project
    progress, cancel : optional
        :class:`core.progress.Progress`, :class:`core.progress.CancelToken`; a cancelled
        save leaves the old file as it was.

    Returns
    -------
    Path of the written file.
    """
    path = Path(path)
    data = project_bytes(project, progress=progress, cancel=cancel)
    check_cancel(cancel)
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise InputError(f"cannot write the project ({exc.strerror or exc})", path) from None
    return path


# -- loading -------------------------------------------------------------------------------------
def _read_array(z: zipfile.ZipFile, member: str, path: Path) -> np.ndarray:
    try:
        with z.open(member) as f:
            return np.load(io.BytesIO(f.read()), allow_pickle=False)
    except KeyError:
        raise InputError(f"the project is incomplete: '{member}' is missing", path) from None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"the project's '{member}' cannot be read ({exc})", path) from None


def read_project_header(path: str | Path) -> dict:
    """``project.json`` only (cheap: no arrays are read); for listing autosaves."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such project file", path)
    try:
        with zipfile.ZipFile(path) as z:
            doc = json.loads(z.read("project.json").decode("utf-8"))
    except KeyError:
        raise InputError("not a complete OpenATP project (no project.json)", path) from None
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"not an OpenATP project file ({exc})", path) from None
    if not isinstance(doc, dict) or doc.get("format") != PROJECT_FORMAT:
        raise InputError("not an OpenATP project file", path)
    if int(doc.get("version", 0)) > PROJECT_VERSION:
        raise InputError(f"made by a newer OpenATP (project version {doc.get('version')}, this one reads "
                         f"up to {PROJECT_VERSION}): update OpenATP to open it", path)
    return doc


def load_project(path: str | Path, progress=None, cancel=None) -> Project:
    """Read a ``.openatp`` file.

    Raises
    ------
    InputError
        Not a project, truncated, from a newer version, or inconsistent; names the file.
    """
    path = Path(path)
    doc = read_project_header(path)
    try:
        pat = doc["patient"]
        grid = Grid.from_dict(pat["grid"])
        plans = []
        with zipfile.ZipFile(path) as z:
            metas = list(doc.get("plans") or [])
            for i, m in enumerate(metas):
                check_cancel(cancel)
                arrays = {name: _read_array(z, member, path) for name, member in (m.get("arrays") or {}).items()}
                plans.append(ProjectPlan(
                    key=m["key"], label=m.get("label", m["key"]), dose_gy=arrays.get("dose_gy"),
                    patient_dose=m.get("patient_dose"), goals=m.get("goals") or (),
                    weights_mu=arrays.get("weights_mu"), deliverable_mu=arrays.get("deliverable_mu"),
                    beams=m.get("beams"), segmented_beams=m.get("segmented_beams"),
                    metrics=m.get("metrics") or {}, source=m.get("source", "")))
                report(progress, i + 1, max(len(metas), 1), "reading plans")
        return Project(patient_spec=pat["spec"], patient_id=str(pat.get("patient_id", "")), grid=grid,
                       plans=tuple(plans), active_plan=doc.get("active_plan"), goals=doc.get("goals") or (),
                       site=doc.get("site"),
                       phantom_file=pat.get("phantom_file"), dicom=pat.get("dicom") or {},
                       saved_at=float(doc.get("saved_at") or 0.0))
    except InputError as exc:
        if exc.path is None:
            exc.path = str(path)
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"the project file is damaged ({type(exc).__name__}: {exc})", path) from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InputError(f"the project file cannot be read ({exc})", path) from None


# -- reopening -----------------------------------------------------------------------------------
def resolve_patient_spec(project: Project, project_path: str | Path | None = None) -> str:
    """The patient to load: the saved spec, or, if that path is gone, the same name beside
    the project file (a project copied together with its patient to another machine)."""
    spec = project.patient_spec
    if spec.lower().startswith("phantom:") or Path(spec).exists() or project_path is None:
        return spec
    beside = Path(project_path).resolve().parent / Path(spec).name
    return str(beside) if beside.exists() else spec


def restore_patient(project: Project, project_path: str | Path | None = None, progress=None, cancel=None):
    """Reload the project's patient and check it is the one the plans were made on.

    Returns
    -------
    (patient, doses) : (core.patient.Patient, dict key -> core.patient.Dose)
        ``doses`` holds every plan's dose, in project order.

    Raises
    ------
    InputError
        The patient is missing, or its grid or id no longer match the project.
    """
    from core.io.loader import load_patient
    from core.patient import Dose

    spec = resolve_patient_spec(project, project_path)
    try:
        patient = load_patient(spec, phantom_file=project.phantom_file, progress=progress, cancel=cancel)
    except InputError as exc:
        raise InputError(f"the project's patient cannot be opened: {exc}", project_path) from None
    if not patient.grid.same_as(project.grid, tol_mm=1e-3):
        raise InputError(f"the patient at {spec} has changed since the project was saved (grid "
                         f"{patient.grid.shape} vs {project.grid.shape}): the saved doses do not fit it",
                         project_path)
    if project.patient_id and patient.patient_id != project.patient_id:
        raise InputError(f"{spec} holds patient '{patient.patient_id}', the project was saved for "
                         f"'{project.patient_id}'", project_path)
    for k in _DICOM_KEYS:
        if project.dicom.get(k) and not patient.dicom.get(k):
            patient.dicom[k] = project.dicom[k]
    doses = {}
    for p in project.plans:
        if p.patient_dose is not None:
            if p.patient_dose not in patient.doses:
                raise InputError(f"plan '{p.label}' used the patient's '{p.patient_dose}' dose, which "
                                 f"{spec} no longer holds", project_path)
            doses[p.key] = patient.doses[p.patient_dose]
        else:
            doses[p.key] = Dose(p.dose_gy, patient.grid, p.label)
    return patient, doses


def dicom_uids_of(patient) -> dict:
    """The UIDs of ``patient.dicom`` a project keeps."""
    return {k: patient.dicom.get(k) for k in _DICOM_KEYS if patient.dicom.get(k)}


__all__ = ["Project", "ProjectPlan", "PROJECT_SUFFIX", "PROJECT_VERSION", "save_project", "load_project",
           "project_bytes", "read_project_header", "restore_patient", "resolve_patient_spec", "dicom_uids_of"]
