"""Dose prediction for one patient with a trained model.

``DosePredictor(model_path, device).predict(patient)`` reads the patient into the
model's canonical frame (:mod:`.preprocess`), runs the network at half resolution,
up-samples (mask-normalised) and puts the dose back on the patient's own grid.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import InputError, ModelError
from core.progress import check_cancel, report
from core.prediction.sites import get_site

MODELS_ROOT = Path(__file__).resolve().parents[2] / "resources" / "models"


def default_model_path(site: str) -> Path:
    """``resources/models/<site>/`` of this checkout."""
    return MODELS_ROOT / get_site(site).key


@dataclass(eq=False)
class PredictionResult:
    """A predicted dose and how it was made.

    Attributes
    ----------
    dose : core.patient.Dose
        On the patient's grid, Gy, zero outside the body.
    timings_s : dict
        ``load_model``, ``preprocess``, ``network``, ``postprocess``, ``total`` (seconds).
    warnings : list of str
        Structures the model did not use and why; a refiner that was trained on another
        network's predictions.
    unknown_structures : list of str
    model : dict
        Model file path, site, architecture summary and its recorded validation scores.
    """

    dose: object
    timings_s: dict
    warnings: list = field(default_factory=list)
    unknown_structures: list = field(default_factory=list)
    model: dict = field(default_factory=dict)


class DosePredictor:
    """A loaded model, ready to predict.

    Parameters
    ----------
    model_path : str or Path, optional
        ``model.pt`` or the folder holding it; default ``resources/models/<site>/``.
    device : str or torch.device
        ``cpu``, ``cuda``, ``auto`` or a ``torch.device``.
    site : str
    extra_members : sequence of paths, optional
        Further models whose predictions are averaged with this one's (besides the
        ``model_2.pt`` ... members found next to ``model.pt``), e.g. to evaluate an
        ensemble before installing it.
    refiner : path, False or None
        The full-resolution refiner (:mod:`core.prediction.refiner`) applied after
        up-sampling: ``None`` uses ``refiner.pt`` next to ``model.pt`` when there is one,
        ``False`` none, a path that file.
    """

    def __init__(self, model_path=None, device="cpu", site: str = "hn", extra_members=(), refiner=None):
        import torch

        from core.device import resolve_device
        from core.prediction.model_io import load_model, member_paths, resolve_model_path

        t0 = time.perf_counter()
        self.site = get_site(site)
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        self.path = resolve_model_path(model_path if model_path is not None else default_model_path(site))
        self.net, self.meta = load_model(self.path, self.device, site=self.site.key)
        self.nets, self.member_files = [self.net], [self.path]
        for mp in member_paths(self.path) + [resolve_model_path(m) for m in extra_members]:
            if any(mp.resolve() == f.resolve() for f in self.member_files):
                continue  # a member found beside model.pt and also named counts once
            net, meta = load_model(mp, self.device, site=self.site.key)
            same = ("channels", "pool", "reference_dose_gy")
            if (any(meta.get(k) != self.meta.get(k) for k in same)
                    or net.config.multiple != self.net.config.multiple):
                raise ModelError("this ensemble member's inputs or output scale differ from model.pt's", mp)
            self.nets.append(net)
            self.member_files.append(mp)
        from core.prediction.preprocess import POOL, channel_names
        self.pool = int(self.meta.get("pool", POOL))
        if list(self.meta.get("channels", [])) != channel_names(self.site) or self.meta.get("pool") not in (1, POOL):
            raise ModelError("the model's input channels do not match this version's preprocessing", self.path)
        if self.meta.get("ptv_mode", "predict") not in ("predict", "prescription"):
            raise ModelError(f"unknown ptv_mode '{self.meta.get('ptv_mode')}' in the model file", self.path)
        self.refiner, self.refiner_path = None, None
        self.load_warnings, stacked_on = [], None
        if refiner is None and (self.path.parent / "refiner.pt").exists():
            refiner = self.path.parent / "refiner.pt"
        if refiner:
            from core.prediction.refiner import load_refiner
            self.refiner, rmeta = load_refiner(refiner, self.device)
            self.refiner_path = Path(refiner)
            if (self.refiner.config.in_channels != len(channel_names(self.site))
                    or int(rmeta.get("pool", self.pool)) != self.pool
                    or float(rmeta.get("reference_dose_gy", self.meta["reference_dose_gy"]))
                    != float(self.meta["reference_dose_gy"])):
                raise ModelError("the refiner was trained for other inputs than this model's", self.refiner_path)
            stacked_on = rmeta.get("stacked_on")
        self.default_tta = bool(self.meta.get("tta", False))
        # test-time framings of the coarse input (with tta): the network normalises each
        # volume as a whole (instance norm), so the same patient placed at another offset in
        # its padded box is a second opinion. Measured on the 33 validation cases with the
        # flip: dose score 3.214 -> 3.178 Gy with 2 framings, 3.177 with 4 (model card).
        self.tta_framings = max(1, int(self.meta.get("tta_framings", 1)))
        self.load_warnings += _stacking_mismatch(stacked_on, self)
        self.load_s = time.perf_counter() - t0

    def describe(self) -> dict:
        info = self.meta.get("info", {})
        return {"path": str(self.path), "site": self.meta["site"], "arch": self.meta["arch"],
                "parameters": int(sum(n.n_parameters() for n in self.nets)), "members": len(self.nets),
                "ptv_mode": self.meta.get("ptv_mode", "predict"), "tta_default": self.default_tta,
                "tta_framings": self.tta_framings,
                "refiner": str(self.refiner_path) if self.refiner is not None else None,
                "val_dose_score_gy": info.get("val_dose_score_gy"), "val_dvh_score_gy": info.get("val_dvh_score_gy")}

    def _forward(self, x: np.ndarray, tta: bool) -> np.ndarray:
        """Coarse prediction (Gy) for coarse inputs ``x`` (C, b0, b1, b2): the mean over the
        members, and with ``tta`` over the left-right mirror and ``tta_framings`` framings."""
        m = self.net.config.multiple
        offsets = [(k * m) // self.tta_framings for k in range(self.tta_framings)] if tta else [0]
        out = None
        for o in offsets:
            y = self._forward_framed(_framed(x, o, m) if o else x, tta)
            if o:
                y = y[o:o + x.shape[1], o:o + x.shape[2], o:o + x.shape[3]]
            out = y if out is None else out + y
        return (out / len(offsets)).astype(np.float32)

    def _forward_framed(self, x: np.ndarray, tta: bool) -> np.ndarray:
        import torch

        from core.prediction.preprocess import mirror_channel_order

        ref = float(self.meta["reference_dose_gy"])
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)
            inputs = [(xt, False)]
            if tta:
                # Left-right mirror (array axis 1 of the canonical frame; paired organs swap),
                # the one flip the model was trained with.
                inputs.append((torch.flip(xt[:, mirror_channel_order(self.site, x.shape[0])], dims=[3]), True))
            out = None
            for net in self.nets:
                for xi, flipped in inputs:
                    o = net(xi)[0, 0]
                    o = torch.flip(o, dims=[1]) if flipped else o
                    out = o if out is None else out + o
            out = out / (len(self.nets) * len(inputs))
            return (out.float().cpu().numpy() * ref).astype(np.float32)

    def coarse_dose(self, case, full: np.ndarray, tta: bool, timings: dict | None = None) -> np.ndarray:
        """The network's prediction of a canonical ``case`` (``full``: its full-resolution
        channels) up-sampled to the crop (Gy), before the refiner. ``timings`` gets the
        pooling's seconds added to "preprocess" and the network's under "network"."""
        from core.prediction.preprocess import model_inputs, upsample_dose

        t0 = time.perf_counter()
        x, body_lo, pad_shape = model_inputs(case, self.site, self.net.config.multiple, pool=self.pool, full=full)
        t1 = time.perf_counter()
        pred_lo = np.maximum(self._forward(x, tta), 0)
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)
        if timings is not None:
            timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0)
            timings["network"] = time.perf_counter() - t1
        body_full = np.zeros(pad_shape, dtype=bool)
        crop = tuple(slice(0, s) for s in case.body.shape)
        body_full[crop] = case.body
        return upsample_dose(pred_lo, body_lo, body_full, self.pool)[crop]

    def predict(self, patient, tta: bool | None = None, progress=None, cancel=None) -> PredictionResult:
        """Predict the dose of ``patient`` (a :class:`core.patient.Patient`).

        ``tta``: average with the left-right mirror (the network's and the refiner's
        passes alike); ``None`` follows the model file (the
        shipped model was measured better with it, see its model card).
        Raises :class:`InputError` for a patient without CT, target or prescription.
        """
        from core.patient import Dose
        from core.prediction.preprocess import (canonical_to_patient, full_res_channels, mirror_channel_order,
                                                patient_to_canonical)

        tta = self.default_tta if tta is None else bool(tta)

        t = {"load_model": self.load_s}
        t0 = time.perf_counter()
        report(progress, 0, 4, "reading the patient into the model frame")
        case, mapping, mgrid, lo = patient_to_canonical(patient, self.site)
        full = full_res_channels(case, self.site)
        t["preprocess"] = time.perf_counter() - t0
        check_cancel(cancel)
        report(progress, 1, 4, "running the network")
        dose_crop = self.coarse_dose(case, full, tta, t)
        check_cancel(cancel)
        report(progress, 2, 4, "back to the patient grid")
        t2 = time.perf_counter()
        if self.refiner is not None:
            from core.prediction.refiner import refine
            dose_crop = refine(self.refiner, full, dose_crop, case.body, float(self.meta["reference_dose_gy"]),
                               self.device, mirror_perm=mirror_channel_order(self.site, full.shape[0]) if tta else None)
        if self.meta.get("ptv_mode") == "prescription":
            rx = case.ptv_dose_gy()
            dose_crop = np.where(rx > 0, rx, dose_crop)
        body_p = np.asarray(patient.external_mask(), dtype=bool)
        dose = canonical_to_patient(dose_crop, case, mgrid, lo, patient.grid, body_p)
        t["postprocess"] = time.perf_counter() - t2
        t["total"] = sum(v for k, v in t.items())
        report(progress, 4, 4, "done")
        return PredictionResult(Dose(dose, patient.grid, label="predicted"), t,
                                list(mapping.warnings) + self.load_warnings, list(mapping.unknown), self.describe())


def predict_dose(patient, site: str = "hn", model_path=None, device="cpu", tta: bool | None = None,
                 progress=None, cancel=None) -> PredictionResult:
    """One-call convenience: load the site's model and predict ``patient``'s dose."""
    if patient is None:
        raise InputError("no patient to predict")
    return DosePredictor(model_path, device, site).predict(patient, tta=tta, progress=progress, cancel=cancel)


def _stacking_mismatch(stacked_on, predictor) -> list:
    """A warning when the refiner learnt the corrections of another network (or of other
    test-time settings) than the predictor runs: it still sharpens, but its learnt bias
    corrections may not fit."""
    if not stacked_on:
        return []
    from core.prediction.stacking import network_source, same_network

    if same_network(stacked_on, network_source(predictor)):
        return []
    return [f"the refiner {predictor.refiner_path.name} was trained on the predictions of "
            "another network or other test-time settings than this model's"]


def _framed(x: np.ndarray, offset: int, multiple: int) -> np.ndarray:
    """``x`` (C, b0, b1, b2) placed at ``offset`` on every axis of a box one ``multiple``
    larger, padded as the model inputs are: air (-1) in the CT channel, 0 elsewhere."""
    from core.prediction.preprocess import pad_volume

    shape, lo = tuple(n + multiple for n in x.shape[1:]), (offset,) * 3
    big = pad_volume(np.asarray(x, np.float32), shape, lo)
    big[0][~pad_volume(np.ones(x.shape[1:], bool), shape, lo)] = -1.0
    return big
