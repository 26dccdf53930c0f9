"""Project save/open and autosave of the session (:mod:`core.io.project` does the files).

Save and open run on the task runner with progress like every other task. Autosave runs
every :data:`AUTOSAVE_INTERVAL_S` seconds, but only when the session differs from what was
last saved (a cheap fingerprint: patient, plan keys, labels and dose objects, the active
plan, the goals), on a second, silent runner so that it neither flashes the progress bar
nor disables actions. It writes ``<user data>/autosave/session.openatp`` atomically, so a
crash loses at most the last minute of work.

A clean exit records its time in the settings (``session/clean_exit_at``). On the next
start an autosave newer than that is the remains of a crash, and the planner is offered to
restore it; declining keeps it as ``previous.openatp`` beside it instead of letting the
next autosave overwrite it.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer
from PySide6.QtWidgets import QFileDialog, QMessageBox

from app.session import PlanEntry
from app.workers import TaskRunner

AUTOSAVE_INTERVAL_S = 60.0
AUTOSAVE_NAME = "session.openatp"
DECLINED_NAME = "previous.openatp"
CLEAN_EXIT_KEY = "session/clean_exit_at"


def autosave_dir() -> Path:
    """``<user data>/autosave`` (:func:`core.paths.user_subdir`; ``$OPENATP_USER_DIR`` honoured)."""
    from core.paths import user_subdir

    return user_subdir("autosave", create=False)


def projects_dir() -> Path:
    try:
        from core.paths import user_subdir
    except ImportError:
        from core.goals.templates import user_data_dir

        return user_data_dir() / "projects"
    return user_subdir("projects", create=False)


# -- session <-> project ------------------------------------------------------------------------
def session_goals(ws) -> list:
    """The session's goal list: the session's own if it keeps one, else the DVH markers'."""
    goals = getattr(ws.session, "goals", None)
    if goals is None:
        goals = getattr(getattr(ws, "display", None), "goals", None)
    return list(goals or [])


def set_session_goals(ws, goals, site: str | None = None) -> None:
    goals = list(goals)
    if hasattr(ws.session, "set_goals"):
        ws.session.set_goals(goals, site=site)
    elif hasattr(getattr(ws, "display", None), "set_goals"):
        ws.display.set_goals(goals)


def plan_record(entry, patient, version=None) -> dict:
    """What a project keeps of one session plan, as references (cheap, on the GUI thread);
    :func:`build_project` turns it into a :class:`core.io.project.ProjectPlan` on a worker.
    ``version`` is the session's plan-history entry of this plan, if any (its goals and
    optimised fluence)."""
    info = entry.info or {}
    result = info.get("result")
    source = str(info.get("source", "") or ("prediction" if info.get("kind") == "prediction" else ""))
    rec = {"key": entry.key, "label": entry.label, "dose": entry.dose, "source": source,
           "result": result, "info": info, "version": version}
    own = patient.doses.get(entry.key) if patient is not None else None
    rec["patient_dose"] = entry.key if own is not None and own is entry.dose else None
    if rec["patient_dose"] and not rec["source"]:
        rec["source"] = "patient"
    if result is not None and not rec["source"]:
        rec["source"] = "pipeline"
    return rec


def patient_spec(ws) -> str:
    """The PATIENT argument that reloads the session's patient ('' if there is none)."""
    spec = getattr(ws.patients, "spec", None)
    if spec:
        return str(spec)
    source = str(getattr(ws.session.patient, "source", "") or "")
    # a loader's source is a reloadable spec when it is an existing path or a bare phantom key
    if source and (Path(source).exists() or re.fullmatch(r"phantom:\w+", source)):
        return source
    return ""


def snapshot(ws) -> dict:
    """The session as plain references, taken on the GUI thread."""
    s = ws.session
    patient = s.patient
    version = getattr(s, "version", None)
    return {"spec": patient_spec(ws), "phantom_file": ws.patients.phantom_file, "patient": patient,
            "plans": [plan_record(e, patient, version(k) if callable(version) else None) for k, e in s.plans.items()],
            "active_plan": s.active_plan, "goals": session_goals(ws), "site": getattr(s, "site", None)}


def fingerprint(ws, revision: int = 0) -> tuple:
    """Changes whenever anything a project keeps changes: the session's change count
    (``revision``), plan identities and labels, the active plan and the goal list (which
    may live outside the session and change without a session signal)."""
    s = ws.session
    goals = tuple(repr(g.to_dict()) if hasattr(g, "to_dict") else repr(g) for g in session_goals(ws))
    return (revision, id(s.patient), tuple((k, p.label, id(p.dose)) for k, p in s.plans.items()),
            s.active_plan, goals)


def build_project(snap: dict, saved_at: float | None = None):
    """A :class:`core.io.project.Project` from a :func:`snapshot` (runs on a worker)."""
    import numpy as np

    from core.errors import InputError
    from core.io.project import Project, ProjectPlan, dicom_uids_of

    patient = snap["patient"]
    if patient is None:
        raise InputError("no patient to save")
    if not snap["spec"]:
        raise InputError("this patient was not opened from a file, so a project cannot refer to it")
    plans = []
    for rec in snap["plans"]:
        info, result, version = rec["info"], rec["result"], rec.get("version")
        goals = info.get("goals") or getattr(version, "goals", None) or getattr(result, "goals", None) or ()
        kw = {}
        opt = getattr(version, "optimization", None)
        if getattr(opt, "weights", None) is not None:
            kw["weights_mu"] = np.asarray(opt.weights)
        if result is not None:
            opt = getattr(result, "optimization", None)
            if getattr(opt, "weights", None) is not None:
                kw["weights_mu"] = np.asarray(opt.weights)
            if getattr(result, "deliverable_mu", None) is not None:
                kw["deliverable_mu"] = np.asarray(result.deliverable_mu)
            dij = getattr(result, "dij", None)
            if getattr(dij, "beams", None) is not None:
                kw["beams"] = dij.beams.to_dict()
            if getattr(result, "segmented_beams", None):
                kw["segmented_beams"] = tuple(sb.to_dict() for sb in result.segmented_beams)
            kw["metrics"] = dict(getattr(result, "metrics", None) or {})
        else:
            for key in ("weights_mu", "deliverable_mu"):
                if info.get(key) is not None:
                    kw[key] = info[key]
            if info.get("beam_set"):
                kw["beams"] = info["beam_set"]
            if info.get("segmented_beams"):
                kw["segmented_beams"] = tuple(info["segmented_beams"])
            kw["metrics"] = dict(info.get("metrics") or {})
        if rec["patient_dose"]:
            kw["patient_dose"] = rec["patient_dose"]
        else:
            kw["dose_gy"] = rec["dose"].dose_gy
        plans.append(ProjectPlan(rec["key"], rec["label"], goals=tuple(goals), source=rec["source"], **kw))
    return Project(patient_spec=snap["spec"], patient_id=patient.patient_id, grid=patient.grid, plans=tuple(plans),
                   active_plan=snap["active_plan"], goals=tuple(snap["goals"]), site=snap.get("site"),
                   phantom_file=snap["phantom_file"],
                   dicom=dicom_uids_of(patient), saved_at=time.time() if saved_at is None else saved_at)


def save_task(snap: dict, path, progress=None, cancel=None) -> dict:
    """Worker body: build the project and write it atomically."""
    from core.io.project import save_project

    project = build_project(snap)
    save_project(path, project, progress=progress, cancel=cancel)
    return {"path": str(path), "saved_at": project.saved_at, "n_plans": len(project.plans)}


def open_task(path, progress=None, cancel=None):
    """Worker body: read the project and reload its patient; ``(project, patient, doses)``."""
    from core.io.project import load_project, restore_patient

    project = load_project(path, cancel=cancel)
    patient, doses = restore_patient(project, path, progress=progress, cancel=cancel)
    return project, patient, doses


class ProjectController(QObject):
    """Handlers ``project.*`` of the action table; autosave and crash recovery.

    Attributes
    ----------
    path : Path or None
        The project file the session was last saved to or opened from.
    autosave_enabled : bool
        Off in headless runs (screenshots, tests) until :meth:`enable_autosave`.
    """

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.path: Path | None = None
        self.background = TaskRunner(self)  # silent: autosave never shows in the progress bar
        self.autosave_enabled = False
        self.last_autosave: dict | None = None
        self._saved_fingerprint = None
        self._autosaved_fingerprint = None
        self._autosave_task = None
        self._restore_box = None
        self.revision = 0
        workstation.session.changed.connect(self._on_session_changed)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.autosave_now)
        workstation.window.closing.connect(self._on_closing)
        if not workstation.headless:
            self.enable_autosave()

    def _on_session_changed(self, what: list) -> None:
        if set(what) & {"patient", "plans", "active_plan", "goals"}:
            self.revision += 1

    def fingerprint(self) -> tuple:
        return fingerprint(self.ws, self.revision)

    # -- handlers named in the action table -------------------------------------------------------
    def save(self):
        """Save to the current project file, or ask for one."""
        if not self.ws.session.has_patient:
            return None
        if self.path is None:
            return self.save_as_dialog()
        return self.save_to(self.path)

    def save_as_dialog(self):
        if not self.ws.session.has_patient:
            return None
        start = self.path or projects_dir() / f"{_safe(self.ws.session.patient.patient_id)}.openatp"
        path, _ = QFileDialog.getSaveFileName(self.ws.window, "Save project", str(start),
                                              "OpenATP project (*.openatp)")
        if not path:
            return None
        if not path.lower().endswith(".openatp"):
            path += ".openatp"
        return self.save_to(path)

    def open_dialog(self):
        start = str(self.path.parent) if self.path else str(projects_dir())
        path, _ = QFileDialog.getOpenFileName(self.ws.window, "Open project", start,
                                              "OpenATP project (*.openatp);;All files (*)")
        return self.open_project(path) if path else None

    # -- save / open ------------------------------------------------------------------------------
    def save_to(self, path):
        """Save the session to ``path`` on the task runner; returns the task."""
        path = Path(path)
        snap = snapshot(self.ws)
        fp = self.fingerprint()

        def done(result):
            self.path = path
            self._saved_fingerprint = fp
            self.ws.patients.remember(str(path))
            self.ws.session.set_state(f"project saved ({path.name})")

        return self.ws.runner.run("Saving project", save_task, snap, path, on_success=done,
                                  on_failure=lambda e: self.ws.show_error(e, "Could not save the project"))

    def open_project(self, path, from_autosave: bool = False):
        """Open a project (patient reloaded, plans and goals restored) on the task runner."""
        path = Path(path)
        self.ws.session.set_state(f"opening {path.name}")
        return self.ws.runner.run("Opening project", open_task, str(path),
                                  on_success=lambda r: self._apply(path, *r, from_autosave=from_autosave),
                                  on_failure=self._on_open_failed,
                                  on_cancel=lambda _e: self.ws.session.set_state("opening cancelled"))

    def _on_open_failed(self, exc) -> None:
        s = self.ws.session
        s.set_state(s.state if s.has_patient else "no patient")
        self.ws.show_error(exc, "Could not open the project")

    def _apply(self, path: Path, project, patient, doses, from_autosave: bool = False) -> None:
        ws, session = self.ws, self.ws.session
        ws.patients.spec = project.patient_spec
        ws.patients.phantom_file = project.phantom_file
        session.set_patient(patient)
        for p in project.plans:
            info = {"source": p.source, "goals": list(p.goals), "metrics": p.metrics, "restored_from": str(path)}
            if p.beams:
                info["beam_set"] = p.beams
            if p.segmented_beams:
                info["segmented_beams"] = list(p.segmented_beams)
            for key in ("weights_mu", "deliverable_mu"):
                if getattr(p, key) is not None:
                    info[key] = getattr(p, key)
            if p.source == "prediction" and hasattr(session, "set_prediction"):
                session.set_prediction(doses[p.key], site=project.site)  # a prediction again, not a plan
                continue
            existing = session.plans.get(p.key)
            if existing is not None and p.patient_dose == p.key:
                info = {**existing.info, **info}
                if existing.label == p.label:
                    existing.info = info  # same entry, same display: no need to redraw
                    continue
            # a patient's own dose keeps its place in the dict (add_plan replaces by key)
            session.add_plan(PlanEntry(p.key, p.label, doses[p.key], info), activate=False)
        set_session_goals(ws, project.goals, project.site)
        if project.active_plan in session.plans:
            session.set_active_plan(project.active_plan)
        self._bump_plan_counter(project)
        self.path = None if from_autosave else path
        if not from_autosave:
            ws.patients.remember(str(path))
        self._saved_fingerprint = self._autosaved_fingerprint = self.fingerprint()
        session.set_state(f"restored {len(project.plans)} plans from "
                          + ("the autosave" if from_autosave else path.name))
        for w in patient.warnings:
            ws.notify(w)

    def _bump_plan_counter(self, project) -> None:
        # The planning controller names new plans "plan N" from its own counter; continue
        # after the restored ones so that a new plan never replaces a restored one.
        planning = getattr(self.ws, "planning", None)
        numbers = [int(m.group(1)) for p in project.plans if (m := re.fullmatch(r"plan (\d+)", p.key))]
        if planning is not None and numbers and isinstance(getattr(planning, "_n", None), int):
            planning._n = max(planning._n, max(numbers))

    # -- autosave ---------------------------------------------------------------------------------
    def enable_autosave(self, interval_s: float = AUTOSAVE_INTERVAL_S) -> None:
        self.autosave_enabled = True
        self.timer.start(int(interval_s * 1000))

    def disable_autosave(self) -> None:
        self.autosave_enabled = False
        self.timer.stop()

    @staticmethod
    def autosave_path() -> Path:
        return autosave_dir() / AUTOSAVE_NAME

    def needs_autosave(self) -> bool:
        s = self.ws.session
        return s.has_patient and bool(patient_spec(self.ws)) and self.fingerprint() != self._autosaved_fingerprint

    def autosave_now(self):
        """Autosave if the session changed since the last autosave; returns the task or None."""
        if not self.needs_autosave() or (self._autosave_task is not None and self._autosave_task.running):
            return None
        fp = self.fingerprint()
        path = self.autosave_path()

        def done(result):
            self._autosaved_fingerprint = fp
            self.last_autosave = result

        def failed(exc):
            # never a dialog every minute: the status bar says it, the next tick tries again
            self.ws.notify(f"autosave failed: {exc}")

        self._autosave_task = self.background.run("Autosave", save_task, snapshot(self.ws), path,
                                                  on_success=done, on_failure=failed)
        return self._autosave_task

    def pending_autosave(self) -> Path | None:
        """The autosave left by a session that did not exit cleanly, if any."""
        from core.errors import InputError
        from core.io.project import read_project_header

        path = self.autosave_path()
        if not path.is_file():
            return None
        try:
            saved_at = float(read_project_header(path).get("saved_at") or 0.0)
        except InputError:
            return None  # unreadable leftovers are not worth a question
        try:
            clean = float(self.ws.settings.value(CLEAN_EXIT_KEY, 0.0) or 0.0)
        except (TypeError, ValueError):
            clean = 0.0
        return path if saved_at > clean else None

    def offer_restore(self) -> QMessageBox | None:
        """On start: ask whether to restore an autosave a crash left behind (non-blocking)."""
        from core.io.project import read_project_header

        path = self.pending_autosave()
        if path is None:
            return None
        head = read_project_header(path)
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(head.get("saved_at", 0))))
        pid = head.get("patient", {}).get("patient_id", "?")
        box = QMessageBox(QMessageBox.Icon.Question, "Restore session",
                          f"OpenATP did not close normally last time.\n\nRestore the session autosaved at {when} "
                          f"(patient {pid}, {len(head.get('plans') or [])} plans)?",
                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self.ws.window)
        box.setObjectName("restoreAutosave")
        box.button(QMessageBox.StandardButton.Yes).setText("Restore")
        box.button(QMessageBox.StandardButton.No).setText("Discard")
        box.finished.connect(lambda r: self.restore_autosave() if r == QMessageBox.StandardButton.Yes
                             else self.decline_autosave())
        box.open()
        self._restore_box = box
        return box

    def restore_autosave(self):
        path = self.pending_autosave() or (self.autosave_path() if self.autosave_path().is_file() else None)
        return self.open_project(path, from_autosave=True) if path else None

    def decline_autosave(self) -> None:
        """Keep the crashed session's autosave as ``previous.openatp`` (the next autosave
        would overwrite it) and stop offering it."""
        path = self.autosave_path()
        if path.is_file():
            os.replace(path, path.with_name(DECLINED_NAME))

    def record_clean_exit(self) -> None:
        self.ws.settings.setValue(CLEAN_EXIT_KEY, time.time())
        self.ws.settings.sync()

    def _on_closing(self) -> None:
        self.timer.stop()
        self.background.shutdown()
        if self.autosave_enabled:
            self.record_clean_exit()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "project"
