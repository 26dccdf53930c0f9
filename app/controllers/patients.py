"""Opening patients, doses and goals: file dialogs, the recent list and drag-and-drop in,
core loaders on a worker, session out.

The recent list (File > Open recent) keeps the last :data:`MAX_RECENT` patients and
projects that opened successfully, newest first, in the settings store under
``recent/patients``. Dropping a folder, an OpenKBP case, a DICOM file (its folder), a DOSE
file or a project onto the window opens it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from PySide6.QtCore import QEvent, QObject
from PySide6.QtWidgets import QFileDialog, QMenu

from app.session import PlanEntry

MAX_RECENT = 10
RECENT_KEY = "recent/patients"
PROJECT_SUFFIX = ".openatp"  # core.io.project.PROJECT_SUFFIX (not imported: keeps start-up light)


def classify_path(path: str | Path) -> str | None:
    """What a dropped path is: ``"patient"`` (a folder, an OpenKBP case; a DICOM file stands
    for its folder), ``"dose"`` (a DOSE ``.npz`` holding ``dose_gy`` and no CT), ``"project"``
    (``.openatp``), or None (nothing OpenATP opens)."""
    p = Path(path)
    if p.is_dir():
        return "patient"
    if not p.is_file():
        return None
    suffix = p.suffix.lower()
    if suffix == PROJECT_SUFFIX:
        return "project"
    if suffix == ".dcm":
        return "patient"
    if suffix == ".npz":
        try:  # the member names are in the zip directory: no array is read
            with zipfile.ZipFile(p) as z:
                names = {n[:-4] if n.endswith(".npy") else n for n in z.namelist()}
        except (OSError, zipfile.BadZipFile):
            return "patient"  # let the loader say what is wrong with it
        return "dose" if "dose_gy" in names and "ct" not in names else "patient"
    return None


def load_patient_task(spec: str, phantom_file=None, progress=None, cancel=None):
    """Worker body: the core loader (runs off the GUI thread)."""
    from core.io.loader import load_patient

    return load_patient(spec, phantom_file=phantom_file, progress=progress, cancel=cancel)


def load_dose_task(path: str, patient, progress=None, cancel=None):
    """Worker body: a DOSE/RTDOSE file on the patient's grid, with the loader's warnings."""
    from core.io.dosefile import load_dose

    warnings: list = []
    dose = load_dose(path, patient, warnings)
    return dose, warnings


class PatientController(QObject):
    """Handlers ``patients.*`` of the action table, the recent list and drag-and-drop.

    Attributes
    ----------
    spec : str or None
        The PATIENT argument the session's patient was loaded from (what a project saves).
    phantom_file : str or None
        The file a ``phantom:`` spec was built from.
    """

    def __init__(self, workstation):
        super().__init__(workstation)
        self.ws = workstation
        self.spec: str | None = None
        self.phantom_file: str | None = None
        self.recent_menu: QMenu | None = None
        workstation.window.setAcceptDrops(True)
        workstation.window.installEventFilter(self)

    # -- patients ----------------------------------------------------------------------------
    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.ws.window, "Open patient", "",
            "OpenKBP case (*.npz);;DICOM file in a folder (*.dcm);;OpenATP project (*.openatp);;All files (*)")
        if path:
            self.open_path(path)

    def open_folder_dialog(self) -> None:
        """A directory dialog: a DICOM folder (CT series + RTSTRUCT, optional RTDOSE/RTPLAN)."""
        path = QFileDialog.getExistingDirectory(self.ws.window, "Open DICOM folder", self._last_folder())
        if path:
            self.load(path)

    def open_path(self, path: str | Path):
        """Open whatever ``path`` is (see :func:`classify_path`); returns the task or None."""
        kind = classify_path(path)
        path = str(path)
        if kind == "project":
            return self.ws.project.open_project(path)
        if kind == "dose":
            if not self.ws.session.has_patient:
                self.ws.notify(f"{Path(path).name} is a dose: open its patient first")
                return None
            return self.load_dose(path)
        if kind == "patient" or Path(path).suffix.lower() == ".npz":
            # a DICOM file stands for its folder (CT series + RTSTRUCT)
            return self.load(str(Path(path).parent) if path.lower().endswith(".dcm") else path)
        self.ws.notify(f"cannot open {Path(path).name}: drop a DICOM folder, an OpenKBP case (.npz), "
                       "a dose or an OpenATP project")
        return None

    def load(self, spec: str, phantom_file=None):
        """Load ``spec`` (any PATIENT of docs/cli.md) on a worker; returns the task."""
        spec = str(spec)
        if not spec.lower().startswith("phantom:"):
            spec = str(Path(spec).expanduser().absolute())  # the recent list and projects outlive the cwd
        self.ws.session.set_state(f"loading {Path(spec).name}")
        return self.ws.runner.run("Loading patient", load_patient_task, spec, phantom_file,
                                  on_success=lambda patient: self._on_loaded(patient, spec, phantom_file),
                                  on_failure=self._on_failed,
                                  on_cancel=lambda _e: self.ws.session.set_state("loading cancelled"))

    def _on_loaded(self, patient, spec: str | None = None, phantom_file=None) -> None:
        self.spec = spec
        self.phantom_file = None if phantom_file is None else str(phantom_file)
        self.ws.session.set_patient(patient)
        if spec:
            self.remember(spec)
        for w in patient.warnings:
            self.ws.notify(w)

    def _on_failed(self, exc) -> None:
        self.ws.session.set_state("no patient" if not self.ws.session.has_patient else self.ws.session.state)
        self.ws.show_error(exc, "Could not open the patient")

    # -- doses --------------------------------------------------------------------------------
    def open_dose_dialog(self) -> None:
        if not self.ws.session.has_patient:
            return
        path, _ = QFileDialog.getOpenFileName(self.ws.window, "Open dose", "",
                                              "Dose (*.npz *.dcm);;All files (*)")
        if path:
            self.load_dose(path)

    def load_dose(self, path: str):
        session = self.ws.session

        def done(result):
            dose, warnings = result
            key = Path(path).stem
            n, base = 2, key
            while key in session.plans:
                key, n = f"{base} ({n})", n + 1
            session.add_plan(PlanEntry(key, key, dose, {"source": str(path)}))
            for w in warnings:
                self.ws.notify(w)

        return self.ws.runner.run("Loading dose", load_dose_task, path, session.patient,
                                  on_success=done,
                                  on_failure=lambda e: self.ws.show_error(e, "Could not open the dose"))

    # -- goals ----------------------------------------------------------------------------------
    def open_goals_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.ws.window, "Open goals", "", "Goals (*.json);;All files (*)")
        if path:
            self.load_goals(path)

    def load_goals(self, path: str) -> None:
        from core.errors import OpenATPError
        from core.goals.goal import load_goals

        try:
            goals = load_goals(path)  # a small JSON file: reading it is instant
        except OpenATPError as exc:
            self.ws.show_error(exc, "Could not open the goals")
            return
        self.ws.display.set_goals(goals)

    # -- recent list ---------------------------------------------------------------------------
    def recent(self) -> list[str]:
        """Recently opened patients and projects, newest first."""
        v = self.ws.settings.value(RECENT_KEY, [])
        if v is None:
            return []
        items = [v] if isinstance(v, str) else list(v)
        return [str(i) for i in items if str(i).strip()][:MAX_RECENT]

    def remember(self, spec: str) -> None:
        """Put ``spec`` at the top of the recent list (at most :data:`MAX_RECENT` kept)."""
        items = [spec] + [i for i in self.recent() if i != spec]
        self.ws.settings.setValue(RECENT_KEY, items[:MAX_RECENT])
        self._rebuild_recent_menu()

    def forget(self, spec: str) -> None:
        self.ws.settings.setValue(RECENT_KEY, [i for i in self.recent() if i != spec])
        self._rebuild_recent_menu()

    def clear_recent(self) -> None:
        self.ws.settings.setValue(RECENT_KEY, [])
        self._rebuild_recent_menu()

    def install_recent_menu(self, action) -> QMenu:
        """Give the table's "Open recent" action its submenu (built after the menus)."""
        self.recent_menu = QMenu(self.ws.window)
        self.recent_menu.setObjectName("menu.recent")
        action.setMenu(self.recent_menu)
        self._rebuild_recent_menu()
        return self.recent_menu

    def _rebuild_recent_menu(self) -> None:
        menu = self.recent_menu
        if menu is None:
            return
        menu.clear()
        items = self.recent()
        for n, spec in enumerate(items, 1):
            name = spec if spec.lower().startswith("phantom:") else Path(spec).name
            a = menu.addAction(f"&{n % 10} {name}" if n <= 10 else name)
            a.setToolTip(spec)
            a.setStatusTip(spec)
            a.setData(spec)
            a.triggered.connect(lambda _c=False, s=spec: self.open_recent(s))
        if not items:
            menu.addAction("(none yet)").setEnabled(False)
        menu.addSeparator()
        clear = menu.addAction("Clear list")
        clear.setEnabled(bool(items))
        clear.triggered.connect(self.clear_recent)

    def open_recent(self, spec: str):
        """Open an entry of the recent list; one that no longer exists is dropped from it."""
        if not spec.lower().startswith("phantom:") and not Path(spec).exists():
            self.forget(spec)
            self.ws.show_error(_missing(spec), "Open recent")
            return None
        return self.open_path(spec) if not spec.lower().startswith("phantom:") else self.load(spec)

    def open_most_recent(self):
        items = self.recent()
        return self.open_recent(items[0]) if items else None

    def _last_folder(self) -> str:
        for spec in self.recent():
            p = Path(spec)
            if p.exists():
                return str(p.parent)
        return ""

    # -- drag and drop -------------------------------------------------------------------------
    @staticmethod
    def _dropped_path(event) -> str | None:
        md = event.mimeData()
        if md is None or not md.hasUrls():
            return None
        local = [u.toLocalFile() for u in md.urls() if u.isLocalFile()]
        return local[0] if len(local) == 1 else None

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt name)
        t = event.type()
        if obj is self.ws.window and t in (QEvent.Type.DragEnter, QEvent.Type.DragMove, QEvent.Type.Drop):
            path = self._dropped_path(event)
            if path is None or classify_path(path) is None or self.ws.runner.busy:
                event.ignore()
                return t == QEvent.Type.Drop
            event.acceptProposedAction()
            if t == QEvent.Type.Drop:
                self.open_path(path)
            return True
        return False


def _missing(spec: str):
    from core.errors import InputError

    return InputError("no longer exists: removed from the recent list", spec)
