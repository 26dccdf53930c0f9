"""The display state the image views share: volumes, cursor, window/level, overlays.

The model holds arrays and display settings only; it never computes planning results.
The application fills it from the session (CT, structures, the active dose) and the views
render from it. Every view of one model stays linked: moving the cursor in one moves the
crosshair and the slices of the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QObject, Signal

from widgets.slice_geometry import SliceMapping, VIEWS

# name -> (window HU, level HU). Values from common CT practice.
WINDOW_PRESETS = {
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "bone": (1800.0, 400.0),
    "brain": (80.0, 40.0),
}
DEFAULT_PRESET = "soft tissue"

# Isodose levels in % of the reference dose, with their line colours (high to low).
DEFAULT_ISODOSE_PCT = (107.0, 100.0, 95.0, 80.0, 50.0, 30.0)
_ISODOSE_COLORS = [(255, 0, 255), (255, 0, 0), (255, 150, 0), (255, 255, 0), (0, 220, 0),
                   (0, 170, 255), (0, 0, 255), (150, 150, 255)]

DOSE_MODES = ("isodose", "wash", "both", "off")


def isodose_color(rank: int) -> tuple:
    """Colour of the ``rank``-th highest isodose level."""
    return _ISODOSE_COLORS[min(rank, len(_ISODOSE_COLORS) - 1)]


@dataclass
class StructureLayer:
    """One structure as the views draw it."""

    name: str
    mask: np.ndarray
    color: tuple
    visible: bool = True
    role: str = "OAR"


class ViewerModel(QObject):
    """Shared display state of the CT views.

    Signals
    -------
    volumeChanged()
        A new image (or grid) was set: views rebuild everything.
    cursorChanged(object)
        The crosshair moved; carries the array index as a tuple of 3 ints.
    windowLevelChanged(float, float)
        Window and level in HU.
    structuresChanged()
        Structure list or visibility changed.
    doseChanged()
        Dose data or its display settings (mode, levels, opacity) changed.
    """

    volumeChanged = Signal()
    cursorChanged = Signal(object)
    windowLevelChanged = Signal(float, float)
    structuresChanged = Signal()
    doseChanged = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.grid = None
        self.hu = None
        self.structures: dict[str, StructureLayer] = {}
        self.dose_gy = None
        self.dose_label = ""
        self.reference_gy = 0.0
        self.dose_mode = "isodose"
        self.wash_opacity = 0.45
        self.isodose_unit = "pct"
        self.isodose_levels = DEFAULT_ISODOSE_PCT
        self.window = WINDOW_PRESETS[DEFAULT_PRESET][0]
        self.level = WINDOW_PRESETS[DEFAULT_PRESET][1]
        self.cursor = (0, 0, 0)
        self.mappings: dict[str, SliceMapping] = {}
        self.focus_box = None  # (lo, hi) array indices the views fit at zoom 1 (the body)
        self.dose_version = 0  # bumps on every dose change so views can key caches on it

    # -- data -------------------------------------------------------------------------
    def set_volume(self, hu: np.ndarray | None, grid) -> None:
        """Set the image (HU on ``grid``; ``None`` shows a blank image on the grid)."""
        if hu is not None and tuple(hu.shape) != tuple(grid.shape):
            raise ValueError(f"image {hu.shape} does not match its grid {grid.shape}")
        self.grid = grid
        self.hu = hu
        self.mappings = {v: SliceMapping.for_grid(grid, v) for v in VIEWS}
        self.structures = {}
        self.dose_gy = None
        self.dose_version += 1
        self.cursor = tuple(int(s) // 2 for s in grid.shape)
        self.focus_box = None
        self.volumeChanged.emit()
        self.cursorChanged.emit(self.cursor)

    def set_structures(self, layers) -> None:
        """Replace the structures with ``layers`` (iterable of :class:`StructureLayer`)."""
        out = {}
        for layer in layers:
            if self.grid is not None and tuple(layer.mask.shape) != tuple(self.grid.shape):
                raise ValueError(f"structure '{layer.name}' does not match the image grid")
            out[layer.name] = layer
        self.structures = out
        self.structuresChanged.emit()

    def set_structure_visible(self, name: str, visible: bool) -> None:
        layer = self.structures.get(name)
        if layer is not None and layer.visible != bool(visible):
            layer.visible = bool(visible)
            self.structuresChanged.emit()

    def set_all_structures_visible(self, visible: bool) -> None:
        for layer in self.structures.values():
            layer.visible = bool(visible)
        self.structuresChanged.emit()

    def set_dose(self, dose_gy: np.ndarray | None, reference_gy: float | None = None,
                 label: str = "") -> None:
        """Show ``dose_gy`` (on the image grid) or nothing; ``reference_gy`` is 100 %."""
        if dose_gy is not None:
            if self.grid is None or tuple(dose_gy.shape) != tuple(self.grid.shape):
                raise ValueError("the dose must be on the image grid")
            if reference_gy is None or reference_gy <= 0:
                reference_gy = float(dose_gy.max())
        self.dose_gy = dose_gy
        self.reference_gy = float(reference_gy or 0.0)
        self.dose_label = label
        self.dose_version += 1
        self.doseChanged.emit()

    def set_focus_mask(self, mask: np.ndarray | None) -> None:
        """Fit the views to the bounding box of ``mask`` (e.g. the body) at zoom 1 and
        put the cursor at its centre; ``None`` fits the whole grid."""
        if mask is None or not mask.any():
            self.focus_box = None
        else:
            nz = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != k))) for k in range(3)]
            lo = np.array([a[0] for a in nz])
            hi = np.array([a[-1] for a in nz])
            self.focus_box = (lo, hi)
            self.cursor = tuple(int(v) for v in (lo + hi) // 2)
            self.cursorChanged.emit(self.cursor)
        self.volumeChanged.emit()

    # -- display settings -------------------------------------------------------------
    def set_window_level(self, window: float, level: float) -> None:
        window = float(max(window, 1.0))
        level = float(level)
        if (window, level) != (self.window, self.level):
            self.window, self.level = window, level
            self.windowLevelChanged.emit(window, level)

    def apply_preset(self, name: str) -> None:
        self.set_window_level(*WINDOW_PRESETS[name])

    def set_dose_display(self, mode: str | None = None, opacity: float | None = None,
                         levels=None, unit: str | None = None) -> None:
        """Change how the dose is drawn; ``levels`` are in ``unit`` (``pct`` or ``gy``)."""
        if mode is not None:
            if mode not in DOSE_MODES:
                raise ValueError(f"dose display must be one of {DOSE_MODES}")
            self.dose_mode = mode
        if opacity is not None:
            self.wash_opacity = float(min(max(opacity, 0.0), 1.0))
        if unit is not None:
            if unit not in ("pct", "gy"):
                raise ValueError("isodose unit must be 'pct' or 'gy'")
            self.isodose_unit = unit
        if levels is not None:
            self.isodose_levels = tuple(sorted({float(v) for v in levels if float(v) > 0}, reverse=True))
        self.doseChanged.emit()

    def isodose_levels_gy(self) -> list[tuple[float, float, tuple]]:
        """``(level in Gy, level as entered, colour)`` from the highest level down."""
        out = []
        for rank, v in enumerate(self.isodose_levels):
            gy = v * self.reference_gy / 100.0 if self.isodose_unit == "pct" else v
            out.append((gy, v, isodose_color(rank)))
        return out

    # -- cursor -----------------------------------------------------------------------
    def set_cursor(self, index) -> None:
        if self.grid is None:
            return
        idx = tuple(int(min(max(round(float(i)), 0), n - 1)) for i, n in zip(index, self.grid.shape))
        if idx != self.cursor:
            self.cursor = idx
            self.cursorChanged.emit(idx)

    def set_slice(self, view: str, slice_index: int) -> None:
        m = self.mappings[view]
        idx = list(self.cursor)
        idx[m.slice_axis] = slice_index
        self.set_cursor(idx)

    def step_slice(self, view: str, steps: int) -> None:
        """Move ``steps`` slices toward the patient's positive direction (superior for axial)."""
        m = self.mappings[view]
        self.set_slice(view, self.cursor[m.slice_axis] + steps * m.slice_sign)

    def sample(self, index) -> dict:
        """Read-out at an array index: ``hu``, ``dose_gy`` (or None) and ``position_mm`` (LPS)."""
        idx = tuple(int(round(float(i))) for i in index)
        out = {"index": idx, "hu": None, "dose_gy": None, "position_mm": None}
        if self.grid is None or any(i < 0 or i >= n for i, n in zip(idx, self.grid.shape)):
            return out
        out["position_mm"] = tuple(float(v) for v in self.grid.index_to_patient(idx)[0])
        if self.hu is not None:
            out["hu"] = float(self.hu[idx])
        if self.dose_gy is not None:
            out["dose_gy"] = float(self.dose_gy[idx])
        return out


def window_lut(window: float, level: float, lo_hu: int = -1024, n: int = 4096) -> np.ndarray:
    """uint8 lookup table over HU ``lo_hu .. lo_hu + n - 1`` for a window/level."""
    hu = np.arange(lo_hu, lo_hu + n, dtype=np.float32)
    g = (hu - (level - window / 2.0)) / window
    return (np.clip(g, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def apply_lut(hu_plane: np.ndarray, lut: np.ndarray, lo_hu: int = -1024) -> np.ndarray:
    """Map an HU plane through ``lut`` -> contiguous uint8 plane."""
    idx = np.asarray(hu_plane)
    if idx.dtype.kind == "f":
        idx = np.nan_to_num(idx, nan=lo_hu)
    idx = np.clip(idx.astype(np.int32, copy=False) - lo_hu, 0, lut.size - 1)
    return np.ascontiguousarray(lut[idx])


def dose_wash_lut(opacity: float, n: int = 256) -> np.ndarray:
    """(n, 4) uint8 RGBA 'jet'-like map; entry 0 (no dose) is transparent."""
    t = np.linspace(0.0, 1.0, n)
    r = np.clip(1.5 - np.abs(4 * t - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * t - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * t - 1), 0, 1)
    a = np.full(n, opacity)
    a[0] = 0.0
    return (np.stack([r, g, b, a], axis=1) * 255 + 0.5).astype(np.uint8)
