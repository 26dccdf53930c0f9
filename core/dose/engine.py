"""Dose engine protocol, the engine registry, dose grids and fluence maps.

Engines register under a short key (``register_engine``) and are looked up with
``get_engine(key)``; callers (``compute_influence``, ``forward_dose``, the CLI, the GUI)
never name a concrete engine class, so a collapsed-cone or Monte Carlo engine can be
added later by registering it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from core.errors import InputError
from core.geometry import Grid

DEFAULT_ENGINE = "svd_pencil_beam"

_ENGINES: dict[str, Callable[..., "DoseEngine"]] = {}


class DoseEngine(Protocol):
    """What an engine offers; see :class:`core.dose.pencil_beam.SvdPencilBeamEngine`."""

    key: str

    def influence(self, patient, beams, *, beamlet_mm, dose_grid, target_names, margin_mm,
                  device, progress=None, cancel=None):
        ...

    def forward(self, patient, beams, fluences, *, dose_grid, device, progress=None, cancel=None):
        ...


def register_engine(key: str, factory: Callable[..., DoseEngine]) -> None:
    """Register ``factory(**options) -> engine`` under ``key``."""
    _ENGINES[key] = factory


def available_engines() -> list[str]:
    _load_builtin()
    return sorted(_ENGINES)


def get_engine(key: str = DEFAULT_ENGINE, **options) -> DoseEngine:
    """A new engine instance for ``key`` (options go to its constructor)."""
    _load_builtin()
    try:
        factory = _ENGINES[key]
    except KeyError:
        raise InputError(f"unknown dose engine '{key}' (have: {', '.join(sorted(_ENGINES))})") from None
    return factory(**options)


def _load_builtin() -> None:
    # Imported lazily: the pencil-beam engine imports torch, and `import core.dose` must not.
    if DEFAULT_ENGINE not in _ENGINES:
        import core.dose.pencil_beam  # noqa: F401  (registers itself)


def make_dose_grid(grid: Grid, spacing_mm=None) -> Grid:
    """The dose grid: ``grid`` itself, or a grid covering the same box at ``spacing_mm``.

    ``spacing_mm`` is one number (isotropic) or three (array axis order). The coarse grid
    starts at the same corner voxel centre and covers at least the same extent.
    """
    if spacing_mm is None:
        return grid
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"dose grid spacing must be positive (mm), got {spacing_mm}")
    extent = (np.asarray(grid.shape) - 1) * np.asarray(grid.spacing_mm)
    shape = np.floor(extent / sp + 1e-6).astype(int) + 1
    shape = np.where(shape * sp < extent + 1e-6, shape + 1, shape)
    shape = np.maximum(shape, 1)
    return Grid(tuple(int(s) for s in shape), tuple(float(s) for s in sp), grid.origin_mm, grid.axes)


@dataclass(frozen=True, eq=False)
class FluenceMap:
    """A 2D fluence in MU on a regular grid in the field's (u, v) plane at the isocentre.

    Parameters
    ----------
    values_mu : (nu, nv) float ndarray, MU (1 = one MU of open field)
    u0_mm, v0_mm : float
        Position of pixel [0, 0]'s centre.
    spacing_mm : float
    horn_applied : bool
        True when the values already include the machine's off-axis primary fluence (horns),
        as maps built from beamlet weights do (the dose-influence matrix weights each
        beamlet by the horn at its centre).
    """

    values_mu: np.ndarray
    u0_mm: float
    v0_mm: float
    spacing_mm: float
    horn_applied: bool = False

    def __post_init__(self):
        v = np.asarray(self.values_mu, dtype=np.float64)
        if v.ndim != 2 or not np.all(np.isfinite(v)) or np.any(v < 0):
            raise InputError("a fluence map must be a 2D array of non-negative finite MU")
        if not self.spacing_mm > 0:
            raise InputError("fluence map spacing must be positive")
        object.__setattr__(self, "values_mu", v)
