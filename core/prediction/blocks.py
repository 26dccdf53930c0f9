"""Building blocks of the CAD-UNet: convolution units, dense blocks, channel attention.

All blocks take and return ``(N, C, D, H, W)`` float tensors and keep the spatial
size; only :class:`Down` and :class:`Up` change it (by a factor of 2).
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    # Instance norm: batches are 1-2 volumes, too small for batch statistics.
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        import math
        return nn.GroupNorm(math.gcd(8, channels), channels)  # groups must divide the channels
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm '{kind}'")


class ConvUnit(nn.Sequential):
    """Conv3d -> norm -> LeakyReLU, same spatial size (odd ``kernel``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, norm: str = "instance"):
        super().__init__(nn.Conv3d(in_ch, out_ch, kernel, padding=kernel // 2, bias=norm == "none"),
                         _norm(norm, out_ch), nn.LeakyReLU(0.01, inplace=True))


class DenseBlock(nn.Module):
    """Densely connected block (Huang et al. 2017): each layer sees all earlier maps.

    Output channels: ``in_ch + n_layers * growth`` (input and every layer's maps
    concatenated).
    """

    def __init__(self, in_ch: int, growth: int, n_layers: int, norm: str = "instance"):
        super().__init__()
        if growth < 1 or n_layers < 1:
            raise ValueError("a dense block needs growth >= 1 and n_layers >= 1")
        self.layers = nn.ModuleList(ConvUnit(in_ch + i * growth, growth, 3, norm) for i in range(n_layers))
        self.out_channels = in_ch + n_layers * growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        return torch.cat(feats, dim=1)


class SEBlock(nn.Module):
    """Squeeze-and-excitation channel attention (Hu et al. 2018): global average pool,
    bottleneck MLP, sigmoid gate per channel. Same shape out as in."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3, 4)))
        return x * w[:, :, None, None, None]


class DenseSEStage(nn.Module):
    """Dense block -> 1x1x1 transition to ``out_ch`` -> channel attention."""

    def __init__(self, in_ch: int, out_ch: int, growth: int, n_layers: int, norm: str = "instance",
                 se_reduction: int = 4):
        super().__init__()
        self.dense = DenseBlock(in_ch, growth, n_layers, norm)
        self.transition = ConvUnit(self.dense.out_channels, out_ch, 1, norm)
        self.se = SEBlock(out_ch, se_reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.transition(self.dense(x)))


class Down(nn.Sequential):
    """Strided 2x2x2 convolution: halves every spatial dimension."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "instance"):
        super().__init__(nn.Conv3d(in_ch, out_ch, 2, stride=2, bias=norm == "none"), _norm(norm, out_ch),
                         nn.LeakyReLU(0.01, inplace=True))


class Up(nn.Sequential):
    """Transposed 2x2x2 convolution: doubles every spatial dimension."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "instance"):
        super().__init__(nn.ConvTranspose3d(in_ch, out_ch, 2, stride=2, bias=norm == "none"),
                         _norm(norm, out_ch), nn.LeakyReLU(0.01, inplace=True))
