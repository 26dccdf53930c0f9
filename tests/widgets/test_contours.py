"""Marching squares against analytic iso-lines."""

import numpy as np

from widgets.contours import marching_squares


def _closed(seg):
    pts = np.round(np.concatenate([seg[:, :2], seg[:, 2:]]), 5)
    _, counts = np.unique(pts, axis=0, return_counts=True)
    return np.all(counts % 2 == 0)


def test_linear_field_iso_line_is_exact():
    # Linear interpolation along cell edges is exact for a linear field: the line
    # 0.3 r + 0.7 c = 20 must be reproduced to float precision.
    r, c = np.mgrid[0:40, 0:50].astype(np.float32)
    seg = marching_squares(0.3 * r + 0.7 * c, 20.0)
    # drop the segments that close the region along the array border (outside the data)
    inside = np.all((seg[:, [0, 2]] >= 0) & (seg[:, [0, 2]] <= 39)
                    & (seg[:, [1, 3]] >= 0) & (seg[:, [1, 3]] <= 49), axis=1)
    assert _closed(seg)
    seg = seg[inside]
    assert len(seg) > 10
    for a, b in ((0, 1), (2, 3)):
        np.testing.assert_allclose(0.3 * seg[:, a] + 0.7 * seg[:, b], 20.0, atol=1e-4)


def test_circle_radius_and_closed():
    r, c = np.mgrid[0:100, 0:100]
    dist = np.hypot(r - 50.3, c - 47.6)
    seg = marching_squares(-dist, -20.0)  # inside = dist <= 20
    rad = np.hypot(np.r_[seg[:, 0], seg[:, 2]] - 50.3, np.r_[seg[:, 1], seg[:, 3]] - 47.6)
    # interpolating |r| linearly along an edge of a 1-pixel cell at radius 20 errs by at
    # most ~ 1/(8*20) px (chord sagitta); 0.01 px leaves margin
    assert np.abs(rad - 20.0).max() < 0.01
    assert _closed(seg)
    length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]).sum()
    assert abs(length - 2 * np.pi * 20) < 0.01 * 2 * np.pi * 20


def test_mask_outline_on_half_pixel_boundary_and_closed_at_border():
    m = np.zeros((30, 40), bool)
    m[5:15, 0:12] = True  # touches the left border: the outline must still close
    seg = marching_squares(m, 0.5)
    assert _closed(seg)
    assert seg[:, [0, 2]].min() == 4.5 and seg[:, [0, 2]].max() == 14.5
    assert seg[:, [1, 3]].min() == -0.5 and seg[:, [1, 3]].max() == 11.5
    # a w x h rectangle's 0.5 iso-line: perimeter 2(w+h) with each corner cut by a
    # diagonal of length sqrt(0.5) instead of two half-pixel legs
    length = np.hypot(seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]).sum()
    assert abs(length - (2 * (10 + 12) - 4 * (1 - np.sqrt(0.5)))) < 1e-4


def test_empty_and_saddle():
    assert marching_squares(np.zeros((5, 5)), 0.5).shape == (0, 4)
    f = np.array([[1, 0], [0, 1]], np.float32)  # a checkerboard saddle
    seg = marching_squares(f, 0.5)
    assert _closed(seg) and len(seg) == 8  # two separate diamonds around each high pixel (centre 0.5 = in)
