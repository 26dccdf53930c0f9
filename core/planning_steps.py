"""The automated plan one step at a time, for interactive planning.

:func:`core.pipeline.plan_patient` runs every stage in one go. A planner at the
workstation runs them separately and in a loop: predict a dose, build the goal list
(site template personalised by the prediction), optimize, edit a goal, re-optimize warm
from the current fluence with the dose-influence matrix kept. These functions are those
steps; each takes ``progress=None, cancel=None`` and holds no state, so the caller (the
GUI session) keeps the prediction, the goals, the matrix and the last optimization.

Cancelling :func:`optimize_step` raises :class:`core.errors.Cancelled` whose ``result``
is a :class:`PartialPlan`: the dose-influence matrix, when it was finished, and the
best fluence the optimizer had reached, when it had started, so neither is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from core.errors import Cancelled, InputError
from core.progress import Progress, check_cancel, report


@dataclass(frozen=True)
class PredictionStep:
    """What :func:`predict_step` returns.

    Attributes
    ----------
    dose : core.patient.Dose
        The predicted dose on the patient's grid.
    site : str
    model : dict
        The model's description (name, version, training data).
    warnings : tuple of str
    """

    dose: object
    site: str
    model: dict
    warnings: tuple = ()


@dataclass(frozen=True)
class GoalsStep:
    """What :func:`build_goals_step` returns.

    Attributes
    ----------
    goals : tuple of ClinicalGoal
        Structure names as in the patient; priority order as in the template.
    site : str
    notes : tuple of str
        Goals left out (missing structures) and values kept (empty structures).
    predicted : dict
        ``(structure, metric) -> value`` of every goal's metric on the predicted dose
        (goal units: Gy, or % for ``Vx``); empty without a prediction.
    added_structures : tuple of str
        Helper structures (rings) the template added to the patient.
    """

    goals: tuple
    site: str
    notes: tuple = ()
    predicted: dict | None = None
    added_structures: tuple = ()


@dataclass(eq=False)
class PartialPlan:
    """The ``result`` of a cancelled :func:`optimize_step`: what was finished.

    Attributes
    ----------
    dij : core.dose.influence.DoseInfluence or None
        The dose-influence matrix, when its calculation had finished.
    optimization : core.optimization.fluence.OptimizationResult or None
        The best fluence so far (its ``dose_gy`` is the ideal, unsequenced dose).
    goals : list of ClinicalGoal
    """

    dij: object
    optimization: object
    goals: list


def goal_key(goal) -> tuple[str, str]:
    """``(structure, metric)``: goals with the same key read the same DVH value.

    ``PTV70 D95 >= 70 Gy`` and ``PTV70 D95 <= 74 Gy`` share ``("PTV70", "D95")``, so an
    evaluated value stays valid when only a goal's direction, value or priority changes.
    """
    return (goal.structure, goal.metric)


def goal_values(goals, patient, dose) -> dict:
    """``(structure, metric) -> value`` of every goal's metric on ``dose``.

    Parameters
    ----------
    goals : iterable of ClinicalGoal
    patient : core.patient.Patient
    dose : core.patient.Dose or ndarray, Gy, on the patient's grid (resampled otherwise)

    Returns
    -------
    dict
        Goals on a structure the patient lacks, or on an empty one, are left out.
    """
    from core.goals.evaluate import achieved_value
    from core.goals.from_prediction import dose_on_patient_grid

    arr = dose_on_patient_grid(dose, patient)
    out: dict = {}
    voxel_cc = patient.grid.voxel_volume_cc
    for g in goals:
        key = goal_key(g)
        s = patient.structures.get(g.structure)
        if key in out or s is None or s.is_empty:
            continue
        out[key] = float(achieved_value(g, arr[s.mask], voxel_cc))
    return out


def predict_step(patient, site: str, *, device: str = "auto", model_path=None, tta: bool | None = None,
                 progress: Progress | None = None, cancel=None) -> PredictionStep:
    """Predict the dose of ``patient`` with the site's model.

    Raises
    ------
    InputError
        No model is installed for ``site``.
    """
    from core.device import resolve_device
    from core.pipeline import model_available
    from core.prediction.predict import predict_dose

    if not model_available(site, model_path):
        raise InputError(f"no dose-prediction model is installed for site '{site}': build the goals "
                         "from the template values instead")
    pred = predict_dose(patient, site, model_path=model_path, device=str(resolve_device(device)), tta=tta,
                        progress=progress, cancel=cancel)
    return PredictionStep(pred.dose, site, dict(pred.model or {}), tuple(pred.warnings))


def build_goals_step(patient, site: str, *, predicted=None, progress: Progress | None = None,
                     cancel=None) -> GoalsStep:
    """The site template's goals for ``patient``, personalised by ``predicted`` when given.

    The template's helper rings are added to ``patient`` (role HELPER) as
    :func:`core.pipeline.plan_patient` does, so their goals can be optimized.

    Parameters
    ----------
    patient : core.patient.Patient
    site : str
        Protocol template key or alias (the user's protocol folder included).
    predicted : core.patient.Dose, optional
        Non-P1, non-control goal values become what this dose reaches, tightened by each
        goal's tolerance (:mod:`core.goals.from_prediction`).
    """
    from core.pipeline import plan_goals

    if site is None:
        raise InputError("choose a protocol template (site) to build the goals from")
    before = set(patient.structures)
    report(progress, 0.0, 1.0, "goals from the template")
    check_cancel(cancel)
    goals, notes = plan_goals(patient, site, None, predicted)
    check_cancel(cancel)
    values = goal_values(goals, patient, predicted) if predicted is not None else {}
    report(progress, 1.0, 1.0, "goals ready")
    added = tuple(n for n in patient.structures if n not in before)
    return GoalsStep(tuple(goals), site, tuple(notes), values, added)


def _new_dij(patient, site, opts, progress, cancel):
    from core.device import resolve_device
    from core.dose.beams import parse_beams
    from core.dose.influence import compute_influence
    from core.pipeline import DEFAULT_BEAMS, _auto_dose_grid_mm

    spec = opts.beams or DEFAULT_BEAMS.get(site or "", "imrt9")
    beams = parse_beams(spec) if isinstance(spec, str) else spec
    grid_mm = opts.dose_grid_mm if opts.dose_grid_mm is not None else _auto_dose_grid_mm(patient)
    return compute_influence(patient, beams, beamlet_mm=opts.beamlet_mm, dose_grid_mm=grid_mm,
                             device=str(resolve_device(opts.device)), progress=progress, cancel=cancel)


def optimize_step(patient, goals, *, site: str | None = None, dij=None, warm_start=None, options=None,
                  predicted=None, progress: Progress | None = None, cancel=None):
    """Optimize, sequence and compute the final dose for exactly these goals.

    The goal values are used as given (no prediction personalises them here: that was
    :func:`build_goals_step`'s job, and the planner may have edited them since).

    Parameters
    ----------
    patient : core.patient.Patient
    goals : sequence of ClinicalGoal
    site : str, optional
        Chooses the default beams and site optimizer settings of :mod:`core.pipeline`.
    dij : DoseInfluence, optional
        Reuse this matrix (same beams, grid and body); computed when ``None``.
    warm_start : OptimizationResult or (n_beamlets,) ndarray of MU, optional
        Start from this fluence (a warm start); it must belong to ``dij``.
    options : core.pipeline.PlanOptions, optional
    predicted : core.patient.Dose, optional
        The prediction, for the predicted-vs-achieved values in the metrics.

    Returns
    -------
    core.pipeline.PlanResult
        ``metrics["goal_values"]`` lists ``{"structure", "metric", "achieved", "predicted"}``
        per :func:`goal_key`: the metric on the final (delivered) dose and on ``predicted``
        (None without one); :func:`values_from_metrics` turns it into a dict.

    Raises
    ------
    Cancelled
        With ``result`` a :class:`PartialPlan` (matrix and best fluence so far).
    InputError
        No goals, a goal on a missing structure, or a warm start that does not fit ``dij``.
    """
    from core.pipeline import PlanOptions, plan_patient

    goals = list(goals)
    if not goals:
        raise InputError("the goal list is empty: build the goals or add one before optimizing")
    missing = sorted({g.structure for g in goals} - set(patient.structures))
    if missing:
        raise InputError(f"goals name structures the patient does not have: {', '.join(missing)}")
    opts = replace(options or PlanOptions(), predict=False)
    if warm_start is not None:
        if dij is None:
            raise InputError("a warm start needs the dose-influence matrix of the plan it starts from")
        w = getattr(warm_start, "weights", warm_start)
        if np.asarray(w).shape != (dij.n_beamlets,):
            raise InputError(f"the warm-start fluence has {np.asarray(w).size} beamlets, the dose-influence "
                             f"matrix {dij.n_beamlets}: optimize cold instead")
    check_cancel(cancel, result=PartialPlan(dij, None, goals))
    rest = progress
    reused = dij is not None
    t0 = time.perf_counter()
    if dij is None:
        try:
            dij = _new_dij(patient, site, opts, progress.stage(0.0, 0.45, "dose matrix") if progress else None,
                           cancel)
        except Cancelled:
            raise Cancelled(result=PartialPlan(None, None, goals)) from None
        rest = progress.stage(0.45, 1.0) if progress else None
    dij_s = time.perf_counter() - t0
    try:
        result = plan_patient(patient, site, goals=goals, options=opts, dij=dij, warm_start=warm_start,
                              progress=rest, cancel=cancel)
    except Cancelled as exc:
        opt = exc.result if hasattr(exc.result, "weights") else None
        raise Cancelled(result=PartialPlan(dij, opt, goals)) from None
    # plan_patient was handed the matrix: report the time it took here (0 when reused)
    timings = result.metrics["timings_s"]
    timings["dose_matrix"] = round(dij_s, 3)
    timings["total"] = round(timings["total"] + dij_s, 3)
    result.metrics["dose_matrix_reused"] = reused
    achieved = goal_values(goals, patient, result.final_dose)
    pred = goal_values(goals, patient, predicted) if predicted is not None else {}
    result.metrics["goal_values"] = [{"structure": k[0], "metric": k[1], "achieved": v, "predicted": pred.get(k)}
                                     for k, v in achieved.items()]
    return result


def values_from_metrics(metrics: dict, which: str = "achieved") -> dict:
    """``(structure, metric) -> value`` from ``metrics["goal_values"]`` of :func:`optimize_step`
    (``which``: ``"achieved"`` or ``"predicted"``); values that are None are left out."""
    return {(r["structure"], r["metric"]): float(r[which]) for r in metrics.get("goal_values", [])
            if r.get(which) is not None}


__all__ = ["PredictionStep", "GoalsStep", "PartialPlan", "goal_key", "goal_values", "predict_step",
           "build_goals_step", "optimize_step", "values_from_metrics"]
