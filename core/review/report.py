"""Review-study outputs: JSON, CSV and an HTML page with hand-written SVG stacked bars.

The figures follow the published ones: for the whole study and each site, one bar
split into the share of cases whose automated plan was accepted (or preferred) by
0, 1, ..., N reviewers.
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

from core.io.atomic import atomic_write_text
from core.jsonsafe import dumps

# Light grey (nobody) to dark green (everyone).
_RAMP = ["#d9d9d9", "#c7e9c0", "#a1d99b", "#74c476", "#41ab5d", "#238b45", "#006d2c", "#00441b"]


def _color(k: int, n: int) -> str:
    if n <= 0:
        return _RAMP[0]
    return _RAMP[round(k / n * (len(_RAMP) - 1))]


def _fmt(x, nd=1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{nd}f}"


def stacked_bars_svg(bars: dict, n_reviewers: int, title: str, width: int = 520) -> str:
    """Stacked horizontal bars, one per label.

    Parameters
    ----------
    bars : dict
        ``{label: distribution}`` with ``distribution["by_k"][str(k)]["share"]`` and
        ``distribution["n_cases"]`` as :func:`core.review.aggregate.aggregate` gives.
    n_reviewers : int
    title : str
    """
    row_h, left, right, top = 26, 140, 20, 40
    plot_w = width - left - right
    height = top + row_h * len(bars) + 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, dist) in enumerate(bars.items()):
        y = top + i * row_h
        out.append(f'<text x="{left - 6}" y="{y + row_h / 2 + 4}" text-anchor="end">'
                   f'{html.escape(str(label))} (n={dist.get("n_cases", 0)})</text>')
        x = float(left)
        for k in range(n_reviewers + 1):
            share = dist["by_k"][str(k)]["share"]
            if not isinstance(share, float) or not math.isfinite(share) or share <= 0:
                continue
            w = share * plot_w
            out.append(f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                       f'fill="{_color(k, n_reviewers)}" stroke="white"><title>{k} of {n_reviewers}: '
                       f'{share * 100:.0f} %</title></rect>')
            if w > 26:
                ink = "white" if n_reviewers and k / n_reviewers > 0.6 else "black"  # legible on dark green
                out.append(f'<text x="{x + w / 2:.1f}" y="{y + row_h / 2 + 4}" text-anchor="middle" '
                           f'fill="{ink}">{share * 100:.0f}%</text>')
            x += w
    ly = top + row_h * len(bars) + 20
    for k in range(n_reviewers + 1):
        lx = left + k * 70
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{_color(k, n_reviewers)}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{k} of {n_reviewers}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _csv(rows: list, columns: list | None = None) -> str:
    buf = io.StringIO()
    if not rows:
        return ""
    columns = columns or list(rows[0])
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


def results_html(results: dict, arm_names: dict) -> str:
    """A self-contained HTML page of the aggregates and figures."""
    n = results["n_reviewers"]
    auto, manual = arm_names.get("automated", "automated"), arm_names.get("manual", "manual")
    acc = {"all cases": results["accepted_by"]}
    acc.update({s: d["accepted_by"] for s, d in results["per_site"].items()})
    pref = {"all cases": results["preferred_by"]}
    pref.update({s: d["preferred_by"] for s, d in results["per_site"].items()})

    def pct(x, n):
        return _fmt(x * 100 if n else None)

    def share_row(name, d):
        return (f"<tr><td>{html.escape(name)}</td><td>{d['k']}/{d['n']}</td><td>{pct(d['share'], d['n'])} %</td>"
                f"<td>{pct(d['ci95'][0], d['n'])} - {pct(d['ci95'][1], d['n'])} %</td></tr>")

    ident = results["identification"]
    rows = [share_row(f"{auto} plan acceptable", results["acceptance"]["automated"]),
            share_row(f"{manual} plan acceptable", results["acceptance"]["manual"]),
            share_row(f"{auto} plan preferred", results["automated_preferred"]),
            share_row("generation method identified", ident)]
    per_rev = "".join(
        f"<tr><td>{html.escape(r)}</td><td>{_fmt(d['acceptance']['automated']['share'] * 100)} %</td>"
        f"<td>{_fmt(d['acceptance']['manual']['share'] * 100)} %</td>"
        f"<td>{_fmt(d['automated_preferred']['share'] * 100)} %</td>"
        f"<td>{_fmt(d['identification']['share'] * 100)} % "
        f"(p={_fmt(d['identification']['p_binomial_vs_chance'], 3)})</td></tr>"
        for r, d in results["per_reviewer"].items() if d["n_ratings"])
    kappas = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v, 3)}</td></tr>"
                     for k, v in results["fleiss_kappa"].items())
    words = ", ".join(f"{html.escape(w['word'])} ({w['count']})" for w in results["keywords"]) or "none"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Blinded review results</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style></head><body>
<h1>Blinded review results</h1>
<p>{results['n_cases']} cases, {n} reviewers ({html.escape(', '.join(results['reviewers']))}),
{results['n_complete_cases']} cases rated by every reviewer. Arms: automated = <b>{html.escape(auto)}</b>,
manual = <b>{html.escape(manual)}</b>.</p>
<p>Scoring: "cannot judge" on acceptability counts as not acceptable; on preference it counts for the
automated plan if that reviewer found it acceptable; on the generation method it counts as a
misidentification. Intervals: exact Clopper-Pearson 95 %.</p>
<table><tr><th>outcome</th><th>ratings</th><th>share</th><th>95 % CI</th></tr>{''.join(rows)}</table>
<p>Identification against chance (two-sided exact binomial test, p0 = 0.5):
p = {_fmt(ident['p_binomial_vs_chance'], 4)}.</p>
{stacked_bars_svg(acc, n, f'{auto} plan accepted by k of {n} reviewers')}
{stacked_bars_svg(pref, n, f'{auto} plan preferred by k of {n} reviewers')}
<h2>Per reviewer</h2>
<table><tr><th>reviewer</th><th>{html.escape(auto)} acceptable</th><th>{html.escape(manual)} acceptable</th>
<th>{html.escape(auto)} preferred</th><th>identified</th></tr>{per_rev}</table>
<h2>Agreement (Fleiss' kappa)</h2><table>{kappas}</table>
<h2>Comment keywords</h2><p>{words}</p>
</body></html>
"""


def write_results(out_dir: str | Path, results: dict, ratings_rows: list, arm_names: dict) -> dict:
    """Write ``results.json``, ``ratings.csv``, ``cases.csv``, ``preference_groups.csv``
    (``patient_id, site, preference``: feeds ``openatp compare --groups``) and
    ``results.html`` into ``out_dir``; returns ``{name: path}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}

    def put(name, text):
        atomic_write_text(out_dir / name, text)
        paths[name] = str(out_dir / name)

    doc = dict(results)
    doc["arm_names"] = arm_names
    put("results.json", dumps(doc) + "\n")
    put("ratings.csv", _csv(ratings_rows))
    put("cases.csv", _csv(results["cases"]))
    put("preference_groups.csv", _csv([{"patient_id": c["case_id"], "site": c["site"],
                                        "preference": c["preference_group"]} for c in results["cases"]]))
    put("results.html", results_html(results, arm_names))
    return paths
