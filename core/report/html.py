"""The plan report: one self-contained HTML page a physician can read without OpenATP.

Everything is inside the file: pictures as base64 PNG data URIs, the DVH as inline SVG,
styles inline; no script, no external link, so it opens offline in any browser and can
be attached to a record. Contents: plan summary, goal table (target / achieved / met),
plan metrics (total MU, CI, HI, timings, ...), segments and MU per beam, how much leaf
sequencing changed target D95 and OAR mean doses, axial / coronal / sagittal dose colour
washes through the target centroid (radiological orientation, see
:mod:`core.report.slices`) with structure outlines and legend, and the DVH.
"""

from __future__ import annotations

import datetime as _dt
import math
from html import escape
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.io.atomic import atomic_write_text
from core.patient import StructureRole
from core.report.png import colorbar, encode_png, png_data_uri
from core.report.slices import dose_wash
from core.report.svg import dvh_svg

_CSS = """
body{font-family:Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0}td.num{text-align:right;font-variant-numeric:tabular-nums}
.met{color:#0a7d20;font-weight:bold}.notmet{color:#c00;font-weight:bold}.na{color:#777}
.pics{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.pics figure{margin:0}
figcaption{font-size:12px;color:#444;text-align:center}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:5px;vertical-align:middle}
.legend span.item{margin-right:14px;white-space:nowrap;font-size:13px}
.note{font-size:12px;color:#555}.warn{color:#8a5a00}
"""

_METRIC_LABELS = {
    "site": "Site", "device": "Compute device", "all_p1_met": "All priority-1 goals met",
    "total_mu": "Total MU", "total_mu_per_fraction": "Total MU per fraction", "ci": "Conformity index (CI)",
    "hi": "Homogeneity index (HI)", "n_segments": "Segments (all beams)", "mu_per_cgy": "MU per cGy (per fraction)",
    "warm_start": "Warm start",
}


def _fmt(v, digits: int = 2) -> str:
    if v is None:
        return "&ndash;"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(float(v)):
            return "&ndash;"
        return f"{float(v):.{digits}f}"
    return escape(str(v))


def _tr(cells, title: str | None = None) -> str:
    """A table row; ``cells`` are (html, numeric) pairs or ready ``<td>`` strings."""
    tds = [c if isinstance(c, str) else (f'<td class="num">{c[0]}</td>' if c[1] else f"<td>{c[0]}</td>") for c in cells]
    head = f'<tr title="{escape(title)}">' if title else "<tr>"
    return head + "".join(tds) + "</tr>"


def _th(*names) -> str:
    return "<tr>" + "".join(f"<th>{n}</th>" for n in names) + "</tr>"


def _met_cell(met) -> str:
    if met is None:
        return '<td class="na">not evaluable</td>'
    return '<td class="met">met</td>' if met else '<td class="notmet">NOT met</td>'


def _goal_row(r) -> dict:
    """Normalise a GoalResult or a metrics.json goal dict to the fields the table shows."""
    if hasattr(r, "goal"):   # core.goals.evaluate.GoalResult
        g, achieved, met = r.goal, r.achieved, r.met
    else:
        from core.goals.goal import ClinicalGoal

        d = dict(r)
        achieved, met = d.pop("achieved", None), d.pop("met", None)
        g = ClinicalGoal.from_dict(d)
    sign = ">=" if g.kind.is_lower_bound else "<="
    target = "as low as possible" if g.value is None else f"{sign} {g.value:g} {g.unit}"
    return {"priority": g.priority, "structure": g.structure, "metric": g.metric, "target": target,
            "achieved": achieved, "unit": g.unit, "met": met, "label": g.label, "note": g.note}


def _goal_table(rows) -> str:
    out = ["<table>" + _th("Priority", "Structure", "Metric", "Goal", "Achieved", "Result")]
    for r in sorted((_goal_row(r) for r in rows), key=lambda x: x["priority"]):
        ach = "&ndash;" if r["achieved"] is None else f'{_fmt(r["achieved"])} {r["unit"]}'
        out.append(_tr([(f'P{r["priority"]}', True), (escape(r["structure"]), False), (escape(r["metric"]), False),
                        (escape(r["target"]), False), (ach, True), _met_cell(r["met"])], title=r["label"]))
    out.append("</table>")
    return "\n".join(out)


def _kv_table(d: dict, labels: dict | None = None) -> str:
    labels = labels or {}
    rows = []
    for k, v in d.items():
        if isinstance(v, (dict, list)):
            continue
        numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        value = _fmt(v, (3 if abs(float(v)) < 10 else 1) if numeric and isinstance(v, (float, np.floating)) else 2)
        cls = ' class="num"' if numeric else ""
        rows.append(f"<tr><th>{escape(labels.get(k, k))}</th><td{cls}>{value}</td></tr>")
    return "<table>" + "".join(rows) + "</table>" if rows else ""


def _effect_table(effect: dict) -> str:
    out = ["<table>" + _th("Structure", "Metric", "Ideal fluence (Gy)", "Delivered segments (Gy)", "Change (Gy)",
                           "Change (%)")]
    for key, metric, rows in (("D95", "D95", effect.get("targets", [])), ("mean", "mean", effect.get("oars", []))):
        for r in rows:
            out.append(_tr([(escape(r["structure"]), False), (metric, False), (_fmt(r[f"{key}_fluence_gy"]), True),
                            (_fmt(r[f"{key}_sequenced_gy"]), True), (_fmt(r["change_gy"]), True),
                            (_fmt(r.get("change_pct"), 1), True)]))
    out.append("</table>")
    return "\n".join(out)


def _beam_table(beams, segmented_beams, fractions: int) -> str:
    out = ["<table>" + _th("Beam", "Gantry (&deg;)", "Couch (&deg;)", "Collimator (&deg;)", "Segments", "MU / fraction",
                           "Smallest segment MU / fx", "Modulation", "Levels", "Fluence change rms / max (%)")]
    for sb in segmented_beams:
        b = beams[sb.beam_index] if beams is not None and sb.beam_index < len(beams) else None
        segs = sb.segments
        smallest = min(s.mu for s in segs) / fractions if segs else None
        out.append(_tr([(sb.beam_index + 1, True), (_fmt(getattr(b, "gantry_deg", None), 0), True),
                        (_fmt(getattr(b, "couch_deg", None), 0), True),
                        (_fmt(getattr(b, "collimator_deg", None), 0), True),
                        (sb.n_segments, True), (_fmt(sb.mu / fractions, 1), True), (_fmt(smallest, 1), True),
                        (_fmt(sb.info.get("modulation"), 2), True), (_fmt(sb.info.get("levels")), True),
                        (f'{_fmt(sb.info.get("beamlet_rms_change_pct"), 1)} / '
                         f'{_fmt(sb.info.get("beamlet_max_change_pct"), 1)}', True)]))
    out.append("</table>")
    out.append('<p class="note">Modulation: beam MU / largest beamlet MU (1 = open field). Fluence change: '
               "delivered vs optimized beamlet weights, in % of the beam's largest weight (intensity levels, "
               "leaf widths and the minimum-MU rule together).</p>")
    return "\n".join(out)


def _dose_stats_table(dose_gy, structures, grid) -> str:
    """Per-structure DVH statistics (Gy): volume, mean, max, D2, D50, D95, D98, D0.03cc."""
    from core.evaluation.dvh import dvh_endpoints

    keys = ("mean", "max", "D0.03cc", "D2", "D50", "D95", "D98")
    out = ["<table>" + _th("Structure", "Volume (cc)", *[f"{k} (Gy)" for k in keys])]
    for s in structures:
        e = dvh_endpoints(dose_gy, s.mask, grid)
        out.append(_tr([(escape(s.name), False), (_fmt(e["volume_cc"], 1), True)]
                       + [(_fmt(e[k]), True) for k in keys]))
    out.append("</table>")
    return "\n".join(out)


def _indices(dose_gy, patient, rx) -> dict:
    """CI (Paddick) and HI (ICRU 83) of the prescribed target, for a report whose metrics lack them."""
    from core.evaluation.indices import conformity_paddick, homogeneity_icru83

    s = patient.structures.get(rx.structure) if rx is not None else None
    if s is None or s.is_empty:
        return {}
    try:
        body = patient.external_mask()
    except Exception:  # noqa: BLE001  (no body contour and no CT: CI over the whole grid)
        body = None
    return {"ci": (f"CI (Paddick) of {s.name}", conformity_paddick(dose_gy, s.mask, rx.dose_gy, body)),
            "hi": (f"HI (ICRU 83) of {s.name}", homogeneity_icru83(dose_gy, s.mask))}


def _dose_array(dose, grid) -> np.ndarray:
    arr = np.asarray(getattr(dose, "dose_gy", dose), dtype=np.float32)
    if arr.shape != grid.shape:
        raise InputError(f"the report's dose {arr.shape} is not on the patient grid {grid.shape}")
    return arr


def write_report(path, patient, dose, goals_table_rows, metrics: dict, *, fluence_dose=None, beams=None,
                 segmented_beams=None, sequencing_effect: dict | None = None, title: str | None = None,
                 warnings=None, dvh_bin_gy: float | None = None) -> Path:
    """Write the self-contained HTML plan report.

    Parameters
    ----------
    path : str or Path
        Output ``.html`` (written atomically).
    patient : core.patient.Patient
    dose : core.patient.Dose or (a0, a1, a2) float ndarray, Gy, on ``patient.grid``
        The delivered (sequenced) dose; every picture and the DVH use it.
    goals_table_rows : sequence
        :class:`core.goals.evaluate.GoalResult` objects or ``metrics.json`` goal dicts
        (a GOALS-file entry plus ``achieved`` and ``met``); every one becomes a table row.
    metrics : dict
        The ``metrics.json`` content; its scalar entries are listed, ``timings_s`` as its own
        table (nested lists/dicts other than these are not repeated).
    fluence_dose : Dose or ndarray, optional
        Dose of the ideal (unsequenced) fluence: dashed DVH lines and the sequencing table.
    beams : BeamSet or sequence of Beam, optional
    segmented_beams : sequence of SegmentedBeam, optional
        Segments and MU per beam.
    sequencing_effect : dict, optional
        :func:`core.delivery.effect.sequencing_effect` output; computed from
        ``fluence_dose`` when not given.
    title : str, optional
    warnings : sequence of str, optional
        Shown prominently (plus ``patient.warnings``).
    dvh_bin_gy : float, optional
        DVH dose bin (default: max dose / 500).

    Returns
    -------
    Path
    """
    from core.evaluation.dvh import cumulative_dvh

    grid = patient.grid
    d = _dose_array(dose, grid)
    fd = None if fluence_dose is None else _dose_array(fluence_dose, grid)
    metrics = dict(metrics or {})
    rx = patient.prescriptions[0] if patient.prescriptions else None
    fractions = int(rx.fractions) if rx is not None else int(metrics.get("fractions", 1) or 1)
    dmax = float(max(d.max(), fd.max() if fd is not None else 0.0)) or 1.0

    shown = [s for s in patient.structures.values()
             if not s.is_empty and s.role in (StructureRole.TARGET, StructureRole.OAR)]
    shown.sort(key=lambda s: (s.role is not StructureRole.TARGET, s.name))
    targets = [s for s in shown if s.role is StructureRole.TARGET]
    if targets:
        centre = grid.index_to_patient(np.argwhere(np.logical_or.reduce([s.mask for s in targets])).mean(axis=0))[0]
        centre_what = "target centroid"
    else:
        centre = grid.index_to_patient(np.array(np.unravel_index(int(np.argmax(d)), d.shape), dtype=float))[0]
        centre_what = "dose maximum"

    # pictures
    try:
        body = patient.external_mask()
    except Exception:   # noqa: BLE001  (no body and no CT: pictures without anatomy)
        body = None
    ct = patient.ct.hu if patient.ct is not None else None
    outlines = [(s.mask, s.color) for s in shown]
    pics = []
    for plane in ("axial", "coronal", "sagittal"):
        img = dose_wash(d, grid, plane, centre, ct_hu=ct, body=body, structures=outlines, dose_max_gy=dmax)
        pics.append(f'<figure><img alt="{plane} dose" src="{png_data_uri(encode_png(img))}" '
                    f'width="{img.shape[1]}" height="{img.shape[0]}">'
                    f'<figcaption>{plane.capitalize()}</figcaption></figure>')
    bar = png_data_uri(encode_png(colorbar(240, 16)))
    scale = (f'<figure><div style="display:flex;gap:4px">'
             f'<img alt="dose colour scale" src="{bar}" width="16" height="240">'
             '<div style="display:flex;flex-direction:column;justify-content:space-between;'
             'height:240px;font-size:12px">'
             f'<span>{dmax:.1f} Gy</span><span>{dmax / 2:.1f} Gy</span>'
             f'<span>{0.1 * dmax:.1f} Gy (wash starts)</span></div></div>'
             f'<figcaption>Dose</figcaption></figure>')
    legend = "".join(f'<span class="item"><span class="sw" style="background:rgb{tuple(int(c) for c in s.color[:3])}">'
                     f'</span>{escape(s.name)}</span>' for s in shown)

    # DVH
    bin_gy = dvh_bin_gy or max(dmax / 500.0, 1e-3)
    curves = []
    for s in shown:
        b, _, pct = cumulative_dvh(d, s.mask, grid, bin_gy)
        curves.append({"name": s.name, "color": s.color, "dose_gy": b, "volume_pct": pct})
        if fd is not None:
            b, _, pct = cumulative_dvh(fd, s.mask, grid, bin_gy)
            curves.append({"name": s.name, "color": s.color, "dose_gy": b, "volume_pct": pct, "dashed": True})
    svg = dvh_svg(curves, dose_max_gy=dmax * 1.05, prescription_gy=rx.dose_gy if rx else None)

    # sequencing
    effect = sequencing_effect
    if effect is None and fd is not None:
        from core.delivery.effect import sequencing_effect as _effect

        effect = _effect(patient, fd, d)
    if effect is None:
        effect = metrics.get("sequencing_effect")

    goal_rows = list(goals_table_rows or [])
    all_p1 = metrics.get("all_p1_met")
    if all_p1 is None and goal_rows:
        p1 = [_goal_row(r)["met"] for r in goal_rows if _goal_row(r)["priority"] == 1]
        all_p1 = all(bool(m) for m in p1) if p1 else None
    if all_p1 is None:
        verdict = ""
    elif all_p1:
        verdict = '<p class="met">All priority-1 goals are met.</p>'
    else:
        verdict = '<p class="notmet">Not all priority-1 goals are met.</p>'

    warns = list(patient.warnings) + list(warnings or [])
    summary = {"Patient": patient.patient_id, "Site": metrics.get("site"),
               "Prescription": f"{rx.dose_gy:g} Gy in {rx.fractions} fractions to {rx.structure}" if rx else None,
               "Report written": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
    scalar = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list)) and k != "site"}
    lower = {k.lower() for k in scalar}
    if not {"ci", "hi"} <= lower:   # the report always states them; computed here when not given
        for k, (label, v) in _indices(d, patient, rx).items():
            if k not in lower:
                scalar[label] = v

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title or f'OpenATP plan report: {patient.patient_id}')}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title or 'OpenATP plan report')}</h1>",
        _kv_table({k: v for k, v in summary.items() if v is not None}),
        '<p class="note">Automatically generated plan for review. Not approved for treatment; '
        'a qualified physicist and physician must review and approve every plan.</p>',
    ]
    if warns:
        items = "".join(f'<li class="warn">{escape(str(w))}</li>' for w in warns)
        parts.append(f"<h2>Warnings</h2><ul>{items}</ul>")
    parts += ["<h2>Clinical goals</h2>", verdict, _goal_table(goal_rows) if goal_rows else "<p>No goals.</p>",
              "<h2>Plan metrics</h2>", _kv_table(scalar, _METRIC_LABELS)]
    timings = metrics.get("timings_s")
    if isinstance(timings, dict) and timings:
        parts.append("<h3>Computation time (s)</h3>" + _kv_table({k: float(v) for k, v in timings.items()
                                                                   if isinstance(v, (int, float))}))
    if segmented_beams:
        parts.append("<h2>Beams and segments</h2>" + _beam_table(beams, segmented_beams, fractions))
        algo = next((sb.info.get("algorithm") for sb in segmented_beams if sb.info.get("algorithm")), None)
        if algo:
            parts.append(f'<p class="note">Step-and-shoot sequencing: {escape(algo)} '
                         f'({escape(segmented_beams[0].mlc_name)} MLC). Doses and metrics in this report are '
                         "computed from the delivered segments, not the ideal fluence.</p>")
    if effect:
        parts.append("<h2>Effect of leaf sequencing</h2>"
                     '<p class="note">Ideal (optimized) fluence vs the delivered segments: '
                     'target D95 and organ mean doses.</p>'
                     + _effect_table(effect))
    parts += [f"<h2>Dose distribution</h2><p class=\"note\">Planes through the {centre_what}; radiological view "
              "(axial: patient right on screen left, anterior up; coronal: right on left, superior up; "
              "sagittal: anterior on left, superior up).</p>",
              f'<div class="legend">{legend}</div>', f'<div class="pics">{"".join(pics)}{scale}</div>',
              "<h2>Dose-volume histogram</h2>", svg,
              "<h2>Dose statistics</h2>", _dose_stats_table(d, shown, grid),
              "</body></html>"]
    path = Path(path)
    atomic_write_text(path, "\n".join(p for p in parts if p))
    return path
