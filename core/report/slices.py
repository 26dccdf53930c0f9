"""Axial, coronal and sagittal dose pictures in radiological display orientation.

Display conventions (radiological, as every planning system shows a head-first-supine
patient):

* **axial**: looking from the feet; patient right on screen left, anterior up;
* **coronal**: looking from the front; patient right on screen left, superior up;
* **sagittal**: looking from the patient's left; anterior on screen left, superior up.

In LPS terms (``+x`` left, ``+y`` posterior, ``+z`` superior): screen columns run along
``+x`` (axial, coronal) or ``+y`` (sagittal); screen rows run along ``+y`` (axial) or
``-z`` (coronal, sagittal). :func:`display_plane` reads the array orientation from
``Grid.axes`` (:mod:`core.geometry`), so DICOM ``(z, y, x)`` and OpenKBP ``(y, x, -z)``
cases come out the same way up.
"""

from __future__ import annotations

import numpy as np

from core.errors import GeometryError, InputError
from core.geometry import Grid
from core.report.png import dose_colors, grey_window

#: plane -> (fixed patient axis, (row patient axis, row sign), (column patient axis, column sign))
PLANES = {
    "axial": (2, (1, +1), (0, +1)),
    "coronal": (1, (2, -1), (0, +1)),
    "sagittal": (0, (2, -1), (1, +1)),
}


def display_plane(volume: np.ndarray, grid: Grid, plane: str, point_mm) -> tuple:
    """The slice of ``volume`` through ``point_mm`` in display orientation.

    Parameters
    ----------
    volume : (a0, a1, a2) ndarray on ``grid``
    grid : Grid
    plane : ``"axial"``, ``"coronal"`` or ``"sagittal"``
    point_mm : (3,) LPS point the slice passes through (clipped into the grid)

    Returns
    -------
    image : (rows, cols) ndarray, row 0 at the top of the screen
    spacing_mm : (row_mm, col_mm) pixel size
    index : int, the slice index along the fixed array axis
    """
    if plane not in PLANES:
        raise InputError(f"unknown plane '{plane}' (use {', '.join(PLANES)})")
    vol = np.asarray(volume)
    if vol.shape != grid.shape:
        raise GeometryError(f"array {vol.shape} does not match its grid {grid.shape}")
    fixed, (rax, rsign), (cax, csign) = PLANES[plane]
    pax = list(grid.patient_axis_index)
    k_fixed, k_row, k_col = pax.index(fixed), pax.index(rax), pax.index(cax)
    idx = grid.patient_to_index(np.asarray(point_mm, dtype=float))[0]
    i = int(np.clip(np.rint(idx[k_fixed]), 0, grid.shape[k_fixed] - 1))
    sl = np.take(vol, i, axis=k_fixed)
    # remaining axes keep their order; put the row axis first
    rest = [k for k in range(3) if k != k_fixed]
    if rest.index(k_row) == 1:
        sl = sl.T
    if grid.signs[k_row] != rsign:
        sl = sl[::-1, :]
    if grid.signs[k_col] != csign:
        sl = sl[:, ::-1]
    return np.ascontiguousarray(sl), (grid.spacing_mm[k_row], grid.spacing_mm[k_col]), i


def resample_nearest(img: np.ndarray, spacing_mm, pixel_mm: float) -> np.ndarray:
    """Nearest-neighbour resampling of a 2D image to square ``pixel_mm`` pixels (true aspect)."""
    rows = max(1, int(round(img.shape[0] * spacing_mm[0] / pixel_mm)))
    cols = max(1, int(round(img.shape[1] * spacing_mm[1] / pixel_mm)))
    ri = np.minimum((np.arange(rows) + 0.5) * pixel_mm / spacing_mm[0], img.shape[0] - 1e-9).astype(int)
    ci = np.minimum((np.arange(cols) + 0.5) * pixel_mm / spacing_mm[1], img.shape[1] - 1e-9).astype(int)
    return img[ri[:, None], ci[None, :]]


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a 2D mask (pixels of the mask with a 4-neighbour outside it)."""
    m = np.asarray(mask, dtype=bool)
    p = np.pad(m, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def dose_wash(dose_gy: np.ndarray, grid: Grid, plane: str, point_mm, *, ct_hu=None, body=None,
              structures=(), dose_max_gy: float | None = None, threshold_frac: float = 0.1,
              alpha: float = 0.55, pixel_mm: float | None = None, max_px: int = 420) -> np.ndarray:
    """(H, W, 3) uint8 colour-wash picture of one plane.

    Parameters
    ----------
    dose_gy : (a0, a1, a2) float ndarray, Gy, on ``grid``
    grid : Grid
    plane : ``"axial"``, ``"coronal"``, ``"sagittal"``
    point_mm : (3,) LPS point the plane passes through
    ct_hu : ndarray on ``grid``, optional
        Background (soft-tissue window); without it the body is drawn mid-grey.
    body : bool ndarray on ``grid``, optional
    structures : sequence of (mask on ``grid``, (r, g, b))
        Outlines drawn in their colours.
    dose_max_gy : float, optional
        Top of the colour scale (default: the dose maximum).
    threshold_frac : float
        Doses below this fraction of ``dose_max_gy`` are not washed (the anatomy shows).
    alpha : float
        Opacity of the wash.
    pixel_mm : float, optional
        Display pixel size; default: the longer side of the (body-cropped) picture gets
        ``max_px`` pixels.
    """
    d, sp, _ = display_plane(dose_gy, grid, plane, point_mm)
    b2 = None if body is None else display_plane(body, grid, plane, point_mm)[0].astype(bool)
    # crop to the body (else to the dosed region) plus a 15 mm margin: the picture shows the patient
    region = b2 if b2 is not None and b2.any() else d > 0
    if region.any():
        rr, cc = np.nonzero(region.any(axis=1))[0], np.nonzero(region.any(axis=0))[0]
        mr, mc = int(np.ceil(15.0 / sp[0])), int(np.ceil(15.0 / sp[1]))
        box = (slice(max(rr[0] - mr, 0), rr[-1] + mr + 1), slice(max(cc[0] - mc, 0), cc[-1] + mc + 1))
    else:
        box = (slice(None), slice(None))

    def plane_of(vol):
        return display_plane(vol, grid, plane, point_mm)[0][box]

    d = d[box]
    if pixel_mm is None:
        pixel_mm = max(min(sp) / 8.0, max(d.shape[0] * sp[0], d.shape[1] * sp[1]) / max_px)
    top = float(dose_max_gy) if dose_max_gy else float(np.max(dose_gy)) or 1.0
    dd = resample_nearest(d.astype(np.float64), sp, pixel_mm)
    if ct_hu is not None:
        bg = grey_window(resample_nearest(plane_of(ct_hu), sp, pixel_mm))
    elif b2 is not None:
        bg = np.where(resample_nearest(b2[box], sp, pixel_mm), 110, 20).astype(np.uint8)
    else:
        bg = np.full(dd.shape, 20, np.uint8)
    rgb = np.repeat(bg[:, :, None], 3, axis=2).astype(np.float64)
    washed = dd >= threshold_frac * top
    col = dose_colors(dd / top).astype(np.float64)
    rgb[washed] = (1 - alpha) * rgb[washed] + alpha * col[washed]
    for mask, color in structures:
        m = resample_nearest(plane_of(np.asarray(mask)).astype(bool), sp, pixel_mm)
        # a dark pixel just outside the coloured outline keeps it visible on a wash of the same hue
        rgb[outline(~m) & ~outline(m)] = 0.0
        rgb[outline(m)] = np.asarray(color[:3], dtype=np.float64)
    return np.rint(rgb).astype(np.uint8)
