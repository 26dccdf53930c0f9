"""3D view: structure surfaces, one isodose surface and beam directions (pyvistaqt).

VTK needs an OpenGL context. Offscreen Qt (CI, ``QT_QPA_PLATFORM=offscreen``) has none, and
creating a VTK render window there crashes or stays blank, so the view checks first and
shows a plain message instead. The VTK widget is also created lazily, the first time the
view is shown, because importing pyvista/VTK costs about a second of start-up.

Surfaces are extracted in array index space (flying edges on the mask) and their points
mapped to patient millimetres with ``Grid.index_to_patient``, so any array axis order
gives correct anatomy.
"""

from __future__ import annotations

import os

import numpy as np
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QLabel, QStackedLayout, QWidget

NO_GL_PLATFORMS = {"offscreen", "minimal", "linuxfb", "vnc"}


def opengl_unavailable_reason() -> str | None:
    """Why a VTK view cannot be shown here, or ``None`` if it can."""
    if os.environ.get("OPENATP_NO_3D"):
        return "3D view disabled (OPENATP_NO_3D is set)"
    platform = QGuiApplication.platformName()
    if platform in NO_GL_PLATFORMS:
        return f"3D view unavailable: the '{platform}' display has no OpenGL"
    try:
        from PySide6.QtGui import QOffscreenSurface, QOpenGLContext

        ctx = QOpenGLContext()
        if not ctx.create():
            return "3D view unavailable: no OpenGL context could be created"
        surf = QOffscreenSurface()
        surf.create()
        ok = ctx.makeCurrent(surf)
        ctx.doneCurrent()
        if not ok:
            return "3D view unavailable: OpenGL context could not be made current"
    except Exception as exc:  # noqa: BLE001 - any failure here means: no 3D, keep running
        return f"3D view unavailable: {exc}"
    return None


def beam_source_direction(gantry_deg: float, couch_deg: float = 0.0) -> np.ndarray:
    """Unit vector (LPS) from isocentre toward the source for a head-first-supine patient.

    IEC 61217: gantry 0 has the source above the patient (anterior, -y), gantry 90 on the
    patient's left (+x). Couch rotation turns the patient about the vertical axis; in the
    patient frame that rotates the beam the other way about y.
    """
    g, c = np.radians(gantry_deg), np.radians(couch_deg)
    v = np.array([np.sin(g), -np.cos(g), 0.0])
    rot = np.array([[np.cos(c), 0.0, -np.sin(c)], [0.0, 1.0, 0.0], [np.sin(c), 0.0, np.cos(c)]])
    return rot @ v


class VolumeView(QWidget):
    """3D scene of the patient.

    Signals
    -------
    ready(bool)
        Emitted once the VTK scene exists (True) or was found impossible (False).
    """

    ready = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.grid = None
        self._surfaces = []  # (name, mask, color)
        self._isodose = None  # (dose_gy, level_gy)
        self._beams = []  # (gantry_deg, couch_deg, isocentre_mm)
        self.plotter = None
        self._mesh_cache: dict = {}
        self.unavailable_reason: str | None = None
        self._init_pending = False
        self._dirty = True
        self._setup_ui()

    def _setup_ui(self) -> None:
        self._stack = QStackedLayout(self)
        self.placeholder = QLabel("3D view: starts when shown")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self._stack.addWidget(self.placeholder)

    @property
    def available(self) -> bool:
        return self.plotter is not None

    # -- data ------------------------------------------------------------------------------
    def set_scene(self, grid, surfaces, isodose=None, beams=()) -> None:
        """Structures ``[(name, mask, (r, g, b))]`` (those to show), isodose ``(dose_gy,
        level_gy)`` or None, beams ``[(gantry_deg, couch_deg, isocentre_mm (3,))]``."""
        if grid is not self.grid:
            self._mesh_cache = {}
        self.grid = grid
        self._surfaces = list(surfaces)
        self._isodose = isodose
        self._beams = list(beams)
        self._dirty = True
        if self.plotter is not None and self.isVisible():
            self._rebuild()

    # -- lazy VTK --------------------------------------------------------------------------
    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        self.request_start()

    def request_start(self, visible: bool = True) -> None:
        """Start VTK soon if the view is really on screen (connect a dock's
        ``visibilityChanged`` here: a tab coming to the front sends no showEvent)."""
        if not visible:
            return
        if self.plotter is None and self.unavailable_reason is None and not self._init_pending:
            self._init_pending = True
            # A short delay, then check again: while a window first lays out its tabified
            # docks, the hidden tab's widget is briefly "visible" (context object: the timer
            # is dropped if the view dies first).
            QTimer.singleShot(250, self, self._init_vtk)
        elif self.plotter is not None and self._dirty:
            self._rebuild()

    def _init_vtk(self) -> None:
        self._init_pending = False
        if not self.isVisible() or self.visibleRegion().isEmpty():
            return  # shown only in passing (e.g. while docks were tabified): wait for a real show
        reason = opengl_unavailable_reason()
        if reason is None:
            try:
                from pyvistaqt import QtInteractor

                self.plotter = QtInteractor(self)
                self.plotter.set_background("#15171a", top="#2d3138")
                self._stack.addWidget(self.plotter)
                self._stack.setCurrentWidget(self.plotter)
            except Exception as exc:  # noqa: BLE001 - no 3D is not fatal for planning
                reason = f"3D view unavailable: {exc}"
                self.plotter = None
        if reason is not None:
            self.unavailable_reason = reason
            self.placeholder.setText(reason + "\n\nThe 2D views, DVH and planning work as usual.")
            self.ready.emit(False)
            return
        self._rebuild()
        self.ready.emit(True)

    def _rebuild(self) -> None:
        import pyvista as pv

        pl = self.plotter
        pl.clear()
        self._dirty = False
        if self.grid is None:
            return
        for name, mask, color in self._surfaces:
            key = (name, id(mask))
            if key not in self._mesh_cache:  # toggling visibility must not re-extract surfaces
                self._mesh_cache[key] = self._surface(pv, mask.astype(np.float32), 0.5)
            mesh = self._mesh_cache[key]
            if mesh is not None:
                pl.add_mesh(mesh, color=[c / 255 for c in color], opacity=0.35 if name.lower() == "external" else 0.8,
                            smooth_shading=True, name=f"s:{name}")
        if self._isodose is not None:
            dose, level = self._isodose
            mesh = self._surface(pv, dose.astype(np.float32), float(level))
            if mesh is not None:
                pl.add_mesh(mesh, color="orange", opacity=0.3, name="isodose")
        extent = float(np.max(np.asarray(self.grid.shape) * np.asarray(self.grid.spacing_mm)))
        for i, (gantry, couch, iso) in enumerate(self._beams):
            d = beam_source_direction(gantry, couch)
            iso = np.asarray(iso, dtype=float)
            pl.add_mesh(pv.Line(iso, iso + d * 0.6 * extent), color="yellow", line_width=3, name=f"b:{i}")
        pl.reset_camera()
        pl.view_vector((-1.0, -1.0, 0.6), viewup=(0.0, 0.0, 1.0))  # anterior-oblique, head up

    def _surface(self, pv, volume: np.ndarray, level: float):
        step = 2 if max(volume.shape) > 256 else 1  # big CT grids: half resolution is plenty in 3D
        vol = volume[::step, ::step, ::step]
        if not (vol >= level).any():
            return None
        img = pv.ImageData(dimensions=vol.shape)
        img.point_data["v"] = vol.ravel(order="F")  # point (i, j, k) = vol[i, j, k]
        surf = img.contour([level], scalars="v", method="flying_edges")
        if surf.n_points == 0:
            return None
        surf.points = self.grid.index_to_patient(np.asarray(surf.points) * step)
        # Voxel masks give staircase surfaces; a light Taubin filter smooths them without
        # shrinking the volume (a plain Laplacian would pull thin organs inward).
        return surf.smooth_taubin(n_iter=15, pass_band=0.1)

    def closeEvent(self, event) -> None:  # noqa: N802
        if self.plotter is not None:
            self.plotter.close()
        super().closeEvent(event)
