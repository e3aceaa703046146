"""The rule behind ``backend="auto"``: a small table derived from ``batchnorm bench``.

:func:`choose` runs on every forward, so it only reads the tensor's
metadata, does one table scan and one dictionary update (about a microsecond).

The rule, first match wins (see ``benchmarks/README.md`` for the measurements):

0. Training on float16/bfloat16 CPU input -> ``"reference"``: ATen's
   reduced-precision CPU kernels compute the statistics with float32 error far
   above float32 accuracy (3e-4 relative in the mean of a float16 test input;
   ``tests/test_functional.py::test_half_precision_accumulates_in_float32``),
   and correct beats fast.
1. Under an outer ``torch.compile`` -> ``"native"`` (the outer compiler fuses it).
2. Fewer than :data:`MIN_NUMEL` elements -> ``"native"``: such calls are bound by
   per-call overhead, where ATen's single kernel call wins.
3. A shape class seen fewer than :data:`SIGHTINGS` times -> ``"native"``: the
   generated backends compile on their first call of a shape class (seconds), so
   ``auto`` never pays that for a one-off call; a training loop reaches the
   third step at once, and from then on runs the generated kernel, compiled once.
   (A layer constructed with ``backend="compiled"`` opts in from the first call.)
4. The first row of :data:`RULES` that matches (device, dtype, layout, mode),
   if that backend is available here and none of its kernel builds has failed.
   With a fused activation, ``"hybrid"`` becomes ``"compiled"``: same generated
   forward, and the fused backward saves the activation's own passes (about 5
   reads/writes of the tensor), more than ATen's faster BN backward gains over
   the generated one (about 2).
5. Otherwise ``"native"``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from batchnorm.backends import registry

__all__ = ["MIN_NUMEL", "RULES", "SIGHTINGS", "Rule", "choose", "layout_of", "reset"]

MIN_NUMEL = 1 << 19
SIGHTINGS = 3
_MAX_TRACKED = 4096  # shape classes remembered (the table is cleared when full)


class Rule(NamedTuple):
    device: str
    dtypes: tuple[torch.dtype, ...]
    layout: str  # "nchw" (channels first, rank >= 3), "nhwc" (channels last) or "nc"
    training: bool
    backend: str


_F32 = (torch.float32,)
_HALF = (torch.float16, torch.bfloat16)

#: Where a generated kernel measured faster than ATen (CPU, 2 threads, float32;
#: training forward+backward time relative to ATen's, 0.5M to 12.8M elements).
RULES: tuple[Rule, ...] = (
    # NCHW training, 0.59-0.84x: ATen's forward reads x three times (mean,
    # variance, output), the generated one twice; ATen's backward is the faster one.
    Rule("cpu", _F32, "nchw", True, "hybrid"),
    # Channels-last training, 0.56-0.99x: ATen's channels-last forward and backward
    # are both slow at few channels; the generated pair is not.
    Rule("cpu", _F32, "nhwc", True, "compiled"),
    # Not listed, so ATen: evaluation (one read, one write: ATen is at the floor
    # already, the generated kernel 0.93-1.55x), (N, C) training (generated
    # backward 1.2-1.3x), float16/bfloat16/float64 (not measured), CUDA (no
    # measurements here: benchmarks/gpu_check.sh produces them).
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


def choose(input: Tensor, training: bool, activation: str = "identity") -> str:
    """The fastest correct backend for this call that never pays a compile.

    See the module docstring for the rule.
    """
    if training and input.dtype in _HALF and input.device.type == "cpu":
        return "reference"
    if input.numel() < MIN_NUMEL or torch.compiler.is_compiling():  # cheapest test first
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
            name = rule.backend
            if name == "hybrid" and activation != "identity":
                name = "compiled"
            if not _sighted(input, training) or not _usable(name, input):
                return "native"
            return name
    return "native"


def _usable(name: str, input: Tensor) -> bool:
    """Registered and available here, and none of its kernel builds failed in this process."""
    try:
        backend = registry.get(name)
    except ValueError:
        return False
    return backend.is_available(input) and backend.failures() == 0
