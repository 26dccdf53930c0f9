"""Fluence optimization against a prioritized clinical goal list (cold or warm start).

Strict priorities (lexicographic optimization)
----------------------------------------------
Priority levels are optimized one after the other, highest first. At level ``k`` the
objective is the sum of the level-``k`` goal penalties (:mod:`core.optimization.objectives`,
each aimed at its value tightened by ``margin_pct``; the sum is scaled to 1 at the
level's start) and every goal of a higher level becomes a constraint, a penalty of
weight ``rho`` (default 100):

* a higher goal that was **met** is held at its value tightened by ``margin_pct``;
* a higher goal that was **not met** is held at the value it achieved (it may not get worse);
* an "as low as possible" goal is held at what its level achieved plus ``alara_slack_pct``.

A level stops when its goals are met with half the margin to spare, when its objective
stalls, or at ``level_maxiter``. Its result is then **checked** on the exact goal
definitions: if a higher goal that was met before the level is no longer met (or the
global maximum is exceeded), the violated constraints' targets are shifted by their
violation (as multipliers do in an augmented Lagrangian) and ``rho`` is raised, up to
``max_repairs`` times. If a met higher goal is still broken, the level keeps only the
part of its change that keeps every met higher goal met: the largest ``t`` (bisection)
with the goals met at ``x0 + t (x1 - x0)`` -- exact, since dose is linear in the fluence
and ``t = 0`` is the level's start. So a lower-priority goal can never make a met
higher-priority goal fail. A final level then improves the plan without touching any goal
(constraints 10x stiffer): conformity (dose fall-off around each target,
:mod:`core.optimization.conformity`), lower dose to every organ at risk that has a goal,
and fluence smoothness for delivery. The global maximum dose (default 106 % of the highest
prescription) is a constraint at every level.

Warm start: levels whose goals are all met are skipped; the others get a third of their
iteration budget and the final level a quarter (they start from a plan that was already
optimized level by level and polished).

Numerics: the dose is ``A w`` with ``A`` the dose-influence matrix (rows restricted to
the voxels that matter: every goal structure, everything within ``near_mm`` of a target,
and every ``far_stride``-th voxel elsewhere for the maximum-dose limit); penalties are
evaluated in float64 by torch autograd on the dose vector and mapped back with a
pre-transposed ``A^T`` (int32-indexed sparse CSR matvecs on CPU or CUDA); each level is
solved by L-BFGS-B (SciPy) with the bound ``w >= 0``, so every iterate is a valid fluence.
Variables are scaled by the cold-start weight (uniform fluence giving the highest
prescription as mean target dose) so that they are of order 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from core.errors import Cancelled, InputError, OptimizationError
from core.goals.evaluate import evaluate_goals, is_met
from core.goals.goal import ClinicalGoal, GoalKind
from core.optimization._blas import single_thread_blas, torch_threads
from core.optimization.batched import GoalBatch
from core.optimization.cuda_graphs import GraphedEvaluations
from core.optimization.conformity import FalloffSpec, falloff_limits, homogeneity_limits
from core.optimization.objectives import GoalTerm, achieved_torch, goal_penalty, neighbour_pairs
from core.progress import check_cancel, report


@dataclass(frozen=True)
class OptimizerOptions:
    """Settings of :func:`optimize_fluence` (defaults are the published-system values where one exists)."""

    max_dose_pct: float = 106.0          # global maximum dose, % of the highest prescription
    margin_pct: float = 0.5              # safety margin on met goals held as constraints
    constraint_weight: float = 100.0     # rho: weight of the constraint penalties (x3 per repair)
    max_repairs: int = 4                 # constraint-shift retries before a level's result is rejected
    repair_maxiter_frac: float = 0.25    # a repair's iteration budget, as a fraction of its level's
    max_dose_tol_pct: float = 0.9        # the maximum counts as kept up to this much above it (106 -> 106.95 %)
    # weight of the global-maximum penalty (per target voxel). Measured at 10 on pt_230: 1471
    # iterations instead of 1749 (fewer repairs), organ means 0.4-0.8 Gy higher; TG-119 640
    # instead of 580. The repairs stay the way the limit is enforced.
    max_dose_weight: float = 1.0
    # In the goal levels after the first, the max_dose_hottest hottest voxels' excess over
    # the limit is also penalised, undiluted: the sum over target voxels lets a few hot
    # voxels through, and each repair of them cost a quarter level (pt_230: 8 repairs, all
    # for the maximum, 2.6 evaluations per L-BFGS-B iteration; with it 1 repair, 1.5
    # evaluations, 1244 instead of 1749 iterations, organ means no higher). Not in the
    # first level: from a uniform fluence it slowed it down (TG-119: 269 instead of 142
    # iterations); not in the final level: there it kept the toy's final level from
    # settling (a warm restart moved its core D10 by 1.4 Gy).
    max_dose_hottest: int = 8
    max_dose_hottest_weight: float = 1.0
    # ... and in any level's repairs of the global maximum, the first and the final level
    # included: pt_233's final level needed 4 such repairs (75 iterations each) and then 1,
    # 450 instead of 600 iterations, organ means and target coverage no worse; TG-119 and
    # the toy's warm start unchanged (their final levels repair the maximum once or never)
    max_dose_hottest_repairs: bool = True
    warmup_maxiter: int = 0              # cold start: weighted pass over all goals before the levels
    normalize_levels: bool = False       # scale each level's objective to 1 at its start (TG-119: P1 then failed)
    shift_repairs: bool = True           # repairs shift violated constraint targets (multiplier-like)
    repair_rho_factor: float = 3.0       # and multiply rho by this
    final_rho_factor: float = 10.0       # rho of the final (conformity / OAR / smoothness) level, x rho
    level_maxiter: int = 300             # L-BFGS-B iterations per priority level
    final_maxiter: int = 300             # iterations of the final (conformity/OAR/smoothness) level
    stall_window: int = 15               # a level stops when the objective fell by less than
    stall_rtol: float = 1e-3             # stall_rtol (relative) over the last stall_window iterations
    conformity: FalloffSpec | None = field(default_factory=FalloffSpec)
    # Measured at 5: TG-119 van't Riet CI at the reference coverage 0.73 -> 0.87 (core D10
    # 19.1 -> 21.5 Gy, +25 % iterations), pt_201 PTV70 CI 0.74 -> 0.84 (parotid means +0.3 /
    # +1.6 Gy); but the final level then stops short of its optimum (a warm restart moved the
    # toy's core D10 1.6 Gy), so 1 stays until the final level converges at that weight.
    conformity_weight: float = 1.0
    # final level: target voxels above Rx + homogeneity_pct or below Rx - underdose_pct are
    # penalised. At weight 1 it only trims outliers (TG-119 target D10 53.8 -> 53.7 Gy): the
    # organ push outweighs it; weight 10 cools the target (D10 53.3) but cost pt_201's
    # parotids and larynx 1-2 Gy, so the default leaves the hot spots the goals allow.
    homogeneity_pct: float | None = 3.0
    homogeneity_weight: float = 1.0
    underdose_pct: float | None = 5.0
    # conformity and homogeneity also nudge the goal levels, ranked below every goal (x
    # lower_weight x 0.1 per level before the last x shape_nudge). TG-119 van't Riet CI at
    # the reference coverage 0.71 -> 0.73 (20), 0.77 (50). At full strength in every level
    # it reached 0.90, but in a head-and-neck list that shaped the plan before the organ
    # goals were reached: pt_201 parotid means +6 Gy, pt_206 larynx +12 Gy.
    shape_nudge: float = 20.0
    oar_weight: float = 0.3              # final-level push of mean squared OAR dose
    lower_weight: float = 0.01           # weight of the next level's goals in a level's objective (x0.1 per level)
    oar_stretch_pct: float = 10.0        # organ mean-dose goals below P1 are aimed this much below their value
    smooth_weight: float = 0.02          # fluence smoothness (neighbour differences)
    alara_slack_pct: float = 2.0
    unmet_slack_pct: float = 1.0
    # soft limit on the optimization's wall time (s): once the first level has shown the
    # time an iteration takes, each later level gets an equal share of what is left and
    # stops at its end (after at least min_level_iter iterations), repairs included. The
    # first priority level is never cut.
    time_budget_s: float | None = None
    min_level_iter: int = 30
    # torch threads while optimizing on the CPU (None: as set). An optimization runs
    # hundreds of small tensor operations per evaluation between L-BFGS-B steps in Python;
    # on the 2-core CPU two threads made whole plans 1.8x slower although a lone sparse
    # product is 1.8x faster with them (pt_235: 139.5 s with 2 threads, 75.7 s with 1;
    # pt_233 matrix: A w 16.5 / 9.4 ms with 1 / 2 threads). The dose engine and the
    # prediction keep every thread.
    cpu_threads: int | None = 1
    # ... but the two sparse products of an evaluation, the bulk of its arithmetic, run at
    # this many threads (None: torch's thread count when the optimization starts). TG-119
    # matrix (9 M entries): A w 3.5 / 2.0 ms, A^T g 6.1 / 3.1 ms with 1 / 2 threads;
    # switching the pool costs under a microsecond.
    cpu_product_threads: int | None = None
    # all goals of a level in one segmented evaluation with a hand-written gradient
    # (core.optimization.batched) instead of one autograd graph per goal. None: on CUDA
    # only. There the per-goal graphs cost 17 ms an evaluation in kernel launches against
    # 0.15 ms for the sparse product (H200, pt_201 cold: 35.2 s per goal, 13.3 s batched).
    # On this CPU the two cost about the same per iteration and differ by round-off in
    # their paths: 33 validation plans held every criterion of bench/pipeline.py batched
    # too, in 35.2 s of optimization a case against 37.5 s, but TG-119 cold took 799
    # iterations against 754 (13.2-14.5 s against 12.5-13.7 s over repeated runs, around
    # the bound of 13.6 s), so the CPU keeps the per-goal path. The tests hold the
    # two paths to each other.
    batched_penalties: bool | None = None
    # replay each batched evaluation as one CUDA graph (core.optimization.cuda_graphs).
    # None: wherever the batched path runs on CUDA; a capture that fails or disagrees with
    # the eager evaluation switches graphs off for that optimization.
    cuda_graphs: bool | None = None
    near_mm: float = 20.0                # every voxel this close to a target takes part (conformity)
    far_stride: int = 8                  # and every n-th voxel further away (maximum dose, fall-off)

    def __post_init__(self):
        if not 100.0 <= self.max_dose_pct <= 150.0:
            raise InputError(f"the maximum-dose limit must lie in 100 ... 150 % of the prescription, "
                             f"got {self.max_dose_pct}")
        if self.constraint_weight <= 0 or self.level_maxiter < 1 or self.final_maxiter < 0:
            raise InputError("optimizer weights and iteration limits must be positive")
        if self.far_stride < 1:
            raise InputError("far_stride must be >= 1")
        for name in ("cpu_threads", "cpu_product_threads"):
            n = getattr(self, name)
            if n is not None and n < 1:
                raise InputError(f"{name} must be at least 1, got {n}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise InputError(f"the optimization time budget must be positive, got {self.time_budget_s} s")
        if self.homogeneity_pct is not None and self.homogeneity_pct < 0:
            raise InputError(f"homogeneity_pct must be >= 0, got {self.homogeneity_pct}")


@dataclass(eq=False)
class OptimizationResult:
    """Everything a plan command needs from the optimizer.

    Attributes
    ----------
    weights : (n_beamlets,) float32 ndarray, MU per beamlet, >= 0
    dose_gy : (grid.shape) float32 ndarray, Gy, on ``grid``
    grid : Grid
    goal_results : list of GoalResult, in the order of the goals given
    all_p1_met : bool
    iterations : int  (L-BFGS-B iterations over all levels)
    timings_s : dict  (``prepare``, ``optimize``, ``total``)
    levels : list of dict  (per level: priority, iterations, time_s, accepted, repairs)
    max_dose_gy, max_dose_limit_gy : float
    warm_start, cancelled : bool
    warnings, conflicts : list of str
    """

    weights: np.ndarray
    dose_gy: np.ndarray
    grid: object
    goal_results: list
    all_p1_met: bool
    iterations: int
    timings_s: dict
    levels: list
    max_dose_gy: float
    max_dose_limit_gy: float
    warm_start: bool = False
    cancelled: bool = False
    warnings: list = field(default_factory=list)
    conflicts: list = field(default_factory=list)
    device: str = "cpu"
    normalization: float = 1.0
    cuda_graphs: dict | None = None     # captured / replayed evaluations, and why graphs went off

    @property
    def goals_met(self) -> int:
        return sum(1 for r in self.goal_results if r.met)

    def to_metrics(self) -> dict:
        """The optimizer's part of ``metrics.json`` (``docs/cli.md``)."""
        return {"goals": [r.to_dict() for r in self.goal_results], "all_p1_met": self.all_p1_met,
                "iterations": self.iterations, "warm_start": self.warm_start,
                "max_dose_gy": round(self.max_dose_gy, 3), "max_dose_limit_gy": round(self.max_dose_limit_gy, 3),
                "optimizer_timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
                "levels": self.levels, "warnings": list(self.warnings), "conflicts": list(self.conflicts),
                "optimizer_normalization": round(self.normalization, 5),
                **({"optimizer_cuda_graphs": self.cuda_graphs} if self.cuda_graphs is not None else {})}


# ----------------------------------------------------------------------------------------
def find_p1_conflicts(goals, masks: dict, voxel_cc: float, max_dose_gy: float | None = None) -> list[str]:
    """Pairs of P1 goals that cannot both be met, found from volumes alone.

    A minimum goal "at least fraction f1 of T gets >= v1" and a maximum goal "at most
    fraction f2 of O gets >= v2" with ``v1 > v2`` conflict when the overlap T ∩ O is so
    large that more than ``f2 |O|`` of its voxels must be covered: ``|T∩O| - (|T| - ceil(f1
    |T|)) > floor(f2 |O|)``. Same-structure mean goals conflict when min > max. A P1
    minimum dose above the global maximum-dose limit conflicts with that limit.
    """
    p1 = [g for g in goals if g.priority == 1 and g.kind is not GoalKind.ALARA]
    out = []

    def frac_min(g, n):
        if g.kind is GoalKind.MIN_DOSE_AT_VOLUME:
            if g.volume_pct is not None:
                return g.volume_pct / 100.0
            return max(1, round(g.volume_cc / voxel_cc)) / n
        return None

    def frac_max(g, n):
        if g.kind is GoalKind.MAX_DOSE_AT_VOLUME:
            if g.volume_pct is not None:
                return g.volume_pct / 100.0, g.dose_gy
            return max(1, round(g.volume_cc / voxel_cc)) / n, g.dose_gy
        if g.kind is GoalKind.MAX_VOLUME_AT_DOSE:
            return g.volume_pct / 100.0, g.dose_gy
        return None

    for a in p1:
        ma = masks.get(a.structure)
        if ma is None or not ma.any():
            continue
        nt = int(ma.sum())
        if max_dose_gy is not None and a.kind.is_lower_bound and a.dose_gy > max_dose_gy:
            out.append(f"'{a.label}' asks for more than the global maximum dose of {max_dose_gy:.2f} Gy")
        for b in p1:
            if a is b:
                continue
            mb = masks.get(b.structure)
            if mb is None or not mb.any():
                continue
            if a.kind is GoalKind.MIN_MEAN and b.kind is GoalKind.MAX_MEAN and a.structure == b.structure:
                if a.dose_gy > b.dose_gy:
                    out.append(f"'{a.label}' and '{b.label}' cannot both hold")
                continue
            f1 = frac_min(a, nt)
            fm = frac_max(b, int(mb.sum()))
            if f1 is None or fm is None:
                continue
            f2, v2 = fm
            if not (a.dose_gy > v2 or (b.kind is GoalKind.MAX_VOLUME_AT_DOSE and a.dose_gy >= v2)):
                continue
            no = int(mb.sum())
            nov = int(np.count_nonzero(ma & mb))
            must = nov - (nt - int(np.ceil(f1 * nt - 1e-9)))
            allowed = int(np.floor(f2 * no + 1e-9))
            if b.kind is GoalKind.MAX_DOSE_AT_VOLUME and b.volume_cc is not None:
                allowed = max(allowed, 1)
            if must > allowed:
                out.append(f"'{a.label}' and '{b.label}' cannot both hold: {nov} voxels lie in both "
                           f"structures, at least {must} of them must get >= {a.dose_gy:g} Gy, "
                           f"but at most {allowed} of '{b.structure}' may")
    return out


def _to_scipy_csr(matrix):
    """torch sparse CSR (any device) -> scipy.sparse.csr_matrix float32."""
    import scipy.sparse as sp
    import torch

    m = matrix
    if m.layout != torch.sparse_csr:
        m = m.to_sparse_csr()
    m = m.cpu()
    return sp.csr_matrix((m.values().numpy().astype(np.float32, copy=False), m.col_indices().numpy(),
                          m.crow_indices().numpy()), shape=tuple(m.shape))


def _from_scipy_csr(csr, device):
    import torch

    csr = csr.tocsr()
    csr.sort_indices()
    # int32 indices take torch's MKL / cuSPARSE path: ~5x faster matvecs than int64 on CPU
    it = np.int32 if csr.nnz < 2 ** 31 - 1 else np.int64
    # copy=False: on the CPU the tensor shares the arrays of ``csr`` (no second copy)
    from core.dose.csr import csr_tensor

    return csr_tensor(torch.from_numpy(csr.indptr.astype(it, copy=False)),
                      torch.from_numpy(csr.indices.astype(it, copy=False)),
                      torch.from_numpy(csr.data.astype(np.float32, copy=False)), csr.shape, device)




#: below this fraction of non-zero voxel gradients, A^T g gathers those rows (CPU)
GATHER_MAX_FRAC = 0.1


class _Stop(Exception):
    pass


class _Done(Exception):
    pass


@dataclass
class _Level:
    priority: int | None                       # None: the final improvement level (or the warm-up)
    objective: list                            # [(term_index, value, weight)]
    constraints: list                          # [(term_index, value)]
    rho: float
    final: bool = False
    obj_norm: float = 1.0                      # 1 / objective at the level's start
    max_dose_shift_gy: float = 0.0             # extra margin under the global maximum (repairs)
    shape_weight: float = 0.0                  # weight of conformity and homogeneity (final level: 1)
    hottest_weight: float = 0.0                # weight of the hottest voxels' excess over the maximum

    def __post_init__(self):
        if self.final:
            self.shape_weight = 1.0


class _Problem:
    """The optimization problem on a row subset of the dose-influence matrix."""

    def __init__(self, dij, goals, masks_dij: dict, rx_by_target: dict, opts: OptimizerOptions, device,
                 warnings: list, product_threads: int | None = None):
        import torch

        self.torch = torch
        # CPU: the sparse products at this many threads, everything else at the optimizer's own
        self.product_threads = product_threads if torch.device(device).type == "cpu" else None
        self.opts = opts
        self.device = device
        self.goals = list(goals)
        grid = dij.grid
        nv = dij.n_voxels
        voxel_cc = grid.voxel_volume_cc
        self.rx_max = max(rx_by_target.values())
        self.max_dose_gy = opts.max_dose_pct / 100.0 * self.rx_max

        # -- which dij rows take part --------------------------------------------------
        keep = np.zeros(nv, dtype=bool)
        struct_rows = {}
        for name in {g.structure for g in goals} | set(rx_by_target):
            vm = dij.voxel_mask(masks_dij[name])
            n_out = int(masks_dij[name].sum()) - int(vm.sum())
            if n_out > 0:
                warnings.append(f"structure '{name}': {n_out} voxels lie outside the dose calculation "
                                f"volume (outside the body?) and receive no dose")
            struct_rows[name] = vm
            keep |= vm
        target_rows = np.zeros(nv, dtype=bool)
        for name in rx_by_target:
            target_rows |= struct_rows[name]
        conf_limit = None
        if opts.conformity is not None:
            lim, dist = falloff_limits([(masks_dij[t], rx) for t, rx in rx_by_target.items()], grid, opts.conformity)
            flat_lim = lim.reshape(-1)[dij.voxel_index]
            flat_dist = dist.reshape(-1)[dij.voxel_index]
            near = flat_dist <= opts.near_mm
            keep |= near
            conf_limit = flat_lim
        stride = np.zeros(nv, dtype=bool)
        stride[::opts.far_stride] = True
        keep |= stride
        rows = np.flatnonzero(keep)
        self.rows = rows

        csr = _to_scipy_csr(dij.matrix)[rows]
        self.nnz = int(csr.nnz)
        self.A = _from_scipy_csr(csr, device)
        self.At = _from_scipy_csr(csr.T.tocsr(), device)
        # CPU: a gradient with few non-zero voxel entries is taken over those rows only
        self.csr = csr if torch.device(device).type == "cpu" else None  # sorted in place by _from_scipy_csr
        self.n_beamlets = csr.shape[1]
        remap = np.full(nv, -1, dtype=np.int64)
        remap[rows] = np.arange(rows.size)

        def sub_rows(vm):
            return torch.from_numpy(remap[np.flatnonzero(vm)]).to(device)

        self.terms = [GoalTerm(g, sub_rows(struct_rows[g.structure]), voxel_cc, self._scale_gy(g)) for g in goals]
        tsub = target_rows[rows]
        self.n_target = max(1, int(tsub.sum()))
        if conf_limit is not None:
            lim_sub = conf_limit[rows]
            ok = np.isfinite(lim_sub)
            self.conf_rows = torch.from_numpy(np.flatnonzero(ok)).to(device)
            self.conf_lim = torch.from_numpy(lim_sub[ok].astype(np.float64)).to(device)
        else:
            self.conf_rows = None
        self.homog_rows = None
        if opts.homogeneity_pct is not None and opts.homogeneity_weight > 0:
            hl, own = homogeneity_limits([(masks_dij[t], rx) for t, rx in rx_by_target.items()], grid,
                                         opts.conformity or FalloffSpec(), opts.homogeneity_pct)
            hl_sub = hl.reshape(-1)[dij.voxel_index][rows]
            ok = np.isfinite(hl_sub)
            if ok.any():
                self.homog_rows = torch.from_numpy(np.flatnonzero(ok)).to(device)
                self.homog_lim = torch.from_numpy(hl_sub[ok].astype(np.float64)).to(device)
                own_sub = own.reshape(-1)[dij.voxel_index][rows][ok].astype(np.float64)
                self.cold_lim = (None if opts.underdose_pct is None else
                                 torch.from_numpy(own_sub * (1.0 - opts.underdose_pct / 100.0)).to(device))
        oar_names = sorted({g.structure for g in goals} - set(rx_by_target))
        self.oar_rows = [sub_rows(struct_rows[n]) for n in oar_names if struct_rows[n].any()]
        self.batched = (torch.device(device).type == "cuda" if opts.batched_penalties is None
                        else bool(opts.batched_penalties))
        if self.batched:
            self.all_goals = GoalBatch([(t, None) for t in self.terms], device)
            self._level_batches: dict = {}
            if self.oar_rows:
                # the final level's organ push, sum_r mean(d_r^2) / n_organs, as one weighted sum
                self.oar_cat = torch.cat(self.oar_rows)
                self.oar_w = torch.cat([torch.full((r.numel(),), 1.0 / (r.numel() * len(self.oar_rows)),
                                                   dtype=torch.float64, device=device) for r in self.oar_rows])
        on_cuda = torch.device(device).type == "cuda"
        use_graphs = on_cuda if opts.cuda_graphs is None else bool(opts.cuda_graphs) and on_cuda
        self.graphs = GraphedEvaluations() if (self.batched and use_graphs) else None

        # -- scaling: cold start = uniform fluence giving the highest Rx as mean target dose
        ones = torch.ones(self.n_beamlets, dtype=torch.float32, device=device)
        d1 = torch.mv(self.A, ones).cpu().numpy()
        mean_t = float(d1[tsub].mean()) if tsub.any() else 0.0
        if not mean_t > 0:
            raise OptimizationError("no beamlet reaches the target(s): check the beams and the isocentre")
        self.w_ref = self.rx_max / mean_t
        self.pairs = None
        if dij.beamlet_beam is not None and dij.beamlet_pos_mm is not None:
            p = neighbour_pairs(dij.beamlet_beam, dij.beamlet_pos_mm, dij.beamlet_size_mm)
            if len(p):
                self.pairs = p
        self.last = (None, None)
        self._last_ach = None
        self.n_eval = 0
        self.n_products = 0
        self._line: list = []

    def _scale_gy(self, g: ClinicalGoal) -> float:
        if g.kind is GoalKind.ALARA:
            return self.rx_max
        if g.kind is GoalKind.MAX_VOLUME_AT_DOSE:
            return g.dose_gy
        return max(g.dose_gy, 0.05 * self.rx_max, 1.0)

    def with_goal_values(self, goals) -> "_Problem":
        """This problem for ``goals`` that differ from its own in their values only (same
        structures and kinds, same order): the matrices, row sets and fall-off limits are
        kept, and so are the CUDA graphs (keyed by the goal values they bake in)."""
        import copy

        goals = list(goals)
        if [(g.structure, g.kind) for g in goals] != [(g.structure, g.kind) for g in self.goals]:
            raise ValueError("with_goal_values: the goals differ in more than their values")
        new = copy.copy(self)
        new.goals = goals
        new.terms = [GoalTerm(g, t.rows, t.voxel_cc, self._scale_gy(g)) for g, t in zip(goals, self.terms)]
        if self.batched:
            new.all_goals = GoalBatch([(t, None) for t in new.terms], self.device)
            new._level_batches = {}
        new.last, new._last_ach, new._line = (None, None), None, []
        new.n_eval = new.n_products = 0
        return new

    # -- dose and objective -------------------------------------------------------------
    def dose(self, x: np.ndarray):
        torch = self.torch
        w = torch.from_numpy(np.asarray(x, dtype=np.float32) * np.float32(self.w_ref)).to(self.device)
        return self._mv(self.A, w)

    def _mv(self, matrix, v):
        with torch_threads(self.product_threads):
            return self.torch.mv(matrix, v)

    def _dose_on_line(self, x: np.ndarray):
        """The dose at ``x`` from the last two evaluated points, when ``x`` lies on their line.

        A line search tries several steps along one direction; the dose is linear in the
        fluence, so every trial after the first costs no matrix product (pt_230: 2.6
        evaluations per L-BFGS-B iteration). Doses are kept in float64, so combining
        them adds no error worth the name.
        """
        if len(self._line) < 2:
            return None
        (xa, da), (xb, db) = self._line
        u = xb - xa
        v = x - xa
        nu = float(u @ u)
        if nu == 0.0:
            return None
        s = float(v @ u) / nu
        r = v - s * u
        if float(r @ r) > 1e-20 * max(float(v @ v), nu):
            return None
        return da + s * (db - da)

    def _grad_w(self, dg) -> np.ndarray:
        """``A^T dg`` (float64 numpy). Most penalties are flat for most voxels (met goals,
        voxels under their fall-off limit): when under ``GATHER_MAX_FRAC`` of the entries
        of ``dg`` are non-zero, only those rows of the matrix are multiplied. Measured in a
        TG-119 optimization (9 M entries): 0.8 ms against 7.0 ms for the full product on
        the quarter of the evaluations below 10 %; at the usual 26 % the gather was slower."""
        if self.csr is not None:
            g = dg.detach().numpy()
            # counting is ~10x cheaper than listing, and most evaluations take the full product
            n_act = np.count_nonzero(g)
            if n_act < GATHER_MAX_FRAC * g.size:
                if n_act == 0:
                    return np.zeros(self.n_beamlets)
                act = np.flatnonzero(g)
                return np.asarray(self.csr[act].T @ g[act].astype(np.float32), dtype=np.float64)
        return self._mv(self.At, dg.float()).detach().cpu().numpy().astype(np.float64)

    def _eval_dose(self, x: np.ndarray):
        """The float64 dose at an evaluation point (from the line when it lies on one)."""
        self.n_eval += 1
        # penalties in float64: the objective is a sum of terms of very different size, and
        # in float32 a line search cannot see the small decreases of the level's own goals
        d = self._dose_on_line(x)
        if d is None:
            d = self.dose(x).detach().double()
            self.n_products += 1
        self._line = (self._line + [(x.copy(), d)])[-2:]
        return d

    def fg(self, x: np.ndarray, level: _Level):
        if self.batched:
            return self._fg_batched(x, level)
        torch = self.torch
        x = np.asarray(x, dtype=np.float64)
        d = self._eval_dose(x).clone().requires_grad_(True)
        obj = torch.zeros((), dtype=torch.float64, device=self.device)
        for ti, value, weight in level.objective:
            obj = obj + weight * goal_penalty(self.terms[ti], d, value)
        o = self.opts
        if level.shape_weight > 0:
            sw = level.shape_weight
            if self.conf_rows is not None and self.conf_rows.numel():
                dc = d.index_select(0, self.conf_rows)
                obj = obj + sw * o.conformity_weight * (torch.relu(dc - self.conf_lim) ** 2).mean() / self.rx_max ** 2
            if self.homog_rows is not None:
                dh = d.index_select(0, self.homog_rows)
                pen = torch.relu(dh - self.homog_lim) ** 2
                if self.cold_lim is not None:
                    pen = pen + torch.relu(self.cold_lim - dh) ** 2
                obj = obj + sw * o.homogeneity_weight * pen.mean() / self.rx_max ** 2
        if level.final:
            if self.oar_rows:
                push = sum((d.index_select(0, r) ** 2).mean() for r in self.oar_rows) / len(self.oar_rows)
                obj = obj + o.oar_weight * push / self.rx_max ** 2
        cons = torch.zeros((), dtype=torch.float64, device=self.device)
        for ti, value in level.constraints:
            cons = cons + goal_penalty(self.terms[ti], d, value)
        # normalised by the target size, like a goal on the target: summing over all voxels
        # made the limit so stiff that L-BFGS crawled (measured on TG-119); the limit is
        # enforced exactly by the checks and shifts after each level instead
        limit = self.max_dose_gy * (1 - self.opts.margin_pct / 100.0) - level.max_dose_shift_gy
        hot = torch.relu(d - limit)
        cons = cons + self.opts.max_dose_weight * (hot ** 2).sum() / (self.max_dose_gy ** 2 * self.n_target)
        if level.hottest_weight > 0:
            top = torch.topk(d, min(self.opts.max_dose_hottest, d.numel())).values
            # exact on the hottest voxels, so aimed at half the checks' tolerance above the
            # limit, not at the margin below it (that cost the toy's core D10 4 Gy)
            hot_lim = self.max_dose_gy * (1 + self.opts.max_dose_tol_pct / 200.0) - level.max_dose_shift_gy
            cons = cons + level.hottest_weight * (torch.relu(top - hot_lim) ** 2).mean() / self.max_dose_gy ** 2
        total = level.obj_norm * obj + level.rho * cons
        total.backward()
        g = self._grad_w(d.grad) * self.w_ref
        f = float(total.detach().cpu())
        self.last_obj = float(obj.detach().cpu())
        f, g = self._add_smoothness(x, level, f, g)
        self.last = (x.copy(), d.detach())
        self._last_ach = None
        return f, g

    def last_achieved(self):
        """Every goal's achieved value and the maximum dose at the last evaluated point (the
        batched path has them from the evaluation itself)."""
        if self._last_ach is None:
            d = self.last[1]
            self._last_ach = (self.achieved_dose(d), float(d.max()))
        return self._last_ach

    def _add_smoothness(self, x: np.ndarray, level: _Level, f: float, g: np.ndarray):
        """The final level's fluence smoothness (on the host: it is a function of ``x`` alone)."""
        if not (level.final and self.pairs is not None and self.opts.smooth_weight > 0):
            return f, g
        diff = x[self.pairs[:, 0]] - x[self.pairs[:, 1]]
        c = level.obj_norm * self.opts.smooth_weight / len(self.pairs)
        f += c * float(diff @ diff)
        self.last_obj += self.opts.smooth_weight / len(self.pairs) * float(diff @ diff)
        gs = np.zeros_like(x)
        np.add.at(gs, self.pairs[:, 0], 2 * c * diff)
        np.add.at(gs, self.pairs[:, 1], -2 * c * diff)
        return f, g + gs

    def _level_batch(self, level: _Level):
        """The level's goals (objective, then constraints, then every other goal at weight 0
        for its achieved value) as one GoalBatch, the weights that pick the objective and the
        constraint sums out of its penalties, and each goal's entry for its achieved value."""
        torch = self.torch
        key = (tuple((ti, v) for ti, v, _ in level.objective), tuple(level.constraints))
        hit = self._level_batches.get(key)
        if hit is None:
            tis = [ti for ti, _, _ in level.objective] + [ti for ti, _ in level.constraints]
            entries = [(self.terms[ti], v) for ti, v, _ in level.objective]
            entries += [(self.terms[ti], v) for ti, v in level.constraints]
            n_obj, n_lvl = len(level.objective), len(entries)
            entry_of = {}
            for e, ti in enumerate(tis):
                entry_of.setdefault(ti, e)
            for ti in range(len(self.terms)):
                if ti not in entry_of:
                    entry_of[ti] = len(entries)
                    entries.append((self.terms[ti], None))
            n_rest = len(entries) - n_lvl
            w_obj = [w for _, _, w in level.objective] + [0.0] * (len(level.constraints) + n_rest)
            w_cons = [0.0] * n_obj + [1.0] * len(level.constraints) + [0.0] * n_rest
            f64 = dict(dtype=torch.float64, device=self.device)
            ach_idx = torch.tensor([entry_of[ti] for ti in range(len(self.terms))], dtype=torch.long,
                                   device=self.device)
            hit = (GoalBatch(entries, self.device), torch.tensor(w_obj, **f64), torch.tensor(w_cons, **f64),
                   ach_idx, key)
            if len(self._level_batches) > 16:   # repairs shift constraint values: keep the recent ones
                self._level_batches.clear()
            self._level_batches[key] = hit
        return hit

    def _fg_batched(self, x: np.ndarray, level: _Level):
        """``fg`` with every goal of the level in one GoalBatch and the gradient by hand:
        the same objective, in a fixed number of tensor operations (no autograd), and one
        transfer to the host for the objective, the gradient, every goal's achieved value
        and the maximum dose (the iteration callback needs the last two)."""
        x = np.asarray(x, dtype=np.float64)
        d = self._eval_dose(x)
        lb = self._level_batch(level)
        on_host_product = self.csr is not None     # CPU: A^T g may gather the active rows only
        out = None
        if self.graphs is not None:
            key = (lb[4], level.rho, level.obj_norm, level.shape_weight, level.final, level.max_dose_shift_gy,
                   level.hottest_weight)
            out = self.graphs.run(key, d, lambda dd: self._eval_packed(dd, level, lb, True))
        if out is None:
            out = self._eval_packed(d, level, lb, not on_host_product)
        host = out.cpu() if out.device.type != "cpu" else out
        nt = len(self.terms)
        f, obj, dmax = host[:3].tolist()
        ach = host[3:3 + nt].tolist()
        tail = host[3 + nt:]
        gw = (self._grad_w(tail) if on_host_product else tail.numpy().astype(np.float64)) * self.w_ref
        self.last_obj = obj
        f, gw = self._add_smoothness(x, level, f, gw)
        self.last = (x.copy(), d)
        self._last_ach = (ach, dmax)
        return f, gw

    def _eval_packed(self, d, level: _Level, lb, product: bool):
        """One evaluation on the device, packed into one float64 vector: objective total,
        objective, maximum dose, every goal's achieved value, then ``A^T`` of the voxel
        gradient (``product``) or the voxel gradient itself. Fixed shapes, no host
        round trip: it can be captured as a CUDA graph."""
        torch = self.torch
        o = self.opts
        batch, w_obj, w_cons, ach_idx, _ = lb
        p = batch.penalties(d)
        obj = (p * w_obj).sum()
        cons = (p * w_cons).sum()
        rho, on = level.rho, level.obj_norm
        g = batch.gradient(on * w_obj + rho * w_cons, d.numel())
        rx2 = self.rx_max ** 2
        if level.shape_weight > 0:
            sw = level.shape_weight
            if self.conf_rows is not None and self.conf_rows.numel():
                e = torch.relu(d.index_select(0, self.conf_rows) - self.conf_lim)
                c = sw * o.conformity_weight / (e.numel() * rx2)
                obj = obj + c * (e * e).sum()
                g.index_add_(0, self.conf_rows, (2.0 * on * c) * e)
            if self.homog_rows is not None:
                dh = d.index_select(0, self.homog_rows)
                e = torch.relu(dh - self.homog_lim)
                pen = e * e
                de = e
                if self.cold_lim is not None:
                    ec = torch.relu(self.cold_lim - dh)
                    pen = pen + ec * ec
                    de = e - ec
                c = sw * o.homogeneity_weight / (dh.numel() * rx2)
                obj = obj + c * pen.sum()
                g.index_add_(0, self.homog_rows, (2.0 * on * c) * de)
        if level.final and self.oar_rows:
            do = d.index_select(0, self.oar_cat)
            c = o.oar_weight / rx2
            obj = obj + c * (self.oar_w * do * do).sum()
            g.index_add_(0, self.oar_cat, (2.0 * on * c) * self.oar_w * do)
        limit = self.max_dose_gy * (1 - o.margin_pct / 100.0) - level.max_dose_shift_gy
        hot = torch.relu(d - limit)
        c = o.max_dose_weight / (self.max_dose_gy ** 2 * self.n_target)
        cons = cons + c * (hot * hot).sum()
        g = g + (2.0 * rho * c) * hot
        if level.hottest_weight > 0:
            top = torch.topk(d, min(o.max_dose_hottest, d.numel()))
            hot_lim = self.max_dose_gy * (1 + o.max_dose_tol_pct / 200.0) - level.max_dose_shift_gy
            e = torch.relu(top.values - hot_lim)
            c = level.hottest_weight / (e.numel() * self.max_dose_gy ** 2)
            cons = cons + c * (e * e).sum()
            g.index_add_(0, top.indices, (2.0 * rho * c) * e)
        total = on * obj + rho * cons
        ach = batch.achieved_last().index_select(0, ach_idx)
        tail = torch.mv(self.At, g.float()).double() if product else g
        return torch.cat([torch.stack([total, obj, d.max()]), ach, tail])

    def achieved_dose(self, d) -> list[float]:
        """Every goal's achieved value on the optimizer's dose vector ``d``."""
        if self.batched:
            return self.all_goals.achieved(d)
        return [achieved_torch(t, d) for t in self.terms]

    def achieved(self, x: np.ndarray) -> list[float]:
        return self.achieved_dose(self.dose(x))

    def max_dose(self, x: np.ndarray) -> float:
        return float(self.dose(x).max().cpu())


def _met_value(goal: ClinicalGoal, achieved: float, pct: float) -> bool:
    """Met against the goal value tightened by ``pct`` %."""
    v = _tighten(goal, goal.value, pct)
    return achieved >= v if goal.kind.is_lower_bound else achieved <= v


def _keep_higher_goals(prob, constraints, x0: np.ndarray, x1: np.ndarray, steps: int = 10):
    """Largest ``t`` in [0, 1] (bisection) with every met constraint still met at
    ``x0 + t (x1 - x0)`` and the maximum dose kept; returns ``(t, x)``."""
    limit = prob.max_dose_gy * (1 + prob.opts.max_dose_tol_pct / 100.0)

    def ok(t):
        xt = x0 + t * (x1 - x0)
        ach = prob.achieved(xt)
        return prob.max_dose(xt) <= limit and all(is_met(prob.terms[c[0]].goal, ach[c[0]]) for c in constraints if c[2])

    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo, np.clip(x0 + lo * (x1 - x0), 0, None)


def _tighten(goal: ClinicalGoal, value: float, pct: float) -> float:
    """``value`` moved ``pct`` % into the feasible side of ``goal``."""
    if goal.kind.is_lower_bound:
        return value * (1 + pct / 100.0)
    return value * (1 - pct / 100.0)


def _worse(goal: ClinicalGoal, a: float, b: float, tol: float) -> bool:
    """Is achieved ``a`` worse than ``b`` by more than ``tol``?"""
    return a < b - tol if goal.kind.is_lower_bound else a > b + tol


def optimize_fluence(dij, goals, masks_dij: dict, rx_by_target: dict, *, options: OptimizerOptions | None = None,
                     warm_start: np.ndarray | None = None, device=None, progress=None, cancel=None,
                     reuse: dict | None = None) -> dict:
    """Optimize beamlet weights for a goal list on a dose-influence matrix.

    Parameters
    ----------
    dij : core.dose.influence.DoseInfluence
    goals : sequence of ClinicalGoal
    masks_dij : dict name -> bool ndarray on ``dij.grid`` (every goal structure and target)
    rx_by_target : dict target name -> prescription (Gy)
    options : OptimizerOptions
    warm_start : (n_beamlets,) ndarray, MU, optional
        Start from this fluence (e.g. the previous plan) instead of a uniform one.
    device : torch.device, optional (default: the matrix's device)
    progress, cancel : see :mod:`core.progress`
    reuse : dict, optional
        A previous result of this function on the same matrix, structures and options for
        goals that differed in their values only: its problem set-up is reused.

    Returns
    -------
    dict with ``weights`` (MU, float32), ``iterations``, ``levels``, ``warnings``,
    ``conflicts``, ``max_dose_limit_gy``, ``time_s``. On cancel, :class:`Cancelled` is
    raised whose ``result`` is this dict for the best fluence so far (the last accepted
    level, or the current iterate before any level was accepted), with ``cancelled=True``.
    ``_problem`` holds the set-up (matrices on the device) for ``reuse``.
    """
    import torch

    opts = options or OptimizerOptions()
    dev = device if device is not None else dij.matrix.device
    product_threads = opts.cpu_product_threads or torch.get_num_threads()
    with torch_threads(opts.cpu_threads if torch.device(dev).type == "cpu" else None):
        return _optimize_fluence(dij, goals, masks_dij, rx_by_target, opts, warm_start, device, progress, cancel,
                                 reuse, product_threads)


def _optimize_fluence(dij, goals, masks_dij, rx_by_target, opts, warm_start, device, progress, cancel,
                      reuse=None, product_threads=None) -> dict:
    from scipy.optimize import Bounds, minimize

    t0 = time.perf_counter()
    goals = list(goals)
    if not goals:
        raise InputError("no clinical goals to optimize")
    if not rx_by_target:
        raise InputError("no target with a prescription: nothing to plan for")
    for name in {g.structure for g in goals} | set(rx_by_target):
        if name not in masks_dij:
            raise InputError(f"no structure named '{name}' (have: {', '.join(masks_dij) or 'none'})")
    for t in rx_by_target:
        if not masks_dij[t].any():
            raise InputError(f"target '{t}' is empty: it has no voxels on the dose grid")
    warnings: list[str] = []
    usable = []
    for g in goals:
        if not masks_dij[g.structure].any():
            warnings.append(f"'{g.label}': structure '{g.structure}' is empty; goal skipped")
        else:
            usable.append(g)
    dev = device if device is not None else dij.matrix.device
    if reuse is not None and reuse.get("_problem") is not None:
        prob = reuse["_problem"].with_goal_values(usable)
        warnings.extend(w for w in reuse["warnings"] if w.startswith("structure '"))
    else:
        prob = _Problem(dij, usable, masks_dij, rx_by_target, opts, dev, warnings, product_threads)
    conflicts = find_p1_conflicts(usable, masks_dij, dij.grid.voxel_volume_cc, prob.max_dose_gy)
    n = prob.n_beamlets
    if warm_start is not None:
        w0 = np.asarray(warm_start, dtype=np.float64).reshape(-1)
        if w0.size != n:
            raise InputError(f"the warm-start fluence has {w0.size} beamlets, this plan has {n}: "
                             "beams or beamlets changed, start cold")
        if not np.all(np.isfinite(w0)) or (w0 < 0).any():
            raise InputError("the warm-start fluence holds negative or non-finite weights")
        x = w0 / prob.w_ref
    else:
        x = np.ones(n)
    bounds = Bounds(np.zeros(n), np.full(n, np.inf))

    priorities = sorted({g.priority for g in usable})
    est_total = opts.level_maxiter * len(priorities) + opts.final_maxiter
    timed_out = [False]  # set by run_level when a level's time share ran out
    state = {"it": 0, "best": None, "x": x.copy()}

    def run_level(level: _Level, x_start: np.ndarray, maxiter: int, normalize: bool = True, done=None,
                  stop_at: float | None = None):
        """L-BFGS-B on one level until ``done(achieved)`` holds, progress stalls, ``maxiter``,
        or (after ``opts.min_level_iter`` iterations) the clock passes ``stop_at``.

        Stopping is decided here, not by L-BFGS-B's ftol: a squared-hinge penalty flattens
        as its goal is approached, so "tiny progress" does not mean "converged"; goals are
        aimed at with a margin, so the true goal value is passed at a finite iteration.
        """
        nit = [0]
        hist: list = []

        def cb(xk):
            nit[0] += 1
            state["it"] += 1
            state["x"] = np.asarray(xk).copy()
            lx = prob.last[0]
            ach = dmax = None
            if lx is not None and np.array_equal(lx, xk):
                ach, dmax = prob.last_achieved()
            met = -1 if ach is None else sum(1 for t, a in zip(prob.terms, ach)
                                             if t.goal.kind is not GoalKind.ALARA and is_met(t.goal, a))
            report(progress, min(state["it"], est_total), est_total,
                   "final" if level.final else ("warm-up" if level.priority is None else f"priority {level.priority}"),
                   iteration=state["it"], objective=float(cb.f), goals_met=met)
            if cancel is not None and cancel.cancelled:
                raise _Stop
            if done is not None and ach is not None and done(ach, dmax):
                raise _Done
            if stop_at is not None and nit[0] >= opts.min_level_iter and time.perf_counter() >= stop_at:
                timed_out[0] = True
                raise _Done
            hist.append(cb.f)
            w = opts.stall_window
            if len(hist) > w and hist[-w - 1] - hist[-1] <= opts.stall_rtol * abs(hist[-w - 1]):
                raise _Done

        if normalize and opts.normalize_levels and not level.final:
            # the level's own objective starts at 1, so that rho means the same at every level
            level.obj_norm = 1.0
            prob.fg(x_start, level)
            level.obj_norm = 1.0 / prob.last_obj if prob.last_obj > 1e-12 else 1.0
        f0, _ = prob.fg(x_start, level)
        scale = 1.0 / f0 if f0 > 1e-30 else 1.0

        def fun(xx):
            f, g = prob.fg(xx, level)
            cb.f = f
            return f * scale, g * scale

        cb.f = f0
        xk = x_start
        with single_thread_blas():
            for _restart in range(3):
                try:
                    res = minimize(fun, xk, jac=True, method="L-BFGS-B", bounds=bounds, callback=cb,
                                   options={"maxiter": maxiter - nit[0], "ftol": 1e-12, "gtol": 1e-12,
                                            "maxcor": 20})
                    xk = res.x
                except _Done:
                    xk = state["x"]
                    break
                if nit[0] >= maxiter or res.fun <= 0.0 or res.nit == 0:
                    break
        return np.clip(xk, 0, None), nit[0]

    levels_log = []
    constraints: list = []      # [term index, value, was_met, achieved_then]
    # organ mean-dose goals below P1 (personalised from a prediction, usually met with room)
    # are aimed lower than their value: the goal is the least the plan must do for the organ
    stretch = {i for i, t in enumerate(prob.terms)
               if opts.oar_stretch_pct > 0 and t.goal.kind is GoalKind.MAX_MEAN and t.goal.priority > 1
               and t.goal.structure not in rx_by_target}
    t_levels = time.perf_counter()   # iteration speed is measured from here: set-up excluded
    try:
        if warm_start is None and opts.warmup_maxiter > 0:
            # Cold start: one weighted pass over all goals (weight 10^-(rank) per priority
            # level) puts the fluence near the final compromise, so the strict levels below
            # only make corrections. The levels alone decide what is kept (see module doc).
            rank = {p: k for k, p in enumerate(priorities)}
            obj = [(i, None if t.goal.kind is GoalKind.ALARA else _tighten(t.goal, t.goal.value, opts.margin_pct),
                    10.0 ** -rank[t.goal.priority]) for i, t in enumerate(prob.terms)]
            tl = time.perf_counter()
            x, nit = run_level(_Level(None, obj, [], opts.constraint_weight), x, opts.warmup_maxiter)
            levels_log.append({"priority": "warm-up", "iterations": nit,
                               "time_s": round(time.perf_counter() - tl, 3), "accepted": True, "repairs": 0})
        for prio in priorities + [None]:
            check_cancel(cancel)
            tl = time.perf_counter()
            final = prio is None
            obj = []
            if not final:
                for i, t in enumerate(prob.terms):
                    if t.goal.priority == prio:
                        v = None if t.goal.kind is GoalKind.ALARA else _tighten(t.goal, t.goal.value, opts.margin_pct)
                        if i in stretch:
                            v = _tighten(t.goal, t.goal.value, opts.oar_stretch_pct)
                        obj.append((i, v, 1.0))
            if not final and not obj:
                continue
            before = prob.achieved(x)
            if not final and all(prob.terms[i].goal.kind is not GoalKind.ALARA and is_met(prob.terms[i].goal, before[i])
                                 for i, _, _ in obj):
                # every goal of this level is already met (warm start): nothing to optimize here
                for i, _, _ in obj:
                    constraints.append([i, _tighten(prob.terms[i].goal, prob.terms[i].goal.value, opts.margin_pct),
                                        True, before[i]])
                levels_log.append({"priority": prio, "iterations": 0, "time_s": round(time.perf_counter() - tl, 3),
                                   "accepted": True, "repairs": 0, "skipped": True})
                continue
            cons_values = {c[0]: c[1] for c in constraints}
            # the final level's objective has no zero to reach: hold the goals more firmly there
            rho0 = opts.constraint_weight * (opts.final_rho_factor if final else 1.0)
            # lower-priority goals nudge the level with small weights, so that among the
            # fluences meeting this level's goals it moves towards the ones the next levels
            # want (without it, a 3 mm-grid head-and-neck case left P2 with parotid means of
            # 58 Gy that P3, boxed in by P2's now-tight constraints, could not bring back)
            nudge = []
            if not final and opts.lower_weight > 0:
                for i, t in enumerate(prob.terms):
                    if t.goal.priority > prio:
                        steps = priorities.index(t.goal.priority) - priorities.index(prio)
                        v = None if t.goal.kind is GoalKind.ALARA else _tighten(t.goal, t.goal.value, opts.margin_pct)
                        nudge.append((i, v, opts.lower_weight * 0.1 ** (steps - 1)))
            level = _Level(prio, obj, list(cons_values.items()), rho0, final)
            if not final and prio != priorities[0]:
                level.hottest_weight = opts.max_dose_hottest_weight
            limit_ok = prob.max_dose_gy * (1 + opts.max_dose_tol_pct / 100.0)

            def done(ach, dmax, obj=obj):
                # a goal level is done when its goals are met with half the margin to spare
                # (so that the levels below have room; stretched organ goals half their
                # stretch) and nothing above it broke
                return (dmax <= limit_ok
                        and all(prob.terms[i].goal.kind is not GoalKind.ALARA
                                and _met_value(prob.terms[i].goal, ach[i],
                                               opts.oar_stretch_pct / 2 if i in stretch else opts.margin_pct / 2)
                                for i, _, _ in obj)
                        and all(is_met(prob.terms[c[0]].goal, ach[c[0]]) for c in constraints if c[2]))

            # a warm start begins next to a plan whose levels all ran: a goal level that is
            # not yet met there gets a third of its budget (it starts from that level's
            # compromise, and an edited goal moves it only part of the way), polishing the
            # final level again a quarter
            final_budget = opts.final_maxiter if warm_start is None else max(20, opts.final_maxiter // 4)
            level_budget = opts.level_maxiter if warm_start is None else max(30, opts.level_maxiter // 3)
            budget = final_budget if final else level_budget
            budget_cut, stop_at = False, None
            timed_out[0] = False
            if opts.time_budget_s is not None and state["it"] > 0 and prio != priorities[0]:
                # Each later level gets an equal share of the time left (unused time flows on
                # to the next), capped in iterations with room for one repair, and is stopped
                # at the end of its share whatever its repairs need. Reserving room for every
                # possible repair (max_repairs) had left a third to a half of the budget
                # unused: pt_50 optimized in 45 of its 79 s with the organ levels cut.
                spent = time.perf_counter() - t0
                levels_left = 1 if final else len(priorities) - priorities.index(prio) + 1
                share_s = max(opts.time_budget_s - spent, 0.0) / levels_left
                stop_at = time.perf_counter() + share_s
                # The iteration cap needs a measured speed: the set-up's seconds spread over a
                # first level of a few iterations had capped pt_202's P2 at 175 iterations in
                # one run and not in the next (plans differed run to run, 997 against 1041
                # iterations); the clock (stop_at) still holds every level to its share.
                if state["it"] >= opts.min_level_iter:
                    per_it = (time.perf_counter() - t_levels) / state["it"]
                    allowed = int(share_s / per_it / (1.0 + opts.repair_maxiter_frac))
                    if allowed < budget:
                        budget, budget_cut = max(opts.min_level_iter, allowed), True
            # conformity and homogeneity rank below every goal: they nudge a goal level like
            # a level after the last one (a full-strength nudge at P1 of a head-and-neck list
            # left P3 no room: pt_201 parotid means +6 Gy)
            shape_w = 0.0
            if not final and opts.shape_nudge > 0:
                to_final = len(priorities) - priorities.index(prio)
                shape_w = opts.lower_weight * 0.1 ** (to_final - 1) * opts.shape_nudge
            if nudge or shape_w > 0:
                # first a third of the budget with the nudges; if that does not meet the
                # level's goals, the rest without them: near its optimum a level's own
                # squared-hinge penalties vanish and the nudges would take over
                nudged = _Level(prio, obj + nudge, level.constraints, rho0, final, shape_weight=shape_w,
                                hottest_weight=level.hottest_weight)
                x_new, nit = run_level(nudged, x, max(20, budget // 3), done=done, stop_at=stop_at)
                ach_n = prob.achieved(x_new)
                if not done(ach_n, prob.max_dose(x_new)):
                    x_new, nit2 = run_level(level, x_new, budget - nit, done=done, stop_at=stop_at)
                    nit += nit2
            else:
                x_new, nit = run_level(level, x, budget, done=None if final else done, stop_at=stop_at)
            repairs = 0
            repaired_for: dict = {}
            accepted = True
            while True:
                ach = prob.achieved(x_new)
                broken = [c[0] for c in constraints if c[2] and not is_met(prob.terms[c[0]].goal, ach[c[0]])]
                worse = [c[0] for c in constraints if not c[2] and prob.terms[c[0]].goal.kind is not GoalKind.ALARA
                         and _worse(prob.terms[c[0]].goal, ach[c[0]], before[c[0]],
                                    opts.unmet_slack_pct / 100.0 * max(abs(before[c[0]]), 1e-3))]
                hot_gy = prob.max_dose(x_new) - prob.max_dose_gy * (1 + opts.max_dose_tol_pct / 100.0)
                if not broken and not worse and hot_gy <= 0:
                    break
                if stop_at is not None and time.perf_counter() >= stop_at:
                    timed_out[0] = True
                if repairs >= opts.max_repairs or timed_out[0]:
                    if broken:
                        # Fall back to the furthest point on the segment from the level's start
                        # (where every higher goal holds) towards its result that still keeps
                        # them all; the dose is linear along the segment, so this is exact.
                        t_keep, x_new = _keep_higher_goals(prob, constraints, x, x_new)
                        accepted = t_keep > 0
                        warnings.append(f"level {'final' if final else f'P{prio}'}: could not fully keep "
                                        f"{', '.join(prob.terms[i].goal.label for i in broken)} met; "
                                        f"kept {100 * t_keep:.0f} % of that level's change")
                    break
                # Repair as in the method of multipliers: shift each violated constraint's
                # target by its violation (plus the margin), so that the penalty's
                # equilibrium lands on the goal; raise rho a little for the rest.
                repairs += 1
                whys = [prob.terms[i].goal.label for i in broken + worse] + (["global maximum"] if hot_gy > 0 else [])
                for why in whys:
                    repaired_for[why] = repaired_for.get(why, 0) + 1
                for i in (broken + worse) if opts.shift_repairs else []:
                    g = prob.terms[i].goal
                    ref = g.value if i in broken else before[i]
                    gap = abs(ach[i] - ref) + opts.margin_pct / 100.0 * abs(ref)
                    cons_values[i] = cons_values[i] + gap if g.kind.is_lower_bound else max(cons_values[i] - gap, 0.0)
                if hot_gy > 0:
                    level.max_dose_shift_gy += hot_gy + opts.margin_pct / 100.0 * prob.max_dose_gy
                    if opts.max_dose_hottest_repairs:
                        level.hottest_weight = max(level.hottest_weight, opts.max_dose_hottest_weight)
                level.constraints = list(cons_values.items())
                level.rho *= opts.repair_rho_factor
                x_new, nit2 = run_level(level, x_new, max(20, int(budget * opts.repair_maxiter_frac)), normalize=False,
                                        done=None if final else done, stop_at=stop_at)
                nit += nit2
            x = x_new
            state["best"] = x.copy()
            ach = prob.achieved(x)
            if not final:
                for i, v, _ in obj:
                    t = prob.terms[i]
                    if t.goal.kind is GoalKind.ALARA:
                        constraints.append([i, ach[i] * (1 + opts.alara_slack_pct / 100.0), False, ach[i]])
                    elif is_met(t.goal, ach[i]) and i in stretch:
                        # what the stretch won is kept (with the ALARA slack), never looser than the goal
                        held = min(_tighten(t.goal, t.goal.value, opts.margin_pct),
                                   ach[i] * (1 + opts.alara_slack_pct / 100.0))
                        constraints.append([i, held, True, ach[i]])
                    elif is_met(t.goal, ach[i]):
                        constraints.append([i, _tighten(t.goal, t.goal.value, opts.margin_pct), True, ach[i]])
                    else:
                        constraints.append([i, ach[i], False, ach[i]])
            levels_log.append({"priority": prio if prio is not None else "final", "iterations": nit,
                               "time_s": round(time.perf_counter() - tl, 3), "accepted": accepted,
                               "repairs": repairs, **({"repaired_for": repaired_for} if repaired_for else {}),
                               **({"time_budget_iter": budget} if budget_cut else {}),
                               **({"time_budget_stopped": True} if timed_out[0] else {})})
            if timed_out[0]:
                warnings.append(f"level {'final' if final else f'P{prio}'}: stopped at its share of the "
                                f"{opts.time_budget_s:.0f} s optimization time budget")
            elif budget_cut:
                warnings.append(f"level {'final' if final else f'P{prio}'}: at most {budget} iterations "
                                f"to stay within the {opts.time_budget_s:.0f} s optimization time budget")
    except (_Stop, Cancelled):
        xb = state["best"] if state["best"] is not None else np.clip(state["x"], 0, None)
        out = _pack(prob, xb, state, levels_log, warnings, conflicts, t0, cancelled=True)
        raise Cancelled(result=out) from None
    return _pack(prob, x, state, levels_log, warnings, conflicts, t0, cancelled=False)


def _pack(prob, x, state, levels_log, warnings, conflicts, t0, cancelled):
    w = (np.clip(x, 0, None) * prob.w_ref).astype(np.float32)
    return {"weights": w, "iterations": state["it"], "levels": levels_log, "warnings": warnings,
            "conflicts": conflicts, "max_dose_limit_gy": prob.max_dose_gy, "time_s": time.perf_counter() - t0,
            "cancelled": cancelled, "n_rows": int(prob.rows.size), "nnz": prob.nnz, "evaluations": prob.n_eval,
            "matrix_products": prob.n_products, "cuda_graphs": _graph_stats(prob), "_problem": prob}


def _graph_stats(prob) -> dict | None:
    g = prob.graphs
    if g is None:
        return None
    return {"captured": g.n_captured, "replayed": g.n_replayed, "note": g.note}


# ----------------------------------------------------------------------------------------
def prescriptions_for(patient, goals) -> dict:
    """Target name -> prescription (Gy): the patient's prescriptions, else the highest
    minimum-dose goal on each target structure."""
    from core.patient import StructureRole

    rx = {}
    for p in patient.prescriptions:
        s = patient.structures.get(p.structure)
        if s is not None and not s.is_empty:  # e.g. an OpenKBP case without a PTV63
            rx[p.structure] = max(rx.get(p.structure, 0.0), float(p.dose_gy))
    if rx:
        return rx
    for g in goals:
        s = patient.structures.get(g.structure)
        if s is not None and s.role is StructureRole.TARGET and g.kind.is_lower_bound:
            rx[g.structure] = max(rx.get(g.structure, 0.0), float(g.dose_gy))
    if not rx:
        for g in goals:
            if g.kind.is_lower_bound and g.priority == 1:
                rx[g.structure] = max(rx.get(g.structure, 0.0), float(g.dose_gy))
    return rx


def optimize_plan(patient, goals, dij, *, options: OptimizerOptions | None = None, warm_start=None,
                  device=None, progress=None, cancel=None) -> OptimizationResult:
    """Optimize a plan for ``patient`` and evaluate every goal on the patient grid.

    Parameters
    ----------
    patient : core.patient.Patient
    goals : sequence of ClinicalGoal (structure names as in the patient)
    dij : core.dose.influence.DoseInfluence for the plan's beams
    options : OptimizerOptions, optional
    warm_start : (n_beamlets,) ndarray (MU) or OptimizationResult, optional
    device : str or torch.device, optional ("cpu", "cuda", "auto"; default: the matrix's device)
    progress, cancel : see :mod:`core.progress`

    Returns
    -------
    OptimizationResult
        On cancel, :class:`Cancelled` is raised with ``result`` an OptimizationResult
        (``cancelled=True``) for the best fluence so far.
    """
    from core.geometry import resample_to_grid
    from core.optimization.normalization import normalization_factor

    t0 = time.perf_counter()
    goals = list(goals)
    if not goals:
        raise InputError("no clinical goals given")
    for g in goals:
        if g.structure not in patient.structures:
            raise InputError(f"'{g.label}': the patient has no structure named '{g.structure}' "
                             f"(have: {', '.join(patient.structures) or 'none'})")
    rx = prescriptions_for(patient, goals)
    if not rx:
        raise InputError("no target: give a prescription or a P1 minimum-dose goal on a target")
    for t in rx:
        if patient.structures[t].is_empty:
            raise InputError(f"target '{t}' is empty (no voxels)")
    same = dij.grid.same_as(patient.grid)
    masks_dij = {}
    for name in {g.structure for g in goals} | set(rx):
        m = patient.structures[name].mask
        masks_dij[name] = m if same else resample_to_grid(m.astype(np.uint8), patient.grid, dij.grid, order=0) > 0
    import torch

    if isinstance(device, str):
        from core.device import resolve_device

        device = resolve_device(device)
    dev = device if device is not None else dij.matrix.device
    warm = warm_start.weights if isinstance(warm_start, OptimizationResult) else warm_start
    t1 = time.perf_counter()

    def pack_result(out: dict) -> OptimizationResult:
        w = out["weights"]
        dose = dij.dose_on_grid(torch.as_tensor(w))
        if not same:
            dose = resample_to_grid(dose, dij.grid, patient.grid, order=1)
        masks = {n: s.mask for n, s in patient.structures.items()}
        norm = 1.0
        if not out["cancelled"]:
            # The levels held P1 coverage on the coarser dose grid; on the patient grid it can
            # land a hair short (TG-119: D95 49.98 Gy for a 50 Gy goal): normalise as a clinic
            # would, within the limits of normalization_factor (nothing met may break, save
            # lower-priority goals where P1 coverage needs it).
            tol = 1.0 + (options or OptimizerOptions()).max_dose_tol_pct / 100.0
            norm = normalization_factor(goals, dose, masks, patient.grid.voxel_volume_cc,
                                        out["max_dose_limit_gy"] * tol)
            if norm != 1.0:
                w = (np.asarray(w) * norm).astype(np.asarray(w).dtype)
                dose = (dose * np.float32(norm)).astype(np.float32)
        results = evaluate_goals(goals, dose, masks, patient.grid.voxel_volume_cc)
        p1 = [r for r in results if r.goal.priority == 1 and r.met is not None]
        total = time.perf_counter() - t0
        return OptimizationResult(
            weights=w, dose_gy=dose.astype(np.float32), grid=patient.grid, goal_results=results,
            all_p1_met=all(r.met for r in p1), iterations=out["iterations"],
            timings_s={"prepare": t1 - t0, "optimize": out["time_s"], "total": total},
            levels=out["levels"], max_dose_gy=float(dose.max()), max_dose_limit_gy=out["max_dose_limit_gy"],
            warm_start=warm is not None, cancelled=out["cancelled"], warnings=out["warnings"],
            conflicts=out["conflicts"], device=str(dev), normalization=float(norm),
            cuda_graphs=out.get("cuda_graphs"))

    try:
        out = optimize_fluence(dij, goals, masks_dij, rx, options=options, warm_start=warm, device=dev,
                               progress=progress, cancel=cancel)
    except Cancelled as exc:
        if isinstance(exc.result, dict):
            raise Cancelled(result=pack_result(exc.result)) from None
        raise
    result = pack_result(out)
    if same or result.all_p1_met:
        return result
    opts = options or OptimizerOptions()
    # the re-aim gets what is left of a time budget (a warm start's first level is never cut)
    reaim_opts = opts if opts.time_budget_s is None else replace(
        opts, time_budget_s=max(opts.time_budget_s - out["time_s"], 1.0))
    return _reaim_on_patient_grid(result, out, goals, lambda g, w: optimize_fluence(
        dij, g, masks_dij, rx, options=reaim_opts, warm_start=w, device=dev, progress=progress, cancel=cancel,
        reuse=out), pack_result, opts, t0)


def _reaim_on_patient_grid(result: OptimizationResult, out: dict, goals: list, optimize, pack, opts, t0):
    """A P1 minimum-dose goal met on the dose grid can land a hair short on the finer
    patient grid (interpolation lowers a target's cold edge), and normalising it back can be
    blocked by the global maximum: TG-119 on CUDA once ended at D95 49.97 Gy with the
    maximum at its limit. Such a goal is re-aimed on the dose grid by its shortfall plus
    the margin and the plan re-optimized warm from there (its levels that still hold are
    skipped); the re-aimed plan is kept when it meets more P1 goals, judged on the
    patient grid against the goals as given."""
    short = {}
    for i, r in enumerate(result.goal_results):
        g = r.goal
        if g.priority == 1 and g.kind.is_lower_bound and r.met is False and r.achieved is not None:
            short[i] = g.with_value(g.value + (g.value - r.achieved) + opts.margin_pct / 100.0 * g.value)
    if not short or result.cancelled:
        return result
    aimed = [short.get(i, g) for i, g in enumerate(goals)]
    try:
        out2 = optimize(aimed, out["weights"])
    except Cancelled:
        return result
    out2 = {**out2, "time_s": out["time_s"] + out2["time_s"], "iterations": out["iterations"] + out2["iterations"],
            "levels": out["levels"] + [{"priority": "re-aim", "goals": [g.label for g in short.values()]}]
                      + out2["levels"],
            "warnings": out["warnings"] + [w for w in out2["warnings"] if w not in out["warnings"]]}
    second = pack(out2)
    second.warm_start = result.warm_start
    second.timings_s["total"] = time.perf_counter() - t0
    out2.pop("_problem", None)
    n_p1 = [sum(1 for r in x.goal_results if r.goal.priority == 1 and r.met) for x in (result, second)]
    return second if n_p1[1] > n_p1[0] else result
