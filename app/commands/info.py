"""``openatp info PATIENT``: grid, structures and prescriptions of a patient (docs/cli.md).

``--json`` prints ``{"grid": {"shape", "spacing_mm", "origin_mm", "axes"}, "structures":
[{"name", "role", "volume_cc"}], "prescription": [{"structure", "dose_gy",
"fractions"}], "patient_id", "images", "doses", "empty_structures", "warnings"}``; without it, a table.
Warnings also go to stderr.
"""

from __future__ import annotations

from app.commands.common import add_json, add_phantom_file, emit_json, progress_for, warn


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="what is in a patient: grid, structures, prescription",
                              description="Show a patient's grid, structures (with volumes) and prescriptions.")
    p.add_argument("patient", metavar="PATIENT", help="DICOM folder, OpenKBP pt_N.npz, phantom:water or phantom:tg119")
    add_json(p)
    add_phantom_file(p)
    p.set_defaults(func=run)


def patient_info(patient) -> dict:
    """The ``info`` document of a loaded patient."""
    g = patient.grid
    # exactly the contract's keys per structure; extras live at the top level
    structures = [{"name": s.name, "role": s.role.value, "volume_cc": s.volume_cc(g)}
                  for s in patient.structures.values()]
    return {
        "patient_id": patient.patient_id,
        "grid": {"shape": list(g.shape), "spacing_mm": list(g.spacing_mm), "origin_mm": list(g.origin_mm),
                 "axes": list(g.axes)},
        "structures": structures,
        "prescription": [{"structure": p.structure, "dose_gy": p.dose_gy, "fractions": p.fractions}
                         for p in patient.prescriptions],
        "images": patient.ct is not None,
        "doses": sorted(patient.doses),
        "empty_structures": [s.name for s in patient.structures.values() if s.is_empty],
        "warnings": list(patient.warnings),
    }


def run(args) -> int:
    from core.io.loader import load_patient

    patient = load_patient(args.patient, phantom_file=args.phantom_file, progress=progress_for(args))
    doc = patient_info(patient)
    for w in doc["warnings"]:
        warn(w)
    if args.json:
        emit_json(doc)
        return 0
    g = doc["grid"]
    print(f"patient   {doc['patient_id']}   ({args.patient})")
    print(f"grid      {' x '.join(map(str, g['shape']))} voxels, spacing "
          f"{', '.join(f'{s:g}' for s in g['spacing_mm'])} mm, origin "
          f"{', '.join(f'{o:g}' for o in g['origin_mm'])} mm, axes {' '.join(g['axes'])}")
    print(f"images    {'CT' if doc['images'] else 'none (dose review)'};  doses: {', '.join(doc['doses']) or 'none'}")
    print()
    width = max([len(s["name"]) for s in doc["structures"]] + [9])
    print(f"{'structure':<{width}}  {'role':<8}  {'volume cc':>10}")
    for s in doc["structures"]:
        print(f"{s['name']:<{width}}  {s['role']:<8}  {s['volume_cc']:>10.2f}")
    print()
    if doc["prescription"]:
        for p in doc["prescription"]:
            print(f"prescription  {p['structure']}: {p['dose_gy']:g} Gy in {p['fractions']} fractions "
                  f"({p['dose_gy'] / p['fractions']:.2f} Gy/fx)")
    else:
        print("prescription  none")
    return 0
