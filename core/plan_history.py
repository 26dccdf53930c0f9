"""Named plan versions in a plan folder: keep every optimization result, compare, revert.

Every optimization the planner runs (the automated plan, a warm re-optimization after a
goal edit, a refinement round) can be kept as a **version**: its goals, its fluence
(beamlet weights in MU), its metrics, when it was made and which version it came from.
Reverting gives back a version's goals and weights, so the planner can continue from it.

On disk, in ``<folder>/history/``::

    history.json        {"format": "openatp-plan-history", "version": 1,
                         "versions": [{"name", "created", "parent", "note", "goals": [...],
                                       "metrics": {...}, "file": "v1.npz"}, ...]}
    v1.npz, v2.npz ...  weights_mu (float32), optionally dose_gy (float32, the patient grid)

The arrays are written before the index (both atomically), so an index entry always
points at a complete file; a crash between the two leaves an unlisted file, never a
listed one that is missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.goals.goal import ClinicalGoal

FORMAT = "openatp-plan-history"
FORMAT_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.+-]{0,63}$")


@dataclass(frozen=True)
class PlanVersion:
    """One kept plan (the arrays stay on disk until asked for).

    Attributes
    ----------
    name : str
    created : str, ISO 8601 UTC timestamp
    parent : str or None, the version this one started from
    note : str
    goals : tuple of ClinicalGoal
    metrics : dict (e.g. the plan's ``metrics.json`` content, or the goal results)
    file : str, the npz file name in the history folder
    """

    name: str
    created: str
    parent: str | None
    note: str
    goals: tuple
    metrics: dict = field(default_factory=dict, compare=False)
    file: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "created": self.created, "parent": self.parent, "note": self.note,
                "goals": [g.to_dict() for g in self.goals], "metrics": self.metrics, "file": self.file}

    @classmethod
    def from_dict(cls, d: dict, where) -> "PlanVersion":
        try:
            goals = tuple(ClinicalGoal.from_dict(g) for g in d["goals"])
            return cls(str(d["name"]), str(d["created"]), d.get("parent"), str(d.get("note", "")), goals,
                       dict(d.get("metrics") or {}), str(d["file"]))
        except (KeyError, TypeError) as exc:
            raise InputError(f"plan history entry {d.get('name', '?')!r} is damaged ({exc})", where) from None
        except InputError as exc:
            raise InputError(f"plan history entry {d.get('name', '?')!r}: {exc.message}", where) from None


class PlanHistory:
    """The plan versions kept in ``<plan_folder>/history``.

    Parameters
    ----------
    plan_folder : str or Path
        Created on the first :meth:`add` if missing.
    """

    def __init__(self, plan_folder: str | Path):
        self.folder = Path(plan_folder) / "history"
        self._index = self.folder / "history.json"
        self._versions: list[PlanVersion] = self._read()

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> list[PlanVersion]:
        if not self._index.exists():
            return []
        try:
            d = json.loads(self._index.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"the plan history cannot be read ({exc})", self._index) from None
        if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("versions"), list):
            raise InputError(f"not an OpenATP plan history (format \"{FORMAT}\" expected)", self._index)
        if int(d.get("version", 0)) > FORMAT_VERSION:
            raise InputError(f"plan history version {d.get('version')} is newer than this OpenATP reads "
                             f"({FORMAT_VERSION})", self._index)
        return [PlanVersion.from_dict(v, self._index) for v in d["versions"]]

    @property
    def names(self) -> list[str]:
        """Version names, oldest first."""
        return [v.name for v in self._versions]

    def versions(self) -> list[PlanVersion]:
        """Every version, oldest first."""
        return list(self._versions)

    def __len__(self) -> int:
        return len(self._versions)

    @property
    def latest(self) -> PlanVersion | None:
        return self._versions[-1] if self._versions else None

    def get(self, name: str) -> PlanVersion:
        for v in self._versions:
            if v.name == name:
                return v
        raise InputError(f"no plan version named '{name}' (have: {', '.join(self.names) or 'none'})")

    def _arrays(self, name: str) -> dict:
        v = self.get(name)
        path = self.folder / v.file
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise InputError(f"plan version '{name}': its file {v.file} is missing", self.folder) from None
        except (OSError, ValueError) as exc:
            raise InputError(f"plan version '{name}': {v.file} cannot be read ({exc})", self.folder) from None

    def weights(self, name: str) -> np.ndarray:
        """(n_beamlets,) float32 MU of a version."""
        a = self._arrays(name)
        if "weights_mu" not in a:
            raise InputError(f"plan version '{name}' holds no weights", self.folder)
        return a["weights_mu"].astype(np.float32)

    def dose(self, name: str) -> np.ndarray | None:
        """The version's dose (Gy, patient grid) when it was kept, else None."""
        return self._arrays(name).get("dose_gy")

    def revert(self, name: str) -> tuple[list, np.ndarray]:
        """``(goals, weights_mu)`` of a version, to continue planning from it."""
        return list(self.get(name).goals), self.weights(name)

    def lineage(self, name: str) -> list[str]:
        """The version and its ancestors, newest first."""
        out, cur = [], name
        while cur is not None and cur not in out:
            out.append(cur)
            cur = self.get(cur).parent
        return out

    def compare(self, a: str, b: str) -> list[dict]:
        """Goal by goal, the achieved values of two versions (from their metrics' ``goals``)
        and the change ``b - a``: ``{"label", "a", "b", "change", "met_a", "met_b"}``."""
        def by_label(v: PlanVersion) -> dict:
            out = {}
            for d in v.metrics.get("goals", []):
                try:
                    out[ClinicalGoal.from_dict({k: x for k, x in d.items() if k not in ("achieved", "met")}).label] = d
                except InputError:
                    continue
            return out

        va, vb = by_label(self.get(a)), by_label(self.get(b))
        rows = []
        for label in list(va) + [k for k in vb if k not in va]:
            xa, xb = va.get(label, {}), vb.get(label, {})
            ya, yb = xa.get("achieved"), xb.get("achieved")
            rows.append({"label": label, "a": ya, "b": yb,
                         "change": None if ya is None or yb is None else round(yb - ya, 4),
                         "met_a": xa.get("met"), "met_b": xb.get("met")})
        return rows

    # -- writing ---------------------------------------------------------------------------
    def next_name(self, prefix: str = "v") -> str:
        """``v1``, ``v2``, ...: the first free name with this prefix."""
        k = len(self._versions) + 1
        while f"{prefix}{k}" in self.names:
            k += 1
        return f"{prefix}{k}"

    def add(self, goals, weights_mu, *, name: str | None = None, metrics: dict | None = None,
            parent: str | None = None, note: str = "", dose_gy: np.ndarray | None = None) -> PlanVersion:
        """Keep a plan as a new version and save it (arrays first, then the index).

        Parameters
        ----------
        goals : sequence of ClinicalGoal
        weights_mu : (n_beamlets,) ndarray, MU
        name : str, optional
            Default :meth:`next_name`. Letters, digits, space and ``_ . + -``; unique.
        metrics : dict, optional
        parent : str, optional
            An existing version this one started from.
        note : str
        dose_gy : ndarray, optional
            The plan's dose, kept for side-by-side comparison (float32).
        """
        from core.io.atomic import atomic_save_npz, atomic_write_text
        from core.jsonsafe import json_safe

        name = self.next_name() if name is None else str(name).strip()
        if not _NAME_RE.match(name):
            raise InputError(f"plan version name {name!r}: use 1-64 letters, digits, spaces or _ . + - "
                             "(starting with a letter or digit)")
        if name in self.names:
            raise InputError(f"a plan version named '{name}' already exists: choose another name")
        if parent is not None:
            self.get(parent)
        goals = tuple(goals)
        if not goals or not all(isinstance(g, ClinicalGoal) for g in goals):
            raise InputError(f"plan version '{name}': give its clinical goals")
        w = np.asarray(weights_mu, dtype=np.float32).reshape(-1)
        if w.size == 0 or not np.all(np.isfinite(w)) or (w < 0).any():
            raise InputError(f"plan version '{name}': the weights must be finite and not negative")
        arrays = {"weights_mu": w}
        if dose_gy is not None:
            arrays["dose_gy"] = np.asarray(dose_gy, dtype=np.float32)
        file = f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', name)}.npz"
        k = 1
        while any(v.file == file for v in self._versions) or (self.folder / file).exists():
            k += 1
            file = f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', name)}_{k}.npz"
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        v = PlanVersion(name, created, parent, str(note), goals, json_safe(dict(metrics or {})), file)
        atomic_save_npz(self.folder / file, **arrays)
        versions = self._versions + [v]
        atomic_write_text(self._index, json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                                                   "versions": [x.to_dict() for x in versions]}, indent=1) + "\n")
        self._versions = versions
        return v


__all__ = ["PlanVersion", "PlanHistory"]
