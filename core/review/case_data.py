"""What the review screen shows for one case, computed from the study folder alone.

:func:`load_review_case` reads the patient copy and the two plan files of a
:class:`~core.review.study.CaseView` and returns everything the review panel draws: the
two doses on the patient grid, one reference dose for both (so isodose levels in % mean
the same Gy on both sides), cumulative DVHs and the goal table. It is a worker body
(``progress``, ``cancel``); the GUI never computes on its thread.

Blinding (threat model in :mod:`core.review.study`): the result carries only the
handles "A" and "B". File names, dose labels and the loader's warnings (which could
differ between the plans, e.g. an origin note on one of them) are dropped here, so no
text built from this object can name a source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.progress import check_cancel, report

HANDLES = ("A", "B")
#: DVH bin width, Gy: fine enough for the plot and the goal read-out at 2 decimals.
DVH_BIN_GY = 0.01


@dataclass(frozen=True, eq=False)
class StructureDvh:
    """One structure's cumulative DVH for one plan.

    Attributes
    ----------
    structure : str
    color : (r, g, b)
    dose_gy : (B,) float64 ndarray, Gy, bin doses, increasing
    volume_pct : (B,) float64 ndarray, % of the structure receiving at least ``dose_gy[i]``
    """

    structure: str
    color: tuple
    dose_gy: np.ndarray
    volume_pct: np.ndarray


@dataclass(frozen=True)
class GoalRow:
    """One row of the goal table: a goal and what each plan achieves.

    Attributes
    ----------
    label : str
        How a planner reads the goal (``P1 PTV70 D95 >= 70 Gy``); for an endpoint row
        without a goal, the structure and metric (``PTV70 D95``).
    unit : str
        ``Gy`` or ``%``.
    achieved : dict
        ``{"A": float or None, "B": float or None}`` in ``unit``.
    met : dict
        ``{"A": bool or None, "B": bool or None}``; None when not a goal or not evaluable.
    """

    label: str
    unit: str
    achieved: dict
    met: dict


@dataclass(frozen=True, eq=False)
class ReviewCaseData:
    """Everything the review panel shows for one case.

    Attributes
    ----------
    case_id, site : str
    position, n_cases : int
        0-based place in the reviewer's order, and the reviewer's number of cases.
    patient : core.patient.Patient or None
        The patient copy from the study folder (no dose in it); None when the study has
        no patients (the views then show the dose on a blank image).
    grid : core.geometry.Grid
    doses_gy : dict
        ``{"A": (P, R, C) float32 ndarray, "B": ...}``, Gy on ``grid``.
    reference_gy : float
        100 % of the isodose levels on both sides: the highest prescription, else the
        higher of the two plans' maxima (never one plan's own maximum, which would make
        the same % a different dose on each side).
    dvh : dict
        ``{"A": [StructureDvh], "B": [...]}``, same structures in the same order.
    goals : list of GoalRow
    goal_source : str
        Where the goals come from: ``template <site>``, or ``endpoints`` when no
        protocol template matches the structure names.
    hidden_structures : tuple of str
        Structures drawn hidden by default (the body outline).
    answers : dict
        The reviewer's answers so far.
    """

    case_id: str
    site: str
    position: int
    n_cases: int
    patient: object
    grid: object
    doses_gy: dict
    reference_gy: float
    dvh: dict
    goals: list
    goal_source: str
    hidden_structures: tuple = ()
    answers: dict = field(default_factory=dict)


def _site_key(site: str, patient) -> str | None:
    """A protocol template for the case: its own site if a template has that name, else
    the template matching the structure names."""
    from core.goals.templates import available_templates

    templates = available_templates()
    key = (site or "").strip().lower()
    if key in templates:
        return key
    if patient is None:
        return None
    from core.pipeline import guess_site

    return guess_site(patient)


def _endpoint_rows(patient, doses: dict) -> list:
    """Goal-less rows: D95 and D2 of each target, mean and D0.03cc of each organ."""
    from core.evaluation.dvh import dose_at_volume_cc, dose_at_volume_pct, mean_dose, structure_doses
    from core.patient import StructureRole

    rows = []
    voxel_cc = patient.grid.voxel_volume_cc
    for s in patient.structures.values():
        if s.is_empty or s.role in (StructureRole.EXTERNAL, StructureRole.HELPER):
            continue
        if s.role is StructureRole.TARGET:
            metrics = (("D95", lambda v: dose_at_volume_pct(v, 95)), ("D2", lambda v: dose_at_volume_pct(v, 2)))
        else:
            metrics = (("mean", mean_dose), ("D0.03cc", lambda v: dose_at_volume_cc(v, 0.03, voxel_cc)))
        for name, fn in metrics:
            ach = {h: float(fn(structure_doses(doses[h], s.mask))) for h in HANDLES}
            rows.append(GoalRow(f"{s.name} {name}", "Gy", ach, {h: None for h in HANDLES}))
    return rows


def _goal_rows(patient, doses: dict, site_key: str) -> list:
    from core.goals.evaluate import evaluate_goals
    from core.goals.templates import goals_for_patient

    goals, _notes = goals_for_patient(patient, site_key, add_rings=False)
    masks = {n: s.mask for n, s in patient.structures.items()}
    goals = [g for g in goals if g.structure in masks]
    seen, unique = set(), []
    for g in goals:  # a template may list one limit at two priorities: show it once
        key = (g.structure, g.kind, g.dose_gy, g.volume_pct, g.volume_cc)
        if key not in seen:
            seen.add(key)
            unique.append(g)
    res = {h: evaluate_goals(unique, doses[h], masks, patient.grid.voxel_volume_cc) for h in HANDLES}
    return [GoalRow(g.label, g.unit, {h: res[h][i].achieved for h in HANDLES}, {h: res[h][i].met for h in HANDLES})
            for i, g in enumerate(unique)]


def load_review_case(study_dir: str | Path, case, n_cases: int | None = None, progress=None,
                     cancel=None) -> ReviewCaseData:
    """Load one case of a study for display (a worker body).

    Parameters
    ----------
    study_dir : path
        The study folder (patient specs in ``case`` are relative to it).
    case : core.review.study.CaseView
    n_cases : int, optional
        The reviewer's number of cases (for "case k of n"); default unknown (0).
    progress, cancel : optional
        :class:`core.progress.Progress`, :class:`core.progress.CancelToken`.

    Returns
    -------
    ReviewCaseData

    Raises
    ------
    InputError
        The patient copy or a plan file is missing or unreadable, or the plans are not on
        the patient's grid.
    """
    from core.evaluation.dvh import cumulative_dvh
    from core.geometry import Grid
    from core.io.dosefile import load_dose
    from core.io.loader import load_patient
    from core.patient import StructureRole

    study_dir = Path(study_dir)
    check_cancel(cancel)
    report(progress, 0, 4, f"loading case {case.case_id}")
    patient = None
    spec = str(case.patient or "")
    if spec:
        patient = load_patient(spec if spec.lower().startswith("phantom:") else study_dir / spec)
    doses = {}
    for h, f in zip(HANDLES, (case.plan_a, case.plan_b)):
        check_cancel(cancel)
        f = Path(f)
        if patient is not None:
            # warnings dropped on purpose: a note on one plan only would tell the plans apart
            doses[h] = np.asarray(load_dose(f, patient, []).dose_gy, dtype=np.float32)
        else:
            try:
                with np.load(f, allow_pickle=False) as z:
                    d = np.asarray(z["dose_gy"], dtype=np.float32)
                    grid = Grid(d.shape, tuple(float(v) for v in z["spacing_mm"]),
                                tuple(float(v) for v in z["origin_mm"]))
            except (OSError, KeyError, ValueError) as exc:
                raise InputError(f"cannot read plan {h} of case {case.case_id} ({exc})", f) from None
            doses[h] = d
    if patient is None:
        if doses["A"].shape != doses["B"].shape:
            raise InputError(f"case {case.case_id}: plans A and B are on different grids and the study holds "
                             "no patient to put them on", study_dir)
    else:
        grid = patient.grid
    report(progress, 1, 4, "dose-volume histograms")
    rx = [p.dose_gy for p in (patient.prescriptions if patient is not None else [])]
    reference_gy = float(max(rx)) if rx else float(max(doses["A"].max(), doses["B"].max()))
    dvh = {h: [] for h in HANDLES}
    hidden = []
    if patient is not None:
        for s in patient.structures.values():
            if s.is_empty or s.role is StructureRole.HELPER:
                continue
            if s.role is StructureRole.EXTERNAL:
                hidden.append(s.name)
            for h in HANDLES:
                check_cancel(cancel)
                bins, _vcc, vpct = cumulative_dvh(doses[h], s.mask, patient.grid, DVH_BIN_GY)
                dvh[h].append(StructureDvh(s.name, tuple(int(c) for c in s.color), bins, vpct))
    report(progress, 3, 4, "goals")
    goals, source = [], "none"
    if patient is not None:
        key = _site_key(case.site, patient)
        if key is not None:
            goals, source = _goal_rows(patient, doses, key), f"template {key}"
        else:
            goals, source = _endpoint_rows(patient, doses), "endpoints"
    report(progress, 4, 4, "case loaded")
    return ReviewCaseData(case.case_id, case.site, case.position, int(n_cases or 0), patient, grid, doses,
                          reference_gy, dvh, goals, source, tuple(hidden), dict(case.answers))
