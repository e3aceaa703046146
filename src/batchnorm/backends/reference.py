"""Backend ``"reference"``: the paper's equations, by hand.

Forward is Algorithm 1 (docs/method.md section 2) with a two-pass variance;
backward is the chain rule of section 3, term by term::

    dL/dxhat  = dL/dy * gamma
    dL/dvar   = sum(dL/dxhat * (x - mu)) * (-1/2) * (var + eps)^(-3/2)
    dL/dmu    = sum(dL/dxhat * -1/sqrt(var + eps)) + dL/dvar * sum(-2 (x - mu)) / m
    dL/dx     = dL/dxhat / sqrt(var + eps) + dL/dvar * 2 (x - mu) / m + dL/dmu / m
    dL/dgamma = sum(dL/dy * xhat)          dL/dbeta = sum(dL/dy)

The backward is written with differentiable tensor operations, so double
backward (gradient penalties, ``gradgradcheck``) works. Statistics are
accumulated in float32 for half-precision input (float64 for float64). In
evaluation the transform is the per-channel affine map of Algorithm 2 step 4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchnorm.backends._math import channel_shape, compute_dtype, reduction_dims
from batchnorm.backends.registry import Backend, register

__all__ = ["BACKEND", "PaperBatchNorm", "affine_with_statistics"]


class PaperBatchNorm(torch.autograd.Function):
    """Algorithm 1 forward; backward by the chain-rule equations of section 3."""

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        dtype = compute_dtype(input.dtype)
        x = input.to(dtype)
        dims = reduction_dims(x)
        shape = channel_shape(x)
        mean = x.mean(dim=dims)
        centered = x - mean.view(shape)
        var = centered.square().mean(dim=dims)  # two passes: exact for large means
        invstd = torch.rsqrt(var + eps)
        y = centered * invstd.view(shape)
        if weight is not None:
            y = y * weight.to(dtype).view(shape)
        if bias is not None:
            y = y + bias.to(dtype).view(shape)
        ctx.save_for_backward(input, weight, bias, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y.to(input.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_mean: Tensor, _grad_var: Tensor):
        input, weight, bias, mean, invstd = ctx.saved_tensors
        dtype = compute_dtype(input.dtype)
        x = input.to(dtype)
        dy = grad_output.to(dtype)
        dims = reduction_dims(x)
        shape = channel_shape(x)
        m = x.numel() // x.shape[1]
        if torch.is_grad_enabled():
            # create_graph=True: mean and invstd must be functions of the input for the
            # second derivative, so recompute them inside the graph instead of reusing them.
            mean = x.mean(dim=dims)
            invstd = torch.rsqrt((x - mean.view(shape)).square().mean(dim=dims) + ctx.eps)
        centered = x - mean.view(shape)
        gamma = (
            weight.to(dtype).view(shape) if weight is not None else torch.ones((), dtype=dtype)
        )
        # Section 3, term by term:
        dxhat = dy * gamma
        dvar = (dxhat * centered).sum(dim=dims) * (-0.5) * invstd.pow(3)
        dmu = (dxhat * -invstd.view(shape)).sum(dim=dims) + dvar * (
            -2.0 * centered
        ).sum(dim=dims) / m
        dx = (
            dxhat * invstd.view(shape)
            + dvar.view(shape) * 2.0 * centered / m
            + dmu.view(shape) / m
        )
        grad_input = dx.to(input.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            xhat = centered * invstd.view(shape)
            grad_weight = (dy * xhat).sum(dim=dims).to(weight.dtype)
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = dy.sum(dim=dims).to(bias.dtype)
        return grad_input, grad_weight, grad_bias, None


def affine_with_statistics(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    eps: float,
) -> Tensor:
    """Algorithm 2 step 4: with fixed statistics BN is an affine map per channel."""
    dtype = compute_dtype(input.dtype)
    shape = channel_shape(input)
    scale = torch.rsqrt(var.to(dtype) + eps)
    if weight is not None:
        scale = scale * weight.to(dtype)
    shift = -mean.to(dtype) * scale
    if bias is not None:
        shift = shift + bias.to(dtype)
    return (input.to(dtype) * scale.view(shape) + shift.view(shape)).to(input.dtype)


def _forward(input, weight, bias, running_mean, running_var, training, eps):
    if training:
        output, mean, var = PaperBatchNorm.apply(input, weight, bias, eps)
        return output, mean.detach(), var.detach()
    return affine_with_statistics(input, weight, bias, running_mean, running_var, eps), None, None


BACKEND = register(
    Backend("reference", _forward, description="the paper's equations, by hand")
)
