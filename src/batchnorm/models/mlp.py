"""The fully connected network of the paper's MNIST experiment (docs/method.md section 7).

Without BN every layer is ``y = g(Wu + b)``; with BN every hidden layer is
``y = g(BN(Wu))``: BN sits immediately before the nonlinearity and the bias is
dropped because beta takes its role (Algorithm 2, step 1). The output layer is
``Wu + b`` (logits for a softmax cross-entropy loss) in both networks::

    MLP()                 linear1 -> sigmoid1 -> linear2 -> sigmoid2 -> ... -> output
    MLP(batch_norm=True)  linear1 -> linear1_bn -> sigmoid1 -> linear2 -> ... -> output

The network is an :class:`torch.nn.Sequential`, with the BN layer named as
:func:`batchnorm.batchnormalize` names it, so ``batchnormalize(MLP())`` has the same
state-dict keys as ``MLP(batch_norm=True)`` and :func:`batchnorm.fold` and
:func:`batchnorm.recompute_statistics` work on it unchanged. Input is a batch of
flattened images, shape ``(N, sizes[0])``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from batchnorm import BatchNorm1d

__all__ = ["MLP", "PAPER_SIZES", "gaussian_init_"]

#: 784 inputs (28x28), three hidden layers of 100 units, 10 classes.
PAPER_SIZES: tuple[int, ...] = (784, 100, 100, 100, 10)


class MLP(nn.Sequential):
    """``sizes[0] -> ... -> sizes[-1]``, optionally with BN before every hidden nonlinearity.

    Args:
        sizes: layer widths, input first, classes last (at least two entries).
        batch_norm: insert BN between each hidden ``Linear`` (then without bias) and
            its nonlinearity.
        activation: factory of the hidden nonlinearity module (the paper: sigmoid).
        bn_layer: the BN class; this project's :class:`batchnorm.BatchNorm1d` by default,
            ``torch.nn.BatchNorm1d`` works too.
        bn_kwargs: keyword arguments for every BN layer (``eps``, ``momentum``, ...).
        init_std: if given, weights are drawn from N(0, init_std^2) and biases set to
            zero (:func:`gaussian_init_`); otherwise torch's default initialization.
        generator: random source for ``init_std``; the same seed gives the same weights
            with and without BN (the linear layers have the same shapes, in the same order).
    """

    def __init__(
        self,
        sizes: Sequence[int] = PAPER_SIZES,
        *,
        batch_norm: bool = False,
        activation: Callable[[], nn.Module] = nn.Sigmoid,
        bn_layer: Callable[..., nn.Module] = BatchNorm1d,
        bn_kwargs: dict[str, Any] | None = None,
        init_std: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        sizes = tuple(sizes)
        if len(sizes) < 2 or any(
            isinstance(size, bool) or not isinstance(size, int) or size <= 0 for size in sizes
        ):
            raise ValueError(f"MLP: sizes must be at least two positive ints, got {sizes}")
        layers: list[tuple[str, nn.Module]] = []
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes[:-1]), 1):
            layers.append((f"linear{index}", nn.Linear(fan_in, fan_out, bias=not batch_norm)))
            if batch_norm:
                layers.append((f"linear{index}_bn", bn_layer(fan_out, **(bn_kwargs or {}))))
            layers.append((f"{_name(activation)}{index}", activation()))
        layers.append(("output", nn.Linear(sizes[-2], sizes[-1])))
        super().__init__(OrderedDict(layers))
        self.sizes = sizes
        if init_std is not None:
            gaussian_init_(self, init_std, generator)

    def forward_with_preactivations(self, input: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(logits, [z_1, ..., z_L])``: z_l is the input of hidden layer l's nonlinearity.

        That is ``Wu + b`` without BN and ``BN(Wu)`` with BN: the quantity whose
        distribution Figure 1(b, c) follows. Nonlinearities are recognized by type
        (:data:`batchnorm.algorithm2.NONLINEARITIES`), so this also works on
        ``batchnormalize(MLP())`` and ``fold(...)`` copies.
        """
        from batchnorm.algorithm2 import NONLINEARITIES

        preactivations: list[Tensor] = []
        x = input
        for module in self:
            if isinstance(module, NONLINEARITIES):
                preactivations.append(x)
            x = module(x)
        return x, preactivations


def _name(activation: Callable[[], nn.Module]) -> str:
    return getattr(activation, "__name__", "activation").lower()


@torch.no_grad()
def gaussian_init_(
    model: nn.Module, std: float, generator: torch.Generator | None = None
) -> nn.Module:
    """Weights of every ``Linear`` ~ N(0, std^2), in module order; biases 0. In place.

    The paper: "weights initialized to small random Gaussian values" (std not given).
    BN layers keep gamma = 1, beta = 0.
    """
    if not std > 0:
        raise ValueError(f"init std must be positive, got {std}")
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std, generator=generator)
            if module.bias is not None:
                module.bias.zero_()
    return model
