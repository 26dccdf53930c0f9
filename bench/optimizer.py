"""Benchmark of the goal-based fluence optimizer; prints one JSON document.

Cases
-----
``tg119``    AAPM TG-119 C-shape, pyRadPlan's 9 beams (gantry 0, 40, ..., 320), 5 mm
             beamlets, 3 mm dose grid as pyRadPlan's reference plan; goals from the
             ``tg119`` template (target D95 >= 50 Gy, D10 <= 55 Gy, core D10 <= 25 Gy).
             Compared with pyRadPlan 0.5.0's plan (``../shared/data/tg119``): core D10
             and van't Riet CI (95 % of 50 Gy), also after scaling our dose to the
             reference plan's target D95 ("at the same target coverage").
``openkbp``  one OpenKBP validation case with the ``hn`` template, goal values from the
             case's reference dose (tolerance 0), same 9 beams.

For each: dose-influence time, cold optimization time, warm optimization time after
tightening one goal by 10 %, iterations, goals met.

    .venv/bin/python bench/optimizer.py [--case tg119|openkbp|all] [--device cpu]
        [--threads 2] [--openkbp-case pt_201] [--dose-grid-mm 3] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# the shared data folder; a device run reads a copy ($OPENATP_SHARED_DATA, bench/gpu_session.sh)
SHARED = Path(os.environ.get("OPENATP_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO))


def _goal_rows(result):
    return [{"goal": r.goal.label, "achieved": None if r.achieved is None else round(r.achieved, 3), "met": r.met}
            for r in result.goal_results]


def _influence(args, name, patient, beams, dose_grid_mm):
    """compute_influence, or a copy cached in ``--cache`` (the engine's time is reported as measured then)."""
    import ast

    import torch

    from core.dose.influence import DoseInfluence, compute_influence
    from core.geometry import Grid

    path = Path(args.cache) / f"dij_{name}.npz" if args.cache else None
    if path is not None and path.exists():
        z = np.load(path)
        m = torch.sparse_csr_tensor(torch.from_numpy(z["crow"]), torch.from_numpy(z["col"]),
                                    torch.from_numpy(z["val"]), size=tuple(z["shape"]))
        return DoseInfluence(matrix=m, voxel_index=z["voxel_index"],
                             grid=Grid.from_dict(ast.literal_eval(str(z["grid"]))),
                             beamlet_beam=z["beamlet_beam"], beamlet_pos_mm=z["beamlet_pos_mm"],
                             beamlet_size_mm=tuple(z["beamlet_size_mm"])), float(z["time_s"])
    t = time.perf_counter()
    dij = compute_influence(patient, beams, beamlet_mm=5.0, dose_grid_mm=dose_grid_mm, device=args.device)
    t_dij = time.perf_counter() - t
    if path is not None:
        m = dij.matrix.cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, crow=m.crow_indices().numpy(), col=m.col_indices().numpy(), val=m.values().numpy(),
                 shape=np.array(m.shape), voxel_index=dij.voxel_index, grid=np.array(str(dij.grid.to_dict())),
                 beamlet_beam=dij.beamlet_beam, beamlet_pos_mm=dij.beamlet_pos_mm,
                 beamlet_size_mm=np.array(dij.beamlet_size_mm), time_s=np.array(t_dij))
    return dij, t_dij


def _tighten(goal, pct=10.0):
    return goal.with_value(goal.value * (1 + pct / 100 if goal.kind.is_lower_bound else 1 - pct / 100))


def _plan(patient, goals, dij, device, warm_goal_index, site=None, cuda_graphs=None):
    from core.optimization.fluence import OptimizerOptions, optimize_plan
    from core.pipeline import SITE_OPTIMIZER_OPTIONS

    # the options the pipeline (openatp plan) uses for this site
    opts = OptimizerOptions(**{**SITE_OPTIMIZER_OPTIONS.get(site, {}), "cuda_graphs": cuda_graphs})
    t = time.perf_counter()
    cold = optimize_plan(patient, goals, dij, device=device, options=opts)
    t_cold = time.perf_counter() - t
    goals2 = list(goals)
    goals2[warm_goal_index] = _tighten(goals[warm_goal_index])
    t = time.perf_counter()
    warm = optimize_plan(patient, goals2, dij, device=device, warm_start=cold, options=opts)
    t_warm = time.perf_counter() - t
    return cold, warm, goals2, t_cold, t_warm


def bench_tg119(args) -> dict:
    from core.dose.beams import load_template as load_beams
    from core.evaluation.dvh import dose_at_volume_pct, structure_doses
    from core.evaluation.indices import conformity_paddick
    from core.goals.templates import goals_for_patient
    from core.io.loader import load_patient

    patient = load_patient("phantom:tg119", SHARED / "tg119" / "tg119.npz")
    goals, warn = goals_for_patient(patient, "tg119")
    beams = load_beams("imrt9")
    dij, t_dij = _influence(args, "tg119", patient, beams, args.dose_grid_mm)
    core_goal = [i for i, g in enumerate(goals) if g.structure == "Core"][0]
    cold, warm, goals2, t_cold, t_warm = _plan(patient, goals, dij, args.device, core_goal, site="tg119",
                                                  cuda_graphs=args.cuda_graphs)

    ref = np.load(SHARED / "tg119" / "pyradplan_reference.npz")
    ref_dose = ref["dose_pyradplan_gy"]
    tgt = patient.structures["OuterTarget"].mask
    core = patient.structures["Core"].mask
    body = patient.external_mask()

    def quality(dose):
        t_v, c_v = structure_doses(dose, tgt), structure_doses(dose, core)
        return {"target_D95": round(dose_at_volume_pct(t_v, 95), 3),
                "target_D10": round(dose_at_volume_pct(t_v, 10), 3),
                "target_D5": round(dose_at_volume_pct(t_v, 5), 3), "target_max": round(float(t_v.max()), 3),
                "core_D10": round(dose_at_volume_pct(c_v, 10), 3), "core_mean": round(float(c_v.mean()), 3),
                "CI_vantRiet_95pct": round(conformity_paddick(dose, tgt, 0.95 * 50.0, body), 4),
                "body_mean": round(float(dose[body].mean()), 3), "max": round(float(dose.max()), 3)}

    q_ref = quality(ref_dose)
    scale = q_ref["target_D95"] / quality(cold.dose_gy)["target_D95"]
    return {
        "case": "tg119", "n_beamlets": dij.n_beamlets, "n_voxels": dij.n_voxels,
        "nnz": int(dij.matrix.values().numel()), "dose_grid_mm": list(dij.grid.spacing_mm),
        "timings_s": {"dose_influence": round(t_dij, 2), "cold": round(t_cold, 2), "warm": round(t_warm, 2)},
        "iterations": {"cold": cold.iterations, "warm": warm.iterations},
        "cuda_graphs": {"cold": cold.cuda_graphs, "warm": warm.cuda_graphs},
        "cold": {"goals": _goal_rows(cold), "all_met": all(r.met for r in cold.goal_results),
                 "levels": cold.levels, "quality": quality(cold.dose_gy)},
        "warm": {"edit": f"{goals[core_goal].label} -> {goals2[core_goal].label}", "goals": _goal_rows(warm),
                 "all_met": all(r.met for r in warm.goal_results), "levels": warm.levels,
                 "quality": quality(warm.dose_gy)},
        "ours_scaled_to_reference_D95": {"scale": round(scale, 4), **quality(cold.dose_gy * scale)},
        "pyradplan_reference": q_ref,
        "targets": {"cold_le_s": 13.6, "warm_le_cold_over_3": round(t_cold / 3, 2)},
        "warnings": warn + cold.warnings,
    }


def bench_openkbp(args) -> dict:
    from core.dose.beams import load_template as load_beams
    from core.goals.evaluate import evaluate_goals
    from core.goals.from_prediction import goals_from_prediction
    from core.goals.templates import goals_for_patient
    from core.io.openkbp import load_openkbp

    patient = load_openkbp(SHARED / "openkbp" / "validation" / f"{args.openkbp_case}.npz")
    template_goals, warn = goals_for_patient(patient, "hn")
    template_goals = [replace(g, tolerance_pct=0.0) for g in template_goals]
    ref = patient.doses["reference"]
    goals, w2 = goals_from_prediction(template_goals, patient, ref)
    beams = load_beams("imrt9")
    dij, t_dij = _influence(args, args.openkbp_case, patient, beams, None)
    parotid = [i for i, g in enumerate(goals) if "Parotid" in g.structure and g.priority > 1]
    cold, warm, goals2, t_cold, t_warm = _plan(patient, goals, dij, args.device, parotid[0] if parotid else -1,
                                                  cuda_graphs=args.cuda_graphs)
    masks = {n: s.mask for n, s in patient.structures.items()}
    ref_eval = evaluate_goals(goals, ref.dose_gy, masks, patient.grid.voxel_volume_cc)
    ptv70 = patient.structures["PTV70"].mask
    from core.evaluation.dvh import dose_at_volume_pct

    def checks(res):
        by = {r.goal.label: r for r in res.goal_results}
        oar = [(r.goal.label, r.achieved, rr.achieved) for r, rr in zip(res.goal_results, ref_eval)
               if r.goal.priority > 1 and ("Parotid" in r.goal.structure or "Cord" in r.goal.structure)]
        return {"all_p1_met": res.all_p1_met,
                "ptv70_D95": round(dose_at_volume_pct(res.dose_gy[ptv70], 95), 3),
                "ptv70_D95_ge_95pct": dose_at_volume_pct(res.dose_gy[ptv70], 95) >= 0.95 * 70.0,
                "max_gy": round(res.max_dose_gy, 3), "max_le_107pct": res.max_dose_gy <= 1.07 * 70.0,
                "parotid_cord_vs_reference": [{"goal": a, "ours": round(b, 3), "reference": round(c, 3),
                                               "at_or_below": b <= c + 0.005} for a, b, c in oar],
                "goals_met": sum(1 for r in by.values() if r.met), "n_goals": len(by)}

    return {
        "case": f"openkbp/{args.openkbp_case}", "n_beamlets": dij.n_beamlets, "n_voxels": dij.n_voxels,
        "nnz": int(dij.matrix.values().numel()),
        "timings_s": {"dose_influence": round(t_dij, 2), "cold": round(t_cold, 2), "warm": round(t_warm, 2)},
        "iterations": {"cold": cold.iterations, "warm": warm.iterations},
        "cuda_graphs": {"cold": cold.cuda_graphs, "warm": warm.cuda_graphs},
        "cold": {"goals": _goal_rows(cold), "levels": cold.levels, "checks": checks(cold)},
        "warm": {"edit": (f"{goals[parotid[0]].label} -> {goals2[parotid[0]].label}" if parotid else None),
                 "goals": _goal_rows(warm), "levels": warm.levels, "checks": checks(warm)},
        "reference_plan_goals": [{"goal": r.goal.label, "achieved": round(r.achieved, 3)} for r in ref_eval],
        "warnings": warn + w2 + cold.warnings, "conflicts": cold.conflicts,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="all", choices=["tg119", "openkbp", "all"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--openkbp-case", default="pt_201")
    p.add_argument("--dose-grid-mm", type=float, default=3.0)
    p.add_argument("--cache", default=None, help="folder to keep dose-influence matrices between runs")
    p.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"],
                   help="replay the optimizer's evaluations as CUDA graphs (auto: on CUDA)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    out = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
           "cuda_graphs": args.cuda_graphs, "cases": []}
    args.cuda_graphs = {"auto": None, "on": True, "off": False}[args.cuda_graphs]
    try:
        from core.dose.influence import compute_influence  # noqa: F401
    except ImportError as exc:
        print(json.dumps({"error": f"the dose engine is not available yet: {exc}"}))
        return 1
    for case, fn in (("tg119", bench_tg119), ("openkbp", bench_openkbp)):
        if args.case in (case, "all"):
            try:
                out["cases"].append(fn(args))
            except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not crash
                out["cases"].append({"case": case, "error": f"{type(exc).__name__}: {exc}"})
    print(json.dumps(out, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
