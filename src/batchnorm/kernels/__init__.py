"""Fast BN kernels and the rule that picks one.

Backends register themselves with :func:`batchnorm.functional.register_backend`
when their module is imported; :func:`choose_backend` is what ``backend="auto"``
calls on every forward, so it must be cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor


def choose_backend(input: Tensor, training: bool) -> str:
    """The fastest correct backend for this call that never pays a compile."""
    if input.device.type == "cpu" and input.dtype in (torch.float16, torch.bfloat16):
        # ATen's reduced-precision CPU kernels lose float32 accuracy in the statistics
        # (tests/test_functional.py::test_half_precision_accumulates_in_float32).
        return "reference"
    return "native"
