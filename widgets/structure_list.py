"""Structure list: colour swatch, name, role, volume and a visibility check box.

Works on a :class:`widgets.viewer_model.ViewerModel`: ticking a box sets the structure's
visibility there, so every view follows.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QHBoxLayout, QToolButton, QTreeWidget, QTreeWidgetItem,
                               QVBoxLayout, QWidget)

from widgets.icons import icon


def _swatch(color) -> QIcon:
    pm = QPixmap(14, 14)
    pm.fill(QColor(*color))
    return QIcon(pm)


class StructureList(QWidget):
    """Visibility list of the model's structures.

    Signals
    -------
    visibilityChanged(str, bool)
        A structure was shown or hidden by the planner.
    structureActivated(str)
        A structure was double-clicked (e.g. to centre the views on it).
    """

    visibilityChanged = Signal(str, bool)
    structureActivated = Signal(str)

    def __init__(self, model, parent=None):
        super().__init__(parent)
        self.model = model
        self._volumes_cc: dict[str, float] = {}
        self._setup_ui()
        model.structuresChanged.connect(self._on_structures_changed)
        self._on_structures_changed()

    def _setup_ui(self) -> None:
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        bar = QHBoxLayout()
        self.show_all = QToolButton()
        self.show_all.setIcon(icon("show_all"))
        self.show_all.setToolTip("Show all structures")
        self.show_all.clicked.connect(lambda: self.model.set_all_structures_visible(True))
        self.hide_all = QToolButton()
        self.hide_all.setIcon(icon("hide_all"))
        self.hide_all.setToolTip("Hide all structures")
        self.hide_all.clicked.connect(lambda: self.model.set_all_structures_visible(False))
        bar.addWidget(self.show_all)
        bar.addWidget(self.hide_all)
        bar.addStretch(1)
        lay.addLayout(bar)
        self.tree = QTreeWidget()
        self.tree.setColumnCount(3)
        self.tree.setHeaderLabels(["Structure", "Role", "cc"])
        self.tree.setRootIsDecorated(False)
        self.tree.setUniformRowHeights(True)
        self.tree.itemChanged.connect(self._on_item_changed)
        self.tree.itemDoubleClicked.connect(
            lambda it, _c: self.structureActivated.emit(it.data(0, Qt.ItemDataRole.UserRole)))
        lay.addWidget(self.tree)

    def set_volumes(self, volumes_cc: dict) -> None:
        """Volumes to show (cc) by structure name; computed by the caller."""
        self._volumes_cc = dict(volumes_cc)
        self._on_structures_changed()

    def _on_structures_changed(self) -> None:
        self.tree.blockSignals(True)
        try:
            names = list(self.model.structures)
            if [self.tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole)
                    for i in range(self.tree.topLevelItemCount())] != names:
                self.tree.clear()
                for name in names:
                    layer = self.model.structures[name]
                    vol = self._volumes_cc.get(name)
                    it = QTreeWidgetItem([name, layer.role.capitalize(), "" if vol is None else f"{vol:.1f}"])
                    it.setData(0, Qt.ItemDataRole.UserRole, name)
                    it.setIcon(0, _swatch(layer.color))
                    it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                    it.setTextAlignment(2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                    self.tree.addTopLevelItem(it)
            for i in range(self.tree.topLevelItemCount()):
                it = self.tree.topLevelItem(i)
                layer = self.model.structures[it.data(0, Qt.ItemDataRole.UserRole)]
                it.setCheckState(0, Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
                vol = self._volumes_cc.get(layer.name)
                it.setText(2, "" if vol is None else f"{vol:.1f}")
            for c in range(3):
                self.tree.resizeColumnToContents(c)
        finally:
            self.tree.blockSignals(False)

    def _on_item_changed(self, item, column: int) -> None:
        if column != 0:
            return
        name = item.data(0, Qt.ItemDataRole.UserRole)
        visible = item.checkState(0) == Qt.CheckState.Checked
        self.model.set_structure_visible(name, visible)
        self.visibilityChanged.emit(name, visible)
