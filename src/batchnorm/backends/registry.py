"""The backend registry: what a BN backend is, and the table of them by name.

A *backend* computes the BN transform and returns the mini-batch statistics it
used, so that running statistics are updated in one place
(:mod:`batchnorm.statistics`) whatever kernel ran. Its contract::

    forward(input, weight, bias, running_mean, running_var, training, eps
            [, activation=..., residual=...])  -> (output, batch_mean, batch_var)

``batch_mean``/``batch_var`` are the biased statistics (detached, float32 or
float64, shape (C,)), ``None`` when ``training`` is False; ``output`` is
differentiable with respect to ``input``, ``weight`` and ``bias`` (and
``residual``). Only a backend with ``fuses_activation`` takes the keyword
arguments ``activation`` (one of :data:`batchnorm.activations.ACTIVATIONS`) and
``residual``; for the others the caller applies ``act(y + residual)`` itself.

What a backend can do is said by the fields of :class:`Backend`, so that no
caller names a backend module or reads another module's private state.
This module imports only torch: it is the leaf the backends register into.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

__all__ = ["AUTO", "Backend", "get", "names", "register"]

#: The name that asks :mod:`batchnorm.backends.auto` to choose per call.
AUTO = "auto"

BackendForward = Callable[..., tuple[Tensor, Tensor | None, Tensor | None]]
#: ``(input, weight, bias, running_mean, running_var, momentum, eps, skipped) -> output | None``
#: (``skipped``: a 0-dim long counter, or None, to add 1 to when a non-finite batch
#: leaves the statistics unchanged; no host synchronization).
InKernelUpdate = Callable[..., Tensor | None]


def _always(_input: Tensor) -> bool:
    return True


def _no_failures() -> int:
    return 0


@dataclass(frozen=True)
class Backend:
    """A named implementation of the BN transform (see the module docstring).

    Attributes:
        name: what users pass as ``backend=``.
        forward: the transform (the contract above).
        is_available: can it run on this input here (device, dtype, compiler)?
        fuses_activation: ``forward`` applies ``act(y + residual)`` in its own kernel.
        update_in_kernel: optional training forward that also updates the running
            statistics in its kernel with ``momentum``, keeping them unchanged (and counting
            in ``skipped``) for a non-finite batch; returns None when it cannot do that
            for this input (the caller then takes the general path).
        failures: how many kernel builds failed in this process (``auto`` avoids a
            backend that has failed).
        description: one line for ``batchnorm bench`` and error messages.
    """

    name: str
    forward: BackendForward
    is_available: Callable[[Tensor], bool] = _always
    fuses_activation: bool = False
    update_in_kernel: InKernelUpdate | None = None
    failures: Callable[[], int] = _no_failures
    description: str = ""


_BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Make ``backend`` selectable by name (replacing one of the same name)."""
    if backend.name == AUTO:
        raise ValueError(f"{AUTO!r} is reserved for automatic backend selection")
    _BACKENDS[backend.name] = backend
    return backend


def get(name: str) -> Backend:
    """The backend called ``name``; a one-line ValueError naming the choices otherwise."""
    backend = _BACKENDS.get(name)
    if backend is None:
        raise ValueError(
            f"unknown batch-norm backend {name!r}; available: {[AUTO, *sorted(_BACKENDS)]}"
        )
    return backend


def names(input: Tensor | None = None) -> list[str]:
    """Registered backend names (only those usable on ``input``, if given)."""
    return [
        name
        for name, backend in _BACKENDS.items()
        if input is None or backend.is_available(input)
    ]
