"""Backend ``"native"``: ATen's batch-norm kernels, and its small-batch fast path.

Training calls ``torch.native_batch_norm`` without running statistics and
returns the batch statistics it computed (the variance recovered from ATen's
``invstd``, so no extra pass over the input); evaluation is
``torch.nn.functional.batch_norm`` with the running statistics.

*In-kernel update* (:func:`update_in_kernel`, the backend's ``update_in_kernel``
field): small batches, such as an MLP's 60 x 100, are bound by per-operation
overhead, and the guarded update of :mod:`batchnorm.statistics` costs several
operations. For those, one reduction proves the statistics finite first (if the
2-norm of the input is finite, so are its mean and variance) and ATen then
updates the running statistics inside its own kernel. When that cannot be
shown cheaply the function returns None and the caller takes the general path,
which skips a non-finite batch's update exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from batchnorm.backends.registry import Backend, register

__all__ = ["BACKEND", "FUSED_UPDATE_MAX_NUMEL", "update_in_kernel"]

#: Inputs up to this many elements take the in-kernel update: there the extra read
#: of the input is cheaper than the ~8 small tensor operations it saves.
FUSED_UPDATE_MAX_NUMEL = 1 << 18


def _forward(input, weight, bias, running_mean, running_var, training, eps):
    if training:
        output, mean, invstd = torch.native_batch_norm(
            input, weight, bias, None, None, True, 0.0, eps
        )
        # ATen returns 1/sqrt(var + eps); invert it rather than spend a pass over the input.
        var = (invstd.detach().double().pow(-2) - eps).clamp_min(0.0)
        return output, mean.detach(), var.to(mean.dtype)
    output = torch.nn.functional.batch_norm(
        input, running_mean, running_var, weight, bias, False, 0.0, eps
    )
    return output, None, None


def update_in_kernel(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float,
    eps: float,
) -> Tensor | None:
    """ATen's training forward with its in-kernel running-statistics update, when safe.

    Returns None (nothing done) unless ``input`` is a small float32/float64 CPU
    tensor whose 2-norm is finite and whose running statistics share its dtype.
    """
    if (
        input.device.type != "cpu"
        or input.numel() > FUSED_UPDATE_MAX_NUMEL
        or input.dtype not in (torch.float32, torch.float64)
        or running_mean.dtype != input.dtype
    ):
        return None
    if not math.isfinite(float(torch.linalg.vector_norm(input.detach()))):
        return None
    return torch.nn.functional.batch_norm(
        input, running_mean, running_var, weight, bias, True, momentum, eps
    )


BACKEND = register(
    Backend(
        "native",
        _forward,
        update_in_kernel=update_in_kernel,
        description="ATen's batch_norm",
    )
)
