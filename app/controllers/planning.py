"""Planning step by step, and the automated plan, on workers; cancel goes to the task's CancelToken.

Actions ``planning.*``: Predict, Build goals, Optimize (cold), Re-optimize (warm), Run
automated plan (all steps), Revert to the shown plan version, Save goals as an
institution template, Cancel. Each long step runs a core function
(:mod:`core.planning_steps`, :mod:`core.pipeline`) through :class:`app.workers.TaskRunner`
with progress, ETA and cancel; its result goes into the session (goals, prediction,
dose-influence matrix, plan versions), which the goal table, the plan chooser and the
DVH follow. The goal table's edits go back into the session's goal list.
"""

from __future__ import annotations

from PySide6.QtCore import QObject

from app.session import PlanEntry, PlanVersion
from core.errors import OpenATPError


#: settings key of the plan time limit (s; 0: none), as ``openatp plan --time-limit``
TIME_LIMIT_KEY = "planning/time_limit_s"


def plan_task(patient, site=None, time_budget_s="default", progress=None, cancel=None):
    """Worker body: :func:`core.pipeline.plan_patient` on the loaded patient.

    The site defaults to the protocol template matching the patient's structure names;
    goal values are personalised by the dose prediction when that site has a model.
    ``time_budget_s``: the plan's time budget (None: no limit; "default": the pipeline's).
    """
    from core.errors import InputError
    from core.pipeline import PlanOptions, guess_site, model_available, plan_patient

    site = site or guess_site(patient)
    if site is None:
        raise InputError("no protocol template knows this patient's structure names: "
                         "load a goal list or rename the structures")
    budget = {} if time_budget_s == "default" else {"time_budget_s": time_budget_s}
    result = plan_patient(patient, site, options=PlanOptions(predict=model_available(site), **budget),
                          progress=progress, cancel=cancel)
    if hasattr(result, "metrics") and getattr(result, "goals", None) is not None:
        # the goal table's achieved / predicted columns, computed here rather than on the GUI thread
        from core.planning_steps import goal_values

        pred = goal_values(result.goals, patient, result.predicted_dose) if result.predicted_dose is not None else {}
        result.metrics["goal_values"] = [{"structure": k[0], "metric": k[1], "achieved": v, "predicted": pred.get(k)}
                                         for k, v in goal_values(result.goals, patient, result.final_dose).items()]
    return result


def _site_for(patient, site):
    from core.errors import InputError
    from core.pipeline import guess_site

    site = site or guess_site(patient)
    if site is None:
        raise InputError("no protocol template knows this patient's structure names: "
                         "load a template from the goal table or rename the structures")
    return site


def predict_task(patient, site=None, goals=(), progress=None, cancel=None):
    """Worker body: the site model's predicted dose (:func:`core.planning_steps.predict_step`).

    Returns ``(PredictionStep, values)``: ``values`` are the ``goals``' metrics on it.
    """
    from core.planning_steps import goal_values, predict_step

    step = predict_step(patient, _site_for(patient, site), progress=progress, cancel=cancel)
    return step, goal_values(goals, patient, step.dose)


def goals_task(patient, site=None, predicted=None, predict: bool = True, progress=None, cancel=None):
    """Worker body: the site template's goals, personalised by the prediction.

    With ``predict`` and no ``predicted`` dose, the dose is predicted first when the site
    has a model. Returns ``(GoalsStep, PredictionStep or None)``.
    """
    from core.pipeline import model_available
    from core.planning_steps import build_goals_step, predict_step

    site = _site_for(patient, site)
    pred_step = None
    if predict and predicted is None and model_available(site):
        pred_step = predict_step(patient, site, progress=progress.stage(0.0, 0.8, "predict") if progress else None,
                                 cancel=cancel)
        predicted = pred_step.dose
    goals = build_goals_step(patient, site, predicted=predicted,
                             progress=progress.stage(0.8, 1.0, "goals") if progress else None, cancel=cancel)
    return goals, pred_step


def optimize_task(patient, goals, site=None, dij=None, warm_start=None, predicted=None, options=None,
                  progress=None, cancel=None):
    """Worker body: :func:`core.planning_steps.optimize_step` (cold without ``warm_start``)."""
    from core.pipeline import PlanOptions
    from core.planning_steps import optimize_step

    return optimize_step(patient, goals, site=site, dij=dij, warm_start=warm_start, predicted=predicted,
                         options=options or PlanOptions(device="auto"), progress=progress, cancel=cancel)


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


def _values_of(goal_results) -> dict:
    from core.planning_steps import goal_key

    return {goal_key(r.goal): float(r.achieved) for r in goal_results if r.achieved is not None}


class PlanningController(QObject):
    """Handlers ``planning.*`` of the action table, and goal table <-> session.

    ``plan_options`` (:class:`core.pipeline.PlanOptions` or ``None`` for the defaults) are
    the beams, grids and device the Optimize steps use.
    """

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.plan_options = None
        self._syncing = False
        self.table = getattr(workstation.window, "goal_table", None)
        workstation.session.changed.connect(self._on_session_changed)
        if self.table is not None:
            self.table.goals_changed.connect(self._on_table_goals)
            self.table.templateRequested.connect(self.load_template)
            self.table.saveTemplateRequested.connect(self.save_template_dialog)

    # -- plan time limit ---------------------------------------------------------------------
    @property
    def time_limit_s(self) -> float | None:
        """The plan time limit in seconds (None: none), kept in the settings."""
        from core.pipeline import DEFAULT_TIME_BUDGET_S

        try:
            v = float(self.ws.settings.value(TIME_LIMIT_KEY, DEFAULT_TIME_BUDGET_S))
        except (TypeError, ValueError):
            v = DEFAULT_TIME_BUDGET_S
        return v if v > 0 else None

    def set_time_limit(self, seconds: float) -> None:
        """Set the plan time limit (0: none) for the automated plan and the Optimize steps."""
        seconds = max(0.0, float(seconds))
        self.ws.settings.setValue(TIME_LIMIT_KEY, seconds)
        self.ws.notify(f"plan time limit: {seconds:g} s" if seconds > 0 else "plan time limit: none")

    def time_limit_dialog(self):
        from PySide6.QtWidgets import QInputDialog

        v, ok = QInputDialog.getInt(self.ws.window, "Plan time limit",
                                    "Seconds a plan may take (0: no limit).\nThe first priority level is never cut; "
                                    "later levels share what is left.", int(round(self.time_limit_s or 0)), 0, 3600, 10)
        if ok:
            self.set_time_limit(v)
        return v if ok else None

    def effective_options(self):
        """The Optimize steps' PlanOptions with the plan time limit."""
        from dataclasses import replace

        from core.pipeline import PlanOptions

        return replace(self.plan_options or PlanOptions(device="auto"), time_budget_s=self.time_limit_s)

    # -- helpers -------------------------------------------------------------------------------
    def _ready(self, what: str) -> bool:
        session = self.ws.session
        if not session.has_patient:
            return False
        if self.ws.runner.busy:
            self.ws.notify(f"{what}: wait for the running task to finish (or cancel it)")
            return False
        return True

    # -- steps -------------------------------------------------------------------------------
    def predict(self):
        """Predict the dose with the site's model (Predict)."""
        if not self._ready("Predict"):
            return None
        session = self.ws.session
        session.set_state("predicting dose…")
        return self.ws.runner.run("Predicting dose", predict_task, session.patient, session.site, list(session.goals),
                                  on_success=self._on_predicted, on_failure=self._failed("Prediction failed"),
                                  on_cancel=lambda _e: self.ws.session.set_state("prediction cancelled"))

    def build_goals(self):
        """Goals from the site template, personalised by the prediction (Build goals)."""
        if not self._ready("Build goals"):
            return None
        session = self.ws.session
        session.set_state("building goals…")
        return self.ws.runner.run("Building goals", goals_task, session.patient, session.site, session.predicted,
                                  True, on_success=self._on_goals_built,
                                  on_failure=self._failed("Building goals failed"),
                                  on_cancel=lambda _e: self.ws.session.set_state("building goals cancelled"))

    def load_template(self, site: str):
        """The goal table's "Load template…": the template's own values, no prediction."""
        if not self._ready("Load template"):
            return None
        session = self.ws.session
        session.set_state(f"loading template '{site}'…")
        return self.ws.runner.run("Loading template", goals_task, session.patient, site, None, False,
                                  on_success=self._on_goals_built,
                                  on_failure=self._failed("Loading the template failed"),
                                  on_cancel=lambda _e: self.ws.session.set_state("loading template cancelled"))

    def optimize(self):
        """Optimize from scratch (cold); the dose-influence matrix is reused when there is one."""
        return self._optimize(warm=False)

    def reoptimize(self):
        """Re-optimize warm: from the current fluence, with the dose-influence matrix kept."""
        return self._optimize(warm=True)

    def _optimize(self, warm: bool):
        label = "Re-optimize" if warm else "Optimize"
        if not self._ready(label):
            return None
        session = self.ws.session
        goals = list(session.goals)
        if not goals:
            self.ws.show_error(OpenATPError("there are no goals to optimize: build the goals (or load a "
                                            "template) first"), f"{label} failed")
            return None
        if warm and not session.can_warm_start:
            self.ws.notify("no optimized plan to start from yet: optimizing cold")
            warm = False
        warm_start = session.optimization if warm else None
        session.set_state("re-optimizing (warm)…" if warm else "optimizing…")
        return self.ws.runner.run("Re-optimizing (warm)" if warm else "Optimizing", optimize_task, session.patient,
                                  goals, session.site, session.dij, warm_start, session.predicted,
                                  self.effective_options(),
                                  on_success=self._on_optimized, on_failure=self._failed(f"{label} failed"),
                                  on_cancel=self._on_optimize_cancelled)

    def run_plan(self):
        """Every step in one go (Run automated plan)."""
        session = self.ws.session
        if not session.has_patient or self.ws.runner.busy:
            return None
        session.set_state("planning…")
        return self.ws.runner.run("Automated plan", plan_task, session.patient, None, self.time_limit_s,
                                  on_success=self._on_planned, on_failure=self._on_failed,
                                  on_cancel=self._on_cancelled)

    def cancel(self) -> None:
        self.ws.runner.cancel_all()

    def revert(self) -> None:
        """Make the shown plan version current: its goals back in the table, its fluence the
        next warm start."""
        session = self.ws.session
        v = session.version(session.active_plan)
        if v is None:
            self.ws.notify("the plan shown is not an optimized plan version: choose one in 'Dose shown'")
            return
        session.revert_to(v.key)
        if self.table is not None:
            self.table.mark_optimized(v.goals)
        session.set_state(f"reverted to {v.name}: re-optimize continues from it")

    def open_goals_dialog(self) -> None:
        """File ▸ Open goals: a GOALS file into the goal table (and the DVH markers)."""
        if self.table is not None and self.ws.session.has_patient:
            self.table._open_goals_file()

    # -- institution templates ------------------------------------------------------------------
    def save_template(self, site: str, title: str, overwrite: bool = False):
        """Save the session's goals as an institution template; returns the file's path."""
        from core.goals.templates import load_template, save_user_template, template_from_goals

        session = self.ws.session
        patient = session.patient
        base = None
        if session.site:
            try:
                base = load_template(session.site)
            except OpenATPError:
                base = None
        roles = {n: s.role.value for n, s in patient.structures.items()} if patient is not None else {}
        doc, warnings = template_from_goals(session.goals, site, title, roles=roles, base=base,
                                            prescriptions=patient.prescriptions if patient is not None else None)
        path = save_user_template(doc, overwrite=overwrite)
        for w in warnings:
            self.ws.notify(w)
        self.ws.notify(f"institution template '{site}' saved: {path}")
        return path

    def save_template_dialog(self) -> None:
        from PySide6.QtWidgets import QInputDialog, QMessageBox

        from core.goals.templates import user_protocol_dir

        session = self.ws.session
        if not session.goals:
            self.ws.show_error(OpenATPError("there are no goals to save"), "Save as institution template")
            return
        win = self.ws.window
        site, ok = QInputDialog.getText(win, "Save as institution template",
                                        "Site key (lower-case letters, digits, _; the key of a built-in template "
                                        "replaces it for this institution):", text=f"{session.site or 'site'}_inst")
        if not ok or not site.strip():
            return
        title, ok = QInputDialog.getText(win, "Save as institution template", "Title:",
                                         text=f"Institution template ({site.strip()})")
        if not ok:
            return
        overwrite = False
        if (user_protocol_dir() / f"{site.strip().lower()}.json").exists():
            answer = QMessageBox.question(win, "Replace template?",
                                          f"An institution template '{site.strip()}' exists. Replace it?")
            if answer != QMessageBox.StandardButton.Yes:
                return
            overwrite = True
        try:
            self.save_template(site.strip(), title, overwrite)
        except OpenATPError as exc:
            self.ws.show_error(exc, "Could not save the template")

    # -- results -------------------------------------------------------------------------------
    def _failed(self, title: str):
        def handler(exc) -> None:
            self.ws.session.set_state(title.lower())
            self.ws.show_error(exc, title)
        return handler

    def _on_predicted(self, result) -> None:
        step, values = result
        session = self.ws.session
        session.predicted_values = dict(values)  # a new prediction: the old values are stale
        session.set_prediction(step.dose, step.site)
        for w in step.warnings:
            self.ws.notify(w)
        session.set_state("dose predicted")

    def _on_goals_built(self, result) -> None:
        goals_step, pred_step = result
        session = self.ws.session
        if pred_step is not None:
            session.set_prediction(pred_step.dose, pred_step.site)
            for w in pred_step.warnings:
                self.ws.notify(w)
        if goals_step.added_structures:
            session.changed.emit(["structures"])
        session.predicted_values.update(goals_step.predicted or {})
        session.set_goals(goals_step.goals, goals_step.site)
        for n in goals_step.notes:
            self.ws.notify(n)
        how = "personalised by the prediction" if goals_step.predicted else "template values"
        session.set_state(f"{len(goals_step.goals)} goals from '{goals_step.site}' ({how})")

    def _add_version(self, dose, result_info: dict, goals, optimization, achieved: dict, warm: bool,
                     cancelled: bool = False, dij=None, tag: str | None = None) -> PlanVersion:
        session = self.ws.session
        key = session.next_plan_key()
        name = f"{key} · {tag or ('warm' if warm else 'cold')}" + (" · cancelled" if cancelled else "")
        version = PlanVersion(key, name, tuple(goals), optimization, dict(achieved), warm, cancelled)
        session.add_version(PlanEntry(key, name, dose, result_info), version, dij=dij)
        return version

    #: Public name for other controllers (the refinement's cancelled rounds).
    add_version = _add_version

    def add_plan_result(self, result, tag: str | None = None) -> PlanVersion:
        """A finished plan (:func:`core.planning_steps.optimize_step`'s PlanResult, or the
        refinement's, with ``metrics["goal_values"]``) as a new plan version: shown, in the
        history, its fluence and matrix the next warm start, its goals marked optimized."""
        from core.planning_steps import values_from_metrics

        session = self.ws.session
        m = result.metrics
        session.predicted_values.update(values_from_metrics(m, "predicted"))
        v = self._add_version(result.final_dose, {"result": result, "metrics": m}, result.goals,
                              result.optimization, values_from_metrics(m), bool(m.get("warm_start")), dij=result.dij,
                              tag=tag)
        if self.table is not None:
            self.table.mark_optimized(v.goals)
        return v

    def _on_optimized(self, result) -> None:
        session = self.ws.session
        m = result.metrics
        v = self.add_plan_result(result)
        t = m["timings_s"]
        p1 = "all P1 goals met" if m.get("all_p1_met") else "P1 goals NOT all met"
        session.set_state(f"{v.name} ready ({t['optimize']:.1f} s optimize, {t['total']:.1f} s total; {p1})")

    def _on_optimize_cancelled(self, exc) -> None:
        from core.patient import Dose

        session = self.ws.session
        partial = getattr(exc, "result", None)
        if partial is not None and getattr(partial, "dij", None) is not None:
            session.set_dij(partial.dij)  # the matrix is finished work: the next run reuses it
        opt = getattr(partial, "optimization", None)
        if opt is None:
            session.set_state("optimization cancelled")
            return
        v = self._add_version(Dose(opt.dose_gy, session.patient.grid, "cancelled"), {"optimization": opt},
                              partial.goals, opt, _values_of(opt.goal_results), bool(opt.warm_start), cancelled=True)
        session.set_state(f"optimization cancelled: best fluence so far kept as {v.name} (ideal, unsequenced dose)")

    def _on_planned(self, result) -> None:
        try:
            dose = dose_of(result)
        except OpenATPError as exc:
            self._on_failed(exc)
            return
        session = self.ws.session
        goals = getattr(result, "goals", None)
        if goals is None:  # a bare dose (no plan state): shown, not a warm-start point
            key = session.next_plan_key()
            session.add_plan(PlanEntry(key, key, dose, {"result": result}))
            session.set_state(f"{key} ready")
            return
        from core.planning_steps import values_from_metrics

        m = result.metrics
        session.changed.emit(["structures"])  # the pipeline adds the template's helper rings
        if getattr(result, "predicted_dose", None) is not None:
            session.predicted_values = values_from_metrics(m, "predicted")
            session.set_prediction(result.predicted_dose, result.site)
        session.set_goals(goals, result.site)
        v = self._add_version(dose, {"result": result, "metrics": m}, goals, result.optimization,
                              values_from_metrics(m), False, dij=result.dij)
        if self.table is not None:
            self.table.mark_optimized(v.goals)
        session.set_state(f"{v.key} ready")

    def _on_failed(self, exc) -> None:
        self.ws.session.set_state("planning failed")
        self.ws.show_error(exc, "Planning failed")

    def _on_cancelled(self, exc) -> None:
        # Cancelled keeps the last good result: show it if the pipeline handed one back.
        result = getattr(exc, "result", None)
        if result is not None and hasattr(result, "weights") and hasattr(result, "goal_results"):
            from core.patient import Dose

            session = self.ws.session
            v = self._add_version(Dose(result.dose_gy, session.patient.grid, "cancelled"), {"optimization": result},
                                  [r.goal for r in result.goal_results], None, _values_of(result.goal_results),
                                  False, cancelled=True)
            session.set_state(f"planning cancelled (best fluence kept as {v.name})")
            return
        if result is not None:
            try:
                self._on_planned(result)
                self.ws.session.set_state("planning cancelled (last result kept)")
                return
            except Exception:  # noqa: BLE001 - a partial result that cannot be shown is dropped
                pass
        self.ws.session.set_state("planning cancelled")

    # -- session <-> goal table ------------------------------------------------------------------
    def _on_table_goals(self, goals: list) -> None:
        self._syncing = True
        try:
            self.ws.session.set_goals(goals)
        finally:
            self._syncing = False

    def _on_session_changed(self, what: list) -> None:
        session = self.ws.session
        table = self.table
        if "goals" in what:
            self.ws.display.set_goals(session.goals)  # DVH markers
        if table is None:
            return
        if ("patient" in what or "structures" in what) and session.patient is not None:
            table.set_structures(list(session.patient.structures))
        if "patient" in what:
            table.model.forget_optimization()
        if "goals" in what and not self._syncing:
            table.set_goals(session.goals)
        if {"goals", "active_plan", "history", "prediction", "patient"} & set(what):
            self._show_values()

    def _show_values(self) -> None:
        session = self.ws.session
        v = session.version(session.active_plan)
        if self.table is not None:
            self.table.set_values(achieved=v.achieved if v is not None else {}, predicted=session.predicted_values)
