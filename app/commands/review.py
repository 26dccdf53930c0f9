"""``openatp review create|status|answer|gui|add-reviewer|unblind|results STUDY ...``: blinded review studies.

Study model, blinding and threat model: :mod:`core.review.study`; scoring and aggregates:
:mod:`core.review.aggregate`. ``--json`` output per sub-command:

* ``create``: ``{"study", "key", "study_id", "n_cases", "cases", "reviewers", "questionnaire"}``
  (the seed is kept in the key only: with it the assignment could be recomputed);
* ``status``: ``{"study_id", "questionnaire", "n_cases", "reviewers": {NAME: {"completed",
  "total", "next_case"}}, "unblinded", "complete"}`` plus, with ``--reviewer``, ``"cases"``:
  that reviewer's cases in order with plan A/B files and answers (nothing names an arm);
* ``answer``: ``{"reviewer", "case", "saved": {QUESTION: VALUE}, "complete", "next_case"}``;
* ``gui``: no JSON; opens the review window for ``--reviewer`` at their first open case
  (``--screenshot FILE`` renders it to a PNG and exits);
* ``unblind``: ``{"study_id", "unblinded_utc", "arm_names", "incomplete", "already"}``;
* ``results``: the aggregates (:func:`core.review.aggregate.aggregate`) plus ``"arm_names"``
  and ``"outputs"`` (results.json, ratings.csv, cases.csv, preference_groups.csv, results.html).
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.commands.common import add_json, emit_json, progress_for, warn


def register(subparsers) -> None:
    p = subparsers.add_parser("review", help="blinded side-by-side physician review studies",
                              description="Blinded review of automated vs manual plans: create a study, "
                                          "follow progress, answer headlessly, unblind, aggregate.")
    sub = p.add_subparsers(dest="review_command", metavar="{create,status,answer,gui,add-reviewer,unblind,results}")

    c = sub.add_parser("create", help="create a study folder and its key")
    c.add_argument("study", metavar="STUDY", help="new study folder (given to the reviewers)")
    c.add_argument("plans_auto", metavar="PLANS_AUTO", help="automated plan set (ID/ plan folders, ID.npz DOSE "
                   "files, ID.dcm RTDOSE files)")
    c.add_argument("plans_manual", metavar="PLANS_MANUAL", help="manual (e.g. clinical) plan set, same patients")
    c.add_argument("--patients", default=None, metavar="DIR",
                   help="patients (ID.npz OpenKBP cases or ID/ DICOM folders), copied without dose for display")
    c.add_argument("--reviewers", required=True, help="comma-separated reviewer names")
    c.add_argument("--seed", type=int, default=None, help="randomization seed (default: random; kept in the key)")
    c.add_argument("--key", default=None, help="key file, outside STUDY (default STUDY.key.sqlite beside it)")
    c.add_argument("--questionnaire", default=None,
                   help="questionnaire version (default published-v1) or a questionnaire JSON file")
    c.add_argument("--sites", default=None, metavar="CSV", help="CSV with patient_id and site columns")
    c.add_argument("--arm-names", default="automated,manual",
                   help="names of the automated and the manual arm, shown after unblinding")
    add_json(c)

    s = sub.add_parser("status", help="progress of every reviewer (no arm information)")
    s.add_argument("study", metavar="STUDY")
    s.add_argument("--reviewer", default=None, help="also list this reviewer's cases in their order")
    add_json(s)

    a = sub.add_parser("answer", help="save answers of one reviewer for one case (one transaction)")
    a.add_argument("study", metavar="STUDY")
    a.add_argument("--reviewer", required=True)
    a.add_argument("--case", default=None, help="case id (default: the reviewer's next open case)")
    a.add_argument("--set", action="append", default=[], metavar="QUESTION=VALUE",
                   help="an answer, e.g. acceptable_a=agree, prefer_a=cannot_judge, comment='cord hot'")
    add_json(a)

    g = sub.add_parser("gui", help="review the study in the blinded side-by-side window",
                       description="Open the review window for one reviewer; it resumes at their first open "
                                   "case and saves every answer as it is given.")
    g.add_argument("study", metavar="STUDY")
    g.add_argument("--reviewer", required=True, help="your name as listed in the study")
    g.add_argument("--case", type=int, default=None, metavar="K",
                   help="open the K-th case of your order (1-based) instead of resuming")
    g.add_argument("--screenshot", metavar="FILE", default=None,
                   help="render the window once the case is shown, save it as a PNG and exit")
    g.add_argument("--theme", choices=["dark", "light"], default=None, help="colour theme (default: last used)")
    g.add_argument("--size", default="1600x1000", help="window size WxH (default 1600x1000)")

    r = sub.add_parser("add-reviewer", help="add a reviewer (needs the key)")
    r.add_argument("study", metavar="STUDY")
    r.add_argument("name")
    r.add_argument("--key", default=None)
    add_json(r)

    u = sub.add_parser("unblind", help="reveal which plan is which (closes answering)")
    u.add_argument("study", metavar="STUDY")
    u.add_argument("--key", default=None, help="key file (default STUDY.key.sqlite beside the study)")
    u.add_argument("--force", action="store_true", help="unblind although some reviewer has not finished")
    add_json(u)

    res = sub.add_parser("results", help="aggregates, figures, CSV/JSON of an unblinded study")
    res.add_argument("study", metavar="STUDY")
    res.add_argument("--out", default=None, help="output folder (default STUDY/results)")
    add_json(res)

    for sp in (c, s, a, g, r, u, res):
        sp.set_defaults(func=run)
    p.set_defaults(func=run, _review_parser=p)


def run(args) -> int:
    cmd = getattr(args, "review_command", None)
    if cmd is None:
        args._review_parser.print_help(sys.stderr)
        return 2
    return {"create": _create, "status": _status, "answer": _answer, "gui": _gui, "add-reviewer": _add_reviewer,
            "unblind": _unblind, "results": _results}[cmd](args)


def _split(text):
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _create(args) -> int:
    import secrets

    from core.errors import InputError
    from core.evaluation.cohort import discover_patients, discover_plan_set, match_plan_sets, read_groups
    from core.review.study import CaseInput, create_study, default_key_path

    auto, manual = discover_plan_set(args.plans_auto), discover_plan_set(args.plans_manual)
    patients = discover_patients(args.patients) if args.patients else None
    ids = match_plan_sets(auto, manual, patients, names=("PLANS_AUTO", "PLANS_MANUAL"))
    sites = read_groups(args.sites) if args.sites else {}
    arm_names = _split(args.arm_names)
    if len(arm_names) != 2 or arm_names[0] == arm_names[1]:
        raise InputError(f"--arm-names needs two different names, got '{args.arm_names}'")
    cases = [CaseInput(pid, auto[pid], manual[pid], patients[pid] if patients else None,
                       sites.get(pid, {}).get("site", "")) for pid in ids]
    seed = args.seed if args.seed is not None else secrets.randbits(62)
    key = Path(args.key) if args.key else default_key_path(args.study)
    st = create_study(args.study, cases, _split(args.reviewers), seed, key_path=key,
                      questionnaire=args.questionnaire, arm_names=tuple(arm_names), progress=progress_for(args))
    with st:
        doc = {"study": str(Path(args.study)), "key": str(key), "study_id": st.study_id, "n_cases": len(ids),
               "cases": ids, "reviewers": st.reviewers(), "questionnaire": st.questionnaire.version}
    if args.json:
        emit_json(doc)
    else:
        print(f"created study {doc['study']} ({doc['n_cases']} cases, reviewers {', '.join(doc['reviewers'])}); "
              f"keep the key {doc['key']} away from the reviewers")
    return 0


def _case_doc(cv, study_dir: Path) -> dict:
    rel = lambda p: str(Path(p).relative_to(study_dir)) if Path(p).is_absolute() else str(p)  # noqa: E731
    return {"case_id": cv.case_id, "position": cv.position, "site": cv.site, "patient": cv.patient,
            "plan_a": rel(cv.plan_a), "plan_b": rel(cv.plan_b), "answers": cv.answers, "complete": cv.complete}


def _status(args) -> int:
    from core.review.study import ReviewStudy

    with ReviewStudy(args.study, readonly=True) as st:
        doc = st.status()
        if args.reviewer:
            doc["cases"] = [_case_doc(cv, st.dir) for cv in st.cases_for(args.reviewer)]
    if args.json:
        emit_json(doc)
        return 0
    print(f"study {doc['study_id']} ({doc['questionnaire']}), {doc['n_cases']} cases"
          f"{', unblinded' if doc['unblinded'] else ''}")
    for name, r in doc["reviewers"].items():
        print(f"  {name}: {r['completed']}/{r['total']} done" + (f", next {r['next_case']}" if r["next_case"] else ""))
    return 0


def _answer(args) -> int:
    from core.errors import InputError
    from core.review.study import ReviewStudy

    answers = {}
    for item in args.set:
        q, sep, v = item.partition("=")
        if not sep or not q.strip():
            raise InputError(f"--set expects QUESTION=VALUE, got '{item}'")
        answers[q.strip()] = v
    if not answers:
        raise InputError("give at least one answer with --set QUESTION=VALUE")
    with ReviewStudy(args.study) as st:
        case = args.case
        if case is None:
            nxt = st.next_case(args.reviewer)
            if nxt is None:
                raise InputError(f"reviewer '{args.reviewer}' has answered every case", args.study)
            case = nxt.case_id
        st.save_answers(args.reviewer, case, answers)
        cv = st.case_view(args.reviewer, case)
        nxt = st.next_case(args.reviewer)
        doc = {"reviewer": args.reviewer, "case": case, "saved": {q: cv.answers[q] for q in answers},
               "complete": cv.complete, "next_case": nxt.case_id if nxt else None}
    if args.json:
        emit_json(doc)
    else:
        print(f"saved {len(answers)} answer(s) for {case}; next: {doc['next_case'] or 'none, all done'}")
    return 0


def _gui(args) -> int:
    from app.commands.gui import _size

    size = _size(args.size)
    from app.review_window import run_review_gui

    return run_review_gui(args.study, args.reviewer, screenshot=args.screenshot, theme=args.theme, size=size,
                          case=args.case)


def _add_reviewer(args) -> int:
    from core.review.study import add_reviewer

    add_reviewer(args.study, args.name, args.key)
    if args.json:
        emit_json({"study": args.study, "added": args.name})
    else:
        print(f"added reviewer {args.name}")
    return 0


def _unblind(args) -> int:
    from core.review.study import unblind

    doc = unblind(args.study, args.key, force=args.force)
    for r, n in doc["incomplete"].items():
        warn(f"reviewer {r} left {n} case(s) unanswered")
    if args.json:
        emit_json(doc)
    else:
        print(f"unblinded study {doc['study_id']}: automated = {doc['arm_names']['automated']}, "
              f"manual = {doc['arm_names']['manual']}")
    return 0


def _results(args) -> int:
    from core.review.aggregate import aggregate, ratings_from_study, ratings_rows
    from core.review.report import write_results
    from core.review.study import ReviewStudy

    with ReviewStudy(args.study, readonly=True) as st:
        ratings = ratings_from_study(st)
        results = aggregate(ratings, st.reviewers())
        arm_names = st.arm_names()
        out = Path(args.out) if args.out else st.dir / "results"
    outputs = write_results(out, results, ratings_rows(ratings), arm_names)
    doc = dict(results, arm_names=arm_names, outputs=outputs)
    if args.json:
        emit_json(doc)
        return 0
    a = results["acceptance"]
    auto_name, manual_name = arm_names["automated"], arm_names["manual"]
    print(f"{results['n_cases']} cases, {results['n_reviewers']} reviewers")
    print(f"  {auto_name} acceptable: {a['automated']['k']}/{a['automated']['n']}; "
          f"{manual_name} acceptable: {a['manual']['k']}/{a['manual']['n']}")
    print(f"  {auto_name} preferred: {results['automated_preferred']['k']}/{results['automated_preferred']['n']}; "
          f"unanimously accepted cases: {results['accepted_by']['unanimous']:.0%}")
    i = results["identification"]
    print(f"  identification: {i['k']}/{i['n']} (binomial p vs chance {i['p_binomial_vs_chance']:.3g})")
    print(f"  report: {outputs['results.html']}")
    return 0
