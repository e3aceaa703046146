"""Fast BN kernels and the rule that picks one.

Backends register themselves with :func:`batchnorm.functional.register_backend`
when their module is imported; :func:`choose_backend` is what ``backend="auto"``
calls on every forward, so it must be cheap.

=============  ==============================================================
``compiled``   TorchInductor-generated fused kernels (:mod:`.compiled`)
``triton``     hand-written Triton kernels, CUDA (:mod:`.triton_backend`)
=============  ==============================================================

The rule of ``"auto"`` lives in :mod:`.auto`.
"""

from __future__ import annotations

from torch import Tensor

from batchnorm.kernels import compiled, triton_backend  # noqa: F401  (register backends)
from batchnorm.kernels.auto import choose_backend as _choose_backend

__all__ = ["choose_backend"]


def choose_backend(input: Tensor, training: bool) -> str:
    """The fastest correct backend for this call that never pays a compile."""
    return _choose_backend(input, training)
