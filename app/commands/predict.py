"""``openatp predict PATIENT --site SITE --out DOSE``: the deep-learning predicted dose.

Writes a DOSE ``.npz`` (``dose_gy`` float32 on the patient's grid, ``spacing_mm``,
``origin_mm``). ``--json`` prints ``{"timings_s": {...}, "device", "model", "warnings",
"unknown_structures"}``. Structures the site's model does not know are reported on
stderr (and in the JSON), never silently dropped.
"""

from __future__ import annotations

import time

from app.commands.common import add_device, add_json, add_phantom_file, emit_json, progress_for, warn


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="deep-learning dose prediction",
                              description="Predict the dose of PATIENT with the site's trained model.")
    p.add_argument("patient", metavar="PATIENT", help="DICOM folder, OpenKBP pt_N.npz, or phantom:...")
    p.add_argument("--site", required=True, help="treatment site, e.g. hn")
    p.add_argument("--out", required=True, metavar="DOSE", help="DOSE .npz to write")
    p.add_argument("--model", default=None, help="model.pt or its folder (default resources/models/SITE/)")
    tta = p.add_mutually_exclusive_group()
    tta.add_argument("--tta", dest="tta", action="store_true", default=None,
                     help="test-time augmentation: average with the left-right mirror "
                          "(default: as the model file says; the shipped model uses it)")
    tta.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation")
    add_device(p)
    add_json(p)
    add_phantom_file(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from core.device import device_name
    from core.io.dosefile import save_dose_npz
    from core.io.loader import load_patient
    from core.prediction.predict import DosePredictor
    from core.prediction.sites import get_site

    t0 = time.perf_counter()
    get_site(args.site)  # unknown site: one clear line before any loading
    predictor = DosePredictor(args.model, args.device, args.site)
    t1 = time.perf_counter()
    patient = load_patient(args.patient, phantom_file=args.phantom_file, progress=progress_for(args))
    t_load = time.perf_counter() - t1
    result = predictor.predict(patient, tta=args.tta, progress=progress_for(args))
    t2 = time.perf_counter()
    save_dose_npz(args.out, result.dose)
    timings = {"load_patient": t_load, **{k: v for k, v in result.timings_s.items() if k != "total"},
               "write": time.perf_counter() - t2}
    timings["total"] = time.perf_counter() - t0
    for w in result.warnings:
        warn(w)
    if args.json:
        emit_json({"timings_s": timings, "device": device_name(predictor.device), "model": result.model,
                   "warnings": result.warnings, "unknown_structures": result.unknown_structures})
    else:
        print(f"predicted dose written to {args.out} (max {float(result.dose.dose_gy.max()):.1f} Gy, "
              f"{timings['total']:.1f} s on {device_name(predictor.device)})")
    return 0
