"""Prediction model files: one ``model.pt`` (weights + everything needed to use them)
and a human-readable ``config.json`` copy beside it; optionally further ensemble members
``model_2.pt``, ``model_3.pt`` ... beside it, whose predictions are averaged with its own.

A model file is a ``torch.save`` dict loaded with ``weights_only=True`` (no pickled
code runs): ``format``, ``version``, ``arch``, ``site``, ``unet`` (the
:class:`~core.prediction.unet.UNetConfig` fields), ``channels``, ``pool``,
``reference_dose_gy``, ``ptv_mode`` and ``state_dict``; plus free ``info``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from core.errors import ModelError

FORMAT = "openatp-dose-prediction"
VERSION = 1
ARCH = "cad-unet"
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.json"


def model_meta(net, site, channels, pool: int, ptv_mode: str = "predict", info: dict | None = None) -> dict:
    return {"format": FORMAT, "version": VERSION, "arch": ARCH, "site": site.key,
            "unet": net.config.to_dict(), "channels": list(channels), "pool": int(pool),
            "reference_dose_gy": float(site.reference_dose_gy), "ptv_mode": ptv_mode, "info": dict(info or {})}


def save_model(path: str | Path, net, meta: dict, write_config: bool = True) -> Path:
    """Write ``net`` with ``meta`` to ``path`` (a folder gets ``model.pt`` + ``config.json``),
    atomically; ``write_config=False`` for an ensemble member (the folder's config.json
    describes ``model.pt``)."""
    import torch

    from core.io.atomic import atomic_write_bytes, atomic_write_text

    path = Path(path)
    target = path / MODEL_FILE if path.suffix != ".pt" else path
    blob = dict(meta)
    blob["state_dict"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(target, buf.getvalue())
    if write_config:
        atomic_write_text(target.with_name(CONFIG_FILE), json.dumps(meta, indent=2, default=str) + "\n")
    return target


def member_paths(target: str | Path) -> list[Path]:
    """The ensemble members beside a ``model.pt``: ``model_2.pt``, ``model_3.pt`` ... in order."""
    target = Path(target)
    if target.name != MODEL_FILE:
        return []
    found = [p for p in target.parent.glob("model_*.pt") if p.stem.split("_", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.stem.split("_", 1)[1]))


def resolve_model_path(path: str | Path) -> Path:
    path = Path(path)
    target = path / MODEL_FILE if path.is_dir() else path
    if not target.is_file():
        raise ModelError("no trained model weights here (expected model.pt)", target)
    return target


def load_model(path: str | Path, device="cpu", site: str | None = None):
    """Load a model file (or a folder holding ``model.pt``).

    Returns ``(net, meta)`` with ``net`` in eval mode on ``device``. Raises
    :class:`ModelError` for a missing or corrupt file, another format or architecture,
    another site, or weights that do not fit the declared network.
    """
    import torch

    from core.prediction.unet import CADUNet, UNetConfig

    target = resolve_model_path(path)
    try:
        blob = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ModelError(f"the model weights file is damaged or not a model file ({type(e).__name__})",
                         target) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelError("not an OpenATP dose-prediction model file", target)
    if blob.get("version") != VERSION:
        raise ModelError(f"model file version {blob.get('version')} is not supported (expected {VERSION})", target)
    if blob.get("arch") != ARCH:
        raise ModelError(f"model architecture '{blob.get('arch')}' is not {ARCH}", target)
    if site is not None and blob.get("site") != site:
        raise ModelError(f"this model is for site '{blob.get('site')}', not '{site}'", target)
    try:
        cfg = UNetConfig.from_dict(dict(blob["unet"]))
        net = CADUNet(cfg)
        net.load_state_dict(blob["state_dict"], strict=True)
    except ModelError:
        raise
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise ModelError(f"the weights do not fit the declared network: {first}", target) from None
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return net.to(device).eval(), meta
