"""Treatment beams: geometry (IEC 61217), beam sets, templates and the ``--beams`` syntax.

Coordinates
-----------
Patient coordinates are DICOM LPS (+x left, +y posterior, +z superior), head-first supine.
Gantry 0: source anterior, beam travelling +y; gantry 90: source at the patient's left
(+x), beam travelling -x. The couch turns about the vertical (y) axis through the
isocentre. The beam's-eye-view (BEV) frame has unit vectors (e_x, e_y, e_z): e_y is the
beam direction, e_x and e_z span the isocentre plane; at gantry 0, couch 0 they are the
patient's +x (left) and +z (superior), i.e. IEC X_b and Y_b at collimator 0. This is
pyRadPlan's/matRad's LPS beam frame (rotation ``R = R_couch(y) @ R_gantry(z)``; columns of
``R`` are e_x, e_y, e_z), so their BEV ray positions ``(x, depth, z)`` are our ``(X, Z)``.
The collimator turns the field in the isocentre plane: field coordinates
``(u, v) = (X cos c + Z sin c, -X sin c + Z cos c)``.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from core.errors import GeometryError, InputError

TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "resources" / "beams"


@dataclass(frozen=True)
class MLCModel:
    """A multileaf collimator: leaf width at the isocentre and how many leaf pairs."""

    name: str
    leaf_width_mm: float
    n_pairs: int

    def __post_init__(self):
        if self.leaf_width_mm <= 0 or self.n_pairs < 1:
            raise InputError(f"MLC '{self.name}': leaf width and pair count must be positive")


MLC_MODELS: dict[str, MLCModel] = {}


def register_mlc(model: MLCModel) -> None:
    MLC_MODELS[model.name] = model


register_mlc(MLCModel("ideal", 5.0, 80))            # fluence-level (beamlet) delivery
register_mlc(MLCModel("millennium120", 5.0, 60))   # central leaves of a 120-leaf MLC
register_mlc(MLCModel("agility160", 5.0, 80))


def get_mlc(name: str) -> MLCModel:
    try:
        return MLC_MODELS[name]
    except KeyError:
        raise InputError(f"unknown MLC model '{name}' (have: {', '.join(sorted(MLC_MODELS))})") from None


class BeamKind(enum.Enum):
    STATIC = "STATIC"
    ARC_CONTROL_POINT = "ARC_CONTROL_POINT"


def rotation_matrix(gantry_deg: float, couch_deg: float) -> np.ndarray:
    """(3, 3) R with columns (e_x, e_y, e_z) of the BEV frame in LPS; BEV = R^T (p - iso)."""
    g, c = np.deg2rad(gantry_deg), np.deg2rad(couch_deg)
    rg = np.array([[np.cos(g), -np.sin(g), 0.0], [np.sin(g), np.cos(g), 0.0], [0.0, 0.0, 1.0]])
    rc = np.array([[np.cos(c), 0.0, np.sin(c)], [0.0, 1.0, 0.0], [-np.sin(c), 0.0, np.cos(c)]])
    return rc @ rg


@dataclass(frozen=True)
class Beam:
    """One photon beam (or one control point of an arc).

    Parameters
    ----------
    gantry_deg, couch_deg, collimator_deg : float
        IEC 61217 angles; gantry and collimator in [0, 360), couch in (-360, 360).
    isocenter_mm : (3,) float or None
        LPS (x, y, z); ``None`` until :meth:`BeamSet.resolve` sets it (target centroid).
    sad_mm : float
    energy_mv : float
    mlc : str
        Key of :data:`MLC_MODELS`.
    field_mm : (2,) float or None
        Open (jaw) field size (u, v) at the isocentre plane; ``None`` = shaped by beamlets.
    ssd_mm : float or None
        If given, the isocentre is placed on the central axis so that the source-surface
        distance is this value (the ``ssd=`` of the ``--beams`` syntax).
    mu : float
        Monitor units of an open field (forward dose with ``--fluence open``).
    weight : float
        Relative weight inside a beam set (arc control points share an arc's MU).
    """

    gantry_deg: float
    couch_deg: float = 0.0
    collimator_deg: float = 0.0
    isocenter_mm: tuple | None = None
    sad_mm: float = 1000.0
    energy_mv: float = 6.0
    mlc: str = "ideal"
    field_mm: tuple | None = None
    ssd_mm: float | None = None
    mu: float = 100.0
    kind: BeamKind = BeamKind.STATIC

    def __post_init__(self):
        for name in ("gantry_deg", "collimator_deg"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v < 0 or v >= 360:
                raise InputError(f"{name.replace('_deg', '')} angle must lie in 0-360 degrees (0 included, 360 not), "
                                 f"got {v:g}")
            object.__setattr__(self, name, v)
        couch = float(self.couch_deg)
        if not np.isfinite(couch) or abs(couch) >= 360:
            raise InputError(f"couch angle must lie between -360 and 360 degrees, got {couch:g}")
        object.__setattr__(self, "couch_deg", couch)
        if self.isocenter_mm is not None:
            iso = tuple(float(v) for v in self.isocenter_mm)
            if len(iso) != 3 or not np.all(np.isfinite(iso)):
                raise InputError(f"isocenter must be 3 finite numbers (x, y, z in mm), got {self.isocenter_mm}")
            object.__setattr__(self, "isocenter_mm", iso)
        if not (100.0 <= float(self.sad_mm) <= 2000.0):
            raise InputError(f"SAD must lie between 100 and 2000 mm, got {self.sad_mm:g}")
        if self.energy_mv <= 0:
            raise InputError(f"beam energy must be positive, got {self.energy_mv:g} MV")
        get_mlc(self.mlc)
        if self.field_mm is not None:
            f = tuple(float(v) for v in self.field_mm)
            if len(f) != 2 or min(f) <= 0 or not np.all(np.isfinite(f)):
                raise InputError(f"field size must be two positive numbers in mm, got {self.field_mm}")
            object.__setattr__(self, "field_mm", f)
        if self.ssd_mm is not None:
            if not (0.0 < float(self.ssd_mm) <= 2000.0):
                raise InputError(f"SSD must lie between 0 and 2000 mm, got {self.ssd_mm:g}")
            object.__setattr__(self, "ssd_mm", float(self.ssd_mm))
        if not np.isfinite(self.mu) or self.mu < 0:
            raise InputError(f"monitor units must be non-negative, got {self.mu:g}")
        if not isinstance(self.kind, BeamKind):
            object.__setattr__(self, "kind", BeamKind(str(self.kind)))

    # -- geometry ------------------------------------------------------------------------
    @property
    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.gantry_deg, self.couch_deg)

    @property
    def direction(self) -> np.ndarray:
        """Unit vector of beam travel (LPS)."""
        return self.rotation[:, 1]

    @property
    def source_mm(self) -> np.ndarray:
        if self.isocenter_mm is None:
            raise GeometryError("the beam has no isocentre yet")
        return np.asarray(self.isocenter_mm) - self.sad_mm * self.direction

    def to_dict(self) -> dict:
        return {"gantry_deg": self.gantry_deg, "couch_deg": self.couch_deg,
                "collimator_deg": self.collimator_deg,
                "isocenter_mm": None if self.isocenter_mm is None else list(self.isocenter_mm),
                "sad_mm": self.sad_mm, "energy_mv": self.energy_mv, "mlc": self.mlc,
                "field_mm": None if self.field_mm is None else list(self.field_mm),
                "ssd_mm": self.ssd_mm, "mu": self.mu, "kind": self.kind.value}

    @classmethod
    def from_dict(cls, d: dict) -> "Beam":
        d = dict(d)
        if d.get("field_mm") is not None:
            d["field_mm"] = tuple(d["field_mm"])
        if d.get("isocenter_mm") is not None:
            d["isocenter_mm"] = tuple(d["isocenter_mm"])
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown beam field(s): {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass(frozen=True)
class BeamSet:
    """An ordered set of beams (arcs appear as their control points)."""

    beams: tuple
    name: str = "custom"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        beams = tuple(self.beams)
        if not beams:
            raise InputError("a beam set needs at least one beam")
        if not all(isinstance(b, Beam) for b in beams):
            raise InputError("a beam set holds Beam objects only")
        object.__setattr__(self, "beams", beams)

    def __len__(self) -> int:
        return len(self.beams)

    def __iter__(self):
        return iter(self.beams)

    def __getitem__(self, i) -> Beam:
        return self.beams[i]

    @property
    def gantry_deg(self) -> np.ndarray:
        return np.array([b.gantry_deg for b in self.beams])

    def to_dict(self) -> dict:
        return {"name": self.name, "beams": [b.to_dict() for b in self.beams], "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "BeamSet":
        return cls(tuple(Beam.from_dict(b) for b in d["beams"]), d.get("name", "custom"), d.get("meta", {}))

    def with_isocenter(self, iso_mm) -> "BeamSet":
        return BeamSet(tuple(replace(b, isocenter_mm=tuple(iso_mm)) for b in self.beams), self.name, self.meta)

    def resolve(self, patient, target_names=None, max_field_mm: float | None = None) -> "BeamSet":
        """Fill in isocentres (target centroid, or the SSD setup) and check the geometry.

        Raises
        ------
        GeometryError
            If an explicit or default isocentre lies outside the body, or a field is
            larger than the collimator opens.
        """
        body = patient.external_mask()
        default_iso = None
        out = []
        for i, b in enumerate(self.beams):
            if max_field_mm is not None and b.field_mm is not None and max(b.field_mm) > max_field_mm + 1e-6:
                raise GeometryError(f"beam {i + 1}: field {b.field_mm[0]:g} x {b.field_mm[1]:g} mm is larger than the "
                                    f"collimator opens ({max_field_mm:g} x {max_field_mm:g} mm)")
            iso = b.isocenter_mm
            if iso is None:
                if default_iso is None:
                    default_iso = default_isocenter(patient, target_names)
                iso = tuple(default_iso)
            if b.ssd_mm is not None:
                entry = _entry_point(patient.grid, body, np.asarray(iso), b.rotation[:, 1])
                if entry is None:
                    raise GeometryError(f"beam {i + 1} (gantry {b.gantry_deg:g}): its central axis misses the body, "
                                        f"so SSD {b.ssd_mm:g} mm cannot be set up")
                iso = tuple(entry + (b.sad_mm - b.ssd_mm) * b.rotation[:, 1])
            else:
                idx = np.round(patient.grid.patient_to_index(np.asarray(iso))[0]).astype(int)
                inside = np.all(idx >= 0) and np.all(idx < np.asarray(patient.grid.shape)) and bool(body[tuple(idx)])
                if not inside:
                    raise GeometryError(f"beam {i + 1}: isocentre ({iso[0]:.1f}, {iso[1]:.1f}, {iso[2]:.1f}) mm "
                                        "lies outside the body")
            out.append(replace(b, isocenter_mm=tuple(float(v) for v in iso)))
        return BeamSet(tuple(out), self.name, self.meta)


def default_isocenter(patient, target_names=None) -> np.ndarray:
    """Centroid (LPS mm) of the named targets, else of all targets, else of the body."""
    if target_names:
        masks = [patient.structure(n).mask for n in target_names]
    else:
        masks = [s.mask for s in patient.targets if not s.is_empty]
    if not masks:
        masks = [patient.external_mask()]
    m = np.logical_or.reduce(masks)
    if not m.any():
        raise GeometryError("cannot place the isocentre: the target (or body) is empty")
    return patient.grid.index_to_patient(np.argwhere(m).mean(axis=0))[0]


def _entry_point(grid, body, point, direction, step_mm: float = 0.25):
    """First body point on the line through ``point`` along ``direction`` (coming from -inf)."""
    span = float(np.linalg.norm(np.asarray(grid.shape) * np.asarray(grid.spacing_mm))) + 10.0
    s = np.arange(-span, span, step_mm)
    pts = point[None, :] + s[:, None] * direction[None, :]
    idx = np.round(grid.patient_to_index(pts)).astype(int)
    ok = np.all((idx >= 0) & (idx < np.asarray(grid.shape)), axis=1)
    hit = np.zeros(len(s), dtype=bool)
    hit[ok] = body[tuple(idx[ok].T)]
    if not hit.any():
        return None
    # A point hits once it rounds into a body voxel, i.e. at the voxel boundary, which is
    # where the trilinearly sampled density reaches half its value: the phantom surface.
    k = int(np.argmax(hit))
    if k == 0:
        return pts[0]
    # Bisect between the last miss and the first hit: the boundary to ~1e-4 mm.
    lo, hi = s[k - 1], s[k]
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        i = np.round(grid.patient_to_index(point + mid * direction)[0]).astype(int)
        inside = np.all(i >= 0) and np.all(i < np.asarray(grid.shape)) and bool(body[tuple(i)])
        lo, hi = (lo, mid) if inside else (mid, hi)
    return point + hi * direction


# -- templates --------------------------------------------------------------------------
def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))


def _arc_angles(start: float, stop: float, step: float, direction: str) -> list[float]:
    sign = 1.0 if direction == "cw" else -1.0
    span = ((stop - start) * sign) % 360.0 or 360.0
    n = int(np.floor(span / step + 1e-9))
    angles = [(start + sign * step * k) % 360.0 for k in range(n + 1)]
    if span - n * step > 1e-6:
        angles.append(stop % 360.0)
    return angles


def load_template(name: str) -> BeamSet:
    """The beam template ``resources/beams/<name>.json``."""
    path = TEMPLATE_DIR / f"{name}.json"
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name or "") or not path.exists():
        raise InputError(f"unknown beam template '{name}' (have: {', '.join(available_templates())})")
    try:
        spec = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"beam template is not valid JSON: {exc}", path) from None
    beams = [Beam.from_dict(b) for b in spec.get("beams", [])]
    for arc in spec.get("arcs", []):
        for g in _arc_angles(arc["start_deg"], arc["stop_deg"], arc.get("step_deg", 4.0), arc.get("direction", "cw")):
            beams.append(Beam(gantry_deg=g, collimator_deg=float(arc.get("collimator_deg", 0.0)),
                              couch_deg=float(arc.get("couch_deg", 0.0)), kind=BeamKind.ARC_CONTROL_POINT))
    return BeamSet(tuple(beams), name, {"description": spec.get("description", ""), "template": name,
                                         "arcs": spec.get("arcs", [])})


_INLINE_KEYS = {"gantry": "gantry_deg", "couch": "couch_deg", "collimator": "collimator_deg", "coll": "collimator_deg",
                "field": "field_mm", "ssd": "ssd_mm", "sad": "sad_mm", "iso": "isocenter_mm",
                "energy": "energy_mv", "mlc": "mlc", "mu": "mu"}


def _number(key: str, text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"--beams: '{key}={text}' is not a number") from None
    if not np.isfinite(v):
        raise InputError(f"--beams: '{key}={text}' is not a finite number")
    return v


def parse_beams(spec: str) -> BeamSet:
    """A template name or an inline list such as ``"gantry=0,field=100x100,ssd=1000;gantry=90"``.

    Inline keys: ``gantry``, ``couch``, ``collimator``, ``field=WxH`` (mm at the
    isocentre), ``ssd``, ``sad``, ``iso=x/y/z`` (LPS mm), ``energy``, ``mlc``, ``mu``.
    """
    text = (spec or "").strip()
    if not text:
        raise InputError("--beams is empty: give a template name (e.g. imrt9) or e.g. 'gantry=0,field=100x100'")
    if "=" not in text:
        return load_template(text)
    beams = []
    for i, part in enumerate(p for p in text.split(";") if p.strip()):
        kw: dict = {}
        for item in part.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise InputError(f"--beams: beam {i + 1}: '{item}' is not key=value")
            key, val = (s.strip() for s in item.split("=", 1))
            if key.lower() not in _INLINE_KEYS:
                raise InputError(f"--beams: beam {i + 1}: unknown key '{key}' "
                                 f"(use {', '.join(sorted(set(_INLINE_KEYS)))})")
            name = _INLINE_KEYS[key.lower()]
            if name in kw:
                raise InputError(f"--beams: beam {i + 1}: '{key}' given twice")
            if name == "field_mm":
                m = re.fullmatch(r"([0-9.eE+-]+)\s*[xX]\s*([0-9.eE+-]+)", val)
                if not m:
                    raise InputError(f"--beams: beam {i + 1}: field must be WIDTHxHEIGHT in mm, got '{val}'")
                kw[name] = (_number(key, m.group(1)), _number(key, m.group(2)))
            elif name == "isocenter_mm":
                parts = val.split("/")
                if len(parts) != 3:
                    raise InputError(f"--beams: beam {i + 1}: iso must be x/y/z in mm, got '{val}'")
                kw[name] = tuple(_number(key, p) for p in parts)
            elif name == "mlc":
                kw[name] = val
            else:
                kw[name] = _number(key, val)
        if "gantry_deg" not in kw:
            raise InputError(f"--beams: beam {i + 1} has no gantry angle (e.g. gantry=0)")
        beams.append(Beam(**kw))
    return BeamSet(tuple(beams), "inline")


def _uv_xz_np(X, Z, coll_deg: float):
    """Isocentre-plane BEV (X, Z) -> collimator field coordinates (u, v) (numpy)."""
    c, s = np.cos(np.deg2rad(coll_deg)), np.sin(np.deg2rad(coll_deg))
    return X * c + Z * s, -X * s + Z * c
