"""Contouring on the CT views through simulated mouse events: brush, polygon, freehand,
eraser, interpolation, undo/redo, new structures, cropping to the body.

The phantom (tests/widgets/conftest.py) has DICOM axes (z, y, x) and 3.0 x 2.0 x 2.5 mm
voxels, so the axial screen plane has 2.0 mm rows and 2.5 mm columns: a brush disc in mm
is an ellipse in pixels, which a pixel-based brush would get wrong. Expected masks are
computed independently of the editor, from patient millimetres (``Grid.index_to_patient``
of every voxel) and the clicked point (``SliceView.widget_to_index``).
"""

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt

from core.errors import InputError
from widgets.contour_editor import ContourEditor
from widgets.contour_toolbar import ContourToolbar, NewStructureDialog
from widgets.ct_viewer import CtViewer
from widgets.viewer_model import StructureLayer

SPACING = (3.0, 2.0, 2.5)


@pytest.fixture
def rig(qtbot, phantom):
    grid, hu, masks, _dose, xyz = phantom
    v = CtViewer()
    qtbot.addWidget(v)
    v.resize(1000, 700)
    v.model.set_volume(hu, grid)
    v.model.set_structures([StructureLayer("PTV", masks["PTV"].copy(), (255, 0, 0))])
    ed = ContourEditor(v.model)
    ed.set_body_mask(masks["Body"])
    v.set_editor(ed)
    bar = ContourToolbar(ed, open_dialogs=False)
    qtbot.addWidget(bar)
    v.show()
    qtbot.waitExposed(v)
    messages = []
    ed.message.connect(messages.append)
    return v, ed, bar, masks, xyz, messages


def widget_point(view, xyz_mm) -> QPoint:
    """Widget pixel (rounded, as a real click is) over patient point ``xyz_mm``."""
    idx = view.model.grid.patient_to_index(xyz_mm)[0]
    p = view.index_to_widget(idx)
    return QPoint(int(round(p.x())), int(round(p.y())))


def clicked_mm(view, qpoint) -> np.ndarray:
    """Patient mm of the point a widget pixel really hits (on the view's slice)."""
    return view.model.grid.index_to_patient(view.widget_to_index(QPointF(qpoint)))[0]


def on_slice(view, xyz, mask_fn):
    """Expected 3D mask: voxels of the view's current slice for which mask_fn(xyz) holds."""
    m = view.mapping
    out = np.zeros(xyz.shape[:3], bool)
    sl = [slice(None)] * 3
    sl[m.slice_axis] = view.slice_index
    out[tuple(sl)] = mask_fn(xyz[tuple(sl)])
    return out


def centre_mm(view):
    return view.model.grid.index_to_patient(view.model.cursor)[0]


def test_brush_click_paints_a_disc_in_mm(qtbot, rig):
    v, ed, bar, masks, xyz, _ = rig
    ed.new_structure("patch")
    bar.tool_actions["brush"].trigger()
    bar.radius_box.setValue(6.0)
    ax = v.views["axial"]
    with qtbot.waitSignal(ed.structure_edited, timeout=2000) as sig:
        qp = widget_point(ax, centre_mm(ax))
        qtbot.mousePress(ax, Qt.MouseButton.LeftButton, pos=qp)
        qtbot.mouseRelease(ax, Qt.MouseButton.LeftButton, pos=qp)
    assert sig.args == ["patch"]
    c = clicked_mm(ax, qp)
    want = on_slice(ax, xyz, lambda p: ((p - c) ** 2).sum(-1) <= 6.0 ** 2)
    got = v.model.structures["patch"].mask
    np.testing.assert_array_equal(got, want)
    # pi r^2 / pixel area = 113.1 / 5.0 = 22.6 pixels; a rasterised disc this small is
    # within a few pixels of that (here the exact set is checked above)
    assert abs(got.sum() - np.pi * 36 / (2.0 * 2.5)) < 6
    # the crosshair did not move: the left button went to the tool
    assert v.model.cursor == tuple(n // 2 for n in v.model.grid.shape)


def test_brush_drag_paints_a_capsule_and_redraws(qtbot, rig):
    v, ed, bar, masks, xyz, _ = rig
    ed.new_structure("patch", color=(0, 255, 0))
    ed.set_tool("brush")
    ed.set_brush_radius_mm(4.0)
    ax = v.views["axial"]
    c0 = centre_mm(ax)
    a = widget_point(ax, c0 + np.array([-20.0, 0.0, 0.0]))
    b = widget_point(ax, c0 + np.array([20.0, 0.0, 0.0]))
    qtbot.mousePress(ax, Qt.MouseButton.LeftButton, pos=a)
    ax.grab()  # a frame (and outline cache) of the stroke's start: must not be reused below
    for t in np.linspace(0, 1, 6)[1:]:
        qtbot.mouseMove(ax, QPoint(int(round(a.x() + t * (b.x() - a.x()))), a.y()))
    qtbot.mouseRelease(ax, Qt.MouseButton.LeftButton, pos=b)
    pa, pb = clicked_mm(ax, a), clicked_mm(ax, b)

    def capsule(p):
        d = pb - pa
        t = np.clip(((p - pa) * d).sum(-1) / (d * d).sum(), 0, 1)
        return ((p - pa - t[..., None] * d) ** 2).sum(-1) <= 16.0

    got = v.model.structures["patch"].mask
    np.testing.assert_array_equal(got, on_slice(ax, xyz, capsule))
    # one stroke = one undo step
    # the views draw the new outline at the far end of the stroke (edits in place must not
    # hit the outline or frame cached at its start)
    img = ax.grab().toImage()
    p = ax.index_to_widget(ax.model.grid.patient_to_index(pb + np.array([0, 4.0, 0]))[0])
    green = 0
    for dx in range(-3, 4):
        for dy in range(-3, 4):
            c = img.pixelColor(int(p.x()) + dx, int(p.y()) + dy)
            green += c.green() > 200 and c.red() < 80
    assert green > 0
    # one stroke = one undo step
    assert ed.undo() and not v.model.structures["patch"].mask.any()
    assert ed.redo()
    np.testing.assert_array_equal(v.model.structures["patch"].mask, got)


def test_brush_on_the_coronal_and_sagittal_views(qtbot, rig):
    v, ed, bar, masks, xyz, _ = rig
    ed.new_structure("patch")
    ed.set_tool("brush")
    ed.set_brush_radius_mm(5.0)
    for name in ("coronal", "sagittal"):
        view = v.views[name]
        before = v.model.structures["patch"].mask.copy()
        qp = widget_point(view, centre_mm(view) + np.array([0.0, 0.0, 6.0]))
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=qp)
        c = clicked_mm(view, qp)
        added = v.model.structures["patch"].mask & ~before
        np.testing.assert_array_equal(added, on_slice(view, xyz, lambda p: ((p - c) ** 2).sum(-1) <= 25.0) & ~before)
        assert added.any()


def square_clicks(view, centre, half_mm):
    """Widget corners of an axis-aligned square in the axial plane (x, y half sizes)."""
    hx, hy = half_mm
    return [widget_point(view, centre + np.array(d)) for d in
            ([-hx, -hy, 0.0], [hx, -hy, 0.0], [hx, hy, 0.0], [-hx, hy, 0.0])]


def expected_rect(view, xyz, corners):
    pts = np.array([clicked_mm(view, q) for q in corners])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return on_slice(view, xyz, lambda p: (p[..., 0] > lo[0]) & (p[..., 0] < hi[0])
                    & (p[..., 1] > lo[1]) & (p[..., 1] < hi[1])), (hi - lo)[:2]


def test_polygon_square_matches_its_analytic_area(qtbot, rig):
    v, ed, bar, masks, xyz, messages = rig
    ed.new_structure("patch")
    bar.tool_actions["polygon"].trigger()
    ax = v.views["axial"]
    corners = square_clicks(ax, centre_mm(ax), (15.0, 15.0))
    for q in corners:
        qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=q)
    assert not v.model.structures["patch"].mask.any()  # open polygon: nothing filled yet
    with qtbot.waitSignal(ed.structure_edited, timeout=2000):
        qtbot.keyClick(ax, Qt.Key.Key_Return)
    got = v.model.structures["patch"].mask
    want, (lx, ly) = expected_rect(ax, xyz, corners)
    np.testing.assert_array_equal(got, want)
    # Area: pixel centres inside a rectangle of side L number L/s rounded up or down per
    # axis, so |n * A_pix - Lx * Ly| <= Lx * s_y + Ly * s_x + s_x * s_y (2.0 mm rows = y,
    # 2.5 mm columns = x): 30 x 30 mm -> at most 140 mm^2 of 900.
    area = got.sum() * 2.0 * 2.5
    assert abs(area - lx * ly) <= lx * 2.0 + ly * 2.5 + 5.0
    assert abs(lx - 30.0) < 2.5 and abs(ly - 30.0) < 2.5  # clicks land within a screen pixel


def test_polygon_closes_on_double_click(qtbot, rig):
    v, ed, bar, masks, xyz, _ = rig
    ed.new_structure("patch")
    ed.set_tool("polygon")
    ax = v.views["axial"]
    corners = square_clicks(ax, centre_mm(ax), (12.0, 10.0))
    for q in corners[:3]:
        qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=q)
    with qtbot.waitSignal(ed.structure_edited, timeout=2000):
        qtbot.mouseDClick(ax, Qt.MouseButton.LeftButton, pos=corners[3])
    want, _ = expected_rect(ax, xyz, corners)
    np.testing.assert_array_equal(v.model.structures["patch"].mask, want)
    assert ed.can_undo() and len(ed._undo["patch"]) == 1  # one polygon, one undo step


def test_freehand_and_ctrl_cut(qtbot, rig):
    v, ed, bar, masks, xyz, _ = rig
    ed.new_structure("patch")
    ed.set_tool("freehand")
    ax = v.views["axial"]
    c = centre_mm(ax)
    ring = [widget_point(ax, c + 14.0 * np.array([np.cos(a), np.sin(a), 0.0]))
            for a in np.linspace(0, 2 * np.pi, 40, endpoint=False)]
    qtbot.mousePress(ax, Qt.MouseButton.LeftButton, pos=ring[0])
    for q in ring[1:]:
        qtbot.mouseMove(ax, q)
    qtbot.mouseRelease(ax, Qt.MouseButton.LeftButton, pos=ring[-1])
    area = v.model.structures["patch"].mask.sum() * 5.0
    # a 40-gon inscribed in r = 14 mm (area 612 mm^2) with clicks rounded to a screen
    # pixel, rasterised on 5 mm^2 pixels: within 15 %
    assert area == pytest.approx(np.pi * 14.0 ** 2, rel=0.15)
    # Ctrl + polygon cuts a square out of it
    ed.set_tool("polygon")
    corners = square_clicks(ax, c, (5.0, 5.0))
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier, pos=corners[0])
    for q in corners[1:]:
        qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=q)
    qtbot.keyClick(ax, Qt.Key.Key_Enter)
    hole, _ = expected_rect(ax, xyz, corners)
    assert hole.any() and not (v.model.structures["patch"].mask & hole).any()


def test_interpolation_between_two_drawn_slices(qtbot, rig):
    v, ed, bar, masks, xyz, messages = rig
    ed.new_structure("patch")
    ed.set_tool("polygon")
    ax = v.views["axial"]
    k0 = ax.slice_index
    areas = {}
    for dk, half in ((0, 8.0), (4, 16.0)):
        v.model.set_slice("axial", k0 + dk)
        for q in square_clicks(ax, centre_mm(ax), (half, half)):
            qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=q)
        qtbot.keyClick(ax, Qt.Key.Key_Return)
    mask = v.model.structures["patch"].mask
    assert mask.any(axis=(1, 2)).sum() == 2
    with qtbot.waitSignal(ed.structure_edited, timeout=2000):
        bar.interp_action.trigger()
    mask = v.model.structures["patch"].mask
    areas = [mask[k].sum() for k in range(k0, k0 + 5)]
    assert all(a > 0 for a in areas)
    assert areas == sorted(areas) and areas[0] < areas[2] < areas[4]
    # the middle slice is about the mean-size square: side (16 + 32) / 2 = 24 mm
    assert areas[2] * 5.0 == pytest.approx(24.0 ** 2, rel=0.25)
    assert any("interpolated 3 axial slices" in m for m in messages)
    # one undo takes the whole interpolation back
    assert ed.undo()
    assert v.model.structures["patch"].mask.any(axis=(1, 2)).sum() == 2
    # nothing left to fill: said, not silently ignored
    ed.redo()
    assert not ed.interpolate("axial")
    assert "no empty slices" in messages[-1]


def test_undo_redo_and_undo_past_the_first_edit(qtbot, rig):
    v, ed, bar, masks, xyz, messages = rig
    ed.new_structure("patch")
    ed.set_tool("brush")
    ed.set_brush_radius_mm(3.0)
    ax = v.views["axial"]
    c = centre_mm(ax)
    states = [v.model.structures["patch"].mask.copy()]
    for dx in (-10.0, 10.0):
        qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=widget_point(ax, c + np.array([dx, 0, 0])))
        states.append(v.model.structures["patch"].mask.copy())
    assert states[1].sum() < states[2].sum()
    edited = []
    ed.structure_edited.connect(edited.append)
    assert ed.undo()
    np.testing.assert_array_equal(v.model.structures["patch"].mask, states[1])
    bar.undo_action.trigger()
    np.testing.assert_array_equal(v.model.structures["patch"].mask, states[0])
    assert not bar.undo_action.isEnabled() and bar.redo_action.isEnabled()
    # past the first edit: nothing happens, and the planner is told
    assert not ed.undo()
    assert "nothing to undo for 'patch'" in messages[-1]
    np.testing.assert_array_equal(v.model.structures["patch"].mask, states[0])
    assert ed.redo() and ed.redo()
    np.testing.assert_array_equal(v.model.structures["patch"].mask, states[2])
    assert not ed.redo() and "nothing to redo" in messages[-1]
    assert edited == ["patch"] * 4
    # undo is per structure: editing PTV does not touch patch's history
    ed.set_active_structure("PTV")
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.ControlModifier,
                     pos=widget_point(ax, c))  # Ctrl+brush erases
    assert v.model.structures["PTV"].mask.sum() < masks["PTV"].sum()
    assert ed.undo()
    np.testing.assert_array_equal(v.model.structures["PTV"].mask, masks["PTV"])
    assert ed.can_undo("patch")


def test_name_clash_is_refused_and_nothing_is_lost(qtbot, rig):
    v, ed, bar, masks, xyz, _ = rig
    before = dict(v.model.structures)
    for bad in ("PTV", " ptv ", ""):
        with pytest.raises(InputError, match="already exists|needs a name"):
            ed.new_structure(bad)
    assert v.model.structures == before
    np.testing.assert_array_equal(v.model.structures["PTV"].mask, masks["PTV"])
    dlg = NewStructureDialog(ed)
    qtbot.addWidget(dlg)
    dlg.name_edit.setText("Ptv")
    dlg.accept()
    assert "already exists" in dlg.error_label.text() and dlg.result() != dlg.DialogCode.Accepted
    assert list(v.model.structures) == ["PTV"]
    dlg.name_edit.setText("ring_ptv")
    dlg.set_color((10, 20, 30))
    dlg.accept()
    layer = v.model.structures["ring_ptv"]
    assert dlg.created == "ring_ptv" and layer.role == "HELPER" and layer.color == (10, 20, 30)
    assert ed.active_structure == "ring_ptv" and bar.structure_box.currentData() == "ring_ptv"


def test_drawing_outside_the_body_is_cropped(qtbot, rig):
    v, ed, bar, masks, xyz, messages = rig
    ed.new_structure("patch")
    ed.set_tool("brush")
    ed.set_brush_radius_mm(8.0)
    ax = v.views["axial"]
    body = masks["Body"]
    # a point on the body's left edge along the slice's centre row
    k, j = ax.slice_index, body.shape[1] // 2
    edge_i = np.flatnonzero(body[k, j])[-1]
    edge_mm = v.model.grid.index_to_patient((k, j, edge_i))[0]
    qp = widget_point(ax, edge_mm)
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=qp)
    c = clicked_mm(ax, qp)
    disc = on_slice(ax, xyz, lambda p: ((p - c) ** 2).sum(-1) <= 64.0)
    got = v.model.structures["patch"].mask
    assert (disc & ~body).any()  # the brush did reach outside
    np.testing.assert_array_equal(got, disc & body)
    assert "outside the body and were removed" in messages[-1]
    # entirely outside (air in the corner of the slice): nothing added, no undo step
    n_undo = len(ed._undo["patch"])
    corner = v.model.grid.index_to_patient((k, 1, 1))[0]
    assert not body[k, 1, 1]
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=widget_point(ax, corner))
    np.testing.assert_array_equal(v.model.structures["patch"].mask, disc & body)
    assert len(ed._undo["patch"]) == n_undo
    assert "outside the body" in messages[-1] and "nothing added" in messages[-1]


def test_erasing_everything_reports_an_empty_structure(qtbot, rig):
    v, ed, bar, masks, xyz, messages = rig
    ed.new_structure("patch")
    ed.set_tool("brush")
    ed.set_brush_radius_mm(4.0)
    ax = v.views["axial"]
    qp = widget_point(ax, centre_mm(ax))
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=qp)
    ed.set_tool("eraser")
    ed.set_brush_radius_mm(10.0)
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=qp)
    assert ed.is_empty("patch") and "patch" in v.model.structures
    assert "is empty now" in messages[-1]


def test_navigation_is_unchanged_without_a_tool(qtbot, rig):
    v, ed, bar, masks, xyz, messages = rig
    ed.new_structure("patch")
    ax = v.views["axial"]
    bar.tool_actions[""].trigger()
    assert ed.tool is None
    qp = widget_point(ax, centre_mm(ax) + np.array([10.0, 8.0, 0.0]))
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=qp)
    assert not v.model.structures["patch"].mask.any()
    assert v.model.cursor != tuple(n // 2 for n in v.model.grid.shape)  # the crosshair moved
    # a tool without a structure to draw into says so
    ed.set_active_structure(None)
    ed.set_tool("brush")
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=qp)
    assert "choose a structure" in messages[-1]
