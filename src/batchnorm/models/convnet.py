"""The lab's small convnet for 28x28 images: the model of the claims that need convolutions.

::

    conv3x3(c1) -> [norm2d] -> ReLU -> maxpool2      28 -> 14
    conv3x3(c2) -> [norm2d] -> ReLU -> maxpool2      14 -> 7
    flatten -> linear(hidden) -> [norm1d] -> ReLU -> dropout -> linear(classes)

``norm2d``/``norm1d`` are factories ``channels -> module`` (this project's BN, Batch Renorm,
Ghost BN, torch's GroupNorm, ...; None: no normalization). A layer followed by a
normalization has no bias (the normalization's shift replaces it, the paper's section
3.2); without normalization every layer has one. Weights: He-normal (fan-in, ReLU gain)
for the convolutions and the hidden linear layer, torch's default for the output layer,
biases zero; ``generator`` makes the draw reproducible, and the same generator seed gives
the same weights with and without normalization (the weight shapes do not depend on it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["SmallConvNet"]

Norm = Callable[[int], nn.Module]


class SmallConvNet(nn.Sequential):
    """See the module docstring. Input ``(N, in_channels, 28, 28)``, logits ``(N, classes)``."""

    def __init__(self, *, norm2d: Norm | None = None, norm1d: Norm | None = None,
                 channels: Sequence[int] = (16, 32), hidden: int = 128, dropout: float = 0.0,
                 in_channels: int = 1, classes: int = 10, image_size: int = 28,
                 init_scale: float = 1.0, generator: torch.Generator | None = None) -> None:
        channels = tuple(channels)
        if len(channels) != 2 or any(int(c) != c or c <= 0 for c in channels):
            raise ValueError(f"SmallConvNet: channels must be two positive ints, got {channels}")
        if image_size % 4:
            raise ValueError(f"SmallConvNet: image_size must be a multiple of 4, got {image_size}")
        if not 0 <= dropout < 1:
            raise ValueError(f"SmallConvNet: dropout must be in [0, 1), got {dropout}")
        if not init_scale > 0:
            raise ValueError(f"SmallConvNet: init_scale must be positive, got {init_scale}")
        c1, c2 = channels
        side = image_size // 4
        layers: list[tuple[str, nn.Module]] = []
        for index, (fan_in, fan_out) in enumerate(((in_channels, c1), (c1, c2)), 1):
            layers.append((f"conv{index}", nn.Conv2d(fan_in, fan_out, 3, padding=1,
                                                      bias=norm2d is None)))
            if norm2d is not None:
                layers.append((f"norm{index}", norm2d(fan_out)))
            layers += [(f"relu{index}", nn.ReLU()), (f"pool{index}", nn.MaxPool2d(2))]
        layers += [("flatten", nn.Flatten()),
                   ("fc", nn.Linear(c2 * side * side, hidden, bias=norm1d is None))]
        if norm1d is not None:
            layers.append(("norm3", norm1d(hidden)))
        layers += [("relu3", nn.ReLU()), ("dropout", nn.Dropout(dropout)),
                   ("output", nn.Linear(hidden, classes))]
        super().__init__(OrderedDict(layers))
        self._initialize(init_scale, generator)

    @torch.no_grad()
    def _initialize(self, scale: float, generator: torch.Generator | None) -> None:
        """He-normal times ``scale`` for conv1, conv2, fc; the output layer as torch draws it
        but from ``generator``; every bias zero."""
        for name in ("conv1", "conv2", "fc"):
            weight = getattr(self, name).weight
            fan_in = weight[0].numel()
            weight.normal_(0.0, scale * math.sqrt(2.0 / fan_in), generator=generator)
        bound = 1 / math.sqrt(self.output.in_features)
        self.output.weight.uniform_(-bound, bound, generator=generator)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear) and module.bias is not None:
                module.bias.zero_()
