"""Outputs of ``openatp compare``: JSON, CSV tables and an HTML report with SVG dot plots.

The dot plot follows the published figure: one row per endpoint, one dot per patient
at its relative difference ``s * 100 (a - b) / a`` (positive = B better, see
:mod:`core.evaluation.cohort`), the mean as a bar and its 95 % CI as a line; a
grouped plot draws one coloured series per group value (site, institution,
preference group).
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

from core.io.atomic import atomic_write_text

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x, nd=2) -> str:
    return f"{x:.{nd}f}" if _finite(x) else "n/a"


def _fmt_p(p) -> str:
    if not _finite(p):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def dot_plot_svg(series: list, title: str, width: int = 760) -> str:
    """Relative-difference dot plot.

    Parameters
    ----------
    series : list of (name, CohortResult)
        One series per group (or one for the whole cohort); rows are the union of
        endpoints, in the first series' order.
    title : str
    """
    rows = []
    for _, res in series:
        for e in res.endpoints:
            key = (e.structure, e.metric)
            if key not in rows:
                rows.append(key)
    values = [v for _, res in series for e in res.endpoints for v in e.rel_diff_per_patient_pct if _finite(v)]
    values += [v for _, res in series for e in res.endpoints for v in e.rel_diff_ci95 if _finite(v)]
    lim = max([abs(v) for v in values] + [1.0]) * 1.08
    row_h, left, right, top = 18, 190, 30, 46
    n_ser = max(len(series), 1)
    plot_w = width - left - right
    height = top + row_h * len(rows) + 40

    def sx(v):
        return left + (v + lim) / (2 * lim) * plot_w

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>',
           f'<text x="{sx(-lim / 2):.1f}" y="32" text-anchor="middle" fill="#555">A better</text>',
           f'<text x="{sx(lim / 2):.1f}" y="32" text-anchor="middle" fill="#555">B better</text>',
           f'<line x1="{sx(0):.1f}" y1="{top - 6}" x2="{sx(0):.1f}" y2="{top + row_h * len(rows)}" stroke="#999"/>']
    for i, (s, m) in enumerate(rows):
        y0 = top + i * row_h
        if i % 2 == 0:
            out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{row_h}" fill="#f4f4f4"/>')
        out.append(f'<text x="{left - 6}" y="{y0 + row_h / 2 + 4}" text-anchor="end">'
                   f'{html.escape(s)} {html.escape(m)}</text>')
        for j, (name, res) in enumerate(series):
            try:
                e = res.endpoint(s, m)
            except KeyError:
                continue
            col = _COLORS[j % len(_COLORS)]
            y = y0 + row_h * (j + 1) / (n_ser + 1)
            for pid, v in zip(e.patient_ids, e.rel_diff_per_patient_pct):
                if _finite(v):
                    out.append(f'<circle cx="{sx(v):.1f}" cy="{y:.1f}" r="2.2" fill="{col}" fill-opacity="0.55">'
                               f'<title>{html.escape(pid)}: {v:.2f} %</title></circle>')
            lo, hi = e.rel_diff_ci95
            if _finite(lo) and _finite(hi):
                out.append(f'<line x1="{sx(lo):.1f}" y1="{y:.1f}" x2="{sx(hi):.1f}" y2="{y:.1f}" '
                           f'stroke="{col}" stroke-width="1.5"/>')
            if _finite(e.rel_diff_pct):
                out.append(f'<line x1="{sx(e.rel_diff_pct):.1f}" y1="{y - 5:.1f}" x2="{sx(e.rel_diff_pct):.1f}" '
                           f'y2="{y + 5:.1f}" stroke="{col}" stroke-width="2.5"/>')
            if e.significant:
                out.append(f'<text x="{width - right + 4}" y="{y + 4:.1f}" fill="{col}">*</text>')
    yb = top + row_h * len(rows)
    for t in (-lim, -lim / 2, 0.0, lim / 2, lim):
        out.append(f'<text x="{sx(t):.1f}" y="{yb + 14}" text-anchor="middle">{t:.1f}</text>')
    out.append(f'<text x="{sx(0):.1f}" y="{yb + 28}" text-anchor="middle">relative difference (%)</text>')
    for j, (name, _) in enumerate(series):
        if len(series) > 1:
            out.append(f'<text x="{left + 120 * j}" y="{height - 2}" fill="{_COLORS[j % len(_COLORS)]}">'
                       f'&#9679; {html.escape(str(name))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def summary_rows(result) -> list:
    """One CSV row per endpoint (the cli.md fields plus extras)."""
    rows = []
    for e in result.endpoints:
        d = e.to_dict()
        by, val = result.group if result.group else ("", "")
        rows.append({"group_by": by, "group": val,
                     "structure": e.structure, "metric": e.metric, "n": e.n, "mean_a": d["mean_a"],
                     "mean_b": d["mean_b"], "mean_diff": d["mean_diff"], "mean_diff_ci_lo": e.mean_diff_ci95[0],
                     "mean_diff_ci_hi": e.mean_diff_ci95[1], "rel_diff_pct": e.rel_diff_pct,
                     "rel_diff_ci_lo": e.rel_diff_ci95[0], "rel_diff_ci_hi": e.rel_diff_ci95[1],
                     "p": e.p, "p_bonferroni": e.p_bonferroni, "significant": e.significant,
                     "p_wilcoxon": e.p_wilcoxon, "higher_is_better": e.higher_is_better})
    return rows


def patient_rows(table_a: dict, table_b: dict) -> list:
    """Per patient and endpoint: value in A and in B."""
    rows = []
    for pid in table_a:
        for (s, m), a in table_a[pid].items():
            rows.append({"patient_id": pid, "structure": s, "metric": m, "a": a, "b": table_b[pid][(s, m)]})
    return rows


def _csv(rows: list) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()})
    return buf.getvalue()


_BOLD = ' style="font-weight:bold"'


def _table_html(result) -> str:
    head = ("<tr><th>structure</th><th>metric</th><th>mean A</th><th>mean B</th><th>mean A-B</th>"
            "<th>rel. diff % (95 % CI)</th><th>p</th><th>p Bonferroni</th><th>Wilcoxon p</th></tr>")
    body = "".join(
        f"<tr{_BOLD if e.significant else ''}><td>{html.escape(e.structure)}</td>"
        f"<td>{html.escape(e.metric)}</td><td>{_fmt(e.mean_a)}</td><td>{_fmt(e.mean_b)}</td>"
        f"<td>{_fmt(e.mean_diff)}</td><td>{_fmt(e.rel_diff_pct)} ({_fmt(e.rel_diff_ci95[0])}, "
        f"{_fmt(e.rel_diff_ci95[1])})</td><td>{_fmt_p(e.p)}</td><td>{_fmt_p(e.p_bonferroni)}</td>"
        f"<td>{_fmt_p(e.p_wilcoxon)}</td></tr>" for e in result.endpoints)
    return f"<table>{head}{body}</table>"


def report_html(comparison, name_a: str = "A", name_b: str = "B") -> str:
    """The HTML report of a :class:`~core.evaluation.cohort.CohortComparison`."""
    ov = comparison.overall
    parts = [f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Cohort comparison</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}td:first-child,td:nth-child(2){{text-align:left}}</style>
</head><body><h1>Cohort comparison: {html.escape(name_a)} (A, reference) vs {html.escape(name_b)} (B)</h1>
<p>{ov.n_patients} patients. Paired two-tailed t-test per endpoint, Bonferroni over {ov.n_tests} endpoints
(significant rows in bold: p x {ov.n_tests} &lt; 0.05); Wilcoxon signed-rank as a check. Relative difference
100 (A - B) / A, sign flipped for coverage endpoints (target D90-D99, min, V-values, CI), so positive
always means B is better; mean with Student-t 95 % CI.</p>"""]
    notes = list(comparison.notes) + list(ov.notes)
    if notes:
        parts.append("<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append(dot_plot_svg([("all", ov)], "Relative difference per endpoint (all patients)"))
    parts.append(_table_html(ov))
    by_col: dict = {}
    for g in comparison.groups:
        by_col.setdefault(g.group[0], []).append(g)
    for col, results in by_col.items():
        parts.append(f"<h2>By {html.escape(col)}</h2>")
        parts.append(dot_plot_svg([(g.group[1], g) for g in results], f"Relative difference by {col}"))
        for g in results:
            parts.append(f"<h3>{html.escape(col)} = {html.escape(g.group[1])} ({g.n_patients} patients, "
                         f"Bonferroni over {g.n_tests})</h3>")
            parts.append(_table_html(g))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _dumps(doc) -> str:
    from core.jsonsafe import dumps

    return dumps(doc) + "\n"


def write_outputs(out_dir: str | Path, comparison, name_a: str = "A", name_b: str = "B") -> dict:
    """Write ``compare.json`` (the ``--json`` document plus per-patient values),
    ``summary.csv`` (every analysis), ``patients.csv`` and ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}

    def put(name, text):
        atomic_write_text(out_dir / name, text)
        paths[name] = str(out_dir / name)

    put("compare.json", _dumps(comparison.to_dict(per_patient=True)))
    rows = summary_rows(comparison.overall)
    for g in comparison.groups:
        rows += summary_rows(g)
    put("summary.csv", _csv(rows))
    put("patients.csv", _csv(patient_rows(comparison.table_a, comparison.table_b)))
    put("report.html", report_html(comparison, name_a, name_b))
    return paths
