"""The coarse network's own predictions of the training cases, for a refiner trained on them.

Why: the refiner trained only on the reference dose with synthetic errors
(:mod:`core.prediction.train_refiner`) restores resolution, but it cannot learn the
coarse network's systematic mistakes. With that refiner the shipped network predicted
1.2-1.5 Gy too little within 10 mm outside the targets on the validation cases, and
0.8-1.1 Gy on its training cases (medians). A
refiner that also sees the network's real predictions of the training cases learns
such corrections. Those predictions are written once per case, with the test-time
settings the model file asks for (flip, framings), exactly as inference makes them.

A refiner trained this way belongs to the network whose predictions it saw: the
folder records a digest of that network's weights and the test-time settings, and the
refiner's metadata carries them; the predictor warns when they do not match the model.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.progress import check_cancel, report

SOURCE_FILE = "source.json"


def weights_digest(nets) -> str:
    """SHA-256 of the networks' weights (names and values), not of their file: installing a
    model rewrites its metadata but not what it predicts."""
    h = hashlib.sha256()
    for net in nets:
        for name, t in sorted(net.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def network_source(predictor) -> dict:
    """What a stacked refiner depends on: the network's weights and the test-time settings
    its predictions were made with."""
    return {"weights_sha256": weights_digest(predictor.nets), "tta": predictor.default_tta,
            "tta_framings": predictor.tta_framings}


def same_network(a: dict, b: dict) -> bool:
    """Whether two :func:`network_source` records describe the same predictions."""
    return all(a.get(k) == b.get(k) for k in ("weights_sha256", "tta", "tta_framings"))


def coarse_predictions(model_path, cache_path, out_dir, site: str = "hn", device="cpu", progress=None,
                       cancel=None, log=print) -> dict:
    """Write ``out_dir/<pid>.npz`` (``up``: float16 Gy, the cached crop's shape) for every
    cached case: the network's up-sampled prediction before any refiner. Cases already
    written for the same network and test-time settings are kept, so an interrupted run
    continues.
    Returns ``{"n_cases", "written", "seconds", "weights_sha256", "dose_score_gy"}``; the
    dose score is the mean absolute error over each body of the cases written now."""
    from core.io.atomic import atomic_save_npz
    from core.prediction.cache import load_cache
    from core.prediction.predict import DosePredictor
    from core.prediction.preprocess import full_res_channels
    from core.prediction.train import _canonical_from_cache

    model_path = Path(model_path)
    if model_path.is_dir():
        model_path = model_path / "model.pt"
    predictor = DosePredictor(model_path, device, site, refiner=False)
    source = {"model": str(model_path), **network_source(predictor)}
    digest = source["weights_sha256"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = out / SOURCE_FILE
    if src.exists():
        if not same_network(json.loads(src.read_text()), source):
            raise InputError("this folder holds another network's predictions (or other test-time settings): "
                             "choose a new folder", out)
    else:
        from core.io.atomic import atomic_write_text
        atomic_write_text(src, json.dumps(source, indent=1))
    cases = load_cache(cache_path, predictor.site.key)
    t0, written, errors = time.perf_counter(), 0, []
    for i, c in enumerate(cases):
        check_cancel(cancel)
        f = out / f"{c.pid}.npz"
        if f.exists():
            continue
        cc = _canonical_from_cache(c, predictor.site)
        up = predictor.coarse_dose(cc, full_res_channels(cc, predictor.site), predictor.default_tta)
        atomic_save_npz(f, up=up.astype(np.float16))
        errors.append(float(np.abs(up - c.dose_gy)[c.body].mean()))
        written += 1
        report(progress, i + 1, len(cases), "predicting the training cases")
    seconds = time.perf_counter() - t0
    r = {"n_cases": len(cases), "written": written, "seconds": seconds, "weights_sha256": digest,
         "dose_score_gy": float(np.mean(errors)) if errors else None}
    log(json.dumps({"coarse_predictions": r}))
    return r


def load_coarse_prediction(folder, pid: str, shape) -> np.ndarray:
    """One case's stored prediction (float32 Gy); :class:`InputError` if missing or of another shape."""
    f = Path(folder) / f"{pid}.npz"
    try:
        with np.load(f) as z:
            up = z["up"].astype(np.float32)
    except (OSError, KeyError, ValueError) as e:
        raise InputError(f"the stored prediction of {pid} cannot be read ({type(e).__name__})", f) from None
    if up.shape != tuple(shape):
        raise InputError(f"the stored prediction of {pid} has another shape than its cached case", f)
    return up


def source_of(folder) -> dict:
    f = Path(folder) / SOURCE_FILE
    return json.loads(f.read_text()) if f.exists() else {}
