"""Report pictures (PNG encoder, orientation), DVH SVG and the HTML page."""

from __future__ import annotations

import base64
import re
import struct
import zlib

import numpy as np
import pytest

from core.errors import InputError
from core.geometry import DICOM_AXES, OPENKBP_AXES, Grid
from core.goals.evaluate import evaluate_goals
from core.goals.goal import ClinicalGoal
from core.patient import Dose, Patient, Prescription, Structure, StructureRole
from core.report import write_report
from core.report.png import encode_png
from core.report.slices import display_plane, dose_wash
from core.report.svg import dvh_svg


def decode_png(data: bytes) -> np.ndarray:
    """Independent minimal decoder (filter 0 only, which is all the encoder writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n = struct.unpack(">I", data[pos:pos + 4])[0]
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])[0]
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype = hdr[0], hdr[1], hdr[2], hdr[3]
    c = {0: 1, 2: 3, 6: 4}[ctype]
    assert depth == 8
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * c)
    assert np.all(raw[:, 0] == 0)
    return raw[:, 1:].reshape(h, w, c)


def test_png_roundtrip_rgb_grey_rgba():
    rng = np.random.default_rng(0)
    for shape in [(5, 7, 3), (4, 3), (2, 9, 4)]:
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        back = decode_png(encode_png(img))
        np.testing.assert_array_equal(back.reshape(img.shape), img)
    with pytest.raises(InputError):
        encode_png(np.zeros((3, 3), np.float32))


# -- orientation --------------------------------------------------------------------------------
def _points_patient(grid: Grid):
    """Blobs at known LPS positions: left (+x), anterior (-y), superior (+z) of the centre."""
    c = grid.index_to_patient((np.asarray(grid.shape) - 1) / 2.0)[0]
    return c, {"left": c + [20, 0, 0], "anterior": c + [0, -20, 0], "superior": c + [0, 0, 20]}


def _volume_with(grid: Grid, points: dict) -> np.ndarray:
    vol = np.zeros(grid.shape, np.float32)
    for k, (name, p) in enumerate(points.items(), start=1):
        idx = tuple(np.rint(grid.patient_to_index(p)[0]).astype(int))
        vol[idx] = k
    return vol


@pytest.mark.parametrize("axes", [DICOM_AXES, OPENKBP_AXES, ("-x", "+z", "-y")])
def test_display_orientation_is_radiological_for_any_array_order(axes):
    grid = Grid((21, 21, 21), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), axes)
    centre, pts = _points_patient(grid)
    vol = _volume_with(grid, pts)

    def where(img, k):
        r, c = np.argwhere(img == k)[0]
        return r - (img.shape[0] - 1) / 2, c - (img.shape[1] - 1) / 2

    ax = display_plane(vol, grid, "axial", centre)[0]
    assert where(ax, 1)[1] > 0            # patient left -> screen right
    assert where(ax, 2)[0] < 0            # anterior -> up
    co = display_plane(vol, grid, "coronal", centre)[0]
    assert where(co, 1)[1] > 0 and where(co, 3)[0] < 0   # left -> right; superior -> up
    sa = display_plane(vol, grid, "sagittal", centre)[0]
    assert where(sa, 2)[1] < 0 and where(sa, 3)[0] < 0   # anterior -> left; superior -> up


def test_demo_case_anatomy_comes_out_the_right_way_up(demo_case):
    """On the real OpenKBP demo case: mandible above (anterior of) the cord on the axial view,
    the left parotid on screen right, brainstem above the oesophagus on the coronal view."""
    from core.io.openkbp import load_openkbp

    p = load_openkbp(demo_case)
    g = p.grid

    def centre_rc(name, plane, through):
        img = display_plane(p.structure(name).mask, g, plane, through)[0]
        return np.argwhere(img).mean(axis=0)

    man = p.structure("Mandible").centroid_mm(g)
    assert centre_rc("Mandible", "axial", man)[0] < centre_rc("SpinalCord", "axial", man)[0]
    par = p.structure("LeftParotid").centroid_mm(g)
    assert centre_rc("LeftParotid", "axial", par)[1] > centre_rc("RightParotid", "axial", par)[1]
    assert centre_rc("Brainstem", "coronal", p.structure("Brainstem").centroid_mm(g))[0] < \
        centre_rc("Esophagus", "coronal", p.structure("Esophagus").centroid_mm(g))[0]
    cord = p.structure("SpinalCord").centroid_mm(g)
    assert centre_rc("Mandible", "sagittal", cord)[1] < centre_rc("SpinalCord", "sagittal", cord)[1]


def test_dose_wash_draws_outlines_in_structure_colours():
    grid = Grid((9, 30, 30), (3.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    body = np.zeros(grid.shape, bool)
    body[:, 3:27, 3:27] = True
    ptv = np.zeros(grid.shape, bool)
    ptv[3:6, 10:20, 10:20] = True
    dose = 10.0 * ptv.astype(np.float32)
    img = dose_wash(dose, grid, "axial", grid.index_to_patient([4, 15, 15])[0], body=body,
                    structures=[(ptv, (255, 0, 255))])
    assert img.dtype == np.uint8 and img.ndim == 3
    assert np.any(np.all(img == [255, 0, 255], axis=2))   # the outline colour is drawn


# -- DVH -------------------------------------------------------------------------------------------
def test_dvh_svg_is_wellformed_and_names_every_curve():
    import xml.etree.ElementTree as ET

    vol = np.linspace(100, 0, 50)
    curves = [{"name": "PTV<70>", "color": (255, 0, 0), "dose_gy": np.linspace(0, 70, 50), "volume_pct": vol},
              {"name": "Cord", "color": (0, 0, 255), "dose_gy": np.linspace(0, 40, 50), "volume_pct": vol,
               "dashed": True}]
    svg = dvh_svg(curves, prescription_gy=70)
    root = ET.fromstring(svg)   # raises if not well-formed XML (names are escaped)
    lines = root.findall(".//{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2
    assert "PTV&lt;70&gt;" in svg


# -- the page ---------------------------------------------------------------------------------------
def _phantom():
    grid = Grid((12, 40, 40), (3.0, 2.5, 2.5), (-15.0, -50.0, -50.0))
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    body = (yy - 20) ** 2 + (xx - 20) ** 2 < 18 ** 2
    ptv = ((yy - 20) ** 2 + (xx - 16) ** 2 < 6 ** 2) & (zz > 2) & (zz < 9)
    cord = ((yy - 30) ** 2 + (xx - 20) ** 2 < 2 ** 2)
    p = Patient("REPORT_TEST", grid)
    p.add_structure(Structure("BODY", body, StructureRole.EXTERNAL))
    p.add_structure(Structure("PTV60", ptv, StructureRole.TARGET, color=(255, 0, 0)))
    p.add_structure(Structure("Cord", cord, StructureRole.OAR, color=(0, 200, 255)))
    p.prescriptions.append(Prescription("PTV60", 60.0, 30))
    from scipy.ndimage import gaussian_filter

    dose = gaussian_filter(60.0 * ptv.astype(np.float32), 2.0) * 1.3
    dose = np.minimum(dose, 63.0) * body
    return p, Dose(dose.astype(np.float32), grid)


def test_report_is_self_contained_and_lists_every_goal(tmp_path):
    p, dose = _phantom()
    goals = [ClinicalGoal(1, "PTV60", "min_dose_at_volume", dose_gy=57.0, volume_pct=95),
             ClinicalGoal(2, "PTV60", "max_dose_at_volume", dose_gy=64.0, volume_cc=0.03),
             ClinicalGoal(2, "Cord", "max_dose_at_volume", dose_gy=45.0, volume_cc=0.03),
             ClinicalGoal(3, "Cord", "max_mean", dose_gy=10.0),
             ClinicalGoal(4, "Cord", "alara")]
    masks = {n: s.mask for n, s in p.structures.items()}
    results = evaluate_goals(goals, dose.dose_gy, masks, p.grid.voxel_volume_cc)
    rows = [r.to_dict() for r in results]          # the metrics.json form
    metrics = {"site": "test", "total_mu": 1234.5, "ci": 0.81, "hi": 0.07, "all_p1_met": results[0].met,
               "timings_s": {"load": 0.1, "sequence": 0.2, "total": 1.0}, "goals": rows}
    fluence = dose.dose_gy * 1.01
    out = write_report(tmp_path / "report.html", p, dose, rows, metrics, fluence_dose=fluence)
    html = out.read_text()
    for r in results:   # every goal has a row with its metric, target and achieved value
        g = r.goal
        assert f'title="{g.label.replace(">", "&gt;").replace("<", "&lt;")}"' in html
        if r.achieved is not None:
            assert f"{r.achieved:.2f}" in html
    assert html.count("<tr title=") == len(goals)
    assert "1234.5" in html and "0.810" in html            # total MU, CI
    assert "Effect of leaf sequencing" in html and "D95" in html
    # self-contained: no external resource, three dose pictures + colour bar embedded
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert "<script" not in html
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) == 4
    for b64 in pngs:
        img = decode_png(base64.b64decode(b64))
        assert img.shape[0] > 10 and img.shape[1] > 10
    assert html.count("<svg") == 1 and "<polyline" in html


def test_report_accepts_goal_results_and_rejects_wrong_grid(tmp_path):
    p, dose = _phantom()
    goals = [ClinicalGoal(1, "PTV60", "min_dose_at_volume", dose_gy=70.0, volume_pct=95)]
    res = evaluate_goals(goals, dose.dose_gy, {n: s.mask for n, s in p.structures.items()}, p.grid.voxel_volume_cc)
    html = write_report(tmp_path / "r.html", p, dose, res, {}).read_text()
    assert "NOT met" in html and "Not all priority-1 goals are met." in html
    with pytest.raises(InputError):
        write_report(tmp_path / "bad.html", p, np.zeros((2, 2, 2)), res, {})
    assert not (tmp_path / "bad.html").exists()


def test_report_states_ci_hi_and_dose_statistics_when_metrics_lack_them(tmp_path):
    from core.evaluation.indices import conformity_paddick, homogeneity_icru83

    p, dose = _phantom()
    html = write_report(tmp_path / "r.html", p, dose, [], {}).read_text()
    ptv = p.structure("PTV60").mask
    ci = conformity_paddick(dose.dose_gy, ptv, 60.0, p.external_mask())
    hi = homogeneity_icru83(dose.dose_gy, ptv)
    assert f"CI (Paddick) of PTV60</th><td class=\"num\">{ci:.3f}" in html
    assert f"HI (ICRU 83) of PTV60</th><td class=\"num\">{hi:.3f}" in html
    assert "Dose statistics" in html and html.count("<td>Cord</td>") >= 1


def test_report_beam_table_lists_segments_and_mu_per_fraction(tmp_path):
    from core.delivery.sequencing import SequencingOptions, sequence_plan
    from core.dose.beams import Beam, BeamSet

    p, dose = _phantom()
    u = (np.arange(8) - 4 + 0.5) * 5.0
    pos1 = np.array([(a, b) for a in u for b in u])
    beam_of = np.repeat(np.arange(2), len(pos1))
    pos = np.tile(pos1, (2, 1))
    w = 3000.0 * (1 + np.cos(pos[:, 0] / 10.0)) * (1 + 0.5 * beam_of)
    beams = BeamSet((Beam(gantry_deg=90.0), Beam(gantry_deg=270.0)))
    sbs = sequence_plan(w, beam_of, pos, (5.0, 5.0), beams, SequencingOptions(fractions=30))
    html = write_report(tmp_path / "r.html", p, dose, [], {}, beams=beams, segmented_beams=sbs).read_text()
    table = html[html.index("<h2>Beams and segments</h2>"):]
    table = table[:table.index("</table>")]
    for sb in sbs:   # one row per beam: number, gantry, ..., segment count, MU per fraction (30 fractions)
        assert f'<td class="num">{sb.n_segments}</td><td class="num">{sb.mu / 30:.1f}</td>' in table
    assert '<td class="num">90</td>' in table and '<td class="num">270</td>' in table
