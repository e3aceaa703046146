"""The BN equations written once, as traceable tensor code for TorchInductor.

Every function here is pure (no in-place updates, no Python control flow that
depends on tensor values), so :func:`torch.fx.experimental.proxy_tensor.make_fx`
can trace it and Inductor can fuse it. The formulation is chosen for the number
of passes over memory, the quantity BN is bound by:

*Forward, training* (one read for the statistics, one read and one write for
the output). With a per-channel shift ``s`` (the channel's first value)::

    d = x - s,  S1 = sum(d),  S2 = sum(d^2)            # one pass, two sums
    mu = s + S1/m,  var = max(S2/m - (S1/m)^2, 0)       # biased
    y = act((x - s) * a + b'),  a = gamma / sqrt(var + eps),  b' = beta - (S1/m) * a

The shift keeps ``S2/m - (S1/m)^2`` free of the cancellation that ruins the
textbook ``E[x^2] - E[x]^2`` when |mean| >> std, at the cost of nothing. The
shifted values are also rescaled by an exact power of two ``c ~ 1/|s|`` before
they are squared (``S1, S2`` of ``(x - s) * c``, then divided by ``c``, ``c^2``):
without it ``d^2`` and its sum overflow float32 for |x| beyond ~1e17 and the
statistics turned into inf/NaN where the input is finite. (Accumulating in
float64 instead measured up to 3x slower on channels-last input.)

*Backward* (one read of x and dy for two sums, one more read and a write for
dx), with ``g = dy * act'(z)``::

    Sg = sum(g),  Sgx = sum(g * (x - mu))
    dgamma = Sgx * invstd,  dbeta = Sg
    dx = gamma * invstd * (g - Sg/m - (x - mu) * invstd^2 * Sgx/m)

*Layout.* Channels-first input (NCHW, NCL, (N, C)) is viewed as (N, C, S),
channels-last input as (N, S, C); either is reduced in two stages, over S per
sample and then over N, so that both CPU threads get work even when C is small.
"""

from __future__ import annotations

import torch
from torch import Tensor

from batchnorm.activations import activate, activation_grad


def is_channels_last(x: Tensor) -> bool:
    """True if the channel dimension is the innermost one in memory (NHWC-like)."""
    if x.dim() < 3 or x.shape[1] == 1:
        return False
    return x.stride(1) == 1 and x.permute(0, *range(2, x.dim()), 1).is_contiguous()


def _view3(x: Tensor, channels_last: bool) -> Tensor:
    """(N, C, S) for channels-first input, (N, S, C) for channels-last input."""
    n, c = x.shape[0], x.shape[1]
    if channels_last:
        return x.permute(0, *range(2, x.dim()), 1).reshape(n, -1, c)
    return x.reshape(n, c, -1)


def _unview3(y3: Tensor, like: Tensor, channels_last: bool) -> Tensor:
    if channels_last:
        shape = [like.shape[0], *like.shape[2:], like.shape[1]]
        return y3.reshape(shape).permute(0, like.dim() - 1, *range(1, like.dim() - 1))
    return y3.reshape(like.shape)


def _channel_sum(t3: Tensor, channels_last: bool) -> Tensor:
    """Per-channel sum of a (N, C, S) or (N, S, C) tensor.

    Two stages, per sample over S and then over N: the first stage streams the
    input in memory order and splits over samples (both threads busy even with
    few channels); it measured as fast or faster than one reduction over (N, S).
    """
    if channels_last:
        return t3.sum(1).sum(0)
    return t3.sum(2).sum(0)


def _bcast(v: Tensor, channels_last: bool) -> Tensor:
    return v if channels_last else v.view(-1, 1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics and arithmetic: float64 for float64 input, float32 for everything else.

    float16/bfloat16 input is normalized with statistics accumulated in float32
    (docs/method.md section 2, the project's choice for half precision).
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduction_dims(input: Tensor) -> list[int]:
    """The dimensions a channel's statistics are taken over: all but dimension 1."""
    return [0, *range(2, input.dim())]


def channel_shape(input: Tensor) -> list[int]:
    """Shape that broadcasts a per-channel vector against ``input``."""
    return [1, input.shape[1]] + [1] * (input.dim() - 2)


def materialize_affine(
    x: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """gamma and beta, as ones/zeros in the compute dtype when the layer is not affine."""
    if weight is None:
        weight = torch.ones(x.shape[1], dtype=compute_dtype(x.dtype), device=x.device)
    if bias is None:
        bias = torch.zeros(x.shape[1], dtype=weight.dtype, device=x.device)
    return weight, bias


def forward_train(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    residual: Tensor | None,
    eps: float,
    activation: str = "identity",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training forward: returns (y, batch_mean, batch_var (biased), invstd)."""
    cl = is_channels_last(x)
    ct = compute_dtype(x.dtype)
    x3 = _view3(x, cl).to(ct)
    m = x.numel() // x.shape[1]
    shift = x3[0, 0] if cl else x3[0, :, 0]
    # d = (x - s) * c with c = 2^-e, |s| ~ 2^e: an exact rescaling that keeps d ~ O(spread /
    # |s|) whatever the magnitude, so that d^2 and its sum stay within float32's range.
    c = torch.exp2(-torch.floor(torch.log2(shift.abs().clamp_min(1.0))))
    d = (x3 - _bcast(shift, cl)) * _bcast(c, cl)
    mean_d = _channel_sum(d, cl) / m
    var = (_channel_sum(d * d, cl) / m - mean_d * mean_d).clamp_min(0.0) / (c * c)
    mean_d = mean_d / c
    mean = mean_d + shift
    invstd = torch.rsqrt(var + eps)
    scale = invstd * weight.to(ct)
    # y = (x - s) * scale + (beta - mean_d * scale): x - s is exact in the compute dtype
    # (s is one of the channel's values), so a large mean costs no output precision.
    offset = bias.to(ct) - mean_d * scale
    z = (x3 - _bcast(shift, cl)) * _bcast(scale, cl) + _bcast(offset, cl)
    if residual is not None:
        z = z + _view3(residual, cl).to(ct)
    y = _unview3(activate(z, activation).to(x.dtype), x, cl)
    return y, mean, var, invstd


def backward_train(
    grad: Tensor,
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean: Tensor,
    invstd: Tensor,
    output: Tensor | None,
    activation: str = "identity",
    want_dz: bool = False,
) -> tuple[Tensor, ...]:
    """Training backward: returns (dx, dgamma, dbeta) and, if ``want_dz``, dz.

    ``dz = grad * act'(z)`` is the gradient at the pre-activation, i.e. that of
    a fused residual. ``output`` is the saved forward output, needed only when
    the activation cannot be recomputed from ``x`` (with a residual).
    """
    cl = is_channels_last(x)
    ct = compute_dtype(x.dtype)
    x3 = _view3(x, cl).to(ct)
    g = _view3(grad, cl).to(ct)
    m = x.numel() // x.shape[1]
    w = weight.to(ct)
    if activation != "identity":
        if output is None:
            scale = invstd * w
            z = x3 * _bcast(scale, cl) + _bcast(bias.to(ct) - mean * scale, cl)
            g = activation_grad(g, z, None, activation)
        else:
            g = activation_grad(g, None, _view3(output, cl).to(ct), activation)
    xmu = x3 - _bcast(mean, cl)
    sum_g = _channel_sum(g, cl)
    sum_gx = _channel_sum(g * xmu, cl)
    a = w * invstd
    k = a * invstd * invstd * sum_gx / m
    c = a * sum_g / m
    dx = g * _bcast(a, cl) - xmu * _bcast(k, cl) - _bcast(c, cl)
    grads = (
        _unview3(dx.to(x.dtype), x, cl),
        (sum_gx * invstd).to(weight.dtype),
        sum_g.to(bias.dtype),
    )
    if want_dz:
        return (*grads, _unview3(g.to(x.dtype), x, cl))
    return grads


def forward_eval(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    residual: Tensor | None,
    eps: float,
    activation: str = "identity",
) -> Tensor:
    """Algorithm 2 step 4: ``act(x * a + b' [+ r])`` with the running statistics."""
    cl = is_channels_last(x)
    ct = compute_dtype(x.dtype)
    x3 = _view3(x, cl).to(ct)
    scale = torch.rsqrt(running_var.to(ct) + eps) * weight.to(ct)
    shift = bias.to(ct) - running_mean.to(ct) * scale
    z = x3 * _bcast(scale, cl) + _bcast(shift, cl)
    if residual is not None:
        z = z + _view3(residual, cl).to(ct)
    return _unview3(activate(z, activation).to(x.dtype), x, cl)
