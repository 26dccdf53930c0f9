"""Polygon filling and boundary tracing (core.io.rasterize) against independent references."""

import numpy as np
import pytest

from core.geometry import Grid
from core.io.rasterize import fill_polygons, mask_to_contours, rasterize_contours, trace_mask_boundaries


def _reference_even_odd(polys, shape):
    """Textbook ray casting, one point at a time (W. R. Franklin's pnpoly), all polygons
    together: the slow, obviously-correct reference for the vectorised scanline filler."""
    out = np.zeros(shape, dtype=bool)
    for r in range(shape[0]):
        for c in range(shape[1]):
            inside = False
            for poly in polys:
                n = len(poly)
                for i in range(n):
                    (r0, c0), (r1, c1) = poly[i], poly[(i + 1) % n]
                    if (r0 <= r) != (r1 <= r):  # half-open in r, as documented
                        x = c0 + (r - r0) * (c1 - c0) / (r1 - r0)
                        if c >= x:
                            inside = not inside
            out[r, c] = inside
    return out


def test_fill_matches_pnpoly_on_random_polygons():
    # Random (self-intersecting, overlapping) polygons exercise the even-odd rule fully;
    # continuous random vertices never put a voxel centre exactly on an edge.
    rng = np.random.default_rng(1)
    for _ in range(30):
        polys = [rng.uniform(-3, 17, size=(rng.integers(3, 9), 2)) for _ in range(rng.integers(1, 4))]
        np.testing.assert_array_equal(fill_polygons(polys, (14, 15)), _reference_even_odd(polys, (14, 15)))


def test_vertices_on_centre_rows_are_counted_once():
    # A diamond whose vertices lie exactly on rows of voxel centres: a naive scanline
    # counts the vertex twice and opens a gap in the row; the half-open rule does not.
    diamond = np.array([[2.0, 6.0], [6.0, 10.0], [10.0, 6.0], [6.0, 2.0]])
    got = fill_polygons([diamond], (13, 13))
    np.testing.assert_array_equal(got, _reference_even_odd([diamond], (13, 13)))
    assert got[6, 3:10].all() and got[6].sum() == 8  # centre row: columns 2..9: left edge inclusive, right exclusive


def test_ring_with_hole_and_two_islands_exact():
    # Square ring (outer 2..17, hole 7..12) plus two separate square islands: all edges
    # on half-voxel lines, so the expected mask is known exactly.
    outer = np.array([[1.5, 1.5], [1.5, 17.5], [17.5, 17.5], [17.5, 1.5]])
    hole = np.array([[6.5, 6.5], [12.5, 6.5], [12.5, 12.5], [6.5, 12.5]])  # opposite winding
    isl1 = np.array([[20.5, 2.5], [20.5, 5.5], [23.5, 5.5], [23.5, 2.5]])
    isl2 = np.array([[20.5, 10.5], [20.5, 14.5], [22.5, 14.5], [22.5, 10.5]])
    expect = np.zeros((26, 20), bool)
    expect[2:18, 2:18] = True
    expect[7:13, 7:13] = False
    expect[21:24, 3:6] = True
    expect[21:23, 11:15] = True
    np.testing.assert_array_equal(fill_polygons([outer, hole, isl1, isl2], (26, 20)), expect)
    # the same hole drawn with the outer contour's winding gives the same result (even-odd)
    np.testing.assert_array_equal(fill_polygons([outer, hole[::-1], isl1, isl2], (26, 20)), expect)


@pytest.mark.parametrize("seed", range(6))
def test_trace_then_fill_is_identity(seed):
    rng = np.random.default_rng(seed)
    m = rng.random((23, 31)) < (0.2 + 0.1 * seed)  # many holes, islands, diagonal touches
    polys = trace_mask_boundaries(m)
    np.testing.assert_array_equal(fill_polygons(polys, m.shape), m)
    for p in polys:  # vertices on voxel corners only
        assert np.all(np.abs(p - np.round(p - 0.5) - 0.5) < 1e-12)


def test_trace_checkerboard_and_edges():
    m = np.indices((6, 6)).sum(axis=0) % 2 == 0  # voxels touching only at corners
    np.testing.assert_array_equal(fill_polygons(trace_mask_boundaries(m), m.shape), m)
    full = np.ones((4, 5), bool)  # touches every border
    polys = trace_mask_boundaries(full)
    assert len(polys) == 1 and len(polys[0]) == 4  # collinear corners removed
    assert trace_mask_boundaries(np.zeros((3, 3), bool)) == []


def test_contours_mm_round_trip_on_flipped_grid():
    # Grid with non-DICOM axes (OpenKBP order y, x, -z): contours come out in patient mm
    # and rasterise back to the identical mask.
    g = Grid((20, 18, 9), (3.9, 3.7, 2.5), (-30.0, 12.0, 40.0), ("+y", "+x", "-z"))
    rng = np.random.default_rng(5)
    m = np.zeros(g.shape, bool)
    m[3:15, 4:14, 1:8] = rng.random((12, 10, 7)) < 0.7
    contours = mask_to_contours(m, g)
    for c in contours:
        assert np.ptp(c[:, 2]) == 0  # planar, axial
    back, rep = rasterize_contours(contours, g, match="slice")
    np.testing.assert_array_equal(back, m)
    assert rep.n_points_outside == 0


def test_slab_matching_on_a_finer_grid():
    # Contours every 3 mm; a 1 mm grid: each contour plane stands for +-1.5 mm.
    g = Grid((30, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    sq = lambda z: np.array([[2.0, 2.0, z], [7.0, 2.0, z], [7.0, 7.0, z], [2.0, 7.0, z]])  # noqa: E731
    mask, rep = rasterize_contours([sq(z) for z in (9.0, 12.0, 15.0)], g, match="slab")
    filled = np.nonzero(mask.any(axis=(1, 2)))[0]
    assert filled.tolist() == list(range(8, 17))  # 7.5 < z < 16.5: centres 8..16
    assert rep.planes_used == 3


def test_slab_matching_with_uneven_planes_and_a_gap():
    # Planes at 0, 2, 4, 7, 10 mm (2 then 3 mm steps) and a separate part at 30 mm, on a
    # 1 mm grid: slabs reach half-way to neighbours, so 0..10 is continuous (-1 .. 11.5),
    # and the 20 mm gap is not bridged (the part at 30 mm covers 30 +- 1 typical half-step).
    g = Grid((40, 6, 6), (1.0, 1.0, 1.0), (-5.0, 0.0, 0.0))
    sq = lambda z: np.array([[1.0, 1.0, z], [4.0, 1.0, z], [4.0, 4.0, z], [1.0, 4.0, z]])  # noqa: E731
    mask, rep = rasterize_contours([sq(z) for z in (0.0, 2.0, 4.0, 7.0, 10.0, 30.0)], g, match="slab")
    z = g.axis_coords_mm(0)[mask.any(axis=(1, 2))]
    # typical spacing = median(2, 2, 3, 3, 20) = 3 mm: ends reach 1.5 mm
    assert z.tolist() == [float(v) for v in list(range(-1, 12)) + [29, 30, 31]]
