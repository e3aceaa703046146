"""A small Inception network for 28x28 grayscale images (docs/method.md section 8).

The paper's variant of Inception (GoogLeNet) replaces every 5x5 convolution by two
stacked 3x3 convolutions. Each Inception module here therefore concatenates four
branches::

    1x1  |  1x1 -> 3x3  |  1x1 -> 3x3 -> 3x3 (double 3x3)  |  3x3 avg-pool -> 1x1

and the network is::

    stem 3x3 conv (28x28) -> 2x2 max-pool -> [LRN]
    -> modules 3a, 3b (14x14) -> 2x2 max-pool -> modules 4a, 4b (7x7)
    -> global average pool -> [BatchNorm1d] -> dropout -> linear (10 classes)

Every convolution is a :class:`ConvUnit`: ``conv -> [BN] -> nonlinearity``. With
``batch_norm=True`` BN sits immediately before each nonlinearity and is
convolutional (one gamma/beta per feature map, :class:`batchnorm.BatchNorm2d`); the
convolution then has no bias, because BN's beta takes its role (Algorithm 2 step 1).
The longest path is 1 (stem) + 3 per module x 4 + 1 (classifier) = 14 weight layers:
deep enough that a plain sigmoid network without BN does not train.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from batchnorm import BatchNorm1d, BatchNorm2d
from batchnorm.activations import ACTIVATIONS, check_activation

__all__ = [
    "MODULE_WIDTHS",
    "ConvUnit",
    "InceptionConfig",
    "InceptionModule",
    "SmallInception",
    "count_parameters",
]

# Per module: (1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool projection),
# the six numbers GoogLeNet's table gives per module, at width multiplier 1.
MODULE_WIDTHS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (16, 16, 24, 8, 12, 8),  # 3a -> 60 channels
    (24, 24, 32, 12, 16, 16),  # 3b -> 88
    (32, 24, 40, 12, 20, 16),  # 4a -> 108
    (40, 32, 48, 16, 24, 24),  # 4b -> 136
)
STEM_WIDTH = 24

#: Activations of :data:`batchnorm.activations.ACTIVATIONS` this network cannot use, and why.
UNSUPPORTED_ACTIVATIONS = {"identity": "without a nonlinearity the network is linear"}


@dataclass(frozen=True)
class InceptionConfig:
    """Everything that shapes the network; stored in each run's config.json."""

    batch_norm: bool = False
    activation: str = "relu"  # of batchnorm.activations.ACTIVATIONS: "relu" or "sigmoid"
    lrn: bool = False  # Local Response Normalization after the stem, as in GoogLeNet
    dropout: float = 0.0  # before the classifier
    width: float = 1.0  # multiplies every channel count
    head_bn1d: bool = False  # per-activation BN on the pooled features (ensemble members)
    init_scale: float = 1.0  # multiplies the initial conv weights (ensemble: "larger")
    num_classes: int = 10
    in_channels: int = 1
    module_widths: tuple[tuple[int, ...], ...] = field(default=MODULE_WIDTHS)
    stem_width: int = STEM_WIDTH

    def __post_init__(self) -> None:
        check_activation(self.activation, "InceptionConfig")
        if self.activation in UNSUPPORTED_ACTIVATIONS:
            supported = [name for name in ACTIVATIONS if name not in UNSUPPORTED_ACTIVATIONS]
            raise ValueError(
                f"InceptionConfig: activation {self.activation!r} is not supported "
                f"({UNSUPPORTED_ACTIVATIONS[self.activation]}); use one of {supported}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")

    def to_dict(self) -> dict:
        return asdict(self)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def _nonlinearity(name: str) -> nn.Module:
    """The module of a supported activation name (see :class:`InceptionConfig`)."""
    return nn.ReLU(inplace=True) if name == "relu" else nn.Sigmoid()


class ConvUnit(nn.Sequential):
    """``conv -> [BatchNorm2d] -> nonlinearity``; no conv bias when BN follows."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, config: InceptionConfig
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=kernel_size // 2,
                bias=not config.batch_norm,
            )
        ]
        if config.batch_norm:
            layers.append(BatchNorm2d(out_channels))
        layers.append(_nonlinearity(config.activation))
        super().__init__(*layers)


class InceptionModule(nn.Module):
    """Four parallel branches, concatenated along channels (5x5 -> double 3x3)."""

    def __init__(
        self, in_channels: int, widths: tuple[int, ...], config: InceptionConfig
    ) -> None:
        super().__init__()
        b1, r3, b3, rd, bd, bp = (_scaled(w, config.width) for w in widths)
        self.branch1x1 = ConvUnit(in_channels, b1, 1, config)
        self.branch3x3 = nn.Sequential(
            ConvUnit(in_channels, r3, 1, config), ConvUnit(r3, b3, 3, config)
        )
        self.branch_double3x3 = nn.Sequential(
            ConvUnit(in_channels, rd, 1, config),
            ConvUnit(rd, bd, 3, config),
            ConvUnit(bd, bd, 3, config),
        )
        self.branch_pool = nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1), ConvUnit(in_channels, bp, 1, config)
        )
        self.out_channels = b1 + b3 + bd + bp

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.branch1x1(x), self.branch3x3(x), self.branch_double3x3(x), self.branch_pool(x)],
            dim=1,
        )


class SmallInception(nn.Module):
    """The network of the module docstring; ``depth`` counts weight layers on the longest path."""

    def __init__(self, config: InceptionConfig | None = None) -> None:
        super().__init__()
        config = config or InceptionConfig()
        self.config = config
        stem = _scaled(config.stem_width, config.width)
        stem_layers: list[nn.Module] = [ConvUnit(config.in_channels, stem, 3, config)]
        stem_layers.append(nn.MaxPool2d(2))
        if config.lrn:
            # GoogLeNet's order (conv -> max-pool -> LRN) with AlexNet's constants; after the
            # pool LRN touches 4x fewer values (torch's LRN costs as much as the convs here).
            stem_layers.append(nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0))
        self.stem = nn.Sequential(*stem_layers)

        blocks: list[nn.Module] = []
        channels = stem
        for index, widths in enumerate(config.module_widths):
            if index == len(config.module_widths) // 2:
                blocks.append(nn.MaxPool2d(2))  # 14x14 -> 7x7 halfway through the modules
            module = InceptionModule(channels, widths, config)
            blocks.append(module)
            channels = module.out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_bn = BatchNorm1d(channels) if config.head_bn1d else nn.Identity()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(channels, config.num_classes)
        self.feature_channels = channels
        self.depth = 1 + 3 * len(config.module_widths) + 1
        self._initialize(config)

    def _initialize(self, config: InceptionConfig) -> None:
        """He (fan-in) init for ReLU, Glorot for sigmoid; zero biases.

        torch's default conv init (variance 1/(3 fan_in)) shrinks the signal ~2.4x per
        ReLU layer: through 14 layers a network without BN then did not learn at all in
        1000 steps, a failure of the init, not of the missing BN. With He init the plain
        ReLU network trains, so the comparison with BN is about BN.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                if config.activation == "relu":
                    nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                else:
                    nn.init.xavier_normal_(module.weight)
                with torch.no_grad():
                    module.weight.mul_(config.init_scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.stem(x))
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(self.dropout(self.head_bn(x)))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BN's gamma and beta included, running statistics not)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
