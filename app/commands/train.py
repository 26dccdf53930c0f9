"""``openatp train --site SITE --data DIR --out MODEL``: train a dose-prediction model.

DIR holds ``train/`` and ``validation/`` folders of OpenKBP cases (``pt_N.npz``). The
compact training caches are built on first use into ``--cache-dir`` (default
``MODEL/cache``) and reused; copy that folder with the code to train on another machine.

``--stage refiner`` trains the full-resolution refiner instead (``MODEL/refiner.pt``,
:mod:`core.prediction.train_refiner`); it needs no U-Net, only the training cache, unless
``--stacked-on NETWORK`` asks it to learn from that network's predictions as well
(:mod:`core.prediction.stacking`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.commands.common import add_device, add_json, emit_json, progress_for


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a dose-prediction model",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--site", required=True, help="site key, e.g. hn")
    p.add_argument("--data", required=True, help="folder with train/ and validation/ OpenKBP cases")
    p.add_argument("--out", required=True, help="model folder to write (model.pt, config.json, logs)")
    p.add_argument("--cache-dir", default=None, help="where the compact training caches live (default MODEL/cache)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="fit the schedule into this many minutes (epochs fixed after the first epoch)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--n-val", type=int, default=8, help="validation cases scored after every epoch (default 8)")
    p.add_argument("--size", choices=("auto", "cpu", "gpu"), default="auto",
                   help="recipe preset: cpu = half resolution, 1.0 M parameters; gpu = full resolution, "
                        "3.9 M parameters (15 MiB file); auto = gpu on CUDA, else cpu")
    p.add_argument("--pool", type=int, choices=(1, 2), default=None, help="resolution factor (overrides --size)")
    p.add_argument("--base-channels", type=int, default=None)
    p.add_argument("--growth", type=int, default=None)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--layers-per-block", type=int, default=None)
    p.add_argument("--max-channels", type=int, default=None)
    p.add_argument("--alpha", type=float, default=None,
                   help="total loss weight of the structures relative to the body (default 1); "
                        "with --resume it changes the weight from there on")
    p.add_argument("--loss", choices=("mse", "l1"), default=None,
                   help="training loss (default mse); with --resume it switches the loss from there on")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--limit-train", type=int, default=None, help="use only the first N training cases (tests)")
    p.add_argument("--resume", action="store_true", help="continue from MODEL/checkpoint_last.pt")
    p.add_argument("--extend-epochs", type=int, default=0,
                   help="with --resume: add epochs (a new cosine phase; warm restart if the run had finished)")
    p.add_argument("--extend-lr", type=float, default=None, help="peak learning rate of the added phase")
    p.add_argument("--snapshots", action="store_true",
                   help="keep every epoch's weights in MODEL/snapshots/ (for weight averaging: "
                        "python -m core.prediction.average); a resumed run keeps doing so")
    p.add_argument("--stage", choices=("unet", "refiner"), default="unet",
                   help="unet: the coarse network (default); refiner: the full-resolution refiner")
    p.add_argument("--steps", type=int, default=12000, help="refiner: training steps (patches; default 12000)")
    p.add_argument("--patch", type=int, default=48, help="refiner: patch size in voxels (default 48)")
    p.add_argument("--width", type=int, default=16, help="refiner: channels per layer (default 16)")
    p.add_argument("--dilations", default="1,2,4,2,1", help="refiner: dilation of each 3x3x3 layer")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 3e-4 for the network, 1e-3 for the refiner)")
    p.add_argument("--init-model", default=None, metavar="MODEL",
                   help="network: start a new run from this model's weights (same inputs and shape), with a "
                        "fresh optimiser and its own schedule")
    p.add_argument("--stacked-on", default=None, metavar="NETWORK",
                   help="refiner: also train on this coarse network's own predictions of the training cases "
                        "(written once to MODEL/stacked/); the refiner then belongs to that network")
    p.add_argument("--p-stacked", type=float, default=0.8,
                   help="refiner with --stacked-on: share of samples that use the network's prediction (default 0.8)")
    p.add_argument("--stacked-gain", type=float, default=0.15,
                   help="refiner with --stacked-on: the prediction's error is amplified by a random factor in "
                        "[1, 1 + gain], since the network fits its training cases better than new ones (default 0.15)")
    p.add_argument("--near-target-mm", type=float, default=15.0,
                   help="refiner: the band around the targets that --near-target-frac of the patches are centred in "
                        "(default 15 mm)")
    p.add_argument("--near-target-frac", type=float, default=0.7,
                   help="refiner: share of patches centred near a target (default 0.7)")
    p.add_argument("--init-refiner", default=None, metavar="REFINER",
                   help="refiner: start from these weights (same dilations, same or smaller width: a narrower "
                        "refiner fills the leading channels) instead of from scratch")
    add_device(p)
    add_json(p)
    p.set_defaults(func=run)


#: Recipe presets. "cpu": what trains in ~2 h on the shared 2-core CPU (half resolution).
#: "gpu": full OpenKBP resolution, deeper and wider, sized so the weights file stays < 16 MiB.
PRESETS = {
    "cpu": {"pool": 2, "base_channels": 16, "growth": 8, "depth": 4, "layers_per_block": 2, "max_channels": 256},
    "gpu": {"pool": 1, "base_channels": 32, "growth": 12, "depth": 5, "layers_per_block": 2, "max_channels": 128},
}


def _log(msg: str) -> None:
    print(f"openatp train: {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    from core.device import resolve_device
    from core.errors import InputError
    from core.prediction.cache import build_cache
    from core.prediction.sites import get_site
    from core.prediction.train import TrainConfig, train

    site = get_site(args.site)
    if args.lr is not None and not args.lr > 0:
        raise InputError(f"--lr must be positive, got {args.lr:g}")
    if args.init_model and args.stage == "refiner":
        raise InputError("--init-model starts a network run; a refiner starts from --init-refiner")
    if args.init_model and args.resume:
        raise InputError("--init-model starts a new run; --resume continues one: choose one")
    if args.init_model and not Path(args.init_model).exists():
        raise InputError("the model to start from does not exist", args.init_model)
    refiner_cfg = _refiner_config(args, site) if args.stage == "refiner" else None
    data = Path(args.data)
    if not (data / "train").is_dir() or not (data / "validation").is_dir():
        raise InputError("expected train/ and validation/ folders of OpenKBP cases here", data)
    out = Path(args.out)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out / "cache"
    caches = {}
    for split in ("train", "validation"):
        path = cache_dir / f"cache_{site.key}_{split}.npz"
        if not path.is_file():
            _log(f"building the {split} cache {path}")
            r = build_cache(data / split, path, site.key)
            _log(f"{r['n_cases']} cases, {r['bytes'] / 2**20:.1f} MiB, {r['seconds']:.0f} s")
        caches[split] = path
    device = resolve_device(args.device)
    if args.stage == "refiner":
        return _train_refiner(args, refiner_cfg, caches["train"], out, device)
    size = args.size if args.size != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    preset = dict(PRESETS[size])
    for key in ("pool", "base_channels", "growth", "depth", "layers_per_block", "max_channels"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    pool = preset.pop("pool")
    alpha = 1.0 if args.alpha is None else args.alpha
    cfg = TrainConfig(site=site.key, epochs=args.epochs, time_budget_min=args.time_budget_min, seed=args.seed,
                      n_val=args.n_val, threads=args.threads, alpha=alpha, augment=not args.no_augment,
                      limit_train=args.limit_train, pool=pool, unet=preset,
                      **({} if args.lr is None else {"lr": args.lr}),
                      init_from=str(args.init_model) if args.init_model else None)
    _log(f"device {device}, recipe {size}: pool {pool}, network {preset}")
    if args.extend_epochs and not args.resume:
        raise InputError("--extend-epochs needs --resume (it extends an existing run)")
    result = train(caches["train"], caches["validation"], out, cfg, resume=args.resume, device=device,
                   progress=progress_for(args), log=_log, extend_epochs=args.extend_epochs,
                   extend_lr=args.extend_lr, loss=args.loss, alpha=args.alpha,
                   snapshots=True if args.snapshots else None)
    if args.json:
        emit_json({"epochs": result["epochs"], "best_val_loss": result["best_val_loss"],
                   "best_dose_score_gy": result["best_dose_score_gy"],
                   "best_dvh_score_gy": result["best_dvh_score_gy"], "seconds": result["seconds"]})
    return 0


def _refiner_config(args, site):
    """The refiner's settings, checked before anything is built or written."""
    from core.errors import InputError
    from core.prediction.train_refiner import RefinerTrainConfig

    try:
        dil = tuple(int(v) for v in str(args.dilations).split(","))
    except ValueError:
        raise InputError(f"--dilations must be comma-separated integers, got '{args.dilations}'") from None
    if args.steps < 1 or args.patch < 8 or args.width < 1 or not dil or min(dil) < 1:
        raise InputError("--steps >= 1, --patch >= 8, --width >= 1 and dilations >= 1 are needed")
    if not 0.0 <= args.p_stacked <= 1.0 or args.stacked_gain < 0:
        raise InputError("--p-stacked must lie in [0, 1] and --stacked-gain must not be negative")
    if not 0.0 <= args.near_target_frac <= 1.0 or args.near_target_mm <= 0:
        raise InputError("--near-target-frac must lie in [0, 1] and --near-target-mm must be positive")
    if args.init_refiner and not Path(args.init_refiner).is_file():
        raise InputError("the refiner to start from does not exist", args.init_refiner)
    stacked = args.stacked_on is not None
    return RefinerTrainConfig(site=site.key, steps=args.steps, patch=args.patch, width=args.width, dilations=dil,
                              lr=1e-3 if args.lr is None else args.lr, seed=args.seed, threads=args.threads,
                              limit_train=args.limit_train,
                              alpha=1.0 if args.alpha is None else args.alpha,
                              stacked_dir=str(Path(args.out) / "stacked") if stacked else None,
                              p_stacked=args.p_stacked if stacked else 0.0,
                              stacked_gain=args.stacked_gain if stacked else 0.0,
                              near_target_mm=args.near_target_mm, near_target_frac=args.near_target_frac,
                              init_from=args.init_refiner)


def _train_refiner(args, cfg, cache, out: Path, device) -> int:
    from core.prediction.train_refiner import train_refiner

    if args.stacked_on:
        from core.prediction.stacking import coarse_predictions

        _log(f"predicting the training cases with {args.stacked_on} into {cfg.stacked_dir}")
        if args.threads:
            import torch
            torch.set_num_threads(int(args.threads))
        coarse_predictions(args.stacked_on, cache, cfg.stacked_dir, cfg.site, device, progress=progress_for(args),
                           log=_log)
    _log(f"device {device}, refiner: width {cfg.width}, dilations {cfg.dilations}, "
         f"{cfg.steps} steps of {cfg.patch}^3" + (f", {cfg.p_stacked:.0%} on the network's predictions"
                                                    if cfg.stacked_dir else ""))
    r = train_refiner(cache, out, cfg, resume=args.resume, progress=progress_for(args), device=device, log=_log)
    if args.json:
        emit_json({"stage": "refiner", "steps": r["steps"], "loss": r["loss"], "unrefined_loss": r["unrefined_loss"],
                   "seconds": r["seconds"], "path": r["path"]})
    return 0
