"""The lab's small convnet: shapes, biases where no normalization follows, reproducible init."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import batchnorm
from batchnorm.models import SmallConvNet


def test_shapes_and_bias_placement() -> None:
    net = SmallConvNet(norm2d=batchnorm.BatchNorm2d, norm1d=batchnorm.BatchNorm1d, dropout=0.5)
    out = net(torch.randn(5, 1, 28, 28))
    assert out.shape == (5, 10)
    assert net.conv1.bias is None and net.conv2.bias is None and net.fc.bias is None
    assert isinstance(net.norm1, batchnorm.BatchNorm2d) and net.norm3.num_features == 128
    plain = SmallConvNet()
    assert plain.conv1.bias is not None and not hasattr(plain, "norm1")
    assert plain(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_same_seed_same_weights_with_and_without_norm() -> None:
    a = SmallConvNet(generator=torch.Generator().manual_seed(3))
    b = SmallConvNet(norm2d=nn.BatchNorm2d, norm1d=nn.BatchNorm1d,
                     generator=torch.Generator().manual_seed(3))
    for name in ("conv1", "conv2", "fc", "output"):
        assert torch.equal(getattr(a, name).weight, getattr(b, name).weight)
    c = SmallConvNet(generator=torch.Generator().manual_seed(4))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_he_init_scale() -> None:
    net = SmallConvNet(channels=(64, 64), hidden=512, init_scale=2.0,
                       generator=torch.Generator().manual_seed(0))
    std = net.conv2.weight.std().item()
    assert std == pytest.approx(2.0 * math.sqrt(2 / (64 * 9)), rel=0.05)
    assert torch.count_nonzero(net.output.bias) == 0


@pytest.mark.parametrize("kwargs", [{"channels": (16,)}, {"dropout": 1.0}, {"image_size": 30},
                                    {"init_scale": 0.0}])
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="SmallConvNet"):
        SmallConvNet(**kwargs)
