"""Shape-based interpolation between drawn slices, against analytic discs.

Two concentric discs of radii r1 and r2 blend into discs of radius (1 - t) r1 + t r2
(module docstring of core.contour_interpolation). A rasterised disc's area-equivalent
radius differs from its true radius by a small fraction of a pixel, and each distance map
is exact only to half a pixel at the boundary (pixel centres sit one pixel apart across
the edge), so the interpolated radius is checked to half the larger pixel size.
"""

import numpy as np
import pytest

from core.contour_interpolation import interpolate_gaps, interpolate_slice, signed_distance_mm
from core.errors import InputError


def disc(shape, spacing_mm, r_mm, centre_mm=None):
    """Pixels whose centre is within r_mm of centre_mm (row, col in mm)."""
    rr, cc = np.meshgrid(np.arange(shape[0]) * spacing_mm[0], np.arange(shape[1]) * spacing_mm[1], indexing="ij")
    if centre_mm is None:
        centre_mm = ((shape[0] - 1) * spacing_mm[0] / 2.0, (shape[1] - 1) * spacing_mm[1] / 2.0)
    return (rr - centre_mm[0]) ** 2 + (cc - centre_mm[1]) ** 2 <= r_mm ** 2


def eq_radius_mm(mask2d, spacing_mm):
    return np.sqrt(mask2d.sum() * spacing_mm[0] * spacing_mm[1] / np.pi)


@pytest.mark.parametrize("plane_mm", [(1.0, 1.0), (1.0, 1.5)])
def test_two_discs_give_linear_radii(plane_mm):
    r1, r2 = 8.0, 20.0
    shape2 = (int(60 / plane_mm[0]), int(60 / plane_mm[1]))
    vol = np.zeros((11,) + shape2, bool)
    vol[0] = disc(shape2, plane_mm, r1)
    vol[10] = disc(shape2, plane_mm, r2)
    before = vol.copy()
    out, filled = interpolate_gaps(vol, 0, (3.0,) + plane_mm)
    assert filled == list(range(1, 10))
    np.testing.assert_array_equal(vol, before)  # the input is not modified
    np.testing.assert_array_equal(out[[0, 10]], vol[[0, 10]])  # drawn slices untouched
    half_pixel = 0.5 * max(plane_mm)
    radii = []
    for k in range(1, 10):
        t = k / 10.0
        want = (1 - t) * r1 + t * r2
        got = eq_radius_mm(out[k], plane_mm)
        radii.append(got)
        assert got == pytest.approx(want, abs=half_pixel), f"slice {k}"
        # still a disc in mm, not an ellipse in pixels: row and column extents agree
        rows = np.flatnonzero(out[k].any(axis=1))
        cols = np.flatnonzero(out[k].any(axis=0))
        ext_r = (rows[-1] - rows[0] + 1) * plane_mm[0]
        ext_c = (cols[-1] - cols[0] + 1) * plane_mm[1]
        assert ext_r == pytest.approx(ext_c, abs=2 * max(plane_mm))
    assert np.all(np.diff(radii) > 0)  # monotone growth


def test_shifted_discs_move_between_their_ends():
    # Shape-based interpolation is a blend, not a registration: a shifted disc does not
    # translate rigidly (the blend of |x - a| and |x - b| is an oval weighted toward the
    # nearer end), but it must move monotonically from one end to the other, be centred
    # at half way, and keep about the discs' size where they overlap, as adjacent drawn
    # slices do.
    sp = (1.0, 1.0)
    a = disc((40, 60), sp, 8.0, (20.0, 24.0))
    b = disc((40, 60), sp, 8.0, (20.0, 30.0))
    centres = []
    for t in (0.25, 0.5, 0.75):
        m = interpolate_slice(a, b, t, sp)
        c = np.argwhere(m).mean(axis=0)
        assert c[0] == pytest.approx(20.0, abs=0.5)
        centres.append(c[1])
        assert eq_radius_mm(m, sp) == pytest.approx(8.0, abs=1.0)
    assert 24.0 < centres[0] < centres[1] < centres[2] < 30.0
    assert centres[1] == pytest.approx(27.0, abs=0.5)  # symmetric at half way
    np.testing.assert_array_equal(interpolate_slice(a, b, 0.0, sp), a)
    np.testing.assert_array_equal(interpolate_slice(a, b, 1.0, sp), b)


def test_any_axis_gives_the_same_shape():
    sp = (1.0, 1.0)
    vol = np.zeros((30, 30, 7), bool)
    vol[:, :, 0] = disc((30, 30), sp, 5.0)
    vol[:, :, 6] = disc((30, 30), sp, 11.0)
    out2, filled2 = interpolate_gaps(vol, 2, (1.0, 1.0, 2.0))
    out0, filled0 = interpolate_gaps(np.moveaxis(vol, 2, 0), 0, (2.0, 1.0, 1.0))
    assert filled2 == filled0 == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(np.moveaxis(out2, 2, 0), out0)


def test_only_empty_gaps_are_filled_by_default_and_key_slices_replace():
    sp = (1.0, 1.0)
    vol = np.zeros((9, 40, 40), bool)
    vol[0] = disc((40, 40), sp, 5.0)
    vol[1] = disc((40, 40), sp, 15.0)  # drawn but not a chosen key: replaced with key_slices
    vol[8] = disc((40, 40), sp, 5.0)
    out, filled = interpolate_gaps(vol, 0, (2.0, 1.0, 1.0))
    assert filled == [2, 3, 4, 5, 6, 7]
    np.testing.assert_array_equal(out[1], vol[1])
    out, filled = interpolate_gaps(vol, 0, (2.0, 1.0, 1.0), key_slices=[0, 8])
    assert filled == list(range(1, 8))
    np.testing.assert_array_equal(out[4], vol[0])  # equal discs at both ends: the same disc between


def test_bad_input_is_explained():
    vol = np.zeros((5, 20, 20), bool)
    vol[2] = disc((20, 20), (1.0, 1.0), 4.0)
    with pytest.raises(InputError, match="at least two slices"):
        interpolate_gaps(vol, 0, (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="slice 4 has no contour"):
        interpolate_gaps(vol, 0, (1.0, 1.0, 1.0), key_slices=[2, 3])
    with pytest.raises(InputError, match="outside the image"):
        interpolate_gaps(vol, 0, (1.0, 1.0, 1.0), key_slices=[2, 9])
    with pytest.raises(InputError, match="spacing"):
        interpolate_gaps(vol, 0, (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="empty slice"):
        signed_distance_mm(np.zeros((4, 4), bool), (1.0, 1.0))
    with pytest.raises(InputError, match="fraction"):
        interpolate_slice(vol[2], vol[2], 1.5, (1.0, 1.0))
