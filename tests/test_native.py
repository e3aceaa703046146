"""The native backend (``backends/native.py``): ATen's kernels plus the in-kernel and small-input
running-statistics updates, against torch in float64 and the paper's formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import batchnorm.functional as bf
from batchnorm.backends import native
from batchnorm.backends.native import FUSED_UPDATE_MAX_NUMEL, update_in_kernel

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = 1e-5
REDUCED = (torch.float16, torch.bfloat16)


@pytest.fixture(autouse=True)
def _cold_zero_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty zero-vector cache per test (a forked mutation run inherits a warm one)."""
    monkeypatch.setattr(native, "_ZEROS", {})


def _call(traced: bool, monkeypatch: pytest.MonkeyPatch, *args):
    """update_in_kernel eagerly (traced=False) or in the functional form a tracer sees."""
    with monkeypatch.context() as patch:
        if traced:
            patch.setattr(torch.compiler, "is_compiling", lambda: True)
        return update_in_kernel(*args)


def _stats64(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance in float64, and the count per channel."""
    flat = x.double().transpose(0, 1).reshape(x.shape[1], -1)
    return flat.mean(1), flat.var(1, correction=0), flat.shape[1]


def _input(layout: str, dtype: torch.dtype) -> torch.Tensor:
    if layout == "2d":
        x = torch.randn(8, 3, dtype=dtype)
    elif layout == "channels_last":
        x = torch.randn(4, 3, 2, 2, dtype=dtype).to(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    else:  # every other column: a non-contiguous view
        x = torch.randn(8, 6, dtype=dtype)[:, ::2]
        assert not x.is_contiguous()
    return x * 2 + 3


def _tol(dtype: torch.dtype) -> dict:
    if dtype == torch.float64:
        return {"rtol": 1e-12, "atol": 1e-12}
    return {"rtol": 2e-5, "atol": 2e-5}


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
@pytest.mark.parametrize("layout", ["2d", "channels_last", "strided"])
@pytest.mark.parametrize("momentum", [0.1, 0.0, 1.0])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_kernel_update_is_the_moving_average(
    monkeypatch, dtype, affine, momentum, layout, traced
) -> None:
    x = _input(layout, dtype)
    c = x.shape[1]
    weight = torch.tensor([0.5, -2.0, 3.0], dtype=dtype) if affine else None
    bias = torch.tensor([1.0, 0.25, -4.0], dtype=dtype) if affine else None
    running_mean = torch.tensor([0.5, -1.0, 2.0], dtype=dtype)
    running_var = torch.tensor([2.0, 0.5, 3.0], dtype=dtype)
    mean0, var0 = running_mean.clone(), running_var.clone()
    ptrs = running_mean.data_ptr(), running_var.data_ptr()
    skipped = torch.zeros((), dtype=torch.long)

    output = _call(traced, monkeypatch, x, weight, bias, running_mean, running_var, momentum,
                   EPS, skipped)

    mean, var, n = _stats64(x)
    expected = F.batch_norm(
        x.double(), None, None, None if weight is None else weight.double(),
        None if bias is None else bias.double(), True, 0.0, EPS,
    )
    assert output is not None and output.dtype == dtype and output.shape == x.shape
    torch.testing.assert_close(output.double(), expected, **_tol(dtype))
    # r <- (1 - m) r + m s_B, the variance unbiased (n / (n - 1)), written into the same buffers
    m = momentum
    torch.testing.assert_close(running_mean.double(), (1 - m) * mean0.double() + m * mean,
                               **_tol(dtype))
    torch.testing.assert_close(running_var.double(),
                               (1 - m) * var0.double() + m * var * n / (n - 1), **_tol(dtype))
    assert (running_mean.data_ptr(), running_var.data_ptr()) == ptrs
    assert running_mean.dtype == running_var.dtype == dtype
    assert running_mean.shape == running_var.shape == (c,)
    assert skipped.item() == 0 and skipped.dtype == torch.long


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
@pytest.mark.parametrize("counter", [True, False], ids=["counted", "uncounted"])
@pytest.mark.parametrize("bad", ["inf", "nan", "var_overflow"])
def test_a_non_finite_batch_leaves_every_statistic_unchanged(
    monkeypatch, bad, counter, traced
) -> None:
    x = torch.randn(6, 3)
    if bad == "var_overflow":  # finite input and mean, the variance overflows float32
        x[0, 1], x[1, 1] = 3e38, -3e38
    else:
        x[2, 1] = float(bad)
    running_mean = torch.tensor([0.5, -1.0, 2.0])
    running_var = torch.tensor([2.0, 0.5, 3.0])
    mean0, var0 = running_mean.clone(), running_var.clone()
    skipped = torch.zeros((), dtype=torch.long) if counter else None
    for _ in range(2):
        output = _call(traced, monkeypatch, x, None, None, running_mean, running_var, 0.5,
                       EPS, skipped)
        assert output is not None and output.shape == x.shape
    # channels 0 and 2 are finite, yet the whole update is skipped
    assert torch.equal(running_mean, mean0) and torch.equal(running_var, var0)
    if counter:
        assert skipped.item() == 2
    # a finite batch afterwards updates them again, not counted
    good = torch.randn(6, 3)
    _call(traced, monkeypatch, good, None, None, running_mean, running_var, 0.5, EPS, skipped)
    mean, var, n = _stats64(good)
    torch.testing.assert_close(running_mean.double(), 0.5 * mean0.double() + 0.5 * mean)
    torch.testing.assert_close(running_var.double(), 0.5 * var0.double() + 0.5 * var * n / (n - 1))
    if counter:
        assert skipped.item() == 2


@pytest.mark.parametrize(
    ("shape", "dtype", "stats_dtype"),
    [
        ((FUSED_UPDATE_MAX_NUMEL // 64 + 1, 64), torch.float32, torch.float32),  # too large
        ((8, 4), torch.float32, torch.float64),  # statistics of another dtype
        ((8, 4), torch.float64, torch.float32),
        ((8, 4), torch.float16, torch.float32),  # reduced precision input
        ((8, 4), torch.bfloat16, torch.float32),
        ((8, 4), torch.float16, torch.float16),  # ... even with statistics of its dtype
    ],
)
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_in_kernel_update_declines(monkeypatch, shape, dtype, stats_dtype, traced) -> None:
    x = torch.randn(shape).to(dtype)
    running_mean = torch.zeros(shape[1], dtype=stats_dtype)
    running_var = torch.ones(shape[1], dtype=stats_dtype)
    skipped = torch.zeros((), dtype=torch.long)
    assert _call(traced, monkeypatch, x, None, None, running_mean, running_var, 0.5, EPS,
                 skipped) is None
    assert torch.equal(running_mean, torch.zeros_like(running_mean))
    assert torch.equal(running_var, torch.ones_like(running_var))
    assert skipped.item() == 0


@pytest.mark.parametrize("extra_rows", [0, 1], ids=["at_limit", "over_limit"])
def test_both_sides_of_the_size_limit_update_the_statistics(extra_rows) -> None:
    """At the limit the kernel updates them, above it the general path: the same numbers."""
    x = torch.randn(FUSED_UPDATE_MAX_NUMEL // 64 + extra_rows, 64) + 1
    running_mean, running_var = torch.zeros(64), torch.ones(64)
    if extra_rows == 0:
        assert update_in_kernel(x, None, None, running_mean.clone(), running_var.clone(),
                                0.25, EPS) is not None
    bf.batch_norm(x, running_mean, running_var, None, None, True, 0.25, EPS, backend="native")
    mean, var, n = _stats64(x)
    torch.testing.assert_close(running_mean.double(), 0.25 * mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(running_var.double(), 0.75 + 0.25 * var * n / (n - 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *REDUCED])
def test_forward_in_training_returns_the_biased_batch_statistics(dtype, affine) -> None:
    # offset 10: half rounds there to 2**-7, far coarser than float32 statistics
    x = (torch.randn(16, 3) + 10).to(dtype).requires_grad_()
    weight = torch.tensor([0.5, -2.0, 3.0]) if affine else None
    bias = torch.tensor([1.0, 0.25, -4.0]) if affine else None
    if affine and dtype == torch.float64:
        weight, bias = weight.double(), bias.double()
    output, mean, var = native.BACKEND.forward(x, weight, bias, None, None, True, EPS)
    expected_mean, expected_var, _ = _stats64(x.detach())
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert mean.dtype == var.dtype == stats_dtype
    assert not mean.requires_grad and not var.requires_grad
    tol = _tol(dtype) if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(mean.double(), expected_mean, **tol)
    torch.testing.assert_close(var.double(), expected_var, **tol)
    expected = F.batch_norm(
        x.detach().double(), None, None, None if weight is None else weight.double(),
        None if bias is None else bias.double(), True, 0.0, EPS,
    )
    assert output.dtype == dtype
    out_tol = {"rtol": 0.0, "atol": 0.05} if dtype in REDUCED else tol
    torch.testing.assert_close(output.detach().double(), expected, **out_tol)
    output.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", REDUCED)
def test_reduced_precision_input_updates_float32_statistics_at_float32_precision(dtype) -> None:
    """No affine parameters (nothing float32 in ATen's call): the statistics must still not be
    rounded to the input's dtype before they reach the float32 running statistics."""
    x = (torch.randn(64, 3) * 3 + 100).to(dtype)
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    bf.batch_norm(x, running_mean, running_var, None, None, True, 1.0, EPS, backend="native")
    mean, var, n = _stats64(x)
    torch.testing.assert_close(running_mean.double(), mean, rtol=1e-6, atol=0.0)
    torch.testing.assert_close(running_var.double(), var * n / (n - 1), rtol=1e-5, atol=0.0)


def test_forward_in_training_recovers_the_variance_from_invstd_with_a_large_eps() -> None:
    x = torch.tensor([[1.0], [3.0]], dtype=torch.float64)  # mean 2, biased variance 1
    _, mean, var = native.BACKEND.forward(x, None, None, None, None, True, 4.0)
    assert mean.item() == pytest.approx(2.0) and var.item() == pytest.approx(1.0)


@pytest.mark.parametrize("affine", [True, False])
def test_forward_in_evaluation_uses_the_running_statistics(affine) -> None:
    x = torch.randn(5, 3, 2)
    running_mean = torch.tensor([0.5, -1.0, 2.0])
    running_var = torch.tensor([2.0, 0.5, 3.0])
    mean0, var0 = running_mean.clone(), running_var.clone()
    weight = torch.tensor([0.5, -2.0, 3.0]) if affine else None
    bias = torch.tensor([1.0, 0.25, -4.0]) if affine else None
    output, mean, var = native.BACKEND.forward(x, weight, bias, running_mean, running_var,
                                               False, 0.5)
    assert mean is None and var is None
    view = (1, 3, 1)
    expected = (x.double() - mean0.double().view(view)) / (var0.double().view(view) + 0.5).sqrt()
    if affine:
        expected = expected * weight.double().view(view) + bias.double().view(view)
    torch.testing.assert_close(output.double(), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(running_mean, mean0) and torch.equal(running_var, var0)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "traced"])
def test_in_kernel_update_keeps_everything_on_the_input_device(monkeypatch, traced) -> None:
    """Another default device (as after torch.set_default_device) must not leak in."""
    x = torch.randn(4, 3)
    running_mean, running_var = torch.zeros(3), torch.ones(3)
    skipped = torch.zeros((), dtype=torch.long)
    with torch.device("meta"):
        output = _call(traced, monkeypatch, x, None, None, running_mean, running_var, 0.5, EPS,
                       skipped)
    cpu = torch.device("cpu")
    assert output.device == running_mean.device == running_var.device == skipped.device == cpu
    mean, var, n = _stats64(x)
    torch.testing.assert_close(running_mean.double(), 0.5 * mean)
    torch.testing.assert_close(running_var.double(), 0.5 + 0.5 * var * n / (n - 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_vectors_are_made_once_per_length_dtype_and_device(dtype) -> None:
    cpu = torch.device("cpu")
    zeros = native._zeros(5, dtype, cpu)
    assert torch.equal(zeros, torch.zeros(5, dtype=torch.float64).to(dtype))
    assert zeros.dtype == dtype and zeros.device == cpu
    assert native._zeros(5, dtype, cpu) is zeros  # allocated once
    longer = native._zeros(6, dtype, cpu)
    assert longer.shape == (6,) and longer is not zeros
    other = torch.float64 if dtype == torch.float32 else torch.float32
    assert native._zeros(5, other, cpu).dtype == other
    on_meta = native._zeros(5, dtype, torch.device("meta"))
    assert on_meta.device.type == "meta" and on_meta.shape == (5,) and on_meta.dtype == dtype
    with torch.device("meta"):  # the device asked for, not the default one
        assert native._zeros(7, dtype, cpu).device == cpu
    assert native._zeros(5, dtype, cpu) is zeros


def test_the_zero_vector_cache_is_bounded() -> None:
    cpu = torch.device("cpu")
    for n in range(1, 300):
        native._zeros(n, torch.float32, cpu)
        assert len(native._ZEROS) <= 256
    assert native._zeros(299, torch.float32, cpu) is native._zeros(299, torch.float32, cpu)
    assert math.prod(native._zeros(299, torch.float32, cpu).shape) == 299
