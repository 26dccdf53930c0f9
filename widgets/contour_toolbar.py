"""The contouring toolbar: tools, brush size, the structure drawn into, new structure,
undo/redo and slice interpolation, all acting on a
:class:`widgets.contour_editor.ContourEditor`.
"""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QActionGroup, QColor, QIcon, QPalette, QPixmap
from PySide6.QtWidgets import (QColorDialog, QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox,
                               QFormLayout, QLabel, QLineEdit, QPushButton, QToolBar, QVBoxLayout)

from core.errors import InputError
from widgets.contour_editor import BRUSH_RADIUS_RANGE_MM, ROLES, ContourEditor

# tool (or button) -> Material Design Icons 6 glyph (qtawesome)
TOOL_ICONS = {
    "": "mdi6.cursor-default-outline",
    "brush": "mdi6.brush",
    "eraser": "mdi6.eraser",
    "polygon": "mdi6.vector-polygon",
    "freehand": "mdi6.gesture",
    "new": "mdi6.shape-square-plus",
    "undo": "mdi6.undo",
    "redo": "mdi6.redo",
    "interpolate": "mdi6.layers-triple-outline",
}
_TOOL_TEXT = {
    "": ("Navigate", "Crosshair, zoom and pan (no drawing)"),
    "brush": ("Brush", "Paint a disc of the brush size (Ctrl+drag erases)"),
    "eraser": ("Eraser", "Erase a disc of the brush size"),
    "polygon": ("Polygon", "Click corners; double-click or Enter closes and fills (Ctrl on the first "
                           "click cuts instead), Backspace drops a corner, Escape abandons"),
    "freehand": ("Freehand", "Drag around a region; releasing fills it (Ctrl cuts instead)"),
}


@lru_cache(maxsize=None)
def _qta_icon(glyph: str, color: str) -> QIcon:
    try:
        import qtawesome as qta

        return qta.icon(glyph, color=color)
    except Exception:  # noqa: BLE001 - a missing icon font must never stop the GUI
        return QIcon()


def _swatch(color) -> QIcon:
    pm = QPixmap(12, 12)
    pm.fill(QColor(*color))
    return QIcon(pm)


class NewStructureDialog(QDialog):
    """Name, colour and role of a new structure. Accepting asks the editor to create it;
    a refused name (empty, clash) is explained in the dialog, which stays open."""

    def __init__(self, editor: ContourEditor, parent=None):
        super().__init__(parent)
        self.editor = editor
        self.created: str | None = None
        self._color = None
        self._setup_ui()

    def _setup_ui(self) -> None:
        self.setWindowTitle("New structure")
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.name_edit = QLineEdit(self._suggest_name())
        self.name_edit.selectAll()
        form.addRow("Name", self.name_edit)
        self.color_button = QPushButton("Automatic")
        self.color_button.setToolTip("Outline colour (automatic: one no shown structure uses)")
        self.color_button.clicked.connect(self._pick_color)
        form.addRow("Colour", self.color_button)
        self.role_box = QComboBox()
        for role in ROLES:
            self.role_box.addItem(role.capitalize(), role)
        self.role_box.setToolTip("Helper: patches, rings and other optimisation structures")
        form.addRow("Role", self.role_box)
        lay.addLayout(form)
        self.error_label = QLabel("")
        self.error_label.setObjectName("error")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #e05050;")
        lay.addWidget(self.error_label)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay.addWidget(buttons)

    def _suggest_name(self) -> str:
        have = {n.lower() for n in self.editor.model.structures}
        i = 1
        while f"patch_{i}" in have:
            i += 1
        return f"patch_{i}"

    def set_color(self, color) -> None:
        self._color = tuple(int(v) for v in color[:3])
        self.color_button.setText("")
        self.color_button.setIcon(_swatch(self._color))

    def _pick_color(self) -> None:
        c = QColorDialog.getColor(QColor(*(self._color or (255, 128, 0))), self, "Structure colour")
        if c.isValid():
            self.set_color((c.red(), c.green(), c.blue()))

    def accept(self) -> None:
        try:
            self.created = self.editor.new_structure(self.name_edit.text(), self._color, self.role_box.currentData())
        except InputError as exc:
            self.error_label.setText(str(exc))
            self.name_edit.setFocus()
            self.name_edit.selectAll()
            return
        super().accept()


class ContourToolbar(QToolBar):
    """Contouring controls for a :class:`ContourEditor`.

    Signals
    -------
    newStructureRequested()
        "New structure…" was chosen (the toolbar also opens its dialog unless
        ``open_dialogs`` is False, as in tests that drive the editor directly).
    """

    newStructureRequested = Signal()

    def __init__(self, editor: ContourEditor, parent=None, open_dialogs: bool = True):
        super().__init__("Contouring", parent)
        self.editor = editor
        self.open_dialogs = open_dialogs
        self.dialog: NewStructureDialog | None = None
        self.tool_actions: dict[str, QAction] = {}
        self.setObjectName("toolbar.contour")
        self._setup_ui()
        editor.tool_changed.connect(self._on_tool_changed)
        editor.active_structure_changed.connect(self._on_active_changed)
        editor.undo_changed.connect(self._update_enabled)
        editor.model.structuresChanged.connect(self._fill_structures)
        editor.model.volumeChanged.connect(self._on_volume_changed)
        self._fill_structures()
        self._on_tool_changed(editor.tool or "")
        self._update_enabled()

    def _icon(self, key: str) -> QIcon:
        return _qta_icon(TOOL_ICONS[key], self.palette().color(QPalette.ColorRole.ButtonText).name())

    def _setup_ui(self) -> None:
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        group = QActionGroup(self)
        group.setExclusive(True)
        for tool, (text, tip) in _TOOL_TEXT.items():
            a = QAction(self._icon(tool), text, self)
            a.setObjectName(f"contour.tool.{tool or 'navigate'}")
            a.setCheckable(True)
            a.setToolTip(f"{text}: {tip}")
            a.setStatusTip(tip)
            a.triggered.connect(lambda _c=False, t=tool: self.choose_tool(t))
            group.addAction(a)
            self.addAction(a)
            self.tool_actions[tool] = a
        self.addSeparator()
        self.addWidget(QLabel(" Brush "))
        self.radius_box = QDoubleSpinBox()
        self.radius_box.setRange(*BRUSH_RADIUS_RANGE_MM)
        self.radius_box.setDecimals(1)
        self.radius_box.setSingleStep(0.5)
        self.radius_box.setSuffix(" mm")
        self.radius_box.setValue(self.editor.brush_radius_mm)
        self.radius_box.setToolTip("Brush and eraser radius, mm")
        self.radius_box.valueChanged.connect(self.editor.set_brush_radius_mm)
        self.addWidget(self.radius_box)
        self.addSeparator()
        self.addWidget(QLabel(" Structure "))
        self.structure_box = QComboBox()
        self.structure_box.setMinimumWidth(130)
        self.structure_box.setToolTip("The structure the tools draw into")
        self.structure_box.currentIndexChanged.connect(self._on_structure_chosen)
        self.addWidget(self.structure_box)
        self.new_action = QAction(self._icon("new"), "New structure…", self)
        self.new_action.setObjectName("contour.new")
        self.new_action.setToolTip("New structure to draw (a helper by default)")
        self.new_action.triggered.connect(self.request_new_structure)
        self.addAction(self.new_action)
        self.addSeparator()
        self.undo_action = QAction(self._icon("undo"), "Undo edit", self)
        self.undo_action.setObjectName("contour.undo")
        self.undo_action.setToolTip("Undo the last edit of this structure")
        self.undo_action.triggered.connect(lambda: self.editor.undo())
        self.redo_action = QAction(self._icon("redo"), "Redo edit", self)
        self.redo_action.setObjectName("contour.redo")
        self.redo_action.setToolTip("Redo the last undone edit of this structure")
        self.redo_action.triggered.connect(lambda: self.editor.redo())
        self.interp_action = QAction(self._icon("interpolate"), "Interpolate slices", self)
        self.interp_action.setObjectName("contour.interpolate")
        self.interp_action.setToolTip("Fill the empty slices between the drawn ones (along the view "
                                      "last drawn in)")
        self.interp_action.triggered.connect(lambda: self.editor.interpolate())
        for a in (self.undo_action, self.redo_action, self.interp_action):
            self.addAction(a)

    # -- slots ----------------------------------------------------------------------------
    def choose_tool(self, tool: str) -> None:
        """Activate ``tool`` (``""``: navigation); drawing targets the picked structure."""
        if tool and self.editor.active_structure is None and self.editor.model.structures:
            # drawing needs a target: the one in the picker
            name = self.structure_box.currentData()
            if name:
                self.editor.set_active_structure(name)
        self.editor.set_tool(tool or None)

    def _on_tool_changed(self, tool: str) -> None:
        a = self.tool_actions.get(tool)
        if a is not None and not a.isChecked():
            a.setChecked(True)

    def request_new_structure(self) -> None:
        self.newStructureRequested.emit()
        if self.open_dialogs:
            self.dialog = NewStructureDialog(self.editor, self.window())
            self.dialog.open()  # window-modal, does not block the event loop

    def _fill_structures(self) -> None:
        box = self.structure_box
        box.blockSignals(True)
        try:
            box.clear()
            for name, layer in self.editor.model.structures.items():
                box.addItem(_swatch(layer.color), name, name)
            i = box.findData(self.editor.active_structure) if self.editor.active_structure else -1
            box.setCurrentIndex(i)
        finally:
            box.blockSignals(False)
        self._update_enabled()

    def _on_structure_chosen(self, index: int) -> None:
        name = self.structure_box.itemData(index)
        if name and name != self.editor.active_structure:
            self.editor.set_active_structure(name)

    def _on_active_changed(self, name: str) -> None:
        i = self.structure_box.findData(name) if name else -1
        if i != self.structure_box.currentIndex():
            self.structure_box.blockSignals(True)
            self.structure_box.setCurrentIndex(i)
            self.structure_box.blockSignals(False)
        self._update_enabled()

    def _on_volume_changed(self) -> None:
        self.editor.set_tool(None)
        self._fill_structures()

    def _update_enabled(self) -> None:
        have_image = self.editor.model.grid is not None
        active = self.editor.active_structure is not None
        for a in self.tool_actions.values():
            a.setEnabled(have_image)
        self.new_action.setEnabled(have_image)
        self.structure_box.setEnabled(have_image and bool(self.editor.model.structures))
        self.undo_action.setEnabled(self.editor.can_undo())
        self.redo_action.setEnabled(self.editor.can_redo())
        self.interp_action.setEnabled(active)
