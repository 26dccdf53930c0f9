"""Leaf sequencing: optimized fluence maps -> step-and-shoot MLC segments.

Pipeline for one beam (:func:`sequence_fluence`):

1. **Beamlet rows onto leaf pairs.** The beamlet map (rows along v, columns along u) is
   resampled onto the MLC's leaf pairs: each pair gets the area-weighted mean of the
   beamlet rows it covers. 5 mm beamlets aligned with 5 mm leaves map one to one; two
   5 mm rows under a 10 mm outer leaf are averaged (the loss of modulation this causes is
   part of the "sequencing change" reported at the end, never hidden).
2. **Quantisation** into ``levels`` equal steps of ``step = max / levels`` (MU):
   ``q = round(f / step)``, so every leaf-pair fluence value is off by at most ``step/2 =
   max / (2 levels)`` MU; the achieved maximum error is reported in ``info``.
3. **Decomposition** of the integer map into unit apertures, one open interval per leaf
   pair per segment, whose sum reproduces the quantised map *exactly*. Algorithms (a
   registry, :data:`SEQUENCERS`):

   * ``"xia_verhey"`` - the reducing-level method of Xia & Verhey, "Multileaf collimator
     leaf sequencing algorithm for intensity modulated beams with multiple static
     segments", Med. Phys. 25:1424-1434 (1998): the map is peeled at intensity
     ``Delta_k = 2^(n-k)``; at each level the positions still holding ``>= Delta_k`` form
     per-row runs, and the ``t``-th run of every row makes segment ``t`` of that level.
     Few segments, more MU.
   * ``"sweep"`` - the unidirectional leaf sweep of Bortfeld, Boyer, Schlegel, Kahler &
     Waldron, "Realization and verification of three-dimensional conformal radiotherapy
     with modulated fields", IJROBP 30:899-908 (1994) (also Galvin et al. 1993): per row,
     left leaves step at the positive gradients and right leaves at the negative ones,
     which gives each row its minimum possible MU; unit ``k`` of every row forms segment
     ``k``. Least MU, more segments.

4. **Identical apertures are merged** (delivery order does not matter for step and shoot).
5. **Mechanics**: leaf tips on the beamlet edges (rounded to the MLC's resolution),
   jaws on the aperture's bounding box (cut to the beamlet map so nothing opens where
   the dose engine has no beamlet), closed pairs parked behind a jaw with the minimum
   gap. When interdigitation is forbidden (or a bank would exceed its span), a segment
   that violates it is split into row groups delivered as separate segments with the
   same MU; closed pairs between open ones then sit inside the field with the minimum
   gap, and their small leak is counted by :func:`core.delivery.segments.deliverable_weights`.
6. **Minimum MU**: segments below ``min_segment_mu`` (per fraction) are dropped; the
   dropped fluence (MU x open area, in % of the beam's) is reported.
7. **Segment cap**: if a beam needs more than ``max_segments``, it is re-sequenced with
   fewer levels (coarser quantisation) until it fits; ``info["levels"]`` says what was used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.delivery.mlc import MultileafCollimator, get_mlc_device, mlc_for_beam
from core.delivery.segments import Segment, SegmentedBeam, beam_deliverable_weights
from core.errors import GeometryError, InputError
from core.progress import check_cancel, report

# An aperture in leaf-pair index space: {row index of the quantised map: (first col, last col)}
Aperture = dict
Decomposition = list  # of (units: int, Aperture)


# -- decompositions (integer maps -> unit apertures) ---------------------------------------
def _runs(mask_row: np.ndarray) -> list:
    """[(start, end_inclusive), ...] of the True runs of a 1D bool array."""
    d = np.diff(np.concatenate([[0], mask_row.astype(np.int8), [0]]))
    starts = np.nonzero(d == 1)[0]
    ends = np.nonzero(d == -1)[0] - 1
    return list(zip(starts.tolist(), ends.tolist()))


def decompose_xia_verhey(q: np.ndarray) -> Decomposition:
    """Reducing-level decomposition (Xia & Verhey 1998) of a non-negative integer map.

    Returns ``[(units, aperture), ...]`` with ``sum(units * aperture) == q`` exactly.
    """
    q = np.asarray(q, dtype=np.int64)
    out: Decomposition = []
    top = int(q.max()) if q.size else 0
    if top <= 0:
        return out
    residual = q.copy()
    delta = 1 << (top.bit_length() - 1)   # largest power of two <= max
    while delta >= 1:
        mask = residual >= delta
        if mask.any():
            runs = [_runs(mask[r]) for r in range(q.shape[0])]
            for t in range(max(len(rr) for rr in runs)):
                ap = {r: rr[t] for r, rr in enumerate(runs) if len(rr) > t}
                out.append((delta, ap))
            residual = residual - delta * mask
        delta >>= 1
    if residual.any():  # binary peeling always ends at zero; this guards the invariant
        raise AssertionError("reducing-level decomposition left a residual")
    return out


def decompose_sweep(q: np.ndarray) -> Decomposition:
    """Unidirectional sweep decomposition (Bortfeld et al. 1994), one MU unit per aperture.

    Row ``r`` with positive gradient total ``N_r`` gets ``N_r`` unit intervals
    ``[L_k, R_k]`` (``L`` the sorted positions of positive steps, each repeated by its
    height; ``R`` the same for negative steps), the least MU any unidirectional delivery
    of that row can have. Rows are then synchronised on the unit index, either all
    starting together or all ending together; whichever gives fewer distinct apertures
    is kept (both have the same total MU, ``max_r N_r``).
    """
    q = np.asarray(q, dtype=np.int64)
    rows = []
    for r in range(q.shape[0]):
        d = np.diff(np.concatenate([[0], q[r], [0]]))
        left = np.repeat(np.arange(q.shape[1]), np.clip(d[:-1], 0, None))
        right = np.repeat(np.arange(q.shape[1]), np.clip(-d[1:], 0, None))
        rows.append((left, right))
    n = max((len(lft) for lft, _ in rows), default=0)
    best = None
    for justify in ("start", "end"):
        out: Decomposition = []
        for k in range(n):
            ap = {}
            for r, (lft, rgt) in enumerate(rows):
                j = k if justify == "start" else k - (n - len(lft))
                if 0 <= j < len(lft):
                    ap[r] = (int(lft[j]), int(rgt[j]))
            out.append((1, ap))
        if best is None or len(merge_identical(out)) < len(merge_identical(best)):
            best = out
    return best or []


SEQUENCERS: dict[str, Callable[[np.ndarray], Decomposition]] = {}


def register_sequencer(key: str, fn: Callable[[np.ndarray], Decomposition]) -> None:
    """Register ``fn(q) -> [(units, {row: (col0, col1)})]`` under ``key``."""
    SEQUENCERS[key] = fn


register_sequencer("xia_verhey", decompose_xia_verhey)
register_sequencer("sweep", decompose_sweep)


def merge_identical(dec: Decomposition) -> Decomposition:
    """Sum the units of identical apertures (keeps first-occurrence order)."""
    acc: dict = {}
    for units, ap in dec:
        key = tuple(sorted(ap.items()))
        acc[key] = acc.get(key, 0) + units
    return [(u, dict(k)) for k, u in acc.items() if k]


def reconstruct(dec: Decomposition, shape) -> np.ndarray:
    """The integer map ``sum(units * aperture)`` of a decomposition."""
    out = np.zeros(shape, dtype=np.int64)
    for units, ap in dec:
        for r, (c0, c1) in ap.items():
            out[r, c0:c1 + 1] += units
    return out


# -- options -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequencingOptions:
    """How to sequence.

    Parameters
    ----------
    algorithm : str
        Key of :data:`SEQUENCERS`: ``"sweep"`` (default: least MU; on smooth and ring-shaped
        test maps also fewer segments than the binary reducing-level method) or ``"xia_verhey"``.
    levels : int
        Intensity levels of the quantised fluence (>= 1); bound on the error: max/(2 levels).
    min_segment_mu : float
        Smallest MU per fraction a segment may have; smaller segments are dropped.
    max_segments : int
        Cap on segments per beam; exceeded -> fewer levels.
    min_levels : int
        Coarsest quantisation the cap may force (never more than ``levels``).
    interdigitation : bool or None
        Allow a leaf to pass the opposing leaf of a neighbouring pair; ``None`` = the MLC's own.
    fractions : int
        Fractions the course MU are delivered in (``min_segment_mu`` is per fraction).
    """

    algorithm: str = "sweep"
    levels: int = 10
    min_segment_mu: float = 1.0
    max_segments: int = 30
    min_levels: int = 2
    interdigitation: bool | None = None
    fractions: int = 1

    def __post_init__(self):
        if self.algorithm not in SEQUENCERS:
            raise InputError(f"unknown leaf-sequencing algorithm '{self.algorithm}' "
                             f"(have: {', '.join(sorted(SEQUENCERS))})")
        if int(self.levels) != self.levels or self.levels < 1:
            raise InputError(f"intensity levels must be a positive integer, got {self.levels}")
        if int(self.min_levels) != self.min_levels or self.min_levels < 1:
            raise InputError(f"minimum levels must be a positive integer, got {self.min_levels}")
        if not np.isfinite(self.min_segment_mu) or self.min_segment_mu < 0:
            raise InputError(f"minimum MU per segment must be >= 0, got {self.min_segment_mu}")
        if int(self.max_segments) != self.max_segments or self.max_segments < 1:
            raise InputError(f"the segment cap must be a positive integer, got {self.max_segments}")
        if int(self.fractions) != self.fractions or self.fractions < 1:
            raise InputError(f"fractions must be a positive integer, got {self.fractions}")


# -- beamlet map <-> leaf pairs ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BeamletLattice:
    """The regular beamlet grid of one beam.

    ``u_centers_mm`` (C,) and ``v_centers_mm`` (R,) ascending; ``row``/``col`` (n,) say
    where each of the beam's beamlets sits; ``size_mm`` = (du, dv).
    """

    u_centers_mm: np.ndarray
    v_centers_mm: np.ndarray
    row: np.ndarray
    col: np.ndarray
    size_mm: tuple

    @classmethod
    def from_positions(cls, pos_mm, size_mm) -> "BeamletLattice":
        pos = np.asarray(pos_mm, dtype=np.float64).reshape(-1, 2)
        du, dv = (float(s) for s in size_mm)
        if pos.shape[0] == 0:
            raise InputError("a beam has no beamlets to sequence")
        if du <= 0 or dv <= 0:
            raise InputError(f"beamlet size must be positive, got {size_mm}")
        u0, v0 = pos[:, 0].min(), pos[:, 1].min()
        fc = (pos[:, 0] - u0) / du
        fr = (pos[:, 1] - v0) / dv
        col, row = np.round(fc).astype(int), np.round(fr).astype(int)
        if np.abs(fc - col).max() > 1e-3 or np.abs(fr - row).max() > 1e-3:
            raise GeometryError("beamlet centres do not lie on a regular grid of the beamlet size")
        key = row * (col.max() + 1) + col
        if np.unique(key).size != key.size:
            raise GeometryError("two beamlets of one beam share a position")
        return cls(u0 + du * np.arange(col.max() + 1), v0 + dv * np.arange(row.max() + 1), row, col, (du, dv))

    @property
    def shape(self) -> tuple:
        return (self.v_centers_mm.size, self.u_centers_mm.size)

    @property
    def u_edges_mm(self) -> np.ndarray:
        du = self.size_mm[0]
        return np.concatenate([self.u_centers_mm - du / 2, [self.u_centers_mm[-1] + du / 2]])

    @property
    def v_extent_mm(self) -> tuple:
        dv = self.size_mm[1]
        return float(self.v_centers_mm[0] - dv / 2), float(self.v_centers_mm[-1] + dv / 2)

    def to_map(self, w) -> np.ndarray:
        """(R, C) map (rows along v, columns along u) of per-beamlet values ``w``."""
        m = np.zeros(self.shape)
        m[self.row, self.col] = np.asarray(w, dtype=np.float64)
        return m


def pair_overlap(mlc: MultileafCollimator, lattice: BeamletLattice) -> tuple:
    """Which leaf pairs cover the map and how much of each beamlet row they cover.

    Returns ``(pairs, ov)``: ``pairs`` (P,) int indices of the leaf pairs overlapping the
    map's v extent; ``ov`` (P, R) float, mm of row ``r`` inside pair ``p``.
    """
    edges = mlc.boundaries
    dv = lattice.size_mm[1]
    vlo, vhi = lattice.v_extent_mm
    if vlo < edges[0] - 1e-6 or vhi > edges[-1] + 1e-6:
        raise GeometryError(f"the fluence map spans v = {vlo:.1f}..{vhi:.1f} mm, beyond the {mlc.name} MLC "
                            f"({edges[0]:g}..{edges[-1]:g} mm): the field is too long for the collimator")
    pairs = np.nonzero((edges[1:] > vlo + 1e-9) & (edges[:-1] < vhi - 1e-9))[0]
    rlo = lattice.v_centers_mm - dv / 2
    rhi = lattice.v_centers_mm + dv / 2
    ov = np.clip(np.minimum(edges[pairs + 1, None], rhi[None, :]) - np.maximum(edges[pairs, None], rlo[None, :]),
                 0, None)
    return pairs, ov


def map_to_pairs(fmap: np.ndarray, ov: np.ndarray) -> np.ndarray:
    """(P, C) leaf-pair fluence: area-weighted mean of the beamlet rows each pair covers."""
    return (ov @ fmap) / ov.sum(axis=1, keepdims=True)


# -- mechanics -------------------------------------------------------------------------------
class _Realizer:
    """Turns index-space apertures into mechanically valid :class:`Segment` objects."""

    def __init__(self, mlc: MultileafCollimator, lattice: BeamletLattice, pairs: np.ndarray, interdigitation: bool):
        self.mlc = mlc
        self.pairs = pairs
        self.u_edges = mlc.snap(lattice.u_edges_mm)
        self.v_extent = lattice.v_extent_mm
        self.inter = interdigitation
        lo, hi = mlc.leaf_travel_mm
        if self.u_edges[0] < lo - 1e-6 or self.u_edges[-1] > hi + 1e-6:
            raise GeometryError(f"the fluence map spans u = {self.u_edges[0]:.1f}..{self.u_edges[-1]:.1f} mm, beyond "
                                f"the leaf travel of the {mlc.name} MLC ({lo:g}..{hi:g} mm)")

    def segments(self, ap: Aperture, mu: float) -> list:
        """One segment, or several when the aperture is not deliverable in one go."""
        seg = self._build(ap, mu)
        if seg is not None:
            return [seg]
        groups, cur = [], {}
        for r in sorted(ap):
            trial = dict(cur)
            trial[r] = ap[r]
            if cur and self._build(trial, mu) is None:
                groups.append(cur)
                cur = {r: ap[r]}
            else:
                cur = trial
        groups.append(cur)
        out = []
        for g in groups:
            s = self._build(g, mu)
            if s is None:  # a single row cannot violate span or interdigitation limits
                raise GeometryError("an aperture row cannot be delivered by the MLC")
            out.append(s)
        return out

    def _build(self, ap: Aperture, mu: float) -> Segment | None:
        mlc = self.mlc
        n = mlc.n_pairs
        mg = mlc.min_gap_mm
        is_open = np.zeros(n, dtype=bool)
        a = np.zeros(n)
        b = np.zeros(n)
        for r, (c0, c1) in ap.items():
            p = self.pairs[r]
            is_open[p] = True
            a[p], b[p] = self.u_edges[c0], self.u_edges[c1 + 1]
        op = np.nonzero(is_open)[0]
        edges = mlc.boundaries
        (x1lo, x1hi), (x2lo, x2hi) = mlc.jaw_x_limits_mm
        (y1lo, y1hi), (y2lo, y2hi) = mlc.jaw_y_limits_mm
        jx1 = float(np.clip(a[op].min(), x1lo, x1hi))
        jx2 = float(np.clip(b[op].max(), x2lo, x2hi))
        # Y jaws: the open pairs, cut to the beamlet map so no fluence leaves the dij's support
        jy1 = float(np.clip(max(edges[op[0]], self.v_extent[0]), y1lo, y1hi))
        jy2 = float(np.clip(min(edges[op[-1] + 1], self.v_extent[1]), y2lo, y2hi))
        closed = ~is_open
        if self.inter:
            placed = False
            for g in self._park_candidates(a[op], b[op], jx1, jx2):
                a[closed], b[closed] = g, g + mg
                if self._span_ok(a, b):
                    placed = True
                    break
            if not placed:
                return None
        else:
            if not self._park_no_interdigitation(a, b, is_open):
                return None
        a, b = mlc.snap(a), mlc.snap(b)
        seg = Segment(a, b, (jx1, jx2), (jy1, jy2), mu)
        return None if seg.problems(mlc, self.inter, tol_mm=0.5 * mlc.position_resolution_mm + 1e-6) else seg

    def _park_candidates(self, ao, bo, jx1, jx2) -> list:
        mg, span = self.mlc.min_gap_mm, self.mlc.max_leaf_span_mm
        lo, hi = self.mlc.leaf_travel_mm
        cands = [jx1 - mg, jx2]  # behind the X1 jaw, behind the X2 jaw: no leak
        # otherwise the position that keeps both banks within their span (leaks mg x MU)
        glo = max(ao.max() - span, bo.max() - span - mg, lo)
        ghi = min(ao.min() + span, bo.min() + span - mg, hi - mg)
        if glo <= ghi:
            cands.append(float(np.clip(jx1 - mg, glo, ghi)))
        return [g for g in cands if lo - 1e-9 <= g and g + mg <= hi + 1e-9]

    def _span_ok(self, a, b) -> bool:
        span = self.mlc.max_leaf_span_mm + 1e-6
        return (a.max() - a.min() <= span) and (b.max() - b.min() <= span)

    def _park_no_interdigitation(self, a, b, is_open) -> bool:
        """Closed pairs between/around open ones, keeping neighbours' opposing leaves apart.

        Adjacent closed pairs must share one gap position g; a closed run next to open
        pairs (a1, b1) [and (a2, b2)] needs ``max(a1, a2) <= g <= min(b1, b2) - mg``.
        """
        mg = self.mlc.min_gap_mm
        n = is_open.size
        p = 0
        while p < n:
            if is_open[p]:
                p += 1
                continue
            q = p
            while q < n and not is_open[q]:
                q += 1
            nb = [k for k in (p - 1, q) if 0 <= k < n and is_open[k]]
            if not nb:
                return False  # no open pair at all
            lo = max(a[k] for k in nb)
            hi = min(b[k] for k in nb) - mg
            if lo > hi + 1e-9:
                return False
            a[p:q], b[p:q] = lo, lo + mg
            p = q
        for k in range(n - 1):
            if a[k + 1] > b[k] - mg + 1e-9 or a[k] > b[k + 1] - mg + 1e-9:
                return False
        return self._span_ok(a, b)


# -- one beam ---------------------------------------------------------------------------------
def _sequence_at_levels(pair_map, levels, opts, realizer, mlc):
    top = float(pair_map.max())
    step = top / levels
    q = np.rint(pair_map / step).astype(np.int64)
    dec = merge_identical(SEQUENCERS[opts.algorithm](q))
    if not np.array_equal(reconstruct(dec, q.shape), q):  # the exactness invariant, checked every time
        raise AssertionError(f"sequencer '{opts.algorithm}' does not reproduce the quantised fluence")
    segs, dropped = [], []
    for units, ap in dec:
        for s in realizer.segments(ap, units * step):
            (dropped if s.mu / opts.fractions < opts.min_segment_mu - 1e-9 else segs).append(s)
    return q, step, segs, dropped


def sequence_fluence(weights_mu, pos_mm, size_mm, mlc: MultileafCollimator | str,
                     options: SequencingOptions | None = None, beam_index: int = 0) -> SegmentedBeam:
    """Sequence one beam's beamlet weights into step-and-shoot segments.

    Parameters
    ----------
    weights_mu : (n,) float ndarray, MU
        The beam's optimized beamlet weights (course MU, the dij's unit).
    pos_mm : (n, 2) float ndarray, mm
        Beamlet centres ``(u, v)`` at the isocentre plane (u = leaf travel direction).
    size_mm : (du, dv) float, mm
    mlc : MultileafCollimator or registry key
    options : SequencingOptions
    beam_index : int

    Returns
    -------
    SegmentedBeam
        ``info`` holds: ``algorithm``, ``levels`` (used), ``levels_requested``, ``step_mu``,
        ``quantisation_bound_mu`` (step/2), ``quantisation_max_error_mu`` (achieved, on the
        leaf-pair map), ``pair_mapping_max_change_mu`` (beamlet rows -> leaf pairs),
        ``dropped_segments``, ``dropped_fluence_pct``, ``n_segments``, ``mu``,
        ``beamlet_rms_change_pct`` / ``beamlet_max_change_pct`` (deliverable vs optimized
        weights, % of the beam's maximum weight), ``modulation`` (beam MU / max weight).
    """
    opts = options or SequencingOptions()
    mlc = get_mlc_device(mlc) if isinstance(mlc, str) else mlc
    w = np.asarray(weights_mu, dtype=np.float64).reshape(-1)
    if w.size and (not np.all(np.isfinite(w)) or w.min() < 0):
        raise InputError(f"beam {beam_index + 1}: beamlet weights must be finite and non-negative")
    lattice = BeamletLattice.from_positions(pos_mm, size_mm)
    if lattice.row.size != w.size:
        raise InputError(f"beam {beam_index + 1}: {w.size} weights for {lattice.row.size} beamlets")
    info = {"algorithm": opts.algorithm, "levels_requested": int(opts.levels), "mlc": mlc.name}
    if w.size == 0 or w.max() <= 0:
        info.update(levels=int(opts.levels), step_mu=0.0, quantisation_bound_mu=0.0, quantisation_max_error_mu=0.0,
                    pair_mapping_max_change_mu=0.0, dropped_segments=0, dropped_fluence_pct=0.0, n_segments=0,
                    mu=0.0, beamlet_rms_change_pct=0.0, beamlet_max_change_pct=0.0, modulation=0.0)
        return SegmentedBeam(beam_index, mlc.name, (), info)
    fmap = lattice.to_map(w)
    pairs, ov = pair_overlap(mlc, lattice)
    pair_map = map_to_pairs(fmap, ov)
    inter = mlc.interdigitation if opts.interdigitation is None else bool(opts.interdigitation)
    realizer = _Realizer(mlc, lattice, pairs, inter)
    levels = int(opts.levels)
    while True:
        q, step, segs, dropped = _sequence_at_levels(pair_map, levels, opts, realizer, mlc)
        floor = min(opts.min_levels, opts.levels)
        if len(segs) <= opts.max_segments or levels <= floor:
            break
        levels = max(floor, int(np.floor(levels * 0.8)) if levels > 5 else levels - 1)
    sb = SegmentedBeam(beam_index, mlc.name, tuple(segs), {})
    area = lambda ss: sum(s.mu * s.open_area_mm2(mlc) for s in ss)  # noqa: E731
    kept_area, drop_area = area(segs), area(dropped)
    delivered = beam_deliverable_weights(sb, np.asarray(pos_mm, dtype=np.float64).reshape(-1, 2), size_mm)
    diff = delivered - w
    # the pair map seen back on the beamlet rows: what the leaf widths alone change
    back = (ov / ov.sum(axis=0, keepdims=True).clip(1e-12)).T @ pair_map
    info.update(
        levels=levels, step_mu=step, quantisation_bound_mu=step / 2,
        quantisation_max_error_mu=float(np.abs(q * step - pair_map).max()),
        pair_mapping_max_change_mu=float(np.abs(back[lattice.row, lattice.col] - w).max()),
        dropped_segments=len(dropped),
        dropped_fluence_pct=100.0 * drop_area / (kept_area + drop_area) if kept_area + drop_area > 0 else 0.0,
        n_segments=len(segs), mu=sb.mu,
        beamlet_rms_change_pct=100.0 * float(np.sqrt(np.mean(diff ** 2))) / float(w.max()),
        beamlet_max_change_pct=100.0 * float(np.abs(diff).max()) / float(w.max()),
        modulation=sb.mu / float(w.max()),
        interdigitation=inter,
        # every beamlet row inside one leaf pair? If not, pairs average neighbouring rows
        # (a half-beamlet offset smooths the fluence along v; see pair_mapping_max_change_mu)
        rows_on_leaf_pairs=bool(np.all(np.isclose(ov.max(axis=0), lattice.size_mm[1]))),
    )
    return SegmentedBeam(beam_index, mlc.name, tuple(segs), info)


def sequence_plan(weights_mu, beamlet_beam, beamlet_pos_mm, beamlet_size_mm, beams=None,
                  options: SequencingOptions | None = None, mlc: MultileafCollimator | str | None = None,
                  progress=None, cancel=None) -> list:
    """Sequence every beam of a plan.

    Parameters
    ----------
    weights_mu : (n_beamlets,) float ndarray, MU (optimized beamlet weights)
    beamlet_beam, beamlet_pos_mm, beamlet_size_mm
        As in :class:`core.dose.influence.DoseInfluence`.
    beams : BeamSet or sequence of Beam, optional
        Used for each beam's MLC (``beam.mlc``; unknown keys -> Millennium 120) and the count.
    options : SequencingOptions
    mlc : MultileafCollimator or key, optional
        Overrides the beams' MLC.

    Returns
    -------
    list of SegmentedBeam, one per beam in beam order (beams without beamlets get none).
    """
    w = np.asarray(weights_mu, dtype=np.float64).reshape(-1)
    bb = np.asarray(beamlet_beam).reshape(-1)
    pos = np.asarray(beamlet_pos_mm, dtype=np.float64).reshape(-1, 2)
    if not (w.size == bb.size == pos.shape[0]):
        raise InputError(f"{w.size} weights, {bb.size} beamlet beam indices and {pos.shape[0]} positions differ")
    n_beams = len(beams) if beams is not None else (int(bb.max()) + 1 if bb.size else 0)
    out = []
    for i in range(n_beams):
        check_cancel(cancel, out)
        if mlc is not None:
            dev = get_mlc_device(mlc) if isinstance(mlc, str) else mlc
        elif beams is not None:
            dev = mlc_for_beam(beams[i])
        else:
            dev = get_mlc_device("millennium120")
        sel = np.nonzero(bb == i)[0]
        if sel.size == 0:
            out.append(SegmentedBeam(i, dev.name, (), {"n_segments": 0, "mu": 0.0}))
        else:
            out.append(sequence_fluence(w[sel], pos[sel], beamlet_size_mm, dev, options, beam_index=i))
        asked = getattr(beams[i], "mlc", None) if beams is not None and mlc is None else None
        if asked is not None and asked != dev.name:
            # e.g. the engine's "ideal" or an MLC without a sequencing model: say so, never silently
            out[-1].info["mlc_note"] = f"beam MLC '{asked}' has no sequencing model; sequenced for {dev.name}"
        report(progress, i + 1, n_beams, f"beam {i + 1}/{n_beams}", segments=out[-1].n_segments)
    return out


def sequence_influence(dij, weights_mu, options: SequencingOptions | None = None,
                       mlc: MultileafCollimator | str | None = None, progress=None, cancel=None) -> tuple:
    """Sequence the optimized weights of a :class:`~core.dose.influence.DoseInfluence`.

    Returns
    -------
    segmented_beams : list of SegmentedBeam
    deliverable_mu : (n_beamlets,) float64 ndarray
        What the segments deliver, as beamlet weights: the final dose is
        ``dij.dose_on_grid(deliverable_mu)``.
    """
    from core.delivery.segments import deliverable_weights

    w = weights_mu.detach().cpu().numpy() if hasattr(weights_mu, "detach") else np.asarray(weights_mu)
    sbs = sequence_plan(w, dij.beamlet_beam, dij.beamlet_pos_mm, dij.beamlet_size_mm, dij.beams, options, mlc,
                        progress, cancel)
    return sbs, deliverable_weights(sbs, dij.beamlet_beam, dij.beamlet_pos_mm, dij.beamlet_size_mm)
