"""Per-patient refinement in the workstation: helper structures from rules, hot patches
from the plan's dose with their goals, and "Refine plan" (warm rounds on the same matrix).

Handlers of the action table (``refinement.*``):

* **Helper structure from rule…** (Contour menu): :class:`widgets.helper_rule_dialog.HelperRuleDialog`
  -> :func:`core.helper_structures.make_helper` on a worker (dose patches on the shown
  plan's dose) -> the structure joins the session's patient -> ``session.changed(["structures"])``.
* **Hot patch from dose…** (Contour menu): the same dialog opened on a hot patch (95 % of
  the prescription, 10 mm outside the targets); once made, a near-max goal on it is
  offered (priority 3, 92 % of the patch's current near-max D0.03cc), with a warning naming the
  P1 goals it may fight (:func:`core.helper_structures.patch_conflicts`).
* **Refine plan** (Plan menu, F10): :func:`core.optimization.refine.refine_plan` on the
  session's goals, dose-influence matrix and current fluence, then
  :func:`core.optimization.refine.refined_plan_result`, on a worker with progress; the
  refined plan becomes a new plan version (``plan N · refined``) through the planning
  controller. A patch added since the last refinement is its focus (only the patch goal
  is pushed, every other goal held). Cancel keeps the best round as a cancelled version
  (ideal, unsequenced dose).

Rule-made structures follow their sources: on every ``structures`` change the rules'
source hashes are compared on the GUI thread (a millisecond), and only when one is stale
:func:`core.helper_structures.regenerate` runs on a worker, on a copy of the patient; the
GUI thread commits what it rebuilt and says so, which changes nothing further (the
hashes then match), so there is no loop. Dose patches stay as they were made (they mark
where a plan *was* hot).

Workers build on a shallow copy of the patient (its own structure dict) and the GUI
thread adds the result, so the views never see a half-changed patient; a result that
arrives after another patient was opened is dropped.
"""

from __future__ import annotations

import copy

from PySide6.QtCore import QObject

from core.errors import Cancelled, InputError, OpenATPError

#: Quick hot patch: defaults of "Hot patch from dose…" (the CLI's ``--patch-margin`` 10 mm).
HOT_PATCH_DEFAULTS = {"threshold_pct": 95.0, "margin_mm": 10.0, "min_volume_cc": 0.1}
#: The goal offered on a new hot patch: priority, and its value in % of the patch's current
#: near-max (D0.03cc). Refinement stops once the goal is met on the ideal fluence and leaf
#: sequencing gives about 1 % back: a 95 % goal lowered the demo patient's patch maximum by
#: only 4.4 % as delivered, so the offer aims 8 % down (the planner can edit it).
PATCH_GOAL_PRIORITY = 3
PATCH_GOAL_PCT_OF_MAX = 92.0


def _copy_patient(patient):
    """A shallow copy with its own structure dict: a worker may add to it freely."""
    p = copy.copy(patient)
    p.structures = dict(patient.structures)
    return p


# -- worker bodies (no Qt) ---------------------------------------------------------------------
def helper_task(patient, rule, dose=None, progress=None, cancel=None):
    """Worker body: ``rule``'s structure, built on a copy of ``patient`` (not added to it)."""
    from core.helper_structures import make_helper
    from core.progress import report

    report(progress, 0.0, 1.0, f"making '{rule.name}'")
    s = make_helper(_copy_patient(patient), rule, dose)
    report(progress, 1.0, 1.0, f"'{rule.name}' made")
    return s


def regenerate_task(patient, rules, progress=None, cancel=None):
    """Worker body: :func:`core.helper_structures.regenerate` on a copy of ``patient``.

    A rule that cannot be rebuilt (a source erased, an empty result) does not hold back
    the others: they are then rebuilt one by one. Returns ``(updated names,
    {name: Structure} rebuilt, {name: message} of the rules that failed)``.
    """
    from core.helper_structures import regenerate
    from core.progress import report

    p = _copy_patient(patient)
    failed: dict = {}
    try:
        updated = list(regenerate(p, rules).updated)
    except InputError:
        updated = []
        for r in rules:  # the patient's order: a helper made from another comes after it
            try:
                updated += regenerate(p, [r]).updated
            except InputError as exc:
                failed[r.name] = exc.message
    report(progress, 1.0, 1.0, "helper structures regenerated")
    return updated, {n: p.structures[n] for n in updated}, failed


def refine_task(patient, goals, dij, start, site=None, plan_options=None, focus=None, max_rounds: int = 4,
                start_dose=None, predicted=None, progress=None, cancel=None):
    """Worker body: refine the plan warm and finish it as the pipeline does.

    Parameters
    ----------
    patient : core.patient.Patient
    goals : list of ClinicalGoal
        The clinical goals (a patch goal included).
    dij : DoseInfluence
        The current plan's matrix (reused; never recomputed here).
    start : OptimizationResult or (n_beamlets,) ndarray of MU
        The fluence to start from.
    site : str, optional
        Site optimizer settings (:data:`core.pipeline.SITE_OPTIMIZER_OPTIONS`).
    plan_options : core.pipeline.PlanOptions, optional
        Device and optimizer settings of the planning controller.
    focus : set of str, optional
        Push only goals on these structures (a new patch).
    start_dose : core.patient.Dose, optional
        The plan started from (its delivered dose), for the focus structures' max before/after.
    predicted : core.patient.Dose, optional
        For the goal table's predicted column.

    Returns
    -------
    (RefineResult, PlanResult or None)
        None when no round was accepted (the plan stays as it was).

    Raises
    ------
    Cancelled
        With ``result`` the RefineResult of the best plan so far.
    """
    import numpy as np

    from core.device import resolve_device
    from core.optimization.fluence import OptimizerOptions
    from core.optimization.refine import RefineOptions, refine_plan, refined_plan_result
    from core.pipeline import SITE_OPTIMIZER_OPTIONS, PlanOptions
    from core.planning_steps import goal_values

    opts = plan_options or PlanOptions(device="auto")
    opt_opts = opts.optimizer
    if opt_opts is None and site in SITE_OPTIMIZER_OPTIONS:
        opt_opts = OptimizerOptions(**SITE_OPTIMIZER_OPTIONS[site])
    device = str(resolve_device(opts.device))
    refined = refine_plan(patient, goals, dij, start, options=RefineOptions(max_rounds=max_rounds),
                          optimizer_options=opt_opts, focus=focus or None, device=device,
                          progress=progress.stage(0.0, 0.9, "refine") if progress else None, cancel=cancel)
    if refined.n_accepted == 0:
        return refined, None
    try:
        result = refined_plan_result(patient, site, goals, dij, refined, optimizer_options=opt_opts,
                                     timings_s={"dose_matrix": 0.0, "optimize": refined.timings_s["optimize"]},
                                     progress=progress.stage(0.9, 1.0, "sequence") if progress else None,
                                     cancel=cancel)
    except Cancelled:
        refined.cancelled = True
        raise Cancelled(result=refined) from None
    m = result.metrics
    round_s = [r["timings_s"]["optimize"] for r in refined.rounds]
    patches = {}
    for name in sorted(focus or ()):
        mask = patient.structures[name].mask
        before = None if start_dose is None else float(np.asarray(start_dose.dose_gy)[mask].max())
        after = float(result.final_dose.dose_gy[mask].max())
        patches[name] = {"max_before_gy": None if before is None else round(before, 3), "max_after_gy": round(after, 3),
                         "max_change_pct": None if not before else round(100.0 * (after / before - 1.0), 2)}
    m["refine"] = {"rounds": len(refined.rounds), "accepted_rounds": refined.n_accepted,
                   "stop_reason": refined.stop_reason, "focus": sorted(focus or ()), "patches": patches,
                   "warm_round_s_max": round(max(round_s), 3) if round_s else None,
                   "oar_change_by_structure": refined.oar_change_by_structure(), "log": refined.to_log()}
    m["warm_start"] = True
    m["dose_matrix_reused"] = True
    achieved = goal_values(goals, patient, result.final_dose)
    pred = goal_values(goals, patient, predicted) if predicted is not None else {}
    m["goal_values"] = [{"structure": k[0], "metric": k[1], "achieved": v, "predicted": pred.get(k)}
                        for k, v in achieved.items()]
    return refined, result


class RefinementController(QObject):
    """Handlers ``refinement.*`` and the regeneration of rule-made structures.

    Attributes
    ----------
    max_rounds : int
        Refinement rounds per "Refine plan" (each a warm re-optimization of one priority level).
    dialog : HelperRuleDialog or None
        The rule dialog while it is open.
    goal_box : QMessageBox or None
        The "add a goal on the patch?" question while it is open.
    last_refined : RefineResult or None
        The last refinement's result (its log: ``last_refined.to_log()``).
    """

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.max_rounds = 4
        self.dialog = None
        self.goal_box = None
        self.last_refined = None
        self._patches: list[str] = []          # patches made since the last refinement: its focus
        self._failed_regen: dict = {}          # rule name -> source hash a regeneration failed on
        self._regen_task = None
        workstation.session.changed.connect(self._on_session_changed)

    # -- helpers -------------------------------------------------------------------------------
    def _ready(self, what: str) -> bool:
        if not self.ws.session.has_patient:
            return False
        if self.ws.runner.busy:
            self.ws.notify(f"{what}: wait for the running task to finish (or cancel it)")
            return False
        return True

    def _failed(self, title: str):
        def handler(exc) -> None:
            self.ws.session.set_state(title.lower())
            self.ws.show_error(exc, title)
        return handler

    def _plan_dose(self):
        """The shown plan's dose (what a dose patch is made from)."""
        entry = self.ws.session.active()
        if entry is None or entry.dose is None:
            raise InputError("a patch from the dose needs a plan: optimize, or choose a plan under 'Dose shown'")
        return entry.dose

    def _roles(self) -> dict:
        patient = self.ws.session.patient
        return {n: s.role.value for n, s in patient.structures.items() if not s.is_empty}

    def check_rule(self, rule) -> None:
        """What can be said before building: sources exist and hold voxels, the name is
        free (or a rule's, which is then rebuilt), a dose patch has a plan dose.
        Raises InputError in the planner's words."""
        from collections.abc import Mapping

        patient = self.ws.session.patient
        if patient is None:
            raise InputError("open a patient first")
        for n in rule.source_names(patient):
            s = patient.structures.get(n)
            if s is None:
                raise InputError(f"'{rule.name}': the patient has no structure '{n}'")
            if s.is_empty:
                raise InputError(f"'{rule.name}': '{n}' is empty: draw it first or choose another")
        old = patient.structures.get(rule.name)
        if old is not None and not isinstance(old.rule, Mapping):
            raise InputError(f"a structure named '{rule.name}' already exists (drawn or imported): "
                             "choose another name")
        if rule.needs_dose:
            self._plan_dose()

    # -- helper structures ------------------------------------------------------------------------
    def helper_from_rule_dialog(self, kind=None):
        """Contour ▸ Helper structure from rule…: the rule dialog (non-blocking)."""
        from widgets.helper_rule_dialog import HelperRuleDialog

        session = self.ws.session
        if not session.has_patient:
            return None
        has_dose = session.active() is not None and session.active().dose is not None
        dlg = HelperRuleDialog(self._roles(), has_dose=has_dose, kind=kind, check=self.check_rule,
                               parent=self.ws.window)
        dlg.ruleAccepted.connect(self.make_helper)
        dlg.finished.connect(lambda _r: setattr(self, "dialog", None))
        self.dialog = dlg
        dlg.open()
        return dlg

    def hot_patch_dialog(self):
        """Contour ▸ Hot patch from dose…: the rule dialog on a hot patch of the shown plan."""
        from core.helper_structures import RuleKind

        if not self.ws.session.has_patient:
            return None
        try:
            self._plan_dose()
        except InputError as exc:
            self.ws.show_error(exc, "Hot patch from dose")
            return None
        return self.helper_from_rule_dialog(RuleKind.HOT_PATCH)

    def make_helper(self, rule, add_goal: bool | None = None):
        """Build ``rule``'s structure on a worker and add it to the patient.

        ``add_goal`` (hot patches): True adds the patch goal, False does not, None asks.
        Returns the task, or None when nothing was started (the reason was shown).
        """
        if not self._ready(f"Making '{rule.name}'"):
            return None
        session = self.ws.session
        try:
            self.check_rule(rule)
            dose = self._plan_dose() if rule.needs_dose else None
        except OpenATPError as exc:
            self.ws.show_error(exc, "Could not make the helper structure")
            return None
        patient = session.patient
        session.set_state(f"making '{rule.name}'…")
        return self.ws.runner.run(f"Making '{rule.name}'", helper_task, patient, rule, dose,
                                  on_success=lambda s: self._on_made(patient, rule, s, dose, add_goal),
                                  on_failure=self._failed("Could not make the helper structure"))

    def hot_patch(self, threshold_pct: float = HOT_PATCH_DEFAULTS["threshold_pct"],
                  margin_mm: float = HOT_PATCH_DEFAULTS["margin_mm"],
                  min_volume_cc: float = HOT_PATCH_DEFAULTS["min_volume_cc"], region: str | None = None,
                  name: str | None = None, add_goal: bool | None = None):
        """A hot patch on the shown plan's dose without the dialog (scripts, tests).

        Voxels at >= ``threshold_pct`` % of the highest prescription, ``margin_mm`` outside
        the targets, parts under ``min_volume_cc`` dropped, only inside ``region`` when given.
        """
        from core.helper_structures import HotPatchRule

        session = self.ws.session
        if not session.has_patient:
            return None
        if name is None:
            name, i = "Patch_hot", 1
            while name in session.patient.structures:
                i += 1
                name = f"Patch_hot_{i}"
        try:
            rule = HotPatchRule(name, threshold_pct, region=region, target_margin_mm=margin_mm,
                                min_volume_cc=min_volume_cc)
        except InputError as exc:
            self.ws.show_error(exc, "Hot patch from dose")
            return None
        return self.make_helper(rule, add_goal=add_goal)

    def _on_made(self, patient, rule, structure, dose, add_goal) -> None:
        from core.helper_structures import RuleKind

        session = self.ws.session
        if session.patient is not patient:
            return  # another patient was opened meanwhile
        patient.add_structure(structure, replace=True)
        self._failed_regen.pop(rule.name, None)
        self.ws.window.structure_list.set_volumes({n: s.volume_cc(patient.grid) for n, s in patient.structures.items()})
        session.changed.emit(["structures"])
        cc = structure.volume_cc(patient.grid)
        session.set_state(f"'{structure.name}' made ({cc:.1f} cc, {rule.kind.value.replace('_', ' ')})")
        if rule.kind is RuleKind.HOT_PATCH:
            if structure.name not in self._patches:
                self._patches.append(structure.name)
            self.offer_patch_goal(structure.name, dose, add_goal)
        elif rule.kind is RuleKind.COLD_PATCH and structure.name not in self._patches:
            self._patches.append(structure.name)

    # -- the patch goal -------------------------------------------------------------------------------
    def patch_goal(self, name: str, dose, priority: int = PATCH_GOAL_PRIORITY,
                   pct_of_max: float = PATCH_GOAL_PCT_OF_MAX):
        """The near-max (D0.03cc) goal offered on patch ``name``: ``pct_of_max`` % of what
        its near-max is on ``dose`` (a Dose or an array on the patient grid).

        The value is taken on the goal's own metric, not the voxel maximum: on a patch of
        a few voxels the two differ by several %, and a goal met on D0.03cc would stop the
        refinement before the patch lost those 5 %.
        """
        import numpy as np

        from core.goals.goal import ClinicalGoal, GoalKind
        from core.planning_steps import goal_values

        patient = self.ws.session.patient
        mask = patient.structure(name).mask
        arr = np.asarray(getattr(dose, "dose_gy", dose))
        probe = ClinicalGoal(priority, name, GoalKind.MAX_DOSE_AT_VOLUME, dose_gy=1.0, volume_cc=0.03)
        near_max = goal_values([probe], patient, arr)[(name, probe.metric)]
        return ClinicalGoal(priority, name, GoalKind.MAX_DOSE_AT_VOLUME,
                            dose_gy=round(pct_of_max / 100.0 * near_max, 2), volume_cc=0.03, control=True,
                            note=f"hot patch: {pct_of_max:g} % of its D0.03cc {near_max:.2f} Gy "
                                 f"(max {float(arr[mask].max()):.2f} Gy)")

    def offer_patch_goal(self, name: str, dose, add_goal: bool | None = None):
        """Offer the patch goal (a question; ``add_goal`` True/False answers it). Returns the goal."""
        from PySide6.QtWidgets import QMessageBox

        from core.helper_structures import patch_conflicts

        session = self.ws.session
        goal = self.patch_goal(name, dose)
        conflicts = patch_conflicts(session.patient, name, goal, session.goals)
        for c in conflicts:
            self.ws.notify(c)
        if add_goal is True:
            self.add_goal(goal, dose)
        elif add_goal is None and not self.ws.headless:
            text = f"Add the goal '{goal.label}' on the new patch to the goal list?"
            if conflicts:
                text += "\n\nIt may fight P1 goals:\n" + "\n".join(f"• {c}" for c in conflicts)
            box = QMessageBox(QMessageBox.Icon.Question, "Goal on the hot patch", text,
                              QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, self.ws.window)
            box.finished.connect(lambda r: self._on_goal_answer(r, goal, dose))
            self.goal_box = box
            box.open()
        return goal

    def _on_goal_answer(self, result, goal, dose) -> None:
        from PySide6.QtWidgets import QMessageBox

        self.goal_box = None
        if result == QMessageBox.StandardButton.Yes:
            self.add_goal(goal, dose)

    def add_goal(self, goal, dose=None) -> None:
        """Append ``goal`` to the session's goal list; its value on ``dose`` (the plan the
        patch came from) goes into the shown version's achieved values, so the table shows
        how far the plan is from it."""
        from core.planning_steps import goal_values

        session = self.ws.session
        if goal in session.goals:
            return
        v = session.version(session.active_plan)
        if v is not None and dose is not None:
            v.achieved.update(goal_values([goal], session.patient, dose))
        session.set_goals(list(session.goals) + [goal])
        session.set_state(f"goal '{goal.label}' added: Refine plan (F10) or Re-optimize (F8)")

    # -- refine -----------------------------------------------------------------------------------------
    def focus(self) -> set:
        """The patches a refinement would focus on: made since the last refinement, still in
        the patient, and with a goal in the goal list."""
        session = self.ws.session
        if session.patient is None:
            return set()
        with_goal = {g.structure for g in session.goals}
        return {n for n in self._patches if n in session.patient.structures and n in with_goal}

    def refine(self):
        """Plan ▸ Refine plan: warm refinement rounds from the current fluence, same matrix."""
        if not self._ready("Refine plan"):
            return None
        session = self.ws.session
        if not session.goals:
            self.ws.show_error(OpenATPError("there are no goals to refine against: build the goals first"),
                               "Refine plan failed")
            return None
        if not session.can_warm_start:
            self.ws.show_error(OpenATPError("Refine plan starts from an optimized plan: optimize first"),
                               "Refine plan failed")
            return None
        focus = self.focus()
        start_version = next((v for v in reversed(session.history) if v.optimization is session.optimization), None)
        start_dose = None
        if start_version is not None and start_version.key in session.plans:
            start_dose = session.plans[start_version.key].dose
        what = f"refining (focus: {', '.join(sorted(focus))})…" if focus else "refining…"
        session.set_state(what)
        return self.ws.runner.run("Refining plan", refine_task, session.patient, list(session.goals), session.dij,
                                  session.optimization, session.site, self.ws.planning.plan_options, focus,
                                  self.max_rounds, start_dose, session.predicted,
                                  on_success=self._on_refined, on_failure=self._failed("Refine plan failed"),
                                  on_cancel=self._on_refine_cancelled)

    def _on_refined(self, result) -> None:
        refined, plan = result
        session = self.ws.session
        self.last_refined = refined
        if plan is None:
            session.set_state(f"refinement kept the plan as it was: {refined.stop_reason} "
                              f"({len(refined.rounds)} round(s), none accepted)")
            self.ws.notify(f"Refine plan: no round improved the plan without breaking a goal "
                           f"({refined.stop_reason})")
            return
        self._patches = []
        v = self.ws.planning.add_plan_result(plan, tag="refined")
        r = plan.metrics["refine"]
        parts = [f"{v.name} ready: {r['accepted_rounds']} of {r['rounds']} round(s) accepted"]
        for name, p in r["patches"].items():
            if p["max_change_pct"] is not None:
                parts.append(f"{name} max {p['max_before_gy']:.1f} -> {p['max_after_gy']:.1f} Gy "
                             f"({p['max_change_pct']:+.1f} %)")
        parts.append("all P1 goals met" if plan.metrics.get("all_p1_met") else "P1 goals NOT all met")
        session.set_state("; ".join(parts))

    def _on_refine_cancelled(self, exc) -> None:
        from core.patient import Dose
        from core.planning_steps import goal_key

        session = self.ws.session
        refined = getattr(exc, "result", None)
        if refined is None or not getattr(refined, "n_accepted", 0) or refined.optimization is None:
            session.set_state("refinement cancelled: the plan is unchanged")
            return
        self.last_refined = refined
        achieved = {goal_key(r.goal): float(r.achieved) for r in refined.goal_results if r.achieved is not None}
        v = self.ws.planning.add_version(Dose(refined.dose_gy, session.patient.grid, "cancelled"),
                                         {"optimization": refined.optimization, "refine": refined.to_log()},
                                         refined.goals, refined.optimization, achieved, True, cancelled=True,
                                         tag="refined")
        session.set_state(f"refinement cancelled: best round kept as {v.name} (ideal, unsequenced dose)")

    # -- regeneration of rule-made structures ----------------------------------------------------------
    def stale_rules(self) -> list:
        """The patient's rule-made structures whose sources changed (dose patches excepted:
        they are kept as made); empty when none changed."""
        from core.helper_structures import rules_from_patient, source_hash

        patient = self.ws.session.patient
        if patient is None:
            return []
        rules = [r for r in rules_from_patient(patient) if not r.needs_dose]
        stale = []
        for r in rules:
            h = None
            try:
                h = source_hash(patient, r)
            except OpenATPError:
                pass
            if h is not None and h != patient.structures[r.name].rule.get("source_hash") \
                    and self._failed_regen.get(r.name) != h:
                stale.append(r)
        return rules if stale else []

    def _on_session_changed(self, what: list) -> None:
        if "patient" in what:
            self._patches = []
            self._failed_regen = {}
            self.last_refined = None
            return
        if "structures" in what:
            self.regenerate()

    def regenerate(self):
        """Rebuild the rule-made structures whose sources changed (on a worker); returns the task."""
        session = self.ws.session
        if session.patient is None or self._regen_task is not None:
            return None  # a running regeneration is followed by another check when it commits
        rules = self.stale_rules()
        if not rules:
            return None
        patient = session.patient
        task = self.ws.runner.run("Regenerating helper structures", regenerate_task, patient, rules,
                                  on_success=lambda res: self._on_regenerated(patient, rules, res),
                                  on_failure=lambda exc: self._on_regen_failed(patient, rules, exc))
        task.done.connect(lambda: setattr(self, "_regen_task", None))
        self._regen_task = task
        return task

    def _on_regenerated(self, patient, rules, result) -> None:
        from core.helper_structures import source_hash

        updated, built, failed = result
        self._regen_task = None
        if self.ws.session.patient is not patient:
            return
        for name, msg in failed.items():
            # remember the state it failed on: the next edit retries, the same state does not nag again
            rule = next(r for r in rules if r.name == name)
            try:
                self._failed_regen[name] = source_hash(patient, rule)
            except OpenATPError:
                pass
            self.ws.notify(f"'{name}' could not be regenerated ({msg}); it keeps its last shape")
        if not built:
            return
        for s in built.values():
            patient.add_structure(s, replace=True)
            self._failed_regen.pop(s.name, None)
        self.ws.window.structure_list.set_volumes({n: s.volume_cc(patient.grid) for n, s in patient.structures.items()})
        self.ws.notify(f"regenerated from their edited sources: {', '.join(updated)}")
        self.ws.session.changed.emit(["structures"])

    def _on_regen_failed(self, patient, rules, exc) -> None:
        self._regen_task = None
        if self.ws.session.patient is patient:
            self.ws.show_error(exc, "Regenerating helper structures failed")
