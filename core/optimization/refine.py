"""Iterative per-patient refinement: adjust goal values, re-optimize warm, keep the best plan.

An automated plan is a starting point. After it, every goal is checked against the
planner's goal list (the **clinical** goals, whose values never change here), and each
round adjusts the values the optimizer aims at (the **working** goals) of **one priority
level**, the levels taken in turn from the highest (so the optimizer re-runs that level
only: every other goal is held and its level skipped). At that level:

* an **unmet** goal is aimed past its value by its shortfall (a maximum 8 Gy over its
  limit is aimed 8 Gy under it; a coverage 1 Gy short is aimed 1 Gy over; a goal the
  plan as delivered misses counts as unmet, by its delivered shortfall), at most
  ``max_push_pct`` % beyond the value, and further each round it improves;
* an **OAR goal met with room** (more than ``spare_pct`` % of its value; priority 2 or
  lower) is aimed ``step_pct`` % under what it achieved, so the optimizer spends the
  room on sparing it further. Met P1 limits are hard limits, never pushed (the templates
  carry a lower-priority copy of each, which is).

Every goal not pushed in a round is **held** at what it achieved (a met OAR goal, so
pushing the others cannot buy their gains with it; an unmet goal, so it stays where it
is): a goal of the round's level or above as a constraint sitting at that value, a goal
below it give or take ``tolerance_pct``, so its level is skipped unless the round moved
it further, and then re-run to bring it back (see :func:`_hold`). ``focus`` limits the
pushes to goals on some structures (a new patch: only its goal moves). Priorities are not
changed: the optimizer is lexicographic, so a priority is what a weight is to a
weighted-sum optimizer, and moving a goal between levels would change what it may cost.

Each round re-optimizes with :func:`core.optimization.fluence.optimize_plan` from the
current best fluence (warm start, the same dose-influence matrix). Its plan is accepted
only if, judged on the clinical goals:

1. every P1 goal met by the best plan is still met (never traded), and so is every met
   goal of the round's priority or above and every met OAR goal;
2. no OAR goal, and no unmet goal of the round's level or above, is worse than in the
   best plan, or than in the *first* plan, by more than ``tolerance_pct`` % of its value
   (0.05 Gy / 0.05 % at least), so tolerances cannot add up over rounds. A met target
   goal may spend its room (a D95 of 50.4 Gy against 50 Gy may become 50.1 Gy), and an
   unmet goal of a lower priority that is no OAR goal (a ring, say) may pay for a higher
   one, as priorities mean. With a ``focus`` (the planner asked for it, e.g. with a new
   patch goal) every goal of the round's priority or lower may pay, staying met;
3. at least one goal improved by ``min_gain_pct`` % of its value (0.05 Gy at least);
4. (with ``check_delivered`` and the plan's beams) the plan as it will be delivered --
   sequenced, dose from the segments, MU normalised (:func:`deliver`) -- still meets
   every P1 goal the best delivered plan met.

A rejected round halves the steps of the goals it pushed (their level comes again after
the others); a second rejection in a row at a level, or a round that improves nothing,
gives those goals up (aimed at their own value again, then held), as does an accepted
round that twice in a row did not improve a goal it pushed. Refinement stops when no goal
is left that can improve, or after ``max_rounds``. Every round is logged (level, what
changed, what was held, which goals moved, timings).
Cancel keeps the best plan (:class:`~core.errors.Cancelled` carries it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from core.errors import Cancelled, InputError
from core.goals.evaluate import GoalResult, evaluate_goals
from core.goals.goal import MET_SLACK_GY, MET_SLACK_PCT, ClinicalGoal, GoalKind
from core.progress import check_cancel, report


@dataclass(frozen=True)
class RefineOptions:
    """Settings of :func:`refine_plan` (see the module docstring)."""

    max_rounds: int = 4
    spare_pct: float = 5.0          # an OAR goal met by more than this (% of its value) is pushed
    step_pct: float = 5.0           # first push: this % under what the goal achieved
    max_push_pct: float = 25.0      # never aim more than this % beyond a goal's value
    min_gain_pct: float = 0.5       # a goal "improved" by at least this % of its value
    tolerance_pct: float = 0.5      # a goal may get this much worse (% of its value) in an accepted round
    hold_oars: bool = True          # met OAR goals not pushed are held at what they achieved
    check_delivered: bool = True    # also judge P1 on the sequenced, normalised plan (needs the beams)
    level_maxiter: int | None = 150  # optimizer iterations per priority level in a round (None: the optimizer's)
    final_maxiter: int | None = None  # final-level budget of a round (None: the optimizer's, a quarter when warm)

    def __post_init__(self):
        if int(self.max_rounds) != self.max_rounds or self.max_rounds < 0:
            raise InputError(f"the number of refinement rounds must be a whole number >= 0, got {self.max_rounds}")
        for k in ("spare_pct", "step_pct", "max_push_pct", "min_gain_pct", "tolerance_pct"):
            v = getattr(self, k)
            if not (np.isfinite(v) and 0 <= v <= 100):
                raise InputError(f"refinement setting {k} must lie in 0 ... 100 %, got {v}")
        if self.step_pct <= 0:
            raise InputError("refinement step_pct must be > 0")


@dataclass(eq=False)
class RefineResult:
    """The best plan found and the log of every round.

    Attributes
    ----------
    weights : (n_beamlets,) float32 ndarray, MU (the best plan's ideal fluence)
    dose_gy : (patient grid) float32 ndarray, Gy, of ``weights``
    goals : list of ClinicalGoal, the clinical goals (values as the planner gave them)
    working_goals : list of ClinicalGoal, the values the best plan was optimized for
    goal_results, first_results : list of GoalResult on ``goals``: best plan / first plan
    first_dose_gy : (patient grid) float32 ndarray, Gy, the first plan's (ideal-fluence) dose
    accepted : list of dict, one per accepted round: ``round``, ``weights`` (MU),
        ``working_goals``, ``goal_results`` (for a plan history)
    optimization : OptimizationResult of the best round, or None when no round was accepted
    rounds : list of dict, one per round (see :meth:`to_log`)
    stop_reason : str
    timings_s : dict (``total``, ``optimize`` summed over rounds)
    cancelled : bool
    """

    weights: np.ndarray
    dose_gy: np.ndarray
    goals: list
    working_goals: list
    goal_results: list
    first_results: list
    optimization: object
    rounds: list
    stop_reason: str
    timings_s: dict
    cancelled: bool = False
    oar_structures: tuple = ()
    warnings: list = field(default_factory=list)
    first_dose_gy: np.ndarray | None = None
    accepted: list = field(default_factory=list)

    @property
    def all_p1_met(self) -> bool:
        return all(bool(r.met) for r in self.goal_results if r.goal.priority == 1 and r.met is not None)

    @property
    def n_accepted(self) -> int:
        return sum(1 for r in self.rounds if r["accepted"])

    def goal_changes(self) -> list[dict]:
        """Per clinical goal: first and final achieved value and the change (goal unit)."""
        out = []
        for a, b in zip(self.first_results, self.goal_results):
            d = a.goal.to_dict()
            d.update(first=_r(a.achieved), final=_r(b.achieved), change=_r(_diff(b.achieved, a.achieved)),
                     first_met=a.met, final_met=b.met, better=_better_by(a.goal, a.achieved, b.achieved))
            out.append(d)
        return out

    def oar_change_by_structure(self) -> dict:
        """OAR structure -> mean change of its goals' achieved values (Gy, or % for Vx goals;
        negative = better), over the upper-bound goals on structures of role OAR."""
        acc: dict = {}
        for a, b in zip(self.first_results, self.goal_results):
            g = a.goal
            if (g.structure in self.oar_structures and _is_upper(g) and a.achieved is not None
                    and b.achieved is not None):
                acc.setdefault(g.structure, []).append(b.achieved - a.achieved)
        return {k: round(float(np.mean(v)), 4) for k, v in acc.items()}

    def to_log(self) -> dict:
        """The ``refine_log.json`` document."""
        return {"stop_reason": self.stop_reason, "rounds": self.rounds, "accepted_rounds": self.n_accepted,
                "cancelled": self.cancelled, "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
                "all_p1_met_first": all(bool(r.met) for r in self.first_results
                                        if r.goal.priority == 1 and r.met is not None),
                "all_p1_met": self.all_p1_met, "goals": self.goal_changes(),
                "working_goals": [g.to_dict() for g in self.working_goals],
                "oar_change_by_structure": self.oar_change_by_structure(), "warnings": list(self.warnings)}


# -- goal arithmetic -----------------------------------------------------------------------------
def _r(v):
    return None if v is None else round(float(v), 4)


def _diff(a, b):
    return None if a is None or b is None else a - b


def _is_upper(g: ClinicalGoal) -> bool:
    return g.kind is not GoalKind.ALARA and not g.kind.is_lower_bound


def _floor(g: ClinicalGoal) -> float:
    """The smallest change of a goal's value that counts (its display slack, 10x)."""
    return 10 * (MET_SLACK_PCT if g.kind is GoalKind.MAX_VOLUME_AT_DOSE else MET_SLACK_GY)


def _amount(g: ClinicalGoal, pct: float) -> float:
    """``pct`` % of the goal's value, at least :func:`_floor` (for small or zero values)."""
    return max(abs(g.value or 0.0) * pct / 100.0, _floor(g))


def _gain(g: ClinicalGoal, before: float | None, after: float | None) -> float:
    """How much better ``after`` is than ``before`` (goal unit; negative = worse)."""
    if before is None or after is None:
        return 0.0
    if g.kind is GoalKind.ALARA or _is_upper(g):
        return before - after
    return after - before


def _better_by(g, before, after):
    d = _gain(g, before, after)
    return None if before is None or after is None else round(float(d), 4)


def _aim(g: ClinicalGoal, value: float) -> ClinicalGoal:
    """``g`` aiming at ``value`` (clipped to what a goal can hold)."""
    if g.kind is GoalKind.MAX_VOLUME_AT_DOSE:
        value = float(np.clip(value, 0.0, 99.99))
    else:
        value = float(max(value, 0.0))
        if g.kind.is_lower_bound:
            value = max(value, 0.01)
    return g.with_value(round(value, 4))


# -- the refinement -------------------------------------------------------------------------------
def _dose_of(patient, dij, weights) -> np.ndarray:
    from core.geometry import resample_to_grid

    dose = dij.dose_on_grid(np.asarray(weights, dtype=np.float32))
    if not dij.grid.same_as(patient.grid):
        dose = resample_to_grid(dose, dij.grid, patient.grid, order=1)
    return dose.astype(np.float32)


class _GridOffsets:
    """How much each goal's value differs on the optimizer's dose grid from the patient grid.

    The optimizer evaluates goals on the dose-influence matrix's grid (masks resampled to
    it, nearest voxel); plans are judged on the patient grid (dose resampled linearly).
    With a coarser dose grid the two differ (measured on OpenKBP pt_202, 3 mm dose grid:
    PTV D95 by up to 0.6 Gy), so a goal held "at what it achieved" would be held at the
    wrong value. ``offsets`` gives ``achieved on the dose grid - achieved on the patient
    grid`` per goal for a fluence; the refinement adds it to every value it aims at.
    Zero when the two grids are the same.
    """

    def __init__(self, patient, dij):
        self.same = dij.grid.same_as(patient.grid)
        self.patient, self.dij = patient, dij
        self.rows: dict = {}

    def _rows(self, name: str) -> np.ndarray:
        if name not in self.rows:
            from core.geometry import resample_to_grid

            m = self.patient.structures[name].mask
            md = resample_to_grid(m.astype(np.uint8), self.patient.grid, self.dij.grid, order=0) > 0
            self.rows[name] = self.dij.voxel_mask(md)
        return self.rows[name]

    def offsets(self, goals, weights, results) -> list[float]:
        if self.same:
            return [0.0] * len(goals)
        import torch

        from core.goals.evaluate import achieved_value

        d = self.dij.dose(torch.as_tensor(np.asarray(weights, dtype=np.float32),
                                          device=self.dij.matrix.device)).detach().cpu().numpy()
        out = []
        for g, r in zip(goals, results):
            rows = self._rows(g.structure)
            if g.kind is GoalKind.ALARA or r.achieved is None or not rows.any():
                out.append(0.0)
                continue
            out.append(float(achieved_value(g, d[rows], self.dij.grid.voxel_volume_cc) - r.achieved))
        return out


def _evaluate(patient, goals, dose) -> list[GoalResult]:
    masks = {n: s.mask for n, s in patient.structures.items()}
    return evaluate_goals(goals, dose, masks, patient.grid.voxel_volume_cc)


def _judge(goals, best: list, cand: list, first: list, oar: set, opts: RefineOptions,
           level: int | None = None, asked: bool = False) -> tuple[bool, str, list]:
    """Accept ``cand`` (a round that pushed priority ``level``) over ``best``?

    Returns (accepted, reason, indices of the goals that improved). Unmet goals below
    ``level`` that are no OAR goals may pay for it, as their priority says. When the
    planner ``asked`` for the push (a focus, e.g. a new patch), every goal at ``level`` or
    below may pay as long as it stays met: the planner's priority decides, as it does in
    the optimizer.
    """
    broken_p1 = [b.goal.label for b, c in zip(best, cand) if b.goal.priority == 1 and b.met and not c.met]
    if broken_p1:
        return False, f"would break met P1 goal(s): {'; '.join(broken_p1)}", []
    # a met goal stays met at the round's level and above, and always on an OAR; a met
    # lower-priority helper goal (a ring) may fail for a higher one, as priorities mean
    broken = [b.goal.label for b, c in zip(best, cand) if b.met and c.met is False
              and (level is None or b.goal.priority <= level or b.goal.structure in oar)]
    if broken:
        return False, f"would make met goal(s) fail: {'; '.join(broken)}", []
    worse = []
    for b, c, f in zip(best, cand, first):
        g = b.goal
        if b.achieved is None or c.achieved is None or g.kind is GoalKind.ALARA:
            continue
        tol = _amount(g, opts.tolerance_pct)
        oar_goal = g.structure in oar and _is_upper(g)
        if asked and level is not None and g.priority >= level:
            continue                           # the planner's own trade, at its priority
        if b.met and not oar_goal:
            continue                           # a met target goal may spend its room
        if not oar_goal and level is not None and g.priority > level:
            continue                           # an unmet lower-priority goal: its priority lets it pay
        if _gain(g, b.achieved, c.achieved) < -tol:
            worse.append(f"{g.label} ({b.achieved:.2f} -> {c.achieved:.2f})")
        elif f.achieved is not None and _gain(g, f.achieved, c.achieved) < -tol:
            worse.append(f"{g.label} (first plan {f.achieved:.2f} -> {c.achieved:.2f})")
    improved = [i for i, (b, c) in enumerate(zip(best, cand))
                if b.goal.kind is not GoalKind.ALARA and b.achieved is not None and c.achieved is not None
                and _gain(b.goal, b.achieved, c.achieved) >= _amount(b.goal, opts.min_gain_pct)]
    if worse:
        return False, f"would make goal(s) worse: {'; '.join(worse)}", improved
    if not improved:
        return False, "no goal improved", []
    return True, "accepted", improved


def _hold(g: ClinicalGoal, r: GoalResult, cur: float, level: int, oar: set, opts: RefineOptions,
          margin_pct: float) -> float | None:
    """The value a goal nobody pushes this round is held at, or None to leave it as it is.

    The optimizer holds a goal of the round's level or above as a constraint at its value
    tightened by its margin (``margin_pct``), so such a goal is aimed at
    ``(achieved -+ tolerance / 2) / (1 -+ margin)``: the constraint then sits half the
    tolerance on the good side of what it achieved (a penalty gives a little). A
    goal below the round's level is no constraint there: it is aimed at what it achieved
    give or take ``tolerance_pct``, so its level is skipped unless the round moved it by
    more than the judge allows, and then re-run to bring it back.

    Held so: every met OAR goal (pushing the others cannot buy their gains with it) and
    every unmet goal. Met target goals keep their own value (they only have to stay met).
    """
    if g.kind is GoalKind.ALARA or r.met is None:
        return None
    upper = _is_upper(g)
    if r.met and not (opts.hold_oars and upper and g.structure in oar):
        if g.kind.is_lower_bound and cur != g.value:
            return g.value                     # a coverage goal pushed while unmet: back to its value
        return None
    m = margin_pct / 100.0
    if g.priority <= level:
        # the constraint is a penalty, so its equilibrium gives a little: aim half the
        # tolerance to the good side so that it settles on what was achieved
        half = _amount(g, opts.tolerance_pct) / 2
        h = (r.achieved - half) / (1 - m) if upper else (r.achieved + half) / (1 + m)
    else:
        tol = _amount(g, opts.tolerance_pct)
        h = r.achieved + tol if upper else r.achieved - tol
    if r.met:
        h = min(h, g.value)                    # never looser than the goal itself
    return h if abs(h - cur) > 1e-6 else None


def _pushable(goals, best_res, first_res, frozen, oar, opts, focus) -> dict:
    """Priority -> indices of the goals a round at that priority may push: unmet goals
    not given up, and OAR goals (priority 2 or lower) met with more than ``spare_pct`` %
    to spare; only goals on ``focus`` structures when given."""
    out: dict = {}
    for i, (g, r) in enumerate(zip(goals, best_res)):
        if i in frozen or g.kind is GoalKind.ALARA or r.met is None or (focus is not None and g.structure not in focus):
            continue
        spare = (r.met and _is_upper(g) and g.structure in oar and g.priority >= 2
                 and g.value - r.achieved > _amount(g, opts.spare_pct))
        if not r.met or spare:
            out.setdefault(g.priority, []).append(i)
    return out


def _propose(goals, working, best_res, first_res, step, push, level, oar, opts, margin_pct, push_res=None):
    """The next round's working goals: ``(cand, changes, holds)``.

    The goals in ``push`` are pushed: an unmet one aimed past its value by its shortfall
    (scaled by its step), a met OAR goal with room ``step`` % under what it achieved.
    Every other goal is held (:func:`_hold`). ``push_res`` (default ``best_res``) says
    which goals are unmet and by how much (:func:`_push_results`).
    """
    cand = list(working)
    changes, holds = [], []
    push_res = best_res if push_res is None else push_res
    for i, (g, r) in enumerate(zip(goals, best_res)):
        cur = working[i].value
        if i in push:
            u = push_res[i]
            if not u.met:
                gap = abs(u.achieved - g.value) * step[i] / opts.step_pct
                cap = _amount(g, opts.max_push_pct)
                if _is_upper(g):
                    v = max(min(cur, g.value) - gap, g.value - cap)
                else:
                    v = min(max(cur, g.value) + gap, g.value + cap)
                why = f"unmet ({u.achieved:.2f}{'' if u is r else ' delivered'}): aimed past its value by the shortfall"
            else:
                by = max(abs(r.achieved) * step[i] / 100.0, _floor(g))
                v = max(r.achieved - by, first_res[i].achieved * (1 - opts.max_push_pct / 100.0))
                why = (f"met with {g.value - r.achieved:.2f} {g.unit} to spare: "
                       f"aimed {step[i]:g} % under {r.achieved:.2f}")
            if abs(v - cur) > 1e-6:
                cand[i] = _aim(g, v)
                changes.append({"goal": g.label, "from": _r(cur), "to": cand[i].value, "why": why, "index": i})
                continue
        h = _hold(g, r, cur, level, oar, opts, margin_pct)
        if h is not None:
            cand[i] = _aim(g, h)
            holds.append({"goal": g.label, "from": _r(cur), "to": cand[i].value})
    return cand, changes, holds


def _push_results(best_res, best_del):
    """The results that decide what a round pushes: the optimizer's, except where the plan
    as delivered misses a goal (then that shortfall). Sequencing and MU normalisation move
    a near-max by about 1 %: a patch pushed until its fluence dose met the goal by 0.3 Gy
    was delivered 0.4 Gy over it, and on the fluence alone it counted as done."""
    if best_del is None:
        return best_res
    return [d if d.met is False and d.achieved is not None else b for b, d in zip(best_res, best_del)]


def refine_plan(patient, goals, dij, start_weights, *, options: RefineOptions | None = None,
                optimizer_options=None, focus=None, device=None, progress=None, cancel=None) -> RefineResult:
    """Refine a plan by rounds of goal-value adjustments and warm re-optimization.

    Parameters
    ----------
    patient : core.patient.Patient
    goals : sequence of ClinicalGoal
        The clinical goals (structure names as in the patient); a plan is judged on these.
    dij : core.dose.influence.DoseInfluence
        The plan's dose-influence matrix (reused by every round).
    start_weights : (n_beamlets,) ndarray of MU, or an OptimizationResult
        The plan to start from (its ideal fluence).
    options : RefineOptions, optional
    optimizer_options : core.optimization.fluence.OptimizerOptions, optional
        The plan's optimizer settings (``level_maxiter`` / ``final_maxiter`` are replaced
        by the RefineOptions' when those are set).
    focus : iterable of str, optional
        Push only goals on these structures (e.g. a new patch); every other goal is held.
    device : str or torch.device, optional
    progress, cancel : see :mod:`core.progress`

    Returns
    -------
    RefineResult
        On cancel, :class:`Cancelled` is raised whose ``result`` is the RefineResult of the
        best plan so far (``cancelled=True``).
    """
    from dataclasses import replace

    from core.optimization.fluence import OptimizationResult, OptimizerOptions, optimize_plan
    from core.patient import StructureRole

    t0 = time.perf_counter()
    opts = options or RefineOptions()
    goals = list(goals)
    if not goals:
        raise InputError("no clinical goals to refine")
    for g in goals:
        if g.structure not in patient.structures:
            raise InputError(f"'{g.label}': the patient has no structure named '{g.structure}'")
    opt_opts = optimizer_options or OptimizerOptions()
    over = {k: v for k, v in (("level_maxiter", opts.level_maxiter), ("final_maxiter", opts.final_maxiter))
            if v is not None}
    if over:
        opt_opts = replace(opt_opts, **over)
    w0 = start_weights.weights if isinstance(start_weights, OptimizationResult) else start_weights
    w0 = np.asarray(w0, dtype=np.float32).reshape(-1)
    if w0.size != dij.n_beamlets:
        raise InputError(f"the plan's fluence has {w0.size} beamlets, the dose matrix {dij.n_beamlets}: "
                         "they belong to different plans")
    oar = {n for n, s in patient.structures.items() if s.role is StructureRole.OAR}
    if focus is not None:
        focus = set(focus)
        unknown = sorted(focus - set(patient.structures))
        if unknown:
            raise InputError(f"refinement focus: no structure named {', '.join(unknown)}")

    grid_offsets = _GridOffsets(patient, dij)
    best_w = w0
    best_dose = _dose_of(patient, dij, w0)
    best_res = _evaluate(patient, goals, best_dose)
    first_res = list(best_res)
    first_dose = best_dose
    # P1 is judged on the plan as delivered too: sequencing costs a target ~0.5-2 % of D95,
    # so a round that spends the ideal fluence's P1 margin could fail P1 once sequenced
    max_rx = max((p.dose_gy for p in patient.prescriptions), default=None)
    limit_gy = opt_opts.max_dose_pct / 100.0 * max_rx if max_rx else None
    check_delivered = opts.check_delivered and getattr(dij, "beams", None) is not None
    best_del = deliver(patient, goals, dij, w0, limit_gy)["results"] if check_delivered else None
    best_opt = None
    working = list(goals)                  # what the best plan was optimized for
    step = {i: opts.step_pct for i in range(len(goals))}
    frozen: set = set()                    # goals left alone (stalled, or their steps ran out)
    pushes_without_gain: dict = {}
    rounds: list = []
    accepted: list = []
    rejections: dict = {}                  # priority -> rejections in a row
    last_level = None
    stop = "the round limit was reached"
    t_opt = 0.0
    warnings: list = []

    def result(cancelled=False) -> RefineResult:
        return RefineResult(best_w, best_dose, goals, working, best_res, first_res, best_opt, rounds, stop,
                            {"optimize": t_opt, "total": time.perf_counter() - t0}, cancelled, tuple(sorted(oar)),
                            warnings, first_dose, accepted)

    report(progress, 0, 1, "refinement: first plan evaluated")
    rnd = 0
    while rnd < opts.max_rounds:
        if cancel is not None and cancel.cancelled:
            stop = "cancelled"
            raise Cancelled(result=result(True))
        # -- propose -------------------------------------------------------------------
        push_res = _push_results(best_res, best_del)
        pushable = _pushable(goals, push_res, first_res, frozen, oar, opts, focus)
        if not pushable:
            stop = "no goal left that can improve"
            break
        # one priority level per round, in turn from the highest: the optimizer then runs
        # that level only (every other goal is held, so the other levels are skipped)
        levels = sorted(pushable)
        level = next((p for p in levels if last_level is None or p > last_level), levels[0])
        last_level = level
        cand, changes, holds = _propose(goals, working, best_res, first_res, step, set(pushable[level]), level,
                                        oar, opts, opt_opts.margin_pct, push_res)
        phase = f"P{level}"
        if not changes:
            frozen.update(pushable[level])     # nothing to move there any more
            continue
        rnd += 1
        # -- re-optimize warm ------------------------------------------------------------
        tr = time.perf_counter()
        stage = progress.stage((rnd - 1) / opts.max_rounds, rnd / opts.max_rounds, f"refine round {rnd}") \
            if progress is not None else None
        # the optimizer sees its own dose grid: aim at what each value is there
        off = grid_offsets.offsets(goals, best_w, best_res)
        aims = [g if g.kind is GoalKind.ALARA or not o else _aim(g, g.value + o) for g, o in zip(cand, off)]
        try:
            res = optimize_plan(patient, aims, dij, options=opt_opts, warm_start=best_w, device=device,
                                progress=stage, cancel=cancel)
        except Cancelled:
            stop = "cancelled"
            raise Cancelled(result=result(True)) from None
        t_opt += res.timings_s.get("total", 0.0)
        cand_res = _evaluate(patient, goals, res.dose_gy)
        ok, reason, improved = _judge(goals, best_res, cand_res, first_res, oar, opts, level, focus is not None)
        cand_del = None
        if ok and check_delivered:
            cand_del = deliver(patient, goals, dij, res.weights, limit_gy)["results"]
            lost = [b.goal.label for b, c in zip(best_del, cand_del) if b.goal.priority == 1 and b.met and not c.met]
            if lost:
                ok, reason = False, f"the delivered (sequenced) plan would break met P1 goal(s): {'; '.join(lost)}"
        moved = [{"goal": goals[i].label, "from": _r(b.achieved), "to": _r(c.achieved),
                  "better_by": _better_by(goals[i], b.achieved, c.achieved)}
                 for i, (b, c) in enumerate(zip(best_res, cand_res))
                 if b.achieved is not None and c.achieved is not None
                 and abs(c.achieved - b.achieved) >= _floor(goals[i])]
        rounds.append({"round": rnd, "phase": phase, "accepted": ok, "reason": reason,
                       "changes": [{k: v for k, v in c.items() if k != "index"} for c in changes],
                       "held": holds,
                       "moved": moved, "improved": [goals[i].label for i in improved],
                       "all_p1_met": all(bool(r.met) for r in cand_res if r.goal.priority == 1 and r.met is not None),
                       "warm_start": True, "iterations": res.iterations,
                       "optimizer_levels": res.levels, "optimizer_warnings": list(res.warnings),
                       "grid_offsets": {goals[i].label: round(o, 3) for i, o in enumerate(off) if abs(o) >= 0.005},
                       "timings_s": {"optimize": round(res.timings_s.get("total", 0.0), 3),
                                     "prepare": round(res.timings_s.get("prepare", 0.0), 3),
                                     "round": round(time.perf_counter() - tr, 3)}})
        changed = {c["index"] for c in changes}
        given_up = []
        if ok:
            for i in changed:
                if i in improved:
                    pushes_without_gain.pop(i, None)
                else:
                    pushes_without_gain[i] = pushes_without_gain.get(i, 0) + 1
                    if pushes_without_gain[i] >= 2:
                        given_up.append(i)     # pushed twice and nothing came of it
            best_w, best_dose, best_res, best_opt, working = res.weights, res.dose_gy, cand_res, res, cand
            best_del = cand_del if cand_del is not None else best_del
            accepted.append({"round": rnd, "weights": res.weights, "working_goals": list(cand),
                             "goal_results": cand_res})
            rejections[level] = 0
        else:
            rejections[level] = rejections.get(level, 0) + 1
            if reason == "no goal improved" or rejections[level] >= 2:
                # these goals cannot move without a cost the judge refuses: give them up
                given_up.extend(changed)
                rejections[level] = 0
            else:
                for i in changed:
                    step[i] /= 2.0
        for i in given_up:
            frozen.add(i)
        # a goal given up is aimed at its own value again (the next round holds it)
        working = [goals[i] if i in given_up else w for i, w in enumerate(working)]
        rounds[-1]["given_up"] = [goals[i].label for i in sorted(set(given_up))]
        report(progress, rnd, opts.max_rounds, f"refine round {rnd}: {'accepted' if ok else 'rejected'}")
    report(progress, 1, 1, "refinement done")
    return result()


def deliver(patient, goals, dij, weights, max_dose_limit_gy: float | None, progress=None, cancel=None) -> dict:
    """The plan a fluence becomes (:func:`core.pipeline.deliver_fluence`: sequenced, dose
    from the segments, MU normalised, goals evaluated), as the pipeline finishes a plan."""
    from core.pipeline import deliver_fluence

    return deliver_fluence(patient, goals, dij, weights, max_dose_limit_gy, progress=progress, cancel=cancel)


def refined_plan_result(patient, site, goals, dij, refined: RefineResult, *, optimizer_options=None,
                        load_s: float = 0.0, timings_s: dict | None = None, progress=None, cancel=None):
    """The refined plan as a :class:`core.pipeline.PlanResult`, for
    :func:`core.pipeline.write_plan_outputs`: finished by the pipeline's own
    :func:`core.pipeline.deliver_fluence` and :func:`core.pipeline.plan_metrics`
    (``tests/app/test_cli_refine.py`` checks that a refinement of zero rounds reproduces the
    plan's dose and metrics)."""
    from dataclasses import replace

    from core.device import device_name
    from core.optimization.fluence import OptimizationResult, OptimizerOptions
    from core.patient import Dose
    from core.pipeline import PlanResult, plan_metrics

    timings = dict(timings_s or {})
    opt = refined.optimization
    max_rx = max((p.dose_gy for p in patient.prescriptions), default=None)
    if opt is None:  # no round accepted: the first plan, as it was
        limit_pct = (optimizer_options or OptimizerOptions()).max_dose_pct
        opt = OptimizationResult(refined.weights, refined.dose_gy, patient.grid, refined.goal_results,
                                 refined.all_p1_met, 0, {}, [], float(refined.dose_gy.max()),
                                 limit_pct / 100.0 * max_rx if max_rx else float(refined.dose_gy.max()),
                                 warm_start=True)
    else:
        opt = replace(opt, goal_results=refined.goal_results, all_p1_met=refined.all_p1_met)
    dv = deliver(patient, goals, dij, refined.weights, opt.max_dose_limit_gy, progress=progress, cancel=cancel)
    timings.update(dv["timings_s"])
    timings["load"] = float(load_s)
    timings["total"] = sum(v for k, v in timings.items() if k != "total")
    optimizer = {"iterations": sum(r["iterations"] for r in refined.rounds), "levels": [],
                 "conflicts": list(getattr(refined.optimization, "conflicts", []) or [])}
    metrics = plan_metrics(patient, site, dij, dv, timings, refined.dose_gy, refined.goal_results,
                           refined.all_p1_met, optimizer, device_name(dij.matrix.device), True, [], None,
                           list(refined.warnings), refined=True)
    check_cancel(cancel)
    return PlanResult(patient, site, list(goals), dij, opt, dv["segmented"], dv["deliverable"],
                      Dose(refined.dose_gy, patient.grid, "ideal fluence"), Dose(dv["dose_gy"], patient.grid, "plan"),
                      None, metrics, list(refined.warnings))


__all__ = ["RefineOptions", "RefineResult", "refine_plan", "refined_plan_result"]
