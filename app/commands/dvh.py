"""``openatp dvh PATIENT --dose DOSE``: DVH endpoints of every structure (docs/cli.md).

DOSE is a DOSE ``.npz`` on the patient's grid, an RTDOSE file, or an OpenKBP case ``.npz``
(its clinical dose, ``dose_cgy / 100``): ``openatp dvh pt_N.npz --dose pt_N.npz`` reports
the reference plan. Endpoint definitions: :mod:`core.evaluation.dvh` (OpenKBP / ICRU 83).
``--json`` prints ``{"structures": {NAME: {"volume_cc", "mean", "max", "min", "D0.03cc",
"D0.1cc", "D1", "D2", "D5", "D50", "D95", "D98", "D99"}}}`` and nothing else; doses in
Gy, undefined endpoints (empty structure) as null; warnings go to stderr.
"""

from __future__ import annotations

from app.commands.common import add_json, add_phantom_file, emit_json, progress_for, warn


def register(subparsers) -> None:
    p = subparsers.add_parser("dvh", help="DVH endpoints of every structure for a dose",
                              description="DVH endpoints (Gy) of every structure of PATIENT for DOSE.")
    p.add_argument("patient", metavar="PATIENT", help="DICOM folder, OpenKBP pt_N.npz, phantom:water or phantom:tg119")
    p.add_argument("--dose", required=True, metavar="DOSE",
                   help="DOSE .npz on the patient grid, an RTDOSE file, or an OpenKBP case .npz (its clinical dose)")
    add_json(p)
    add_phantom_file(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from core.evaluation.dvh import ENDPOINT_KEYS, dvh_endpoints
    from core.io.dosefile import load_dose
    from core.io.loader import load_patient

    patient = load_patient(args.patient, phantom_file=args.phantom_file, progress=progress_for(args))
    warnings = list(patient.warnings)
    dose = load_dose(args.dose, patient, warnings=warnings)
    result = {name: dvh_endpoints(dose.dose_gy, s.mask, patient.grid, warnings=warnings, name=name)
              for name, s in patient.structures.items()}
    for w in warnings:
        warn(w)
    if args.json:
        emit_json({"structures": result})
        return 0
    width = max([len(n) for n in result] + [9])
    cols = list(ENDPOINT_KEYS)
    print(f"DVH endpoints of {args.patient} for dose {args.dose} (Gy; volume in cc)")
    print(f"{'structure':<{width}}  " + "  ".join(f"{c:>8}" for c in cols))
    for name, ep in result.items():
        print(f"{name:<{width}}  " + "  ".join(f"{ep[c]:>8.2f}" for c in cols))
    return 0
