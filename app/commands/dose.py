"""``openatp dose PATIENT --beams SPEC --fluence open --out DOSE``: forward dose of open fields."""

from __future__ import annotations

import time


def register(subparsers) -> None:
    from app.commands.common import add_device, add_json, add_phantom_file

    p = subparsers.add_parser("dose", help="forward dose of open fields (no optimization)",
                              description="Compute the dose of open fields on the patient's CT grid.")
    p.add_argument("patient", help="patient folder, OpenKBP pt_N.npz, phantom:water or phantom:tg119")
    p.add_argument("--beams", required=True,
                   help="beam template (e.g. imrt9, vmat2) or inline 'gantry=0,field=100x100,ssd=1000;gantry=90,...'")
    p.add_argument("--fluence", default="open", help="'open' (each beam's field at its MU; default)")
    p.add_argument("--out", required=True, help="output DOSE file (.npz)")
    p.add_argument("--mu", type=float, default=None, help="MU of every open field (default 100 or the beam's mu=)")
    p.add_argument("--field", default=None,
                   help="field WxH mm for beams without one (default: target projection box + 5 mm, else 100x100)")
    p.add_argument("--dose-grid", type=float, default=None, help="calculation grid spacing in mm (default: CT grid)")
    p.add_argument("--machine", default="openatp6mv", help="treatment machine (resources/machines)")
    add_device(p)
    add_phantom_file(p)
    add_json(p)
    p.set_defaults(func=run)


def _default_fields(patient, beams, field_arg):
    """Give beams without a field size one: --field, else the targets' projection box."""
    from dataclasses import replace

    import numpy as np

    from core.dose.beams import BeamSet, _uv_xz_np
    from core.errors import InputError

    fixed = None
    if field_arg:
        try:
            w, h = (float(s) for s in field_arg.lower().split("x"))
        except ValueError:
            raise InputError(f"--field must be WIDTHxHEIGHT in mm, got '{field_arg}'") from None
        fixed = (w, h)
    targets = [s.mask for s in patient.targets if not s.is_empty]
    pts = patient.grid.index_to_patient(np.argwhere(np.logical_or.reduce(targets))) if targets else None
    out = []
    for b in beams:
        if b.field_mm is not None:
            out.append(b)
            continue
        if fixed is not None:
            f = fixed
        elif pts is not None:
            q = (pts - np.asarray(b.isocenter_mm)) @ b.rotation
            t = b.sad_mm + q[:, 1]
            u, v = _uv_xz_np(q[:, 0] * b.sad_mm / t, q[:, 2] * b.sad_mm / t, b.collimator_deg)
            # symmetric jaws about the isocentre covering the projection + 5 mm
            f = (2 * (np.abs(u).max() + 5.0), 2 * (np.abs(v).max() + 5.0))
        else:
            f = (100.0, 100.0)
        out.append(replace(b, field_mm=tuple(float(x) for x in f)))
    return BeamSet(tuple(out), beams.name, beams.meta)


def run(args) -> int:
    import numpy as np

    from app.commands.common import emit_json, progress_for, warn
    from core.device import device_name, resolve_device
    from core.dose.beams import parse_beams
    from core.dose.forward import forward_dose
    from core.dose.machine import get_machine
    from core.errors import InputError
    from core.io.atomic import atomic_save_npz

    timings = {}
    t0 = time.perf_counter()
    if args.fluence != "open":
        raise InputError(f"--fluence '{args.fluence}' is not supported here: use 'open' "
                         "(optimised fluence comes from 'openatp plan')")
    beams = parse_beams(args.beams)          # bad syntax fails before the patient is loaded
    device = resolve_device(args.device)
    machine = get_machine(args.machine)
    from core.io.loader import load_patient

    patient = load_patient(args.patient, phantom_file=args.phantom_file)
    timings["load"] = time.perf_counter() - t0
    n_warn = len(patient.warnings)
    t1 = time.perf_counter()
    beams = beams.resolve(patient, max_field_mm=machine.max_field_mm)
    beams = _default_fields(patient, beams, args.field)
    dose = forward_dose(patient, beams, "open", mu=args.mu, dose_grid_mm=args.dose_grid, device=str(device),
                        engine_options={"machine": machine}, progress=progress_for(args))
    timings["dose"] = time.perf_counter() - t1
    for w in patient.warnings[n_warn:]:
        warn(w)
    t2 = time.perf_counter()
    g = patient.grid
    try:
        from core.io.dosefile import save_dose_npz  # written by another helper, if present

        save_dose_npz(args.out, dose)
    except ImportError:
        atomic_save_npz(args.out, dose_gy=dose.dose_gy.astype(np.float32),
                        spacing_mm=np.asarray(g.spacing_mm, dtype=np.float64),
                        origin_mm=np.asarray(g.origin_mm, dtype=np.float64))
    timings["save"] = time.perf_counter() - t2
    timings["total"] = time.perf_counter() - t0
    if args.json:
        emit_json({"timings_s": timings, "device": device_name(device), "machine": machine.name,
                   "beams": [b.to_dict() for b in beams], "max_dose_gy": float(dose.dose_gy.max())})
    return 0
