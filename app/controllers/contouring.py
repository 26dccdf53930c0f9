"""Contouring in the workstation: the contour editor and its toolbar, wired to the session.

Drawn and edited structures go into the session's patient as soon as an edit is finished
(so a plan, the RTSTRUCT export and the DVHs see them); new structures are helpers by
default. A structure made here joins the patient only once it holds voxels, and leaves it
again if it is erased to nothing: an empty structure is reported, never offered as a goal
target or exported. Structures that came with the patient stay in it even when emptied.
Messages of the editor (cropped to the body, nothing to undo, empty structure)
reach the planner through the status bar. Handlers ``contouring.*`` of the action table
live here.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt

from widgets.contour_editor import ContourEditor
from widgets.contour_toolbar import ContourToolbar

#: Action-table ids of the tool choices, by editor tool name ("" = navigation).
TOOL_ACTIONS = {"": "contour.tool_navigate", "brush": "contour.tool_brush", "eraser": "contour.tool_eraser",
                "polygon": "contour.tool_polygon", "freehand": "contour.tool_freehand"}


class ContouringController(QObject):
    """Handlers ``contouring.*`` and the editor <-> session wiring."""

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.editor = ContourEditor(workstation.viewer_model, self)
        self.editor.known_names = self._patient_names
        win = workstation.window
        self.toolbar = ContourToolbar(self.editor, win)
        win.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)
        win.viewer.set_editor(self.editor)
        self._drawn: set[str] = set()  # structures made here (not from the patient's files)
        self.editor.structure_added.connect(self._on_added)
        self.editor.structure_edited.connect(self._on_edited)
        self.editor.message.connect(workstation.notify)
        self.editor.tool_changed.connect(self._sync_tool_actions)
        workstation.session.changed.connect(self._on_session_changed)

    def _patient_names(self):
        p = self.ws.session.patient
        return list(p.structures) if p is not None else []

    # -- session -> editor ---------------------------------------------------------------------
    def _on_session_changed(self, what: list) -> None:
        if "patient" not in what:
            return
        self._drawn.clear()
        patient = self.ws.session.patient
        body = None
        if patient is not None:
            try:
                body = patient.external_mask()
            except Exception:  # noqa: BLE001 - no body outline: drawing is not cropped
                body = None
        self.editor.set_body_mask(body)

    # -- editor -> session ----------------------------------------------------------------------
    def _on_added(self, name: str) -> None:
        self._drawn.add(name)
        self.ws.notify(f"'{name}' is ready to draw into (it joins the patient once it holds voxels)")

    def _on_edited(self, name: str) -> None:
        from core.patient import Structure, StructureRole

        patient = self.ws.session.patient
        layer = self.ws.viewer_model.structures.get(name)
        if patient is None or layer is None:
            return
        s = patient.structures.get(name)
        empty = not layer.mask.any()
        if s is None and empty:
            return
        if s is None:
            patient.add_structure(Structure(name, layer.mask, StructureRole(layer.role), tuple(layer.color)))
        elif empty and name in self._drawn:
            del patient.structures[name]
            self.ws.notify(f"'{name}' is empty: left out of the patient (no goals, not exported) "
                           "until you draw into it again")
            self._structures_changed(None)
            return
        else:
            s.mask = layer.mask
            if s.rule is not None:
                s.rule = None  # edited by hand: regenerating it from its rule would undo the edit
                self.ws.notify(f"'{name}' was edited by hand: it is no longer regenerated from its rule")
            if s.role is StructureRole.EXTERNAL:
                self.editor.set_body_mask(layer.mask)
        self._structures_changed(name)

    def _structures_changed(self, name: str | None) -> None:
        patient = self.ws.session.patient
        self.ws.window.structure_list.set_volumes(
            {n: t.volume_cc(patient.grid) for n, t in patient.structures.items()})
        self.ws.session.changed.emit(["structures"])  # the display controller redraws and recomputes DVHs

    def _sync_tool_actions(self, tool: str) -> None:
        actions = getattr(self.ws, "actions", None) or {}
        a = actions.get(TOOL_ACTIONS.get(tool, ""))
        if a is not None and not a.isChecked():
            a.setChecked(True)

    # -- handlers named in the action table ------------------------------------------------------
    def toggle_toolbar(self) -> None:
        self.toolbar.setVisible(not self.toolbar.isVisible())

    def _use(self, tool: str | None) -> None:
        if tool is not None and not self.toolbar.isVisible():
            self.toolbar.show()
        self.toolbar.choose_tool(tool or "")

    def use_navigate(self) -> None:
        self._use(None)

    def use_brush(self) -> None:
        self._use("brush")

    def use_eraser(self) -> None:
        self._use("eraser")

    def use_polygon(self) -> None:
        self._use("polygon")

    def use_freehand(self) -> None:
        self._use("freehand")

    def new_structure(self) -> None:
        self.toolbar.request_new_structure()

    def undo(self) -> None:
        self.editor.undo()

    def redo(self) -> None:
        self.editor.redo()

    def interpolate(self) -> None:
        self.editor.interpolate()
