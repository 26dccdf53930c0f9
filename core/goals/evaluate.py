"""Evaluate clinical goals on a dose: the achieved value (in the goal's unit) and met.

The DVH conventions are the project's own, taken from :mod:`core.evaluation.dvh` so
that a goal's "achieved" always equals what ``openatp dvh`` reports: ``Dx %`` =
``np.percentile(values, 100 - x)`` (linear interpolation); ``Dv cc`` = the percentile
at ``100 - 100 * max(1, round(v / voxel_cc)) / n``; ``Vx Gy`` = % of voxels with dose
>= x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.evaluation.dvh import dose_at_volume_cc, dose_at_volume_pct, voxels_in_volume, volume_at_dose_pct
from core.goals.goal import MET_SLACK_GY, MET_SLACK_PCT, ClinicalGoal, GoalKind


def cc_percentile(volume_cc: float, n_voxels: int, voxel_cc: float) -> float:
    """The percentile (0..100) at which ``D<volume_cc>cc`` is read for ``n_voxels`` voxels.

    A structure smaller than the volume reports its maximum (percentile 100), as
    :func:`core.evaluation.dvh.dose_at_volume_cc` does.
    """
    k = voxels_in_volume(volume_cc, voxel_cc)
    if k > n_voxels:
        return 100.0
    return 100.0 - 100.0 * k / n_voxels


def achieved_value(goal: ClinicalGoal, values: np.ndarray, voxel_cc: float) -> float:
    """The goal's metric for the voxel doses ``values`` (Gy, or % for ``Vx``)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise InputError(f"structure '{goal.structure}' is empty: cannot evaluate '{goal.label}'")
    k = goal.kind
    if k in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME):
        if goal.volume_pct is not None:
            return dose_at_volume_pct(values, goal.volume_pct)
        return dose_at_volume_cc(values, goal.volume_cc, voxel_cc)
    if k is GoalKind.MAX_VOLUME_AT_DOSE:
        return volume_at_dose_pct(values, goal.dose_gy)
    return float(values.mean())


def is_met(goal: ClinicalGoal, achieved: float) -> bool:
    """Met, with the display slack of :data:`MET_SLACK_GY` / :data:`MET_SLACK_PCT`."""
    k = goal.kind
    if k is GoalKind.ALARA:
        return True  # no threshold: "as low as possible" is an objective, never failed
    slack = MET_SLACK_PCT if k is GoalKind.MAX_VOLUME_AT_DOSE else MET_SLACK_GY
    if k.is_lower_bound:
        return achieved >= goal.value - slack
    return achieved <= goal.value + slack


@dataclass(frozen=True)
class GoalResult:
    """A goal with its achieved value (goal unit) and verdict; ``met`` None = not evaluable."""

    goal: ClinicalGoal
    achieved: float | None
    met: bool | None

    def to_dict(self) -> dict:
        d = self.goal.to_dict()
        d["achieved"] = None if self.achieved is None else round(float(self.achieved), 4)
        d["met"] = self.met
        return d


def evaluate_goals(goals, dose_gy: np.ndarray, masks: dict, voxel_cc: float) -> list[GoalResult]:
    """Evaluate every goal on a dose array.

    Parameters
    ----------
    goals : sequence of ClinicalGoal
    dose_gy : ndarray, Gy, any shape
    masks : dict name -> bool ndarray of ``dose_gy.shape``
    voxel_cc : float
        Voxel volume (cm^3) of the grid of ``dose_gy``.
    """
    out = []
    for g in goals:
        m = masks.get(g.structure)
        if m is None:
            raise InputError(f"'{g.label}': no structure named '{g.structure}' (have: {', '.join(masks) or 'none'})")
        vals = dose_gy[m]
        if vals.size == 0:
            out.append(GoalResult(g, None, None))
            continue
        a = achieved_value(g, vals, voxel_cc)
        out.append(GoalResult(g, a, is_met(g, a)))
    return out
