"""Grid index <-> patient coordinates for the two axis orders, and resampling."""

import numpy as np
import pytest

from core.errors import GeometryError
from core.geometry import DICOM_AXES, OPENKBP_AXES, Grid, resample_to_grid

RNG = np.random.default_rng(7)


def test_dicom_axes_known_voxel():
    # DICOM order (z, y, x): voxel [k, j, i] at x = ox + i dx, y = oy + j dy, z = oz + k dz
    g = Grid((10, 20, 30), (2.5, 1.2, 0.9), (-40.0, 100.0, -250.0), DICOM_AXES)
    xyz = g.index_to_patient([[3, 4, 5]])[0]
    assert np.allclose(xyz, [-250.0 + 5 * 0.9, 100.0 + 4 * 1.2, -40.0 + 3 * 2.5])


def test_openkbp_axes_known_voxel():
    # OpenKBP (y, x, -z): axis0 -> +y, axis1 -> +x, axis2 -> -z
    g = Grid((128, 128, 128), (3.906, 3.906, 2.5), (0.0, 0.0, 0.0), OPENKBP_AXES)
    xyz = g.index_to_patient([[10, 20, 30]])[0]
    assert np.allclose(xyz, [20 * 3.906, 10 * 3.906, -30 * 2.5])
    # moving along axis 2 goes inferior, along axis 0 posterior, along axis 1 to patient left
    assert np.allclose(g.direction, [[0, 1, 0], [1, 0, 0], [0, 0, -1]])


@pytest.mark.parametrize("axes", [DICOM_AXES, OPENKBP_AXES, ("-x", "+z", "-y")])
def test_round_trip(axes):
    g = Grid((17, 23, 31), (1.7, 0.8, 3.1), (12.0, -5.5, 200.0), axes)
    idx = RNG.uniform(-2, 30, size=(200, 3))
    back = g.patient_to_index(g.index_to_patient(idx))
    assert np.allclose(back, idx, atol=1e-9)
    p = RNG.uniform(-300, 300, size=(200, 3))
    assert np.allclose(g.index_to_patient(g.patient_to_index(p)), p, atol=1e-9)


def test_bounds_and_contains():
    g = Grid((3, 4, 5), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), OPENKBP_AXES)
    b = g.bounds_mm()
    assert np.allclose(b[0], [0, 3])      # x from axis 1: 4 voxels of 1 mm -> centres 0..3
    assert np.allclose(b[1], [0, 4])      # y from axis 0: 3 voxels of 2 mm -> centres 0..4
    assert np.allclose(b[2], [-4, 0])     # z from axis 2 (-z): 5 voxels of 1 mm -> 0..-4
    assert g.contains_patient([[0, 0, 0]])[0]
    assert not g.contains_patient([[0, 0, 5]])[0]


def test_invalid_grids():
    with pytest.raises(GeometryError):
        Grid((0, 2, 2), (1, 1, 1), (0, 0, 0))
    with pytest.raises(GeometryError):
        Grid((2, 2, 2), (1, -1, 1), (0, 0, 0))
    with pytest.raises(GeometryError):
        Grid((2, 2, 2), (1, 1, 1), (0, 0, 0), ("+x", "+x", "+z"))


def test_resample_between_axis_orders_is_exact_on_coincident_centres():
    # the same physical voxels described in OpenKBP order and in DICOM order
    src = Grid((6, 7, 8), (2.0, 3.0, 2.5), (0.0, 0.0, 0.0), OPENKBP_AXES)
    vals = RNG.uniform(0, 10, size=src.shape).astype(np.float32)
    # DICOM (z, y, x): z runs from -(8-1)*2.5 upward, y from 0 (axis0), x from 0 (axis1)
    dst = Grid((8, 6, 7), (2.5, 2.0, 3.0), (-17.5, 0.0, 0.0), DICOM_AXES)
    out = resample_to_grid(vals, src, dst, order=1)
    expected = np.transpose(vals[:, :, ::-1], (2, 0, 1))
    assert np.allclose(out, expected, atol=1e-5)


def test_resample_linear_field_half_voxel_shift():
    # trilinear interpolation reproduces a linear field exactly inside the source grid
    src = Grid((10, 10, 10), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    k = np.arange(10, dtype=np.float32)
    vals = np.broadcast_to(k[:, None, None] * 3.0, src.shape).copy()
    dst = Grid((8, 10, 10), (2.0, 2.0, 2.0), (1.0, 0.0, 0.0))
    out = resample_to_grid(vals, src, dst)
    assert np.allclose(out[:, 0, 0], (np.arange(8) + 0.5) * 3.0, atol=1e-5)


def _reference_resample(values, src, dst, order, fill):
    """Point-by-point reference: map_coordinates at every destination centre."""
    from scipy.ndimage import map_coordinates

    idx = np.stack(np.meshgrid(*[np.arange(n) for n in dst.shape], indexing="ij"), -1).reshape(-1, 3)
    sidx = src.patient_to_index(dst.index_to_patient(idx))
    inside = np.all((sidx >= -0.5) & (sidx <= np.asarray(src.shape) - 0.5), axis=1)
    vals = map_coordinates(values.astype(np.float64), sidx.T, order=order, mode="nearest")
    return np.where(inside, vals, fill).reshape(dst.shape)


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("dst", [
    Grid((20, 25, 30), (1.0, 1.3, 1.1), (0.0, -40.0, -33.0)),
    Grid((25, 30, 20), (1.3, 1.1, 1.0), (-42.0, -30.0, 30.0), ("+y", "+x", "-z")),
    Grid((5, 5, 5), (2.5, 3.0, 3.0), (600.5, -27.0, -27.0)),  # no overlap: all fill
])
def test_separable_resampling_matches_pointwise_reference(dst, order):
    # The separable implementation must equal interpolation at each destination centre,
    # also from a flipped source grid and across axis orders (float32 rounding only).
    src = Grid((7, 9, 11), (2.5, 3.0, 3.0), (4.0, -10.0, -30.0), ("+z", "-y", "+x"))
    v = np.random.default_rng(0).random(src.shape).astype(np.float32)
    got = resample_to_grid(v, src, dst, order=order, fill=-1.0)
    want = _reference_resample(v, src, dst, order, -1.0)
    if order == 1:
        np.testing.assert_allclose(got, want, atol=1e-6)
    else:
        # nearest neighbour may pick either side exactly at a half-voxel tie; none occur here
        np.testing.assert_array_equal(got, want.astype(np.float32))
