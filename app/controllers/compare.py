"""Plan comparison: session plans -> :class:`widgets.plan_compare.PlanCompare`.

The comparison's numbers are the core's: DVHs from :func:`core.evaluation.dvh.cumulative_dvh`
and goal results from :func:`core.goals.evaluate.evaluate_goals`, computed on a worker for
the two chosen plans. The goals compared are, in this order of preference: the session's
goal list (what the planner is editing), the goals plan B or plan A was optimised for, or
the protocol template matching the patient's structure names.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from widgets.dvh_panel import DvhCurve
from widgets.viewer_model import StructureLayer


def plan_goals(entry) -> list:
    """The goals a session plan was optimised for (empty for a plain dose)."""
    info = getattr(entry, "info", None) or {}
    goals = info.get("goals") or getattr(info.get("result"), "goals", None)
    return list(goals or [])


def compare_task(patient, plan_a, plan_b, goals=None, goals_note: str = "", progress=None, cancel=None) -> dict:
    """Worker body: DVHs and goal results of two plans.

    Parameters
    ----------
    patient : core.patient.Patient
    plan_a, plan_b : (key, label, dose_gy ndarray)
        Doses in Gy on the patient grid.
    goals : list of ClinicalGoal, optional
        None: the goals of the site template guessed from the structure names.
    goals_note : str
        Where ``goals`` came from (passed through to the display).

    Returns
    -------
    dict with ``curves`` (dicts: structure, plan, color, dose_gy, volume_pct; plan A's
    first), ``results_a`` and ``results_b`` (:class:`core.goals.evaluate.GoalResult`, same
    goals in the same order), ``skipped`` (labels of goals on structures this patient lacks
    or that are empty) and ``note``.
    """
    from core.evaluation.dvh import cumulative_dvh
    from core.goals.evaluate import evaluate_goals
    from core.progress import check_cancel, report

    structures = [s for s in patient.structures.values() if not s.is_empty]
    if goals is None:
        from core.goals.templates import goals_for_patient
        from core.pipeline import guess_site

        site = guess_site(patient)
        goals = goals_for_patient(patient, site, add_rings=False)[0] if site else []
        goals_note = f"goals: {site} template" if site else "no goals: load a goal list"
    usable = [g for g in goals if g.structure in patient.structures and not patient.structures[g.structure].is_empty]
    skipped = [g.label for g in goals if g not in usable]
    total = 2 * len(structures) + 2
    curves, n = [], 0
    for _key, label, dose_gy in (plan_a, plan_b):
        for s in structures:
            check_cancel(cancel)
            bins, _vcc, vpct = cumulative_dvh(dose_gy, s.mask, patient.grid)
            curves.append({"structure": s.name, "plan": label, "color": tuple(s.color), "dose_gy": bins,
                           "volume_pct": vpct})
            n += 1
            report(progress, n, total, f"DVH {s.name}")
    masks = {s.name: s.mask for s in structures}
    voxel_cc = patient.grid.voxel_volume_cc
    results = []
    for _key, _label, dose_gy in (plan_a, plan_b):
        check_cancel(cancel)
        results.append(evaluate_goals(usable, dose_gy, masks, voxel_cc))
        n += 1
        report(progress, n, total, "goals")
    if skipped:
        goals_note += f"; {len(skipped)} goal(s) on missing structures left out"
    return {"curves": curves, "results_a": results[0], "results_b": results[1], "skipped": skipped,
            "note": goals_note}


class CompareController(QObject):
    """Handler ``compare.open`` and the session -> comparison wiring."""

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.widget = None
        self._task = None
        self._stale_images = True
        self.last_result: dict | None = None
        workstation.session.changed.connect(self._on_session_changed)

    # -- handler -------------------------------------------------------------------------------
    def open(self):
        """Show the comparison tab with two plans chosen (the reference and the shown plan)."""
        session = self.ws.session
        if not session.has_patient or not session.plans:
            self.ws.notify("nothing to compare: open a patient with a dose, then add a plan or a dose")
            return None
        if self.widget is None:
            from widgets.plan_compare import PlanCompare

            self.widget = PlanCompare()
            self.widget.setObjectName("planCompare")
            self.widget.plansChosen.connect(lambda _a, _b: self.refresh())
        if self._stale_images:
            self._fill_images()
        a, b = self._default_pair()
        self.widget.set_plans(self._plan_items(), a, b)
        self.ws.window.show_central_tab(self.widget, "Compare plans")
        return self.refresh()

    def choose(self, a: str, b: str):
        """Compare plans ``a`` and ``b`` (keys); returns the task."""
        if self.widget is None:
            self.open()
        self.widget.set_plans(self._plan_items(), a, b)
        return self.refresh()

    # -- internals ----------------------------------------------------------------------------
    def _plan_items(self) -> list:
        return [(k, p.label) for k, p in self.ws.session.plans.items()]

    def _default_pair(self) -> tuple:
        plans = self.ws.session.plans
        keys = list(plans)
        current = self.widget.plan_keys() if self.widget is not None else (None, None)
        if current[0] in plans and current[1] in plans:
            return current
        a = "reference" if "reference" in plans else keys[0]
        active = self.ws.session.active_plan
        b = active if active in plans and active != a else next((k for k in reversed(keys) if k != a), a)
        return a, b

    def _fill_images(self) -> None:
        patient = self.ws.session.patient
        shown = self.ws.viewer_model.structures
        layers = [StructureLayer(s.name, s.mask, tuple(s.color),
                                 shown[s.name].visible if s.name in shown else s.role.value != "EXTERNAL",
                                 s.role.value)
                  for s in patient.structures.values() if not s.is_empty]
        try:
            body = patient.external_mask()
        except Exception:  # noqa: BLE001 - no body outline: fit the whole grid
            body = None
        ct = patient.ct.hu if patient.ct is not None else None
        self.widget.set_images(ct, patient.grid, layers, body)
        m = self.ws.viewer_model
        self.widget.model_a.set_window_level(m.window, m.level)
        self.widget.model_a.set_dose_display(mode=m.dose_mode, opacity=m.wash_opacity, levels=m.isodose_levels,
                                             unit=m.isodose_unit)
        self._stale_images = False

    def refresh(self):
        """Show the chosen plans' doses now; compute DVHs and goal results on a worker."""
        w, session = self.widget, self.ws.session
        if w is None or not session.has_patient:
            return None
        a, b = w.plan_keys()
        if a not in session.plans or b not in session.plans:
            w.clear_results("pick two plans")
            return None
        pa, pb = session.plans[a], session.plans[b]
        w.set_doses(pa.dose.dose_gy, pb.dose.dose_gy, session.reference_dose_gy(), pa.label, pb.label)
        from app.controllers.project import session_goals

        goals, note = session_goals(self.ws), "goals: session goal list"
        if not goals:
            for entry in (pb, pa):
                goals, note = plan_goals(entry), f"goals of {entry.label}"
                if goals:
                    break
        if self._task is not None and self._task.running:
            self._task.cancel()
        self._task = self.ws.runner.run("Comparing plans", compare_task, session.patient,
                                        (a, pa.label, pa.dose.dose_gy), (b, pb.label, pb.dose.dose_gy),
                                        goals or None, note if goals else "",
                                        on_success=lambda r, keys=(a, b): self._on_compared(keys, r),
                                        on_failure=lambda e: self.ws.show_error(e, "Plan comparison failed"))
        return self._task

    def _on_compared(self, keys: tuple, result: dict) -> None:
        w = self.widget
        if w is None or w.plan_keys() != keys:
            return  # the planner picked other plans meanwhile; their task follows
        self.last_result = result
        w.set_dvh([DvhCurve(c["structure"], c["plan"], c["color"], c["dose_gy"], c["volume_pct"])
                   for c in result["curves"]])
        w.set_goal_results(result["results_a"], result["results_b"], result["note"])

    def _on_session_changed(self, what: list) -> None:
        if "patient" in what:
            self._stale_images = True
        w = self.widget
        if w is None or not self.ws.session.has_patient:
            return
        if not self.ws.window.central_tab_shown(w):
            return  # refreshed when the tab is opened again
        if "patient" in what:
            self._fill_images()
        if "patient" in what or "plans" in what:
            a, b = self._default_pair()
            w.set_plans(self._plan_items(), a, b)
            self.refresh()
        elif "goals" in what:
            self.refresh()
