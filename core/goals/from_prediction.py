"""Personalised goals from a predicted dose (or any dose: a prior plan, a reference plan).

For every goal that is neither P1 nor a planner's control goal, the goal value becomes
what the given dose reaches on that structure, tightened by the goal's tolerance::

    upper-bound goals (max dose, max mean, Vx <= y %):  value = achieved * (1 - t / 100)
    lower-bound goals (min dose, min mean):             value = achieved * (1 + t / 100)

so the planner asks for a little more than predicted. P1 goals (musts) and control goals
keep the planner's value; so do all goals on targets (coverage and hot spots), which are
protocol values (see :func:`goals_from_prediction`); "as low as possible" goals have no value and are kept as they
are. The evaluation uses the project's DVH convention (:mod:`core.goals.evaluate`).
"""

from __future__ import annotations

import numpy as np

from core.errors import GeometryError, InputError
from core.goals.evaluate import achieved_value
from core.goals.goal import MAX_PLAUSIBLE_DOSE_GY, ClinicalGoal, GoalKind


def personalize_goal(goal: ClinicalGoal, achieved: float) -> ClinicalGoal:
    """``goal`` with its value taken from ``achieved`` (goal unit) and tightened."""
    t = goal.tolerance_pct / 100.0
    if goal.kind.is_lower_bound:
        v = achieved * (1 + t)
    else:
        v = achieved * (1 - t)
    if goal.kind is GoalKind.MAX_VOLUME_AT_DOSE:
        v = float(np.clip(v, 0.0, 99.99))
    else:
        v = float(np.clip(v, 0.0, MAX_PLAUSIBLE_DOSE_GY))
    if goal.kind is GoalKind.MIN_DOSE_AT_VOLUME and v <= 0:
        return goal  # a prediction of 0 Gy gives no usable minimum: keep the planner's value
    note = f"from dose: {achieved:.2f} {goal.unit}" + (f", -{goal.tolerance_pct:g} %" if goal.tolerance_pct else "")
    return goal.with_value(round(v, 3), note=note)


def goals_from_dose(goals, dose_gy: np.ndarray, masks: dict, voxel_cc: float) -> tuple[list, list]:
    """Goals whose non-P1, non-control values come from ``dose_gy``.

    Parameters
    ----------
    goals : sequence of ClinicalGoal (structure names as in ``masks``)
    dose_gy : ndarray, Gy, on the grid of the masks
    masks : dict name -> bool ndarray of ``dose_gy.shape``
    voxel_cc : float
        Voxel volume of that grid (cm^3).

    Returns
    -------
    goals : list of ClinicalGoal, same order
    warnings : list of str (goals kept unchanged because their structure is empty)
    """
    dose_gy = np.asarray(dose_gy)
    if not np.all(np.isfinite(dose_gy)):
        raise InputError("the predicted dose holds non-finite values")
    if (dose_gy < -1e-3).any():
        raise InputError(f"the predicted dose holds negative values (min {float(dose_gy.min()):.3g} Gy)")
    out, warnings = [], []
    for g in goals:
        if g.priority == 1 or g.control or g.kind is GoalKind.ALARA:
            out.append(g)
            continue
        m = masks.get(g.structure)
        if m is None:
            raise InputError(f"'{g.label}': no structure named '{g.structure}' (have: {', '.join(masks) or 'none'})")
        if m.shape != dose_gy.shape:
            raise GeometryError(f"structure '{g.structure}' {m.shape} and the dose {dose_gy.shape} "
                                "are on different grids")
        vals = dose_gy[m]
        if vals.size == 0:
            warnings.append(f"'{g.label}': structure '{g.structure}' is empty; the goal keeps its value")
            out.append(g)
            continue
        out.append(personalize_goal(g, achieved_value(g, vals, voxel_cc)))
    return out, warnings


def dose_on_patient_grid(dose, patient) -> np.ndarray:
    """The dose array (Gy) on ``patient.grid``: a :class:`core.patient.Dose` on another grid
    is resampled (linear), a bare array must already have the patient grid's shape."""
    arr = getattr(dose, "dose_gy", dose)
    grid = getattr(dose, "grid", None)
    if grid is not None and not grid.same_as(patient.grid):
        from core.geometry import resample_to_grid

        arr = resample_to_grid(np.asarray(arr, dtype=np.float32), grid, patient.grid, order=1)
    arr = np.asarray(arr)
    if arr.shape != patient.grid.shape:
        raise GeometryError(f"dose {arr.shape} does not match the patient grid {patient.grid.shape}")
    return arr


def goals_from_prediction(goals, patient, dose) -> tuple[list, list]:
    """:func:`goals_from_dose` for a :class:`core.patient.Patient` and a dose on its grid.

    ``dose`` is a :class:`core.patient.Dose` or a float array of ``patient.grid.shape``.
    """
    goals = list(goals)
    arr = dose_on_patient_grid(dose, patient)
    masks = {n: s.mask for n, s in patient.structures.items()}
    out, warnings = goals_from_dose(goals, arr, masks, patient.grid.voxel_volume_cc)
    # Target goals are protocol values, not anatomy-dependent ones: a prediction (or a
    # reference plan) that under-doses the target would otherwise turn "PTV70 D20 <= 77 Gy"
    # into a limit below the prescription, contradicting coverage (seen on OpenKBP pt_201:
    # D20 <= 68.8 Gy against D95 >= 70 Gy), and the P2 coverage aim "D95 >= 70 Gy" into
    # whatever coverage the prediction happened to reach.
    from core.patient import StructureRole

    for i, g in enumerate(goals):
        s = patient.structures.get(g.structure)
        if s is not None and s.role is StructureRole.TARGET:
            out[i] = g
    return out, warnings
