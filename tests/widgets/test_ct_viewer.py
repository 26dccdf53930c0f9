"""CT viewer: slice changes emit and redraw, window/level changes pixels by the LUT,
overlays land where the data says, cursor read-out matches the grid."""

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt

from widgets.ct_viewer import CtViewer, format_readout
from widgets.viewer_model import StructureLayer, window_lut
from tests.widgets.conftest import make_phantom


def _rgb(qimage) -> np.ndarray:
    from PySide6.QtGui import QImage

    img = qimage.convertToFormat(QImage.Format.Format_RGB888)
    a = np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine())
    return a[:, : img.width() * 3].reshape(img.height(), img.width(), 3).copy()


@pytest.fixture
def viewer(qtbot, phantom):
    grid, hu, masks, dose, _ = phantom
    v = CtViewer()
    qtbot.addWidget(v)
    v.resize(900, 600)
    v.model.set_volume(hu, grid)
    v.model.set_structures([StructureLayer("PTV", masks["PTV"], (255, 0, 0)),
                            StructureLayer("Bone", masks["Bone"], (0, 255, 0), visible=False)])
    v.model.set_dose(dose, 60.0)
    v.model.set_dose_display(mode="off")
    v.show()
    qtbot.waitExposed(v)
    return v


def test_slice_change_emits_and_redraws(qtbot, viewer):
    ax = viewer.views["axial"]
    viewer.model.set_dose_display(mode="isodose")
    qtbot.waitUntil(lambda: ax.render_count > 0)
    before = ax.render_count
    first = _rgb(ax.grab().toImage())
    s0 = ax.slice_index
    with qtbot.waitSignal(viewer.sliceChanged, timeout=2000) as sig:
        viewer.model.step_slice("axial", 4)
    assert sig.args[0] == "axial" and sig.args[1] == s0 + 4 * viewer.model.mappings["axial"].slice_sign
    with qtbot.waitSignal(ax.rendered, timeout=2000):
        pass
    assert ax.render_count > before
    # isodoses shrink away from the dose centre: the picture must change
    assert np.abs(_rgb(ax.grab().toImage()).astype(int) - first).sum() > 0
    # the wheel scrolls too (one notch = one slice toward superior for axial)
    with qtbot.waitSignal(ax.sliceChanged, timeout=2000):
        qtbot.wait(1)
        from PySide6.QtGui import QWheelEvent
        from PySide6.QtWidgets import QApplication

        ev = QWheelEvent(QPointF(50, 50), QPointF(ax.mapToGlobal(QPoint(50, 50))), QPoint(0, 0), QPoint(0, 120),
                         Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(ax, ev)


def test_window_level_changes_pixels_as_the_lut_says(qtbot, viewer):
    ax = viewer.views["axial"]
    grid = viewer.model.grid
    # a water voxel (0 HU) in the body centre, away from the bone block
    idx = tuple(n // 2 for n in grid.shape)
    viewer.model.set_cursor(idx)
    assert viewer.model.hu[idx] == 0
    m = ax.mapping
    r, c, _ = m.to_screen((idx[0], idx[1] + 2, idx[2] - 2) if m.row_axis == 1 else idx)
    qtbot.waitUntil(lambda: ax.render_count > 0)

    def grey_at_water():
        # sample a pixel of the water region, off the crosshair lines
        p = ax.image_transform().map(QPointF(c + 0.5 + 1.0, r + 0.5 + 1.0))
        return _rgb(ax.grab().toImage())[int(p.y()), int(p.x())]

    viewer.model.apply_preset("soft tissue")  # W 400 L 40: 0 HU -> (0 - (40 - 200)) / 400 * 255 = 102
    soft = grey_at_water()
    viewer.model.apply_preset("lung")  # W 1500 L -600: 0 HU -> (0 + 1350) / 1500 * 255 = 229.5
    lung = grey_at_water()
    # smooth scaling can blend a neighbour at most partly; the body interior is uniform
    assert abs(int(soft[0]) - int(window_lut(400, 40)[1024])) <= 2
    assert abs(int(lung[0]) - int(window_lut(1500, -600)[1024])) <= 2
    assert int(window_lut(400, 40)[1024]) == 102
    # right-drag changes window/level as well
    w0 = viewer.model.window
    qtbot.mousePress(ax, Qt.MouseButton.RightButton, pos=QPoint(100, 100))
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    ev = QMouseEvent(QMouseEvent.Type.MouseMove, QPointF(150, 100), QPointF(ax.mapToGlobal(QPoint(150, 100))),
                     Qt.MouseButton.RightButton, Qt.MouseButton.RightButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(ax, ev)
    qtbot.mouseRelease(ax, Qt.MouseButton.RightButton, pos=QPoint(150, 100))
    assert viewer.model.window == pytest.approx(w0 + 200.0)


def test_structure_outline_and_visibility(qtbot, viewer):
    ax = viewer.views["axial"]
    grid = viewer.model.grid
    viewer.model.set_cursor(tuple(n // 2 for n in grid.shape))
    qtbot.waitUntil(lambda: ax.render_count > 0)
    red = lambda a: ((a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum()  # noqa: E731
    n_red = red(_rgb(ax.grab().toImage()))
    assert n_red > 50  # the PTV outline is drawn in red
    viewer.model.set_structure_visible("PTV", False)
    assert red(_rgb(ax.grab().toImage())) < n_red / 10


def test_isodose_line_sits_on_the_level(qtbot, viewer):
    """Every isodose segment vertex of the 50 % line samples ~30 Gy when the dose is
    interpolated bilinearly at it (that is how marching squares places it)."""
    from scipy.ndimage import map_coordinates

    viewer.model.set_dose_display(mode="isodose", levels=[50], unit="pct")
    ax = viewer.views["axial"]
    s = ax.slice_index if ax.slice_index >= 0 else viewer.model.cursor[ax.mapping.slice_axis]
    ((color, lines),) = ax._isodose_lines(s)
    assert color == (255, 0, 255) and len(lines) > 8
    plane = ax.mapping.extract(viewer.model.dose_gy, s)
    pts = np.array([[ln.y1() - 0.5, ln.x1() - 0.5] for ln in lines])
    vals = map_coordinates(plane.astype(float), pts.T, order=1)
    # linear interpolation along a cell edge is exact on the edge: tolerance = float noise
    np.testing.assert_allclose(vals, 30.0, atol=1e-3)


def test_cursor_readout_matches_grid(qtbot, viewer):
    grid = viewer.model.grid
    ax = viewer.views["axial"]
    idx = (grid.shape[0] // 2, grid.shape[1] // 2 + 3, grid.shape[2] // 2 - 5)
    viewer.model.set_cursor(idx)
    pos = ax.index_to_widget(idx)
    got = []
    ax.hovered.connect(got.append)
    qtbot.mouseMove(ax, pos=pos.toPoint())
    qtbot.waitUntil(lambda: bool(got))
    sample = got[-1]
    assert sample["index"] == idx
    np.testing.assert_allclose(sample["position_mm"], grid.index_to_patient(idx)[0])
    assert sample["hu"] == viewer.model.hu[idx]
    assert sample["dose_gy"] == pytest.approx(float(viewer.model.dose_gy[idx]))
    text = format_readout(sample, 60.0)
    assert "HU" in text and "Gy" in text and "mm" in text


def test_left_click_moves_crosshair_in_other_views(qtbot, viewer):
    ax, cor = viewer.views["axial"], viewer.views["coronal"]
    target = list(viewer.model.cursor)
    target[ax.mapping.row_axis] += 3  # more posterior
    target[ax.mapping.col_axis] -= 4
    with qtbot.waitSignal(cor.sliceChanged, timeout=2000):
        qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=ax.index_to_widget(target).toPoint())
    assert viewer.model.cursor[ax.mapping.row_axis] == target[ax.mapping.row_axis]
    assert viewer.model.cursor[ax.mapping.col_axis] == target[ax.mapping.col_axis]


def test_openkbp_order_renders_same_axial_picture(qtbot):
    """The same phantom in DICOM and OpenKBP array order gives the same axial image."""
    from core.geometry import OPENKBP_AXES

    pics = []
    for axes, shape, sp in ((("+z", "+y", "+x")), (24, 40, 48), (3.0, 2.0, 2.5)), \
                           ((OPENKBP_AXES), (40, 48, 24), (2.0, 2.5, 3.0)):
        grid, hu, masks, dose, _ = make_phantom(shape, sp, axes)
        v = CtViewer()
        qtbot.addWidget(v)
        v.resize(700, 500)
        v.model.set_volume(hu, grid)
        v.show()
        qtbot.waitExposed(v)
        pics.append(_rgb(v.views["axial"].grab().toImage()))
    # the title line differs (slice number and z); compare the image area below it. The
    # phantom's bone block sits at patient left only, so a left-right flip would fail here.
    assert pics[0].shape == pics[1].shape
    diff = np.abs(pics[0][30:].astype(int) - pics[1][30:].astype(int)).max(axis=-1)
    assert (diff > 40).mean() < 0.002


def test_ctrl_wheel_zooms_about_the_pointer(qtbot, viewer):
    from PySide6.QtGui import QWheelEvent
    from PySide6.QtWidgets import QApplication

    ax = viewer.views["axial"]
    pos = QPointF(ax.width() * 0.3, ax.height() * 0.6)
    before = ax.widget_to_index(pos)
    ev = QWheelEvent(pos, QPointF(ax.mapToGlobal(pos.toPoint())), QPoint(0, 0), QPoint(0, 240),
                     Qt.MouseButton.NoButton, Qt.KeyboardModifier.ControlModifier, Qt.ScrollPhase.NoScrollPhase, False)
    s = ax.slice_index
    QApplication.sendEvent(ax, ev)
    assert ax.zoom == pytest.approx(1.15 ** 2)
    assert ax.slice_index == s  # zoom, not scroll
    # the anatomy under the pointer stays under it (to float precision)
    np.testing.assert_allclose(ax.widget_to_index(pos), before, atol=1e-6)
    ax.reset_view()
    assert ax.zoom == 1.0


def test_colour_wash_opacity_and_gy_levels(qtbot, viewer):
    ax = viewer.views["axial"]
    grid = viewer.model.grid
    idx = tuple(n // 2 for n in grid.shape)  # the dose maximum (60 Gy) sits at the centre
    viewer.model.set_cursor(idx)
    viewer.model.set_structure_visible("PTV", False)
    pos = ax.index_to_widget((idx[0], idx[1] + 1, idx[2] + 1))

    def pixel():
        return _rgb(ax.grab().toImage())[int(pos.y()) + 2, int(pos.x()) + 2].astype(int)

    viewer.model.set_dose_display(mode="off")
    plain = pixel()
    assert np.ptp(plain) == 0  # grey CT
    viewer.model.set_dose_display(mode="wash", opacity=0.8)
    strong = pixel()
    viewer.model.set_dose_display(opacity=0.2)
    faint = pixel()
    # near 100 % of the reference the wash is red: more opacity, more red over the grey
    assert strong[0] - strong[2] > faint[0] - faint[2] > 0
    # levels in Gy: a 45 Gy line, wherever the phantom dose crosses 45 Gy
    from scipy.ndimage import map_coordinates

    viewer.model.set_dose_display(mode="isodose", levels=[45], unit="gy")
    ((_, lines),) = ax._isodose_lines(ax.slice_index)
    plane = ax.mapping.extract(viewer.model.dose_gy, ax.slice_index).astype(float)
    vals = map_coordinates(plane, np.array([[ln.y2() - 0.5, ln.x2() - 0.5] for ln in lines]).T, order=1)
    np.testing.assert_allclose(vals, 45.0, atol=1e-3)
