"""The workstation's actions as data: one table builds the menus and the toolbar.

Each :class:`ActionSpec` names its handler as a dotted path on the workstation object
(``"patients.open_dialog"``), so the table holds no Qt objects and no logic, and a test can
check every handler exists. ``enabled_when`` names a predicate of the session state
(:data:`ENABLED_WHEN`); :func:`update_enabled` re-evaluates them whenever the state changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtGui import QAction, QActionGroup, QKeySequence

from widgets.icons import icon

MENUS = ("&File", "&View", "&Plan", "&Contour", "&Help")


@dataclass(frozen=True)
class ActionSpec:
    """One user action.

    Attributes
    ----------
    id : str
        Stable key (also the QAction objectName).
    text : str
        Menu text with its mnemonic.
    menu : str
        One of :data:`MENUS`.
    handler : str
        Dotted path of a callable on the workstation, called without arguments.
    icon : str, optional
        Icon role (:mod:`widgets.icons`).
    shortcut : str, optional
        Portable key sequence text.
    toolbar : bool
        Also on the main toolbar.
    enabled_when : str
        Key of :data:`ENABLED_WHEN`.
    group : str, optional
        Exclusive checkable group (window presets, dose display, theme).
    tip : str
        Status/tool tip.
    separator_before : bool
        Start a new section in the menu (and toolbar).
    """

    id: str
    text: str
    menu: str
    handler: str
    icon: str | None = None
    shortcut: str | None = None
    toolbar: bool = False
    enabled_when: str = "always"
    group: str | None = None
    tip: str = ""
    separator_before: bool = False


ENABLED_WHEN = {
    "always": lambda st: True,
    "patient": lambda st: st["has_patient"],
    "dose": lambda st: st["has_dose"],
    "idle_patient": lambda st: st["has_patient"] and not st["busy"],
    "busy": lambda st: st["busy"],
    "goals_idle": lambda st: st["has_patient"] and not st["busy"] and st.get("has_goals", False),
    "warm_idle": lambda st: st["has_patient"] and not st["busy"] and st.get("can_warm_start", False),
    "version_idle": lambda st: st["has_patient"] and not st["busy"] and st.get("shows_version", False),
}

ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec("file.open", "&Open patient…", "&File", "patients.open_dialog", "open", "Ctrl+O", True,
               tip="Open a DICOM folder, an OpenKBP case (.npz) or a phantom"),
    ActionSpec("file.open_dose", "Open &dose…", "&File", "patients.open_dose_dialog", "open_dose", "Ctrl+D",
               enabled_when="idle_patient", tip="Add a DOSE .npz or RTDOSE file as a plan to compare"),
    ActionSpec("file.open_goals", "Open &goals…", "&File", "planning.open_goals_dialog", "goals", "Ctrl+G",
               enabled_when="patient", tip="Load a GOALS .json file into the goal table (markers on the DVH)"),
    ActionSpec("file.open_folder", "Open DICOM &folder…", "&File", "patients.open_folder_dialog", "open",
               "Ctrl+Shift+O", tip="Open a folder holding a CT series and its RTSTRUCT (RTDOSE, RTPLAN optional)"),
    ActionSpec("file.open_recent", "Open &recent", "&File", "patients.open_most_recent",
               tip="Patients and projects opened recently (the submenu lists the last 10)"),
    ActionSpec("file.open_project", "Open pro&ject…", "&File", "project.open_dialog", None, None,
               tip="Reopen a saved session: patient, plans and goals", separator_before=True),
    ActionSpec("file.save_project", "Sa&ve project", "&File", "project.save", "save", "Ctrl+S",
               enabled_when="patient", tip="Save the session (patient reference, plans, goals) as an .openatp file"),
    ActionSpec("file.save_project_as", "Save project &as…", "&File", "project.save_as_dialog", None, None,
               enabled_when="patient", tip="Save the session under a new name"),
    ActionSpec("file.export", "&Export DICOM…", "&File", "export.export_dialog", "export", "Ctrl+E",
               enabled_when="dose", tip="Write CT, RTSTRUCT, RTPLAN and RTDOSE of the shown plan into a folder",
               separator_before=True),
    ActionSpec("file.open_review", "Open &review study…", "&File", "review.open_dialog",
               tip="Review a blinded study: Plan A and Plan B side by side, answers saved as you go"),
    ActionSpec("file.screenshot", "Save &screenshot…", "&File", "window.save_screenshot_dialog", "screenshot",
               "Ctrl+Shift+S", separator_before=True),
    ActionSpec("file.quit", "&Quit", "&File", "window.close", "quit", "Ctrl+Q", separator_before=True),

    ActionSpec("view.wl_soft", "&Soft-tissue window", "&View", "display.preset_soft_tissue", "soft_tissue",
               "Ctrl+1", True, "patient", "window", "Window 400 / level 40 HU"),
    ActionSpec("view.wl_lung", "&Lung window", "&View", "display.preset_lung", "lung", "Ctrl+2", True,
               "patient", "window", "Window 1500 / level -600 HU"),
    ActionSpec("view.wl_bone", "&Bone window", "&View", "display.preset_bone", "bone", "Ctrl+3", True,
               "patient", "window", "Window 1800 / level 400 HU"),
    ActionSpec("view.dose_lines", "&Isodose lines", "&View", "display.dose_isodose", "isodose", "Ctrl+I", True,
               "dose", "dose", "Show the dose as isodose lines", separator_before=True),
    ActionSpec("view.dose_wash", "Dose colour &wash", "&View", "display.dose_wash", "wash", "Ctrl+Shift+I", True,
               "dose", "dose", "Show the dose as a colour wash"),
    ActionSpec("view.dose_off", "&Hide dose", "&View", "display.dose_off", None, "Ctrl+H", False, "dose", "dose"),
    ActionSpec("view.reset", "&Reset zoom", "&View", "display.reset_views", "reset_view", "Ctrl+0", True, "patient",
               tip="Fit the body in every view", separator_before=True),
    ActionSpec("view.theme_dark", "&Dark theme", "&View", "window.use_dark_theme", None, None, False, "always",
               "theme", separator_before=True),
    ActionSpec("view.theme_light", "Li&ght theme", "&View", "window.use_light_theme", None, None, False, "always",
               "theme"),

    ActionSpec("plan.run", "&Run automated plan", "&Plan", "planning.run_plan", "plan", "Ctrl+R", True,
               "idle_patient", tip="Predict, set goals, optimise and compute the final dose", separator_before=True),
    ActionSpec("plan.cancel", "&Cancel task", "&Plan", "planning.cancel", "cancel", "Ctrl+.", True, "busy",
               tip="Stop the running task; the last good result is kept"),
    ActionSpec("plan.predict", "&Predict dose", "&Plan", "planning.predict", "predict", "F5", True, "idle_patient",
               tip="Predict the dose with the site's model (shown on the DVH as 'predicted')", separator_before=True),
    ActionSpec("plan.build_goals", "&Build goals", "&Plan", "planning.build_goals", "goals", "F6", True,
               "idle_patient", tip="Goals from the site template, values personalised by the predicted dose"),
    ActionSpec("plan.optimize", "&Optimize (cold)", "&Plan", "planning.optimize", "optimize", "F7", True,
               "goals_idle", tip="Optimize the goal list from scratch; sequence and compute the final dose"),
    ActionSpec("plan.reoptimize", "Re-optimize (&warm)", "&Plan", "planning.reoptimize", "reoptimize", "F8", True,
               "warm_idle", tip="Re-optimize the edited goals from the current fluence, reusing the dose matrix"),
    ActionSpec("plan.revert", "Re&vert to shown plan", "&Plan", "planning.revert", "revert", "F9", False,
               "version_idle", tip="The shown plan version's goals back in the table; re-optimize starts from it"),
    ActionSpec("plan.save_template", "Save goals as &institution template…", "&Plan",
               "planning.save_template_dialog", "save", None, False, "goals_idle",
               tip="Save the goal list as a protocol template in your institution's folder"),
    ActionSpec("plan.time_limit", "Plan &time limit…", "&Plan", "planning.time_limit_dialog", None, None, False,
               "always", tip="How long an automated plan or an optimization may take (0: no limit)"),
    ActionSpec("plan.refine", "Re&fine plan", "&Plan", "refinement.refine", None, "F10", False, "warm_idle",
               tip="Warm refinement rounds from the current plan, same dose matrix: a new patch goal first, "
                   "never breaking a met P1 goal"),
    ActionSpec("plan.compare", "Com&pare plans…", "&Plan", "compare.open", "compare", "Ctrl+Shift+C", True, "dose",
               tip="Two plans side by side: linked views, DVH overlay, goal-by-goal differences",
               separator_before=True),

    ActionSpec("contour.toolbar", "Show/hide contouring &tools", "&Contour", "contouring.toggle_toolbar", None, None,
               False, "always", tip="The contouring toolbar: brush, polygon, freehand, eraser, structure, undo"),
    ActionSpec("contour.tool_navigate", "&Navigate (no drawing)", "&Contour", "contouring.use_navigate", None, None,
               False, "patient", "contour_tool", "Left button moves the crosshair again", separator_before=True),
    ActionSpec("contour.tool_brush", "&Brush", "&Contour", "contouring.use_brush", None, None, False, "patient",
               "contour_tool", "Paint with a disc of the brush size in mm (Ctrl+drag erases)"),
    ActionSpec("contour.tool_eraser", "&Eraser", "&Contour", "contouring.use_eraser", None, None, False, "patient",
               "contour_tool", "Erase with a disc of the brush size in mm"),
    ActionSpec("contour.tool_polygon", "&Polygon", "&Contour", "contouring.use_polygon", None, None, False,
               "patient", "contour_tool", "Click corners; double-click or Enter closes and fills"),
    ActionSpec("contour.tool_freehand", "&Freehand", "&Contour", "contouring.use_freehand", None, None, False,
               "patient", "contour_tool", "Drag around a region; releasing fills it"),
    ActionSpec("contour.new", "New &structure…", "&Contour", "contouring.new_structure", None, "Ctrl+Shift+N",
               enabled_when="patient", tip="A new structure to draw (name, colour, role: helper by default)",
               separator_before=True),
    ActionSpec("contour.undo", "&Undo contour edit", "&Contour", "contouring.undo", None, "Ctrl+Z",
               enabled_when="patient", tip="Undo the last edit of the structure being drawn"),
    ActionSpec("contour.redo", "&Redo contour edit", "&Contour", "contouring.redo", None, "Ctrl+Shift+Z",
               enabled_when="patient", tip="Redo the last undone edit of the structure being drawn"),
    ActionSpec("contour.interpolate", "&Interpolate slices", "&Contour", "contouring.interpolate", None,
               "Ctrl+Shift+L", enabled_when="patient",
               tip="Fill the empty slices between drawn slices (along the view last drawn in)"),
    ActionSpec("contour.helper_rule", "&Helper structure from rule…", "&Contour",
               "refinement.helper_from_rule_dialog", "structures", None, False, "idle_patient",
               tip="Margin, boolean, ring, OAR minus PTV, PTV minus OAR, hot or cold patch; regenerated when its "
                   "sources change", separator_before=True),
    ActionSpec("contour.hot_patch", "Hot patch from &dose…", "&Contour", "refinement.hot_patch_dialog", None,
               None, False, "dose",
               tip="Voxels above a % of the prescription outside the targets on the shown plan; "
                   "offers a max-dose goal on it"),

    ActionSpec("help.about", "&About OpenATP", "&Help", "window.show_about", "about"),
)


def resolve(root, path: str):
    """``resolve(ws, "patients.open_dialog")`` -> the bound callable."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def build_actions(root, parent, specs=ACTIONS) -> dict:
    """Create a QAction per spec, wired to its handler on ``root``; returns ``{id: QAction}``."""
    actions, groups = {}, {}
    for spec in specs:
        a = QAction(spec.text, parent)
        a.setObjectName(spec.id)
        if spec.icon:
            a.setIcon(icon(spec.icon))
        if spec.shortcut:
            a.setShortcut(QKeySequence(spec.shortcut))
        tip = spec.tip or spec.text.replace("&", "").rstrip("…")
        if spec.shortcut:
            tip = f"{tip} ({QKeySequence(spec.shortcut).toString(QKeySequence.SequenceFormat.NativeText)})"
        a.setToolTip(tip)
        a.setStatusTip(tip)
        if spec.group:
            a.setCheckable(True)
            groups.setdefault(spec.group, QActionGroup(parent)).addAction(a)
        handler = resolve(root, spec.handler)
        a.triggered.connect(lambda _checked=False, h=handler: h())
        actions[spec.id] = a
    return actions


def populate(menubar, toolbar, actions: dict, specs=ACTIONS) -> dict:
    """Fill ``menubar`` and ``toolbar`` from the table; returns ``{menu title: QMenu}``."""
    menus = {title: menubar.addMenu(title) for title in MENUS}
    first_in_toolbar = True
    for spec in specs:
        menu = menus[spec.menu]
        if spec.separator_before and not menu.isEmpty():
            menu.addSeparator()
        menu.addAction(actions[spec.id])
        if spec.toolbar and toolbar is not None:
            if spec.separator_before and not first_in_toolbar:
                toolbar.addSeparator()
            toolbar.addAction(actions[spec.id])
            first_in_toolbar = False
    return menus


def update_enabled(actions: dict, state: dict, specs=ACTIONS) -> None:
    """Enable each action whose ``enabled_when`` predicate holds for ``state``."""
    for spec in specs:
        actions[spec.id].setEnabled(bool(ENABLED_WHEN[spec.enabled_when](state)))
