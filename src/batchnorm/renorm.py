"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275; docs/method.md section 10).

BN trains with mini-batch statistics and infers with moving averages; with
small or non-i.i.d. batches the two differ and the network learns to depend on
the difference. Batch Renorm corrects each training batch toward the moving
averages mu, sigma by a per-channel affine map that gets no gradient::

    sigma_B = sqrt(var_B + eps)                      sigma = sqrt(running_var + eps)
    r = clip(sigma_B / sigma, 1/rmax, rmax)          d = clip((mu_B - mu) / sigma, -dmax, dmax)
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta          (r, d detached)

Without clipping, ``(x - mu_B) / sigma_B * r + d = (x - mu) / sigma``: the
inference transform. With ``rmax = 1, dmax = 0`` it is BN exactly.

Schedule: plain BN (rmax = 1, dmax = 0) for ``warmup_steps`` training steps, then
rmax and dmax grow linearly to their final values over ``ramp_steps`` steps.
The step is ``num_batches_tracked`` before this batch (a buffer, torch's name):
the schedule follows the state dict, restarts with ``reset_running_stats``, and
a layer loaded from a trained BN starts past its warm-up.

**Our choice** of defaults: rmax 3 and dmax 5 as in the paper; the paper's
step counts (warm-up 5k, ramps reaching their ends at 25k and 40k, with moving
averages of rate 0.01) divided by 10, because torch's default ``momentum`` 0.1
moves the averages ten times faster: ``warmup_steps=500``, ``ramp_steps=3000``
(one ramp for both, between the paper's 2000 for dmax and 3500 for rmax).

The folding keeps it one BN call: r and d come from the batch statistics
(``torch.var_mean``, detached) and the running statistics *before* this batch's
update, and then :func:`batchnorm.functional.normalize` runs with weight
``gamma * r`` and bias ``gamma * d + beta`` on the selected backend; the
estimator then updates the running statistics as BN's would (torch's EMA, with
the unbiased batch variance). Evaluation is BN with the running statistics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from batchnorm.backends import compute_dtype
from batchnorm.functional import normalize, validate_input
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d
from batchnorm.statistics import update_running_statistics

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "renorm_limits"]


def renorm_limits(
    step: Tensor, rmax: float, dmax: float, warmup_steps: int, ramp_steps: int,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """``(rmax_t, dmax_t)`` at ``step`` as ``dtype`` tensors (no host synchronization).

    1 and 0 before ``warmup_steps``, then linear to ``rmax``, ``dmax`` over ``ramp_steps``
    (a jump when ``ramp_steps`` is 0).
    """
    elapsed = (step - warmup_steps).to(dtype)
    if ramp_steps == 0:
        progress = (elapsed >= 0).to(dtype)
    else:
        progress = (elapsed / ramp_steps).clamp(0.0, 1.0)
    return 1.0 + (rmax - 1.0) * progress, dmax * progress


class _RenormMixin:
    """Batch Renorm's training forward on top of a project BN layer (see the module doc)."""

    def __init__(self, num_features: int, *args: Any, rmax: float = 3.0, dmax: float = 5.0,
                 warmup_steps: int = 500, ramp_steps: int = 3000,
                 **kwargs: Any) -> None:  # fmt: skip
        name = type(self).__name__
        if not rmax >= 1.0:
            raise ValueError(f"{name}: rmax must be >= 1, got {rmax}")
        if not dmax >= 0.0:
            raise ValueError(f"{name}: dmax must be >= 0, got {dmax}")
        for label, steps in (("warmup_steps", warmup_steps), ("ramp_steps", ramp_steps)):
            if isinstance(steps, bool) or not isinstance(steps, int):
                raise TypeError(f"{name}: {label} must be an int, got {steps!r}")
            if steps < 0:
                raise ValueError(f"{name}: {label} must be >= 0, got {steps}")
        super().__init__(num_features, *args, **kwargs)
        if not self.track_running_stats:
            raise ValueError(
                f"{name}: Batch Renorm corrects toward the running statistics; it needs "
                "track_running_stats=True"
            )
        self.rmax, self.dmax = float(rmax), float(dmax)
        self.warmup_steps, self.ramp_steps = warmup_steps, ramp_steps

    def limits(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """``(rmax_t, dmax_t)`` that the next training step uses."""
        return renorm_limits(self.num_batches_tracked, self.rmax, self.dmax,
                             self.warmup_steps, self.ramp_steps, dtype)  # fmt: skip

    @torch.no_grad()
    def correction(self, input: Tensor) -> tuple[Tensor, Tensor]:
        """``(r, d)`` per channel for the training batch ``input`` (detached)."""
        dims = [0, *range(2, input.dim())]
        batch_var, batch_mean = torch.var_mean(
            input.detach().to(compute_dtype(input.dtype)), dim=dims, correction=0
        )
        rmax_t, dmax_t = self.limits(batch_var.dtype)
        inv_sigma = torch.rsqrt(self.running_var.to(batch_var.dtype) + self.eps)
        r = (torch.sqrt(batch_var + self.eps) * inv_sigma).clamp(1.0 / rmax_t, rmax_t)
        d = ((batch_mean - self.running_mean.to(batch_mean.dtype)) * inv_sigma).clamp(
            -dmax_t, dmax_t
        )
        return r, d

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.numel() == 0:
            return super().forward(input)  # evaluation, or an empty batch (counted, skipped)
        self._check_input_dim(input)
        validate_input(input, self.num_features, True, self._describe())
        r, d = self.correction(input)
        if self.weight is None:
            weight, bias = r, d
        else:
            weight = self.weight * r.to(self.weight.dtype)
            bias = self.weight * d.to(self.weight.dtype) + self.bias
        result = normalize(input, weight, bias, None, None, True, self.eps, self.backend)
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            skipped = update_running_statistics(self, self.estimator, result.batch_mean,
                                                result.batch_var, input.numel() // input.shape[1])
            self.skipped_updates.add_(skipped.to(self.skipped_updates.dtype))
        if not getattr(self, "_has_statistics", True):
            self._has_statistics = True
        return result.output

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", rmax={self.rmax}, dmax={self.dmax}, "
                f"warmup_steps={self.warmup_steps}, ramp_steps={self.ramp_steps}")  # fmt: skip


class BatchRenorm1d(_RenormMixin, BatchNorm1d):
    """Batch Renorm over (N, C) or (N, C, L) input; statistics per channel over N (and L).

    Training: ``y = gamma * ((x - mu_B) / sigma_B * r + d) + beta`` with
    ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``
    (no gradient through r, d); evaluation: BN with the running statistics.
    """


class BatchRenorm2d(_RenormMixin, BatchNorm2d):
    """Batch Renorm over (N, C, H, W) input; statistics per feature map.

    Training: ``y = gamma * ((x - mu_B) / sigma_B * r + d) + beta`` with
    ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``
    (no gradient through r, d); evaluation: BN with the running statistics.
    """


class BatchRenorm3d(_RenormMixin, BatchNorm3d):
    """Batch Renorm over (N, C, D, H, W) input; statistics per feature map.

    Training: ``y = gamma * ((x - mu_B) / sigma_B * r + d) + beta`` with
    ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma, -dmax, dmax)``
    (no gradient through r, d); evaluation: BN with the running statistics.
    """
