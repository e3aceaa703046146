"""The BN transform (Algorithm 1 of Ioffe & Szegedy 2015) as functions: the one forward path.

For an input of shape (N, C, *) every channel c is normalized over the
N * prod(*) values it holds (per activation for (N, C), per feature map for
convolutions; docs/method.md sections 2 and 5)::

    mu    = mean(x)                       var = mean((x - mu)^2)   (biased)
    y     = gamma * (x - mu) / sqrt(var + eps) + beta

optionally followed by ``act(y + residual)`` (the paper's ``z = g(BN(Wu))``,
with a residual add as in ResNets). In training the mini-batch statistics are
used; in evaluation the running statistics.

Every caller, the functional :func:`batch_norm`, the layers and the fused
layers alike, goes through :func:`normalize`, which picks the backend
(:mod:`batchnorm.backends`; ``"auto"`` asks :func:`batchnorm.backends.auto.choose`),
runs it, fuses the activation when the backend can and applies it otherwise,
and returns ``(output, batch_mean, batch_var, updated)``. Updating running
statistics stays in :mod:`batchnorm.statistics`, except where the chosen
backend's ``update_in_kernel`` proves a small batch safe and updates them in
its own kernel (``updated`` is then True).

:func:`batch_norm` has exactly the signature and semantics of
:func:`torch.nn.functional.batch_norm`, plus the ``backend`` keyword.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from batchnorm.activations import activate, check_activation
from batchnorm.backends import AUTO, Backend, auto, get, names
from batchnorm.statistics import update_moving_average

__all__ = [
    "BatchNormShapeError",
    "Normalized",
    "available_backends",
    "batch_norm",
    "normalize",
    "resolve_backend",
    "validate_input",
]


class BatchNormShapeError(ValueError, RuntimeError):
    """A running statistic or affine vector of the wrong size.

    Both a ValueError (this package's errors for bad arguments) and a
    RuntimeError (what torch raises for it), so callers catching either keep working.
    """


def check_vectors(input: Tensor, owner: str = "batch_norm", **vectors: Tensor | None) -> None:
    """Raise :class:`BatchNormShapeError` unless every given vector has shape (C,)."""
    channels = input.shape[1]
    for name, vector in vectors.items():
        if vector is not None and vector.shape != (channels,):
            raise BatchNormShapeError(
                f"{owner}: {name} has shape {tuple(vector.shape)}, expected ({channels},) "
                f"for input of shape {tuple(input.shape)}"
            )


def check_eps(eps: float, training: bool, owner: str = "batch_norm") -> None:
    """torch's rule: ``eps > 0`` to normalize with batch statistics, ``eps >= 0`` otherwise.

    Checked where torch checks it (the forward), so an eval-only model built with
    ``eps=0`` keeps working.
    """
    if training and not eps > 0:
        raise ValueError(f"{owner}: eps must be positive during training, got {eps}")
    if not eps >= 0:
        raise ValueError(f"{owner}: eps must be non-negative, got {eps}")


class Normalized(NamedTuple):
    """What :func:`normalize` returns."""

    output: Tensor
    #: Biased batch statistics (detached; float32, or float64 for float64 input),
    #: None in evaluation or when the backend updated the running statistics itself.
    batch_mean: Tensor | None
    batch_var: Tensor | None
    #: True if the running statistics were already updated (in the backend's kernel),
    #: or there is nothing to update them with (an empty training batch).
    updated: bool


def available_backends(input: Tensor | None = None) -> list[str]:
    """Names of the registered backends (those usable on ``input``, if given)."""
    return names(input)


def resolve_backend(
    name: str, input: Tensor, training: bool, activation: str = "identity"
) -> Backend:
    """The backend called ``name`` (``"auto"`` chooses one for this call)."""
    if name == AUTO:
        name = auto.choose(input, training, activation)
    backend = get(name)
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
    """Raise a precise one-line error for input that BN cannot normalize."""
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
    if training and input.numel() > 0:  # an empty batch passes, as in torch (no statistics)
        values_per_channel = input.numel() // max(input.shape[1], 1)
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
    backend: str = AUTO,
    *,
    activation: str = "identity",
    residual: Tensor | None = None,
    momentum: float | None = None,
    skipped_updates: Tensor | None = None,
) -> Normalized:
    """``act(BN(input) [+ residual])``: the one forward path of every BN in this package.

    Running statistics are left alone, unless ``momentum`` is given (training
    with running statistics): then a backend with an in-kernel update may
    apply ``s <- (1 - momentum) s + momentum s_B`` itself (a non-finite batch
    leaving them unchanged and adding 1 to ``skipped_updates``, if given) and
    report ``updated=True``. Input is assumed validated (:func:`validate_input`).

    An empty batch in training gives an empty output that still depends on
    ``weight`` and ``bias`` (their gradients are zeros, as in torch) and no
    statistics: ``(output, None, None, True)``, nothing to update.
    """
    check_eps(eps, use_batch_statistics)
    check_activation(activation, "batch_norm")
    if residual is not None and residual.shape != input.shape:
        raise ValueError(
            f"residual has shape {tuple(residual.shape)}, expected {tuple(input.shape)}"
        )
    if not use_batch_statistics and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var are required when not training")
    if input.numel() == 0:
        return Normalized(
            _empty_output(input, weight, bias, residual, activation), None, None,
            use_batch_statistics,
        )  # fmt: skip
    chosen = resolve_backend(backend, input, use_batch_statistics, activation)
    if chosen.fuses_activation:
        output, mean, var = chosen.forward(
            input, weight, bias, running_mean, running_var, use_batch_statistics, eps,
            activation=activation, residual=residual,
        )  # fmt: skip
        return Normalized(output, mean, var, False)
    updated = False
    output = None
    if (
        momentum is not None
        and use_batch_statistics
        and chosen.update_in_kernel is not None
        and running_mean is not None
        and running_var is not None
    ):
        output = chosen.update_in_kernel(
            input, weight, bias, running_mean, running_var, momentum, eps, skipped_updates
        )
        updated = output is not None
    if output is None:
        output, mean, var = chosen.forward(
            input, weight, bias, running_mean, running_var, use_batch_statistics, eps
        )
    else:
        mean = var = None
    if residual is not None:
        output = output + residual
    if activation != "identity":
        output = activate(output, activation)
    return Normalized(output, mean, var, updated)


def _empty_output(input, weight, bias, residual, activation) -> Tensor:
    """``act(w * x + b [+ r])`` of an empty ``x``: empty, and differentiable in w and b."""
    view = (1, -1) + (1,) * (input.dim() - 2)
    output = input.clone()
    if weight is not None:
        output = output * weight.view(view)
    if bias is not None:
        output = output + bias.view(view)
    if residual is not None:
        output = output + residual
    return activate(output, activation)


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
    backend: str = AUTO,
) -> Tensor:
    """Drop-in for :func:`torch.nn.functional.batch_norm` (see the module docstring).

    Differences, all stricter: a batch with a non-finite statistic never reaches
    the running statistics (the update is skipped), and bad input raises an
    error that names the problem.
    """
    validate_input(input, None, training)
    check_vectors(
        input, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias
    )
    updating = training and running_mean is not None and running_var is not None
    result = normalize(
        input, weight, bias, running_mean, running_var, training, eps, backend,
        momentum=momentum if updating else None,
    )  # fmt: skip
    if updating and not result.updated:
        update_moving_average(
            running_mean, running_var, result.batch_mean, result.batch_var,
            input.numel() // input.shape[1], momentum,
        )  # fmt: skip
    return result.output
