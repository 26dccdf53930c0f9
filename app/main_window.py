"""The main window: central CT viewer, docked panels, menus, toolbar, status bar.

It composes widgets and lays them out; what the actions do lives in the controllers
(:mod:`app.controllers`). Dock objects carry stable object names so that Qt can save and
restore the layout (``saveState`` / ``restoreState``).
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, Qt, Signal
from PySide6.QtWidgets import (QApplication, QComboBox, QDockWidget, QFileDialog, QLabel, QMainWindow,
                               QMessageBox, QTabBar, QTabWidget, QToolBar)

from app import actions as action_table
from core import __version__
from widgets.ct_viewer import CtViewer
from widgets.dvh_panel import DvhPanel
from widgets.goal_table import GoalTable
from widgets.icons import icon
from widgets.snapshot import save_widget_png, widget_png_bytes
from widgets.structure_list import StructureList
from widgets.task_progress import TaskProgress
from widgets.theme import apply_theme
from widgets.volume_view import VolumeView

LAYOUT_VERSION = 1  # bump when docks change, so an old saved layout is ignored


class MainWindow(QMainWindow):
    """The workstation window.

    Signals
    -------
    themeChanged(str)
        The planner picked ``dark`` or ``light``.
    planChosen(str)
        The planner picked the plan (key) whose dose the views show.
    closing()
        The window is about to close (save settings, stop tasks).
    """

    themeChanged = Signal(str)
    closing = Signal()
    planChosen = Signal(str)

    def __init__(self, viewer_model, parent=None):
        super().__init__(parent)
        self.viewer_model = viewer_model
        self.actions: dict = {}
        self._setup_ui()

    def _setup_ui(self) -> None:
        self.setWindowTitle("OpenATP")
        self.setDockNestingEnabled(True)
        self.viewer = CtViewer(self.viewer_model)
        # The image views are the first central tab; views such as the plan comparison open
        # as further tabs (show_central_tab). The tab bar hides while the images are alone.
        self.central_tabs = QTabWidget()
        self.central_tabs.setObjectName("tabs.central")
        self.central_tabs.setDocumentMode(True)
        self.central_tabs.setTabBarAutoHide(True)
        self.central_tabs.setTabsClosable(True)
        self.central_tabs.addTab(self.viewer, "Images")
        for side in (QTabBar.ButtonPosition.LeftSide, QTabBar.ButtonPosition.RightSide):
            self.central_tabs.tabBar().setTabButton(0, side, None)  # the images cannot be closed
        self.central_tabs.tabCloseRequested.connect(self._on_central_tab_close)
        self.setCentralWidget(self.central_tabs)

        self.structure_list = StructureList(self.viewer_model)
        self.dvh_panel = DvhPanel()
        self.volume_view = VolumeView()
        self.structure_dock = self._dock("Structures", "dock.structures", self.structure_list,
                                         Qt.DockWidgetArea.LeftDockWidgetArea)
        self.dvh_dock = self._dock("DVH", "dock.dvh", self.dvh_panel, Qt.DockWidgetArea.RightDockWidgetArea)
        self.volume_dock = self._dock("3D", "dock.volume", self.volume_view, Qt.DockWidgetArea.RightDockWidgetArea)
        # 3D sits behind the DVH tab: VTK starts only when the planner looks at it, which
        # keeps window start-up fast (pyvista/VTK alone take about a second to import).
        self.tabifyDockWidget(self.dvh_dock, self.volume_dock)
        self.volume_dock.visibilityChanged.connect(self.volume_view.request_start)
        self.dvh_dock.raise_()
        self.resizeDocks([self.structure_dock, self.dvh_dock], [270, 520], Qt.Orientation.Horizontal)
        # The goal list sits under the image views; the side panels keep their full height.
        self.goal_table = GoalTable()
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        self.setCorner(Qt.Corner.BottomRightCorner, Qt.DockWidgetArea.RightDockWidgetArea)
        self.goals_dock = self._dock("Goals", "dock.goals", self.goal_table, Qt.DockWidgetArea.BottomDockWidgetArea)
        self.resizeDocks([self.goals_dock], [240], Qt.Orientation.Vertical)

        self.toolbar = QToolBar("Main toolbar")
        self.toolbar.setObjectName("toolbar.main")
        self.toolbar.setMovable(True)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.toolbar)
        self.plan_toolbar = QToolBar("Plan shown")
        self.plan_toolbar.setObjectName("toolbar.plan")
        self.plan_toolbar.addWidget(QLabel(" Dose shown: "))
        self.plan_box = QComboBox()
        self.plan_box.setMinimumWidth(160)
        self.plan_box.setToolTip("The plan whose dose the image views show (all plans are on the DVH)")
        self.plan_box.currentIndexChanged.connect(self._on_plan_chosen)
        self.plan_toolbar.addWidget(self.plan_box)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, self.plan_toolbar)

        sb = self.statusBar()
        self.task_progress = TaskProgress()
        sb.addWidget(self.task_progress, 1)
        self.device_label = QLabel("device: …")
        self.device_label.setObjectName("statusDevice")
        self.patient_label = QLabel("no patient")
        self.patient_label.setObjectName("statusPatient")
        self.plan_label = QLabel("")
        self.plan_label.setObjectName("statusPlan")
        for w in (self.patient_label, self.plan_label, self.device_label):
            sb.addPermanentWidget(w)

    def _dock(self, title: str, name: str, widget, area) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(name)
        dock.setWidget(widget)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                         | QDockWidget.DockWidgetFeature.DockWidgetFloatable
                         | QDockWidget.DockWidgetFeature.DockWidgetClosable)
        self.addDockWidget(area, dock)
        return dock

    # -- actions ------------------------------------------------------------------------------
    def install_actions(self, actions: dict) -> None:
        """Menus and toolbar from the action table, plus the panels' show/hide toggles."""
        self.actions = actions
        menus = action_table.populate(self.menuBar(), self.toolbar, actions)
        view = menus["&View"]
        view.addSeparator()
        panels = view.addMenu("&Panels")
        for dock, name in ((self.structure_dock, "structures"), (self.dvh_dock, "dvh"), (self.volume_dock, "volume"),
                           (self.goals_dock, "goals")):
            a = dock.toggleViewAction()
            a.setIcon(icon(name))
            panels.addAction(a)
        panels.addAction(self.toolbar.toggleViewAction())
        panels.addAction(self.plan_toolbar.toggleViewAction())
        for tb in self.findChildren(QToolBar):  # toolbars the controllers added (contouring)
            if tb not in (self.toolbar, self.plan_toolbar):
                panels.addAction(tb.toggleViewAction())

    # -- plans -------------------------------------------------------------------------------
    def set_plans(self, plans: list, active: str | None) -> None:
        """Fill the plan chooser with ``[(key, label)]`` and select ``active`` (no signal)."""
        self.plan_box.blockSignals(True)
        try:
            self.plan_box.clear()
            for key, label in plans:
                self.plan_box.addItem(label, key)
            i = self.plan_box.findData(active)
            self.plan_box.setCurrentIndex(i)
            self.plan_box.setEnabled(bool(plans))
        finally:
            self.plan_box.blockSignals(False)

    def _on_plan_chosen(self, index: int) -> None:
        key = self.plan_box.itemData(index)
        if key is not None:
            self.planChosen.emit(key)

    # -- status ------------------------------------------------------------------------------
    def set_status(self, device: str | None = None, patient: str | None = None, plan: str | None = None) -> None:
        if device is not None:
            self.device_label.setText(f"device: {device}")
        if patient is not None:
            self.patient_label.setText(patient)
        if plan is not None:
            self.plan_label.setText(plan)

    # -- layout persistence ----------------------------------------------------------------------
    def save_layout(self, settings) -> None:
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/state", self.saveState(LAYOUT_VERSION))

    def restore_layout(self, settings) -> bool:
        geometry = settings.value("window/geometry")
        state = settings.value("window/state")
        ok = False
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            ok = self.restoreGeometry(geometry)
        if isinstance(state, QByteArray) and not state.isEmpty():
            ok = self.restoreState(state, LAYOUT_VERSION) and ok
        return ok

    # -- handlers named in the action table ("window.*") --------------------------------------
    def use_dark_theme(self) -> None:
        self._use_theme("dark")

    def use_light_theme(self) -> None:
        self._use_theme("light")

    def _use_theme(self, name: str) -> None:
        apply_theme(QApplication.instance(), name)
        self.themeChanged.emit(name)

    def png_bytes(self) -> bytes:
        return widget_png_bytes(self)

    def save_png(self, path) -> None:
        save_widget_png(self, path)

    def save_screenshot_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", "openatp.png", "PNG image (*.png)")
        if path:
            self.save_png(path)
            self.statusBar().showMessage(f"saved {path}", 4000)

    def show_about(self) -> QMessageBox:
        """Version, bundled libraries and model cards (full cards under "Show Details")."""
        from html import escape

        from core.logs import library_versions, model_cards
        from core.paths import install_dir, user_data_dir

        rows = "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in library_versions().items())
        cards = model_cards()
        models = "".join(f"<li>{escape(c.site)}: {escape(c.title)}</li>" for c in cards) or "<li>none installed</li>"
        box = QMessageBox(QMessageBox.Icon.Information, "About OpenATP",
                          f"<b>OpenATP {__version__}</b><p>Automated radiotherapy treatment planning. "
                          "Not for clinical use.</p><table>" + rows + "</table><p>Prediction models:</p><ul>"
                          + models + f"</ul><p>Installation: {escape(str(install_dir()))}<br>"
                          f"User data: {escape(str(user_data_dir()))}</p>"
                          "<p>Demo data: OpenKBP (Babier et al., Med. Phys. 48:5549, 2021).</p>",
                          QMessageBox.StandardButton.Ok, self)
        box.setObjectName("aboutBox")
        box.setDetailedText("\n\n".join(c.text for c in cards))
        box.open()  # non-blocking, like the other dialogs
        return box

    # -- central tabs ------------------------------------------------------------------------------
    def show_central_tab(self, widget, title: str) -> None:
        """Show ``widget`` as a central tab beside the image views (added on first use)."""
        i = self.central_tabs.indexOf(widget)
        if i < 0:
            i = self.central_tabs.addTab(widget, title)
        self.central_tabs.setCurrentIndex(i)

    def central_tab_shown(self, widget) -> bool:
        """Whether ``widget`` is open as a central tab (current or not)."""
        return self.central_tabs.indexOf(widget) >= 0

    def _on_central_tab_close(self, index: int) -> None:
        if index > 0:  # the widget stays alive with its controller; closing only hides it
            self.central_tabs.removeTab(index)

    def closeEvent(self, event) -> None:  # noqa: N802
        self.closing.emit()
        super().closeEvent(event)
