"""Benchmark of the dose-prediction model; prints one JSON document.

Measures, on the OpenKBP validation split (default: all 33 cases): the OpenKBP dose
score and DVH score (both target conventions, see ``core.prediction.evaluate``),
inference seconds per case on CPU and, when a GPU is present, on CUDA, and peak memory
(process RSS; CUDA peak allocation).

    .venv/bin/python bench/prediction.py [--model resources/models/hn] [--limit N] [--threads 2] [--tta | --no-tta]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(REPO / "resources" / "models" / "hn"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "openkbp" / "validation"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    flip = ap.add_mutually_exclusive_group()
    flip.add_argument("--tta", dest="tta", action="store_true", default=None,
                      help="test-time left-right flip (default: as the model file says)")
    flip.add_argument("--no-tta", dest="tta", action="store_false")
    args = ap.parse_args(argv)

    import torch

    from core.prediction.evaluate import evaluate_model

    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"model": args.model, "data": args.data, "torch_threads": torch.get_num_threads()}
    cpu = evaluate_model(args.model, args.data, "cpu", tta=args.tta, limit=args.limit)
    out["validation"] = {"predict": cpu["predict"], "prescription": cpu["prescription"]}
    out["cpu"] = {"seconds_per_case": cpu["seconds_per_case"], "peak_rss_mib": cpu["peak_rss_mib"]}
    if torch.cuda.is_available():
        gpu = evaluate_model(args.model, args.data, "cuda", tta=args.tta, limit=args.limit)
        out["cuda"] = {"seconds_per_case": gpu["seconds_per_case"], "peak_cuda_mib": gpu["peak_cuda_mib"],
                       "device": gpu["device"],
                       "max_abs_dose_score_diff_vs_cpu_gy": abs(gpu["predict"]["dose_score_gy"]
                                                                - cpu["predict"]["dose_score_gy"])}
    else:
        out["cuda"] = None
    out["per_case"] = cpu["per_case"]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
