"""The network and its size contract."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from napari_unet import InvalidInputShapeError, UNet


def n_convs(net: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in net.modules())


def test_paper_geometry():
    net = UNet()
    assert net.output_shape((572, 572)) == (388, 388)
    assert net.margin == 92
    assert n_convs(net) == 23
    assert net.n_parameters() == pytest.approx(31.03e6, rel=0.01)  # the paper's network
    with torch.device("meta"):
        assert net.to("meta")(torch.empty(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
def test_shapes_match_contract(depth, padding, upsample):
    net = UNet(in_channels=2, n_classes=3, depth=depth, base_channels=2, padding=padding,
               upsample=upsample).eval()
    assert n_convs(net) == 2 * (depth + 1) + 3 * depth + 1
    for min_out in [(1, 1), (17, 40), (33, 5)]:
        shape = net.valid_input_shape(min_out)
        out = net.output_shape(shape)
        assert all(o >= m for o, m in zip(out, min_out))
        y = net(torch.zeros(1, 2, *shape))
        assert tuple(y.shape) == (1, 3, *out)
        if padding == "valid":
            assert all(s - o == 2 * net.margin for s, o in zip(shape, out))
        else:
            assert out == shape


def test_invalid_size_names_nearest_valid_sizes():
    net = UNet(depth=4, base_channels=2)
    with pytest.raises(InvalidInputShapeError, match=r"570 along axis 0.*556 or 572"):
        net.output_shape((570, 572))
    with pytest.raises(InvalidInputShapeError, match="nearest valid sizes"):
        net(torch.zeros(1, 1, 100, 572))
    same = UNet(depth=3, base_channels=2, padding="same")
    with pytest.raises(InvalidInputShapeError, match="multiple of 8.*16 or 24"):
        same.output_shape((20, 16))


def test_wrong_channels_is_clear():
    net = UNet(depth=1, base_channels=2)
    with pytest.raises(ValueError, match=r"\(batch, 1, row, col\)"):
        net(torch.zeros(1, 3, 44, 44))


@pytest.mark.parametrize("kw", [dict(padding="full"), dict(norm="layer"), dict(upsample="nearest"),
                                dict(dropout=1.0), dict(depth=-1)])
def test_bad_config(kw):
    with pytest.raises(ValueError):
        UNet(**kw)


def test_he_initialisation():
    net = UNet(base_channels=16, depth=3)
    conv = net.down[2][0]  # 3x3 conv, 32 -> 64 channels
    expected = math.sqrt(2.0 / (3 * 3 * 32))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def test_dropout_at_end_of_contracting_path_only_in_training():
    net = UNet(depth=2, base_channels=4, dropout=0.5)
    assert isinstance(net.dropout, nn.Dropout2d)
    x = torch.randn(1, 1, *net.valid_input_shape((8, 8)))
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    assert not torch.equal(net(x), net(x))
    assert isinstance(UNet(dropout=0).dropout, nn.Identity)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_same_padding_with_norm(norm):
    net = UNet(depth=2, base_channels=8, padding="same", norm=norm)
    assert any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in net.modules())
    assert net(torch.randn(2, 1, 32, 48)).shape == (2, 2, 32, 48)


def test_flops_of_paper_network():
    net = UNet()
    flops = net.flops((572, 572))
    # ~2 MFLOP per output pixel of a 388x388 tile
    assert 1.5e6 < flops / 388**2 < 2.5e6
    # one 3x3 conv 1->64 at full resolution alone
    assert flops > 2 * 9 * 64 * 570**2
