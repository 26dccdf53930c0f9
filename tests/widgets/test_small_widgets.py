"""3D view fallback, task progress, structure list."""

import numpy as np
import pytest
from PySide6.QtCore import Qt

from widgets.structure_list import StructureList
from widgets.task_progress import TaskProgress, format_eta
from widgets.viewer_model import StructureLayer, ViewerModel
from widgets.volume_view import VolumeView, beam_source_direction, opengl_unavailable_reason


def test_volume_view_degrades_without_opengl(qtbot, phantom):
    grid, _, masks, dose, _ = phantom
    view = VolumeView()
    qtbot.addWidget(view)
    view.set_scene(grid, [("PTV", masks["PTV"], (255, 0, 0))], (dose, 30.0), [(0.0, 0.0, (0, 0, 0))])
    assert opengl_unavailable_reason() is not None  # tests run offscreen (conftest)
    with qtbot.waitSignal(view.ready, timeout=5000) as sig:
        view.show()
    assert sig.args == [False]
    assert not view.available
    assert "OpenGL" in view.placeholder.text()


def test_beam_directions_iec():
    np.testing.assert_allclose(beam_source_direction(0), [0, -1, 0], atol=1e-12)   # anterior
    np.testing.assert_allclose(beam_source_direction(90), [1, 0, 0], atol=1e-12)   # patient left
    np.testing.assert_allclose(beam_source_direction(180), [0, 1, 0], atol=1e-12)  # posterior
    assert np.linalg.norm(beam_source_direction(37, 20)) == pytest.approx(1.0)


def test_task_progress(qtbot):
    tp = TaskProgress()
    qtbot.addWidget(tp)
    tp.start("Planning")
    tp.on_progress(0.25, "optimising", 65.0)
    assert tp.bar.value() == 250
    assert tp.eta_label.text() == "ETA 1:05"
    assert format_eta(None) == "" and format_eta(3725) == "ETA 1:02:05"
    with qtbot.waitSignal(tp.cancelRequested, timeout=1000):
        qtbot.mouseClick(tp.cancel_button, Qt.MouseButton.LeftButton)
    assert not tp.cancel_button.isEnabled()
    tp.on_done()
    assert tp.isHidden()


def test_structure_list_toggles_model(qtbot):
    model = ViewerModel()
    from core.geometry import Grid

    grid = Grid((4, 5, 6), (1, 1, 1), (0, 0, 0))
    model.set_volume(np.zeros(grid.shape, np.int16), grid)
    m = np.zeros(grid.shape, bool)
    m[1:3, 1:3, 1:3] = True
    model.set_structures([StructureLayer("PTV", m, (255, 0, 0)), StructureLayer("Cord", m, (0, 255, 0))])
    sl = StructureList(model)
    qtbot.addWidget(sl)
    sl.set_volumes({"PTV": 8e-3})
    assert sl.tree.topLevelItemCount() == 2
    item = sl.tree.topLevelItem(1)
    with qtbot.waitSignal(model.structuresChanged, timeout=1000):
        with qtbot.waitSignal(sl.visibilityChanged, timeout=1000) as sig:
            item.setCheckState(0, Qt.CheckState.Unchecked)
    assert sig.args == ["Cord", False]
    assert not model.structures["Cord"].visible and model.structures["PTV"].visible
    model.set_all_structures_visible(False)
    assert sl.tree.topLevelItem(0).checkState(0) == Qt.CheckState.Unchecked
