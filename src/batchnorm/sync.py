"""Synchronized BN: one batch split across processes, normalized as one batch.

:class:`SyncBatchNorm` subclasses :class:`torch.nn.SyncBatchNorm` (``isinstance``,
state dicts and torch's constructor, ``process_group=`` included, all hold) and
this project's layers (``estimator=``, ``backend=``). In training, with an
initialized process group of more than one rank, every rank's (N_r, C, *)
input is normalized with the statistics of the concatenated batch of
n = sum_r n_r values per channel (docs/method.md sections 2-3):

* forward: one all-gather of each rank's (n_r, mean_r, M2_r), merged exactly
  (Chan et al., :mod:`batchnorm.distributed`), so ranks may hold different
  batch sizes and a rank with an empty batch takes part; then
  ``y = gamma * (x - mean) / sqrt(M2/n + eps) + beta`` on the layer's backend;
* backward: one all-reduce of ``Sg = sum g`` and ``Sgx = sum g (x - mean)``,
  ``dL/dx = gamma * invstd * (g - Sg/n - (x - mean) * invstd^2 * Sgx/n)``; the
  parameter gradients are this rank's share (``Sgx_r * invstd``, ``Sg_r``): DDP
  (or any gradient all-reduce) sums them;
* running statistics: the estimator sees the global batch (``mean``, the
  unbiased ``M2/(n-1)``), identically on every rank.

Otherwise (eval mode, no process group, world size 1) it is this project's
local BN and runs no collective, as torch's SyncBatchNorm falls back to
``F.batch_norm``. Unlike torch's, it runs on CPU tensors (gloo) as well as on
CUDA (NCCL). No host synchronization beyond the collectives, except with
``estimator="population"``, whose pooling reads the global count on the host.
So the global count is not checked: one value per channel in the whole group
gives var 0 (output beta), and an all-empty group NaN statistics, which the
running-statistics update skips (counted in ``skipped_updates``).

torch's SyncBatchNorm accepts any (N, C, *) input, so nothing in the layer says
whether it stands for BatchNorm1d, 2d or 3d: :func:`revert_sync_batchnorm` takes
``dim=``, else the rank of the last input the layer saw, else the class it was
converted from, and raises if it knows none of them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from batchnorm.backends import compute_dtype
from batchnorm.distributed import Moments, all_reduce_sums, gather_moments
from batchnorm.functional import normalize, validate_input
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d, _BatchNorm
from batchnorm.statistics import Estimator, update_running_statistics

__all__ = ["SyncBatchNorm", "revert_sync_batchnorm"]

_BY_DIM: dict[int, type[_BatchNorm]] = {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}
_SHARED = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
           "population_batches", "population_samples")


def _dim_of_rank(rank: int) -> int:
    """BatchNorm{d}d for an input of ``rank`` dimensions: (N, C) and (N, C, L) are 1d."""
    return max(1, rank - 2)


class _SyncNormalize(torch.autograd.Function):
    """``gamma * (x - mean) / sqrt(var + eps) + beta`` with global ``mean``/``var`` (constants
    here: their gradient paths are in the backward formula, which all-reduces Sg, Sgx)."""

    @staticmethod
    def forward(ctx: Any, input: Tensor, weight: Tensor | None, bias: Tensor | None,
                mean: Tensor, var: Tensor, count: Tensor, eps: float,
                group: dist.ProcessGroup | None, backend: str) -> Tensor:
        ctx.save_for_backward(input, weight, mean, var, count)
        ctx.eps, ctx.group = eps, group
        if all(p is None or p.dtype == mean.dtype for p in (weight, bias)):
            return normalize(input, weight, bias, mean, var, False, eps, backend).output
        # Half-precision parameters: ATen wants them and the statistics in one dtype;
        # keep the statistics in float32 and compute the transform here.
        shape = [1, -1] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + eps)
        if weight is not None:
            scale = scale * weight.to(mean.dtype)
        output = (input.to(mean.dtype) - mean.view(shape)) * scale.view(shape)
        if bias is not None:
            output = output + bias.to(mean.dtype).view(shape)
        return output.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        input, weight, mean, var, count = ctx.saved_tensors
        dtype = mean.dtype
        shape = [1, -1] + [1] * (input.dim() - 2)
        dims = [0, *range(2, input.dim())]
        invstd = torch.rsqrt(var + ctx.eps)
        g = grad.to(dtype)
        centered = input.to(dtype) - mean.view(shape)
        if input.numel() > 0:
            sum_g, sum_gx = g.sum(dims), (g * centered).sum(dims)
        else:  # an empty rank still takes part in the all-reduce
            sum_g, sum_gx = torch.zeros_like(mean), torch.zeros_like(mean)
        grad_input = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            total_g, total_gx = all_reduce_sums(sum_g, sum_gx, ctx.group)
            n = count.to(dtype)
            scale = invstd if weight is None else weight.to(dtype) * invstd
            grad_input = scale.view(shape) * (
                g - (total_g / n).view(shape)
                - centered * (invstd * invstd * total_gx / n).view(shape)
            )
            grad_input = grad_input.to(input.dtype)
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = (sum_gx * invstd).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = sum_g.to(weight.dtype if weight is not None else dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class _TorchSyncInit(nn.SyncBatchNorm):
    """Adapter: this project's ``_BatchNorm`` calls its base with torch's BatchNorm*d
    positional order ``(..., device, dtype)``, where torch's SyncBatchNorm puts
    ``process_group`` before ``device``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device: Any = None,
                 dtype: torch.dtype | None = None, *, bias: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, None,
                         device, dtype, bias=bias)


class SyncBatchNorm(_BatchNorm, _TorchSyncInit):
    """BN whose training statistics span every rank of ``process_group`` (default: the
    world); see the module docstring. Any (N, C, *) input."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        estimator: Estimator | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device,
                         dtype, estimator=estimator, backend=backend)
        if not bias:
            self.register_parameter("bias", None)
        self.process_group = process_group
        self._seen_rank: int | None = None  # of the last input: for revert_sync_batchnorm
        self._source_dim: int | None = None  # BatchNorm{d}d it was converted from

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"{self._describe()}: expected (N, C, *) input with at least 2 dimensions, "
                f"got {input.dim()}D input of shape {tuple(input.shape)}"
            )

    def _group(self) -> tuple[Any, int]:
        """(group, world size) to synchronize over; world size 1 means: do not."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None, 1
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group, dist.get_world_size(group)

    def forward(self, input: Tensor) -> Tensor:
        if self._seen_rank != input.dim():
            object.__setattr__(self, "_seen_rank", input.dim())
        group, world_size = self._group()
        if world_size <= 1:
            return self._forward(input, "identity", None)
        self._check_input_dim(input)
        validate_input(input, self.num_features, False, self._describe())
        with torch.no_grad():
            moments = gather_moments(input, group, world_size)
        dtype = compute_dtype(input.dtype)
        mean, var = moments.mean.to(dtype), moments.var.to(dtype)
        output = _SyncNormalize.apply(input, self.weight, self.bias, mean, var, moments.count,
                                      self.eps, group, self.backend)
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            self._update_running_statistics(moments)
            if not self._has_statistics:
                self._has_statistics = True
        return output

    @torch.no_grad()
    def _update_running_statistics(self, moments: Moments) -> None:
        """The estimator on the global batch of n values per channel."""
        if self.estimator == "population":  # pooling weighs by the count: read it (host sync)
            skipped = update_running_statistics(self, "population", moments.mean, moments.var,
                                                int(moments.count))
        else:  # the unbiased M2/(n-1) on the device; count 1 = no further correction
            unbiased = moments.m2 / (moments.count - 1).clamp_min(1.0)
            skipped = update_running_statistics(self, self.estimator, moments.mean, unbiased, 1)
        self.skipped_updates.add_(skipped.to(self.skipped_updates.dtype))

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None
                               ) -> nn.Module:
        """Replace every BatchNorm1d/2d/3d (torch's or this project's) and torch's
        SyncBatchNorm in ``module`` by :class:`SyncBatchNorm`, sharing parameters and
        buffers (state kept, train/eval mode too); estimator and backend are kept from
        this project's layers. Fused and other subclasses are left alone. Returns the
        root (a new layer if ``module`` itself is one)."""
        return _walk(module, lambda layer: _to_sync(cls, layer, process_group))


def _convertible(layer: nn.Module) -> bool:
    return type(layer) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
                           BatchNorm1d, BatchNorm2d, BatchNorm3d)


def _walk(module: nn.Module, replace: Any) -> nn.Module:
    new = replace(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        converted = _walk(child, replace)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _factory(layer: nn.Module) -> dict[str, Any]:
    for tensor in (layer.weight, layer.running_mean):
        if tensor is not None:
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


def _share(old: nn.Module, new: nn.Module) -> nn.Module:
    for name in _SHARED:
        value = getattr(old, name, None)
        if value is not None and hasattr(new, name):
            setattr(new, name, value)
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig
    return new.train(old.training)


def _to_sync(cls: type[SyncBatchNorm], layer: nn.Module, process_group: Any
             ) -> nn.Module | None:
    if not _convertible(layer):
        return None
    ours = {"estimator": layer.estimator, "backend": layer.backend} \
        if isinstance(layer, _BatchNorm) else {}
    new = cls(layer.num_features, layer.eps, layer.momentum, layer.affine,
              layer.track_running_stats, process_group, **_factory(layer),
              bias=not layer.affine or layer.bias is not None, **ours)
    if not isinstance(layer, nn.SyncBatchNorm):
        new._source_dim = _dim_of_rank(layer._accepted_ranks[-1]) \
            if isinstance(layer, _BatchNorm) else _TORCH_DIMS[type(layer)]
    return _share(layer, new)


_TORCH_DIMS = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}


def _to_local(layer: nn.Module, dim: int | None) -> nn.Module | None:
    if not isinstance(layer, nn.SyncBatchNorm):
        return None
    chosen = dim
    if chosen is None:
        seen = getattr(layer, "_seen_rank", None)
        chosen = _dim_of_rank(seen) if seen is not None else getattr(layer, "_source_dim", None)
    if chosen not in _BY_DIM:
        raise ValueError(
            f"revert_sync_batchnorm: {type(layer).__name__}({layer.num_features}) has seen no "
            "input and was not converted from a BatchNorm*d: pass dim=1, 2 or 3"
            if dim is None else f"revert_sync_batchnorm: dim must be 1, 2 or 3, got {dim!r}"
        )
    ours = {"estimator": layer.estimator, "backend": layer.backend} \
        if isinstance(layer, _BatchNorm) else {}
    if layer.affine and layer.bias is None:
        raise ValueError("revert_sync_batchnorm: BatchNorm*d needs a bias (bias=False layer)")
    new = _BY_DIM[chosen](layer.num_features, layer.eps, layer.momentum, layer.affine,
                          layer.track_running_stats, **_factory(layer), **ours)
    return _share(layer, new)


def revert_sync_batchnorm(module: nn.Module, dim: int | None = None) -> nn.Module:
    """Replace every SyncBatchNorm (this project's or torch's) in ``module`` by
    ``batchnorm.BatchNorm{dim}d`` for single-process use, sharing parameters and buffers.

    ``dim`` (1, 2 or 3) applies to every layer; None: per layer, the rank of the last
    input it saw ((N, C) or (N, C, L): 1d, 4D: 2d, 5D: 3d), else the class it was
    converted from by :meth:`SyncBatchNorm.convert_sync_batchnorm`, else an error.
    """
    if dim is not None and dim not in _BY_DIM:
        raise ValueError(f"revert_sync_batchnorm: dim must be 1, 2 or 3, got {dim!r}")
    return _walk(module, lambda layer: _to_local(layer, dim))
