"""``openatp refine PLAN_DIR --patient PATIENT --out DIR``: refine an automated plan warm.

Reads the folder written by ``openatp plan`` (its ``plan_state.npz``: fluence, beams,
goals, and the dose-influence matrix when planned with ``--keep-dij``; without it the
matrix is recomputed for the same beamlets), optionally adds a hot patch (voxels above
``--patch-hot`` % of the prescription outside the targets on the plan's dose) with a
near-max goal, refines in warm-started rounds (:mod:`core.optimization.refine`; with a
patch only the patch goal is pushed and every other goal held, unless ``--all-goals``) and
writes the same outputs as ``openatp plan`` plus ``refine_log.json``, ``helper_rules.json``
(when a patch was made) and ``history/`` (the plan and the refined plan as versions).
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def register(subparsers) -> None:
    from app.commands.common import add_device, add_json, add_phantom_file

    p = subparsers.add_parser("refine", help="refine a plan: patch goals, goal adjustments, warm re-optimization",
                              description="Refine the plan in PLAN_DIR (an 'openatp plan' output folder) in rounds of "
                                          "goal adjustments and warm re-optimization; optionally add a hot patch "
                                          "with a max-dose goal first. Writes the plan outputs plus refine_log.json.")
    p.add_argument("plan_dir", metavar="PLAN_DIR", help="output folder of 'openatp plan'")
    p.add_argument("--patient", required=True, metavar="PATIENT",
                   help="the patient the plan was made for (as given to 'openatp plan')")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--goals", default=None, help="GOALS.json to refine against instead of the plan's goals")
    p.add_argument("--patch-hot", type=float, default=None, metavar="PCT",
                   help="add a hot patch: voxels at >= PCT %% of the prescription outside the targets")
    p.add_argument("--patch-goal", type=float, default=None, metavar="PCT",
                   help="the patch's near-max (0.03 cc) goal in %% of the prescription (default: PCT of --patch-hot)")
    p.add_argument("--patch-margin", type=float, default=10.0, metavar="MM",
                   help="the patch stays this far outside the targets (default 10 mm: the fall-off next to a "
                        "target is not a hot spot)")
    p.add_argument("--patch-min-cc", type=float, default=0.1, metavar="CC",
                   help="drop patch parts smaller than this (default 0.1 cc)")
    p.add_argument("--patch-region", default=None, metavar="STRUCTURE", help="only inside this structure")
    p.add_argument("--patch-priority", type=int, default=2, metavar="P", help="priority of the patch goal (default 2)")
    p.add_argument("--all-goals", action="store_true",
                   help="with a patch, refine every goal too (default: only the patch goal moves, the rest is held)")
    p.add_argument("--rounds", type=int, default=4, metavar="N", help="at most N refinement rounds (default 4)")
    p.add_argument("--keep-dij", action="store_true", help="store the dose-influence matrix in the output")
    add_device(p)
    add_phantom_file(p)
    add_json(p)
    p.set_defaults(func=run)


def _read_metrics(plan_dir: Path) -> dict:
    from core.errors import InputError

    path = plan_dir / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no metrics.json: not an 'openatp plan' output folder", plan_dir) from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"metrics.json cannot be read ({exc})", plan_dir) from None


def _dij_for(state, patient, device, progress):
    """The plan's matrix, or a new one for exactly its beamlets."""
    from core.dose.influence import compute_influence
    from core.errors import InputError

    dij = state.dij
    if dij is not None and dij.patient_grid is not None and dij.patient_grid.same_as(patient.grid):
        return dij, False
    grid_mm = None if state.dose_grid.same_as(patient.grid) else tuple(state.dose_grid.spacing_mm)
    dij = compute_influence(patient, state.beams, beamlet_mm=state.beamlet_size_mm, dose_grid_mm=grid_mm,
                            device=device, beamlets=(state.beamlet_beam, state.beamlet_pos_mm), progress=progress)
    if not dij.grid.same_as(state.dose_grid) or dij.n_beamlets != state.weights_mu.size:
        raise InputError("the plan's dose matrix cannot be rebuilt for this patient (another patient or grid?)")
    return dij, True


def _add_template_structures(patient, site, goals) -> list[str]:
    """The template's rings and helpers the goals name (the plan made them on its copy)."""
    from core.goals.templates import add_ring_structures, add_template_helpers, load_template

    notes = []
    if site is None:
        return notes
    t = load_template(site)
    add_ring_structures(patient, t)
    if any(g.structure not in patient.structures for g in goals) and t.helpers:
        notes += list(add_template_helpers(patient, t).notes)
    return notes


def run(args) -> int:
    from app.commands.common import emit_json, progress_for, warn
    from core import helper_structures as hs
    from core.device import resolve_device
    from core.errors import InputError
    from core.goals.goal import ClinicalGoal, GoalKind, load_goals
    from core.io.atomic import atomic_directory, atomic_write_text
    from core.io.dosefile import load_dose
    from core.io.loader import load_patient
    from core.jsonsafe import dumps
    from core.optimization.fluence import OptimizerOptions
    from core.optimization.refine import RefineOptions, refine_plan, refined_plan_result
    from core.pipeline import SITE_OPTIMIZER_OPTIONS, load_plan_state, write_plan_outputs
    from core.plan_history import PlanHistory

    plan_dir = Path(args.plan_dir)
    if not plan_dir.is_dir():
        raise InputError("plan folder not found", plan_dir)
    if args.rounds < 0:
        raise InputError(f"--rounds must be >= 0, got {args.rounds}")
    plan_metrics = _read_metrics(plan_dir)        # before loading anything heavy
    if not (plan_dir / "plan_state.npz").is_file():
        raise InputError("no plan_state.npz: not an 'openatp plan' output folder", plan_dir)
    progress = progress_for(args)
    t0 = time.perf_counter()
    patient = load_patient(args.patient, phantom_file=args.phantom_file)
    load_s = time.perf_counter() - t0
    site = plan_metrics.get("site")
    device = resolve_device(args.device)
    state = load_plan_state(plan_dir, patient, device=str(device))
    goals = load_goals(args.goals) if args.goals else list(state.goals)
    notes = _add_template_structures(patient, site, goals)
    missing = sorted({g.structure for g in goals} - set(patient.structures))
    if missing:
        raise InputError(f"the goals name structures this patient does not have: {', '.join(missing)} "
                         "(is --patient the plan's patient?)", args.goals or plan_dir)
    t = time.perf_counter()
    dij, recomputed = _dij_for(state, patient, str(device), progress)
    dij_s = time.perf_counter() - t

    patch_info = None
    rules = []
    if args.patch_hot is not None:
        plan_dose = load_dose(plan_dir / "dose.npz", patient)
        name = "Patch_hot"
        k = 1
        while name in patient.structures:
            k += 1
            name = f"Patch_hot_{k}"
        rule = hs.HotPatchRule(name, args.patch_hot, target_margin_mm=args.patch_margin,
                               min_volume_cc=args.patch_min_cc, region=args.patch_region)
        patch = hs.make_helper(patient, rule, plan_dose)
        rules.append(rule)
        rx = rule.threshold_gy(patient) / (args.patch_hot / 100.0)
        goal_pct = args.patch_hot if args.patch_goal is None else args.patch_goal
        goal = ClinicalGoal(args.patch_priority, name, GoalKind.MAX_DOSE_AT_VOLUME,
                            dose_gy=round(goal_pct / 100 * rx, 3), volume_cc=0.03, control=True,
                            note=f"hot patch: >= {args.patch_hot:g} % outside the targets (+{args.patch_margin:g} mm)")
        conflicts = hs.patch_conflicts(patient, name, goal, goals)
        for c in conflicts:
            warn(c)
        goals = goals + [goal]
        patch_info = {"name": name, "rule": rule.to_dict(), "goal": goal.to_dict(), "conflicts": conflicts,
                      "volume_cc": round(patch.volume_cc(patient.grid), 3), "n_voxels": patch.n_voxels(),
                      "max_before_gy": round(float(plan_dose.dose_gy[patch.mask].max()), 3)}

    site_opts = SITE_OPTIMIZER_OPTIONS.get(site or "")
    opt_opts = OptimizerOptions(**site_opts) if site_opts else None
    focus = {patch_info["name"]} if patch_info is not None and not args.all_goals else None
    refined = refine_plan(patient, goals, dij, state.weights_mu, options=RefineOptions(max_rounds=args.rounds),
                          optimizer_options=opt_opts, focus=focus, device=device,
                          progress=progress.stage(0.0, 0.9, "refine") if progress else None)
    result = refined_plan_result(patient, site, goals, dij, refined, optimizer_options=opt_opts, load_s=load_s,
                                 timings_s={"dose_matrix": dij_s, "optimize": refined.timings_s["optimize"]},
                                 progress=progress.stage(0.9, 1.0, "sequence") if progress else None)
    log = refined.to_log()
    round_s = [r["timings_s"]["optimize"] for r in refined.rounds]
    cold_s = (plan_metrics.get("timings_s") or {}).get("optimize")
    summary = {"rounds": len(refined.rounds), "accepted_rounds": refined.n_accepted, "stop_reason": refined.stop_reason,
               "dose_matrix_reused": not recomputed, "cold_optimize_s": cold_s,
               "warm_round_s_mean": round(sum(round_s) / len(round_s), 3) if round_s else None,
               "warm_round_s_max": round(max(round_s), 3) if round_s else None,
               "warm_over_cold": round(max(round_s) / cold_s, 3) if round_s and cold_s else None,
               "oar_change_by_structure": log["oar_change_by_structure"],
               "all_p1_met_before": plan_metrics.get("all_p1_met"), "all_p1_met": result.metrics["all_p1_met"]}
    if patch_info is not None:
        mask = patient.structures[patch_info["name"]].mask
        patch_info["max_after_gy"] = round(float(result.final_dose.dose_gy[mask].max()), 3)
        patch_info["max_change_pct"] = round(100 * (patch_info["max_after_gy"] / patch_info["max_before_gy"] - 1), 2)
        patch_info["ideal_max_before_gy"] = round(float(refined.first_dose_gy[mask].max()), 3)
        patch_info["ideal_max_after_gy"] = round(float(refined.dose_gy[mask].max()), 3)
        summary["patch"] = patch_info
    log.update(summary=summary, notes=notes, plan_dir=str(plan_dir))
    result.metrics["refine"] = summary
    result.metrics["warnings"] = list(dict.fromkeys(result.metrics["warnings"] + notes))

    out = Path(args.out)
    with atomic_directory(out) as tmp:
        write_plan_outputs(result, tmp, keep_dij=args.keep_dij)   # fills tmp itself, atomically
        atomic_write_text(tmp / "refine_log.json", dumps(log) + "\n")
        if rules:
            hs.save_rules(tmp / "helper_rules.json", rules)
        # every optimization kept as a version: the plan, then each accepted round
        history = PlanHistory(tmp)
        parent = history.add(state.goals, state.weights_mu, name="plan", metrics=plan_metrics,
                             note=f"from {plan_dir}").name
        for a in refined.accepted:
            parent = history.add(goals, a["weights"], name=f"round {a['round']}", parent=parent,
                                 metrics={"goals": [r.to_dict() for r in a["goal_results"]],
                                          "working_goals": [g.to_dict() for g in a["working_goals"]]},
                                 note="refinement round (ideal fluence)").name
        history.add(goals, refined.weights, name="refined", parent=parent, metrics=result.metrics,
                    note=f"the refined plan: {refined.n_accepted} of {len(refined.rounds)} rounds accepted "
                         f"({refined.stop_reason})")
    for w in result.metrics["warnings"]:
        warn(w)
    if args.json:
        emit_json(result.metrics)
    else:
        _print_summary(out, result.metrics, summary)
    return 0


def _print_summary(out, m, s) -> None:
    print(f"refined plan written to {out}: {s['accepted_rounds']} of {s['rounds']} rounds accepted "
          f"({s['stop_reason']}); all P1 goals met: {m['all_p1_met']}")
    if s.get("warm_round_s_max") is not None:
        print(f"  warm round: mean {s['warm_round_s_mean']:.1f} s, max {s['warm_round_s_max']:.1f} s "
              f"(cold optimization {s['cold_optimize_s']} s)")
    p = s.get("patch")
    if p:
        print(f"  patch {p['name']} ({p['volume_cc']:.1f} cc): max {p['max_before_gy']:.2f} -> "
              f"{p['max_after_gy']:.2f} Gy ({p['max_change_pct']:+.1f} %)")
    for k, v in s["oar_change_by_structure"].items():
        print(f"  {k:<20} mean goal change {v:+.2f}")
