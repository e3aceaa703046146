"""The kernel backends ("compiled", "hybrid", "triton") and the "auto" rule.

Each backend is held to the reference backend run in float64 on the same
(rounded) input: outputs, the three gradients and the batch statistics. The
generated kernels are compiled once per shape class, so the cases are few and
small; Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from batchnorm import functional as bnf
from batchnorm.backends import _inductor, auto, triton

HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

# Worst case relative to the float64 truth: float32 sums of a few hundred values;
# half/bfloat16 output rounded once (8 or 11 mantissa bits), gradients from it.
TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


def _input(shape, dtype, layout="contiguous"):
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 3).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # every other sample of a larger batch, last dim transposed
        big = torch.cat([x, x]).transpose(-1, -2).contiguous().transpose(-1, -2)
        x = big[::2]
    return x


def _check_backend(backend, x, affine=True, eps=1e-5):
    """Forward, backward and statistics of ``backend`` against float64 reference."""
    c = x.shape[1]
    pdtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = torch.randn(c, dtype=pdtype, requires_grad=True) if affine else None
    b = torch.randn(c, dtype=pdtype, requires_grad=True) if affine else None
    xg = x.detach().clone().requires_grad_(True)
    y, mean, var, _ = bnf.normalize(xg, w, b, None, None, True, eps, backend)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert mean.dtype == var.dtype == pdtype and not mean.requires_grad
    # dL/dy in y's layout, as the next layer's backward hands it back
    grad = torch.empty_like(y).copy_(torch.randn(y.shape, dtype=torch.float64))
    inputs = [xg] + ([w, b] if affine else [])
    grads = torch.autograd.grad(y, inputs, grad)

    x64 = x.detach().double().requires_grad_(True)
    w64 = w.detach().double().requires_grad_(True) if affine else None
    b64 = b.detach().double().requires_grad_(True) if affine else None
    y64, mean64, var64, _ = bnf.normalize(x64, w64, b64, None, None, True, eps, "reference")
    ref_inputs = [x64] + ([w64, b64] if affine else [])
    ref_grads = torch.autograd.grad(y64, ref_inputs, grad.double())
    tol = TOLERANCES[x.dtype]
    torch.testing.assert_close(y.double(), y64, **tol)
    torch.testing.assert_close(mean.double(), mean64, **tol)
    torch.testing.assert_close(var.double(), var64, **tol)
    scale = max(1.0, float(ref_grads[0].abs().max()))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double() / scale, want / scale, **tol)
    # Output and gradient in the input's layout: what torch.empty_like gives (a non-dense
    # input's gradient comes back contiguous, as empty_like does for it).
    assert y.stride() == torch.empty_like(x).stride()
    assert grads[0].stride() == torch.empty_like(x).stride()
    return y


def _check_eval(backend, x):
    c = x.shape[1]
    rm, rv = torch.randn(c), torch.rand(c) + 0.5
    w, b = torch.randn(c), torch.randn(c)
    with torch.no_grad():
        y, mean, var, _ = bnf.normalize(x, w, b, rm, rv, False, 1e-5, backend)
    assert mean is None and var is None
    want = torch.nn.functional.batch_norm(
        x.double(), rm.double(), rv.double(), w.double(), b.double(), False, 0.0, 1e-5
    )
    torch.testing.assert_close(y.double(), want, **TOLERANCES[x.dtype])
    assert y.stride() == torch.empty_like(x).stride()


# --- compiled and hybrid (TorchInductor) ------------------------------------------------

# Each case compiles two kernels (several seconds on a cold Inductor cache), so
# the file's fast part keeps four and the slow mark takes the rest.
COMPILED_CASES = [
    ((5, 3, 7, 9), torch.float64, "contiguous", True),
    ((5, 3, 7, 9), torch.float32, "channels_last", True),
    ((7, 5), torch.float32, "contiguous", False),
    ((3, 4, 5, 6), torch.bfloat16, "contiguous", True),
    pytest.param((4, 6, 11), torch.float32, "strided", True, marks=pytest.mark.slow),
    pytest.param((3, 4, 5, 6), torch.float16, "channels_last", True, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("shape", "dtype", "layout", "affine"), COMPILED_CASES)
def test_compiled_matches_reference(shape, dtype, layout, affine):
    _check_backend("compiled", _input(shape, dtype, layout), affine)


@pytest.mark.parametrize(("shape", "dtype", "layout", "affine"), COMPILED_CASES[:3])
def test_hybrid_matches_reference(shape, dtype, layout, affine):
    _check_backend("hybrid", _input(shape, dtype, layout), affine)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_compiled_eval_matches_torch(layout):
    _check_eval("compiled", _input((4, 3, 5, 7), torch.float32, layout))


def test_compiled_eval_with_autograd_is_differentiable():
    x = _input((4, 3, 5), torch.float32).requires_grad_(True)
    w = torch.randn(3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    y, _, _, _ = bnf.normalize(x, w, None, rm, rv, False, 1e-5, "compiled")
    (gx, gw) = torch.autograd.grad(y.sum(), (x, w))
    torch.testing.assert_close(gx, (w / (1 + 1e-5) ** 0.5).view(1, 3, 1).expand_as(x))
    torch.testing.assert_close(gw, (x.detach() / (1 + 1e-5) ** 0.5).sum((0, 2)))


def test_compiled_second_call_does_not_recompile():
    x = _input((6, 3, 4, 5), torch.float32).requires_grad_(True)
    w, b = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)

    def step():
        y, _, _, _ = bnf.normalize(x, w, b, None, None, True, 1e-5, "compiled")
        y.square().sum().backward()

    step()
    before = _inductor.cache_info()
    dynamo_before = sum(torch._dynamo.utils.counters["stats"].values())
    for _ in range(3):
        step()
    after = _inductor.cache_info()
    assert after["compiles"] == before["compiles"], "a repeated shape class recompiled"
    assert after["hits"] >= before["hits"] + 6  # forward and backward, three steps
    assert sum(torch._dynamo.utils.counters["stats"].values()) == dynamo_before


def test_compiled_non_finite_input_gives_non_finite_statistics():
    x = _input((4, 2, 3), torch.float32)
    x[1, 0, 2] = float("nan")
    _, mean, var, _ = bnf.normalize(x, None, None, None, None, True, 1e-5, "compiled")
    assert not torch.isfinite(mean[0]) and torch.isfinite(mean[1])
    assert torch.isfinite(var[1])


def test_compiled_layer_skips_non_finite_update():
    from batchnorm import BatchNorm1d

    layer = BatchNorm1d(2, backend="compiled")
    x = _input((4, 2, 3), torch.float32)
    layer(x)
    running = layer.running_mean.clone()
    x[0, 0, 0] = float("inf")
    layer(x)
    torch.testing.assert_close(layer.running_mean, running)
    assert int(layer.skipped_updates) == 1


# --- triton (CPU interpreter) -----------------------------------------------------------


# Triton's interpreter must be chosen before triton is first imported (its own
# library functions, tl.sum among them, are wrapped at import), and other tests
# import it through Inductor. So the interpreter cases run in a child pytest
# started with TRITON_INTERPRET=1, and are skipped, with that reason, here.
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def interpret():
    if not HAS_TRITON:
        pytest.skip("triton is not installed (pip install -e '.[dev]' installs it)")
    if not INTERPRETING:
        pytest.skip("runs in test_triton_cases_in_interpreter's TRITON_INTERPRET=1 child")


@needs_triton
@pytest.mark.skipif(INTERPRETING, reason="already running under TRITON_INTERPRET=1")
def test_triton_cases_in_interpreter():
    """Every ``interpret`` test below, in a child process with TRITON_INTERPRET=1."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    child = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "triton and not in_interpreter and not unavailable"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout and "skipped" not in child.stdout.splitlines()[-1]


@needs_triton
def test_triton_unavailable_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not triton.is_available(torch.zeros(2, 3))
    assert "triton" not in bnf.available_backends(torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match="triton"):
        bnf.normalize(torch.randn(4, 3), None, None, None, None, True, 1e-5, "triton")


def test_triton_unavailable_without_triton(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "_triton_imports", lambda: False)
    assert not triton.is_available(torch.zeros(2, 3))


TRITON_CASES = [
    ((5, 3, 7, 9), torch.float64, "contiguous", True),
    ((5, 3, 7, 9), torch.float32, "channels_last", True),
    ((7, 5), torch.float32, "contiguous", False),
    ((4, 6, 11), torch.float32, "strided", True),
    ((3, 70, 2), torch.float32, "contiguous", True),  # more channels than one tile
    ((2, 3, 33, 40), torch.float32, "contiguous", True),  # several splits per channel
    ((3, 4, 5, 6), torch.bfloat16, "channels_last", True),
    ((3, 4, 5, 6), torch.float16, "contiguous", True),
]


@pytest.mark.parametrize(("shape", "dtype", "layout", "affine"), TRITON_CASES)
def test_triton_matches_reference(interpret, shape, dtype, layout, affine):
    _check_backend("triton", _input(shape, dtype, layout), affine)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_triton_eval_matches_torch(interpret, layout):
    _check_eval("triton", _input((4, 3, 5, 7), torch.float32, layout))


def test_triton_split_reduction_is_exact_for_large_means(interpret):
    """Chan's combination: no E[x^2] - E[x]^2 cancellation at mean 1e4, std 1."""
    x = torch.randn(2, 2, 64, 40) + 1e4
    _, mean, var, _ = bnf.normalize(x, None, None, None, None, True, 1e-5, "triton")
    want = x.double().var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(var.double(), want, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), x.double().mean((0, 2, 3)), rtol=1e-7, atol=0)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_triton_fused_activation_and_residual(interpret, activation, layout, with_residual):
    """act(BN(x) + r) and its three (four) gradients against the float64 reference."""

    x = _input((3, 4, 5, 6), torch.float32, layout).requires_grad_(True)
    r = torch.randn(3, 4, 5, 6, requires_grad=True) if with_residual else None
    w, b = torch.randn(4, requires_grad=True), torch.randn(4, requires_grad=True)
    y, *_ = bnf.normalize(
        x, w, b, None, None, True, 1e-5, "triton", activation=activation, residual=r
    )
    y64, *_ = bnf.normalize(
        x.double(), w.double(), b.double(), None, None, True, 1e-5, "reference",
        activation=activation, residual=r.double() if r is not None else None,
    )  # fmt: skip
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    inputs = [x, w, b] + ([r] if r is not None else [])
    got = torch.autograd.grad(y, inputs, grad)
    want = torch.autograd.grad(y64, inputs, grad.double())
    for g, v in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), v.double(), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        rm, rv = torch.randn(4), torch.rand(4) + 0.5
        y_eval, *_ = bnf.normalize(x, w, b, rm, rv, False, 1e-5, "triton", activation=activation,
                                     residual=r)
        want_eval = torch.nn.functional.batch_norm(x, rm, rv, w, b, False, 0.0, 1e-5)
        want_eval = want_eval + (r if r is not None else 0)
        want_eval = torch.relu(want_eval) if activation == "relu" else torch.sigmoid(want_eval)
    torch.testing.assert_close(y_eval, want_eval)


# --- auto -------------------------------------------------------------------------------


@pytest.fixture
def fresh_auto():
    auto.reset()
    yield
    auto.reset()


def test_auto_is_native_for_small_inputs(fresh_auto):
    x = torch.randn(60, 100)
    assert all(auto.choose(x, True) == "native" for _ in range(10))


def test_auto_never_compiles_a_one_off_call(fresh_auto):
    x = torch.empty(4, 16, 128, 128)  # 1M elements: a candidate for a generated kernel
    assert auto.choose(x, True) == "native"
    before = _inductor.cache_info()["compiles"]
    y = torch.randn(2, 16, 128, 256)  # a different shape class, run once through auto
    bnf.batch_norm(y, None, None, training=True, backend="auto")
    assert _inductor.cache_info()["compiles"] == before


def test_auto_switches_after_repeated_sightings(fresh_auto):
    x = torch.empty(4, 16, 128, 128)
    choices = [auto.choose(x, True) for _ in range(auto.SIGHTINGS + 2)]
    assert choices[: auto.SIGHTINGS - 1] == ["native"] * (auto.SIGHTINGS - 1)
    assert set(choices[auto.SIGHTINGS - 1 :]) == {"hybrid"}
    cl = x.contiguous(memory_format=torch.channels_last)
    assert [auto.choose(cl, True) for _ in range(auto.SIGHTINGS)][-1] == "compiled"
    # Evaluation is one read and one write: ATen is at the floor there.
    assert {auto.choose(cl, False) for _ in range(5)} == {"native"}
    # Half-precision training on the CPU goes to the float32-accurate paper backend;
    # in eval (no statistics to compute) it stays on ATen.
    half = torch.empty(4, 16, 128, 128, dtype=torch.bfloat16)
    assert {auto.choose(half, True) for _ in range(5)} == {"reference"}
    assert {auto.choose(half, False) for _ in range(5)} == {"native"}


def test_auto_names_a_registered_backend(fresh_auto):
    for rule in auto.RULES:
        assert rule.backend in bnf.available_backends()


def test_layout_of():
    assert auto.layout_of(torch.empty(3, 4)) == "nc"
    assert auto.layout_of(torch.empty(3, 4, 5, 6)) == "nchw"
    cl = torch.empty(3, 4, 5, 6).contiguous(memory_format=torch.channels_last)
    assert auto.layout_of(cl) == "nhwc"
    assert auto.layout_of(torch.empty(3, 4, 5, 6)[:, :, ::2]) == "other"
