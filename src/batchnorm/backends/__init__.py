"""BN backends: one module each, registered by name in :mod:`.registry`.

=============  ==============================================================
``reference``  the paper's equations, by hand; double backward (:mod:`.reference`)
``native``     ATen, with its small-batch in-kernel update (:mod:`.native`)
``compiled``   TorchInductor-generated fused kernels, forward and backward,
               CPU and CUDA, activation and residual fused (:mod:`.compiled`)
``hybrid``     the generated forward with ATen's backward kernel, CPU
               (:mod:`.hybrid`; the fastest training pair for NCHW there)
``triton``     hand-written Triton kernels, CUDA (:mod:`.triton`)
=============  ==============================================================

``"auto"`` is not a backend but the rule that picks one per call
(:func:`batchnorm.backends.auto.choose`). Importing this package registers
every backend; imports go one way: this package imports only torch, the
activations and the kernels' math (:mod:`._math`), never the layers or
:mod:`batchnorm.functional`.
"""

from __future__ import annotations

from batchnorm.backends import auto, compiled, hybrid, native, reference, triton
from batchnorm.backends._math import compute_dtype
from batchnorm.backends.registry import AUTO, Backend, get, names, register

__all__ = [
    "AUTO",
    "Backend",
    "auto",
    "compiled",
    "compute_dtype",
    "get",
    "hybrid",
    "names",
    "native",
    "reference",
    "register",
    "triton",
]
