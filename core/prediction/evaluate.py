"""Evaluate a trained model on OpenKBP cases and install it as a site's shipped model.

Evaluation goes through the same path as ``openatp predict`` (the OpenKBP loader, then
:class:`~core.prediction.predict.DosePredictor`), so the numbers are what an outside
check of the CLI would measure. Both target conventions are scored from one prediction:
``predict`` (the network's dose everywhere) and ``prescription`` (the published
convention: every target voxel set to its prescription, the highest where targets overlap).

Install (one line)::

    .venv/bin/python -m core.prediction.evaluate .train/hn_run1 --data ../shared/data/openkbp/validation --install

evaluates on every case of ``--data``, picks the better convention (lower dose score +
DVH score), writes ``resources/models/hn/{model.pt, config.json, validation.json}`` and
fills the measured numbers into ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from core.progress import check_cancel, report
from core.prediction.scores import ScoreAccumulator


def _structures(patient, site) -> dict:
    from core.patient import StructureRole

    out = {}
    for name, s in patient.structures.items():
        canon = site.canonical(name)
        if canon in site.oars:
            out[name] = (s.mask, "oar")
        elif s.role is StructureRole.TARGET or canon in site.targets:
            out[name] = (s.mask, "target")
    return out


def evaluate_model(model_path, data_dir, device="cpu", site: str = "hn", tta: bool | None = None,
                   limit: int | None = None, progress=None, cancel=None, extra_members=(), refiner=None,
                   tta_framings: int | None = None) -> dict:
    """OpenKBP dose and DVH scores of a model on every ``pt_*.npz`` in ``data_dir``.

    Returns ``{"predict": {dose_score_gy, dvh_score_gy, n_patients}, "prescription": {...},
    "per_case": [...], "seconds_per_case": {...}, "device", "peak_rss_mib", "peak_cuda_mib"}``.
    """
    import torch

    from core.io.openkbp import load_openkbp
    from core.prediction.predict import DosePredictor

    pred = DosePredictor(model_path, device, site, extra_members=extra_members, refiner=refiner)
    tta = pred.default_tta if tta is None else bool(tta)
    if tta_framings is not None:
        pred.tta_framings = max(1, int(tta_framings))
    mode_saved = pred.meta.get("ptv_mode", "predict")
    pred.meta["ptv_mode"] = "predict"  # score both conventions from the raw prediction
    files = sorted(Path(data_dir).glob("pt_*.npz"), key=lambda p: int(p.stem.split("_")[1]))
    if limit:
        files = files[:limit]
    acc = {"predict": ScoreAccumulator(), "prescription": ScoreAccumulator()}
    per_case, secs = [], []
    if pred.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pred.device)
    for i, f in enumerate(files):
        check_cancel(cancel)
        patient = load_openkbp(f)
        t0 = time.perf_counter()
        r = pred.predict(patient, tta=tta)
        secs.append(time.perf_counter() - t0)
        ref = patient.doses["reference"].dose_gy
        body = patient.possible_dose_mask
        structs = _structures(patient, pred.site)
        rx = np.zeros(ref.shape, np.float32)
        for name, (m, kind) in structs.items():
            if kind == "target":
                p = patient.prescription_for(name)
                from core.prediction.sites import target_dose_from_name
                v = p.dose_gy if p is not None else target_dose_from_name(name)
                if v:
                    rx = np.maximum(rx, np.where(m, np.float32(v), 0))
        d_rx = np.where(rx > 0, rx, r.dose.dose_gy)
        a = acc["predict"].add(r.dose.dose_gy, ref, body, structs, patient.grid.spacing_mm)
        b = acc["prescription"].add(d_rx, ref, body, structs, patient.grid.spacing_mm)
        per_case.append({"case": f.stem, "dose_score_gy": a[0], "dvh_score_gy": a[1],
                         "rx_dose_score_gy": b[0], "rx_dvh_score_gy": b[1], "seconds": secs[-1]})
        report(progress, i + 1, len(files), f"{f.stem}", dose=a[0])
    pred.meta["ptv_mode"] = mode_saved
    out = {k: v.result() for k, v in acc.items()}
    from core.device import device_name
    out.update({
        "per_case": per_case,
        "seconds_per_case": {"mean": float(np.mean(secs)) if secs else None,
                             "median": float(np.median(secs)) if secs else None,
                             "max": float(np.max(secs)) if secs else None},
        "device": device_name(pred.device), "tta": tta, "tta_framings": pred.tta_framings if tta else 1,
        "model": str(pred.path),
        "members": [str(m) for m in pred.member_files],
        "refiner": str(pred.refiner_path) if pred.refiner is not None else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "peak_cuda_mib": (torch.cuda.max_memory_allocated(pred.device) / 2**20) if pred.device.type == "cuda" else None,
    })
    return out


def choose_ptv_mode(result: dict) -> str:
    """The convention with the lower dose score + DVH score."""
    s = {m: result[m]["dose_score_gy"] + result[m]["dvh_score_gy"] for m in ("predict", "prescription")}
    return min(s, key=s.get)


def install_model(run_dir, result: dict, site: str = "hn", dest=None, extra_members=(), refiner=None) -> Path:
    """Copy the best checkpoint of ``run_dir`` into ``resources/models/<site>/`` with the
    measured convention and scores, the other networks of the evaluated ensemble
    (``result["members"]`` after the first, else ``extra_members``) as ``model_2.pt`` ...
    (members left from an earlier install beyond those are removed) and ``refiner`` as
    ``refiner.pt`` (an earlier one is removed when none is given); update the model
    card's measured block.

    Every member is read before anything is written: re-installing from the install folder
    itself, whose members are among the evaluated ones, keeps them."""
    from core.io.atomic import atomic_write_text
    from core.prediction.model_io import load_model, save_model
    from core.prediction.predict import default_model_path

    dest = Path(dest) if dest else default_model_path(site)
    net, meta = load_model(run_dir, "cpu", site=site)
    evaluated = list(result.get("members") or [])
    members = [load_model(m, "cpu", site=site) for m in (evaluated[1:] if evaluated else extra_members)]
    mode = choose_ptv_mode(result)
    meta["ptv_mode"] = mode
    meta["tta"] = bool(result.get("tta", False))  # inference follows what was measured
    meta["tta_framings"] = int(result.get("tta_framings", 1))
    info = dict(meta.get("info", {}))
    info.setdefault("val_dose_score_gy_subset", info.get("val_dose_score_gy"))
    info.setdefault("val_dvh_score_gy_subset", info.get("val_dvh_score_gy"))
    info.update({"val_dose_score_gy": result[mode]["dose_score_gy"], "val_dvh_score_gy": result[mode]["dvh_score_gy"],
                 "val_n_patients": result[mode]["n_patients"],
                 "val_scores_both_modes": {m: result[m] for m in ("predict", "prescription")},
                 "cpu_seconds_per_case": result["seconds_per_case"]})
    meta["info"] = info
    save_model(dest, net, meta)
    from core.prediction.model_io import member_paths
    for k, (mnet, mmeta) in enumerate(members, start=2):
        save_model(dest / f"model_{k}.pt", mnet, mmeta, write_config=False)
    for old in member_paths(dest / "model.pt")[len(members):]:
        old.unlink()
    if refiner and Path(refiner).resolve() != (dest / "refiner.pt").resolve():
        from core.io.atomic import atomic_write_bytes
        from core.prediction.refiner import load_refiner
        load_refiner(refiner)  # refuse to install a file that does not load
        atomic_write_bytes(dest / "refiner.pt", Path(refiner).read_bytes())
    elif not refiner and (dest / "refiner.pt").exists():
        (dest / "refiner.pt").unlink()
    slim = {k: v for k, v in result.items()}
    atomic_write_text(dest / "validation.json", json.dumps(slim, indent=2) + "\n")
    log = Path(run_dir) / "train_log.jsonl"
    if log.is_file():
        atomic_write_text(dest / "train_log.jsonl", log.read_text())
    card = dest / "MODEL_CARD.md"
    if card.is_file():
        text = card.read_text()
        start, end = "<!-- measured:start -->", "<!-- measured:end -->"
        if start in text and end in text:
            hist = [json.loads(s) for s in log.read_text().splitlines()] if log.is_file() else []
            block = _measured_block(meta, result, mode, hist)
            text = text.split(start)[0] + start + "\n" + block + end + text.split(end)[1]
            atomic_write_text(card, text)
    return dest / "model.pt"


def _measured_block(meta, result, mode, hist) -> str:
    info = meta["info"]
    tc = info.get("train_config", {})
    averaged = info.get("averaged_epochs")
    if averaged:
        which = (f"- Weights: the mean of {len(averaged)} per-epoch snapshots of one run (epochs "
                 f"{', '.join(str(e) for e in averaged)}; `python -m core.prediction.average`); the run had "
                 f"finished {len(hist)} epochs at install.")
    else:
        which = (f"- Checkpoint: epoch {info.get('epoch')} (the run had finished {len(hist)} epochs at install) "
                 f"(its score on the 8-case validation subset used during training: dose "
                 f"{info.get('val_dose_score_gy_subset', float('nan')):.3f} Gy, "
                 f"DVH {info.get('val_dvh_score_gy_subset', float('nan')):.3f} Gy).")
    lines = [
        which,
        f"- Training wall time to {'the last snapshot' if averaged else 'that checkpoint'}: "
        f"{info.get('train_elapsed_s', 0) / 60:.0f} min; whole run "
        f"{(hist[-1]['elapsed_s'] / 60) if hist else float('nan'):.0f} min on the shared 2-core CPU "
        f"(torch threads: {tc.get('threads')}), network {meta['unet']}.",
        f"- Validation, {result[mode]['n_patients']} cases of the OpenKBP validation split (all 33 unless "
        "`--limit` was given), "
        "through `openatp predict`'s path:",
        "",
        "| convention | dose score (Gy) | DVH score (Gy) |",
        "| --- | --- | --- |",
        f"| network everywhere (`predict`) | {result['predict']['dose_score_gy']:.3f} | "
        f"{result['predict']['dvh_score_gy']:.3f} |",
        f"| targets set to prescription (`prescription`, published) | {result['prescription']['dose_score_gy']:.3f} | "
        f"{result['prescription']['dvh_score_gy']:.3f} |",
        "",
        f"- Shipped convention: `{mode}` (lower dose + DVH score).",
        f"- Members: {len(result.get('members', [1]))} (predictions averaged): "
        + ", ".join(f"`{m}`" for m in result.get("members", [])) + ".",
        (f"- Full-resolution refiner: `{result['refiner']}` (see *The refiner* above)." if result.get("refiner")
         else "- No full-resolution refiner."),
        f"- Test-time left-right flip: {'on' if result.get('tta') else 'off'}, "
        f"{result.get('tta_framings', 1)} framing(s) of the input (inference does the same by default).",
        f"- Inference on {result['device']}: {result['seconds_per_case']['mean']:.1f} s a case on average "
        f"(max {result['seconds_per_case']['max']:.1f} s), peak RSS {result['peak_rss_mib']:.0f} MiB.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m core.prediction.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="run folder or model.pt")
    ap.add_argument("--data", required=True, help="folder of OpenKBP pt_*.npz with reference doses")
    ap.add_argument("--site", default="hn")
    ap.add_argument("--device", default="cpu")
    flip = ap.add_mutually_exclusive_group()
    flip.add_argument("--tta", dest="tta", action="store_true", default=None,
                      help="test-time left-right flip (default: as the model file says)")
    flip.add_argument("--no-tta", dest="tta", action="store_false")
    ap.add_argument("--tta-framings", type=int, default=None, metavar="N",
                    help="with --tta: also average N framings of the input (default: as the model file says)")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--install", action="store_true", help="install into resources/models/SITE/ after evaluating")
    ap.add_argument("--member", action="append", default=[], metavar="MODEL",
                    help="a further model (run folder or .pt) averaged with the first: an ensemble")
    ap.add_argument("--refiner", default=None, metavar="REFINER_PT",
                    help="the full-resolution refiner to apply (default: refiner.pt next to the model, if any)")
    ap.add_argument("--no-refiner", action="store_true", help="evaluate without any refiner")
    args = ap.parse_args(argv)
    refiner = False if args.no_refiner else args.refiner
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from core.errors import OpenATPError
    try:
        res = evaluate_model(args.model, args.data, args.device, args.site, args.tta, args.limit,
                             extra_members=args.member, refiner=refiner, tta_framings=args.tta_framings)
        if args.install:
            res["installed"] = str(install_model(args.model, res, args.site, extra_members=args.member,
                                                 refiner=res.get("refiner")))
    except OpenATPError as e:
        print(f"evaluate: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in res.items() if k != "per_case"}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
