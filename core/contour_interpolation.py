"""Shape-based interpolation between contoured slices.

A planner draws a structure on a few slices and lets the rest be filled in. Each drawn
slice becomes a signed distance map (negative inside, positive outside, in mm, so the
voxel aspect ratio is respected); a slice between two drawn ones is the zero set of the
linear blend of their maps, weighted by the distance along the slice normal (Raya and
Udupa's shape-based interpolation, IEEE TMI 9:32, 1990). Two concentric discs of radii
``r1`` and ``r2`` blend into discs of radius ``(1 - t) r1 + t r2``: the distance maps are
``|x| - r`` up to half a voxel, and a linear blend of those is exactly such a disc.

Everything works on plain boolean arrays; the slice axis is any array axis, so the same
code serves axial, coronal and sagittal drawing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import InputError
from core.progress import CancelToken, Progress, check_cancel, report


def signed_distance_mm(mask2d: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Signed distance map of a 2D mask.

    Parameters
    ----------
    mask2d : (R, C) bool ndarray
        A non-empty region that does not cover the whole plane.
    spacing_mm : (2,) float
        Pixel size along rows and columns, mm.

    Returns
    -------
    (R, C) float64 ndarray, mm
        Inside: minus the distance to the nearest outside pixel centre; outside: the
        distance to the nearest inside pixel centre. The boundary lies between the
        ``-s`` and ``+s`` values of neighbouring pixels, half way, as the mask's edge does.
    """
    from scipy import ndimage

    m = np.asarray(mask2d, dtype=bool)
    if m.ndim != 2:
        raise InputError(f"a slice mask must be 2D, got {m.ndim}D")
    if not m.any():
        raise InputError("an empty slice has no shape to interpolate from")
    if m.all():
        raise InputError("a slice filled edge to edge has no boundary to interpolate from")
    sampling = [float(s) for s in spacing_mm]
    return ndimage.distance_transform_edt(~m, sampling=sampling) - ndimage.distance_transform_edt(m, sampling=sampling)


def interpolate_slice(mask_a: np.ndarray, mask_b: np.ndarray, t: float,
                      spacing_mm: Sequence[float]) -> np.ndarray:
    """The shape a fraction ``t`` of the way from ``mask_a`` to ``mask_b``.

    Parameters
    ----------
    mask_a, mask_b : (R, C) bool ndarray
        Two non-empty slices of the same shape.
    t : float
        0 gives ``mask_a``, 1 gives ``mask_b``.
    spacing_mm : (2,) float
        Pixel size along rows and columns, mm.

    Returns
    -------
    (R, C) bool ndarray
    """
    a = np.asarray(mask_a, dtype=bool)
    b = np.asarray(mask_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 2:
        raise InputError(f"slices to interpolate must be 2D and of one shape, got {a.shape} and {b.shape}")
    if not 0.0 <= t <= 1.0:
        raise InputError(f"interpolation fraction must be in [0, 1], got {t}")
    out = np.zeros(a.shape, dtype=bool)
    # Work on the bounding box of both shapes plus one pixel: the blend is positive
    # (outside) wherever both maps are, so nothing outside that box can become inside,
    # and the one-pixel rim gives each map outside pixels to measure against.
    box = _bbox(a | b, pad=1, shape=a.shape)
    da = signed_distance_mm(a[box], spacing_mm)
    db = signed_distance_mm(b[box], spacing_mm)
    out[box] = (1.0 - t) * da + t * db < 0.0
    return out


def _bbox(m: np.ndarray, pad: int, shape) -> tuple[slice, ...]:
    out = []
    for k in range(m.ndim):
        nz = np.flatnonzero(m.any(axis=tuple(j for j in range(m.ndim) if j != k)))
        out.append(slice(max(int(nz[0]) - pad, 0), min(int(nz[-1]) + pad + 1, int(shape[k]))))
    return tuple(out)


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    sl = [slice(None)] * 3
    sl[axis] = int(index)
    return volume[tuple(sl)]


def interpolate_gaps(mask: np.ndarray, axis: int, spacing_mm: Sequence[float],
                     key_slices: Sequence[int] | None = None,
                     progress: Progress | None = None,
                     cancel: CancelToken | None = None) -> tuple[np.ndarray, list[int]]:
    """Fill the slices between contoured slices of a 3D mask along ``axis``.

    Parameters
    ----------
    mask : (a0, a1, a2) bool ndarray
    axis : int
        The array axis the slices are stacked along (the drawing view's normal).
    spacing_mm : (3,) float
        Voxel size along each array axis, mm (array axis order).
    key_slices : sequence of int, optional
        The slices to interpolate between (the ones the planner drew); each must hold a
        contour, and every slice strictly between two consecutive ones is replaced.
        Default: every non-empty slice is a key, so only empty gaps are filled and
        nothing drawn is changed.
    progress, cancel
        See :mod:`core.progress`.

    Returns
    -------
    new_mask : (a0, a1, a2) bool ndarray
        A new array; ``mask`` is not modified.
    filled : list of int
        The slices that were (re)computed.

    Raises
    ------
    InputError
        Fewer than two key slices, or a key slice without a contour.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise InputError(f"interpolation needs a 3D mask, got {m.ndim}D")
    if axis not in (0, 1, 2):
        raise InputError(f"slice axis must be 0, 1 or 2, got {axis}")
    if len(spacing_mm) != 3 or min(float(s) for s in spacing_mm) <= 0:
        raise InputError(f"voxel spacing must be 3 positive numbers in mm, got {tuple(spacing_mm)}")
    other = tuple(k for k in range(3) if k != axis)
    filled_slices = np.flatnonzero(m.any(axis=other))
    if key_slices is None:
        keys = [int(k) for k in filled_slices]
    else:
        keys = sorted({int(k) for k in key_slices})
        bad = [k for k in keys if not 0 <= k < m.shape[axis]]
        if bad:
            raise InputError(f"slice {bad[0] + 1} is outside the image (1..{m.shape[axis]})")
        have = set(filled_slices.tolist())
        empty = [k for k in keys if k not in have]
        if empty:
            raise InputError(f"slice {empty[0] + 1} has no contour to interpolate from")
    if len(keys) < 2:
        raise InputError("draw the structure on at least two slices to interpolate between them "
                         f"(it has contours on {len(keys)})")
    plane_mm = [float(spacing_mm[k]) for k in other]
    out = m.copy()
    pairs = [(a, b) for a, b in zip(keys[:-1], keys[1:]) if b - a > 1]
    filled: list[int] = []
    for n, (a, b) in enumerate(pairs):
        check_cancel(cancel)
        pa, pb = _plane(m, axis, a), _plane(m, axis, b)
        # Both distance maps once per pair; each slice between is then one blend.
        box = _bbox(pa | pb, pad=1, shape=pa.shape)
        da = signed_distance_mm(pa[box], plane_mm)
        db = signed_distance_mm(pb[box], plane_mm)
        for k in range(a + 1, b):
            t = (k - a) / (b - a)  # slices are equidistant along one array axis
            plane = _plane(out, axis, k)
            plane[...] = False
            plane[box] = (1.0 - t) * da + t * db < 0.0
            filled.append(k)
        report(progress, n + 1, len(pairs), f"interpolated slices {a + 2}..{b}")
    return out, filled
