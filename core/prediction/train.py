"""Training of a site's dose-prediction model from the compact cache.

Recipe (CPU default; see ``resources/models/hn/MODEL_CARD.md`` for what was run):

- cases at half resolution (2x2x2 pooling of the OpenKBP grid), cropped to the body and
  padded per step to a multiple of 8 at a random offset (the translation augmentation;
  no fixed patch, so small necks cost less than large shoulders);
- augmentation: left-right flip (p = 0.5, parotid channels swapped), rotation in the
  axial plane +-10 deg, isotropic scaling +-10 %, sub-voxel translation;
- loss: weighted MSE (or, with ``loss="l1"``, weighted mean absolute error, the measure
  the OpenKBP dose score uses) of dose / reference dose inside the body. Voxel weight
  ``1 + (alpha / S) * sum_s occ_s / f_s`` with ``f_s`` the structure's volume fraction
  of the body and ``S`` the number of structures present: every structure carries as
  much total weight as the body when ``alpha = S`` (the published reciprocal-volume
  weighting), and ``alpha = 1`` lets all structures together weigh as much as the body;
- Adam (lr 3e-4, weight decay 1e-4), cosine decay to 1e-6 over the planned steps;
- validation after every epoch on a fixed subset with the OpenKBP dose and DVH scores
  at full resolution; the best checkpoint by dose score is kept as ``model.pt``;
- resumable: ``checkpoint_last.pt`` (model, optimiser, epoch, plan) after every epoch
  and at least every ``checkpoint_every_s``;
- deterministic for a seed: the case order and augmentation of epoch ``e`` come from
  ``numpy.random.default_rng([seed, e])``, so a resumed run repeats the same steps.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.progress import check_cancel, report
from core.prediction.preprocess import (POOL, CanonicalCase, channel_names, full_res_channels, mirror_channel_order,
                                        model_inputs, pad_to_multiple, pad_volume, pool_dose, pool_inputs,
                                        upsample_dose)
from core.prediction.sites import SiteSpec, get_site


@dataclass
class TrainConfig:
    """Training settings (all stored in every checkpoint)."""

    site: str = "hn"
    epochs: int = 30
    time_budget_min: float | None = None
    lr: float = 3e-4
    lr_min: float = 1e-6
    weight_decay: float = 1e-4
    alpha: float = 1.0
    seed: int = 0
    n_val: int = 8
    checkpoint_every_s: float = 600.0
    augment: bool = True
    max_rot_deg: float = 10.0
    max_scale: float = 0.10
    threads: int | None = None
    pool: int = POOL
    unet: dict = field(default_factory=lambda: {"base_channels": 16, "growth": 8, "depth": 4,
                                                "layers_per_block": 2})
    limit_train: int | None = None
    loss: str = "mse"
    snapshots: bool = False   # keep every epoch's weights (snapshots/epoch_NNN.pt)
    init_from: str | None = None  # model file whose weights a new run starts from


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------
def _canonical_from_cache(c, site: SiteSpec) -> CanonicalCase:
    n_oar = len(site.oars)
    oars = np.stack([c.mask(i) for i in range(n_oar)])
    targets = []
    from core.prediction.sites import target_dose_from_name
    for j, t in enumerate(site.targets):
        m = c.mask(n_oar + j)
        if m.any():
            targets.append((m, target_dose_from_name(t)))
    return CanonicalCase(c.ct_hu.astype(np.float32), c.body, oars, targets, np.asarray(c.spacing_mm))


def prepare_train_case(c, site: SiteSpec, pool: int = POOL) -> dict:
    """Coarse arrays of one cached case: inputs ``x`` (C, b0, b1, b2) float16, ``y`` the coarse
    dose / reference dose, ``occ`` (S, ...) coarse structure fractions for the loss weights."""
    cc = _canonical_from_cache(c, site)
    shape = pad_to_multiple(cc.body.shape, pool)
    x = pool_inputs(pad_volume(full_res_channels(cc, site), shape), pool)
    x[0][x[1] == 0] = -1.0
    body = pad_volume(cc.body, shape)
    y = pool_dose(pad_volume(c.dose_gy, shape), body, pool) / np.float32(site.reference_dose_gy)
    n_oar = len(site.oars)
    tmasks = [pad_volume(c.mask(n_oar + j), shape) for j in range(len(site.targets))]
    occ = np.concatenate([x[2:2 + n_oar], pool_inputs(np.stack(tmasks).astype(np.float32), pool)])
    return {"pid": c.pid, "x": x.astype(np.float16), "y": y.astype(np.float32), "occ": occ.astype(np.float16)}


def prepare_val_case(c, site: SiteSpec, multiple: int, pool: int = POOL) -> dict:
    """Full-resolution references plus padded coarse inputs for validation."""
    cc = _canonical_from_cache(c, site)
    x, body_lo, pad_shape = model_inputs(cc, site, multiple, pool=pool)
    n_oar = len(site.oars)
    structs = {o: (c.mask(i), "oar") for i, o in enumerate(site.oars) if c.mask(i).any()}
    structs.update({t: (c.mask(n_oar + j), "target") for j, t in enumerate(site.targets) if c.mask(n_oar + j).any()})
    ptv_rx = cc.ptv_dose_gy()
    return {"pid": c.pid, "x": x, "body_lo": body_lo, "pad_shape": pad_shape, "body": c.body, "pool": pool,
            "dose": c.dose_gy, "structures": structs, "spacing": c.spacing_mm, "ptv_rx": ptv_rx}


def loss_weights(occ, body, alpha: float):
    """Voxel weights (see module docstring); zero outside the body.

    ``occ`` (S, ...) and ``body`` (...) fractions, numpy arrays or torch tensors (same kind out).
    """
    vol_body = float(body.sum())
    w = body * 0 + 1
    present = [k for k in range(occ.shape[0]) if float(occ[k].sum()) > 0]
    for k in present:
        frac = float(occ[k].sum()) / max(vol_body, 1e-6)
        w = w + (alpha / len(present)) * occ[k] / max(frac, 1e-4)
    return w * body


# --------------------------------------------------------------------------------------
# Augmentation (torch, on the coarse arrays)
# --------------------------------------------------------------------------------------
def augment_sample(x, y, occ, rng, site: SiteSpec, cfg: TrainConfig, multiple: int, device=None):
    """Flip / rotate / scale / translate one coarse sample; pads to a multiple of ``multiple``.
    The resampling runs on ``device`` (the GPU when training there).

    Returns torch tensors ``x`` (1, C, ...), ``y`` (1, 1, ...), ``w`` (1, 1, ...).
    """
    import torch
    import torch.nn.functional as F

    x = x.astype(np.float32)
    occ = occ.astype(np.float32)
    n_oar = len(site.oars)
    if cfg.augment and rng.random() < 0.5:
        # Left-right is array axis 1 in the canonical frame; paired organs swap channels.
        x, y, occ = x[:, :, ::-1], y[:, ::-1], occ[:, :, ::-1]
        perm = mirror_channel_order(site, x.shape[0])
        # occ holds the organs first (no CT and body channels), then the targets
        operm = [i - 2 for i in perm[2:2 + n_oar]] + list(range(n_oar, occ.shape[0]))
        x, occ = x[perm], occ[operm]
    shape = np.asarray(y.shape)
    extra = rng.integers(0, multiple, size=3) if cfg.augment else np.zeros(3, int)
    out_shape = pad_to_multiple(shape + extra, multiple)
    lo = [int(rng.integers(0, out_shape[k] - shape[k] + 1)) if cfg.augment else 0 for k in range(3)]
    x = pad_volume(np.ascontiguousarray(x), out_shape, lo)
    x[0][x[1] == 0] = -1.0
    y = pad_volume(np.ascontiguousarray(y), out_shape, lo)
    occ = pad_volume(np.ascontiguousarray(occ), out_shape, lo)
    stack = torch.from_numpy(np.concatenate([x, y[None], occ]))[None].to(device or "cpu")
    if cfg.augment:
        ang = math.radians(rng.uniform(-cfg.max_rot_deg, cfg.max_rot_deg))
        scale = 1.0 + rng.uniform(-cfg.max_scale, cfg.max_scale)
        shift_vox = rng.uniform(-1.0, 1.0, size=3)
        # Rotation in the axial plane (array axes 0, 1, same spacing) in voxel units,
        # mapped into grid_sample's normalised coordinates (which scale each axis by its size).
        a = np.eye(3)
        a[0, 0], a[0, 1], a[1, 0], a[1, 1] = math.cos(ang), -math.sin(ang), math.sin(ang), math.cos(ang)
        a /= scale
        half = np.asarray(out_shape, float) / 2.0
        a_norm = np.diag(1.0 / half) @ a @ np.diag(half)
        t_norm = shift_vox / half
        # grid_sample coordinates are ordered (W, H, D) = array axes (2, 1, 0).
        p = np.eye(3)[::-1]
        theta = np.concatenate([p @ a_norm @ p, (p @ t_norm)[:, None]], axis=1)
        grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32, device=stack.device)[None], list(stack.shape),
                             align_corners=False)
        stack[:, 0] += 1.0  # CT air is -1: shift so that zero padding means air
        stack = F.grid_sample(stack, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        stack[:, 0] -= 1.0
    c = x.shape[0]
    xs, ys, occs = stack[:, :c], stack[:, c:c + 1], stack[0, c + 1:]
    w = loss_weights(occs, xs[0, 1], cfg.alpha)[None, None]
    return xs, ys, w


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------
def predict_coarse(net, x: np.ndarray, device) -> np.ndarray:
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
        return net(xt)[0, 0].float().cpu().numpy()


def validate(net, val_cases: list, site: SiteSpec, device) -> dict:
    """Dose and DVH scores at full resolution, model as trained (``predict``) and with the
    published post-processing (target voxels set to their prescription)."""
    from core.prediction.scores import ScoreAccumulator

    acc, acc_rx = ScoreAccumulator(), ScoreAccumulator()
    net.eval()
    for v in val_cases:
        pred_full = full_dose_from_coarse(predict_coarse(net, v["x"], device) * site.reference_dose_gy,
                                          v["body_lo"], v["pad_shape"], v["body"], v["pool"])
        acc.add(pred_full, v["dose"], v["body"], v["structures"], v["spacing"])
        rx = np.where(v["ptv_rx"] > 0, v["ptv_rx"], pred_full)
        acc_rx.add(rx, v["dose"], v["body"], v["structures"], v["spacing"])
    net.train()
    r = acc.result()
    r2 = acc_rx.result()
    r["ptv_rx_dose_score_gy"] = r2["dose_score_gy"]
    r["ptv_rx_dvh_score_gy"] = r2["dvh_score_gy"]
    return r


def full_dose_from_coarse(pred_lo_gy, body_lo, pad_shape, body_crop, pool: int = POOL) -> np.ndarray:
    """Coarse prediction -> full-resolution crop (unpadded), zero outside the body."""
    body_full = np.zeros(pad_shape, dtype=bool)
    body_full[tuple(slice(0, s) for s in body_crop.shape)] = body_crop
    up = upsample_dose(np.maximum(pred_lo_gy, 0), body_lo, body_full, pool)
    return up[tuple(slice(0, s) for s in body_crop.shape)]


# --------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------
def weighted_mse(pred, y, w):
    """Weighted mean squared error: ``sum(w * (pred - y)**2) / sum(w)``."""
    return (w * (pred - y) ** 2).sum() / w.sum().clamp_min(1e-6)


def weighted_l1(pred, y, w):
    """Weighted mean absolute error: ``sum(w * |pred - y|) / sum(w)``."""
    return (w * (pred - y).abs()).sum() / w.sum().clamp_min(1e-6)


LOSSES = {"mse": weighted_mse, "l1": weighted_l1}


def train_step(net, opt, x, y, w, loss_fn=weighted_mse) -> float:
    """One optimiser step on one batch; returns the loss before the step."""
    loss = loss_fn(net(x), y, w)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _lr_at(step: int, total: int, cfg: TrainConfig, phases=None) -> float:
    """Cosine decay from ``cfg.lr`` to ``cfg.lr_min`` over ``total`` steps; with ``phases``
    (``[start_step, end_step, lr_max]`` rows, from ``--extend-epochs``) the last phase that
    has started decays from its own ``lr_max`` (a warm restart)."""
    start, end, lr_max = 0, total, cfg.lr
    for p0, p1, lr0 in phases or []:
        if step >= p0:
            start, end, lr_max = p0, p1, lr0
    t = min((step - start) / max(end - start, 1), 1.0)
    return cfg.lr_min + 0.5 * (lr_max - cfg.lr_min) * (1.0 + math.cos(math.pi * t))


def _load_start_weights(net, path, site: SiteSpec, pool: int) -> None:
    """Copy a model file's weights into ``net``: a new run that starts where another model
    ended (fresh optimiser, its own schedule), e.g. a second ensemble member branched off
    the shipped one at a higher learning rate. :class:`ModelError` unless the file was
    trained for the same inputs and network shape."""
    from core.errors import ModelError
    from core.prediction.model_io import load_model

    src, meta = load_model(path, "cpu", site=site.key)
    if list(meta.get("channels", [])) != channel_names(site) or int(meta.get("pool", POOL)) != pool:
        raise ModelError("the model to start from was trained for other inputs", path)
    if src.config != net.config:
        raise ModelError("the model to start from has another network shape than this run's", path)
    net.load_state_dict(src.state_dict())


def train(train_cache: str | Path, val_cache: str | Path, out_dir: str | Path, cfg: TrainConfig,
          resume: bool = False, device="cpu", progress=None, cancel=None, log=None,
          extend_epochs: int = 0, extend_lr: float | None = None, loss: str | None = None,
          alpha: float | None = None, snapshots: bool | None = None) -> dict:
    """Train (or resume) a model; writes ``model.pt`` (best), ``config.json``,
    ``checkpoint_last.pt`` and ``train_log.jsonl`` into ``out_dir``.

    ``extend_epochs`` (with ``resume``) adds epochs to the plan: a new cosine phase from
    ``extend_lr`` (default: the learning rate at the resume point, or 1e-4 if the run had
    already decayed below it) to ``lr_min`` over the remaining steps. ``loss`` ("mse" or
    "l1") overrides the configured loss from here on (a resumed run may fine-tune with L1);
    ``alpha`` likewise overrides the structures' loss weight (0: every body voxel counts
    the same, as in the OpenKBP dose score). ``snapshots=True`` keeps every epoch's weights
    as ``snapshots/epoch_NNN.pt`` (model files, for :mod:`core.prediction.average`), from
    here on and in later resumes (it is stored with the run's settings). A new run with
    ``cfg.init_from`` (a model file) starts from that model's weights, with a fresh
    optimiser and its own schedule.

    Returns ``{"epochs", "best_val_loss", "best_dose_score_gy", "best_dvh_score_gy", "seconds"}``
    (``best_val_loss`` is the best validation dose score, Gy).
    """
    import torch

    from core.io.atomic import atomic_write_bytes
    from core.prediction.cache import load_cache
    from core.prediction.model_io import model_meta, save_model
    from core.prediction.unet import CADUNet, UNetConfig

    log = log or (lambda s: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint_last.pt"
    site = get_site(cfg.site)
    state = None
    if resume:
        if not ckpt_path.is_file():
            raise InputError("nothing to resume: no checkpoint_last.pt", out_dir)
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        cfg = TrainConfig(**state["cfg"])
        log(f"resuming from epoch {state['epoch']}")
    if loss is not None:
        if loss not in LOSSES:
            raise InputError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
        if loss != cfg.loss:
            log(f"loss {cfg.loss} -> {loss}")
        cfg = TrainConfig(**{**asdict(cfg), "loss": loss})
    if alpha is not None and alpha != cfg.alpha:
        log(f"structure weight alpha {cfg.alpha:g} -> {alpha:g}")
        cfg = TrainConfig(**{**asdict(cfg), "alpha": float(alpha)})
    if snapshots is not None:
        cfg = TrainConfig(**{**asdict(cfg), "snapshots": bool(snapshots)})
    if cfg.alpha < 0:
        raise InputError(f"the structures' loss weight must be >= 0, got {cfg.alpha:g}")
    if cfg.loss not in LOSSES:
        raise InputError(f"unknown loss {cfg.loss!r}; choose one of {sorted(LOSSES)}")
    loss_fn = LOSSES[cfg.loss]
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(cfg.seed)
    chans = channel_names(site)
    ucfg = UNetConfig(in_channels=len(chans), out_channels=1, **cfg.unet)
    net = CADUNet(ucfg).to(device)
    if state is None and cfg.init_from:
        _load_start_weights(net, cfg.init_from, site, cfg.pool)
        log(f"starting from the weights of {cfg.init_from}")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    t_load = time.perf_counter()
    tr_raw = load_cache(train_cache, site.key)
    if cfg.limit_train:
        tr_raw = tr_raw[:cfg.limit_train]
    train_cases = []
    for i, c in enumerate(tr_raw):
        check_cancel(cancel)
        train_cases.append(prepare_train_case(c, site, cfg.pool))
        report(progress, i + 1, len(tr_raw) + cfg.n_val, "preparing cases")
    del tr_raw
    va_raw = load_cache(val_cache, site.key)[:cfg.n_val]
    val_cases = [prepare_val_case(c, site, ucfg.multiple, cfg.pool) for c in va_raw]
    del va_raw
    log(f"prepared {len(train_cases)} train / {len(val_cases)} val cases in {time.perf_counter() - t_load:.0f} s; "
        f"network {net.n_parameters()} parameters")

    epoch0, best, history, planned_epochs, elapsed_prev = 0, None, [], cfg.epochs, 0.0
    phases = []
    n = len(train_cases)
    if state is not None:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        epoch0, best, history = state["epoch"], state["best"], state["history"]
        planned_epochs, elapsed_prev = state["planned_epochs"], state["elapsed_s"]
        phases = [list(p) for p in state.get("phases", [])]
        if extend_epochs > 0:
            now = epoch0 * n
            lr_now = _lr_at(now, planned_epochs * n, cfg, phases)
            lr0 = extend_lr if extend_lr else (lr_now if lr_now >= 1e-4 else 1e-4)
            if not phases:  # make the original schedule explicit so it keeps its length
                phases.append([0, planned_epochs * n, float(cfg.lr)])
            planned_epochs += int(extend_epochs)
            phases.append([now, planned_epochs * n, float(lr0)])
            log(f"extending to {planned_epochs} epochs: cosine from {lr0:.2e} over the remaining steps")
    t0 = time.perf_counter() - elapsed_prev
    last_ckpt = time.perf_counter()
    step_times = []

    def save_ckpt(epoch_done: int):
        import io
        buf = io.BytesIO()
        torch.save({"cfg": asdict(cfg), "model": net.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": epoch_done, "best": best, "history": history, "planned_epochs": planned_epochs,
                    "phases": phases,
                    "elapsed_s": time.perf_counter() - t0}, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())

    net.train()
    epoch = epoch0
    while epoch < planned_epochs:
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(n)
        losses = []
        te = time.perf_counter()
        for k, idx in enumerate(order):
            check_cancel(cancel)
            ts = time.perf_counter()
            c = train_cases[int(idx)]
            x, y, w = augment_sample(c["x"], c["y"], c["occ"], rng, site, cfg, ucfg.multiple, device)
            step = epoch * n + k
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, planned_epochs * n, cfg, phases)
            losses.append(train_step(net, opt, x, y, w, loss_fn))
            step_times.append(time.perf_counter() - ts)
            done = epoch * n + k + 1
            report(progress, done, planned_epochs * n, f"epoch {epoch + 1}/{planned_epochs}",
                   loss=float(np.mean(losses[-20:])), lr=opt.param_groups[0]["lr"])
            if time.perf_counter() - last_ckpt > cfg.checkpoint_every_s:
                # Mid-epoch safety copy: resuming restarts this epoch from its start (same steps).
                save_ckpt(epoch)
                last_ckpt = time.perf_counter()
        train_s = time.perf_counter() - te
        scores = validate(net, val_cases, site, device)
        epoch += 1
        rec = {"epoch": epoch, "loss": cfg.loss, "train_loss": float(np.mean(losses)), "lr": opt.param_groups[0]["lr"],
               "epoch_train_s": train_s, "elapsed_s": time.perf_counter() - t0, **scores}
        history.append(rec)
        improved = best is None or scores["dose_score_gy"] < best["dose_score_gy"]
        meta = model_meta(net, site, chans, cfg.pool, "predict", info={
            "epoch": epoch, "val_subset": cfg.n_val, "val_dose_score_gy": scores["dose_score_gy"],
            "val_dvh_score_gy": scores["dvh_score_gy"], "train_config": asdict(cfg),
            "train_elapsed_s": rec["elapsed_s"]})
        if improved:
            best = dict(rec)
            save_model(out_dir, net, meta)
        if cfg.snapshots:
            (out_dir / "snapshots").mkdir(exist_ok=True)
            save_model(out_dir / "snapshots" / f"epoch_{epoch:03d}.pt", net, meta, write_config=False)
        if epoch == 1 and cfg.time_budget_min and epoch0 == 0:
            # Fix the schedule once, from the first epoch's measured time, so the cosine
            # decay ends inside the budget; stored in the checkpoint so a resume keeps it.
            per_epoch = rec["elapsed_s"]
            planned_epochs = max(2, min(cfg.epochs, int(cfg.time_budget_min * 60.0 / per_epoch)))
            log(f"time budget {cfg.time_budget_min:.0f} min at {per_epoch:.0f} s/epoch: {planned_epochs} epochs")
        save_ckpt(epoch)
        last_ckpt = time.perf_counter()
        with open(out_dir / "train_log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        log(f"epoch {epoch}/{planned_epochs} loss {rec['train_loss']:.5f} val dose {scores['dose_score_gy']:.3f} "
            f"dvh {scores['dvh_score_gy']:.3f} (ptv=rx: {scores['ptv_rx_dose_score_gy']:.3f}/"
            f"{scores['ptv_rx_dvh_score_gy']:.3f}) step {np.median(step_times[-n:]):.2f}s "
            f"elapsed {rec['elapsed_s'] / 60:.1f} min{' *best*' if improved else ''}")
    return {"epochs": epoch, "best_val_loss": best["dose_score_gy"] if best else None,
            "best_dose_score_gy": best["dose_score_gy"] if best else None,
            "best_dvh_score_gy": best["dvh_score_gy"] if best else None,
            "seconds": time.perf_counter() - t0}
