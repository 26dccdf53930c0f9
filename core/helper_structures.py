"""Helper structures made by rules, and regenerated when their sources change.

A planner steers an optimizer with structures that are not anatomy: a ring around a
target, an organ without the PTV, a PTV without the organs it overlaps ("PTV OPT"), a
"hot patch" over a hot spot of the current plan, a "cold patch" over an under-dosed part
of a target. Each is made by a **rule**, a frozen dataclass that names its source
structures and its parameters:

=================== ==========================================================================
rule                 result
=================== ==========================================================================
MarginRule           ``source`` grown (or shrunk) by ``margin_mm`` (see :mod:`core.structures`)
BooleanRule          union / intersection of ``sources``, or the first minus the others
RingRule             shell ``inner_mm`` .. ``outer_mm`` outside ``target`` (minus all targets)
OarMinusPtvRule      ``oar`` without the ``ptvs`` grown by ``margin_mm``
PtvMinusOarRule      ``ptv`` without the ``oars`` grown by ``margin_mm`` ("PTV OPT")
HotPatchRule         voxels at >= ``threshold_pct`` % of the prescription outside the targets
ColdPatchRule        voxels of ``target`` below ``threshold_pct`` % of its prescription
=================== ==========================================================================

Every result is cropped to the body (the patient's EXTERNAL structure, else OpenKBP's
possible-dose mask; see :meth:`core.patient.Patient.external_mask`) when ``crop_to_body``;
dose patches always are. Margins follow :mod:`core.structures` (surface half a voxel
beyond the boundary voxel centres).

:func:`make_helper` builds one rule's structure and adds it to the patient;
:func:`regenerate` rebuilds every rule-made structure whose sources changed: each
structure made here keeps ``rule.to_dict()`` plus a ``source_hash`` (SHA-1 of the rule and
of its source masks, and of the dose for dose patches) in :attr:`Structure.rule`, so
an unchanged structure is not rebuilt. Bad input (a missing or empty source, an empty
result, a patch outside the body, a name that clashes with a structure not made by a
rule) raises :class:`~core.errors.InputError` and leaves the patient unchanged.

Rules are stored as JSON (:func:`rules_to_json`, :func:`save_rules`, :func:`load_rules`)::

    {"format": "openatp-helper-rules", "version": 1,
     "rules": [{"kind": "ring", "name": "Ring_PTV70", "target": "PTV70", "inner_mm": 5, "outer_mm": 15},
               {"kind": "hot_patch", "name": "Patch_hot", "threshold_pct": 95, "min_volume_cc": 0.1}]}
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from core.errors import GeometryError, InputError

FORMAT = "openatp-helper-rules"
FORMAT_VERSION = 1

#: Display colours of rule-made structures (r, g, b).
HELPER_COLOR = (200, 200, 200)
HOT_PATCH_COLOR = (255, 90, 0)
COLD_PATCH_COLOR = (0, 160, 255)


class RuleKind(enum.Enum):
    """What a rule makes; the value is the JSON ``kind``."""

    MARGIN = "margin"
    BOOLEAN = "boolean"
    RING = "ring"
    OAR_MINUS_PTV = "oar_minus_ptv"
    PTV_MINUS_OAR = "ptv_minus_oar"
    HOT_PATCH = "hot_patch"
    COLD_PATCH = "cold_patch"


class BooleanOp(enum.Enum):
    """How a :class:`BooleanRule` combines its sources."""

    UNION = "union"
    INTERSECTION = "intersection"
    SUBTRACT = "subtract"          # the first source minus all the others


# -- small validators ---------------------------------------------------------------------
def _name(value, what: str) -> str:
    s = str(value or "").strip()
    if not s:
        raise InputError(f"{what} needs a name")
    return s


def _names(values, what: str, at_least: int = 1) -> tuple:
    if isinstance(values, str):
        values = (values,)
    out = tuple(_name(v, what) for v in (values or ()))
    if len(out) < at_least:
        raise InputError(f"{what} needs at least {at_least} structure name(s), got {len(out)}")
    if len(set(out)) != len(out):
        raise InputError(f"{what} names a structure twice: {', '.join(out)}")
    return out


def _mm(value, what: str, positive: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of mm, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise InputError(f"{what} must be a {'positive' if positive else 'non-negative'} number of mm, got {value!r}")
    return v


def _pct(value, what: str, hi: float = 200.0) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a percentage, got {value!r}") from None
    if not math.isfinite(v) or not 0.0 < v <= hi:
        raise InputError(f"{what} must lie in 0 ... {hi:g} %, got {value!r}")
    return v


def _rx(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: prescription_gy must be a number of Gy, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what}: prescription_gy must be positive, got {value!r}")
    return v


def _margin_spec(value, what: str):
    """A margin as :mod:`core.structures` takes it, made hashable: float, 3-tuple or sorted pairs."""
    if isinstance(value, Mapping):
        pairs = tuple(sorted((str(k), _mm(v, f"{what} '{k}'")) for k, v in value.items()))
        if not pairs:
            raise InputError(f"{what}: give at least one direction")
        return pairs
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) for p in value):
            return tuple(sorted((str(k), _mm(v, f"{what} '{k}'")) for k, v in value))
        if len(value) != 3:
            raise InputError(f"{what} is one number of mm, 3 (one per array axis) or directions, got {list(value)}")
        return tuple(_mm(v, what) for v in value)
    return _mm(value, what)


def _margin_arg(spec):
    """The hashable margin back in the form :mod:`core.structures` expects."""
    if isinstance(spec, tuple) and spec and isinstance(spec[0], tuple):
        return dict(spec)
    return spec


def _margin_json(spec):
    if isinstance(spec, tuple) and spec and isinstance(spec[0], tuple):
        return {k: v for k, v in spec}
    if isinstance(spec, tuple):
        return list(spec)
    return spec


def _margin_is_zero(spec) -> bool:
    if isinstance(spec, tuple) and spec and isinstance(spec[0], tuple):
        return all(v == 0 for _, v in spec)
    return bool(np.all(np.asarray(spec, float) == 0))


def _target_names(patient) -> list[str]:
    """The patient's non-empty TARGET structures."""
    from core.patient import StructureRole

    return [n for n, s in patient.structures.items() if s.role is StructureRole.TARGET and not s.is_empty]


# -- build context --------------------------------------------------------------------------
class _Context:
    """Source masks for building: structures staged in this call first, then the patient's."""

    def __init__(self, patient, dose_gy: np.ndarray | None = None):
        self.patient = patient
        self.dose_gy = dose_gy
        self.staged: dict = {}

    def mask(self, name: str, rule: "HelperRule") -> np.ndarray:
        if name in self.staged:
            m = self.staged[name]
        elif name in self.patient.structures:
            m = self.patient.structures[name].mask
        else:
            have = ", ".join(self.patient.structures) or "none"
            raise InputError(f"helper '{rule.name}': source structure '{name}' does not exist (have: {have})")
        if not m.any():
            raise InputError(f"helper '{rule.name}': source structure '{name}' is empty")
        return m

    def body(self, rule: "HelperRule", required: bool) -> np.ndarray | None:
        try:
            return self.patient.external_mask()
        except GeometryError:
            if required:
                raise InputError(f"helper '{rule.name}': the patient has no body outline (EXTERNAL) "
                                 "to crop the patch to") from None
            return None

    def target_names(self) -> list[str]:
        return _target_names(self.patient)

    def prescription_gy(self, rule: "HelperRule", target: str | None = None) -> float:
        ps = self.patient.prescriptions
        if target is not None:
            for p in ps:
                if p.structure == target:
                    return float(p.dose_gy)
            raise InputError(f"helper '{rule.name}': '{target}' has no prescription; give prescription_gy")
        if not ps:
            raise InputError(f"helper '{rule.name}': the patient has no prescription; give prescription_gy")
        return float(max(p.dose_gy for p in ps))


# -- rules ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HelperRule:
    """Base of every rule: ``name`` is the structure it makes."""

    name: str
    kind: ClassVar[RuleKind]
    needs_dose: ClassVar[bool] = False

    def __post_init__(self):
        object.__setattr__(self, "name", _name(self.name, "a helper structure"))

    def source_names(self, patient=None) -> tuple:
        """The structures this rule reads (``patient`` resolves "all targets")."""
        raise NotImplementedError

    def build(self, ctx: _Context) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The JSON form (``kind`` first)."""
        d: dict = {"kind": self.kind.value}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, enum.Enum):
                v = v.value
            elif f.name in ("margin_mm",):
                v = _margin_json(v)
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        return d

    def _crop(self, ctx: _Context, mask: np.ndarray, crop: bool) -> np.ndarray:
        if crop:
            body = ctx.body(self, required=False)
            if body is not None:
                mask = mask & body
        return mask


@dataclass(frozen=True)
class MarginRule(HelperRule):
    """``source`` grown by ``margin_mm`` (or shrunk, ``shrink=True``); see :func:`core.structures.expand`."""

    source: str = ""
    margin_mm: Any = 0.0
    shrink: bool = False
    crop_to_body: bool = True
    kind: ClassVar[RuleKind] = RuleKind.MARGIN

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "source", _name(self.source, f"margin '{self.name}': the source"))
        object.__setattr__(self, "margin_mm", _margin_spec(self.margin_mm, f"margin '{self.name}'"))

    def source_names(self, patient=None) -> tuple:
        return (self.source,)

    def build(self, ctx: _Context) -> np.ndarray:
        from core.structures import expand, shrink

        m = ctx.mask(self.source, self)
        op = shrink if self.shrink else expand
        return self._crop(ctx, op(m, ctx.patient.grid, _margin_arg(self.margin_mm)), self.crop_to_body)


@dataclass(frozen=True)
class BooleanRule(HelperRule):
    """Union or intersection of ``sources``, or (``subtract``) the first minus all the others."""

    op: BooleanOp = BooleanOp.UNION
    sources: tuple = ()
    crop_to_body: bool = True
    kind: ClassVar[RuleKind] = RuleKind.BOOLEAN

    def __post_init__(self):
        super().__post_init__()
        try:
            op = self.op if isinstance(self.op, BooleanOp) else BooleanOp(str(self.op).lower())
        except ValueError:
            raise InputError(f"boolean '{self.name}': op must be union, intersection or subtract, "
                             f"got {self.op!r}") from None
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "sources", _names(self.sources, f"boolean '{self.name}'", at_least=2))

    def source_names(self, patient=None) -> tuple:
        return self.sources

    def build(self, ctx: _Context) -> np.ndarray:
        from core.structures import intersection, subtract, union

        ms = [ctx.mask(s, self) for s in self.sources]
        if self.op is BooleanOp.UNION:
            out = union(*ms)
        elif self.op is BooleanOp.INTERSECTION:
            out = intersection(*ms)
        else:
            out = subtract(ms[0], union(*ms[1:]))
        return self._crop(ctx, out, self.crop_to_body)


@dataclass(frozen=True)
class RingRule(HelperRule):
    """Shell from ``inner_mm`` to ``outer_mm`` beyond the surface of ``target`` (:func:`core.structures.ring`),
    without every target when ``exclude_targets``."""

    target: str = ""
    inner_mm: float = 0.0
    outer_mm: float = 10.0
    exclude_targets: bool = True
    crop_to_body: bool = True
    kind: ClassVar[RuleKind] = RuleKind.RING

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "target", _name(self.target, f"ring '{self.name}': the target"))
        inner = _mm(self.inner_mm, f"ring '{self.name}': inner_mm")
        outer = _mm(self.outer_mm, f"ring '{self.name}': outer_mm", positive=True)
        if outer <= inner:
            raise InputError(f"ring '{self.name}': needs inner_mm < outer_mm, got {inner:g} / {outer:g} mm")
        object.__setattr__(self, "inner_mm", inner)
        object.__setattr__(self, "outer_mm", outer)

    def source_names(self, patient=None) -> tuple:
        if self.exclude_targets and patient is not None:
            return tuple(dict.fromkeys([self.target] + _target_names(patient)))
        return (self.target,)

    def build(self, ctx: _Context) -> np.ndarray:
        from core.structures import ring

        out = ring(ctx.mask(self.target, self), ctx.patient.grid, self.inner_mm, self.outer_mm)
        if self.exclude_targets:
            for t in ctx.target_names():
                out &= ~ctx.mask(t, self)
        return self._crop(ctx, out, self.crop_to_body)


@dataclass(frozen=True)
class OarMinusPtvRule(HelperRule):
    """``oar`` without the ``ptvs`` grown by ``margin_mm`` (an OAR objective that does not fight coverage)."""

    oar: str = ""
    ptvs: tuple = ()
    margin_mm: Any = 0.0
    crop_to_body: bool = True
    kind: ClassVar[RuleKind] = RuleKind.OAR_MINUS_PTV

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "oar", _name(self.oar, f"'{self.name}': the organ"))
        object.__setattr__(self, "ptvs", _names(self.ptvs, f"'{self.name}': the PTVs"))
        object.__setattr__(self, "margin_mm", _margin_spec(self.margin_mm, f"'{self.name}': margin"))

    def source_names(self, patient=None) -> tuple:
        return (self.oar,) + self.ptvs

    def build(self, ctx: _Context) -> np.ndarray:
        from core.structures import oar_minus_ptv

        ptvs = [ctx.mask(p, self) for p in self.ptvs]
        out = oar_minus_ptv(ctx.mask(self.oar, self), ptvs, _margin_arg(self.margin_mm), ctx.patient.grid)
        return self._crop(ctx, out, self.crop_to_body)


@dataclass(frozen=True)
class PtvMinusOarRule(HelperRule):
    """``ptv`` without the ``oars`` grown by ``margin_mm``: the "PTV OPT" a planner optimizes coverage on."""

    ptv: str = ""
    oars: tuple = ()
    margin_mm: Any = 0.0
    crop_to_body: bool = True
    kind: ClassVar[RuleKind] = RuleKind.PTV_MINUS_OAR

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "ptv", _name(self.ptv, f"'{self.name}': the PTV"))
        object.__setattr__(self, "oars", _names(self.oars, f"'{self.name}': the organs"))
        object.__setattr__(self, "margin_mm", _margin_spec(self.margin_mm, f"'{self.name}': margin"))

    def source_names(self, patient=None) -> tuple:
        return (self.ptv,) + self.oars

    def build(self, ctx: _Context) -> np.ndarray:
        from core.structures import ptv_minus_oar

        oars = [ctx.mask(o, self) for o in self.oars]
        out = ptv_minus_oar(ctx.mask(self.ptv, self), oars, _margin_arg(self.margin_mm), ctx.patient.grid)
        return self._crop(ctx, out, self.crop_to_body)


def _drop_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """``mask`` without its connected parts (26-connectivity) of fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1 or not mask.any():
        return mask
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    keep = sizes >= min_voxels
    keep[0] = False
    return keep[lab]


def _min_voxels(volume_cc: float, voxel_cc: float) -> int:
    return int(math.ceil(volume_cc / voxel_cc - 1e-9)) if volume_cc > 0 else 0


@dataclass(frozen=True)
class HotPatchRule(HelperRule):
    """Voxels receiving at least ``threshold_pct`` % of the prescription outside the targets.

    Parameters
    ----------
    threshold_pct : float
        % of ``prescription_gy`` (default: the patient's highest prescription).
    region : str, optional
        Only inside this structure (e.g. the mandible).
    targets : tuple of str
        The targets the patch stays out of; empty = every target of the patient.
    target_margin_mm : float
        Also stay this far outside the targets (the fall-off next to a PTV is not a hot spot).
    min_volume_cc : float
        Connected parts smaller than this are dropped (single hot voxels are noise).
    """

    threshold_pct: float = 100.0
    prescription_gy: float | None = None
    region: str | None = None
    targets: tuple = ()
    target_margin_mm: float = 0.0
    min_volume_cc: float = 0.0
    kind: ClassVar[RuleKind] = RuleKind.HOT_PATCH
    needs_dose: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "threshold_pct", _pct(self.threshold_pct, f"hot patch '{self.name}': threshold"))
        if self.prescription_gy is not None:
            object.__setattr__(self, "prescription_gy", _rx(self.prescription_gy, f"hot patch '{self.name}'"))
        if self.region is not None:
            object.__setattr__(self, "region", _name(self.region, f"hot patch '{self.name}': the region"))
        object.__setattr__(self, "targets", _names(self.targets, f"hot patch '{self.name}': targets", at_least=0))
        object.__setattr__(self, "target_margin_mm",
                           _mm(self.target_margin_mm, f"hot patch '{self.name}': target margin"))
        object.__setattr__(self, "min_volume_cc", _mm(self.min_volume_cc, f"hot patch '{self.name}': min volume"))

    def source_names(self, patient=None) -> tuple:
        targets = self.targets or (tuple(_target_names(patient)) if patient is not None else ())
        return targets + ((self.region,) if self.region else ())

    def threshold_gy(self, patient) -> float:
        rx = self.prescription_gy if self.prescription_gy is not None else _Context(patient).prescription_gy(self)
        return self.threshold_pct / 100.0 * rx

    def build(self, ctx: _Context) -> np.ndarray:
        from core.structures import expand

        dose = ctx.dose_gy
        level = self.threshold_gy(ctx.patient)
        body = ctx.body(self, required=True)
        region = None
        if self.region:
            region = ctx.mask(self.region, self)
            if not (region & body).any():
                raise InputError(f"hot patch '{self.name}': the region '{self.region}' lies outside the body")
        targets = np.zeros(ctx.patient.grid.shape, bool)
        for t in (self.targets or tuple(ctx.target_names())):
            targets |= ctx.mask(t, self)
        if self.target_margin_mm > 0 and targets.any():
            targets = expand(targets, ctx.patient.grid, self.target_margin_mm)
        out = (dose >= level) & ~targets & body
        if region is not None:
            out &= region
        out = _drop_small_components(out, _min_voxels(self.min_volume_cc, ctx.patient.grid.voxel_volume_cc))
        if not out.any():
            where = f" inside '{self.region}'" if self.region else ""
            raise InputError(f"hot patch '{self.name}' is empty: no voxel{where} outside the targets "
                             f"(+{self.target_margin_mm:g} mm) receives >= {self.threshold_pct:g} % "
                             f"({level:.2f} Gy; dose max there {_max_outside(dose, targets, body, region):.2f} Gy)"
                             + (f" in a part of >= {self.min_volume_cc:g} cc" if self.min_volume_cc else ""))
        return out


def _max_outside(dose, targets, body, region) -> float:
    sel = body & ~targets
    if region is not None:
        sel &= region
    return float(dose[sel].max()) if sel.any() else 0.0


@dataclass(frozen=True)
class ColdPatchRule(HelperRule):
    """Voxels of ``target`` below ``threshold_pct`` % of its prescription (``prescription_gy``
    when given, else the patient's prescription for the target)."""

    target: str = ""
    threshold_pct: float = 95.0
    prescription_gy: float | None = None
    min_volume_cc: float = 0.0
    kind: ClassVar[RuleKind] = RuleKind.COLD_PATCH
    needs_dose: ClassVar[bool] = True

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "target", _name(self.target, f"cold patch '{self.name}': the target"))
        object.__setattr__(self, "threshold_pct", _pct(self.threshold_pct, f"cold patch '{self.name}': threshold"))
        if self.prescription_gy is not None:
            object.__setattr__(self, "prescription_gy", _rx(self.prescription_gy, f"cold patch '{self.name}'"))
        object.__setattr__(self, "min_volume_cc", _mm(self.min_volume_cc, f"cold patch '{self.name}': min volume"))

    def source_names(self, patient=None) -> tuple:
        return (self.target,)

    def threshold_gy(self, patient) -> float:
        rx = (self.prescription_gy if self.prescription_gy is not None
              else _Context(patient).prescription_gy(self, self.target))
        return self.threshold_pct / 100.0 * rx

    def build(self, ctx: _Context) -> np.ndarray:
        t = ctx.mask(self.target, self)
        level = self.threshold_gy(ctx.patient)
        body = ctx.body(self, required=True)
        out = t & (ctx.dose_gy < level) & body
        out = _drop_small_components(out, _min_voxels(self.min_volume_cc, ctx.patient.grid.voxel_volume_cc))
        if not out.any():
            raise InputError(f"cold patch '{self.name}' is empty: every voxel of '{self.target}' receives "
                             f">= {self.threshold_pct:g} % ({level:.2f} Gy)"
                             + (f", or its cold parts are under {self.min_volume_cc:g} cc"
                                if self.min_volume_cc else ""))
        return out


_RULE_TYPES: dict = {c.kind: c for c in (MarginRule, BooleanRule, RingRule, OarMinusPtvRule, PtvMinusOarRule,
                                         HotPatchRule, ColdPatchRule)}


# -- JSON ---------------------------------------------------------------------------------------
def rule_from_dict(d: Mapping) -> HelperRule:
    """A rule from its JSON form (``{"kind": ..., "name": ..., parameters}``)."""
    if not isinstance(d, Mapping):
        raise InputError(f"a helper rule is a JSON object, got {type(d).__name__}")
    d = dict(d)
    d.pop("source_hash", None)
    kind = d.pop("kind", None)
    try:
        cls = _RULE_TYPES[RuleKind(str(kind))]
    except ValueError:
        raise InputError(f"helper rule '{d.get('name', '?')}': unknown kind {kind!r} "
                         f"(use one of {', '.join(k.value for k in RuleKind)})") from None
    allowed = {f.name for f in fields(cls)}
    unknown = set(d) - allowed
    if unknown:
        raise InputError(f"helper rule '{d.get('name', '?')}' ({cls.kind.value}): unknown field(s) "
                         f"{', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed))})")
    for k in ("sources", "ptvs", "oars", "targets"):
        if k in d and isinstance(d[k], list):
            d[k] = tuple(d[k])
    try:
        return cls(**d)
    except TypeError as exc:
        raise InputError(f"helper rule '{d.get('name', '?')}': {exc}") from None


def rules_to_json(rules) -> str:
    """The rules file text (``format``, ``version``, ``rules``)."""
    return json.dumps({"format": FORMAT, "version": FORMAT_VERSION, "rules": [r.to_dict() for r in rules]},
                      indent=2)


def rules_from_json(obj, path: str | Path | None = None) -> list[HelperRule]:
    """Rules from a parsed rules document (or its text)."""
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise InputError(f"not a valid helper-rules file ({exc})", path) from None
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise InputError(f"a helper-rules file holds {{\"format\": \"{FORMAT}\", \"rules\": [...]}}", path)
    if int(obj.get("version", 0)) > FORMAT_VERSION:
        raise InputError(f"helper-rules version {obj.get('version')} is newer than this OpenATP reads "
                         f"({FORMAT_VERSION})", path)
    items = obj.get("rules")
    if not isinstance(items, list):
        raise InputError("'rules' must be a list", path)
    out = []
    for i, d in enumerate(items):
        try:
            out.append(rule_from_dict(d))
        except InputError as exc:
            raise InputError(f"rule #{i + 1}: {exc.message}", path) from None
    names = [r.name for r in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"two rules make the same structure: {', '.join(dup)}", path)
    return out


def save_rules(path: str | Path, rules) -> None:
    """Write a rules file atomically."""
    from core.io.atomic import atomic_write_text

    atomic_write_text(path, rules_to_json(rules) + "\n")


def load_rules(path: str | Path) -> list[HelperRule]:
    """Read a rules file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("helper-rules file not found", path) from None
    return rules_from_json(text, path)


def rules_from_patient(patient) -> list[HelperRule]:
    """The rules of the patient's rule-made structures (structures whose ``rule`` this
    module wrote; other rule dicts, e.g. the protocol templates' distance rings, are skipped)."""
    out = []
    for s in patient.structures.values():
        if isinstance(s.rule, Mapping) and "source_hash" in s.rule:
            try:
                out.append(rule_from_dict(s.rule))
            except InputError:
                continue
    return out


# -- hashing and building ------------------------------------------------------------------------
def _hash_array(h, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(np.packbits(a).tobytes() if a.dtype == bool else a.tobytes())


def source_hash(patient, rule: HelperRule, dose_gy: np.ndarray | None = None, staged: Mapping | None = None) -> str:
    """SHA-1 of the rule's parameters, its source masks, the body, and (dose patches) the dose."""
    h = hashlib.sha1(json.dumps(rule.to_dict(), sort_keys=True).encode())
    staged = staged or {}
    for n in rule.source_names(patient):
        h.update(n.encode())
        m = staged.get(n)
        if m is None:
            s = patient.structures.get(n)
            m = None if s is None else s.mask
        if m is not None:
            _hash_array(h, m)
    try:
        _hash_array(h, patient.external_mask())
    except GeometryError:
        h.update(b"no-body")
    if rule.needs_dose:
        if dose_gy is None:
            h.update(b"no-dose")
        else:
            _hash_array(h, np.asarray(dose_gy, dtype=np.float32))
        h.update(json.dumps([[p.structure, p.dose_gy] for p in patient.prescriptions]).encode())
    return h.hexdigest()


def _dose_array(patient, dose) -> np.ndarray | None:
    if dose is None:
        return None
    arr = np.asarray(getattr(dose, "dose_gy", dose), dtype=np.float32)
    if arr.shape != patient.grid.shape:
        raise GeometryError(f"the dose {arr.shape} is not on the patient grid {patient.grid.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError("the dose holds non-finite values")
    return arr


def _check_name(patient, rule: HelperRule, staged_names) -> None:
    if rule.name in rule.source_names(patient):
        raise InputError(f"helper '{rule.name}' cannot be made from itself")
    old = patient.structures.get(rule.name)
    if old is not None and rule.name not in staged_names:
        if not isinstance(old.rule, Mapping):
            raise InputError(f"a structure named '{rule.name}' already exists and was not made by a rule "
                             "(drawn or imported): choose another name")


def build_mask(patient, rule: HelperRule, dose=None) -> np.ndarray:
    """The rule's mask on the patient grid, without adding it to the patient."""
    dose_gy = _dose_array(patient, dose)
    if rule.needs_dose and dose_gy is None:
        raise InputError(f"'{rule.name}' is made from a dose: give the plan's dose")
    out = rule.build(_Context(patient, dose_gy))
    if not out.any():
        raise InputError(f"helper '{rule.name}' is empty: its rule ({rule.kind.value}) leaves no voxel")
    return out


def _structure(patient, rule: HelperRule, mask: np.ndarray, h: str):
    from core.patient import Structure, StructureRole

    color = {RuleKind.HOT_PATCH: HOT_PATCH_COLOR, RuleKind.COLD_PATCH: COLD_PATCH_COLOR}.get(rule.kind, HELPER_COLOR)
    old = patient.structures.get(rule.name)
    if old is not None:
        color = old.color
    return Structure(rule.name, mask, StructureRole.HELPER, color, True, {**rule.to_dict(), "source_hash": h})


def make_helper(patient, rule: HelperRule, dose=None):
    """Build ``rule``'s structure and add it to ``patient`` (role HELPER).

    A structure of the same name is replaced only when a rule made it. ``dose`` (a Dose
    or an array on the patient grid) is needed by dose patches. Returns the Structure.
    Raises InputError (patient unchanged) on a missing/empty source, an empty result,
    a patch region outside the body, or a name clash.
    """
    _check_name(patient, rule, ())
    dose_gy = _dose_array(patient, dose)
    mask = build_mask(patient, rule, dose_gy)
    s = _structure(patient, rule, mask, source_hash(patient, rule, dose_gy))
    patient.add_structure(s, replace=True)
    return s


@dataclass(frozen=True)
class RegenerateReport:
    """What :func:`regenerate` did, by structure name."""

    updated: tuple = ()          # (re)built: new, or a source changed
    unchanged: tuple = ()        # sources unchanged: kept as they were
    kept: tuple = ()             # dose patches kept because no dose was given


def _order(rules: Sequence[HelperRule], patient) -> list[HelperRule]:
    """Rules in dependency order (a rule after the rules that make its sources)."""
    by_name = {}
    for r in rules:
        if r.name in by_name:
            raise InputError(f"two rules make the same structure '{r.name}'")
        by_name[r.name] = r
    out, state = [], {}

    def visit(r, chain):
        st = state.get(r.name)
        if st == "done":
            return
        if st == "active":
            raise InputError(f"helper rules depend on each other in a circle: {' -> '.join(chain + [r.name])}")
        state[r.name] = "active"
        for s in r.source_names(patient):
            if s in by_name and s != r.name:
                visit(by_name[s], chain + [r.name])
        state[r.name] = "done"
        out.append(r)

    for r in rules:
        visit(r, [])
    return out


def regenerate(patient, rules: Sequence[HelperRule], dose=None) -> RegenerateReport:
    """Update the rule-made structures whose sources (or rule, or dose) changed.

    Rules run in dependency order, so a helper made from another helper sees its new
    mask. Dose patches are rebuilt only when ``dose`` is given (a patch marks where the
    plan *was* hot; without a new dose it is kept as drawn). Everything is built first
    and committed at the end: on any InputError the patient is unchanged.

    Returns
    -------
    RegenerateReport
    """
    dose_gy = _dose_array(patient, dose)
    ordered = _order(list(rules), patient)
    ctx = _Context(patient, dose_gy)
    new: dict = {}
    updated, unchanged, kept = [], [], []
    for r in ordered:
        _check_name(patient, r, ())
        old = patient.structures.get(r.name)
        if r.needs_dose and dose_gy is None:
            if old is None:
                raise InputError(f"'{r.name}' is made from a dose and does not exist yet: give the plan's dose")
            kept.append(r.name)
            continue
        h = source_hash(patient, r, dose_gy, ctx.staged)
        if old is not None and isinstance(old.rule, Mapping) and old.rule.get("source_hash") == h:
            unchanged.append(r.name)
            continue
        mask = r.build(ctx)
        if not mask.any():
            raise InputError(f"helper '{r.name}' is empty: its rule ({r.kind.value}) leaves no voxel")
        ctx.staged[r.name] = mask
        new[r.name] = _structure(patient, r, mask, h)
        updated.append(r.name)
    for s in new.values():
        patient.add_structure(s, replace=True)
    return RegenerateReport(tuple(updated), tuple(unchanged), tuple(kept))


# -- hand-drawn patches ------------------------------------------------------------------------
def add_patch(patient, name: str, mask, color: tuple = HOT_PATCH_COLOR, role: str = "HELPER") -> tuple:
    """Add a drawn patch contour (role HELPER by default), cropped to the body.

    Returns ``(structure, warnings)``; a patch partly outside the body is cropped with a
    warning. Raises InputError (patient unchanged) for an empty patch, a patch wholly
    outside the body, or a name already in use.
    """
    from core.patient import Structure, StructureRole

    name = _name(name, "a patch")
    m = np.asarray(mask, dtype=bool)
    if m.shape != patient.grid.shape:
        raise GeometryError(f"patch '{name}' {m.shape} is not on the patient grid {patient.grid.shape}")
    if name in patient.structures:
        raise InputError(f"a structure named '{name}' already exists: choose another name")
    if not m.any():
        raise InputError(f"patch '{name}' is empty: draw at least one voxel")
    warnings = []
    try:
        body = patient.external_mask()
    except GeometryError:
        body = None
    if body is not None:
        inside = m & body
        if not inside.any():
            raise InputError(f"patch '{name}' lies wholly outside the body: nothing to optimize there")
        n_out = int(m.sum() - inside.sum())
        if n_out:
            warnings.append(f"patch '{name}': {n_out} voxels outside the body were left out")
        m = inside
    s = Structure(name, m, StructureRole(str(role).upper()), color, True, None)
    patient.add_structure(s)
    return s, warnings


def patch_conflicts(patient, patch: str, patch_goal, goals, near_mm: float = 5.0) -> list[str]:
    """P1 goals a max-dose goal on a patch may fight, in a planner's words.

    A patch whose limit lies below a P1 minimum dose and that comes within ``near_mm``
    of that goal's structure asks for a dose fall-off steeper than photon beams give
    (~10 %/5 mm at best); a patch overlapping a P1 minimum-dose structure conflicts
    outright. Returns one line per conflict (empty: none found).
    """
    from core.structures import expand

    if patch_goal.kind.is_lower_bound or patch_goal.dose_gy is None:
        return []
    pm = patient.structure(patch).mask
    out = []
    for g in goals:
        if g.priority != 1 or not g.kind.is_lower_bound or g.structure == patch:
            continue
        s = patient.structures.get(g.structure)
        if s is None or s.is_empty or g.dose_gy is None or patch_goal.dose_gy >= g.dose_gy:
            continue
        if (s.mask & pm).any():
            out.append(f"'{patch_goal.label}' conflicts with '{g.label}': the patch overlaps '{g.structure}'")
        elif (expand(s.mask, patient.grid, near_mm) & pm).any():
            out.append(f"'{patch_goal.label}' may fight '{g.label}': the patch lies within {near_mm:g} mm "
                       f"of '{g.structure}', where the dose cannot fall from {g.dose_gy:g} to "
                       f"{patch_goal.dose_gy:g} Gy")
    return out


__all__ = ["RuleKind", "BooleanOp", "HelperRule", "MarginRule", "BooleanRule", "RingRule", "OarMinusPtvRule",
           "PtvMinusOarRule", "HotPatchRule", "ColdPatchRule", "rule_from_dict", "rules_to_json",
           "rules_from_json", "save_rules", "load_rules", "rules_from_patient", "source_hash", "build_mask",
           "make_helper", "regenerate", "RegenerateReport", "add_patch", "patch_conflicts"]
