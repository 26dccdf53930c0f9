"""The workstation's session: the patient, its doses and plans, what is shown.

``Session`` is the one object the GUI's widgets are fed from. It holds data only; every
computation (loading, DVHs, planning) runs in the core through :mod:`app.workers` and the
result is handed back here, which then says what changed.

For interactive planning it also holds the planning state: the site, the predicted dose,
the goal list being edited, the dose-influence matrix and the last optimization (both
kept for warm starts), and the plan history: every optimization result is a
:class:`PlanVersion` with the goals it was optimized with, so the planner can compare
versions and revert to one.
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


@dataclass
class PlanVersion:
    """One optimization result in the plan history.

    Attributes
    ----------
    key : str
        The key of its :class:`PlanEntry` in ``Session.plans``.
    name : str
        ``plan 2 · warm``: what the planner sees.
    goals : tuple of ClinicalGoal
        The goal list it was optimized with.
    optimization : core.optimization.fluence.OptimizationResult or None
        Its fluence (a later warm start starts from it after a revert).
    achieved : dict
        ``(structure, metric) -> value`` on its dose (:func:`core.planning_steps.goal_key`).
    warm : bool
        Warm-started from the plan before it.
    cancelled : bool
        Cancelled: the best fluence so far, ideal (unsequenced) dose.
    """

    key: str
    name: str
    goals: tuple
    optimization: object = None
    achieved: dict = field(default_factory=dict)
    warm: bool = False
    cancelled: bool = False


class Session(QObject):
    """Patient, plans and display choices of one planning session.

    Signals
    -------
    changed(list)
        Names of what changed: any of ``"patient"``, ``"plans"``, ``"active_plan"``,
        ``"state"``, ``"goals"``, ``"prediction"``, ``"history"``, ``"structures"``
        (helper structures were added to the patient).
    """

    changed = Signal(list)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.patient = None
        self.plans: dict[str, PlanEntry] = {}
        self.active_plan: str | None = None
        self.state = "no patient"
        self.device_label = "CPU"
        self._reset_planning()

    def _reset_planning(self) -> None:
        self.site: str | None = None
        self.goals: list = []
        self.predicted = None               # core.patient.Dose
        self.predicted_values: dict = {}    # goal_key -> value on the predicted dose
        self.dij = None                     # DoseInfluence of the current beams (warm starts)
        self.optimization = None            # OptimizationResult a warm start starts from
        self.history: list[PlanVersion] = []
        self._n_plans = 0

    # -- patient --------------------------------------------------------------------------
    def set_patient(self, patient) -> None:
        """Replace the patient; the doses it came with become plans (``reference`` first).
        The planning state (goals, prediction, matrix, history) starts afresh."""
        self.patient = patient
        self.plans = {}
        for key, dose in patient.doses.items():
            self.plans[key] = PlanEntry(key, dose.label or key, dose)
        self.active_plan = next(iter(self.plans), None)
        self.state = "reference dose loaded" if self.plans else "no plan"
        self._reset_planning()
        self.changed.emit(["patient", "plans", "active_plan", "state", "goals", "prediction", "history"])

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

    # -- planning state ----------------------------------------------------------------------
    def set_goals(self, goals, site: str | None = None) -> None:
        """The goal list being edited (and the site template it came from, when given)."""
        self.goals = list(goals)
        if site is not None:
            self.site = site
        self.changed.emit(["goals"])

    def set_prediction(self, dose, site: str | None = None) -> None:
        """The predicted dose; it is also a plan on the DVH (``predicted``), not shown in the views."""
        if self.patient is None:
            raise ValueError("no patient loaded")
        self.predicted = dose
        if site is not None:
            self.site = site
        self.plans["predicted"] = PlanEntry("predicted", "predicted", dose, {"kind": "prediction"})
        self.changed.emit(["prediction", "plans"])

    def next_plan_key(self) -> str:
        """``plan N``: the next free plan key."""
        while True:
            self._n_plans += 1
            key = f"plan {self._n_plans}"
            if key not in self.plans:
                return key

    def add_version(self, entry: PlanEntry, version: PlanVersion, dij=None) -> None:
        """A new optimization result: a plan (shown), a history entry, the warm-start state."""
        if self.patient is None:
            raise ValueError("no patient loaded")
        self.plans[entry.key] = entry
        self.active_plan = entry.key
        self.history.append(version)
        if version.optimization is not None:
            self.optimization = version.optimization
        if dij is not None:
            self.dij = dij
        self.changed.emit(["plans", "active_plan", "history"])

    def set_dij(self, dij) -> None:
        """Keep a dose-influence matrix (e.g. from a cancelled run) for the next optimization."""
        self.dij = dij

    def version(self, key: str | None) -> PlanVersion | None:
        return next((v for v in self.history if v.key == key), None)

    def revert_to(self, key: str) -> PlanVersion:
        """Make plan version ``key`` current: its goals become the goal list, its fluence
        the next warm start, and it is shown. Later versions stay in the history."""
        v = self.version(key)
        if v is None:
            raise KeyError(key)
        self.goals = list(v.goals)
        if v.optimization is not None:
            self.optimization = v.optimization
        self.active_plan = key
        self.changed.emit(["goals", "active_plan", "history"])
        return v

    @property
    def can_warm_start(self) -> bool:
        return self.dij is not None and self.optimization is not None
