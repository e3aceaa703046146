"""Inductor kernels, compiled once per shape class and cached: shared by the
``compiled`` and ``hybrid`` backends.

The equations of :mod:`batchnorm.backends._math` are traced to an FX graph
(:func:`make_fx`) and compiled with :func:`torch._inductor.compile`, which
emits C++/OpenMP on the CPU and Triton on CUDA.

*Caching.* A kernel is specialized to one **shape class**: the exact shape and
strides of its inputs, dtypes, device, eps, activation and the CPU thread
count (Inductor picks loop splits from them). Kernels live in a process-wide
table keyed by that tuple, so a training loop compiles each BN layer's kernels
once, on the first call, and every later call is a dictionary lookup: there is
no Dynamo frame evaluation or guard check per call, and no recompile limit.
:func:`cache_info` counts compiles and hits (tests use it to show that the
second call does not compile). A failed compile (no C++ compiler, an Inductor
bug) is counted, warned about once per shape class, and the equations run
uncompiled: still correct.
"""

from __future__ import annotations

import importlib.util
import shutil
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["cache_info", "clear_cache", "failures", "has_cpp_compiler", "has_triton", "run"]

_lock = threading.Lock()
_kernels: dict[tuple, Callable[..., Any]] = {}
_failed: set[tuple] = set()
_stats = {"compiles": 0, "hits": 0, "failures": 0}


def cache_info() -> dict[str, int]:
    """Counters: ``compiles`` (kernels generated), ``hits`` (calls served from cache),
    ``failures`` (compiles that failed and fell back to eager code), ``size``."""
    return {**_stats, "size": len(_kernels)}


def clear_cache() -> None:
    """Forget every compiled kernel (the next call of each shape class compiles again)."""
    with _lock:
        _kernels.clear()
        _failed.clear()
        for key in _stats:
            _stats[key] = 0


def _signature(*tensors: Tensor | None) -> tuple:
    """What a generated kernel is specialized to, for each input tensor."""
    return tuple(
        None
        if t is None
        else (tuple(t.shape), t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0)
        for t in tensors
    )


def _kernel(name: str, fn: Callable[..., Any], key: tuple, inputs: list[Tensor]):
    """The compiled ``fn`` for ``key``, compiling it (once) on a miss.

    Returns None if compilation failed; the caller then runs ``fn`` eagerly.
    """
    kernel = _kernels.get(key)
    if kernel is not None:
        _stats["hits"] += 1
        return kernel
    if key in _failed:
        return None
    with _lock:
        kernel = _kernels.get(key)
        if kernel is not None:
            return kernel
        try:
            from torch.fx.experimental.proxy_tensor import make_fx

            with torch.no_grad():
                graph = make_fx(fn)(*inputs)
                kernel = torch._inductor.compile(graph, inputs)
        except Exception as error:  # no C++ compiler, an Inductor bug: stay correct
            _failed.add(key)
            _stats["failures"] += 1
            warnings.warn(
                f"batchnorm: compiling the {name} kernel failed ({type(error).__name__}: "
                f"{error}); running it uncompiled",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        _kernels[key] = kernel
        _stats["compiles"] += 1
        return kernel


def run(name: str, fn: Callable[..., Any], static: tuple, inputs: list[Tensor]):
    key = (name, static, torch.get_num_threads(), _signature(*inputs))
    kernel = _kernel(name, fn, key, inputs)
    if kernel is None:
        with torch.no_grad():
            return fn(*inputs)
    return kernel(*inputs)



def failures() -> int:
    """Compiles that failed in this process (the backends' ``failures`` field)."""
    return _stats["failures"]


# Looked up once, at import: availability is asked on every call, also while an
# outer torch.compile traces the call (where a file-system lookup would break the graph).
_CPP_COMPILER = any(shutil.which(name) for name in ("g++", "c++", "clang++"))
_TRITON = importlib.util.find_spec("triton") is not None


def has_cpp_compiler() -> bool:
    return _CPP_COMPILER


def has_triton() -> bool:
    return _TRITON
