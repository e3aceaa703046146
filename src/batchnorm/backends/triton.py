"""Backend ``"triton"``: the kernels of :mod:`batchnorm.backends._triton_kernels` on CUDA.

Training runs three launches forward (partial statistics per split, their
combination per channel, the normalization pass) and three backward (partial
sums, combination, the dx pass), wrapped in a :class:`torch.autograd.Function`.
Activation (``"relu"``, ``"sigmoid"``) and a residual add are fused into the
normalization pass; backward recomputes the activation's input from ``x``
(no extra read) or, with a residual, reads the saved output.

Available on CUDA tensors when Triton imports, and on CPU tensors only under
``TRITON_INTERPRET=1`` (Triton's interpreter: slow, for tests on small shapes).
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from batchnorm.activations import ACTIVATIONS, check_activation
from batchnorm.backends import _math
from batchnorm.backends.registry import Backend, register

__all__ = ["BACKEND", "is_available", "triton_batch_norm"]

#: The kernels' ``ACT`` codes: 0 identity, 1 relu, 2 sigmoid.
_ACT_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


_TRITON = importlib.util.find_spec("triton") is not None  # once: asked on every call


def _triton_imports() -> bool:
    return _TRITON


def is_available(input: Tensor) -> bool:
    """CUDA tensors with Triton installed; CPU tensors only with ``TRITON_INTERPRET=1``."""
    if input.dtype not in _DTYPES or not _triton_imports():
        return False
    if input.device.type == "cuda":
        return True
    # Read here rather than from triton_kernels, which would import triton (slow).
    return input.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _view3(t: Tensor) -> Tensor:
    """(N, C, S) view of ``t`` (a copy only if its spatial dims cannot merge)."""
    n, c = t.shape[0], t.shape[1]
    try:
        return t.view(n, c, -1)
    except RuntimeError:
        return t.reshape(n, c, -1)


def _next_pow2(value: int) -> int:
    return 1 << max(value - 1, 0).bit_length()


def _tiles(x3: Tensor) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_C): wide in C when channels are innermost in memory, else in M."""
    c = x3.shape[1]
    if x3.stride(1) == 1 and c > 1:
        block_c = min(64, _next_pow2(c))
        return max(16, 2048 // block_c), block_c
    return 1024, 1


def _splits(c_blocks: int, m: int, block_m: int, device: torch.device) -> tuple[int, int]:
    """(splits, values per split): enough programs to fill the device (split reduction)."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    m_blocks = -(-m // block_m)
    splits = max(1, min(m_blocks, -(-target // c_blocks)))
    per_split = -(-m_blocks // splits) * block_m
    return -(-m // per_split), per_split


def _grid_c(c: int, block_c: int) -> int:
    return -(-c // block_c)


def _statistics(x3: Tensor, weight: Tensor, bias: Tensor, eps: float):
    """(mean, var, invstd, scale, shift) per channel of an (N, C, S) view."""
    from batchnorm.backends._triton_kernels import jitted

    n, c, s = x3.shape
    m = n * s
    acc = _math.compute_dtype(x3.dtype)
    block_m, block_c = _tiles(x3)
    c_blocks = _grid_c(c, block_c)
    splits, per_split = _splits(c_blocks, m, block_m, x3.device)
    partial = torch.empty((3, splits, c), dtype=acc, device=x3.device)
    jitted("stats_partial")[(c_blocks, splits)](
        x3, partial[0], partial[1], partial[2], c, s, m, per_split, *x3.stride(),
        IS_F64=acc == torch.float64, BLOCK_M=block_m, BLOCK_C=block_c,
    )  # fmt: skip
    out = torch.empty((5, c), dtype=acc, device=x3.device)
    finalize_block = min(256, _next_pow2(c))
    jitted("stats_finalize")[(_grid_c(c, finalize_block),)](
        partial[0], partial[1], partial[2], weight, bias, *out, c, splits, eps,
        IS_F64=acc == torch.float64, BLOCK_C=finalize_block,
    )  # fmt: skip
    return out[0], out[1], out[2], out[3], out[4]


def _apply(x: Tensor, scale: Tensor, shift: Tensor, residual: Tensor | None, activation: str):
    """act(x * scale + shift [+ residual]) in one pass; output laid out like ``x``."""
    from batchnorm.backends._triton_kernels import jitted

    y = torch.empty_like(x)
    x3, y3 = _view3(x), _view3(y)
    r3 = _view3(residual) if residual is not None else x3
    n, c, s = x3.shape
    block_m, block_c = _tiles(x3)
    jitted("apply")[(_grid_c(c, block_c), -(-(n * s) // block_m))](
        x3, y3, r3, scale, shift, c, s, n * s,
        *x3.stride(), *y3.stride(), *r3.stride(),
        ACT=_ACT_CODES[activation], HAS_R=residual is not None,
        IS_F64=scale.dtype == torch.float64, BLOCK_M=block_m, BLOCK_C=block_c,
    )  # fmt: skip
    return y


class _TritonTraining(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps: float, activation: str):
        w, b = _math.materialize_affine(x, weight, bias)
        mean, var, invstd, scale, shift = _statistics(_view3(x), w, b, eps)
        y = _apply(x, scale, shift, residual, activation)
        from_y = residual is not None and activation != "identity"
        ctx.save_for_backward(x, w, mean, invstd, scale, shift, y if from_y else None)
        ctx.activation = activation
        ctx.affine = (weight is not None, bias is not None)
        ctx.has_residual = residual is not None
        ctx.dtypes = (w.dtype, b.dtype)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    @once_differentiable  # double backward: use the reference backend
    def backward(ctx, grad, _grad_mean, _grad_var):
        from batchnorm.backends._triton_kernels import jitted

        x, w, mean, invstd, scale, shift, y = ctx.saved_tensors
        x3, g3 = _view3(x), _view3(grad)
        y3 = _view3(y) if y is not None else x3
        n, c, s = x3.shape
        m = n * s
        acc = mean.dtype
        act = _ACT_CODES[ctx.activation]
        from_y = y is not None
        block_m, block_c = _tiles(x3)
        c_blocks = _grid_c(c, block_c)
        splits, per_split = _splits(c_blocks, m, block_m, x.device)
        partial = torch.empty((2, splits, c), dtype=acc, device=x.device)
        jitted("backward_reduce")[(c_blocks, splits)](
            g3, x3, y3, mean, scale, shift, partial[0], partial[1], c, s, m, per_split,
            *g3.stride(), *x3.stride(), *y3.stride(),
            ACT=act, FROM_Y=from_y, IS_F64=acc == torch.float64,
            BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
        coef = torch.empty((5, c), dtype=acc, device=x.device)
        finalize_block = min(256, _next_pow2(c))
        jitted("backward_finalize")[(_grid_c(c, finalize_block),)](
            partial[0], partial[1], w, invstd, *coef, c, splits, m,
            IS_F64=acc == torch.float64, BLOCK_C=finalize_block,
        )  # fmt: skip
        dx = torch.empty_like(x)
        write_dz = ctx.has_residual and act != 0
        dz = torch.empty_like(x) if write_dz else dx
        dx3, dz3 = _view3(dx), _view3(dz)
        jitted("backward_apply")[(c_blocks, -(-m // block_m))](
            g3, x3, y3, dx3, dz3, mean, scale, shift, coef[2], coef[3], coef[4], c, s, m,
            *g3.stride(), *x3.stride(), *y3.stride(), *dx3.stride(), *dz3.stride(),
            ACT=act, FROM_Y=from_y, WRITE_DZ=write_dz, IS_F64=acc == torch.float64,
            BLOCK_M=block_m, BLOCK_C=block_c,
        )  # fmt: skip
        dw = coef[0].to(ctx.dtypes[0]) if ctx.affine[0] else None
        db = coef[1].to(ctx.dtypes[1]) if ctx.affine[1] else None
        dr = (dz if write_dz else grad) if ctx.has_residual else None
        return dx, dw, db, dr, None, None


def triton_batch_norm(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    eps: float,
    activation: str = "identity",
    residual: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``act(BN(input) [+ residual])`` with the Triton kernels; returns (y, mean, var)."""
    check_activation(activation, "triton_batch_norm")
    if training:
        y, mean, var = _TritonTraining.apply(input, weight, bias, residual, eps, activation)
        return y, mean, var
    w, b = _math.materialize_affine(input, weight, bias)
    acc = _math.compute_dtype(input.dtype)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, weight, bias, residual)
    )
    if needs_grad:  # evaluation with autograd: the plain differentiable equations
        y = _math.forward_eval(input, w, b, running_mean, running_var, residual, eps, activation)
        return y, None, None
    scale = torch.rsqrt(running_var.to(acc) + eps) * w.to(acc)
    shift = b.to(acc) - running_mean.to(acc) * scale
    return _apply(input, scale, shift, residual, activation), None, None


def _forward(input, weight, bias, running_mean, running_var, training, eps, *,
             activation="identity", residual=None):  # fmt: skip
    return triton_batch_norm(input, weight, bias, running_mean, running_var, training, eps,
                             activation, residual)  # fmt: skip


BACKEND = register(
    Backend(
        "triton",
        _forward,
        is_available,
        fuses_activation=True,
        description="hand-written Triton kernels (CUDA; CPU only under TRITON_INTERPRET=1)",
    )
)
