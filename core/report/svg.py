"""The DVH plot as inline SVG (no plotting library).

Curves come from :func:`core.evaluation.dvh.cumulative_dvh` (volume receiving *at least*
each dose). Solid lines are the plan's dose; dashed lines (optional) a comparison dose,
e.g. the ideal-fluence dose before leaf sequencing.
"""

from __future__ import annotations

from html import escape

import numpy as np


def _nice_step(span: float, n: int = 8) -> float:
    raw = span / max(n, 1)
    mag = 10 ** np.floor(np.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return float(m * mag)
    return float(10 * mag)


def _decimate(x: np.ndarray, y: np.ndarray, max_points: int = 400) -> tuple:
    """Keep the curve's shape with at most ~max_points vertices (uniform subsampling + ends)."""
    if x.size <= max_points:
        return x, y
    idx = np.unique(np.concatenate([np.linspace(0, x.size - 1, max_points).astype(int), [x.size - 1]]))
    return x[idx], y[idx]


def dvh_svg(curves, width: int = 760, height: int = 420, dose_max_gy: float | None = None,
            title: str = "Cumulative dose-volume histogram", prescription_gy: float | None = None) -> str:
    """An ``<svg>`` element with DVH curves.

    Parameters
    ----------
    curves : sequence of dict
        ``{"name", "color": (r, g, b), "dose_gy": (B,), "volume_pct": (B,), "dashed": bool}``.
    width, height : int
        Pixels.
    dose_max_gy : float, optional
        Right end of the dose axis (default: the largest dose of any curve, rounded up).
    title : str
    prescription_gy : float, optional
        Draws a vertical reference line.
    """
    ml, mr, mt, mb = 58, 170, 30, 46
    pw, ph = width - ml - mr, height - mt - mb
    curves = [c for c in curves if np.size(c["dose_gy"]) > 0 and np.all(np.isfinite(c["volume_pct"]))]
    top = dose_max_gy or max([float(np.max(c["dose_gy"])) for c in curves] + [1.0])
    step = _nice_step(top)
    top = float(np.ceil(top / step) * step)

    def sx(d):
        return ml + pw * np.asarray(d, dtype=float) / top

    def sy(v):
        return mt + ph * (1.0 - np.asarray(v, dtype=float) / 100.0)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img" '
           f'aria-label="{escape(title)}">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
           f'<text x="{ml + pw / 2:.1f}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>']
    for d in np.arange(0.0, top + 1e-9, step):
        x = sx(d)
        out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#ddd"/>')
        out.append(f'<text x="{x:.1f}" y="{mt + ph + 15}" text-anchor="middle">{d:g}</text>')
    for v in range(0, 101, 10):
        y = sy(v)
        out.append(f'<line x1="{ml}" y1="{y:.1f}" x2="{ml + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" text-anchor="end">{v}</text>')
    out.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 8}" text-anchor="middle">Dose (Gy)</text>')
    out.append(f'<text x="14" y="{mt + ph / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {mt + ph / 2:.1f})">Volume (%)</text>')
    if prescription_gy:
        x = sx(prescription_gy)
        out.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#888" stroke-dasharray="2,3"/>')
    out.append("<g>")
    for c in curves:
        x, y = _decimate(np.asarray(c["dose_gy"], float), np.asarray(c["volume_pct"], float))
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(sx(np.minimum(x, top)), sy(y)))
        r, g, b = (int(v) for v in c["color"][:3])
        dash = ' stroke-dasharray="6,4"' if c.get("dashed") else ""
        out.append(f'<polyline fill="none" stroke="rgb({r},{g},{b})" stroke-width="1.8"{dash} points="{pts}">'
                   f'<title>{escape(str(c["name"]))}</title></polyline>')
    out.append("</g>")
    # legend: one entry per solid curve name (dashed ones share the colour)
    seen, ly = set(), mt + 6
    for c in curves:
        if c["name"] in seen or c.get("dashed"):
            continue
        seen.add(c["name"])
        r, g, b = (int(v) for v in c["color"][:3])
        out.append(f'<line x1="{ml + pw + 12}" y1="{ly}" x2="{ml + pw + 36}" y2="{ly}" '
                   f'stroke="rgb({r},{g},{b})" stroke-width="3"/>')
        out.append(f'<text x="{ml + pw + 42}" y="{ly + 4}">{escape(str(c["name"]))}</text>')
        ly += 16
    if any(c.get("dashed") for c in curves):
        ly += 6
        out.append(f'<line x1="{ml + pw + 12}" y1="{ly}" x2="{ml + pw + 36}" y2="{ly}" '
                   f'stroke="#333" stroke-width="1.8"/>')
        out.append(f'<text x="{ml + pw + 42}" y="{ly + 4}">delivered (segments)</text>')
        ly += 16
        out.append(f'<line x1="{ml + pw + 12}" y1="{ly}" x2="{ml + pw + 36}" y2="{ly}" stroke="#333" '
                   f'stroke-width="1.8" stroke-dasharray="6,4"/>')
        out.append(f'<text x="{ml + pw + 42}" y="{ly + 4}">ideal fluence</text>')
    out.append("</svg>")
    return "\n".join(out)
