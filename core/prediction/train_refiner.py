"""Training of the full-resolution refiner (:mod:`core.prediction.refiner`) from the compact cache.

Recipe:

- input dose: each case's reference dose pooled to the coarse grid exactly as the U-Net
  sees it (mask-normalised 2x2x2 averages from the crop's first voxel), with, in
  ``1 - p_clean`` of the samples, smooth random errors of the size the U-Net makes
  (multiplicative ``noise_mult`` and additive ``noise_add_gy``, Gaussian fields smoothed
  over ``noise_sigma_vox`` coarse voxels), then up-sampled the way inference does. Why:
  the refiner must restore the fall-off the coarse grid loses without trusting the
  coarse values more than a prediction deserves;
- optionally (``stacked_dir``, ``p_stacked`` of the samples) the coarse network's own
  prediction of the case instead (:mod:`core.prediction.stacking`), its error amplified
  by up to ``stacked_gain``: then the refiner also learns that network's systematic
  mistakes, and belongs to it;
- target: the reference dose / the site's reference dose, weighted L1 (the OpenKBP dose
  score is a mean absolute error) with the U-Net's voxel weights;
- patches of ``patch`` voxels a side, ``near_target_frac`` of them centred within
  ``near_target_mm`` of a target surface (where the coarse grid loses most), the rest
  anywhere in the body; left-right flip with the paired organs swapped;
- Adam, cosine decay from ``lr`` to ``lr_min`` over ``steps``; a resumable checkpoint
  every ``checkpoint_every_s`` seconds and at the end.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.progress import check_cancel, report
from core.prediction.preprocess import (POOL, full_res_channels, mirror_channel_order, pad_to_multiple, pad_volume,
                                        pool_dose, pool_inputs, upsample_dose)
from core.prediction.sites import SiteSpec, get_site


@dataclass
class RefinerTrainConfig:
    """Refiner training settings; the defaults are the shipped refiner's recipe."""

    site: str = "hn"
    steps: int = 12000
    patch: int = 48
    patches_per_case: int = 4
    lr: float = 1e-3
    lr_min: float = 1e-5
    seed: int = 0
    p_clean: float = 0.3
    noise_mult: float = 0.08
    noise_add_gy: float = 1.5
    noise_sigma_vox: float = 2.0
    near_target_frac: float = 0.7
    near_target_mm: float = 15.0
    alpha: float = 1.0
    pool: int = POOL
    width: int = 16
    dilations: tuple = (1, 2, 4, 2, 1)
    threads: int | None = None
    checkpoint_every_s: float = 300.0
    limit_train: int | None = None
    stacked_dir: str | None = None
    p_stacked: float = 0.0
    stacked_gain: float = 0.0
    init_from: str | None = None


def coarse_dose_up(dose_gy: np.ndarray, body: np.ndarray, pool: int, rng=None,
                   cfg: RefinerTrainConfig | None = None) -> np.ndarray:
    """The reference dose as the refiner sees a prediction: pooled, optionally perturbed,
    up-sampled (Gy, the crop's shape)."""
    from scipy.ndimage import gaussian_filter

    shape = pad_to_multiple(body.shape, pool)
    bodyp = pad_volume(body, shape)
    lo = pool_dose(pad_volume(dose_gy, shape), bodyp, pool)
    body_lo = pool_inputs(bodyp[None].astype(np.float32), pool)[0]
    if rng is not None and cfg is not None and rng.random() >= cfg.p_clean:
        def field_():
            f = gaussian_filter(rng.standard_normal(lo.shape).astype(np.float32), cfg.noise_sigma_vox)
            return f / max(float(f.std()), 1e-6)
        lo = np.maximum(lo * (1 + cfg.noise_mult * field_()) + cfg.noise_add_gy * field_(), 0)
        lo = np.where(body_lo > 0, lo, 0).astype(np.float32)
    crop = tuple(slice(0, s) for s in body.shape)
    return upsample_dose(lo, body_lo, bodyp, pool)[crop]


def _stacked_dose_up(c, cfg: RefinerTrainConfig, rng) -> np.ndarray:
    """The coarse model's own up-sampled prediction of a training case (Gy), its error
    amplified by a random factor in ``[1, 1 + stacked_gain]``: the model fits its training
    cases more closely than it will fit a new patient."""
    from core.prediction.stacking import load_coarse_prediction

    up = load_coarse_prediction(cfg.stacked_dir, c.pid, c.dose_gy.shape)
    g = 1.0 + cfg.stacked_gain * float(rng.random())
    return np.where(c.body, np.maximum(c.dose_gy + g * (up - c.dose_gy), 0), 0).astype(np.float32)


def _sample_case(c, site: SiteSpec, rng, cfg: RefinerTrainConfig):
    """Whole-case arrays of one cached case: anatomy (C, ...), dose_up / ref, target / ref,
    voxel weights, and where a patch may be centred near a target."""
    from core.prediction.train import _canonical_from_cache, loss_weights

    cc = _canonical_from_cache(c, site)
    anat = full_res_channels(cc, site)
    ref = np.float32(site.reference_dose_gy)
    if cfg.stacked_dir and rng.random() < cfg.p_stacked:
        up = _stacked_dose_up(c, cfg, rng) / ref
    else:
        up = coarse_dose_up(c.dose_gy, c.body, cfg.pool, rng, cfg) / ref
    n_oar = len(site.oars)
    occ = np.concatenate([anat[2:2 + n_oar], np.stack([c.mask(n_oar + j) for j in range(len(site.targets))])
                          .astype(np.float32)])
    w = loss_weights(occ, c.body.astype(np.float32), cfg.alpha).astype(np.float32)
    dist_mm = anat[-1] * 50.0  # the signed-distance channel is mm / 50, clipped to [-1, 3]
    near = np.argwhere((np.abs(dist_mm) <= cfg.near_target_mm) & c.body)
    return anat, up.astype(np.float32), (c.dose_gy / ref).astype(np.float32), w, near


def _patch_slices(shape, center, size):
    out = []
    for n, ctr in zip(shape, center):
        if n <= size:
            out.append(slice(0, n))
        else:
            a = int(np.clip(ctr - size // 2, 0, n - size))
            out.append(slice(a, a + size))
    return tuple(out)


def train_refiner(cache_path, out_dir, cfg: RefinerTrainConfig | None = None, resume: bool = False,
                  progress=None, cancel=None, log=print, device="cpu") -> dict:
    """Train a refiner on the cached training cases; writes ``refiner.pt`` and
    ``checkpoint_refiner.pt`` into ``out_dir``. Returns a summary dict."""
    import torch

    device = torch.device(device)

    from core.prediction.cache import load_cache
    from core.prediction.refiner import RefinerConfig, build_refiner, save_refiner

    cfg = cfg or RefinerTrainConfig()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    site = get_site(cfg.site)
    cases = load_cache(cache_path, site.key)
    if cfg.limit_train:
        cases = cases[:cfg.limit_train]
    if not cases:
        raise InputError("the training cache holds no cases", cache_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    net = build_refiner(RefinerConfig(11, cfg.width, tuple(cfg.dilations))).to(device)
    if cfg.init_from:
        from core.prediction.refiner import load_refiner, widen_from
        init, _ = load_refiner(cfg.init_from, device)
        widen_from(net, init)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step, seconds = 0, 0.0
    ck = out / "checkpoint_refiner.pt"
    if resume and ck.exists():
        blob = torch.load(ck, map_location=device, weights_only=False)
        was = blob.get("config", {})
        if (int(was.get("width", cfg.width)) != cfg.width
                or tuple(was.get("dilations", cfg.dilations)) != tuple(cfg.dilations)):
            raise InputError(f"this checkpoint is a refiner of width {was.get('width')} and dilations "
                             f"{tuple(was.get('dilations', ()))}: resume it with the same settings", ck)
        net.load_state_dict(blob["model"])
        opt.load_state_dict(blob["optim"])
        step, seconds = int(blob["step"]), float(blob["seconds"])
    mirror = mirror_channel_order(site)
    stacked_on = None
    if cfg.stacked_dir and cfg.p_stacked > 0:
        from core.prediction.stacking import source_of
        stacked_on = source_of(cfg.stacked_dir) or None
        if stacked_on is None:
            raise InputError("no coarse predictions here: write them first (core.prediction.stacking)",
                             cfg.stacked_dir)

    def save(tag):
        from core.io.atomic import atomic_write_bytes
        import io
        buf = io.BytesIO()
        torch.save({"model": net.state_dict(), "optim": opt.state_dict(), "step": step, "seconds": seconds,
                    "config": asdict(cfg)}, buf)
        atomic_write_bytes(ck, buf.getvalue())
        save_refiner(out / "refiner.pt", net, {"site": site.key, "pool": cfg.pool, "steps": step,
                                               "train_seconds": seconds, "recipe": asdict(cfg),
                                               "reference_dose_gy": float(site.reference_dose_gy),
                                               "stacked_on": stacked_on})
        log(json.dumps({"saved": tag, "step": step, "seconds": round(seconds, 1)}))

    t_ck = time.perf_counter()
    running = []
    while step < cfg.steps:
        check_cancel(cancel)
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, step])
        c = cases[int(rng.integers(len(cases)))]
        anat, up, y, w, near = _sample_case(c, site, rng, cfg)
        body_idx = np.argwhere(w > 0)
        for _ in range(cfg.patches_per_case):
            if step >= cfg.steps:
                break
            if len(near) and rng.random() < cfg.near_target_frac:
                center = near[int(rng.integers(len(near)))]
            else:
                center = body_idx[int(rng.integers(len(body_idx)))]
            sl = _patch_slices(y.shape, center, cfg.patch)
            a, u, t, ww = anat[(slice(None),) + sl], up[sl], y[sl], w[sl]
            if rng.random() < 0.5:
                a, u, t, ww = a[:, :, ::-1], u[:, ::-1], t[:, ::-1], ww[:, ::-1]
                a = a[mirror]
            at, ut, tt, wt = (torch.from_numpy(np.ascontiguousarray(v)).to(device)
                              for v in (a[None], u[None, None], t[None, None], ww[None, None]))
            lr = cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            pred = net(at, ut)
            loss = (wt * (pred - tt).abs()).sum() / wt.sum().clamp_min(1e-6)
            base = (wt * (ut - tt).abs()).sum() / wt.sum().clamp_min(1e-6)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            running.append((float(loss.detach().cpu()), float(base.cpu())))
        seconds += time.perf_counter() - t0
        if step % 50 < cfg.patches_per_case or step >= cfg.steps:
            r = np.mean(running[-200:], axis=0)
            log(json.dumps({"step": step, "loss": round(float(r[0]), 5), "unrefined": round(float(r[1]), 5),
                            "lr": lr, "seconds": round(seconds, 1)}))
        report(progress, step, cfg.steps, "training the refiner")
        if time.perf_counter() - t_ck > cfg.checkpoint_every_s:
            save("periodic")
            t_ck = time.perf_counter()
    save("final")
    r = np.mean(running[-200:], axis=0) if running else (float("nan"), float("nan"))
    return {"steps": step, "seconds": seconds, "path": str(out / "refiner.pt"),
            "loss": float(r[0]), "unrefined_loss": float(r[1])}
