"""Ghost Batch Normalization (Hoffer, Hubara & Soudry 2017, arXiv:1705.08741).

In training, a batch of N samples is split into consecutive *ghost batches* of
``virtual_batch_size`` (vbs) samples, the last one smaller when vbs does not
divide N, and each is normalized with its own statistics::

    x = [x_1 | x_2 | ... | x_K]        K = ceil(N / vbs) chunks along dimension 0
    y_k = gamma * (x_k - mu_k) / sqrt(var_k + eps) + beta       (BN of each chunk)

Outputs and gradients are those of running BN chunk by chunk. The K full-size
chunks go through :func:`batchnorm.functional.normalize` as *one* call: the
(K, vbs, C, *) view becomes a (vbs, K*C, *) batch of K*C channels (gamma and
beta repeated K times), so every backend does the work in one kernel, with no
Python loop over chunks; the smaller last chunk, if any, is a second call.

Running statistics (**our choice**, that of Hoffer et al.'s code and Keras'
``virtual_batch_size``): updated *once per forward*, like BN's, with the pooled
ghost-batch statistics, the statistics the layer normalized with::

    mean = sum_k m_k mu_k / sum_k m_k                (= the batch mean)
    var  = sum_k m_k var_k / sum_k (m_k - 1)         (pooled, unbiased within-chunk variance)

(m_k values per channel in chunk k), fed to the layer's estimator as a batch
whose unbiased variance is ``var``; ``num_batches_tracked`` counts forwards, not
chunks, so ``momentum`` means per step what it means for BN. Evaluation is BN's
(running statistics, or without them the whole batch's statistics): a ghost
layer in eval mode equals the BN layer with the same state.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor

from batchnorm.functional import normalize, validate_input
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d
from batchnorm.statistics import update_running_statistics

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d"]


def _check_virtual_batch_size(owner: str, virtual_batch_size: Any) -> int:
    if isinstance(virtual_batch_size, bool) or not isinstance(
        virtual_batch_size, numbers.Integral
    ):
        raise TypeError(f"{owner}: virtual_batch_size must be an int, got {virtual_batch_size!r}")
    if virtual_batch_size < 1:
        raise ValueError(f"{owner}: virtual_batch_size must be positive, got {virtual_batch_size}")
    return int(virtual_batch_size)


class _GhostMixin:
    """Ghost-batch training forward on top of a project BN layer (see the module docstring)."""

    def __init__(self, num_features: int, virtual_batch_size: int, *args: Any,
                 **kwargs: Any) -> None:  # fmt: skip
        vbs = _check_virtual_batch_size(type(self).__name__, virtual_batch_size)
        super().__init__(num_features, *args, **kwargs)
        self.virtual_batch_size = vbs

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.virtual_batch_size or input.numel() == 0:
            return super().forward(input)  # one chunk, evaluation or an empty batch: plain BN
        return self._ghost_forward(input)

    def _ghost_forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        validate_input(input, self.num_features, True, self._describe())
        n, c, rest = input.shape[0], input.shape[1], tuple(input.shape[2:])
        vbs = self.virtual_batch_size
        full, tail_size = divmod(n, vbs)
        per_sample = math.prod(rest)  # values per channel in one sample
        if tail_size * per_sample == 1:
            raise ValueError(
                f"{self._describe()}: the last ghost batch of a batch of {n} with "
                f"virtual_batch_size={vbs} holds 1 value per channel; BN of it is undefined "
                "(choose a batch size that leaves no single-sample remainder)"
            )
        head = input[: full * vbs].reshape(full, vbs, c, *rest).transpose(0, 1)
        head = head.reshape(vbs, full * c, *rest)
        weight = None if self.weight is None else self.weight.repeat(full)
        bias = None if self.bias is None else self.bias.repeat(full)
        result = normalize(head, weight, bias, None, None, True, self.eps, self.backend)
        output = result.output.reshape(vbs, full, c, *rest).transpose(0, 1)
        output = output.reshape(full * vbs, c, *rest)
        chunk_count = vbs * per_sample
        sum_mean = result.batch_mean.view(full, c).sum(0) * chunk_count
        sum_var = result.batch_var.view(full, c).sum(0) * chunk_count
        chunks = full
        if tail_size:
            tail = normalize(input[full * vbs:], self.weight, self.bias, None, None, True,
                             self.eps, self.backend)  # fmt: skip
            output = torch.cat([output, tail.output])
            sum_mean = sum_mean + tail.batch_mean * (tail_size * per_sample)
            sum_var = sum_var + tail.batch_var * (tail_size * per_sample)
            chunks += 1
        if self.track_running_stats:
            self._track(sum_mean, sum_var, n * per_sample, chunks)
        return output

    @torch.no_grad()
    def _track(self, sum_mean: Tensor, sum_var: Tensor, count: int, chunks: int) -> None:
        """Feed the pooled statistics to the estimator as one batch of ``count`` values."""
        mean = sum_mean / count
        # The estimator applies count/(count-1) to a batch variance: hand it the variance
        # whose correction gives the pooled unbiased within-chunk variance.
        var = sum_var / (count - chunks) * ((count - 1) / count)
        self.num_batches_tracked.add_(1)
        skipped = update_running_statistics(self, self.estimator, mean, var, count)
        self.skipped_updates.add_(skipped.to(self.skipped_updates.dtype))
        if not getattr(self, "_has_statistics", True):
            self._has_statistics = True

    def extra_repr(self) -> str:
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"


class GhostBatchNorm1d(_GhostMixin, BatchNorm1d):
    """Ghost BN over (N, C) or (N, C, L) input.

    Training: ``y_k = gamma * (x_k - mu_k) / sqrt(var_k + eps) + beta`` for each chunk
    ``x_k`` of ``virtual_batch_size`` consecutive samples (statistics over the chunk's
    samples and L); evaluation: BN with the running statistics.
    """


class GhostBatchNorm2d(_GhostMixin, BatchNorm2d):
    """Ghost BN over (N, C, H, W) input.

    Training: ``y_k = gamma * (x_k - mu_k) / sqrt(var_k + eps) + beta`` for each chunk
    ``x_k`` of ``virtual_batch_size`` consecutive samples (statistics per feature map over
    the chunk); evaluation: BN with the running statistics.
    """


class GhostBatchNorm3d(_GhostMixin, BatchNorm3d):
    """Ghost BN over (N, C, D, H, W) input.

    Training: ``y_k = gamma * (x_k - mu_k) / sqrt(var_k + eps) + beta`` for each chunk
    ``x_k`` of ``virtual_batch_size`` consecutive samples (statistics per feature map over
    the chunk); evaluation: BN with the running statistics.
    """
