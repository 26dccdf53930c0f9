"""Full-resolution refinement of the coarse dose prediction (super-resolution stage).

Why: the U-Net predicts on a grid pooled 2x2x2 (about 7.8 x 7.8 x 5 mm) so that it
trains on a 2-core CPU. Up-sampling that coarse dose loses the shoulder of the dose
fall-off at the target edge: even the *reference* dose taken down and back up scores
0.86 Gy on the validation cases, and a perfect restoration of the lost detail would
move the shipped model's dose score from 3.45 to 3.07 Gy (measured, 32 native-grid
validation cases). The refiner is a small fully convolutional network at full
resolution. It reads the full-resolution anatomy channels (the U-Net's own inputs,
before pooling) and the up-sampled coarse dose, and adds a local correction to that dose.

It is trained on the *reference* dose taken down to the coarse grid, with smooth random
errors added at the coarse scale: so it learns to restore resolution from anatomy,
whatever the coarse model. Optionally (:mod:`core.prediction.stacking`) most samples are
the coarse network's own predictions of the training cases instead, their errors
amplified a little because the network fits its training cases better than new patients:
then it also learns that network's systematic mistakes (the shipped refiner; its scores
are in the model card) and belongs to that network. See
:mod:`core.prediction.train_refiner`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.errors import ModelError

REFINER_ARCH = "dose-refiner-v1"


@dataclass(frozen=True)
class RefinerConfig:
    """Shape of the refiner: ``in_channels`` anatomy channels plus one dose channel."""

    in_channels: int = 11
    width: int = 16
    dilations: tuple = (1, 2, 1)

    @property
    def receptive_field(self) -> int:
        return 1 + 2 * sum(self.dilations)


def build_refiner(cfg: RefinerConfig):
    import torch
    from torch import nn

    class DoseRefiner(nn.Module):
        """``forward(anatomy, dose_up)`` -> refined dose (same units as ``dose_up``).

        ``anatomy`` (N, C, a0, a1, a2), ``dose_up`` (N, 1, a0, a1, a2): the up-sampled
        coarse dose / the site's reference dose. The output is ``dose_up`` plus a learned
        correction; the last layer starts at zero, so an untrained refiner changes nothing.
        """

        def __init__(self, cfg: RefinerConfig):
            super().__init__()
            self.config = cfg
            layers, c_in = [], cfg.in_channels + 1
            for d in cfg.dilations:
                layers += [nn.Conv3d(c_in, cfg.width, 3, padding=d, dilation=d), nn.LeakyReLU(0.1, inplace=True)]
                c_in = cfg.width
            self.body = nn.Sequential(*layers)
            self.head = nn.Conv3d(cfg.width, 1, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

        def forward(self, anatomy, dose_up):
            return dose_up + self.head(self.body(torch.cat([anatomy, dose_up], dim=1)))

        def n_parameters(self) -> int:
            return sum(p.numel() for p in self.parameters())

    return DoseRefiner(cfg)


def widen_from(net, small) -> None:
    """Load the weights of ``small`` (same inputs and dilations, ``width`` <= ``net``'s) into
    the leading channels of ``net``, so that ``net`` computes exactly what ``small`` did.

    Why: a wider refiner can then start from a trained narrow one (Net2Net, Chen et al.,
    ICLR 2016) instead of from scratch. The added channels keep their random weights in,
    and their weights out start at zero: they change nothing until training moves them.
    Raises :class:`ModelError` when the shapes do not allow it.
    """
    import torch

    a, b = small.config, net.config
    if a.in_channels != b.in_channels or tuple(a.dilations) != tuple(b.dilations) or a.width > b.width:
        raise ModelError(f"a refiner of width {a.width} and dilations {tuple(a.dilations)} cannot start one of "
                         f"width {b.width} and dilations {tuple(b.dilations)}")
    w = a.width
    src, dst = small.state_dict(), net.state_dict()
    with torch.no_grad():
        for k, v in src.items():
            t = dst[k]
            if k.startswith("head."):
                if t.dim() > 1:
                    t[:, w:] = 0
                    t[:, :w] = v
                else:
                    t.copy_(v)
            elif t.dim() > 1:  # a body conv: (out, in, k, k, k)
                if k != "body.0.weight":  # the first layer reads the inputs, not channels
                    t[:w, w:] = 0
                t[:w, :v.shape[1]] = v
            else:
                t[:w] = v
    net.load_state_dict(dst)


def save_refiner(path, net, meta: dict) -> Path:
    """Write the refiner atomically (``torch.save`` to a temporary file, then rename)."""
    import io

    import torch

    from core.io.atomic import atomic_write_bytes

    buf = io.BytesIO()
    cfg = asdict(net.config)
    cfg["dilations"] = list(cfg["dilations"])
    torch.save({"arch": REFINER_ARCH, "config": cfg, "meta": dict(meta),
                "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_refiner(path, device="cpu"):
    """Load a refiner written by :func:`save_refiner`; :class:`ModelError` for anything else."""
    import torch

    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError("the refiner weights file is missing", path) from None
    except Exception as e:  # torch raises many types for a damaged file
        raise ModelError(f"the refiner weights file cannot be read ({type(e).__name__})", path) from None
    if not isinstance(blob, dict) or blob.get("arch") != REFINER_ARCH:
        raise ModelError("this file is not a dose refiner of this version", path)
    try:
        cfg = blob["config"]
        net = build_refiner(RefinerConfig(int(cfg["in_channels"]), int(cfg["width"]), tuple(cfg["dilations"])))
        net.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelError(f"the refiner weights do not fit its architecture ({type(e).__name__})", path) from None
    net.eval().to(device)
    return net, dict(blob.get("meta", {}))


def refine(net, anatomy: np.ndarray, dose_up_gy: np.ndarray, body: np.ndarray, reference_dose_gy: float,
           device="cpu", mirror_perm=None) -> np.ndarray:
    """Refined full-resolution dose (Gy): ``anatomy`` (C, a0, a1, a2) full-resolution model
    channels, ``dose_up_gy`` the up-sampled coarse dose; non-negative, zero outside ``body``.

    ``mirror_perm``: the channel order of the left-right mirror (paired organs swapped);
    when given, the result is averaged with the refinement of the mirrored inputs, mirrored
    back (the flip the refiner was trained with, as the network's test-time flip)."""
    import torch

    ref = np.float32(reference_dose_gy)
    with torch.no_grad():
        a = torch.from_numpy(np.ascontiguousarray(anatomy, dtype=np.float32))[None].to(device)
        d = torch.from_numpy(np.ascontiguousarray(dose_up_gy / ref, dtype=np.float32))[None, None].to(device)
        out = net(a, d)[0, 0]
        if mirror_perm is not None:
            out = 0.5 * (out + torch.flip(net(torch.flip(a[:, list(mirror_perm)], dims=[3]),
                                              torch.flip(d, dims=[3]))[0, 0], dims=[1]))
        out = out.float().cpu().numpy() * ref
    return np.where(body, np.maximum(out, 0), 0).astype(np.float32)
