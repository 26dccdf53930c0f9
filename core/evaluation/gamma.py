"""3D gamma index (Low et al., Med. Phys. 25:656, 1998), vectorised.

For every reference voxel above a dose threshold, gamma is the minimum over evaluated
positions ``r`` of ``sqrt(|r - r_ref|^2 / dta^2 + (D_eval(r) - D_ref)^2 / dD^2)``, with
``D_eval`` interpolated trilinearly on a sub-voxel search lattice (step ``dta / steps``)
inside a sphere of radius ``max_gamma * dta``. Offsets are visited nearest first and a
voxel stops searching once no farther offset can lower its gamma, so the result equals the
exhaustive search on that lattice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import InputError


@dataclass(frozen=True)
class GammaResult:
    gamma: np.ndarray          # reference-grid shape, float32, NaN where not evaluated
    pass_rate: float           # fraction of evaluated voxels with gamma <= 1
    n_evaluated: int
    dose_criterion_gy: float


def gamma_index(ref_gy: np.ndarray, eval_gy: np.ndarray, spacing_mm, dose_pct: float = 3.0,
                dta_mm: float = 3.0, threshold_pct: float = 10.0, global_norm: bool = True,
                max_gamma: float = 1.0, steps: int = 5, mask: np.ndarray | None = None) -> GammaResult:
    """Gamma of ``eval_gy`` against ``ref_gy`` (same grid, array order, spacing per axis).

    Parameters
    ----------
    dose_pct : dose criterion in % of the reference maximum (global) or of the local
        reference dose (``global_norm=False``).
    dta_mm : distance-to-agreement criterion.
    threshold_pct : only reference voxels above this % of the reference maximum are evaluated.
    max_gamma : search radius in units of ``dta_mm`` (1 is enough for pass rates); gammas
        above it are upper bounds (they are certainly above ``max_gamma``).
    steps : search lattice points per ``dta_mm``.
    mask : optional bool array restricting the evaluated voxels further.
    """
    from scipy.ndimage import map_coordinates

    ref = np.asarray(ref_gy, dtype=np.float32)
    ev = np.asarray(eval_gy, dtype=np.float32)
    if ref.shape != ev.shape or ref.ndim != 3:
        raise InputError(f"gamma needs two 3D doses on the same grid, got {ref.shape} and {ev.shape}")
    sp = np.broadcast_to(np.asarray(spacing_mm, dtype=float), (3,))
    if dose_pct <= 0 or dta_mm <= 0 or steps < 1:
        raise InputError("gamma criteria must be positive")
    dmax = float(ref.max())
    if dmax <= 0:
        raise InputError("the reference dose is zero everywhere")
    sel = ref > threshold_pct / 100.0 * dmax
    if mask is not None:
        sel &= np.asarray(mask, dtype=bool)
    pts = np.argwhere(sel)
    dref = ref[sel].astype(np.float64)
    dd = dose_pct / 100.0 * (dmax if global_norm else np.maximum(dref, 1e-12))
    best = ((ev[sel] - dref) / dd) ** 2  # zero offset
    h = dta_mm / steps
    n = [int(np.floor(max_gamma * dta_mm / h))] * 3
    g = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"), -1).reshape(-1, 3) * h
    r2 = (g ** 2).sum(1) / dta_mm ** 2
    keep = (r2 <= max_gamma ** 2) & (r2 > 0)
    g, r2 = g[keep], r2[keep]
    order = np.argsort(r2, kind="stable")
    g, r2 = g[order], r2[order]
    evf = ev.astype(np.float32)
    for off, d2 in zip(g, r2):
        active = np.flatnonzero(best > d2)
        if active.size == 0:
            break
        coords = (pts[active] + off / sp).T
        val = map_coordinates(evf, coords, order=1, mode="nearest")
        ddv = dd if np.isscalar(dd) else dd[active]
        gam2 = d2 + ((val - dref[active]) / ddv) ** 2
        best[active] = np.minimum(best[active], gam2)
    # Exact where <= max_gamma; above it the value is the zero-offset (or best searched)
    # bound, which is >= the true gamma but certainly > max_gamma.
    gam = np.sqrt(best)
    out = np.full(ref.shape, np.nan, dtype=np.float32)
    out[sel] = gam
    return GammaResult(out, float(np.mean(best <= 1.0)) if gam.size else float("nan"), int(gam.size),
                       float(dose_pct / 100.0 * dmax) if global_norm else float("nan"))
