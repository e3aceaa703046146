"""Fast BN kernels and the rule that picks one.

Backends register themselves with :func:`batchnorm.functional.register_backend`
when their module is imported; :func:`choose_backend` is what ``backend="auto"``
calls on every forward, so it must be cheap.

=============  ==============================================================
``compiled``   TorchInductor-generated fused kernels, forward and backward,
               CPU and CUDA (:mod:`.compiled`)
``hybrid``     the generated forward with ATen's backward kernel, CPU
               (:mod:`.compiled`; the fastest training pair for NCHW there)
``triton``     hand-written Triton kernels, CUDA (:mod:`.triton_backend`)
=============  ==============================================================

Fused BN + activation (+ residual) layers built on these are in
:mod:`batchnorm.fused`; the benchmark that the rule is read from is
:mod:`batchnorm.benchmark`.

The rule of ``"auto"`` lives in :mod:`.auto`.
"""

from __future__ import annotations

from batchnorm.kernels import compiled, triton_backend  # noqa: F401  (register backends)
from batchnorm.kernels.auto import choose_backend

__all__ = ["choose_backend"]

# ``choose_backend(input: Tensor, training: bool) -> str`` is the rule itself (not a
# wrapper): it runs on every forward, where one Python call more is measurable.
