"""Structure tools: margins, booleans, rings, OAR-minus-PTV.

Margins are exact morphological operations on voxel centres with an ellipsoidal
structuring element, in millimetres, so they are right for anisotropic voxels:

* ``expand(M, m)`` holds every voxel centre whose distance to some voxel centre of ``M``
  is <= m (per direction: the displacement ``v`` satisfies
  ``sum_k (v_k / m_k)**2 <= 1`` where ``m_k`` is the margin on the side ``v_k`` points to);
* ``shrink(M, m)`` holds every voxel of ``M`` whose whole m-neighbourhood lies in ``M``;
  outside the grid counts as outside the structure.

Symmetric margins use ``scipy.ndimage.distance_transform_edt`` with ``sampling`` =
spacing / margin (the ellipsoid becomes a unit sphere); asymmetric margins (different
on the two sides of an axis) convolve with the octant-wise ellipsoid by FFT. Both work
on the mask's bounding box plus the margin only, so a 512 x 512 x 150 CT stays fast.

Margin specification (``margin_mm``)
------------------------------------
* a number: isotropic margin in mm;
* 3 numbers: a symmetric margin per **array axis** (in the array's axis order);
* a mapping with patient-direction keys (needs a :class:`~core.geometry.Grid` to know
  how array axes lie in the patient): ``"R" "L" "A" "P" "S" "I"`` (or ``right``,
  ``left``, ``anterior``, ``posterior``, ``superior``, ``inferior``), and/or ``"x" "y" "z"``
  for both sides of a patient axis; directions not named get 0 mm. LPS: +x = left,
  +y = posterior, +z = superior.

Every function that takes ``external`` clips its result to that mask (e.g. the body,
so a PTV expanded near the skin does not grow into air).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from core.errors import GeometryError, InputError
from core.geometry import Grid

#: Distances equal to the margin are inside (face voxels at exactly m mm); this absorbs
#: float rounding of sampling / margin only.
_EPS = 1e-9

_DIRECTION_KEYS = {
    "l": ("x", +1), "left": ("x", +1), "r": ("x", -1), "right": ("x", -1),
    "p": ("y", +1), "posterior": ("y", +1), "a": ("y", -1), "anterior": ("y", -1),
    "s": ("z", +1), "superior": ("z", +1), "i": ("z", -1), "inferior": ("z", -1),
}


# -- argument handling ----------------------------------------------------------------
def _as_mask(mask, name: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 3:
        raise InputError(f"{name} must be a 3D mask, got {m.ndim}D")
    return m.astype(bool, copy=False)


def _spacing_of(grid_or_spacing) -> tuple[np.ndarray, Grid | None]:
    if isinstance(grid_or_spacing, Grid):
        return np.asarray(grid_or_spacing.spacing_mm, float), grid_or_spacing
    s = np.asarray(grid_or_spacing, dtype=float).ravel()
    if s.size != 3 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise InputError(f"voxel spacing must be 3 positive numbers in mm, got {s.tolist()}")
    return s, None


def _margins(margin_mm, grid: Grid | None) -> np.ndarray:
    """(3, 2) float mm: margin toward decreasing index [:, 0] and increasing index [:, 1]."""
    if isinstance(margin_mm, Mapping):
        if grid is None:
            raise InputError("margins by patient direction need the patient grid, not just the spacing")
        per_patient = {("x", -1): 0.0, ("x", 1): 0.0, ("y", -1): 0.0, ("y", 1): 0.0,
                       ("z", -1): 0.0, ("z", 1): 0.0}
        for key, value in margin_mm.items():
            k = str(key).strip().lower()
            if k in ("x", "y", "z"):
                per_patient[(k, -1)] = per_patient[(k, 1)] = float(value)
            elif k in _DIRECTION_KEYS:
                per_patient[_DIRECTION_KEYS[k]] = float(value)
            else:
                raise InputError(f"unknown margin direction '{key}' (use R, L, A, P, S, I or x, y, z)")
        out = np.zeros((3, 2))
        for k, code in enumerate(grid.axes):
            sign = 1 if code[0] == "+" else -1
            out[k, 1] = per_patient[(code[1], sign)]    # increasing index goes toward code
            out[k, 0] = per_patient[(code[1], -sign)]
    else:
        m = np.asarray(margin_mm, dtype=float).ravel()
        if m.size == 1:
            m = np.repeat(m, 3)
        if m.size != 3:
            raise InputError(f"a margin is one number or 3 (one per array axis), got {m.size}")
        out = np.stack([m, m], axis=1)
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise InputError(f"margins must be finite and not negative (use shrink to contract), got {out.tolist()}")
    return out


def _clip(result: np.ndarray, external) -> np.ndarray:
    if external is None:
        return result
    ext = _as_mask(external, "external")
    if ext.shape != result.shape:
        raise GeometryError(f"external mask {ext.shape} does not match the structure {result.shape}")
    return result & ext


def _bbox(mask: np.ndarray):
    idx = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != k))) for k in range(3)]
    return [(int(i[0]), int(i[-1]) + 1) for i in idx]


# -- dilation kernels -------------------------------------------------------------------
def _dilate_crop(src: np.ndarray, spacing: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Dilate the boolean array ``src`` (already cropped / padded) by margins ``m`` (3, 2)."""
    from scipy import ndimage

    if np.all(m == 0):
        return src.copy()
    if np.allclose(m[:, 0], m[:, 1]):
        # Ellipsoid -> unit sphere: scale each axis by 1 / margin. A zero margin gets a huge
        # scale, so any displacement along that axis is "far".
        scale = np.where(m[:, 1] > 0, spacing / np.maximum(m[:, 1], 1e-300), 1e12)
        dist = ndimage.distance_transform_edt(~src, sampling=scale)
        return dist <= 1.0 + _EPS
    from scipy.signal import fftconvolve

    lo = np.floor(m[:, 0] / spacing + _EPS).astype(int)
    hi = np.floor(m[:, 1] / spacing + _EPS).astype(int)
    axes = [np.arange(-lo[k], hi[k] + 1) * spacing[k] for k in range(3)]
    v = np.meshgrid(*axes, indexing="ij")
    r2 = np.zeros(v[0].shape)
    for k in range(3):
        mk = np.where(v[k] < 0, m[k, 0], m[k, 1])
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(v[k] == 0, 0.0, np.where(mk > 0, (v[k] / np.where(mk > 0, mk, 1)) ** 2, np.inf))
        r2 += term
    kernel = (r2 <= 1.0 + _EPS).astype(np.float32)
    full = fftconvolve(src.astype(np.float32), kernel, mode="full")
    sl = tuple(slice(int(lo[k]), int(lo[k]) + src.shape[k]) for k in range(3))
    return full[sl] > 0.5


# -- public API -------------------------------------------------------------------------
def expand(mask, grid_or_spacing, margin_mm, external=None) -> np.ndarray:
    """Grow a structure by a margin.

    Parameters
    ----------
    mask : (a0, a1, a2) bool ndarray
    grid_or_spacing : Grid or 3 floats
        The patient grid (needed for patient-direction margins) or the voxel spacing in mm
        in array axis order.
    margin_mm : float, 3 floats or mapping
        See the module docstring.
    external : (a0, a1, a2) bool ndarray, optional
        The result is clipped to it.

    Returns
    -------
    (a0, a1, a2) bool ndarray
    """
    m0 = _as_mask(mask)
    spacing, grid = _spacing_of(grid_or_spacing)
    m = _margins(margin_mm, grid)
    out = np.zeros(m0.shape, dtype=bool)
    if not m0.any():
        return out
    bb = _bbox(m0)
    reach_lo = np.ceil(m[:, 0] / spacing - _EPS).astype(int)
    reach_hi = np.ceil(m[:, 1] / spacing - _EPS).astype(int)
    sl = tuple(slice(max(0, bb[k][0] - reach_lo[k]), min(m0.shape[k], bb[k][1] + reach_hi[k])) for k in range(3))
    out[sl] = _dilate_crop(m0[sl], spacing, m)
    return _clip(out, external)


def shrink(mask, grid_or_spacing, margin_mm, external=None) -> np.ndarray:
    """Contract a structure by a margin (erosion; outside the grid counts as outside).

    A patient-direction margin moves that surface inward: ``{"P": 5}`` pulls the posterior
    surface 5 mm anterior. Parameters as :func:`expand`.
    """
    m0 = _as_mask(mask)
    spacing, grid = _spacing_of(grid_or_spacing)
    m = _margins(margin_mm, grid)
    if not m0.any() or np.all(m == 0):
        return _clip(m0.copy(), external)
    bb = _bbox(m0)
    sl = tuple(slice(bb[k][0], bb[k][1]) for k in range(3))
    # a one-voxel shell of background around the box is enough: any background voxel
    # within reach of the box has a shell voxel at most as far on every axis
    crop = np.pad(~m0[sl], 1, mode="constant", constant_values=True)
    # erosion by S = complement of the dilation of the complement by -S (sides swapped)
    grown = _dilate_crop(crop, spacing, m[:, ::-1])
    out = np.zeros(m0.shape, dtype=bool)
    out[sl] = ~grown[1:-1, 1:-1, 1:-1]
    return _clip(out, external)


def union(*masks, external=None) -> np.ndarray:
    """Voxel-wise OR of one or more masks (a single list argument is accepted too)."""
    ms = _mask_list(masks)
    out = np.logical_or.reduce(ms)
    return _clip(out, external)


def intersection(*masks, external=None) -> np.ndarray:
    """Voxel-wise AND of one or more masks."""
    ms = _mask_list(masks)
    out = np.logical_and.reduce(ms)
    return _clip(out, external)


def subtract(a, b, external=None) -> np.ndarray:
    """Voxels of ``a`` not in ``b``."""
    ma, mb = _mask_list((a, b))
    return _clip(ma & ~mb, external)


def ring(target, grid_or_spacing, inner_mm: float, outer_mm: float, external=None) -> np.ndarray:
    """Shell around ``target`` from ``inner_mm`` to ``outer_mm`` beyond its surface.

    ``expand(target, outer_mm) - expand(target, inner_mm)``; with ``inner_mm = 0`` the ring
    touches the target. Typical use: a dose-fall-off ring 0-20 mm or 5-30 mm clipped to the body.
    """
    if not (np.isfinite(inner_mm) and np.isfinite(outer_mm)) or inner_mm < 0 or outer_mm <= inner_mm:
        raise InputError(f"a ring needs 0 <= inner < outer, got inner {inner_mm} mm, outer {outer_mm} mm")
    t = _as_mask(target, "target")
    outer = expand(t, grid_or_spacing, outer_mm)
    inner = expand(t, grid_or_spacing, inner_mm) if inner_mm > 0 else t
    return _clip(outer & ~inner, external)


def oar_minus_ptv(oar, ptvs, margin_mm=0.0, grid=None, external=None) -> np.ndarray:
    """The OAR without the PTV(s) grown by ``margin_mm`` (needs ``grid`` or spacing if > 0).

    ``ptvs`` is one mask or a sequence of masks. Used for OAR objectives that must not
    fight target coverage.
    """
    o = _as_mask(oar, "oar")
    p = union(*_seq(ptvs))
    if p.shape != o.shape:
        raise GeometryError(f"PTV mask {p.shape} does not match the OAR {o.shape}")
    if _any_margin(margin_mm):
        if grid is None:
            raise InputError("a margin needs the grid or voxel spacing")
        p = expand(p, grid, margin_mm)
    return _clip(o & ~p, external)


def ptv_minus_oar(ptv, oars, margin_mm=0.0, grid=None, external=None) -> np.ndarray:
    """The PTV without the OAR(s) grown by ``margin_mm`` (a coverage-evaluation/optimisation helper)."""
    t = _as_mask(ptv, "ptv")
    o = union(*_seq(oars))
    if o.shape != t.shape:
        raise GeometryError(f"OAR mask {o.shape} does not match the PTV {t.shape}")
    if _any_margin(margin_mm):
        if grid is None:
            raise InputError("a margin needs the grid or voxel spacing")
        o = expand(o, grid, margin_mm)
    return _clip(t & ~o, external)


def _any_margin(margin_mm) -> bool:
    if isinstance(margin_mm, Mapping):
        return any(float(v) != 0 for v in margin_mm.values())
    return bool(np.any(np.asarray(margin_mm, float) != 0))


def _seq(masks):
    if isinstance(masks, np.ndarray) and masks.ndim == 3:
        return [masks]
    if isinstance(masks, Sequence) or isinstance(masks, np.ndarray):
        return list(masks)
    return [masks]


def _mask_list(masks) -> list:
    if len(masks) == 1 and not (isinstance(masks[0], np.ndarray) and masks[0].ndim == 3):
        masks = tuple(masks[0])
    if not masks:
        raise InputError("no masks given")
    ms = [_as_mask(m) for m in masks]
    if any(m.shape != ms[0].shape for m in ms):
        raise GeometryError(f"masks have different shapes: {sorted({m.shape for m in ms})}")
    return ms
