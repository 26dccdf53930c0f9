"""Planar contours <-> voxel masks, both ways, with one inside rule.

Inside rule
-----------
A voxel belongs to a structure when its *centre* lies inside the contour polygons of
its plane under the **even-odd rule**: count how many polygon edges a ray from the
centre toward increasing column crosses; odd means inside. All polygons of a plane
take part together, so a ring drawn as an outer and an inner contour has a hole, and
several islands on one plane are simply several polygons. Edges are half-open in the
row direction (an edge spans rows ``min(r0, r1) <= r < max(r0, r1)``), so a vertex that
lies exactly on a row of voxel centres is counted once, never twice.

The tracer (:func:`trace_mask_boundaries`) returns the pixel-edge outline of a 2D mask:
polygons whose vertices sit on voxel corners (half-integer indices). No voxel centre
lies on such an outline, and every boundary edge is used exactly once, so filling the
traced polygons with the even-odd rule gives back the same mask exactly. That is what
makes a DICOM export -> re-import round trip lossless for masks drawn on the CT grid.

Coordinates
-----------
2D functions work in fractional *array index* coordinates ``(row, col)`` of a plane.
:func:`rasterize_contours` and :func:`mask_to_contours` convert from/to patient LPS
millimetres through a :class:`core.geometry.Grid`; the *plane* axis is whichever array
axis runs along patient z (axial contours), the row axis is the lower-numbered of the
other two.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.errors import GeometryError, InputError
from core.geometry import Grid


# -- 2D filling --------------------------------------------------------------------------
def _edges(polygons) -> tuple[np.ndarray, np.ndarray]:
    """All closed-polygon edges as two (E, 2) arrays of start and end points (row, col)."""
    starts, ends = [], []
    for poly in polygons:
        p = np.asarray(poly, dtype=float)
        if p.ndim != 2 or p.shape[1] != 2:
            raise InputError(f"a polygon must be an (N, 2) array of (row, col), got shape {p.shape}")
        if len(p) < 3:
            continue
        starts.append(p)
        ends.append(np.roll(p, -1, axis=0))
    if not starts:
        return np.zeros((0, 2)), np.zeros((0, 2))
    return np.concatenate(starts), np.concatenate(ends)


def fill_polygons(polygons, shape) -> np.ndarray:
    """Voxel-centre-inside, even-odd fill of closed polygons on one plane.

    Parameters
    ----------
    polygons : sequence of (N, 2) float arrays
        Vertices in fractional array index coordinates (row, col); each polygon is
        closed implicitly (last vertex joins the first). Polygons with fewer than three
        vertices are ignored. Vertices may lie outside the plane; the part inside is kept.
    shape : (rows, cols)

    Returns
    -------
    (rows, cols) bool ndarray
        True where the voxel centre ``(r, c)`` is inside under the even-odd rule.

    Notes
    -----
    Scanline parity: every edge crossing the centre row ``r`` at column ``x`` flips the
    inside state of all columns ``c >= ceil(x)``. Counting flips with a bincount and
    taking the parity of the running sum is the even-odd rule, fully vectorised.
    """
    nr, nc = int(shape[0]), int(shape[1])
    out = np.zeros((nr, nc), dtype=bool)
    a, b = _edges(polygons)
    if len(a) == 0:
        return out
    r0, c0, r1, c1 = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    rmin, rmax = np.minimum(r0, r1), np.maximum(r0, r1)
    lo = np.maximum(np.ceil(rmin), 0).astype(np.int64)
    hi = np.minimum(np.ceil(rmax), nr).astype(np.int64)  # rows lo..hi-1 satisfy rmin <= r < rmax
    count = np.maximum(hi - lo, 0)
    keep = count > 0  # horizontal edges and edges outside the plane cross no centre row
    if not keep.any():
        return out
    r0, c0, r1, c1, lo, count = r0[keep], c0[keep], r1[keep], c1[keep], lo[keep], count[keep]
    edge = np.repeat(np.arange(len(count)), count)
    first = np.repeat(np.cumsum(count) - count, count)
    rows = lo[edge] + (np.arange(edge.size) - first)
    t = (rows - r0[edge]) / (r1[edge] - r0[edge])
    x = c0[edge] + t * (c1[edge] - c0[edge])
    col = np.clip(np.ceil(x), 0, nc).astype(np.int64)  # crossing right of every column: no effect
    flips = np.bincount(rows * (nc + 1) + col, minlength=nr * (nc + 1)).reshape(nr, nc + 1)
    out[:] = (np.cumsum(flips[:, :nc], axis=1) & 1).astype(bool)
    return out


# -- 2D tracing ---------------------------------------------------------------------------
def trace_mask_boundaries(mask2d: np.ndarray) -> list:
    """Pixel-edge outlines of a 2D mask as closed polygons.

    Parameters
    ----------
    mask2d : (rows, cols) bool ndarray

    Returns
    -------
    list of (N, 2) float ndarrays
        Vertices ``(row, col)`` on voxel corners (values ``k - 0.5``), collinear
        vertices removed. Outer boundaries run one way and hole boundaries the other
        (inside on the left); holes and islands are separate polygons. Filling them with
        :func:`fill_polygons` gives back ``mask2d`` exactly.
    """
    m = np.asarray(mask2d, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"trace_mask_boundaries needs a 2D mask, got {m.ndim}D")
    rows = np.nonzero(m.any(axis=1))[0]
    if rows.size == 0:
        return []
    cols = np.nonzero(m.any(axis=0))[0]
    # trace inside the bounding box only (organs are small on a 512 x 512 slice)
    r_off, c_off = int(rows[0]), int(cols[0])
    m = m[r_off:int(rows[-1]) + 1, c_off:int(cols[-1]) + 1]
    nr, nc = m.shape
    p = np.zeros((nr + 2, nc + 2), dtype=bool)
    p[1:-1, 1:-1] = m
    # Corner (i, j) of the padded lattice sits at index coordinates (i - 1.5, j - 1.5)
    # of the original plane; voxel (r, c) of the padded array has corners (r, c)..(r+1, c+1).
    W = nc + 3  # corners per row
    # Directed edges with the inside on the left when walking (row down, col right frame):
    # top edge of an inside voxel whose upper neighbour is outside runs right->left, etc.
    s_list, e_list = [], []
    top = p[1:, :] & ~p[:-1, :]           # voxel (r+1, c) inside, (r, c) outside: edge on corner row r+1
    r, c = np.nonzero(top)
    s_list.append((r + 1) * W + (c + 1)); e_list.append((r + 1) * W + c)
    bottom = p[:-1, :] & ~p[1:, :]        # voxel (r, c) inside, (r+1, c) outside: edge on corner row r+1
    r, c = np.nonzero(bottom)
    s_list.append((r + 1) * W + c); e_list.append((r + 1) * W + (c + 1))
    left = p[:, 1:] & ~p[:, :-1]          # voxel (r, c+1) inside, (r, c) outside: edge on corner col c+1
    r, c = np.nonzero(left)
    s_list.append(r * W + (c + 1)); e_list.append((r + 1) * W + (c + 1))
    right = p[:, :-1] & ~p[:, 1:]         # voxel (r, c) inside, (r, c+1) outside: edge on corner col c+1
    r, c = np.nonzero(right)
    s_list.append((r + 1) * W + (c + 1)); e_list.append(r * W + (c + 1))
    starts = np.concatenate(s_list)
    ends = np.concatenate(e_list)
    # Link edges into loops. A corner has one outgoing edge, or two where two voxels
    # touch only diagonally; any pairing of those gives loops whose even-odd fill is the
    # same (parity depends on the edge set only), so we take them in stored order.
    # In- and out-degree are equal at every corner, so a walk can only stop where it began.
    out_edges: dict = {}
    for e, s in enumerate(starts.tolist()):
        out_edges.setdefault(s, []).append(e)
    ends_l = ends.tolist()
    polys = []
    for s0 in list(out_edges):
        while out_edges[s0]:
            loop = [s0]
            e = out_edges[s0].pop()
            while True:
                corner = ends_l[e]
                if not out_edges[corner]:
                    break
                loop.append(corner)
                e = out_edges[corner].pop()
            if loop[-1] == loop[0]:
                loop.pop()
            v = np.asarray(loop)
            pts = np.stack([v // W, v % W], axis=1).astype(float)
            polys.append(_drop_collinear(pts) - 1.5 + np.array([r_off, c_off], dtype=float))
    return polys


def _drop_collinear(pts: np.ndarray) -> np.ndarray:
    """Remove vertices that lie on the straight line between their neighbours."""
    if len(pts) < 4:
        return pts
    prev = np.roll(pts, 1, axis=0)
    nxt = np.roll(pts, -1, axis=0)
    d1 = pts - prev
    d2 = nxt - pts
    cross = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]
    keep = cross != 0
    return pts[keep] if keep.sum() >= 3 else pts


# -- 3D: contours in patient mm <-> masks on a grid ---------------------------------------
_SLAB_GAP_FACTOR = 1.5  # a gap between contour planes wider than this x typical is deliberate
def _plane_axes(grid: Grid) -> tuple[int, int, int]:
    """(plane axis, row axis, col axis) of ``grid`` for axial (constant-z) contours."""
    kz = int(np.nonzero(grid.patient_axis_index == 2)[0][0])
    kr, kc = [k for k in range(3) if k != kz]
    return kz, kr, kc


@dataclass
class RasterReport:
    """What happened while rasterising one structure's contours."""

    n_contours: int = 0
    n_points: int = 0
    n_points_outside: int = 0
    n_contours_off_grid: int = 0     # planes outside the grid along z
    planes_used: int = 0
    n_voxels: int = 0                # voxels filled (counted per plane: no pass over the volume)
    notes: list = field(default_factory=list)

    @property
    def fully_outside(self) -> bool:
        return self.n_contours > 0 and self.planes_used == 0

    @property
    def fraction_points_outside(self) -> float:
        return self.n_points_outside / self.n_points if self.n_points else 0.0


def rasterize_contours(contours_mm, grid: Grid, match: str = "slice",
                       plane_spacing_mm: float | None = None) -> tuple[np.ndarray, RasterReport]:
    """Closed planar (axial) contours in patient mm -> bool mask on ``grid``.

    Parameters
    ----------
    contours_mm : sequence of (N, 3) float arrays
        Patient LPS (x, y, z) vertices of each closed planar contour, mm.
    grid : Grid
        Target grid; one of its array axes runs along patient z.
    match : {"slice", "slab"}
        ``"slice"`` (contours drawn on this grid's slices, e.g. the CT): each contour
        goes to the grid slice nearest its z, within half a slice; contours further out
        are off the grid. All contours matched to one slice are filled together (even-odd).
        ``"slab"`` (another grid, e.g. a dose grid for dose review or a resampled CT):
        each contour plane stands for a slab reaching half-way to its neighbouring planes
        (half the typical spacing at the ends and across gaps wider than 1.5 x typical);
        a grid slice takes the contours of the nearest plane whose slab holds its centre.
    plane_spacing_mm : float, optional
        For ``"slab"``: the typical contour plane spacing; default the median spacing of
        the structure's own planes (the grid's slice spacing if it has one plane only).

    Returns
    -------
    mask : bool ndarray of ``grid.shape``
    report : RasterReport
    """
    if match not in ("slice", "slab"):
        raise InputError(f"match must be 'slice' or 'slab', got {match!r}")
    kz, kr, kc = _plane_axes(grid)
    mask = np.zeros(grid.shape, dtype=bool)
    view = np.moveaxis(mask, kz, 0)  # (planes, rows, cols) view into mask
    rep = RasterReport()
    nz, nr, nc = grid.shape[kz], grid.shape[kr], grid.shape[kc]
    polys_idx, plane_pos = [], []
    for cm in contours_mm:
        pts = np.asarray(cm, dtype=float).reshape(-1, 3)
        if len(pts) < 3:
            continue
        idx = grid.patient_to_index(pts)
        rep.n_contours += 1
        rep.n_points += len(pts)
        outside = ((idx < -0.5) | (idx > np.asarray(grid.shape) - 0.5)).any(axis=1)
        rep.n_points_outside += int(outside.sum())
        polys_idx.append(idx[:, [kr, kc]])
        plane_pos.append(float(np.mean(idx[:, kz])))
    if not polys_idx:
        return mask, rep
    plane_pos = np.asarray(plane_pos)
    if match == "slice":
        slice_of = np.rint(plane_pos).astype(np.int64)
        on = (plane_pos >= -0.5) & (plane_pos <= nz - 0.5)
        rep.n_contours_off_grid = int((~on).sum())
        groups: dict = {}
        for i in np.nonzero(on)[0]:
            groups.setdefault(int(min(max(slice_of[i], 0), nz - 1)), []).append(polys_idx[i])
        for s, polys in groups.items():
            plane = fill_polygons(polys, (nr, nc))
            view[s] = plane
            rep.n_voxels += int(np.count_nonzero(plane))
        rep.planes_used = len(groups)
    else:
        # cluster contours into planes (positions within 0.01 mm are one plane)
        dz_mm = grid.spacing_mm[kz]
        key = np.rint(plane_pos * dz_mm / 0.01).astype(np.int64)
        uniq_keys, inverse = np.unique(key, return_inverse=True)
        planes = np.array([plane_pos[inverse == j].mean() for j in range(len(uniq_keys))])
        gaps = np.diff(planes)  # slice-index units
        if plane_spacing_mm is not None:
            typical = plane_spacing_mm / dz_mm
        else:
            typical = float(np.median(gaps)) if len(planes) > 1 else 1.0
        # Each plane's slab reaches half-way to its neighbours; a gap much wider than the
        # typical spacing separates two parts of the structure, so there (and at the two
        # ends) the slab reaches half the typical spacing only.
        wide = gaps > _SLAB_GAP_FACTOR * typical
        half_gap = np.where(wide, 0.5 * typical, 0.5 * gaps)
        down = np.concatenate([[0.5 * typical], half_gap]) + 1e-6
        up = np.concatenate([half_gap, [0.5 * typical]]) + 1e-6
        centres = np.arange(nz, dtype=float)
        j = np.clip(np.searchsorted(planes, centres), 1, max(len(planes) - 1, 1))
        if len(planes) == 1:
            nearest = np.zeros(nz, dtype=np.int64)
        else:
            left_closer = np.abs(centres - planes[j - 1]) <= np.abs(planes[j] - centres)
            nearest = np.where(left_closer, j - 1, j)
        offset = centres - planes[nearest]
        take = (offset >= -down[nearest]) & (offset <= up[nearest])
        cache: dict = {}
        for s in np.nonzero(take)[0]:
            pj = int(nearest[s])
            if pj not in cache:
                plane = fill_polygons([polys_idx[i] for i in np.nonzero(inverse == pj)[0]], (nr, nc))
                cache[pj] = (plane, int(np.count_nonzero(plane)))
            view[s] = cache[pj][0]
            rep.n_voxels += cache[pj][1]
        used = set(int(v) for v in nearest[take])
        rep.planes_used = len(used)
        reach = 0.5 * typical
        rep.n_contours_off_grid = int(((plane_pos < -0.5 - reach) | (plane_pos > nz - 0.5 + reach)).sum())
    if rep.planes_used and rep.n_voxels == 0:
        rep.notes.append("its contours cover no voxel centre")
    return mask, rep


def mask_to_contours(mask: np.ndarray, grid: Grid) -> list:
    """Pixel-edge outlines of every axial plane of ``mask`` as patient-mm polygons.

    Parameters
    ----------
    mask : bool ndarray of ``grid.shape``
    grid : Grid

    Returns
    -------
    list of (N, 3) float ndarrays
        LPS (x, y, z) vertices, mm, one closed polygon per outline (outer boundaries and
        holes alike), planes in increasing array index along the plane axis.
        Re-rasterising them with ``rasterize_contours(..., grid, match="slice")`` gives
        ``mask`` back exactly.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != grid.shape:
        raise GeometryError(f"mask {mask.shape} does not match its grid {grid.shape}")
    kz, kr, kc = _plane_axes(grid)
    planes = np.moveaxis(mask, kz, 0)
    out = []
    for s in np.nonzero(planes.reshape(planes.shape[0], -1).any(axis=1))[0]:
        for poly in trace_mask_boundaries(planes[s]):
            idx = np.empty((len(poly), 3))
            idx[:, kz] = s
            idx[:, kr] = poly[:, 0]
            idx[:, kc] = poly[:, 1]
            out.append(grid.index_to_patient(idx))
    return out
