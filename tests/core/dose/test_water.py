"""6 MV beam data in water against the issue's targets (typical 6 MV linac / BJR Suppl. 25).

One 300 x 300 x 300 mm water box (2.5 mm voxels across the beam, 2.5 mm along it, 5 mm
along z) is computed once per field size. Values at a depth are read by linear
interpolation between voxel centres; profile edges likewise. The tolerances are the
issue's acceptance ranges: the model itself is fitted well inside them (see
resources/machines/openatp6mv.json), so a failure means the engine changed, not noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.dose.beams import parse_beams
from core.dose.forward import forward_dose
from tests.core.dose.phantoms import axis_values, water_box

SURFACE_Y = -150.0   # the box's anterior face (gantry 0 enters here)


@pytest.fixture(scope="module")
def water():
    return water_box((300.0, 300.0, 300.0), (5.0, 2.5, 2.5))


@pytest.fixture(scope="module")
def fields(water):
    out = {}
    for f in (50, 100, 200):
        d = forward_dose(water, parse_beams(f"gantry=0,field={f}x{f},ssd=1000"), device="cpu")
        y, dd = axis_values(d.dose_gy, water.grid)
        out[f] = (y - SURFACE_Y, dd, d.dose_gy)
    return out


def _at(depth, dd, z):
    return float(np.interp(z, depth, dd))


def _dmax(depth, dd):
    """Depth of maximum from a parabola through the three highest samples (sub-voxel)."""
    i = int(np.argmax(dd))
    y0, y1, y2 = dd[i - 1:i + 2]
    return depth[i] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * (depth[1] - depth[0])


def test_pdd_10x10(fields):
    depth, dd, _ = fields[100]
    dm = _dmax(depth, dd)
    dmax_dose = dd.max()
    assert 13.0 <= dm <= 17.0, dm
    assert 66.0 <= 100 * _at(depth, dd, 100.0) / dmax_dose <= 68.5
    assert 37.5 <= 100 * _at(depth, dd, 200.0) / dmax_dose <= 40.0


def test_absolute_calibration(fields):
    """100 MU, 10 x 10 cm, SSD 100 cm: 1 Gy at d_max. The 2.5 mm sampling of a curve that is
    flat within 0.3 % over +-2 mm around d_max allows 1 %."""
    depth, dd, _ = fields[100]
    assert dd.max() == pytest.approx(1.0, abs=0.01)


def _profile(dose, water, depth_mm):
    """Lateral (x) profile through the central axis at ``depth_mm``, normalised on axis;
    linear interpolation in y and z between voxel centres."""
    from scipy.ndimage import map_coordinates

    g = water.grid
    x = g.axis_coords_mm(2)
    pts = np.stack([np.zeros_like(x), np.full_like(x, SURFACE_Y + depth_mm), np.zeros_like(x)], 1)
    pts[:, 0] = x
    p = map_coordinates(dose, g.patient_to_index(pts).T, order=1)
    c = float(np.interp(0.0, x, p))
    return x, p / c


def _edge(x, p, level):
    """Right-hand position where the profile falls through ``level`` (linear interpolation)."""
    right = x > 0
    xr, pr = x[right], p[right]
    return float(np.interp(-level, -pr, xr))


def test_penumbra_and_field_width(fields, water):
    x, p = _profile(fields[100][2], water, 100.0)
    pen = _edge(x, p, 0.2) - _edge(x, p, 0.8)
    assert 4.0 <= pen <= 8.0, pen
    # 50 % width vs. the geometric projection of the 100 mm field at 10 cm depth (110 mm).
    xl, pl = -x[::-1], p[::-1]
    width = _edge(x, p, 0.5) + _edge(xl, pl, 0.5)
    assert abs(width - 110.0) <= 2.0, width


@pytest.mark.parametrize("field, lo, hi", [(50, 0.90, 0.96), (200, 1.04, 1.10)])
def test_total_scatter_factor(fields, field, lo, hi):
    ref = _at(fields[100][0], fields[100][1], 100.0)
    val = _at(fields[field][0], fields[field][1], 100.0)
    assert lo <= val / ref <= hi, val / ref
