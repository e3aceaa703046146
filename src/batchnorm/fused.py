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

The fused kernels run when the backend is ``"compiled"`` or ``"triton"`` (or
``"auto"`` picks one of them); any other backend runs the plain layer and then
the activation, with the same result.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from batchnorm.functional import resolve_backend, validate_input
from batchnorm.layers import BatchNorm1d, BatchNorm2d

__all__ = ["ACTIVATIONS", "BatchNormAct1d", "BatchNormAct2d", "batch_norm_act"]

ACTIVATIONS = ("identity", "relu", "sigmoid")
_FUSED_BACKENDS = ("compiled", "triton")


def _activate(y: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return torch.relu(y)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    return y


def batch_norm_act(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    eps: float,
    activation: str = "relu",
    residual: Tensor | None = None,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``act(BN(input) [+ residual])``; returns (output, batch_mean, batch_var).

    Like :func:`batchnorm.functional.normalize`, it leaves the running
    statistics alone (the statistics are None when not ``training``).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if residual is not None and residual.shape != input.shape:
        raise ValueError(
            f"residual has shape {tuple(residual.shape)}, expected {tuple(input.shape)}"
        )
    chosen = resolve_backend(backend, input, training)
    if chosen.name == "compiled":
        from batchnorm.kernels.compiled import compiled_batch_norm

        return compiled_batch_norm(input, weight, bias, running_mean, running_var, training,
                                   eps, activation, residual)  # fmt: skip
    if chosen.name == "triton":
        from batchnorm.kernels.triton_backend import triton_batch_norm

        return triton_batch_norm(input, weight, bias, running_mean, running_var, training,
                                 eps, activation, residual)  # fmt: skip
    output, mean, var = chosen.forward(
        input, weight, bias, running_mean, running_var, training, eps
    )
    if residual is not None:
        output = output + residual
    return _activate(output, activation), mean, var


class _BatchNormActMixin:
    """``act(BN(x) [+ residual])`` on top of a project BN layer (see the module docstring)."""

    def _init_activation(self, activation: str) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: activation must be one of {ACTIVATIONS}, "
                f"got {activation!r}"
            )
        self.activation = activation

    def _fused_backend(self, input: Tensor, use_batch_statistics: bool) -> str | None:
        """The backend to run fused, or None to run the plain layer then the activation."""
        name = self.backend
        if name == "auto":
            from batchnorm.functional import _load_kernels

            _load_kernels()
            from batchnorm.kernels import choose_backend

            name = choose_backend(input, use_batch_statistics)
            if name == "hybrid" and self.activation != "identity":
                # Same generated forward; the fused backward saves the activation's
                # own passes (about 5 reads/writes of the tensor), more than ATen's
                # faster BN backward gains over the generated one (about 2).
                name = "compiled"
        return name if name in _FUSED_BACKENDS else None

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        self._check_input_dim(input)
        use_batch_statistics = self.training or not self.track_running_stats
        backend = self._fused_backend(input, use_batch_statistics)
        if backend is None:
            output = super().forward(input)
            if residual is not None:
                output = output + residual
            return _activate(output, self.activation)
        # The fused path does what the plain layer's forward does, with the activation
        # (and residual) inside the kernel.
        validate_input(input, self.num_features, use_batch_statistics, self._describe())
        if not use_batch_statistics and not self._has_statistics:
            self._check_statistics_tracked()
        output, batch_mean, batch_var = batch_norm_act(
            input,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            use_batch_statistics,
            self.eps,
            self.activation,
            residual,
            backend,
        )
        self._record_batch(input, batch_mean, batch_var)
        return output

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
