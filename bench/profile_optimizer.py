"""Where the optimizer's time goes: cProfile of one cold optimization; prints text.

The run that found the GPU's bottleneck (per-goal autograd graphs, 9.4 ms of a 17 ms
evaluation on an H200) was this profile of pt_201 on CUDA. A warm-up optimization first
(CUDA context, kernels), then the profiled one with ``--maxiter`` iterations per level,
then the same unprofiled for its wall time.

    python bench/profile_optimizer.py [--case tg119|pt_201] [--device cuda] [--maxiter 60] [--rows 35]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("OPENATP_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(REPO))


def _problem(case: str):
    from core.dose.beams import load_template
    from core.goals.from_prediction import goals_from_prediction
    from core.goals.templates import goals_for_patient
    from core.io.loader import load_patient
    from core.io.openkbp import load_openkbp

    if case == "tg119":
        patient = load_patient("phantom:tg119", SHARED / "tg119" / "tg119.npz")
        goals, _ = goals_for_patient(patient, "tg119")
        return patient, goals, load_template("imrt9"), 3.0, "tg119"
    patient = load_openkbp(SHARED / "openkbp" / "validation" / f"{case}.npz")
    template, _ = goals_for_patient(patient, "hn")
    goals, _ = goals_from_prediction([replace(g, tolerance_pct=0.0) for g in template], patient,
                                     patient.doses["reference"])
    return patient, goals, load_template("imrt9"), None, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", default="pt_201", help="tg119 or an OpenKBP validation case id")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--maxiter", type=int, default=60, help="L-BFGS-B iterations per level")
    ap.add_argument("--rows", type=int, default=35, help="profile rows printed per ordering")
    args = ap.parse_args(argv)

    import torch

    from core.dose.influence import compute_influence
    from core.optimization import conformity
    from core.optimization.fluence import OptimizerOptions, optimize_plan
    from core.pipeline import SITE_OPTIMIZER_OPTIONS

    torch.set_num_threads(1)
    patient, goals, beams, grid_mm, site = _problem(args.case)
    t = time.perf_counter()
    dij = compute_influence(patient, beams, beamlet_mm=5.0, dose_grid_mm=grid_mm, device=args.device)
    print(f"{args.case} on {args.device}: dose-influence matrix {time.perf_counter() - t:.2f} s, "
          f"{dij.n_voxels} voxels x {dij.n_beamlets} beamlets", flush=True)
    base = SITE_OPTIMIZER_OPTIONS.get(site, {})
    small = OptimizerOptions(**{**base, "level_maxiter": 10, "final_maxiter": 10})
    optimize_plan(patient, goals, dij, device=args.device, options=small)   # warm-up
    opts = OptimizerOptions(**{**base, "level_maxiter": args.maxiter, "final_maxiter": args.maxiter})
    # a cold start computes its targets' distance maps; the warm-up left them cached
    conformity._DISTANCE_CACHE.clear()
    prof = cProfile.Profile()
    t = time.perf_counter()
    prof.enable()
    r = optimize_plan(patient, goals, dij, device=args.device, options=opts)
    prof.disable()
    print(f"profiled: {time.perf_counter() - t:.2f} s, {r.iterations} iterations", flush=True)
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(args.rows)
        print(s.getvalue(), flush=True)
    conformity._DISTANCE_CACHE.clear()
    t = time.perf_counter()
    r = optimize_plan(patient, goals, dij, device=args.device, options=opts)
    print(f"unprofiled: {time.perf_counter() - t:.2f} s, {r.iterations} iterations", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
