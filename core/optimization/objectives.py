"""Differentiable penalties: one per clinical goal, plus conformity, maximum dose, smoothness.

Every goal penalty ``P(d)`` is dimensionless (dose differences divided by the goal's
own dose scale ``s``), **zero exactly when the goal is met** and positive otherwise, so
that a penalty can serve both as an objective (at its own priority level) and as a
constraint (``P == 0``) at lower levels. Doses ``d`` are the structure's voxel doses.

Dose-volume goals are not differentiable as such: ``Dx`` is a percentile. We use the
dose-volume idea of Bortfeld, Stein & Preiser (Proc. XIIth ICCR 1997; Wu & Mohan, Med.
Phys. 27:701, 2000) -- penalise the voxels above the limit that are *not* among the
hottest x % allowed to be there -- in a continuous form: every voxel's dose is clipped at
the current ``Dx`` (linear interpolation as ``np.percentile``, by selection: :func:`quantile`)::

    Dx <= v:   P = mean_i H(min(d_i, Dx) - v)
    Dx >= v:   P = mean_i H(v - max(d_i, Dx))
    H(e) = (relu(e) / s)^2

Voxels between ``v`` and ``Dx`` are pushed towards ``v`` (the cheapest to fix); the hottest
x % contribute through ``Dx`` itself. ``P`` is zero exactly when ``Dx <= v`` (all clipped
doses are then <= v), positive otherwise (the clipped doses of the hottest voxels equal
``Dx > v``), and -- unlike the original indicator form -- continuous in the doses, which
L-BFGS line searches need.

``V(x Gy) <= y %``: with ``n`` voxels at most ``m = floor(y n / 100)`` may receive ``>= x``;
with ``t`` the (m+1)-th hottest dose, ``P = mean_i H(min(d_i, t) - x)``, zero exactly when
``t <= x`` (met when ``t < x``; the two differ only when a voxel sits exactly on ``x``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.goals.evaluate import cc_percentile
from core.goals.goal import ClinicalGoal, GoalKind

@dataclass(eq=False)
class GoalTerm:
    """A goal bound to its voxels (rows of the optimizer's dose vector).

    Parameters
    ----------
    goal : ClinicalGoal
    rows : torch.LongTensor
        Indices into the dose vector of the structure's voxels.
    voxel_cc : float
        Voxel volume of the dose grid (for ``Dv cc`` goals).
    scale_gy : float
        Dose normalisation ``s`` (Gy).
    """

    goal: ClinicalGoal
    rows: object
    voxel_cc: float
    scale_gy: float

    @property
    def n(self) -> int:
        return int(self.rows.numel())

    def quantile_q(self) -> float:
        """The percentile (0..1) that is ``Dx`` of this goal."""
        g = self.goal
        if g.volume_pct is not None:
            return (100.0 - g.volume_pct) / 100.0
        return cc_percentile(g.volume_cc, self.n, self.voxel_cc) / 100.0


def goal_penalty(term: GoalTerm, dose, value: float | None = None):
    """Penalty of one goal (torch scalar) for the dose vector ``dose`` (Gy).

    ``value`` overrides the goal's value (Gy, or % for ``max_volume_at_dose``): the
    optimizer uses it to add a safety margin or to hold a goal at what was achieved.
    """
    import torch

    g = term.goal
    d = dose.index_select(0, term.rows)
    s = term.scale_gy
    v = g.value if value is None else value
    k = g.kind
    if k is GoalKind.ALARA:
        return (d.mean() / s) ** 2
    if k is GoalKind.MAX_MEAN:
        return _hinge(d.mean() - v, s)
    if k is GoalKind.MIN_MEAN:
        return _hinge(v - d.mean(), s)
    if k is GoalKind.MAX_DOSE_AT_VOLUME:
        dq = quantile(d, term.quantile_q())
        return _hinge(torch.minimum(d, dq) - v, s).mean()
    if k is GoalKind.MIN_DOSE_AT_VOLUME:
        dq = quantile(d, term.quantile_q())
        return _hinge(v - torch.maximum(d, dq), s).mean()
    if k is GoalKind.MAX_VOLUME_AT_DOSE:
        x = g.dose_gy
        n = d.numel()
        m = int(np.floor(v * n / 100.0 + 1e-9))   # voxels allowed at >= x
        t = torch.topk(d, m + 1).values[m]          # the (m+1)-th hottest voxel
        return _hinge(torch.minimum(d, t) - x, s).mean()
    raise ValueError(f"no penalty for goal kind {k}")


def quantile(d, q: float):
    """``torch.quantile(d, q)`` (linear interpolation, as ``np.percentile``) by selection.

    ``torch.quantile`` sorts the whole vector; the optimizer asks for a quantile of every
    dose-volume goal at every evaluation, and a sort of a large structure cost about a
    quarter of the optimization time. The two order statistics around ``q (n - 1)`` are
    selected (``kthvalue``, or ``topk`` at a hot end), ``O(n)``, and the
    gradient flows to those voxels, as ``torch.quantile``'s does.
    """
    import torch

    n = d.numel()
    pos = q * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    if n - lo <= 64:
        # a hot end (D0.03cc, D2): the few largest values, descending
        top = torch.topk(d, n - lo, largest=True, sorted=True).values
        a, b = top[n - lo - 1], top[n - hi - 1]
    else:
        a = torch.kthvalue(d, lo + 1).values
        b = torch.kthvalue(d, hi + 1).values if (hi != lo and frac > 0) else a
    return a + (b - a) * frac if frac > 0 else a


def _hinge(excess, s: float):
    """``(relu(excess) / s)^2``: zero exactly when ``excess <= 0``, continuous gradient."""
    import torch

    return (torch.relu(excess) / s) ** 2


def achieved_torch(term: GoalTerm, dose) -> float:
    """The goal's achieved value on the optimizer's voxels (same convention as evaluation)."""
    import torch

    g = term.goal
    d = dose.index_select(0, term.rows).detach().double()
    if g.kind in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME):
        return float(quantile(d, term.quantile_q()))
    if g.kind is GoalKind.MAX_VOLUME_AT_DOSE:
        return float(100.0 * (d >= g.dose_gy).sum() / d.numel())
    return float(d.mean())


def overdose_penalty(dose, limit_gy, rows=None, norm: float = 1.0):
    """``sum relu(d_i - limit_i)^2 / norm`` (limit scalar or per-voxel tensor)."""
    import torch

    d = dose if rows is None else dose.index_select(0, rows)
    return (torch.relu(d - limit_gy) ** 2).sum() / norm


def neighbour_pairs(beamlet_beam: np.ndarray, beamlet_pos_mm: np.ndarray, size_mm) -> np.ndarray:
    """(P, 2) int index pairs of beamlets adjacent in the same beam (4-neighbourhood).

    Used by the smoothness term ``sum (w_i - w_j)^2``, which keeps the fluence deliverable
    (fewer MLC segments, fewer MU) without biasing its mean.
    """
    pos = np.asarray(beamlet_pos_mm, dtype=float)
    size = np.asarray(size_mm, dtype=float).reshape(-1)
    if size.size == 1:
        size = np.repeat(size, 2)
    ij = np.round(pos[:, :2] / size[:2]).astype(np.int64)
    key = {}
    for n, (b, i, j) in enumerate(zip(np.asarray(beamlet_beam), ij[:, 0], ij[:, 1])):
        key[(int(b), int(i), int(j))] = n
    pairs = []
    for (b, i, j), n in key.items():
        for di, dj in ((1, 0), (0, 1)):
            m = key.get((b, i + di, j + dj))
            if m is not None:
                pairs.append((n, m))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
