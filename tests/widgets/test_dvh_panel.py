"""DVH panel: the plotted curves are the core's DVHs, pixel for pixel."""

import numpy as np
import pytest
from PySide6.QtCore import QPoint

from core.evaluation.dvh import cumulative_dvh
from widgets.dvh_panel import DvhCurve, DvhPanel, GoalMarker
from tests.widgets.test_ct_viewer import _rgb


@pytest.fixture
def panel_with_core_dvh(qtbot, phantom):
    grid, _, masks, dose, _ = phantom
    curves, core = [], {}
    for name, color in (("PTV", (255, 0, 0)), ("Body", (0, 0, 255))):
        bins, _, vpct = cumulative_dvh(dose, masks[name], grid)
        core[name] = (bins, vpct, dose[masks[name]])
        curves.append(DvhCurve(name, "plan A", color, bins, vpct))
    # a second plan, 10 % cooler, drawn dashed
    bins, _, vpct = cumulative_dvh(dose * 0.9, masks["PTV"], grid)
    curves.append(DvhCurve("PTV", "plan B", (255, 0, 0), bins, vpct))
    panel = DvhPanel()
    qtbot.addWidget(panel)
    panel.resize(700, 600)
    panel.set_curves(curves)
    panel.show()
    qtbot.waitExposed(panel)
    return panel, core


def test_curves_match_core_dvh(qtbot, panel_with_core_dvh):
    panel, core = panel_with_core_dvh
    bins, vpct, values = core["PTV"]
    curve = panel.plot.curves[0]
    # the curve reads back the core's volume at every bin, and that is the fraction of
    # voxels with at least that dose (an independent count)
    for d in np.linspace(0.0, float(values.max()), 25):
        i = int(np.floor(d / 0.01 + 1e-9))
        assert curve.volume_at(bins[i]) == pytest.approx(vpct[i])
        assert vpct[i] == pytest.approx(100.0 * np.mean(values >= bins[i] - 1e-9))
    # and it is drawn where the plot maps it: the pixel there has the curve's colour
    img = _rgb(panel.plot.grab().toImage())
    hits = 0
    probes = np.linspace(0.05, 0.95, 15) * float(values.max())
    for d in probes:
        p = panel.plot.to_widget(d, curve.volume_at(d))
        y0, x0 = int(round(p.y())), int(round(p.x()))
        win = img[max(y0 - 2, 0):y0 + 3, max(x0 - 2, 0):x0 + 3]
        hits += bool(((win[..., 0] > 180) & (win[..., 1] < 90) & (win[..., 2] < 90)).any())
    # steep parts of a DVH can leave a probe between two drawn pixels; nearly all must hit
    assert hits >= len(probes) - 1


def test_cursor_reads_dose_and_volume(qtbot, panel_with_core_dvh):
    panel, core = panel_with_core_dvh
    plot = panel.plot
    target = plot.to_widget(30.0, 50.0)
    with qtbot.waitSignal(panel.cursorMoved, timeout=2000) as sig:
        qtbot.mouseMove(plot, pos=QPoint(int(target.x()), int(target.y())))
    d = sig.args[0]
    # one pixel of the plot spans max_dose / width Gy: the read-out is within it
    assert abs(d - 30.0) <= plot.max_dose_gy / plot.plot_rect().width() + 1e-9


def test_goal_markers_and_visibility(qtbot, panel_with_core_dvh):
    panel, _ = panel_with_core_dvh
    panel.set_goals([GoalMarker("PTV", 40.0, 95.0, "min", met=False)])
    img = _rgb(panel.plot.grab().toImage())
    p = panel.plot.to_widget(40.0, 95.0)
    win = img[int(p.y()) - 4:int(p.y()) + 8, int(p.x()) - 8:int(p.x()) + 8]
    assert ((win[..., 0] > 200) & (win[..., 1] < 80)).any()
    panel.set_visible_structures(["Body"])
    assert [c.structure for c in panel.plot.shown_curves()] == ["Body"]
    img2 = _rgb(panel.plot.grab().toImage())
    red = lambda a: ((a[..., 0] > 200) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum()  # noqa: E731
    assert red(img2) < red(img) / 10


def test_endpoint_table(qtbot):
    panel = DvhPanel()
    qtbot.addWidget(panel)
    panel.set_endpoints(["Structure", "D95"], [["PTV", 69.123], ["Cord", float("nan")]])
    assert panel.table.item(0, 1).text() == "69.12"
    assert panel.table.item(1, 1).text() == "–"
