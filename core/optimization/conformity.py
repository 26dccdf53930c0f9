"""Automatic conformity control: dose must fall off with distance from every target.

Outside the targets, each voxel gets a dose limit that falls with its distance ``r``
from each target (mm)::

    L_t(r) = Rx_t * (end + (start - end) * exp(-r / falloff_mm))
    L(voxel) = max over targets t of L_t(r_t)

(the shape of the "normal tissue objective" of commercial planning systems, e.g.
Eclipse's NTO: start 100 %, end ~ 40-60 %, exponential fall-off). Voxels above their
limit are penalised quadratically at the lowest priority, so conformity never costs a
clinical goal. Inside the targets, :func:`homogeneity_limits` caps each voxel at its own
prescription plus a few per cent, except where a higher-dose target's fall-off allows
more (a simultaneous boost must still be able to fall off through the lower target): a
homogeneous target with a steep edge is what keeps the prescription isodose conformal.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from core.errors import InputError
from core.geometry import Grid


@dataclass(frozen=True)
class FalloffSpec:
    """Dose fall-off outside targets, as fractions of each target's prescription."""

    start: float = 1.0
    end: float = 0.4
    falloff_mm: float = 8.0
    max_distance_mm: float = 40.0

    def __post_init__(self):
        if not (0 < self.end <= self.start <= 1.2):
            raise InputError(f"fall-off needs 0 < end <= start <= 1.2, got start={self.start}, end={self.end}")
        if self.falloff_mm <= 0 or self.max_distance_mm <= 0:
            raise InputError("fall-off distances must be positive (mm)")

    def limit(self, rx_gy: float, r_mm: np.ndarray) -> np.ndarray:
        return rx_gy * (self.end + (self.start - self.end) * np.exp(-np.asarray(r_mm) / self.falloff_mm))


#: Distance maps of recent masks. A warm start, a refinement or the next level of a plan
#: asks again for the same targets' maps; each costs 0.2-0.3 s of a host core (H200
#: machine, pt_201: 5 maps, 1.6 s of every optimization, warm starts included).
_DISTANCE_CACHE: OrderedDict = OrderedDict()
_DISTANCE_CACHE_SIZE = 8
_DISTANCE_LOCK = threading.Lock()


def distance_outside_mm(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """Euclidean distance (mm) of every voxel from the nearest voxel of ``mask`` (0 inside).

    The result is read-only: it may be shared with later calls for the same mask."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise InputError("cannot measure distance from an empty structure")
    key = (hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest(), mask.shape,
           tuple(float(v) for v in grid.spacing_mm))
    with _DISTANCE_LOCK:
        hit = _DISTANCE_CACHE.get(key)
        if hit is not None:
            _DISTANCE_CACHE.move_to_end(key)
            return hit
    r = ndimage.distance_transform_edt(~mask, sampling=grid.spacing_mm).astype(np.float32)
    r.flags.writeable = False
    with _DISTANCE_LOCK:
        _DISTANCE_CACHE[key] = r
        while len(_DISTANCE_CACHE) > _DISTANCE_CACHE_SIZE:
            _DISTANCE_CACHE.popitem(last=False)
    return r


def falloff_limits(targets: list[tuple[np.ndarray, float]], grid: Grid, spec: FalloffSpec):
    """Per-voxel dose limits outside all targets.

    Parameters
    ----------
    targets : list of (mask, rx_gy)
        Target masks on ``grid`` and their prescriptions.
    grid : Grid

    Returns
    -------
    limit_gy : (grid.shape) float32 ndarray, Gy; ``nan`` inside targets
    distance_mm : (grid.shape) float32 ndarray, distance to the nearest target (mm)
    """
    if not targets:
        raise InputError("conformity control needs at least one target")
    limit = np.zeros(grid.shape, dtype=np.float32)
    dist_min = np.full(grid.shape, np.inf, dtype=np.float32)
    inside = np.zeros(grid.shape, dtype=bool)
    for mask, rx in targets:
        r = distance_outside_mm(mask, grid)
        np.maximum(limit, spec.limit(rx, r).astype(np.float32), out=limit)
        np.minimum(dist_min, r, out=dist_min)
        inside |= mask
    limit[inside] = np.nan
    return limit, dist_min


def homogeneity_limits(targets: list[tuple[np.ndarray, float]], grid: Grid, spec: FalloffSpec,
                       over_pct: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel dose limits inside the targets, and each voxel's own prescription.

    A voxel of a target with prescription ``Rx`` (the highest one where targets overlap)
    may receive ``Rx * (1 + over_pct / 100)``, or more where a target with a higher
    prescription is near: then its fall-off limit :meth:`FalloffSpec.limit` applies.

    Returns ``(limit_gy, rx_gy)``, both ``grid.shape`` float32: ``limit_gy`` is ``nan``
    and ``rx_gy`` 0 outside the targets.
    """
    if not targets:
        raise InputError("homogeneity control needs at least one target")
    if over_pct < 0:
        raise InputError(f"the homogeneity allowance must be >= 0 %, got {over_pct}")
    own = np.zeros(grid.shape, dtype=np.float32)
    for mask, rx in targets:
        own[mask] = np.maximum(own[mask], rx)
    limit = np.where(own > 0, own * np.float32(1.0 + over_pct / 100.0), np.nan).astype(np.float32)
    for mask, rx in targets:
        lower = (own > 0) & (own < rx)
        if lower.any():
            r = distance_outside_mm(mask, grid)
            np.maximum(limit, np.where(lower, spec.limit(rx, r), -np.inf).astype(np.float32), out=limit,
                       where=lower)
    return limit, own
