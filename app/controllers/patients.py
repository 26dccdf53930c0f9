"""Opening patients, doses and goals: file dialogs in, core loaders on a worker, session out."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QFileDialog

from app.session import PlanEntry


def load_patient_task(spec: str, phantom_file=None, progress=None, cancel=None):
    """Worker body: the core loader (runs off the GUI thread)."""
    from core.io.loader import load_patient

    return load_patient(spec, phantom_file=phantom_file, progress=progress, cancel=cancel)


def load_dose_task(path: str, patient, progress=None, cancel=None):
    """Worker body: a DOSE/RTDOSE file on the patient's grid, with the loader's warnings."""
    from core.io.dosefile import load_dose

    warnings: list = []
    dose = load_dose(path, patient, warnings)
    return dose, warnings


class PatientController(QObject):
    """Handlers ``patients.*`` of the action table."""

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation

    # -- patients ----------------------------------------------------------------------------
    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.ws.window, "Open patient", "", "OpenKBP case (*.npz);;DICOM file in a folder (*.dcm);;All files (*)")
        if not path:
            return
        # a DICOM file stands for its folder (CT series + RTSTRUCT)
        self.load(str(Path(path).parent) if path.lower().endswith(".dcm") else path)

    def load(self, spec: str, phantom_file=None):
        """Load ``spec`` (any PATIENT of docs/cli.md) on a worker; returns the task."""
        self.ws.session.set_state(f"loading {Path(str(spec)).name}")
        return self.ws.runner.run("Loading patient", load_patient_task, str(spec), phantom_file,
                                  on_success=self._on_loaded, on_failure=self._on_failed,
                                  on_cancel=lambda _e: self.ws.session.set_state("loading cancelled"))

    def _on_loaded(self, patient) -> None:
        self.ws.session.set_patient(patient)
        for w in patient.warnings:
            self.ws.notify(w)

    def _on_failed(self, exc) -> None:
        self.ws.session.set_state("no patient" if not self.ws.session.has_patient else self.ws.session.state)
        self.ws.show_error(exc, "Could not open the patient")

    # -- doses --------------------------------------------------------------------------------
    def open_dose_dialog(self) -> None:
        if not self.ws.session.has_patient:
            return
        path, _ = QFileDialog.getOpenFileName(self.ws.window, "Open dose", "",
                                              "Dose (*.npz *.dcm);;All files (*)")
        if path:
            self.load_dose(path)

    def load_dose(self, path: str):
        session = self.ws.session

        def done(result):
            dose, warnings = result
            key = Path(path).stem
            n, base = 2, key
            while key in session.plans:
                key, n = f"{base} ({n})", n + 1
            session.add_plan(PlanEntry(key, key, dose, {"source": str(path)}))
            for w in warnings:
                self.ws.notify(w)

        return self.ws.runner.run("Loading dose", load_dose_task, path, session.patient,
                                  on_success=done, on_failure=lambda e: self.ws.show_error(e, "Could not open the dose"))

    # -- goals ----------------------------------------------------------------------------------
    def open_goals_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.ws.window, "Open goals", "", "Goals (*.json);;All files (*)")
        if path:
            self.load_goals(path)

    def load_goals(self, path: str) -> None:
        from core.errors import OpenATPError
        from core.goals.goal import load_goals

        try:
            goals = load_goals(path)  # a small JSON file: reading it is instant
        except OpenATPError as exc:
            self.ws.show_error(exc, "Could not open the goals")
            return
        self.ws.display.set_goals(goals)
