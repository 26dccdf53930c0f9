"""Side by side: the TG-119 3 mm dose-influence matrix by OpenATP and by pyRadPlan 0.5.0,
each in its own process on this machine, one thread each; prints one JSON document.

pyRadPlan lives in its own virtual environment (it pins its own numpy/pydantic)::

    python3 -m venv .gl/prp && .gl/prp/bin/pip install pyradplan==0.5.0 pydantic==2.12.5
    .venv/bin/python bench/dij_vs_pyradplan.py --pyradplan-python .gl/prp/bin/python

Both compute the matrix of the reference plan's set-up (``../shared/data/tg119/README.md``):
9 coplanar beams at gantry 0, 40, ..., 320 deg, 5 mm beamlets, 3 mm dose grid. Reported per
engine: wall time of the matrix (after its imports and the phantom load), peak resident
memory of its process, beamlets and non-zeros.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PYRADPLAN = r"""
import json, time
from pyRadPlan import load_tg119, PhotonPlan, generate_stf, calc_dose_influence
ct, cst = load_tg119()
pln = PhotonPlan(machine="Generic")
pln.prop_stf = {"gantry_angles": [0, 40, 80, 120, 160, 200, 240, 280, 320], "couch_angles": [0] * 9,
                "bixel_width": 5.0}
pln.prop_dose_calc = {"dose_grid": {"resolution": {"x": 3.0, "y": 3.0, "z": 3.0}}}
t = time.perf_counter()
stf = generate_stf(ct, cst, pln)
dij = calc_dose_influence(ct, cst, stf, pln)
dt = time.perf_counter() - t
m = dij.physical_dose.flat[0]
print(json.dumps({"dij_s": round(dt, 2), "beamlets": int(m.shape[1]), "nnz": int(m.nnz)}))
"""

OPENATP = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(1)
from core.io.loader import load_patient
from core.dose.beams import load_template
from core.dose.influence import compute_influence
p = load_patient("phantom:tg119", sys.argv[2])
t = time.perf_counter()
dij = compute_influence(p, load_template("imrt9"), beamlet_mm=5.0, dose_grid_mm=3.0, device="cpu")
dt = time.perf_counter() - t
print(json.dumps({"dij_s": round(dt, 2), "beamlets": int(dij.n_beamlets), "nnz": int(dij.matrix.values().numel())}))
"""


def _run(python: str, code: str, *args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    row = json.loads(out.stdout.strip().splitlines()[-1])
    # ru_maxrss of children is the largest child so far: run the larger one (pyRadPlan) last
    row["peak_rss_gib"] = round(max(peak_kib, before) / 2**20, 2)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pyradplan-python", required=True, help="python of a venv with pyradplan 0.5.0")
    ap.add_argument("--phantom", default=str(REPO.parent / "shared" / "data" / "tg119" / "tg119.npz"))
    args = ap.parse_args(argv)
    ours = _run(sys.executable, OPENATP, str(REPO), args.phantom)
    theirs = _run(args.pyradplan_python, PYRADPLAN)
    doc = {"benchmark": "TG-119 dose-influence matrix, 3 mm grid, 9 beams, 5 mm beamlets, 1 thread",
           "loadavg_1min": round(os.getloadavg()[0], 2), "openatp": ours, "pyradplan_0_5_0": theirs,
           "speedup": round(theirs["dij_s"] / ours["dij_s"], 2),
           "memory_ratio": round(ours["peak_rss_gib"] / theirs["peak_rss_gib"], 2),
           "targets": {"speedup_ge": 5.0, "memory_ratio_le": 0.5}}
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
