"""Backend ``"native"``: ATen's batch-norm kernels, and its small-batch fast path.

Training calls ``torch.native_batch_norm`` without running statistics and
returns the batch statistics it computed (the variance recovered from ATen's
``invstd``, so no extra pass over the input); evaluation is
``torch.nn.functional.batch_norm`` with the running statistics.

*In-kernel update* (:func:`update_in_kernel`, the backend's ``update_in_kernel``
field): small batches, such as an MLP's 60 x 100, are bound by per-operation
overhead. ATen's training kernel normalizes and updates copies of the running
statistics, ``(1 - momentum) s + momentum s_B``, in the same call; the guard
then keeps the old statistics where the new ones are not finite (a non-finite
batch statistic makes them non-finite), with ``torch.where`` on a 0-dim flag:
no host synchronization, so it also traces into one compiled/exported graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchnorm.backends._math import reduction_dims
from batchnorm.backends.registry import Backend, register

__all__ = ["BACKEND", "FUSED_UPDATE_MAX_NUMEL", "update_in_kernel", "update_small"]

#: Inputs up to this many elements take the in-kernel update (per-operation overhead
#: dominates there); larger ones take the general path of :mod:`batchnorm.statistics`.
FUSED_UPDATE_MAX_NUMEL = 1 << 18


def _forward(input, weight, bias, running_mean, running_var, training, eps):
    if training:
        output, mean, invstd = torch.native_batch_norm(
            input, weight, bias, None, None, True, 0.0, eps
        )
        if mean.dtype not in (torch.float32, torch.float64):
            # ATen's CPU kernel rounds its statistics to a half/bfloat16 input's dtype unless
            # a float32 parameter makes the call mixed-type: the contract's are float32.
            var, mean = torch.var_mean(input.detach().float(), dim=reduction_dims(input),
                                       correction=0)
            return output, mean, var
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
    skipped: Tensor | None = None,
) -> Tensor | None:
    """ATen's training forward with the moving-average update computed in its kernel.

    Returns None (nothing done) unless ``input`` has at most
    :data:`FUSED_UPDATE_MAX_NUMEL` elements and the running statistics share its
    dtype (float32/float64). A batch whose new statistics are not all finite leaves
    them unchanged and adds 1 to ``skipped`` (if given); all on the device.
    """
    if (
        input.numel() > FUSED_UPDATE_MAX_NUMEL
        or input.dtype not in (torch.float32, torch.float64)
        or running_mean.dtype != input.dtype
    ):
        return None
    if not torch.compiler.is_compiling():
        return update_small(input, weight, bias, running_mean, running_var, momentum, eps, skipped)
    # The functional form for the tracer (the eager form below writes in place).
    stacked = torch.stack((running_mean, running_var))
    new_mean, new_var = stacked.unbind()
    output, _mean, _invstd = torch.native_batch_norm(
        input, weight, bias, new_mean, new_var, True, momentum, eps
    )
    bad = (stacked * 0).sum().isnan()
    running_mean.copy_(torch.where(bad, running_mean, new_mean))
    running_var.copy_(torch.where(bad, running_var, new_var))
    if skipped is not None:
        skipped.add_(bad)
    return output


#: Zero vectors for the finiteness test, by (length, dtype, device): allocated once.
_ZEROS: dict[tuple, Tensor] = {}


def _zeros(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    key = (n, dtype, device)
    zeros = _ZEROS.get(key)
    if zeros is None:
        zeros = torch.zeros(n, dtype=dtype, device=device)
        if type(zeros) is Tensor:  # never keep a tracer's fake or proxy tensor
            if len(_ZEROS) >= 256:
                _ZEROS.clear()
            _ZEROS[key] = zeros
    return zeros


def update_small(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float,
    eps: float,
    skipped: Tensor | None,
) -> Tensor:
    """:func:`update_in_kernel`'s eager form, its checks done by the caller (float32/float64
    input of at most :data:`FUSED_UPDATE_MAX_NUMEL` elements, statistics of its dtype).

    Seven small operations besides ATen's (cat, chunk, vdot, isnan, two where, add_;
    the former form had eight, one of them a
    multiplication by a Python scalar): at 60 x 100 each costs its dispatch, not its
    data, so the form with the fewest and cheapest wins.
    """
    # One copy of both statistics (autograd saves the ones ATen updates, so not the
    # buffers themselves): ATen updates its two rows, one reduction tests them all.
    # (cat + chunk: the fewest calls; the flat copy is what the test below reads.)
    flat = torch.cat((running_mean, running_var))
    new_mean, new_var = flat.chunk(2)
    output = torch.native_batch_norm(input, weight, bias, new_mean, new_var, True, momentum, eps)[
        0
    ]
    # The finiteness test in one BLAS call: x . 0 sums x_i * 0, which is 0 for finite x_i
    # and NaN for inf/NaN, so the dot product is NaN iff some statistic is not finite
    # (exact: no finite value can overflow it). `(x * 0).sum()` is the same test in two
    # kernels, the multiplication by a Python scalar the dearest of them.
    bad = torch.vdot(flat, _zeros(flat.shape[0], flat.dtype, flat.device)).isnan()
    # In place: two operations fewer per call than where() + copy_().
    torch.where(bad, running_mean, new_mean, out=running_mean)
    torch.where(bad, running_var, new_var, out=running_var)
    if skipped is not None:
        skipped.add_(bad)
    return output


BACKEND = register(
    Backend(
        "native",
        _forward,
        update_in_kernel=update_in_kernel,
        description="ATen's batch_norm",
    )
)
