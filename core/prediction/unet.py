"""The CAD-UNet: a 3D U-Net whose stages are dense blocks with channel attention.

One code path serves a small CPU model and a large GPU model: :class:`UNetConfig`
sets the width (``base_channels``, ``growth``), the depth (number of resolution
levels) and the dense-block length.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from core.errors import ModelError
from core.prediction.blocks import DenseSEStage, Down, Up


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`CADUNet`.

    Parameters
    ----------
    in_channels, out_channels : int
    base_channels : int
        Feature maps at full resolution; level ``i`` has ``base * 2**i`` (capped at ``max_channels``).
    depth : int
        Resolution levels (``depth - 1`` down-samplings); inputs must be divisible by ``2**(depth-1)``.
    growth : int
        Dense-block growth rate at level 0; doubles per level up to ``4 * growth``.
    layers_per_block : int
    se_reduction : int
    norm : str
        ``"instance"``, ``"group"`` or ``"none"``.
    max_channels : int
    """

    in_channels: int = 11
    out_channels: int = 1
    base_channels: int = 16
    depth: int = 4
    growth: int = 8
    layers_per_block: int = 2
    se_reduction: int = 4
    norm: str = "instance"
    max_channels: int = 256

    def __post_init__(self):
        if self.in_channels < 1 or self.out_channels < 1 or self.base_channels < 1:
            raise ModelError("network channel counts must be positive")
        if not 1 <= self.depth <= 7:
            raise ModelError(f"network depth must be 1..7, got {self.depth}")
        if self.norm not in ("instance", "group", "none"):
            raise ModelError(f"unknown normalisation '{self.norm}'")

    @property
    def multiple(self) -> int:
        """Spatial sizes must be divisible by this."""
        return 2 ** (self.depth - 1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ModelError(f"model config has unknown network fields {sorted(unknown)}")
        return cls(**d)


class CADUNet(nn.Module):
    """Channel-attention dense 3D U-Net.

    ``forward(x)``: ``x`` is ``(N, in_channels, D, H, W)`` with D, H, W divisible by
    ``config.multiple``; returns ``(N, out_channels, D, H, W)``.
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        widths = [min(c.base_channels * 2 ** i, c.max_channels) for i in range(c.depth)]
        growths = [min(c.growth * 2 ** i, 4 * c.growth) for i in range(c.depth)]
        self.stem = nn.Conv3d(c.in_channels, widths[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for i in range(c.depth):
            self.enc.append(DenseSEStage(widths[i], widths[i], growths[i], c.layers_per_block, c.norm, c.se_reduction))
            if i < c.depth - 1:
                self.down.append(Down(widths[i], widths[i + 1], c.norm))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(c.depth - 1)):
            self.up.append(Up(widths[i + 1], widths[i], c.norm))
            self.dec.append(DenseSEStage(2 * widths[i], widths[i], growths[i], c.layers_per_block, c.norm,
                                         c.se_reduction))
        self.head = nn.Conv3d(widths[0], c.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.config.multiple
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ModelError(f"network expects (N, {self.config.in_channels}, D, H, W) input, got {tuple(x.shape)}")
        if any(s % m for s in x.shape[2:]):
            raise ModelError(f"network input sizes {tuple(x.shape[2:])} must be divisible by {m}")
        h = self.stem(x)
        skips = []
        for i, stage in enumerate(self.enc):
            h = stage(h)
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for up, dec in zip(self.up, self.dec):
            h = dec(torch.cat([up(h), skips.pop()], dim=1))
        return self.head(h)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
