"""BN fused with its activation (and optionally a residual add): ``act(BN(x) [+ r])``.

The paper puts BN immediately before each nonlinearity (Algorithm 2, step 1:
``z = g(BN(Wu))``), so the pair is the unit worth fusing: a fused kernel
writes ``act(BN(x))`` in the same pass that normalizes, and backward applies
``act'`` while it reads ``dy`` (recomputing the activation's input from ``x``),
instead of a separate activation pass that reads and writes the whole tensor
again each way.

The layers follow timm's ``BatchNormAct2d`` (norm + act in one module) and
*subclass* this project's :class:`~batchnorm.layers.BatchNorm1d` /
:class:`~batchnorm.layers.BatchNorm2d` rather than wrap them: the activation
is a constructor argument, not a parameter or buffer, so ``state_dict`` keys are
exactly ``torch.nn.BatchNorm2d``'s (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``) and a checkpoint moves between a
``BatchNorm2d`` + ``ReLU`` model and a ``BatchNormAct2d`` model unchanged;
``isinstance(layer, nn.BatchNorm2d)`` stays true for fusers and weight-decay
filters.

The fused kernels run when the chosen backend fuses activations (its
``fuses_activation`` field: ``"compiled"``, ``"triton"``, or what ``"auto"``
picks); with any other backend the one forward path
(:func:`batchnorm.functional.normalize`) applies the activation after BN, with
the same result.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from batchnorm.activations import check_activation
from batchnorm.layers import BatchNorm1d, BatchNorm2d

__all__ = ["BatchNormAct1d", "BatchNormAct2d"]


class _BatchNormActMixin:
    """``act(BN(x) [+ residual])`` on top of a project BN layer (see the module docstring)."""

    def _init_activation(self, activation: str) -> None:
        self.activation = check_activation(activation, type(self).__name__)

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        return self._forward(input, self.activation, residual)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation!r}"


class BatchNormAct1d(_BatchNormActMixin, BatchNorm1d):
    """``act(BN(x))`` over (N, C) or (N, C, L) input; state dict of ``torch.nn.BatchNorm1d``.

    ``y = act(gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta [+ residual])``,
    ``act`` one of ``"identity"``, ``"relu"``, ``"sigmoid"``.
    """

    def __init__(self, num_features: int, *args: Any, activation: str = "relu",
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(num_features, *args, **kwargs)
        self._init_activation(activation)


class BatchNormAct2d(_BatchNormActMixin, BatchNorm2d):
    """``act(BN(x))`` over (N, C, H, W) input; state dict of ``torch.nn.BatchNorm2d``.

    ``y = act(gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta [+ residual])`` per
    feature map, ``act`` one of ``"identity"``, ``"relu"``, ``"sigmoid"``.
    """

    def __init__(self, num_features: int, *args: Any, activation: str = "relu",
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(num_features, *args, **kwargs)
        self._init_activation(activation)
