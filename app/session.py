"""The workstation's session: the patient, its doses and plans, what is shown.

``Session`` is the one object the GUI's widgets are fed from. It holds data only; every
computation (loading, DVHs, planning) runs in the core through :mod:`app.workers` and the
result is handed back here, which then says what changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Signal

import widgets  # noqa: F401  (applies the PySide6 reference-count work-around first)


@dataclass
class PlanEntry:
    """A plan (or any dose worth comparing) in the session.

    Attributes
    ----------
    key : str
        Unique key (``"reference"``, ``"plan 1"`` ...).
    label : str
        Name shown to the planner.
    dose : core.patient.Dose
    info : dict
        Anything the producer reported (metrics, timings, beams).
    """

    key: str
    label: str
    dose: object
    info: dict = field(default_factory=dict)


class Session(QObject):
    """Patient, plans and display choices of one planning session.

    Signals
    -------
    changed(list)
        Names of what changed: any of ``"patient"``, ``"plans"``, ``"active_plan"``,
        ``"state"``.
    """

    changed = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.patient = None
        self.plans: dict[str, PlanEntry] = {}
        self.active_plan: str | None = None
        self.state = "no patient"
        self.device_label = "CPU"

    # -- patient --------------------------------------------------------------------------
    def set_patient(self, patient) -> None:
        """Replace the patient; the doses it came with become plans (``reference`` first)."""
        self.patient = patient
        self.plans = {}
        for key, dose in patient.doses.items():
            self.plans[key] = PlanEntry(key, dose.label or key, dose)
        self.active_plan = next(iter(self.plans), None)
        self.state = "reference dose loaded" if self.plans else "no plan"
        self.changed.emit(["patient", "plans", "active_plan", "state"])

    @property
    def has_patient(self) -> bool:
        return self.patient is not None

    def reference_dose_gy(self) -> float:
        """100 % for isodoses: the highest prescription, else 0 (the view then uses max dose)."""
        if self.patient is None or not self.patient.prescriptions:
            return 0.0
        return max(p.dose_gy for p in self.patient.prescriptions)

    # -- plans ------------------------------------------------------------------------------
    def add_plan(self, entry: PlanEntry, activate: bool = True) -> None:
        if self.patient is None:
            raise ValueError("no patient loaded")
        self.plans[entry.key] = entry
        what = ["plans"]
        if activate:
            self.active_plan = entry.key
            what.append("active_plan")
        self.changed.emit(what)

    def set_active_plan(self, key: str | None) -> None:
        if key is not None and key not in self.plans:
            raise KeyError(key)
        if key != self.active_plan:
            self.active_plan = key
            self.changed.emit(["active_plan"])

    def active(self) -> PlanEntry | None:
        return self.plans.get(self.active_plan) if self.active_plan else None

    def set_state(self, text: str) -> None:
        if text != self.state:
            self.state = text
            self.changed.emit(["state"])
