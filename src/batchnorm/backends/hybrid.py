"""Backend ``"hybrid"``: the generated forward of ``"compiled"`` with ATen's backward.

ATen's CPU backward already works channel by channel (the reduction and the
dx pass of one channel back to back, the second read served from cache) and
measures faster than the generated backward on this machine; ATen's forward,
which reads the input three times, is the slow half. So training runs the
two-pass generated forward and ATen's backward kernel: the fastest pair for
NCHW float32 training on the CPU (``benchmarks/README.md``). Evaluation is
the ``"compiled"`` backend's.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from batchnorm.backends import _inductor, _math
from batchnorm.backends._inductor import run as _run
from batchnorm.backends.compiled import compiled_batch_norm, forward_train_fn
from batchnorm.backends.registry import Backend, register

__all__ = ["BACKEND"]

class _HybridTraining(torch.autograd.Function):
    """Generated forward, ATen's backward kernel.

    ATen's CPU backward already works channel by channel (the reduction and the
    dx pass of one channel back to back, the second read served from cache)
    and measures faster than the generated backward on this machine; ATen's
    forward is the slow half. See ``benchmarks/README.md``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float):
        w, b = _math.materialize_affine(x, weight, bias)
        fwd = functools.partial(forward_train_fn, eps=eps, activation="identity")
        y, mean, var, invstd = _run("train_fwd", fwd, (eps, "identity"), [x, w, b])
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable  # double backward: use the reference backend
    def backward(ctx, grad, _grad_mean, _grad_var):
        x, weight, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, ctx.eps,
            [needs[0], needs[1] and weight is not None, needs[2]],
        )  # fmt: skip
        return dx, dw, db, None


def _hybrid_forward(input, weight, bias, running_mean, running_var, training, eps):
    if training and not torch.compiler.is_compiling():
        y, mean, var = _HybridTraining.apply(input, weight, bias, eps)
        return y, mean, var
    return compiled_batch_norm(input, weight, bias, running_mean, running_var, training, eps)


def _hybrid_available(input: Tensor) -> bool:
    return (
        input.device.type == "cpu"
        and input.dtype in (torch.float32, torch.float64)
        and _inductor.has_cpp_compiler()
    )


BACKEND = register(
    Backend(
        "hybrid",
        _hybrid_forward,
        _hybrid_available,
        failures=_inductor.failures,
        description="Inductor-generated forward, ATen's backward kernel (CPU, float32/float64)",
    )
)
