"""Prioritized clinical goals: the planner's own words are the optimization problem.

A :class:`ClinicalGoal` is one line of a clinical goal list, e.g. "P1: PTV70 D95 % >=
70 Gy". Priority 1 is the highest (a "must"); larger numbers are less important. The
optimizer (:mod:`core.optimization`) honours priorities strictly.

The on-disk form is the GOALS file of ``docs/cli.md``::

    {"goals": [{"priority": 1, "structure": "OuterTarget", "type": "min_dose_at_volume",
                "volume_pct": 95, "dose_gy": 50.0}, ...]}

:meth:`ClinicalGoal.from_dict` / :meth:`ClinicalGoal.to_dict` read and write exactly that
form; :func:`load_goals` / :func:`goals_to_json` / :func:`save_goals` handle whole files.

Dose-volume convention (the same as :mod:`core.evaluation.dvh`): ``Dx %`` is the minimum
dose to the hottest x % of the structure, ``np.percentile(values, 100 - x)``; ``Dv cc``
is the percentile at ``100 - 100 * max(1, round(v / voxel_cc)) / n``; ``Vx Gy`` is the
percentage of the structure's voxels receiving at least x Gy.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError

#: A dose goal above this is taken for a unit mistake (cGy written as Gy): no external
#: beam course prescribes more than ~100 Gy to any structure.
MAX_PLAUSIBLE_DOSE_GY = 150.0

#: Slack used when deciding whether a goal is met, so that float32 round-off of a dose
#: that sits exactly on the goal does not flip the verdict: planners read doses to
#: 0.01 Gy and volumes to 0.1 %, so half of that is invisible to them.
MET_SLACK_GY = 0.005
MET_SLACK_PCT = 0.05


class GoalKind(enum.Enum):
    """What a goal constrains; the value is the GOALS-file ``type``."""

    MIN_DOSE_AT_VOLUME = "min_dose_at_volume"   # Dx >= dose_gy
    MAX_DOSE_AT_VOLUME = "max_dose_at_volume"   # Dx <= dose_gy (Dx cc; 0.03 cc = near-max)
    MAX_MEAN = "max_mean"                       # mean <= dose_gy
    MIN_MEAN = "min_mean"                       # mean >= dose_gy
    MAX_VOLUME_AT_DOSE = "max_volume_at_dose"   # V(dose_gy) <= volume_pct
    ALARA = "alara"                             # mean dose as low as possible

    @property
    def is_lower_bound(self) -> bool:
        """True for goals asking for *at least* a dose (coverage goals)."""
        return self in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MIN_MEAN)


_SYMBOL = {GoalKind.MIN_DOSE_AT_VOLUME: ">=", GoalKind.MAX_DOSE_AT_VOLUME: "<=",
           GoalKind.MAX_MEAN: "<=", GoalKind.MIN_MEAN: ">=", GoalKind.MAX_VOLUME_AT_DOSE: "<="}

_KEYS = {"priority", "structure", "type", "dose_gy", "volume_pct", "volume_cc", "tolerance_pct",
         "control", "note"}


@dataclass(frozen=True)
class ClinicalGoal:
    """One prioritized clinical goal.

    Parameters
    ----------
    priority : int
        1 = highest ("must"); larger = less important.
    structure : str
        Structure name as in the patient (templates map synonyms before this point).
    kind : GoalKind
    dose_gy : float, optional
        The dose value in Gy (the goal value for dose goals; the dose level x of ``Vx``).
        Not used by ``alara``.
    volume_pct : float, optional
        Volume in % of the structure: x of ``Dx %`` (0 < x < 100), or the allowed
        volume of ``Vx Gy <= y %`` (0 <= y < 100).
    volume_cc : float, optional
        Volume in cm^3 for ``Dx cc`` goals (> 0); ``0.03`` is the near-maximum.
    tolerance_pct : float
        How much a value taken from a predicted dose is tightened (0 <= t < 50).
    control : bool
        A goal the planner set by hand to steer the plan; never overwritten by a prediction.
    note : str
        Free text (e.g. the protocol the goal comes from).
    """

    priority: int
    structure: str
    kind: GoalKind
    dose_gy: float | None = None
    volume_pct: float | None = None
    volume_cc: float | None = None
    tolerance_pct: float = 0.0
    control: bool = False
    note: str = ""

    def __post_init__(self):
        if not isinstance(self.kind, GoalKind):
            try:
                object.__setattr__(self, "kind", GoalKind(str(self.kind)))
            except ValueError:
                raise InputError(f"goal on '{self.structure}': unknown type '{self.kind}' "
                                 f"(use one of {', '.join(k.value for k in GoalKind)})") from None
        name = str(self.structure or "").strip()
        if not name:
            raise InputError("a goal needs a structure name")
        object.__setattr__(self, "structure", name)
        where = f"goal on '{name}' ({self.kind.value})"
        try:
            prio = int(self.priority)
        except (TypeError, ValueError):
            raise InputError(f"{where}: priority must be a whole number >= 1, got {self.priority!r}") from None
        if prio != self.priority or prio < 1:
            raise InputError(f"{where}: priority must be a whole number >= 1, got {self.priority!r}")
        object.__setattr__(self, "priority", prio)
        for key in ("dose_gy", "volume_pct", "volume_cc", "tolerance_pct"):
            v = getattr(self, key)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise InputError(f"{where}: {key} must be a number, got {v!r}")
            if not math.isfinite(float(v)):
                raise InputError(f"{where}: {key} must be finite, got {v!r}")
            object.__setattr__(self, key, float(v))
        kind = self.kind
        if kind is GoalKind.ALARA:
            if self.volume_pct is not None or self.volume_cc is not None:
                raise InputError(f"{where}: 'as low as possible' takes no volume")
        else:
            if self.dose_gy is None:
                raise InputError(f"{where}: dose_gy is required")
        if self.dose_gy is not None:
            if self.dose_gy < 0:
                raise InputError(f"{where}: a dose cannot be negative ({self.dose_gy:g} Gy)")
            if self.dose_gy > MAX_PLAUSIBLE_DOSE_GY:
                raise InputError(f"{where}: {self.dose_gy:g} Gy is not a plausible dose; doses are in Gy "
                                 f"(was it given in cGy? {self.dose_gy:g} cGy = {self.dose_gy / 100:g} Gy)")
        if kind in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME):
            if (self.volume_pct is None) == (self.volume_cc is None):
                raise InputError(f"{where}: give exactly one of volume_pct or volume_cc")
            if self.volume_pct is not None and not 0.0 < self.volume_pct < 100.0:
                raise InputError(f"{where}: D{self.volume_pct:g} % is impossible; the volume must lie "
                                 f"strictly between 0 and 100 % (use max_mean / volume_cc 0.03 for mean / max)")
            if self.volume_cc is not None and self.volume_cc <= 0:
                raise InputError(f"{where}: volume_cc must be > 0 cc, got {self.volume_cc:g}")
            if kind is GoalKind.MIN_DOSE_AT_VOLUME and self.dose_gy == 0:
                raise InputError(f"{where}: a minimum dose of 0 Gy is always met; remove the goal")
        elif kind is GoalKind.MAX_VOLUME_AT_DOSE:
            if self.volume_cc is not None:
                raise InputError(f"{where}: give the allowed volume as volume_pct (% of the structure)")
            if self.volume_pct is None:
                raise InputError(f"{where}: volume_pct (allowed % of the structure) is required")
            if not 0.0 <= self.volume_pct < 100.0:
                raise InputError(f"{where}: V{self.dose_gy:g}Gy <= {self.volume_pct:g} % is impossible; "
                                 f"the volume must be 0 <= v < 100 %")
            if self.dose_gy == 0:
                raise InputError(f"{where}: every voxel receives >= 0 Gy; the dose level must be > 0")
        elif kind in (GoalKind.MAX_MEAN, GoalKind.MIN_MEAN):
            if self.volume_pct is not None or self.volume_cc is not None:
                raise InputError(f"{where}: a mean-dose goal takes no volume")
        if not 0.0 <= self.tolerance_pct < 50.0:
            raise InputError(f"{where}: tolerance_pct must lie in 0 ... 50 %, got {self.tolerance_pct:g}")
        object.__setattr__(self, "control", bool(self.control))
        object.__setattr__(self, "note", str(self.note or ""))

    # -- presentation ------------------------------------------------------------------
    @property
    def value(self) -> float | None:
        """The goal's value in its own unit: Gy, or % for ``max_volume_at_dose``."""
        if self.kind is GoalKind.MAX_VOLUME_AT_DOSE:
            return self.volume_pct
        return self.dose_gy

    @property
    def unit(self) -> str:
        return "%" if self.kind is GoalKind.MAX_VOLUME_AT_DOSE else "Gy"

    @property
    def metric(self) -> str:
        """The DVH metric this goal is about: ``D95``, ``D0.03cc``, ``mean``, ``V50Gy``."""
        k = self.kind
        if k in (GoalKind.MIN_DOSE_AT_VOLUME, GoalKind.MAX_DOSE_AT_VOLUME):
            return f"D{self.volume_pct:g}" if self.volume_pct is not None else f"D{self.volume_cc:g}cc"
        if k is GoalKind.MAX_VOLUME_AT_DOSE:
            return f"V{self.dose_gy:g}Gy"
        return "mean"

    @property
    def label(self) -> str:
        """``P1 PTV70 D95 >= 70 Gy``: how a planner reads the goal."""
        if self.kind is GoalKind.ALARA:
            return f"P{self.priority} {self.structure} mean as low as possible"
        return f"P{self.priority} {self.structure} {self.metric} {_SYMBOL[self.kind]} {self.value:g} {self.unit}"

    def with_value(self, value: float, note: str | None = None) -> "ClinicalGoal":
        """A copy with the goal value (Gy, or % for ``max_volume_at_dose``) replaced."""
        from dataclasses import replace

        kw = {"volume_pct": float(value)} if self.kind is GoalKind.MAX_VOLUME_AT_DOSE else {"dose_gy": float(value)}
        if note is not None:
            kw["note"] = note
        return replace(self, **kw)

    # -- GOALS-file form ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "ClinicalGoal":
        """Build from one entry of a GOALS file (``docs/cli.md``)."""
        if not isinstance(d, dict):
            raise InputError(f"a goal must be a JSON object, got {type(d).__name__}")
        unknown = set(d) - _KEYS
        if unknown:
            hint = ""
            if any("cgy" in k.lower() for k in unknown):
                hint = "; doses are given in Gy as dose_gy"
            elif any(k.lower() in ("unit", "units") for k in unknown):
                hint = "; units are fixed: dose_gy in Gy, volume_pct in %, volume_cc in cm^3"
            raise InputError(f"goal on '{d.get('structure', '?')}': unknown field(s) "
                             f"{', '.join(sorted(unknown))}{hint} (allowed: {', '.join(sorted(_KEYS))})")
        for key in ("priority", "structure", "type"):
            if key not in d:
                raise InputError(f"goal {json.dumps(d)[:80]}: '{key}' is missing")
        return cls(priority=d["priority"], structure=d["structure"], kind=d["type"],
                   dose_gy=d.get("dose_gy"), volume_pct=d.get("volume_pct"), volume_cc=d.get("volume_cc"),
                   tolerance_pct=d.get("tolerance_pct", 0.0) or 0.0, control=bool(d.get("control", False)),
                   note=d.get("note", "") or "")

    def to_dict(self) -> dict:
        """The GOALS-file entry (optional keys only when set)."""
        out: dict = {"priority": self.priority, "structure": self.structure, "type": self.kind.value}
        for key in ("volume_pct", "volume_cc", "dose_gy"):
            v = getattr(self, key)
            if v is not None:
                out[key] = v
        if self.tolerance_pct:
            out["tolerance_pct"] = self.tolerance_pct
        if self.control:
            out["control"] = True
        if self.note:
            out["note"] = self.note
        return out


def goals_from_json_obj(obj, path: str | Path | None = None) -> list[ClinicalGoal]:
    """Goals from a parsed GOALS document (``{"goals": [...]}`` or a bare list)."""
    items = obj.get("goals") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        raise InputError("a GOALS file holds {\"goals\": [ ... ]}", path)
    goals = []
    for i, d in enumerate(items):
        try:
            goals.append(ClinicalGoal.from_dict(d))
        except InputError as exc:
            raise InputError(f"goal #{i + 1}: {exc.message}", path) from None
    if not goals:
        raise InputError("the goal list is empty", path)
    return goals


def load_goals(path: str | Path) -> list[ClinicalGoal]:
    """Read a GOALS file (JSON, ``docs/cli.md``)."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("goals file not found", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not a valid JSON goals file ({exc})", path) from None
    return goals_from_json_obj(obj, path)


def goals_to_json(goals, extra: list[dict] | None = None) -> str:
    """The GOALS document text; ``extra[i]`` (e.g. achieved/met) is merged into goal i."""
    items = []
    for i, g in enumerate(goals):
        d = g.to_dict()
        if extra is not None:
            d.update(extra[i])
        items.append(d)
    return json.dumps({"goals": items}, indent=2)


def save_goals(path: str | Path, goals) -> None:
    """Write a GOALS file atomically."""
    from core.io.atomic import atomic_write_text

    atomic_write_text(path, goals_to_json(goals) + "\n")


def sort_by_priority(goals) -> list[ClinicalGoal]:
    """Stable sort: priority 1 first, file order kept within a priority."""
    return sorted(goals, key=lambda g: g.priority)
