"""Batch Normalization layers, drop-in for ``torch.nn.BatchNorm1d/2d/3d``.

Each layer *subclasses* the torch layer of the same name rather than copying
it: constructor arguments, attribute and buffer names, ``state_dict`` keys and
``isinstance`` checks (fusers, ``SyncBatchNorm.convert_sync_batchnorm``,
weight-decay filters) all keep working. What changes is the forward:

* the transform runs on a selectable ``backend`` (see :mod:`batchnorm.backends`),
  through the one forward path :func:`batchnorm.functional.normalize`;
* running statistics follow a selectable ``estimator`` (see :mod:`batchnorm.statistics`),
  including ``"population"``, Algorithm 2 step 3 exactly;
* bad input raises an error naming the layer and the shape; a batch with
  non-finite statistics never corrupts the running statistics (counted in the
  non-persistent buffer ``skipped_updates``), a guard computed on the device;
* no host synchronization in the forward: every layer traces with
  ``torch.compile(fullgraph=True)`` and ``torch.export`` in training and eval.

torch 2.13's behaviour is kept where it is visible: the keyword-only ``bias``
argument, ``eps`` checked by the forward (``> 0`` in training, ``>= 0`` in
eval) rather than the constructor, an empty training batch giving an empty
output and counting in ``num_batches_tracked`` without touching the statistics,
batch statistics in eval when the running buffers are None, and wrong-size
vectors raising a ``RuntimeError`` (:class:`~batchnorm.functional.BatchNormShapeError`).
"""

from __future__ import annotations

import numbers
import os
import sys
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from batchnorm.activations import ACTIVATIONS, activate
from batchnorm.backends import AUTO, names
from batchnorm.backends.native import FUSED_UPDATE_MAX_NUMEL, update_small
from batchnorm.functional import check_vectors, normalize, validate_input
from batchnorm.statistics import ESTIMATORS, Estimator, update_running_statistics

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]

_POPULATION_BUFFERS = ("population_batches", "population_samples")
#: The backends that take a small float32/float64 training batch to ATen's kernel with
#: the in-kernel update (``auto`` below ``auto.MIN_NUMEL`` elements, so everywhere the
#: fast path applies: it stops at ``FUSED_UPDATE_MAX_NUMEL``).
_SMALL_BACKENDS = frozenset((AUTO, "native"))
_SMALL_DTYPES = (torch.float32, torch.float64)


_INTERNAL = (os.path.dirname(os.path.abspath(__file__)),
             os.path.dirname(os.path.abspath(nn.__file__)))


def _user_stacklevel() -> int:
    """``stacklevel`` for a warning raised in this package that points at the user's line:
    the first frame outside this package and ``torch.nn`` (whatever hooks, wrappers or
    ``Module.__call__`` frames lie between)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Shared forward of the layers; see the module docstring."""

    _accepted_ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        estimator: Estimator | None = None,
        backend: str = "auto",
    ) -> None:
        name = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(f"{name}: num_features must be an int, got {num_features!r}")
        num_features = int(num_features)  # NumPy integers and the like, as torch accepts
        if num_features <= 0:
            raise ValueError(f"{name}: num_features must be positive, got {num_features}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum}")
        if estimator is None:
            estimator = "cumulative" if momentum is None else "ema"
        if estimator not in ESTIMATORS:
            raise ValueError(f"{name}: estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if estimator == "ema" and momentum is None:
            raise ValueError(
                f"{name}: estimator 'ema' needs a momentum (momentum=None is 'cumulative')"
            )
        if backend != AUTO and backend not in names():
            raise ValueError(
                f"{name}: unknown backend {backend!r}; available: {[AUTO, *names()]}"
            )
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.estimator: Estimator = estimator
        self.backend = backend
        if track_running_stats and estimator == "population":
            for buffer in _POPULATION_BUFFERS:
                self.register_buffer(buffer, torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer(
            "skipped_updates", torch.zeros((), dtype=torch.long, device=device), persistent=False
        )
        self._has_statistics = False
        self._name = f"{type(self).__name__}({num_features})"  # for error messages

    def _describe(self) -> str:
        return self._name

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._accepted_ranks:
            ranks = " or ".join(f"{rank}D" for rank in self._accepted_ranks)
            raise ValueError(
                f"{self._describe()}: expected {ranks} input, got {input.dim()}D input of shape "
                f"{tuple(input.shape)}"
            )

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        for buffer in _POPULATION_BUFFERS:
            if hasattr(self, buffer):  # absent while torch's __init__ calls this
                getattr(self, buffer).zero_()
        self._has_statistics = False

    def _check_statistics_tracked(self) -> None:
        """Eval mode on the initial running statistics (mean 0, var 1) is almost never meant.

        Reads ``num_batches_tracked`` on the host once per layer, in eager mode only
        (while ``torch.compile``/``torch.export`` trace, the check is skipped).
        """
        if self.num_batches_tracked is None or self.num_batches_tracked.device.type == "meta" or (
            int(self.num_batches_tracked) > 0
        ):
            self._has_statistics = True
            return
        message = (
            f"{self._describe()} is in eval mode but has tracked no statistics: it would "
            "normalize with the initial running_mean=0, running_var=1. Train it, load a "
            "state dict, or call batchnorm.recompute_statistics(model, batches) first."
        )
        if self.estimator == "population":
            raise RuntimeError(message)
        warnings.warn(message, stacklevel=_user_stacklevel())
        self._has_statistics = True  # warn once per layer

    def forward(self, input: Tensor) -> Tensor:
        return self._forward(input, "identity", None)

    def _train_small(self, input: Tensor, activation: str) -> Tensor | None:
        """The common training call, an eager small batch with the moving average, lean.

        Small batches (an MLP's 60 x 100) are bound by per-call overhead, Python's
        included: this does what :meth:`_forward` does for them (the same checks, ATen's
        in-kernel update with the on-device guard, the same numbers) without its
        general machinery. Returns None, having done nothing, for every other call,
        and for any input or state a check would reject: the general path then
        raises its precise error.
        """
        if (
            self.estimator != "ema"
            or self.backend not in _SMALL_BACKENDS
            or not self.track_running_stats
            or type(input) is not Tensor
            or activation not in ACTIVATIONS
        ):
            return None
        buffers = self._buffers  # not self.running_mean: each is an nn.Module.__getattr__
        running_mean, running_var = buffers.get("running_mean"), buffers.get("running_var")
        if running_mean is None or running_var is None:
            return None
        dtype, shape, numel = input.dtype, input.shape, input.numel()
        channels = self.num_features
        vector = (channels,)
        if (
            dtype not in _SMALL_DTYPES
            or running_mean.dtype != dtype
            or running_var.dtype != dtype
            or len(shape) < 2
            or shape[1] != channels
            or numel <= channels  # empty, or one value per channel: the general path
            or numel > FUSED_UPDATE_MAX_NUMEL
            or running_mean.shape != vector
            or running_var.shape != vector
        ):
            return None
        parameters = self._parameters
        weight, bias = parameters.get("weight"), parameters.get("bias")
        if (weight is not None and weight.shape != vector) or (
            bias is not None and bias.shape != vector
        ):
            return None
        eps, momentum = self.eps, self.momentum
        if momentum is None or not eps > 0 or torch.compiler.is_compiling():
            return None
        self._check_input_dim(input)
        output = update_small(
            input, weight, bias, running_mean, running_var, momentum, eps,
            buffers["skipped_updates"],
        )  # fmt: skip
        if activation != "identity":  # native does not fuse it: applied after, as normalize does
            output = activate(output, activation)
        tracked = buffers.get("num_batches_tracked")
        if tracked is not None:
            tracked.add_(1)
        if not self._has_statistics:  # nn.Module.__setattr__ is slow: once
            self._has_statistics = True
        return output

    def _forward(self, input: Tensor, activation: str, residual: Tensor | None) -> Tensor:
        """``act(BN(input) [+ residual])`` and, in training, the running-statistics update.

        The layers' one forward: checks, :func:`~batchnorm.functional.normalize`,
        then the estimator (unless the backend updated the statistics in its kernel).
        No host synchronization: the non-finite guard and the cumulative ``1/t`` stay
        on the device, and the Python flag ``_has_statistics`` is only written eagerly.
        """
        if residual is None and self.training:
            output = self._train_small(input, activation)
            if output is not None:
                return output
        self._check_input_dim(input)
        # Parameters and buffers are read once: each read is an nn.Module.__getattr__.
        weight, bias = self.weight, self.bias
        running_mean, running_var = self.running_mean, self.running_var
        name = self._describe()
        if (running_mean is None) != (running_var is None):  # torch refuses it too
            raise ValueError(
                f"{name}: running_mean and running_var must either both be None or neither be None"
            )
        training = self.training
        # torch's rule: batch statistics in training, and in eval when there are no buffers.
        use_batch_statistics = training or (running_mean is None and running_var is None)
        validate_input(input, self.num_features, use_batch_statistics, name)
        check_vectors(
            input, name, running_mean=running_mean, running_var=running_var, weight=weight,
            bias=bias,
        )  # fmt: skip
        eager = not torch.compiler.is_compiling()
        if not use_batch_statistics and not self._has_statistics and eager:
            self._check_statistics_tracked()
        tracking = training and self.track_running_stats and running_mean is not None
        # Offered to an in-kernel update: the moving average only (the cumulative 1/t
        # is a device tensor, applied by the estimator).
        momentum = self.momentum if tracking and self.estimator == "ema" else None
        if training and not tracking:
            running_mean = running_var = None  # not tracked: never updated
        result = normalize(
            input,
            weight,
            bias,
            running_mean,
            running_var,
            use_batch_statistics,
            self.eps,
            self.backend,
            activation=activation,
            residual=residual,
            momentum=momentum,
            skipped_updates=self.skipped_updates,
        )
        if tracking:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
            if input.numel() == 0:  # counted, as torch does; nothing to average in
                self.skipped_updates.add_(1)
            elif not result.updated:
                skipped = update_running_statistics(
                    self, self.estimator, result.batch_mean, result.batch_var,
                    input.numel() // input.shape[1],
                )  # fmt: skip
                self.skipped_updates.add_(skipped.to(self.skipped_updates.dtype))
            if not self._has_statistics and eager:  # nn.Module.__setattr__ is slow: once
                self._has_statistics = True
        return result.output

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # A torch.nn state dict has no population counters: load it as statistics of
        # unknown provenance (zero batches), which the next population pass replaces.
        for buffer in _POPULATION_BUFFERS:
            key = prefix + buffer
            if key in missing_keys:
                missing_keys.remove(key)
                getattr(self, buffer).zero_()
        # Loaded running statistics are statistics, even from a torch version that kept no
        # num_batches_tracked (it then loads as 0): use them silently, as torch does.
        self._has_statistics = prefix + "running_mean" in state_dict

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self.estimator not in ("ema", "cumulative"):
            text += f", estimator={self.estimator!r}"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """BN over (N, C) or (N, C, L) input: per activation, statistics over N (and L).

    ``y = gamma * (x - E[x]) / sqrt(Var[x] + eps) + beta`` per channel.
    """

    _accepted_ranks = (2, 3)


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Convolutional BN over (N, C, H, W): per feature map, statistics over N*H*W values."""

    _accepted_ranks = (4,)


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Convolutional BN over (N, C, D, H, W): per feature map, statistics over N*D*H*W."""

    _accepted_ranks = (5,)
