"""The rule behind ``backend="auto"``: a small table derived from ``batchnorm bench``.

:func:`choose_backend` runs on every forward, so it only reads the tensor's
metadata, does one table scan and one dictionary update (about a microsecond).

The rule, first match wins (see ``benchmarks/README.md`` for the measurements):

1. Under an outer ``torch.compile`` -> ``"native"`` (the outer compiler fuses it).
2. Fewer than :data:`MIN_NUMEL` elements -> ``"native"``: such calls are bound by
   per-call overhead, where ATen's single kernel call wins.
3. A shape class seen fewer than :data:`SIGHTINGS` times -> ``"native"``: the
   generated backends compile on their first call of a shape class (seconds), so
   ``auto`` never pays that for a one-off call; a training loop reaches the
   third step at once, and from then on runs the generated kernel, compiled once.
   (A layer constructed with ``backend="compiled"`` opts in from the first call.)
4. The first row of :data:`RULES` that matches (device, dtype, layout, mode).
5. Otherwise ``"native"``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["MIN_NUMEL", "RULES", "SIGHTINGS", "Rule", "choose_backend", "layout_of"]

MIN_NUMEL = 1 << 20
SIGHTINGS = 3
_MAX_TRACKED = 4096  # shape classes remembered (the table is cleared when full)


class Rule(NamedTuple):
    device: str
    dtypes: tuple[torch.dtype, ...]
    layout: str  # "nchw" (channels first, rank >= 3), "nhwc" (channels last) or "nc"
    training: bool
    backend: str


_F32 = (torch.float32,)

#: Where a generated kernel measured faster than ATen (CPU, 2 threads, float32).
RULES: tuple[Rule, ...] = (
    # Training forward: ATen reads x three times (mean, variance, output); the
    # generated forward reads it twice. ATen's backward is the faster backward.
    Rule("cpu", _F32, "nchw", True, "hybrid"),
    # Channels last: ATen's forward and backward are both slow; Inductor's are not.
    Rule("cpu", _F32, "nhwc", True, "compiled"),
    Rule("cpu", _F32, "nhwc", False, "compiled"),
)

_seen: dict[tuple, int] = {}


def layout_of(input: Tensor) -> str:
    """``"nc"``, ``"nchw"`` (channels first, dense), ``"nhwc"`` (channels last) or ``"other"``."""
    if input.dim() == 2:
        return "nc" if input.is_contiguous() else "other"
    if input.is_contiguous():
        return "nchw"
    if input.stride(1) == 1 and input.shape[1] > 1:
        return "nhwc"
    return "other"


def _sighted(input: Tensor, training: bool) -> bool:
    """Count this shape class; True once it has been seen :data:`SIGHTINGS` times."""
    key = (tuple(input.shape), input.stride(), input.dtype, input.device, training)
    count = _seen.get(key, 0) + 1
    if count <= SIGHTINGS:
        if len(_seen) >= _MAX_TRACKED:
            _seen.clear()
        _seen[key] = count
    return count >= SIGHTINGS


def reset() -> None:
    """Forget every shape class seen (for tests and benchmarks)."""
    _seen.clear()


def choose_backend(input: Tensor, training: bool) -> str:
    """The backend ``auto`` runs for this call (see the module docstring)."""
    if torch.compiler.is_compiling() or input.numel() < MIN_NUMEL:
        return "native"
    device = input.device.type
    layout = layout_of(input)
    for rule in RULES:
        if (
            rule.device == device
            and rule.layout == layout
            and rule.training == training
            and input.dtype in rule.dtypes
        ):
            if not _sighted(input, training) or not _usable(rule.backend, input):
                return "native"
            return rule.backend
    return "native"


def _usable(name: str, input: Tensor) -> bool:
    """Available here, and no compile of this kind failed in this process."""
    from batchnorm.functional import BACKENDS
    from batchnorm.kernels import compiled

    backend = BACKENDS.get(name)
    if backend is None or not backend.is_available(input):
        return False
    return compiled.cache_info()["failures"] == 0
