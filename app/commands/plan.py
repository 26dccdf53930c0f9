"""``openatp plan PATIENT... --site SITE --out DIR``: the automated plan (docs/cli.md).

One patient writes DIR itself; several patients, or a folder of patients, write one
subfolder each plus ``summary.csv`` and ``summary.json``; a failing patient is reported
there and does not stop the rest.
"""

from __future__ import annotations

import time
from pathlib import Path


def register(subparsers) -> None:
    from app.commands.common import add_device, add_json, add_phantom_file

    p = subparsers.add_parser("plan", help="automated plan: predict, goals, optimize, sequence, export",
                              description="Plan one patient (or a batch) automatically and write dose.npz, RTPLAN.dcm, "
                                          "RTDOSE.dcm, metrics.json and report.html.")
    p.add_argument("patients", nargs="+", metavar="PATIENT",
                   help="patient folder, OpenKBP pt_N.npz, phantom:water|tg119, or a folder of patients")
    p.add_argument("--site", default=None, help="protocol template (hn, prostate, lung, breast, cervix, rectum, tg119)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--goals", default=None, help="GOALS.json to use instead of the site template's goals")
    p.add_argument("--no-predict", action="store_true", help="use goal values as given (no dose prediction)")
    p.add_argument("--beams", default=None, help="beam template or inline spec (default: the site's)")
    p.add_argument("--warm-start", default=None, metavar="DIR",
                   help="start from the plan in an earlier output folder (its matrix is reused when kept)")
    p.add_argument("--dose-grid", type=float, default=None, help="dose-matrix grid spacing in mm (default: auto)")
    p.add_argument("--keep-dij", action="store_true", help="store the dose-influence matrix for fast warm starts")
    p.add_argument("--model", default=None, help="prediction model folder (default: the shipped one)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S",
                   help="soft wall-time budget of a plan in s: later optimization levels get fewer "
                        "iterations when it runs short, never the first; costs some organ sparing on "
                        "the largest cases (default 100, a plan within 2 minutes on a 2-core PC; "
                        "0: no limit)")
    add_device(p)
    add_phantom_file(p)
    add_json(p)
    p.set_defaults(func=run)


def _expand_patients(specs) -> list:
    """A folder that holds OpenKBP cases or patient subfolders (and no DICOM of its own)
    is a batch; anything else is one patient."""
    out = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir() and not any(f.suffix.lower() == ".dcm" for f in p.iterdir() if f.is_file()):
            cases = sorted(f for f in p.iterdir() if (f.is_file() and f.suffix == ".npz") or f.is_dir())
            if cases:
                out.extend(str(c) for c in cases)
                continue
        out.append(spec)
    return out


def _patient_id(spec: str) -> str:
    if spec.startswith("phantom:"):
        return spec.split(":", 1)[1]
    p = Path(spec)
    return p.stem if p.suffix == ".npz" else p.name


def _options(args):
    from core.pipeline import PlanOptions

    from core.errors import InputError

    if args.time_limit is not None and not args.time_limit >= 0:
        raise InputError(f"--time-limit must be >= 0 s, got {args.time_limit}")
    budget = {} if args.time_limit is None else {"time_budget_s": args.time_limit or None}
    return PlanOptions(predict=not args.no_predict, beams=args.beams, device=args.device,
                       dose_grid_mm=args.dose_grid, model_path=args.model, **budget)


def plan_one(spec: str, out_dir: Path, args, progress=None) -> dict:
    """Load, plan and write one patient; returns its metrics."""
    from core.goals.goal import load_goals
    from core.io.loader import load_patient
    from core.pipeline import load_plan_state, plan_patient, write_plan_outputs

    t0 = time.perf_counter()
    patient = load_patient(spec, phantom_file=args.phantom_file)
    load_s = time.perf_counter() - t0
    goals = load_goals(args.goals) if args.goals else None
    warm = dij = beamlets = None
    opts = _options(args)
    if args.warm_start:
        from dataclasses import replace

        state = load_plan_state(args.warm_start, patient, device="cpu")
        warm, dij = state.weights_mu, state.dij
        beamlets = (state.beamlet_beam, state.beamlet_pos_mm)
        opts = replace(opts, beams=state.beams)
        if dij is not None and not dij.patient_grid.same_as(patient.grid):
            dij = None  # another patient or grid: recompute for the same beamlets
    result = plan_patient(patient, args.site, goals=goals, options=opts, warm_start=warm, dij=dij,
                          beamlets=beamlets, load_s=load_s, progress=progress)
    write_plan_outputs(result, out_dir, keep_dij=args.keep_dij)
    return result.metrics


def run(args) -> int:
    import json

    from app.commands.common import emit_json, progress_for, warn
    from core.errors import OpenATPError
    from core.io.atomic import atomic_write_text

    specs = _expand_patients(args.patients)
    out = Path(args.out)
    if len(specs) == 1:
        metrics = plan_one(specs[0], out, args, progress_for(args))
        for w in metrics.get("warnings", []):
            warn(w)
        if args.json:
            emit_json(metrics)
        else:
            _print_summary(specs[0], metrics, out)
        return 0

    rows = []
    for spec in specs:
        pid = _patient_id(spec)
        t0 = time.perf_counter()
        try:
            m = plan_one(spec, out / pid, args)
            rows.append({"patient": pid, "status": "ok", "all_p1_met": m["all_p1_met"],
                         "goals_met": sum(1 for g in m["goals"] if g.get("met")), "goals": len(m["goals"]),
                         "total_mu": m["total_mu"], "seconds": round(time.perf_counter() - t0, 1), "error": ""})
        except OpenATPError as exc:
            warn(f"{pid}: {exc}")
            rows.append({"patient": pid, "status": "failed", "all_p1_met": None, "goals_met": None, "goals": None,
                         "total_mu": None, "seconds": round(time.perf_counter() - t0, 1), "error": str(exc)})
    summary = {"n_patients": len(rows), "n_ok": sum(r["status"] == "ok" for r in rows), "patients": rows}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    cols = list(rows[0].keys())
    lines = [",".join(cols)] + [",".join("" if r[c] is None else str(r[c]).replace(",", ";") for c in cols)
                                for r in rows]
    atomic_write_text(out / "summary.csv", "\n".join(lines) + "\n")
    if args.json:
        emit_json(summary)
    else:
        print(f"{summary['n_ok']}/{len(rows)} patients planned; summary in {out / 'summary.csv'}")
    return 0 if summary["n_ok"] == len(rows) else 2


def _print_summary(spec, m, out) -> None:
    print(f"plan for {spec}: written to {out}")
    print(f"  all P1 goals met: {m['all_p1_met']}   total MU/fraction: {m['total_mu']:.0f}   "
          f"segments: {m['n_segments']}   max dose: {m['max_dose_gy']:.2f} Gy")
    for g in m["goals"]:
        mark = {True: "met", False: "NOT MET", None: "n/a"}[g.get("met")]
        print(f"  P{g['priority']} {g['structure']:<20} {g['type']:<22} target {g.get('dose_gy', g.get('volume_pct'))}"
              f"  achieved {g.get('achieved')}  {mark}")
    t = m["timings_s"]
    print("  timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    print(f"  report: {Path(out) / 'report.html'}")
