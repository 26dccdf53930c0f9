"""Shapes of the CAD-UNet building blocks and of whole networks (table-driven, CPU)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from core.errors import ModelError  # noqa: E402
from core.prediction.blocks import DenseBlock, DenseSEStage, Down, SEBlock, Up  # noqa: E402
from core.prediction.unet import CADUNet, UNetConfig  # noqa: E402



@pytest.mark.parametrize("in_ch,growth,layers,size", [(4, 2, 1, (4, 4, 4)), (8, 4, 3, (6, 5, 4)),
                                                       (3, 8, 2, (2, 8, 6))])
def test_dense_block_concatenates_growth(in_ch, growth, layers, size):
    blk = DenseBlock(in_ch, growth, layers)
    y = blk(torch.randn(2, in_ch, *size))
    assert blk.out_channels == in_ch + growth * layers
    assert tuple(y.shape) == (2, in_ch + growth * layers, *size)


@pytest.mark.parametrize("channels,reduction,size", [(1, 4, (3, 3, 3)), (16, 4, (4, 6, 2)), (12, 3, (5, 5, 5))])
def test_se_block_keeps_shape_and_only_gates(channels, reduction, size):
    blk = SEBlock(channels, reduction)
    x = torch.randn(2, channels, *size)
    with torch.no_grad():
        y = blk(x)
    assert y.shape == x.shape
    # Channel attention multiplies each channel by one gate in (0, 1): the ratio y/x is
    # constant over space within a channel.
    ratio = y / x
    spread = (ratio.flatten(2).max(-1).values - ratio.flatten(2).min(-1).values).abs().max()
    assert float(spread) < 1e-4
    assert float(ratio.min()) > 0 and float(ratio.max()) < 1


@pytest.mark.parametrize("in_ch,out_ch,size", [(4, 6, (4, 4, 4)), (6, 3, (8, 2, 6))])
def test_stage_down_up_shapes(in_ch, out_ch, size):
    x = torch.randn(1, in_ch, *size)
    assert tuple(DenseSEStage(in_ch, out_ch, 4, 2)(x).shape) == (1, out_ch, *size)
    d = Down(in_ch, out_ch)(x)
    assert tuple(d.shape) == (1, out_ch, *(s // 2 for s in size))
    assert tuple(Up(out_ch, in_ch)(d).shape) == (1, in_ch, *size)


@pytest.mark.parametrize("cfg,size", [
    (UNetConfig(in_channels=11, base_channels=4, depth=1, growth=2, layers_per_block=1), (3, 5, 7)),
    (UNetConfig(in_channels=11, base_channels=4, depth=2, growth=2, layers_per_block=1), (4, 6, 8)),
    (UNetConfig(in_channels=11, base_channels=8, depth=3, growth=4, layers_per_block=2), (8, 16, 12)),
    (UNetConfig(in_channels=5, out_channels=2, base_channels=6, depth=4, growth=3, layers_per_block=3,
                norm="group"), (16, 8, 8)),
])
def test_unet_output_shape(cfg, size):
    net = CADUNet(cfg)
    y = net(torch.randn(1, cfg.in_channels, *size))
    assert tuple(y.shape) == (1, cfg.out_channels, *size)


def test_unet_width_scales_parameters():
    small = CADUNet(UNetConfig(base_channels=8, growth=4)).n_parameters()
    large = CADUNet(UNetConfig(base_channels=16, growth=8)).n_parameters()
    assert large > 3 * small  # conv weights grow with the square of the width


def test_unet_rejects_bad_input():
    net = CADUNet(UNetConfig(in_channels=3, base_channels=4, depth=3, growth=2, layers_per_block=1))
    with pytest.raises(ModelError, match="divisible by 4"):
        net(torch.randn(1, 3, 6, 8, 8))
    with pytest.raises(ModelError, match="expects"):
        net(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ModelError):
        UNetConfig(depth=0)
