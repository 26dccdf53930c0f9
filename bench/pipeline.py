"""Benchmark of the automated planning pipeline on OpenKBP cases; prints one JSON document.

For every case: ``plan_patient`` (predict, goals, dose matrix, optimize, sequence, final
dose) with the ``hn`` template, timed load to metrics, and the issue's criteria against the
case's clinical reference dose (same evaluation code for both):

* every P1 goal met; PTV70 D95 >= 95 % of 70 Gy; global max <= 110 % of 70 Gy;
* parotid and larynx mean doses against the clinical plan's (cohort means);
* cord and brainstem D0.03cc within their limits (45 / 54 Gy).

Each case's result is written to ``--out/CASE.json`` (its dose to ``--out/doses/CASE.npz``,
a DOSE file ``openatp review create`` and ``openatp compare`` read) as it finishes, and an existing one is
reused, so a long run can be stopped and resumed (``--fresh`` replans everything).

    .venv/bin/python bench/pipeline.py [--data ../shared/data/openkbp/validation]
        [--limit N] [--cases pt_201,pt_202] [--out out/bench_pipeline] [--threads 1] [--time-limit S] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OARS_MEAN = ("LeftParotid", "RightParotid", "Larynx")
OARS_MAX = {"SpinalCord": 45.0, "Brainstem": 54.0}


def _endpoints(patient, dose_gy: np.ndarray) -> dict:
    from core.evaluation.dvh import dose_at_volume_cc, dose_at_volume_pct

    out = {"max_gy": float(dose_gy.max())}
    cc = patient.grid.voxel_volume_cc
    for name, s in patient.structures.items():
        if s.is_empty:
            continue
        v = dose_gy[s.mask].astype(np.float64)
        if name in OARS_MEAN:
            out[f"{name}_mean"] = float(v.mean())
        if name in OARS_MAX:
            out[f"{name}_D0.03cc"] = float(dose_at_volume_cc(v, 0.03, cc))
        if name.startswith("PTV"):
            out[f"{name}_D95"] = float(dose_at_volume_pct(v, 95.0))
    return out


def plan_case(path: Path, dose_dir: Path | None = None, time_limit: float | None = None, device: str = "cpu") -> dict:
    from core.io.loader import load_patient
    from core.pipeline import PlanOptions, plan_patient

    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    patient = load_patient(str(path))
    load_s = time.perf_counter() - t0
    budget = {} if time_limit is None else {"time_budget_s": time_limit or None}
    result = plan_patient(patient, "hn", options=PlanOptions(predict=True, device=device, **budget), load_s=load_s)
    m = result.metrics
    if dose_dir is not None:  # the plan's dose, e.g. as the automated arm of a review study
        from core.io.dosefile import save_dose_npz

        save_dose_npz(Path(dose_dir) / f"{path.stem}.npz", result.final_dose)
    plan = _endpoints(patient, result.final_dose.dose_gy)
    ref = _endpoints(patient, patient.doses["reference"].dose_gy) if "reference" in patient.doses else {}
    return {"case": path.stem, "wall_s": round(time.perf_counter() - t0, 2), "timings_s": m["timings_s"],
            "all_p1_met": m["all_p1_met"], "unmet_p1": [g["structure"] + " " + g["type"] for g in m["goals"]
                                                         if g["priority"] == 1 and g.get("met") is False],
            "max_pct": m["max_dose_pct_of_prescription"], "plan": plan, "reference": ref,
            "normalization_factor": m["normalization_factor"], "total_mu": m["total_mu"],
            "n_segments": m["n_segments"], "iterations": m["optimizer"]["iterations"], "device": m["device"],
            "cuda_graphs": m["optimizer"].get("cuda_graphs"),
            # the process's peak so far (a later case's is at least an earlier one's)
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
            "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}


def summarize(rows: list) -> dict:
    from core.goals.goal import MET_SLACK_GY

    ok = [r for r in rows if "error" not in r]
    n = len(ok)
    summary = {"n_cases": len(rows), "n_planned": n, "errors": {r["case"]: r["error"] for r in rows if "error" in r}}
    if not n:
        return summary
    summary["all_p1_met"] = sum(r["all_p1_met"] for r in ok)
    d95 = [r["plan"].get("PTV70_D95") for r in ok if "PTV70_D95" in r["plan"]]
    summary["ptv70_d95_ge_95pct"] = sum(v >= 0.95 * 70.0 for v in d95)
    summary["ptv70_d95_ge_70"] = sum(v >= 70.0 - 1e-3 for v in d95)
    summary["ptv70_d95_gy"] = ({"mean": round(float(np.mean(d95)), 2), "min": round(float(np.min(d95)), 2)}
                               if d95 else None)
    summary["max_le_110pct"] = sum(r["max_pct"] <= 110.0 + 1e-6 for r in ok)
    summary["max_pct"] = {"mean": round(float(np.mean([r["max_pct"] for r in ok])), 2),
                          "max": round(float(np.max([r["max_pct"] for r in ok])), 2)}
    oar = {}
    for key in [f"{o}_mean" for o in OARS_MEAN] + [f"{o}_D0.03cc" for o in OARS_MAX]:
        pairs = [(r["plan"][key], r["reference"][key]) for r in ok if key in r["plan"] and key in r["reference"]]
        if pairs:
            a, b = np.array(pairs).T
            oar[key] = {"n": len(pairs), "plan_mean": round(float(a.mean()), 2),
                        "clinical_mean": round(float(b.mean()), 2),
                        "plan_le_clinical_cases": int((a <= b + 1e-6).sum())}
    for o, lim in OARS_MAX.items():
        key = f"{o}_D0.03cc"
        if key in oar:
            # met as the goal evaluation decides it (readable 0.01 Gy: MET_SLACK_GY)
            oar[key]["within_limit_cases"] = sum(r["plan"][key] <= lim + MET_SLACK_GY for r in ok if key in r["plan"])
    summary["oars"] = oar
    walls = [r["wall_s"] for r in ok]
    summary["wall_s"] = {"mean": round(float(np.mean(walls)), 1), "max": round(float(np.max(walls)), 1),
                         "under_120s": sum(w < 120.0 for w in walls)}
    stages = rows[0]["timings_s"].keys() if ok else []
    summary["stage_mean_s"] = {k: round(float(np.mean([r["timings_s"][k] for r in ok])), 2) for k in stages}
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "openkbp" / "validation"))
    ap.add_argument("--cases", default=None, help="comma-separated case ids (default: every case)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "out" / "bench_pipeline"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto (prediction, dose engine, optimizer)")
    ap.add_argument("--time-limit", type=float, default=None, metavar="S",
                    help="plan time budget as `openatp plan --time-limit` (default: the CLI's; 0: none)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    paths = sorted(Path(args.data).glob("*.npz"))
    if args.cases:
        want = set(args.cases.split(","))
        paths = [p for p in paths if p.stem in want]
    paths = paths[: args.limit] if args.limit else paths
    out = Path(args.out)
    (out / "doses").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in paths:
        f = out / f"{p.stem}.json"
        if f.exists() and not args.fresh:
            rows.append(json.loads(f.read_text()))
            continue
        try:
            row = plan_case(p, out / "doses", args.time_limit, args.device)
        except Exception as exc:  # noqa: BLE001 - one failing case is reported, the rest go on
            row = {"case": p.stem, "error": f"{type(exc).__name__}: {exc}"}
        f.write_text(json.dumps(row, indent=1))
        print(json.dumps({"case": p.stem, "wall_s": row.get("wall_s"), "all_p1_met": row.get("all_p1_met"),
                          "error": row.get("error")}), file=sys.stderr, flush=True)
        rows.append(row)
    from core.pipeline import PlanOptions

    limit = PlanOptions().time_budget_s if args.time_limit is None else (args.time_limit or None)
    doc = {"benchmark": "pipeline", "data": args.data, "threads": args.threads, "device": args.device,
           "time_limit_s": limit,
           "summary": summarize(rows),
           "cases": rows}
    (out / "summary.json").write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
