"""Benchmark of the photon dose engine on TG-119 (prints one JSON document on stdout).

For each dose grid (3 mm, 5 mm) and device (cpu, and cuda when present), in a fresh
process each (so peak memory is that run's own): the dose-influence matrix for the 9 beams
and 2851 bixels of ``../shared/data/tg119/pyradplan_reference.npz`` (seconds, non-zeros,
peak resident memory from /proc/self/status VmHWM) and the forward dose of the reference
fluence (seconds), with the gamma 3 %/3 mm pass rate of D @ w and of the forward dose
against pyRadPlan's dose after one global scale factor.

Usage: python bench/dose_engine.py [--grids 3 5] [--devices cpu cuda] [--threads N (default 1)]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TG119 = REPO.parent / "shared" / "data" / "tg119"


def _vmhwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def worker(grid_mm: float, device: str, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(REPO))
    from core.dose.forward import forward_dose
    from core.dose.influence import compute_influence
    from core.evaluation.gamma import gamma_index
    from core.geometry import resample_to_grid
    from tests.core.dose.tg119 import load_tg119

    patient, ref = load_tg119(TG119)
    opts = {"hlut": ref["hlut"]}
    beamlets = (ref["beam_of"], ref["pos_mm"])
    base_mib = _vmhwm_mib()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    # warm-up of kernel tables and torch on a tiny problem is *not* done: the timing below
    # is what a planner waits for, first call included.
    sync()
    t0 = time.perf_counter()
    dij = compute_influence(patient, ref["beams"], 5.0, dose_grid_mm=grid_mm, beamlets=beamlets, device=device,
                            engine_options=opts)
    sync()
    t_dij = time.perf_counter() - t0
    peak_dij = _vmhwm_mib()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None

    t0 = time.perf_counter()
    d_mat = dij.dose_on_grid(ref["weights"])
    t_mv = time.perf_counter() - t0

    t0 = time.perf_counter()
    fwd = forward_dose(patient, ref["beams"], ref["weights"], beamlets=(ref["beam_of"], ref["pos_mm"], 5.0),
                       dose_grid_mm=grid_mm, device=device, engine_options=opts).dose_gy
    sync()
    t_fwd = time.perf_counter() - t0

    r = ref["dose_gy"]
    sel = r > 0.1 * r.max()

    def gamma(d_ct):
        s = float(np.sum(r[sel] * d_ct[sel]) / np.sum(d_ct[sel] ** 2))
        return s, gamma_index(r, d_ct * s, patient.grid.spacing_mm, 3.0, 3.0, 10.0).pass_rate

    d_mat_ct = resample_to_grid(d_mat, dij.grid, patient.grid, order=1) * patient.external_mask()
    s_mat, g_mat = gamma(d_mat_ct)
    s_fwd, g_fwd = gamma(fwd)
    return {"grid_mm": grid_mm, "device": device, "threads": threads,
            "dij": {"seconds": round(t_dij, 2), "nnz": int(dij.meta["nnz"]),
                    "shape": list(dij.matrix.shape),
                    "timings_s": {k: round(v, 2) for k, v in dij.meta["timings_s"].items()},
                    "peak_rss_mib": round(peak_dij, 1), "rss_before_mib": round(base_mib, 1),
                    "gpu_peak_alloc_mib": None if gpu_peak is None else round(gpu_peak, 1),
                    "matvec_seconds": round(t_mv, 3),
                    "gamma_3_3_vs_pyradplan": round(g_mat, 4), "scale_to_pyradplan": round(s_mat, 3)},
            "forward": {"seconds": round(t_fwd, 2), "gamma_3_3_vs_pyradplan": round(g_fwd, 4),
                        "scale_to_pyradplan": round(s_fwd, 3)},
            "peak_rss_mib_total": round(_vmhwm_mib(), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=float, nargs="+", default=[3.0, 5.0])
    ap.add_argument("--devices", nargs="+", default=None)
    # One torch thread by default: on a shared 2-core machine two-thread ops stall on each
    # other (see tests/core/dose/conftest.py); pass --threads 2 on an idle machine.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.grids[0], a.devices[0], a.threads)))
        return 0
    import torch

    devices = a.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    runs = []
    for dev in devices:
        for g in a.grids:
            p = subprocess.run([sys.executable, __file__, "--worker", "--grids", str(g), "--devices", dev,
                                "--threads", str(a.threads)], capture_output=True, text=True)
            if p.returncode != 0:
                runs.append({"grid_mm": g, "device": dev, "error": p.stderr.strip().splitlines()[-1:]})
            else:
                runs.append(json.loads(p.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()
    print(json.dumps({
        "benchmark": "dose_engine", "case": "TG-119, 9 beams, 2851 bixels of 5 mm (pyRadPlan 0.5.0 reference plan)",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average_1_5_15": [round(x, 2) for x in load]},
        "pyradplan_0_5_0_same_machine": {"3mm": {"dij_seconds": "51-66", "peak_gib": 4.1, "nnz": 173048790},
                                         "5mm": {"dij_seconds": 15, "peak_gib": 1.4}},
        "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
