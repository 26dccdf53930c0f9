"""Margins, rings and booleans against analytic shapes.

The margin convention (core/structures.py): the structure's surface lies half a voxel
beyond its boundary voxel centres, so a box of voxels is a physical box and its expansion
by m is the Minkowski sum with a ball (ellipsoid) of radius m.
"""

import time

import numpy as np
import pytest

from core import structures as S
from core.errors import GeometryError, InputError
from core.geometry import OPENKBP_AXES, Grid


def box_in(shape, lo, size):
    m = np.zeros(shape, bool)
    m[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]] = True
    return m


def minkowski_box_ball(a, b, c, r):
    """Volume of an a x b x c box grown by a ball of radius r (Steiner formula)."""
    return a * b * c + 2 * r * (a * b + b * c + c * a) + np.pi * r * r * (a + b + c) + 4 / 3 * np.pi * r ** 3


def extent(mask, axis):
    """Index range (first, last) of the mask along an axis through the box centre."""
    idx = np.flatnonzero(mask.any(axis=tuple(k for k in range(3) if k != axis)))
    return idx[0], idx[-1]


@pytest.mark.parametrize("spacing,size,margin", [
    ((1.0, 1.0, 1.0), (20, 20, 20), 6.0),
    ((2.0, 1.0, 1.5), (8, 20, 14), 6.0),      # anisotropic: 3, 6 and 4 voxels
    ((2.0, 2.0, 2.0), (10, 10, 10), 10.0),
])
def test_cube_margin_faces_and_minkowski_volume(spacing, size, margin):
    sp = np.array(spacing)
    reach = np.round(margin / sp).astype(int)
    shape = tuple(int(n) for n in np.array(size) + 2 * reach + 6)
    lo = tuple(int(r) + 3 for r in reach)
    cube = box_in(shape, lo, size)
    grown = S.expand(cube, sp, margin)
    # exact faces: margin / spacing voxels beyond each face, on every axis
    for k in range(3):
        assert extent(grown, k) == (lo[k] - reach[k], lo[k] + size[k] - 1 + reach[k])
    # rounded edges and corners: volume vs the analytic Minkowski sum. Why 3 %: the
    # curved quarter-cylinders and octants are sampled on voxel centres, an error of a
    # fraction of a voxel over their area (measured: -0.5 %, -1.5 %, -1.7 %).
    v = grown.sum() * sp.prod() / 1000.0
    v_ref = minkowski_box_ball(*(np.array(size) * sp), margin) / 1000.0
    assert v == pytest.approx(v_ref, rel=0.03)
    # the corner is cut: the voxel diagonally beyond the corner at margin/sqrt(3) per axis is in,
    # the box-corner voxel grown by the full margin on all axes is out
    corner = tuple(lo[k] + size[k] - 1 + reach[k] for k in range(3))
    assert not grown[corner]
    # erosion is the dual: shrinking the grown box gives the box back
    assert np.array_equal(S.shrink(grown, sp, margin), cube)


def test_margin_rounding_when_not_a_multiple_of_the_voxel():
    cube = box_in((30, 30, 30), (10, 10, 10), (10, 10, 10))
    # 2.4 mm on 1 mm voxels: surface within half a voxel -> 2 voxels; 2.6 mm -> 3 voxels
    assert extent(S.expand(cube, (1, 1, 1), 2.4), 0) == (8, 21)
    assert extent(S.expand(cube, (1, 1, 1), 2.6), 0) == (7, 22)
    # zero margin on one array axis: that axis is unchanged
    g = S.expand(cube, (1, 1, 1), (0, 3, 3))
    assert extent(g, 0) == (10, 19) and extent(g, 1) == (7, 22)


def test_patient_direction_margins_on_openkbp_axes():
    # OpenKBP axes (+y, +x, -z): axis0 increases posterior, axis2 increases inferior
    grid = Grid((40, 40, 40), (2.0, 2.0, 2.5), (0, 0, 0), OPENKBP_AXES)
    cube = box_in(grid.shape, (15, 15, 15), (6, 6, 6))
    g = S.expand(cube, grid, {"A": 6, "P": 2, "S": 5, "I": 0, "L": 4, "R": 4})
    assert extent(g, 0) == (15 - 3, 20 + 1)       # anterior 6 mm = 3 voxels toward index 0
    assert extent(g, 1) == (15 - 2, 20 + 2)       # left/right 4 mm = 2 voxels
    assert extent(g, 2) == (15 - 2, 20)           # superior 5 mm = 2 voxels toward index 0, inferior 0
    # a symmetric mapping (FFT path not used) equals the per-array-axis form
    sym = S.expand(cube, grid, {"x": 4, "y": 6, "z": 5})
    assert np.array_equal(sym, S.expand(cube, grid, (6, 4, 5)))
    # and the FFT path equals the EDT path on a symmetric ellipsoid
    m = np.array([[6.0, 6.0], [4.0, 4.0], [5.0, 5.0]])
    assert np.array_equal(S._dilate_fft(cube, np.array(grid.spacing_mm), m), sym)
    # shrinking "posterior 4 mm" pulls only the posterior face in (2 voxels)
    sh = S.shrink(cube, grid, {"P": 4})
    assert extent(sh, 0) == (15, 18) and extent(sh, 1) == (15, 20)
    with pytest.raises(InputError, match="patient grid"):
        S.expand(cube, grid.spacing_mm, {"A": 5})


def ball(radius_mm, spacing, pad_mm):
    half = np.ceil((radius_mm + pad_mm) / np.array(spacing)).astype(int) + 2
    axes = [np.arange(-h, h + 1) * s for h, s in zip(half, spacing)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    return np.sqrt(x * x + y * y + z * z) <= radius_mm


def shell(r_in, r_out):
    return 4 / 3 * np.pi * (r_out ** 3 - r_in ** 3)


@pytest.mark.parametrize("r,inner,outer,spacing", [
    (10.0, 3.0, 8.0, (1.0, 1.0, 1.0)),
    (12.0, 2.0, 9.0, (1.0, 1.5, 2.0)),
])
def test_ring_of_a_sphere(r, inner, outer, spacing):
    b = ball(r, spacing, outer)
    rg = S.ring(b, spacing, inner, outer)
    v = rg.sum() * np.prod(spacing)
    # Why these bounds: both ring surfaces of a voxelised sphere are known to lie between
    # 0.1 voxel inside and half a voxel outside the analytic radii (boundary centres lie
    # up to half a voxel inside the half-voxel surface); the ring volume is monotone in a
    # common radial shift d. Measured: +4.5 % (1 mm voxels), +4.3 % (anisotropic).
    s = max(spacing)
    lo = shell(r + inner - 0.1 * s, r + outer - 0.1 * s)
    hi = shell(r + inner + 0.5 * s, r + outer + 0.5 * s)
    assert lo <= v <= hi, (lo, v, shell(r + inner, r + outer), hi)
    assert not (rg & b).any()
    # inner 0 touches the target
    touching = S.ring(b, spacing, 0.0, outer)
    assert np.array_equal(touching | b, S.expand(b, spacing, outer))


def test_booleans_and_external_clip():
    a = box_in((20, 20, 20), (2, 2, 2), (10, 10, 10))
    b = box_in((20, 20, 20), (8, 8, 8), (10, 10, 10))
    assert S.union(a, b).sum() == 2 * 1000 - 4 ** 3
    assert S.union([a, b]).sum() == 2 * 1000 - 4 ** 3
    assert S.intersection(a, b).sum() == 4 ** 3
    assert S.subtract(a, b).sum() == 1000 - 4 ** 3
    ext = np.zeros((20, 20, 20), bool)
    ext[:, :, :10] = True
    grown = S.expand(a, (1, 1, 1), 3, external=ext)
    assert not (grown & ~ext).any() and grown[:, :, 9].any()
    with pytest.raises(GeometryError):
        S.union(a, np.zeros((3, 3, 3), bool))
    with pytest.raises(InputError):
        S.expand(a, (1, 1, 1), -2)
    with pytest.raises(InputError):
        S.ring(a, (1, 1, 1), 5, 3)


def test_oar_minus_ptv_and_ptv_minus_oar():
    oar = box_in((30, 30, 30), (5, 5, 5), (10, 10, 10))
    ptv = box_in((30, 30, 30), (15, 5, 5), (10, 10, 10))   # touches the OAR's face at index 15
    assert S.oar_minus_ptv(oar, ptv).sum() == 1000          # no overlap
    # a 3 mm margin on 1 mm voxels removes 3 layers of the OAR next to the PTV
    assert S.oar_minus_ptv(oar, [ptv], 3.0, grid=(1, 1, 1)).sum() == 700
    overlap = box_in((30, 30, 30), (10, 5, 5), (10, 10, 10))
    assert S.ptv_minus_oar(overlap, oar).sum() == 500
    assert S.ptv_minus_oar(overlap, [oar], 2.0, grid=(1, 1, 1)).sum() == 300
    with pytest.raises(InputError):
        S.oar_minus_ptv(oar, ptv, 3.0)


def test_large_ct_stays_fast():
    # a 6 x 6 x 9 cm PTV on a 512 x 512 x 150 CT: cropping keeps this well under a second
    big = np.zeros((150, 512, 512), bool)
    big[60:90, 200:260, 200:260] = True
    t0 = time.perf_counter()
    g = S.expand(big, (3.0, 1.0, 1.0), 10.0)
    r = S.ring(big, (3.0, 1.0, 1.0), 5.0, 20.0)
    elapsed = time.perf_counter() - t0
    assert g.sum() > big.sum() and r.any()
    assert elapsed < 5.0, elapsed    # measured ~0.15 s; 5 s leaves room for a loaded CI machine
