"""Contouring in the workstation: a patch drawn with the mouse reaches the session's
patient and the RTSTRUCT export; an emptied patch leaves the patient; undo via the
Contour menu; a name clash with a structure the views do not show is refused."""

import numpy as np
import pytest

import widgets  # noqa: F401
from PySide6.QtCore import QPoint, Qt

from core.errors import InputError
from tests.widgets.conftest import make_phantom




def phantom_patient():
    from core.patient import CtImage, Patient, Structure, StructureRole

    grid, hu, masks, _dose, _xyz = make_phantom()
    p = Patient("phantom", grid, ct=CtImage(hu, grid))
    p.add_structure(Structure("Body", masks["Body"], StructureRole.EXTERNAL, (0, 255, 0)))
    p.add_structure(Structure("PTV", masks["PTV"], StructureRole.TARGET, (255, 0, 0)))
    p.add_structure(Structure("Spare", np.zeros(grid.shape, bool), StructureRole.OAR, (0, 0, 255)))
    return p


def click_square(qtbot, view, half_mm):
    grid = view.model.grid
    c = grid.index_to_patient(view.model.cursor)[0]
    for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        p = view.index_to_widget(grid.patient_to_index(c + np.array([dx * half_mm, dy * half_mm, 0.0]))[0])
        qtbot.mouseClick(view, Qt.MouseButton.LeftButton, pos=QPoint(int(round(p.x())), int(round(p.y()))))
    qtbot.keyClick(view, Qt.Key.Key_Return)


def test_drawn_patch_reaches_the_patient_and_the_rtstruct(qtbot, workstation, tmp_path):
    from core.io.dicom_export import export_ct_series, export_rtstruct
    from core.io.dicom_import import load_dicom_folder
    from core.patient import StructureRole

    ws = workstation
    ws.session.set_patient(phantom_patient())
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=10000)
    patient = ws.session.patient
    assert ws.contouring.toolbar.isVisible() and ws.actions["contour.new"].isEnabled()
    changes = []
    ws.session.changed.connect(changes.append)

    # New structure through the menu action and its dialog
    ws.actions["contour.new"].trigger()
    dlg = ws.contouring.toolbar.dialog
    dlg.name_edit.setText("spare")  # taken by an empty structure the views do not show
    dlg.accept()
    assert "already exists" in dlg.error_label.text()
    dlg.name_edit.setText("patch_hot")
    dlg.accept()
    assert "patch_hot" in ws.viewer_model.structures and "patch_hot" not in patient.structures  # empty

    ws.actions["contour.tool_polygon"].trigger()
    assert ws.contouring.editor.tool == "polygon" and ws.contouring.toolbar.tool_actions["polygon"].isChecked()
    ax = ws.window.viewer.views["axial"]
    click_square(qtbot, ax, 12.0)
    s = patient.structures["patch_hot"]
    assert s.role is StructureRole.HELPER and s.mask is ws.viewer_model.structures["patch_hot"].mask
    assert s.n_voxels() > 0 and ["structures"] in changes
    assert ws.errors == []

    out = tmp_path / "dicom"
    export_ct_series(patient, out)
    export_rtstruct(patient, out / "RS.dcm")
    back = load_dicom_folder(out)
    np.testing.assert_array_equal(back.structures["patch_hot"].mask, s.mask)
    assert back.structures["patch_hot"].role is StructureRole.HELPER

    # undo (Ctrl+Z in the Contour menu) empties the patch: it leaves the patient, said so
    ws.actions["contour.undo"].trigger()
    assert "patch_hot" not in patient.structures
    assert "empty" in ws.window.statusBar().currentMessage()
    ws.actions["contour.redo"].trigger()
    assert patient.structures["patch_hot"].n_voxels() == s.n_voxels()


def test_editing_a_patient_structure_updates_it_in_place_of_its_mask(qtbot, workstation):
    ws = workstation
    ws.session.set_patient(phantom_patient())
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=10000)
    patient = ws.session.patient
    before = patient.structures["PTV"].mask.copy()
    ed = ws.contouring.editor
    ed.set_active_structure("PTV")
    ws.actions["contour.tool_eraser"].trigger()
    ed.set_brush_radius_mm(6.0)
    ax = ws.window.viewer.views["axial"]
    p = ax.index_to_widget(ws.viewer_model.cursor)
    qtbot.mouseClick(ax, Qt.MouseButton.LeftButton, pos=QPoint(int(p.x()), int(p.y())))
    assert patient.structures["PTV"].n_voxels() < before.sum()
    assert "PTV" in patient.structures  # a patient's own structure is never dropped
    ws.actions["contour.undo"].trigger()
    np.testing.assert_array_equal(patient.structures["PTV"].mask, before)
    with pytest.raises(InputError):
        ed.new_structure("body")


def test_structures_added_by_a_controller_are_shown_and_get_dvhs(qtbot, workstation):
    # Helper rings made by "Build goals" reach the patient outside the contouring tools;
    # the display follows the session's "structures" change: layer, volume, DVH curve.
    from core.patient import Structure, StructureRole

    ws = workstation
    ws.session.set_patient(phantom_patient())
    qtbot.waitUntil(lambda: not ws.runner.busy, timeout=10000)
    patient = ws.session.patient
    ring = np.zeros(patient.grid.shape, bool)
    ring[2:4, 2:6, 2:6] = True
    patient.add_structure(Structure("Ring_test", ring, StructureRole.HELPER, (200, 200, 0)))
    ws.session.changed.emit(["structures"])
    assert "Ring_test" in ws.viewer_model.structures
    assert ws.viewer_model.structures["Ring_test"].visible
    # the layer of a structure removed from the patient goes too
    del patient.structures["Ring_test"]
    ws.session.changed.emit(["structures"])
    assert "Ring_test" not in ws.viewer_model.structures
