"""Beams, templates, the --beams syntax and the geometry checks planners hit."""

from __future__ import annotations

import numpy as np
import pytest

from core.dose.beams import Beam, available_templates, load_template, parse_beams, rotation_matrix
from core.errors import GeometryError, InputError
from tests.core.dose.phantoms import water_box


def test_templates():
    assert {"imrt7", "imrt9", "vmat2", "hn_left_imrt7", "hn_right_imrt7", "lung_left_imrt7",
            "lung_right_imrt7"} <= set(available_templates())
    assert np.allclose(load_template("imrt9").gantry_deg, np.arange(0, 360, 40))
    assert np.allclose(load_template("imrt7").gantry_deg, np.arange(7) * 360 / 7)
    v = load_template("vmat2")
    g = v.gantry_deg
    assert len(v) >= 180
    steps = np.abs((np.diff(g[:90]) + 180) % 360 - 180)
    assert np.allclose(steps, 4.0)                      # control points every 4 degrees
    # laterality variants are mirror images (gantry g <-> 360 - g)
    left = load_template("lung_left_imrt7").gantry_deg
    right = load_template("lung_right_imrt7").gantry_deg
    assert np.allclose(np.sort((360 - left) % 360), np.sort(right))


def test_iec_directions():
    assert np.allclose(rotation_matrix(0, 0)[:, 1], [0, 1, 0])      # gantry 0: beam travels +y (posterior)
    assert np.allclose(rotation_matrix(90, 0)[:, 1], [-1, 0, 0])    # gantry 90: source at +x (left)
    b = Beam(gantry_deg=90, isocenter_mm=(0, 0, 0))
    assert np.allclose(b.source_mm, [1000, 0, 0])


def test_inline_syntax():
    bs = parse_beams("gantry=0,field=100x100,ssd=1000; gantry=90,couch=10,collimator=30,iso=1/2/3,mu=50")
    assert len(bs) == 2
    assert bs[0].field_mm == (100.0, 100.0) and bs[0].ssd_mm == 1000.0
    assert bs[1].isocenter_mm == (1.0, 2.0, 3.0) and bs[1].mu == 50.0 and bs[1].collimator_deg == 30.0


@pytest.mark.parametrize("spec, words", [
    ("nosuchtemplate", "unknown beam template"),
    ("gantry=0,field=10by10", "WIDTHxHEIGHT"),
    ("gantry=400", "0-360"),
    ("gantry=-5", "0-360"),
    ("field=100x100", "no gantry"),
    ("gantry=0,wobble=3", "unknown key"),
    ("gantry=zero", "not a number"),
    ("gantry=0,gantry=10", "twice"),
    ("", "empty"),
])
def test_bad_specs(spec, words):
    with pytest.raises(InputError, match=words):
        parse_beams(spec)


def test_resolve_isocentre_and_checks():
    p = water_box((100.0, 100.0, 100.0), (5.0, 5.0, 5.0), target=((10.0, 0.0, -5.0), (10.0, 10.0, 10.0)))
    bs = parse_beams("gantry=0;gantry=90").resolve(p)
    assert np.allclose(bs[0].isocenter_mm, [10.0, 0.0, -5.0])     # target centroid
    with pytest.raises(GeometryError, match="outside the body"):
        parse_beams("gantry=0,iso=0/500/0").resolve(p)
    with pytest.raises(GeometryError, match="larger than the collimator"):
        parse_beams("gantry=0,field=500x100").resolve(p, max_field_mm=400.0)
    # SSD set-up: isocentre on the central axis, SAD - SSD beyond the anterior surface (y = -50)
    bs = parse_beams("gantry=0,field=50x50,ssd=950").resolve(p)
    assert bs[0].isocenter_mm[1] == pytest.approx(0.0, abs=0.3)


def test_external_derived_from_ct_with_warning():
    """A CT without an external contour: the body is derived by thresholding, with a warning."""
    from core.dose.forward import forward_dose
    from core.geometry import Grid
    from core.patient import CtImage, Patient

    g = Grid((20, 30, 30), (5.0, 5.0, 5.0), (-47.5, -72.5, -72.5))
    hu = np.full(g.shape, -1000.0, dtype=np.float32)
    hu[:, 5:25, 5:25] = 0.0
    p = Patient("noext", g, ct=CtImage(hu, g))
    d = forward_dose(p, parse_beams("gantry=0,field=40x40"), device="cpu")
    assert any("thresholding" in w for w in p.warnings)
    assert d.dose_gy[:, :5, :].max() == 0.0          # nothing outside the derived body
    assert d.dose_gy.max() > 0
