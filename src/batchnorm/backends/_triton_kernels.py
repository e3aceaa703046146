"""Hand-written Triton kernels for BN (the ``"triton"`` backend's device code).

Every kernel sees its tensor as a 3-D strided view ``(N, C, S)``, so one kernel
serves NCHW (strides ``(C*S, S, 1)``), channels-last (``(S*C, 1, C)``), (N, C)
and (N, C, L) input, contiguous or not. A program owns a tile of
``BLOCK_C`` channels and a range of the ``M = N*S`` values per channel; the
M axis is cut into ``splits`` ranges (a *split reduction*) so that few-channel,
large-spatial shapes still fill the GPU.

Statistics (forward). Each program reduces its range tile by tile with Chan's
parallel update of (count, mean, M2), which is exact to rounding whatever the
mean (no ``E[x^2] - E[x]^2`` cancellation)::

    n = n_a + n_b,  delta = mean_b - mean_a
    mean = mean_a + delta * n_b / n,  M2 = M2_a + M2_b + delta^2 * n_a * n_b / n

and :func:`bn_stats_finalize` combines the ``splits`` partial results per
channel the same way, then ``var = M2 / M`` (biased), ``invstd = 1/sqrt(var + eps)``
and the affine coefficients ``a = gamma * invstd``, ``b = beta - mean * a``.

Backward. :func:`bn_backward_reduce` accumulates, per channel and split,
``Sg = sum(g)`` and ``Sgx = sum(g * (x - mean))`` with ``g = dy * act'(z)``;
:func:`bn_backward_finalize` turns them into ``dgamma = Sgx * invstd``,
``dbeta = Sg`` and the coefficients of ``dx = g * a - (x - mean) * k - c``.

All arithmetic is in float32 (float64 for float64 input), whatever the storage
type (half and bfloat16 are loaded, widened, and rounded once on store).

The kernels are plain Python functions here; :func:`jitted` wraps them with
``triton.jit`` on first use, so that ``TRITON_INTERPRET=1`` set after import
(as the tests do) still selects Triton's CPU interpreter.
"""

from __future__ import annotations

import functools
import os

import triton
import triton.language as tl

ACT_IDENTITY, ACT_RELU, ACT_SIGMOID = 0, 1, 2


def _bn_stats_partial(
    X, PCOUNT, PMEAN, PM2,
    C, S, M, M_PER_PROG,
    sxn, sxc, sxs,
    IS_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    acc: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_c = tl.program_id(0)
    pid_m = tl.program_id(1)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    m_start = pid_m * M_PER_PROG
    m_end = tl.minimum(m_start + M_PER_PROG, M)
    count = tl.zeros((BLOCK_C,), dtype=acc)
    mean = tl.zeros((BLOCK_C,), dtype=acc)
    m2 = tl.zeros((BLOCK_C,), dtype=acc)
    for off in range(m_start, m_end, BLOCK_M):
        ms = off + tl.arange(0, BLOCK_M)
        mmask = ms < m_end
        n = (ms // S).to(tl.int64)
        s = (ms % S).to(tl.int64)
        mask = mmask[:, None] & cmask[None, :]
        ptr = X + n[:, None] * sxn + s[:, None] * sxs + cs[None, :].to(tl.int64) * sxc
        x = tl.load(ptr, mask=mask, other=0.0).to(acc)
        count_b = tl.sum(mmask.to(acc), axis=0)
        mean_b = tl.sum(x, axis=0) / count_b
        d = tl.where(mask, x - mean_b[None, :], 0.0)
        m2_b = tl.sum(d * d, axis=0)
        new_count = count + count_b
        delta = mean_b - mean
        mean = mean + delta * (count_b / new_count)
        m2 = m2 + m2_b + delta * delta * (count * count_b / new_count)
        count = new_count
    out = pid_m * C + cs
    tl.store(PCOUNT + out, count, mask=cmask)
    tl.store(PMEAN + out, mean, mask=cmask)
    tl.store(PM2 + out, m2, mask=cmask)


def _bn_stats_finalize(
    PCOUNT, PMEAN, PM2, W, B, MEAN, VAR, INVSTD, SCALE, SHIFT,
    C, SPLITS, eps,
    IS_F64: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    acc: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    count = tl.zeros((BLOCK_C,), dtype=acc)
    mean = tl.zeros((BLOCK_C,), dtype=acc)
    m2 = tl.zeros((BLOCK_C,), dtype=acc)
    for split in range(0, SPLITS):
        count_b = tl.load(PCOUNT + split * C + cs, mask=cmask, other=0.0)
        mean_b = tl.load(PMEAN + split * C + cs, mask=cmask, other=0.0)
        m2_b = tl.load(PM2 + split * C + cs, mask=cmask, other=0.0)
        new_count = count + count_b
        safe = tl.where(new_count > 0, new_count, 1.0)
        delta = mean_b - mean
        mean = mean + delta * (count_b / safe)
        m2 = m2 + m2_b + delta * delta * (count * count_b / safe)
        count = new_count
    var = m2 / tl.where(count > 0, count, 1.0)  # lanes past C have count 0
    invstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(W + cs, mask=cmask, other=1.0).to(acc)
    b = tl.load(B + cs, mask=cmask, other=0.0).to(acc)
    scale = w * invstd
    tl.store(MEAN + cs, mean, mask=cmask)
    tl.store(VAR + cs, var, mask=cmask)
    tl.store(INVSTD + cs, invstd, mask=cmask)
    tl.store(SCALE + cs, scale, mask=cmask)
    tl.store(SHIFT + cs, b - mean * scale, mask=cmask)


def _bn_apply(
    X, Y, R, SCALE, SHIFT,
    C, S, M,
    sxn, sxc, sxs, syn, syc, sys_, srn, src, srs,
    ACT: tl.constexpr, HAS_R: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """y = act(x * a + b [+ r]) per channel."""
    acc: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cs < C
    mask = (ms < M)[:, None] & cmask[None, :]
    n = (ms // S).to(tl.int64)[:, None]
    s = (ms % S).to(tl.int64)[:, None]
    c = cs.to(tl.int64)[None, :]
    x = tl.load(X + n * sxn + s * sxs + c * sxc, mask=mask, other=0.0).to(acc)
    a = tl.load(SCALE + cs, mask=cmask, other=0.0)
    b = tl.load(SHIFT + cs, mask=cmask, other=0.0)
    z = x * a[None, :] + b[None, :]
    if HAS_R:
        z += tl.load(R + n * srn + s * srs + c * src, mask=mask, other=0.0).to(acc)
    if ACT == 1:
        z = tl.maximum(z, 0.0)
    elif ACT == 2:
        z = 1.0 / (1.0 + tl.exp(-z))
    tl.store(Y + n * syn + s * sys_ + c * syc, z.to(Y.dtype.element_ty), mask=mask)


def _bn_backward_reduce(
    G, X, Y, MEAN, SCALE, SHIFT, PSG, PSGX,
    C, S, M, M_PER_PROG,
    sgn, sgc, sgs, sxn, sxc, sxs, syn, syc, sys_,
    ACT: tl.constexpr, FROM_Y: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    acc: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    pid_c = tl.program_id(0)
    pid_m = tl.program_id(1)
    cs = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    c = cs.to(tl.int64)[None, :]
    mean = tl.load(MEAN + cs, mask=cmask, other=0.0)[None, :]
    a = tl.load(SCALE + cs, mask=cmask, other=0.0)[None, :]
    b = tl.load(SHIFT + cs, mask=cmask, other=0.0)[None, :]
    m_start = pid_m * M_PER_PROG
    m_end = tl.minimum(m_start + M_PER_PROG, M)
    sg = tl.zeros((BLOCK_C,), dtype=acc)
    sgx = tl.zeros((BLOCK_C,), dtype=acc)
    for off in range(m_start, m_end, BLOCK_M):
        ms = off + tl.arange(0, BLOCK_M)
        mask = (ms < m_end)[:, None] & cmask[None, :]
        n = (ms // S).to(tl.int64)[:, None]
        s = (ms % S).to(tl.int64)[:, None]
        g = tl.load(G + n * sgn + s * sgs + c * sgc, mask=mask, other=0.0).to(acc)
        x = tl.load(X + n * sxn + s * sxs + c * sxc, mask=mask, other=0.0).to(acc)
        if ACT != 0:  # dL/dz = dL/dy * act'(z), z recomputed from x or read off y
            if FROM_Y:
                sig = tl.load(Y + n * syn + s * sys_ + c * syc, mask=mask, other=0.0).to(acc)
            else:
                sig = x * a + b
            if ACT == 1:
                g = tl.where(sig > 0, g, 0.0)
            else:
                if not FROM_Y:
                    sig = 1.0 / (1.0 + tl.exp(-sig))
                g = g * sig * (1.0 - sig)
        g = tl.where(mask, g, 0.0)
        sg += tl.sum(g, axis=0)
        sgx += tl.sum(g * (x - mean), axis=0)
    tl.store(PSG + pid_m * C + cs, sg, mask=cmask)
    tl.store(PSGX + pid_m * C + cs, sgx, mask=cmask)


def _bn_backward_finalize(
    PSG, PSGX, W, INVSTD, DW, DB, KA, KK, KC,
    C, SPLITS, M,
    IS_F64: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    acc: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cs < C
    sg = tl.zeros((BLOCK_C,), dtype=acc)
    sgx = tl.zeros((BLOCK_C,), dtype=acc)
    for split in range(0, SPLITS):
        sg += tl.load(PSG + split * C + cs, mask=cmask, other=0.0)
        sgx += tl.load(PSGX + split * C + cs, mask=cmask, other=0.0)
    invstd = tl.load(INVSTD + cs, mask=cmask, other=0.0)
    w = tl.load(W + cs, mask=cmask, other=1.0).to(acc)
    ka = w * invstd
    tl.store(DW + cs, sgx * invstd, mask=cmask)
    tl.store(DB + cs, sg, mask=cmask)
    tl.store(KA + cs, ka, mask=cmask)
    tl.store(KK + cs, ka * invstd * invstd * sgx / M, mask=cmask)
    tl.store(KC + cs, ka * sg / M, mask=cmask)


def _bn_backward_apply(
    G, X, Y, DX, DZ, MEAN, SCALE, SHIFT, KA, KK, KC,
    C, S, M,
    sgn, sgc, sgs, sxn, sxc, sxs, syn, syc, sys_, sdn, sdc, sds, szn, szc, szs,
    ACT: tl.constexpr, FROM_Y: tl.constexpr, WRITE_DZ: tl.constexpr, IS_F64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """dx = g * ka - (x - mean) * kk - kc; also dz = g (a fused residual's gradient)."""
    acc: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    cmask = cs < C
    mask = (ms < M)[:, None] & cmask[None, :]
    n = (ms // S).to(tl.int64)[:, None]
    s = (ms % S).to(tl.int64)[:, None]
    c = cs.to(tl.int64)[None, :]
    g = tl.load(G + n * sgn + s * sgs + c * sgc, mask=mask, other=0.0).to(acc)
    x = tl.load(X + n * sxn + s * sxs + c * sxc, mask=mask, other=0.0).to(acc)
    a = tl.load(SCALE + cs, mask=cmask, other=0.0)[None, :]
    b = tl.load(SHIFT + cs, mask=cmask, other=0.0)[None, :]
    if ACT != 0:  # as in _bn_backward_reduce
        if FROM_Y:
            sig = tl.load(Y + n * syn + s * sys_ + c * syc, mask=mask, other=0.0).to(acc)
        else:
            sig = x * a + b
        if ACT == 1:
            g = tl.where(sig > 0, g, 0.0)
        else:
            if not FROM_Y:
                sig = 1.0 / (1.0 + tl.exp(-sig))
            g = g * sig * (1.0 - sig)
    mean = tl.load(MEAN + cs, mask=cmask, other=0.0)[None, :]
    ka = tl.load(KA + cs, mask=cmask, other=0.0)[None, :]
    kk = tl.load(KK + cs, mask=cmask, other=0.0)[None, :]
    kc = tl.load(KC + cs, mask=cmask, other=0.0)[None, :]
    dx = g * ka - (x - mean) * kk - kc
    tl.store(DX + n * sdn + s * sds + c * sdc, dx.to(DX.dtype.element_ty), mask=mask)
    if WRITE_DZ:
        tl.store(DZ + n * szn + s * szs + c * szc, g.to(DZ.dtype.element_ty), mask=mask)


_KERNELS = {
    "stats_partial": _bn_stats_partial,
    "stats_finalize": _bn_stats_finalize,
    "apply": _bn_apply,
    "backward_reduce": _bn_backward_reduce,
    "backward_finalize": _bn_backward_finalize,
    "backward_apply": _bn_backward_apply,
}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _jitted(name: str, interpret: bool):
    return triton.jit(_KERNELS[name])


def jitted(name: str):
    """The kernel ``name`` wrapped by ``triton.jit`` for the current interpreter setting."""
    return _jitted(name, interpreting())
