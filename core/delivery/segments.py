"""Step-and-shoot segments and what they deliver.

A :class:`Segment` is one static MLC/jaw aperture delivered with ``mu`` monitor units; a
:class:`SegmentedBeam` is the ordered list of segments of one beam. Positions are IEC BLD
coordinates at the isocentre plane in mm (see :mod:`core.delivery.mlc`).

MU convention: ``Segment.mu`` is in the unit of the dose-influence matrix's beamlet
weights (:mod:`core.dose.influence`: one beamlet of an open field at weight w receives w
MU). The optimizer plans the whole course, so these are *course* MU; the RTPLAN's
``BeamMeterset`` is per fraction (``mu / fractions``, see :mod:`core.delivery.mu`).

The one function that turns segments back into something the dose engine understands is
:func:`deliverable_weights`: every beamlet gets ``sum_s mu_s * coverage_s``, where
``coverage_s`` is the fraction of the beamlet's rectangle that segment ``s``'s aperture
(open leaf interval of each pair, cut by the jaws) leaves open. Dose from segments is
then ``dij @ deliverable_weights``. This keeps each beamlet's integrated fluence exact but
spreads it uniformly over the beamlet: structure finer than a beamlet (a leaf tip inside
it, a leaf-pair boundary across it) is averaged over 5 mm. When beamlet edges coincide
with leaf tips and leaf-pair boundaries the representation is exact; for the general
case :func:`fluence_on_grid` gives the segments' own fluence map for an engine that takes
fluence maps (measured, pencil-beam engine, water: 0.6 % of the maximum dose apart with
beamlet rows on the leaf pairs, tests/core/delivery/test_engine_dose.py; 3 % with rows
straddling the leaf pairs, as a lattice centred on the isocentre has them). Leaf transmission
and tongue-and-groove are not modelled (stated,
not hidden: together they change IMRT doses by ~1-3 %).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.delivery.mlc import MultileafCollimator, get_mlc_device
from core.errors import InputError


@dataclass(frozen=True, eq=False)
class Segment:
    """One static aperture.

    Parameters
    ----------
    leaf_a_mm : (n_pairs,) float64 ndarray, mm
        Bank A (-x side) leaf tip of every pair.
    leaf_b_mm : (n_pairs,) float64 ndarray, mm
        Bank B (+x side) leaf tip of every pair; ``leaf_b_mm >= leaf_a_mm``.
    jaw_x_mm : (x1, x2) float, mm, ``x1 <= x2``
    jaw_y_mm : (y1, y2) float, mm, ``y1 <= y2``
    mu : float
        Monitor units of this segment (course MU, the unit of the dij beamlet weights).
    """

    leaf_a_mm: np.ndarray
    leaf_b_mm: np.ndarray
    jaw_x_mm: tuple
    jaw_y_mm: tuple
    mu: float

    def __post_init__(self):
        a = np.asarray(self.leaf_a_mm, dtype=np.float64).copy()
        b = np.asarray(self.leaf_b_mm, dtype=np.float64).copy()
        if a.ndim != 1 or a.shape != b.shape or a.size == 0:
            raise InputError("a segment needs one bank-A and one bank-B position per leaf pair")
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
            raise InputError("segment leaf positions must be finite")
        if np.any(b < a - 1e-9):
            p = int(np.argmax(b < a - 1e-9))
            raise InputError(f"segment leaf pair {p + 1}: bank B ({b[p]:.1f} mm) is left of bank A ({a[p]:.1f} mm)")
        a.setflags(write=False)
        b.setflags(write=False)
        object.__setattr__(self, "leaf_a_mm", a)
        object.__setattr__(self, "leaf_b_mm", b)
        for name in ("jaw_x_mm", "jaw_y_mm"):
            j = tuple(float(v) for v in getattr(self, name))
            if len(j) != 2 or not np.all(np.isfinite(j)) or j[0] > j[1]:
                what = name.replace("_mm", "").replace("_", " ")
                raise InputError(f"segment {what} must be (lower, upper) in mm, got {j}")
            object.__setattr__(self, name, j)
        mu = float(self.mu)
        if not np.isfinite(mu) or mu < 0:
            raise InputError(f"segment MU must be a non-negative number, got {self.mu}")
        object.__setattr__(self, "mu", mu)

    @property
    def n_pairs(self) -> int:
        return int(self.leaf_a_mm.size)

    def open_area_mm2(self, mlc: MultileafCollimator) -> float:
        """Area of the aperture (leaves cut by the jaws) at the isocentre plane, mm^2."""
        edges = mlc.boundaries
        lo = np.clip(edges[:-1], *self.jaw_y_mm)
        hi = np.clip(edges[1:], *self.jaw_y_mm)
        x1, x2 = self.jaw_x_mm
        w = np.clip(np.minimum(self.leaf_b_mm, x2) - np.maximum(self.leaf_a_mm, x1), 0, None)
        return float(np.sum((hi - lo) * w))

    def problems(self, mlc: MultileafCollimator, interdigitation: bool | None = None, tol_mm: float = 1e-6) -> list:
        """Mechanical violations of ``mlc``'s limits, as planner-readable strings (empty = deliverable)."""
        out = []
        if self.n_pairs != mlc.n_pairs:
            return [f"segment has {self.n_pairs} leaf pairs, the {mlc.name} MLC has {mlc.n_pairs}"]
        a, b = self.leaf_a_mm, self.leaf_b_mm
        lo, hi = mlc.leaf_travel_mm
        if a.min() < lo - tol_mm or b.max() > hi + tol_mm:
            out.append(f"a leaf is outside the travel range {lo:g}..{hi:g} mm")
        gap = b - a
        if gap.min() < mlc.min_gap_mm - tol_mm:
            out.append(f"leaf pair {int(np.argmin(gap)) + 1} is closer than the minimum gap {mlc.min_gap_mm:g} mm")
        for bank, x in (("A", a), ("B", b)):
            if x.max() - x.min() > mlc.max_leaf_span_mm + tol_mm:
                out.append(f"bank {bank} spans {x.max() - x.min():.1f} mm, more than the "
                           f"{mlc.max_leaf_span_mm:g} mm carriage limit")
        inter = mlc.interdigitation if interdigitation is None else interdigitation
        if not inter:
            # opposing leaves of neighbouring pairs must keep the minimum gap too
            bad = np.nonzero((a[1:] > b[:-1] - mlc.min_gap_mm + tol_mm) | (a[:-1] > b[1:] - mlc.min_gap_mm + tol_mm))[0]
            if bad.size:
                out.append(f"leaf pairs {int(bad[0]) + 1}/{int(bad[0]) + 2} interdigitate")
        (x1lo, x1hi), (x2lo, x2hi) = mlc.jaw_x_limits_mm
        (y1lo, y1hi), (y2lo, y2hi) = mlc.jaw_y_limits_mm
        x1, x2 = self.jaw_x_mm
        y1, y2 = self.jaw_y_mm
        if not (x1lo - tol_mm <= x1 <= x1hi + tol_mm and x2lo - tol_mm <= x2 <= x2hi + tol_mm):
            out.append(f"X jaws ({x1:.1f}, {x2:.1f}) mm are outside their limits")
        if not (y1lo - tol_mm <= y1 <= y1hi + tol_mm and y2lo - tol_mm <= y2 <= y2hi + tol_mm):
            out.append(f"Y jaws ({y1:.1f}, {y2:.1f}) mm are outside their limits")
        return out

    def to_dict(self) -> dict:
        return {"leaf_a_mm": self.leaf_a_mm.tolist(), "leaf_b_mm": self.leaf_b_mm.tolist(),
                "jaw_x_mm": list(self.jaw_x_mm), "jaw_y_mm": list(self.jaw_y_mm), "mu": self.mu}

    @classmethod
    def from_dict(cls, d: dict) -> "Segment":
        return cls(np.asarray(d["leaf_a_mm"]), np.asarray(d["leaf_b_mm"]), tuple(d["jaw_x_mm"]),
                   tuple(d["jaw_y_mm"]), float(d["mu"]))


@dataclass(frozen=True, eq=False)
class SegmentedBeam:
    """The step-and-shoot segments of one beam.

    Parameters
    ----------
    beam_index : int
        Index of the beam in its :class:`core.dose.beams.BeamSet`.
    mlc_name : str
        Key of the MLC model (:func:`core.delivery.mlc.get_mlc_device`).
    segments : tuple of Segment
        In delivery order.
    info : dict
        Sequencing facts (levels used, MU step, quantisation bound, dropped fluence, ...),
        JSON-serialisable.
    """

    beam_index: int
    mlc_name: str
    segments: tuple
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        segs = tuple(self.segments)
        if not all(isinstance(s, Segment) for s in segs):
            raise InputError("a segmented beam holds Segment objects only")
        mlc = get_mlc_device(self.mlc_name)
        for k, s in enumerate(segs):
            if s.n_pairs != mlc.n_pairs:
                raise InputError(f"beam {self.beam_index + 1} segment {k + 1}: {s.n_pairs} leaf pairs, "
                                 f"the {mlc.name} MLC has {mlc.n_pairs}")
        object.__setattr__(self, "segments", segs)
        object.__setattr__(self, "beam_index", int(self.beam_index))

    @property
    def mlc(self) -> MultileafCollimator:
        return get_mlc_device(self.mlc_name)

    @property
    def mu(self) -> float:
        """Total (course) MU of the beam."""
        return float(sum(s.mu for s in self.segments))

    @property
    def n_segments(self) -> int:
        return len(self.segments)

    def to_dict(self) -> dict:
        return {"beam_index": self.beam_index, "mlc": self.mlc_name, "mu": self.mu,
                "segments": [s.to_dict() for s in self.segments], "info": self.info}

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentedBeam":
        return cls(int(d["beam_index"]), str(d["mlc"]), tuple(Segment.from_dict(s) for s in d["segments"]),
                   dict(d.get("info", {})))


# -- what segments deliver ----------------------------------------------------------------
def _overlap(lo1, hi1, lo2, hi2) -> np.ndarray:
    return np.clip(np.minimum(hi1, hi2) - np.maximum(lo1, lo2), 0.0, None)


def aperture_coverage(segment: Segment, mlc: MultileafCollimator, u_mm, v_mm, size_mm) -> np.ndarray:
    """Open fraction of each rectangle (beamlet or fluence pixel) under one aperture.

    Parameters
    ----------
    segment : Segment
    mlc : MultileafCollimator
    u_mm, v_mm : (n,) float ndarray, mm
        Rectangle centres at the isocentre plane (u along leaf travel, v across leaves).
    size_mm : (du, dv) float, mm
        Rectangle size.

    Returns
    -------
    (n,) float64 ndarray in [0, 1]
    """
    u = np.asarray(u_mm, dtype=np.float64).reshape(-1)
    v = np.asarray(v_mm, dtype=np.float64).reshape(-1)
    du, dv = (float(s) for s in size_mm)
    edges = mlc.boundaries
    y1, y2 = segment.jaw_y_mm
    x1, x2 = segment.jaw_x_mm
    pair_lo = np.clip(edges[:-1], y1, y2)
    pair_hi = np.clip(edges[1:], y1, y2)
    a = np.maximum(segment.leaf_a_mm, x1)
    b = np.minimum(segment.leaf_b_mm, x2)
    live = np.nonzero((pair_hi > pair_lo) & (b > a))[0]
    if live.size == 0:
        return np.zeros(u.size)
    oy = _overlap(pair_lo[live, None], pair_hi[live, None], v[None, :] - dv / 2, v[None, :] + dv / 2)
    ox = _overlap(a[live, None], b[live, None], u[None, :] - du / 2, u[None, :] + du / 2)
    return np.sum(oy * ox, axis=0) / (du * dv)


def beam_deliverable_weights(segmented: SegmentedBeam, pos_mm, size_mm) -> np.ndarray:
    """(n,) float64 beamlet weights (MU) one beam's segments deliver to its beamlets.

    ``pos_mm`` is the (n, 2) ``(u, v)`` beamlet centres of this beam, ``size_mm`` their size.
    """
    pos = np.asarray(pos_mm, dtype=np.float64).reshape(-1, 2)
    mlc = segmented.mlc
    w = np.zeros(len(pos))
    for s in segmented.segments:
        if s.mu > 0:
            w += s.mu * aperture_coverage(s, mlc, pos[:, 0], pos[:, 1], size_mm)
    return w


def deliverable_weights(segmented_beams, beamlet_beam, beamlet_pos_mm, beamlet_size_mm) -> np.ndarray:
    """Beamlet weights (MU) that a plan's segments deliver: ``dose = dij @ weights``.

    Parameters
    ----------
    segmented_beams : sequence of SegmentedBeam
    beamlet_beam : (n_beamlets,) int ndarray
        Beam index of every beamlet (``DoseInfluence.beamlet_beam``).
    beamlet_pos_mm : (n_beamlets, 2) float ndarray, mm
        Beamlet centres ``(u, v)`` at the isocentre plane (``DoseInfluence.beamlet_pos_mm``).
    beamlet_size_mm : (2,) float, mm

    Returns
    -------
    (n_beamlets,) float64 ndarray, MU
    """
    bb = np.asarray(beamlet_beam).reshape(-1)
    pos = np.asarray(beamlet_pos_mm, dtype=np.float64).reshape(-1, 2)
    if pos.shape[0] != bb.size:
        raise InputError(f"{bb.size} beamlet beam indices but {pos.shape[0]} beamlet positions")
    out = np.zeros(bb.size)
    for sb in segmented_beams:
        sel = np.nonzero(bb == sb.beam_index)[0]
        if sel.size:
            out[sel] = beam_deliverable_weights(sb, pos[sel], beamlet_size_mm)
    return out


def fluence_on_grid(segmented: SegmentedBeam, u_centers_mm, v_centers_mm) -> np.ndarray:
    """(nu, nv) float64 fluence (MU) of one beam on a regular pixel grid.

    For a dose engine that takes arbitrary fluence maps (``core.dose.engine.FluenceMap``
    is indexed ``(u, v)``); pixel size is the grid step, which must be regular.
    """
    u = np.asarray(u_centers_mm, dtype=np.float64)
    v = np.asarray(v_centers_mm, dtype=np.float64)
    du = float(u[1] - u[0]) if u.size > 1 else 1.0
    dv = float(v[1] - v[0]) if v.size > 1 else 1.0
    uu, vv = np.meshgrid(u, v, indexing="ij")
    w = beam_deliverable_weights(segmented, np.stack([uu.ravel(), vv.ravel()], axis=1), (du, dv))
    return w.reshape(u.size, v.size)


# -- back from an RTPLAN ----------------------------------------------------------------------
def _mlc_for_boundaries(boundaries) -> MultileafCollimator:
    from core.delivery.mlc import _MLC_DEVICES, register_mlc_device

    b = np.asarray(boundaries, dtype=np.float64)
    for dev in _MLC_DEVICES.values():
        if dev.n_pairs == b.size - 1 and np.allclose(dev.boundaries, b, atol=1e-3):
            return dev
    # an MLC we have no model of: keep its geometry, assume generous mechanics
    name = f"imported{b.size - 1}_{abs(hash(tuple(np.round(b, 3)))) % 10**8}"
    dev = MultileafCollimator(name=name, leaf_boundaries_mm=tuple(b), leaf_travel_mm=(-1000.0, 1000.0),
                              max_leaf_span_mm=2000.0, min_gap_mm=0.0,
                              jaw_x_limits_mm=((-1000.0, 1000.0), (-1000.0, 1000.0)),
                              jaw_y_limits_mm=((-1000.0, 1000.0), (-1000.0, 1000.0)))
    register_mlc_device(dev)
    return dev


def segmented_beams_from_plan(plan: dict, beam_indices=None) -> list:
    """Segments of a step-and-shoot RTPLAN read by :func:`core.io.dicom_import.read_rtplan`.

    Each pair of consecutive control points whose cumulative MU rises contributes one
    segment with the apertures of the first of the two (step and shoot: both are equal).
    MU are returned as course MU (``BeamMeterset x fractions``), the dij's unit.

    Parameters
    ----------
    plan : dict
        ``read_rtplan`` output.
    beam_indices : sequence of int, optional
        Beam index given to each plan beam (default 0, 1, ... in file order).
    """
    fractions = int(plan.get("fractions") or 1)
    out = []
    for i, b in enumerate(plan.get("beams", [])):
        devices = b.get("limiting_devices", {})
        mlc_key = next((k for k in devices if k.startswith("MLCX")), None)
        if mlc_key is None or not devices[mlc_key].get("leaf_boundaries_mm"):
            raise InputError(f"RTPLAN beam {b.get('number')}: no MLCX leaf boundaries")
        mlc = _mlc_for_boundaries(devices[mlc_key]["leaf_boundaries_mm"])
        n = mlc.n_pairs
        segs = []
        cps = b.get("control_points", [])
        for c0, c1 in zip(cps[:-1], cps[1:]):
            m0, m1 = c0.get("cumulative_mu"), c1.get("cumulative_mu")
            if m0 is None or m1 is None or m1 - m0 <= 0:
                continue
            leaves = np.asarray(c0["mlc_mm"][mlc_key], dtype=np.float64)
            if leaves.size != 2 * n:
                raise InputError(f"RTPLAN beam {b.get('number')}: {leaves.size} leaf positions for {n} pairs")
            jaws = c0.get("jaws_mm", {})
            jx = jaws.get("ASYMX") or jaws.get("X") or [-1000.0, 1000.0]
            jy = jaws.get("ASYMY") or jaws.get("Y") or [-1000.0, 1000.0]
            segs.append(Segment(leaves[:n], leaves[n:], tuple(jx), tuple(jy), (m1 - m0) * fractions))
        idx = i if beam_indices is None else int(beam_indices[i])
        out.append(SegmentedBeam(idx, mlc.name, tuple(segs), {"from_rtplan": True}))
    return out
