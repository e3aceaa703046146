"""The BN transform (Algorithm 1 of Ioffe & Szegedy 2015) as a function.

For an input of shape (N, C, *) every channel c is normalized over the
N * prod(*) values it holds (per activation for (N, C), per feature map for
convolutions, PAPER.md section 5)::

    mu    = mean(x)                       var = mean((x - mu)^2)   (biased)
    y     = gamma * (x - mu) / sqrt(var + eps) + beta

In training the mini-batch statistics are used and the running statistics are
updated in place with ``momentum`` (unbiased variance, torch's convention); in
evaluation the running statistics are used. :func:`batch_norm` has exactly the
signature and semantics of :func:`torch.nn.functional.batch_norm`, plus the
``backend`` keyword.

A *backend* computes the forward pass and returns the mini-batch statistics it
used, so that updating running statistics stays in one place
(:mod:`batchnorm.statistics`) whatever kernel ran. Its contract::

    forward(input, weight, bias, running_mean, running_var, training, eps)
        -> (output, batch_mean, batch_var)

with ``batch_mean``/``batch_var`` (biased) detached, float32 or float64, shape
(C,), and ``None`` when ``training`` is False. ``output`` is differentiable with
respect to ``input``, ``weight`` and ``bias``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BACKENDS", "Backend", "available_backends", "batch_norm", "register_backend"]

BackendForward = Callable[
    [Tensor, Tensor | None, Tensor | None, Tensor | None, Tensor | None, bool, float],
    tuple[Tensor, Tensor | None, Tensor | None],
]


@dataclass(frozen=True)
class Backend:
    """A named implementation of the BN forward pass (see the module docstring)."""

    name: str
    forward: BackendForward
    is_available: Callable[[Tensor], bool] = lambda _input: True
    description: str = ""


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Make ``backend`` selectable by name in :func:`batch_norm` and the layers."""
    if backend.name == "auto":
        raise ValueError("'auto' is reserved for automatic backend selection")
    BACKENDS[backend.name] = backend


def available_backends(input: Tensor | None = None) -> list[str]:
    """Names of the registered backends (those usable on ``input``, if given)."""
    _load_kernels()
    return [
        name
        for name, backend in BACKENDS.items()
        if input is None or backend.is_available(input)
    ]


def statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are accumulated in float32 for half and bfloat16 input."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduction_dims(input: Tensor) -> list[int]:
    return [0, *range(2, input.dim())]


def channel_shape(input: Tensor) -> list[int]:
    """Shape that broadcasts a per-channel vector against ``input``."""
    return [1, input.shape[1]] + [1] * (input.dim() - 2)


# --- backend "reference": the paper's equations -------------------------------------------


class _PaperBatchNorm(torch.autograd.Function):
    """Algorithm 1 forward; backward by the chain-rule equations of section 3.

    The backward is written with differentiable tensor operations, so double
    backward (e.g. gradient penalties, ``gradgradcheck``) works too.
    """

    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        compute_dtype = statistics_dtype(input.dtype)
        x = input.to(compute_dtype)
        dims = reduction_dims(x)
        shape = channel_shape(x)
        mean = x.mean(dim=dims)
        centered = x - mean.view(shape)
        var = centered.square().mean(dim=dims)  # two passes: exact for large means
        invstd = torch.rsqrt(var + eps)
        y = centered * invstd.view(shape)
        if weight is not None:
            y = y * weight.to(compute_dtype).view(shape)
        if bias is not None:
            y = y + bias.to(compute_dtype).view(shape)
        ctx.save_for_backward(input, weight, bias, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y.to(input.dtype), mean, var

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_mean: Tensor, _grad_var: Tensor):
        input, weight, bias, mean, invstd = ctx.saved_tensors
        compute_dtype = statistics_dtype(input.dtype)
        x = input.to(compute_dtype)
        dy = grad_output.to(compute_dtype)
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
            weight.to(compute_dtype).view(shape)
            if weight is not None
            else torch.ones((), dtype=compute_dtype)
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


def _affine_with_statistics(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    eps: float,
) -> Tensor:
    """Algorithm 2 step 4: with fixed statistics BN is an affine map per channel."""
    compute_dtype = statistics_dtype(input.dtype)
    shape = channel_shape(input)
    scale = torch.rsqrt(var.to(compute_dtype) + eps)
    if weight is not None:
        scale = scale * weight.to(compute_dtype)
    shift = -mean.to(compute_dtype) * scale
    if bias is not None:
        shift = shift + bias.to(compute_dtype)
    return (input.to(compute_dtype) * scale.view(shape) + shift.view(shape)).to(input.dtype)


def _reference_forward(input, weight, bias, running_mean, running_var, training, eps):
    if training:
        output, mean, var = _PaperBatchNorm.apply(input, weight, bias, eps)
        return output, mean.detach(), var.detach()
    return _affine_with_statistics(input, weight, bias, running_mean, running_var, eps), None, None


# --- backend "native": ATen ---------------------------------------------------------------


def _native_forward(input, weight, bias, running_mean, running_var, training, eps):
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


register_backend(
    Backend("reference", _reference_forward, description="the paper's equations, by hand")
)
register_backend(Backend("native", _native_forward, description="ATen's batch_norm"))


#: Inputs up to this many elements take the fused-update path below: there the
#: extra read of the input is cheaper than the ~8 small tensor operations it saves.
FUSED_UPDATE_MAX_NUMEL = 1 << 18


def native_training_with_update(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float,
    eps: float,
) -> Tensor | None:
    """ATen's training forward with its in-kernel running-statistics update, when safe.

    Small batches (an MLP's 60 x 100) are bound by per-operation overhead, and
    the guarded update of :mod:`batchnorm.statistics` costs several operations.
    Here one reduction proves the statistics finite first: if the 2-norm of the
    input is finite, so are its mean and variance, and ATen may update the
    running statistics itself. Returns None (nothing done) when that cannot be
    shown cheaply: not a small float32/float64 CPU tensor, or a non-finite norm;
    the caller then takes the general path, which skips the update exactly.
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


_choose_backend: Callable[[Tensor, bool], str] | None = None


def _load_kernels() -> Callable[[Tensor, bool], str]:
    """Import :mod:`batchnorm.kernels` once (its backends register themselves) and
    keep its chooser, so that ``"auto"`` pays no import on every forward."""
    global _choose_backend
    if _choose_backend is None:
        from batchnorm.kernels import choose_backend

        _choose_backend = choose_backend
    return _choose_backend


def resolve_backend(name: str, input: Tensor, training: bool) -> Backend:
    """The backend called ``name`` (``"auto"`` chooses one for this call)."""
    if name == "auto":
        name = (_choose_backend or _load_kernels())(input, training)
    backend = BACKENDS.get(name)
    if backend is None:
        _load_kernels()
        backend = BACKENDS.get(name)
    if backend is None:
        raise ValueError(
            f"unknown batch-norm backend {name!r}; available: {['auto', *sorted(BACKENDS)]}"
        )
    if not backend.is_available(input):
        raise RuntimeError(
            f"batch-norm backend {name!r} cannot run on a {input.device.type} tensor of "
            f"dtype {input.dtype} here"
        )
    return backend


def validate_input(
    input: Tensor,
    num_features: int | None,
    training: bool,
    owner: str = "batch_norm",
) -> None:
    """Raise a precise error for input that BN cannot normalize."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{owner}: expected a Tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(
            f"{owner}: expected input of shape (N, C, *) with at least 2 dimensions, "
            f"got shape {tuple(input.shape)}"
        )
    if not (input.is_floating_point()):
        raise TypeError(f"{owner}: expected a floating-point input, got dtype {input.dtype}")
    if num_features is not None and input.shape[1] != num_features:
        raise ValueError(
            f"{owner}: expected {num_features} channels in dimension 1, got input of shape "
            f"{tuple(input.shape)} with {input.shape[1]} channels"
        )
    if training:
        values_per_channel = input.numel() // max(input.shape[1], 1)
        if input.numel() == 0:
            raise ValueError(
                f"{owner}: cannot compute batch statistics of an empty batch "
                f"(input shape {tuple(input.shape)})"
            )
        if values_per_channel <= 1:
            raise ValueError(
                f"{owner}: expected more than 1 value per channel when training, got input "
                f"of shape {tuple(input.shape)} (1 value per channel; use a batch size > 1 "
                "or eval mode)"
            )


def normalize(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    use_batch_statistics: bool,
    eps: float,
    backend: str = "auto",
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The BN transform without touching running statistics.

    Returns ``(output, batch_mean, batch_var)``; the statistics are ``None``
    when ``use_batch_statistics`` is False (running statistics are used).
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if not use_batch_statistics and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var are required when not training")
    if input.numel() == 0 and not use_batch_statistics:
        return input.clone(), None, None
    chosen = resolve_backend(backend, input, use_batch_statistics)
    return chosen.forward(
        input, weight, bias, running_mean, running_var, use_batch_statistics, eps
    )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    backend: str = "auto",
) -> Tensor:
    """Drop-in for :func:`torch.nn.functional.batch_norm` (see the module docstring).

    Differences, all stricter: a non-finite batch statistic never reaches the
    running statistics (that channel's update is skipped), and bad input
    raises an error that names the problem.
    """
    validate_input(input, None, training)
    for name, vector in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if vector is not None and vector.shape != (input.shape[1],):
            raise ValueError(
                f"batch_norm: {name} has shape {tuple(vector.shape)}, expected "
                f"({input.shape[1]},) for input of shape {tuple(input.shape)}"
            )
    updating = training and running_mean is not None and running_var is not None
    if updating and backend in ("auto", "native"):
        output = native_training_with_update(
            input, running_mean, running_var, weight, bias, momentum, eps
        )
        if output is not None:
            return output
    output, batch_mean, batch_var = normalize(
        input, weight, bias, running_mean, running_var, training, eps, backend
    )
    if updating:
        from batchnorm.statistics import update_moving_average

        update_moving_average(
            running_mean, running_var, batch_mean, batch_var, input.numel() // input.shape[1],
            momentum,
        )
    return output
