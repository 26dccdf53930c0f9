"""Iso-lines of a 2D field by marching squares, vectorised in numpy.

Used for isodose lines and structure outlines (a mask's 0.5 iso-line). The result is a
set of independent line segments, which Qt draws in one ``QPainter.drawLines`` call;
joining them into polylines would cost Python loops and buy nothing on screen.
"""

from __future__ import annotations

import numpy as np

# Edges of a cell: 0 top (a-b), 1 right (b-c), 2 bottom (d-c), 3 left (a-d), with corners
# a=(r,c) b=(r,c+1) c=(r+1,c+1) d=(r+1,c). Case bit 1=a, 2=b, 4=c, 8=d (corner >= level).
_SEG1 = np.array([-1, 3, 0, 3, 1, -1, 0, 3, 2, 0, -1, 1, 1, 0, 3, -1])
_SEG1_END = np.array([-1, 0, 1, 1, 2, -1, 2, 2, 3, 2, -1, 2, 3, 1, 0, -1])
_SEG2 = np.full(16, -1)
_SEG2_END = np.full(16, -1)


def marching_squares(field: np.ndarray, level: float) -> np.ndarray:
    """Segments of the ``level`` iso-line of ``field``.

    Parameters
    ----------
    field : (H, W) ndarray
        Values on pixel centres; pixel (r, c) sits at coordinate (r, c).
    level : float
        The iso-value. The region ``field >= level`` is enclosed: lines close half a pixel
        beyond the array border.

    Returns
    -------
    (N, 4) float32 ndarray
        Segments ``(r0, c0, r1, c1)`` in pixel coordinates (fractional).
    """
    f = np.asarray(field)
    if f.ndim != 2:
        raise ValueError("marching_squares needs a 2D field")
    inside = f >= level  # on the original dtype: a bool mask is not converted as a whole
    if not inside.any():
        return np.zeros((0, 4), np.float32)
    # Work on the bounding box of the enclosed region only (plus one pixel): a small
    # structure on a 512 x 512 slice then costs what its size costs, not the slice's.
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, f.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, f.shape[1])
    # Pad by one pixel so regions touching the array border close there. A padded value
    # mirrors its neighbour about the level (2 L - f), so the closing line runs half a pixel
    # outside the last pixel centre -- exactly where a mask's edge is.
    sub = np.pad(f[r0:r1, c0:c1].astype(np.float32), 1, mode="edge")
    ring = np.ones(sub.shape, bool)
    ring[1:-1, 1:-1] = False
    e = sub[ring]
    delta = np.float32(1e-6 * max(1.0, abs(float(level))))
    sub[ring] = np.where(e >= level, np.minimum(2 * level - e, level - delta), e)
    a, b = sub[:-1, :-1], sub[:-1, 1:]
    c, d = sub[1:, 1:], sub[1:, :-1]
    case = ((a >= level).astype(np.uint8) | ((b >= level) << 1).astype(np.uint8)
            | ((c >= level) << 2).astype(np.uint8) | ((d >= level) << 3).astype(np.uint8))
    rr, cc = np.nonzero((case != 0) & (case != 15))
    k = case[rr, cc].astype(np.intp)
    va, vb, vc, vd = a[rr, cc], b[rr, cc], c[rr, cc], d[rr, cc]

    def frac(p, q):
        den = q - p
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(den != 0, (level - p) / den, 0.5)
        return np.clip(t, 0.0, 1.0)

    rf, cf = rr.astype(np.float32), cc.astype(np.float32)
    # (n, 4 edges, 2 coords)
    pts = np.empty((rr.size, 4, 2), np.float32)
    t = frac(va, vb); pts[:, 0, 0] = rf; pts[:, 0, 1] = cf + t          # noqa: E702
    t = frac(vb, vc); pts[:, 1, 0] = rf + t; pts[:, 1, 1] = cf + 1      # noqa: E702
    t = frac(vd, vc); pts[:, 2, 0] = rf + 1; pts[:, 2, 1] = cf + t      # noqa: E702
    t = frac(va, vd); pts[:, 3, 0] = rf + t; pts[:, 3, 1] = cf          # noqa: E702

    e0, e1 = _SEG1[k].copy(), _SEG1_END[k].copy()
    g0, g1 = _SEG2[k].copy(), _SEG2_END[k].copy()
    # Saddles (5: a,c inside; 10: b,d inside): the cell centre decides which corners connect.
    centre_in = (va + vb + vc + vd) * 0.25 >= level
    s5, s10 = k == 5, k == 10
    # centre inside joins the two inside corners: cut off the two outside corners instead.
    e0[s5 & centre_in], e1[s5 & centre_in], g0[s5 & centre_in], g1[s5 & centre_in] = 0, 1, 2, 3
    e0[s5 & ~centre_in], e1[s5 & ~centre_in], g0[s5 & ~centre_in], g1[s5 & ~centre_in] = 3, 0, 1, 2
    e0[s10 & centre_in], e1[s10 & centre_in], g0[s10 & centre_in], g1[s10 & centre_in] = 3, 0, 1, 2
    e0[s10 & ~centre_in], e1[s10 & ~centre_in], g0[s10 & ~centre_in], g1[s10 & ~centre_in] = 0, 1, 2, 3

    n = np.arange(rr.size)
    seg = np.concatenate([pts[n, e0], pts[n, e1]], axis=1)
    two = g0 >= 0
    if two.any():
        m = n[two]
        seg = np.concatenate([seg, np.concatenate([pts[m, g0[two]], pts[m, g1[two]]], axis=1)])
    # Undo the padding and the crop.
    seg[:, [0, 2]] += r0 - 1
    seg[:, [1, 3]] += c0 - 1
    return seg
