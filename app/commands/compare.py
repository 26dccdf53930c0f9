"""``openatp compare PLANS_A PLANS_B --patients DIR --out DIR``: cohort statistics (docs/cli.md).

A is the reference (e.g. manual plans), B the plans under test. ``--json`` prints
``{"n_patients", "endpoints": [{"structure", "metric", "mean_a", "mean_b", "mean_diff",
"rel_diff_pct", "rel_diff_ci95", "p", "p_bonferroni", "significant", ...}], "groups": [...],
"notes": [...], "outputs": {...}}``; statistics and sign conventions:
:mod:`core.evaluation.cohort`. DIR gets ``compare.json``, ``summary.csv``,
``patients.csv`` and ``report.html``.
"""

from __future__ import annotations

from app.commands.common import add_json, emit_json, progress_for, warn


def register(subparsers) -> None:
    p = subparsers.add_parser("compare", help="cohort statistics of two plan sets",
                              description="Paired comparison of two plan sets for the same patients: "
                                          "endpoint means, relative difference with 95 %% CI, paired t-test "
                                          "with Bonferroni correction, Wilcoxon check, dot plots, HTML report.")
    p.add_argument("plans_a", metavar="PLANS_A", help="reference plan set: folder of ID/ plan folders, ID.npz "
                   "DOSE files or ID.dcm RTDOSE files")
    p.add_argument("plans_b", metavar="PLANS_B", help="plan set under test (same layout)")
    p.add_argument("--patients", required=True, metavar="DIR",
                   help="folder of ID.npz OpenKBP cases or ID/ DICOM folders")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated endpoints (default D95,D2,D98,mean,max,CI,HI); also D1, D50, D99, "
                        "D0.1cc, min, V<x>Gy (e.g. V20Gy), V<x> (%% of prescription, targets, e.g. V95)")
    p.add_argument("--structures", default=None,
                   help="comma-separated structures (each must exist in every patient); default: every target "
                        "and organ at risk present in all patients")
    p.add_argument("--any-structure", action="store_true",
                   help="also analyse structures missing in some patients, each on the patients that have it "
                        "(default: only structures present in every patient, as docs/cli.md states)")
    p.add_argument("--groups", default=None, metavar="FILE",
                   help="CSV with patient_id plus grouping columns (site, institution, preference...), or JSON; "
                        "each group is analysed on its own (e.g. preference_groups.csv from 'review results')")
    p.add_argument("--eqd2", action="store_true", help="convert doses to EQD2 voxel by voxel before the endpoints")
    p.add_argument("--fractions-a", type=int, default=None, help="fractions of plan set A (default: prescription)")
    p.add_argument("--fractions-b", type=int, default=None, help="fractions of plan set B (default: prescription)")
    p.add_argument("--alpha-beta", default=None, metavar="NAME=GY,...",
                   help="alpha/beta per structure (default targets 10, cord/brainstem 2, other OARs 3 Gy)")
    p.add_argument("--name-a", default="A", help="label of set A in the report")
    p.add_argument("--name-b", default="B", help="label of set B in the report")
    add_json(p)
    p.set_defaults(func=run)


def _split(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def parse_alpha_beta(text) -> dict:
    from core.errors import InputError

    out = {}
    for item in _split(text):
        name, sep, val = item.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(val)
        except ValueError:
            raise InputError(f"--alpha-beta expects NAME=GY pairs, got '{item}'") from None
        if out[name.strip()] <= 0:
            raise InputError(f"--alpha-beta: alpha/beta must be positive, got '{item}'")
    return out


def run(args) -> int:
    from core.evaluation.cohort import (DEFAULT_METRICS, EndpointOptions, compare_plan_sets, parse_metric,
                                        read_groups)
    from core.evaluation.cohort_report import write_outputs

    metrics = tuple(parse_metric(m) for m in (_split(args.metrics) or DEFAULT_METRICS))
    options = EndpointOptions(metrics=metrics, structures=tuple(_split(args.structures)) or None,
                              eqd2=args.eqd2, fractions_a=args.fractions_a, fractions_b=args.fractions_b,
                              alpha_beta_gy=parse_alpha_beta(args.alpha_beta), allow_missing=args.any_structure)
    groups = read_groups(args.groups) if args.groups else None
    comparison = compare_plan_sets(args.plans_a, args.plans_b, args.patients, options, groups,
                                   progress=progress_for(args))
    outputs = write_outputs(args.out, comparison, args.name_a, args.name_b)
    doc = comparison.to_dict()
    doc["outputs"] = outputs
    for n in doc["notes"]:
        warn(n)
    if args.json:
        emit_json(doc)
        return 0
    ov = comparison.overall
    print(f"{ov.n_patients} patients, {ov.n_tests} endpoints (Bonferroni over {ov.n_tests}); "
          f"relative difference 100 (A-B)/A, positive = B better")
    width = max([len(f"{e.structure} {e.metric}") for e in ov.endpoints] + [10])
    print(f"{'endpoint':<{width}}  {'mean A':>9} {'mean B':>9} {'A-B':>8} {'rel %':>7} {'95% CI':>17} "
          f"{'p':>9} {'p_bonf':>9}")
    for e in ov.endpoints:
        ci = f"({e.rel_diff_ci95[0]:.1f}, {e.rel_diff_ci95[1]:.1f})"
        print(f"{e.structure + ' ' + e.metric:<{width}}  {e.mean_a:9.3f} {e.mean_b:9.3f} {e.mean_diff:8.3f} "
              f"{e.rel_diff_pct:7.2f} {ci:>17} {e.p:9.2e} {e.p_bonferroni:9.2e}{' *' if e.significant else ''}")
    print(f"report: {outputs['report.html']}")
    return 0
