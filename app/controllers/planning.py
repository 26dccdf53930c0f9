"""Running the automated plan on a worker; cancel goes to the task's CancelToken."""

from __future__ import annotations

from PySide6.QtCore import QObject

from app.session import PlanEntry
from core.errors import OpenATPError


def plan_task(patient, site=None, progress=None, cancel=None):
    """Worker body: :func:`core.pipeline.plan_patient` on the loaded patient.

    The site defaults to the protocol template matching the patient's structure names;
    goal values are personalised by the dose prediction when that site has a model.
    """
    from core.errors import InputError
    from core.pipeline import PlanOptions, guess_site, model_available, plan_patient

    site = site or guess_site(patient)
    if site is None:
        raise InputError("no protocol template knows this patient's structure names: "
                         "load a goal list or rename the structures")
    return plan_patient(patient, site, options=PlanOptions(predict=model_available(site)),
                        progress=progress, cancel=cancel)


def dose_of(result):
    """The final :class:`core.patient.Dose` from what the pipeline returned."""
    from core.patient import Dose

    if isinstance(result, Dose):
        return result
    for attr in ("dose", "final_dose"):
        d = result.get(attr) if isinstance(result, dict) else getattr(result, attr, None)
        if isinstance(d, Dose):
            return d
    raise OpenATPError("the planner finished but returned no dose to display")


class PlanningController(QObject):
    """Handlers ``planning.*`` of the action table."""

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self._n = 0

    def run_plan(self):
        session = self.ws.session
        if not session.has_patient or self.ws.runner.busy:
            return None
        session.set_state("planning…")
        return self.ws.runner.run("Automated plan", plan_task, session.patient,
                                  on_success=self._on_planned, on_failure=self._on_failed,
                                  on_cancel=self._on_cancelled)

    def cancel(self) -> None:
        self.ws.runner.cancel_all()

    def _on_planned(self, result) -> None:
        try:
            dose = dose_of(result)
        except OpenATPError as exc:
            self._on_failed(exc)
            return
        self._n += 1
        key = f"plan {self._n}"
        self.ws.session.add_plan(PlanEntry(key, key, dose, {"result": result}))
        self.ws.session.set_state(f"{key} ready")

    def _on_failed(self, exc) -> None:
        self.ws.session.set_state("planning failed")
        self.ws.show_error(exc, "Planning failed")

    def _on_cancelled(self, exc) -> None:
        # Cancelled keeps the last good result: show it if the pipeline handed one back.
        if getattr(exc, "result", None) is not None:
            try:
                self._on_planned(exc.result)
                self.ws.session.set_state("planning cancelled (last result kept)")
                return
            except Exception:  # noqa: BLE001 - a partial result that cannot be shown is dropped
                pass
        self.ws.session.set_state("planning cancelled")
