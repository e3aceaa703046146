"""batchnorm.functional against torch.nn.functional, autograd and the NumPy oracle."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from _shapes import bn_shapes
from batchnorm import functional as bnf
from batchnorm import reference
from batchnorm.backends import auto, registry
from batchnorm.backends.reference import PaperBatchNorm
from batchnorm.backends.registry import Backend
from batchnorm.functional import batch_norm

BACKENDS = ["reference", "native"]
# float32 sums of a few hundred values: relative error well under 1e-5;
# bfloat16 output has an 8-bit mantissa, so one rounding step is 2^-8 relative.
TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


def _params(channels: int, dtype: torch.dtype):
    param_dtype = torch.float32 if dtype == torch.bfloat16 else dtype
    weight = torch.randn(channels, dtype=param_dtype).requires_grad_()
    bias = torch.randn(channels, dtype=param_dtype).requires_grad_()
    return weight, bias


def _run(fn, x, weight, bias, running, training, steps, momentum):
    """Several calls; returns last output, gradients and final running statistics."""
    for _ in range(steps):
        x_ = x.detach().clone().requires_grad_()
        out = fn(x_, *running, weight, bias, training, momentum, 1e-5)
    grad_out = torch.linspace(-1, 1, out.numel(), dtype=torch.float64).reshape(out.shape)
    wanted = [t for t in (x_, weight, bias) if t is not None]
    grads = iter(torch.autograd.grad((out.double() * grad_out).sum(), wanted))
    return out, [None if t is None else next(grads) for t in (x_, weight, bias)], running


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@given(
    shape=bn_shapes(),
    training=st.booleans(),
    affine=st.booleans(),
    track=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_functional(backend, dtype, shape, training, affine, track, seed):
    """Outputs, gradients and running statistics after 3 steps equal torch's.

    For bfloat16 the paper-equation backend is held to torch run in float64
    on the same (rounded) input instead: ATen's bfloat16 CPU kernel computes
    the variance in one pass, which loses digits that ours keeps ("native",
    being that kernel, is held to it at bfloat16 tolerance).
    """
    torch.manual_seed(seed)
    if not training and not track:
        training = True  # F.batch_norm needs running statistics in eval mode
    x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).to(dtype)
    channels = shape[1]
    weight, bias = _params(channels, dtype) if affine else (None, None)
    stat_dtype = torch.float32 if dtype == torch.bfloat16 else dtype

    def running(dtype):
        if not track:
            return (None, None)
        return (
            torch.linspace(-1, 1, channels, dtype=dtype),
            torch.linspace(0.5, 2, channels, dtype=dtype),
        )

    def ours(*args):
        return batch_norm(*args, backend=backend)

    out, grads, stats = _run(ours, x, weight, bias, running(stat_dtype), training, 3, 0.1)
    against_float64 = dtype == torch.bfloat16 and backend != "native"
    if against_float64:
        x_want = x.double()
        w_want, b_want = (
            None if p is None else p.detach().double().requires_grad_() for p in (weight, bias)
        )
        want, want_grads, want_stats = _run(
            F.batch_norm, x_want, w_want, b_want, running(torch.float64), training, 3, 0.1
        )
    else:
        want, want_grads, want_stats = _run(
            F.batch_norm, x, weight, bias, running(stat_dtype), training, 3, 0.1
        )
    tol = TOLERANCES[dtype]
    assert out.dtype == dtype and out.shape == want.shape
    torch.testing.assert_close(out.double(), want.double(), **tol)
    for got, expected in zip(grads, want_grads, strict=True):
        if expected is None:
            assert got is None
            continue
        if dtype == torch.bfloat16:
            # dx is a difference of terms of size |dy| * gamma / sigma: in bfloat16 the
            # rounding error scales with those terms, not with the (small) result.
            scale = max(1.0, expected.double().abs().max().item())
            tol = dict(rtol=2e-2, atol=2e-2 * scale)
        torch.testing.assert_close(got.double(), expected.double(), **tol)
    stat_tol = TOLERANCES[dtype if dtype == torch.bfloat16 and not against_float64 else stat_dtype]
    for got, expected in zip(stats, want_stats, strict=True):
        if expected is not None:
            assert got.dtype == stat_dtype
            torch.testing.assert_close(got.double(), expected.double(), **stat_tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last(backend):
    x = torch.randn(4, 6, 5, 3).to(memory_format=torch.channels_last)
    weight, bias = _params(6, torch.float32)
    out = batch_norm(x, None, None, weight, bias, True, backend=backend)
    want = F.batch_norm(x, None, None, weight, bias, True)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_reference_gradcheck_float64():
    x = torch.randn(5, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return batch_norm(x, None, None, w, b, True, backend="reference")

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))

    def f_eval(x, w, b):
        mean = torch.linspace(-1, 1, 3, dtype=torch.float64)
        var = torch.linspace(0.5, 2, 3, dtype=torch.float64)
        return batch_norm(x, mean, var, w, b, False, backend="reference")

    assert torch.autograd.gradcheck(f_eval, (x, w, b))


@given(shape=bn_shapes())
def test_paper_backward_equals_autograd_and_oracle(shape):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    w = torch.randn(shape[1], dtype=torch.float64)
    b = torch.randn(shape[1], dtype=torch.float64)
    dy = torch.randn(shape, dtype=torch.float64)
    eps = 1e-3

    # Autograd through the naive Algorithm 1.
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    dims = [0, *range(2, x.dim())]
    view = [1, -1] + [1] * (x.dim() - 2)
    mu = xs.mean(dims, keepdim=True)
    var = ((xs - mu) ** 2).mean(dims, keepdim=True)
    naive = ws.view(view) * (xs - mu) / torch.sqrt(var + eps) + bs.view(view)
    naive_grads = torch.autograd.grad(naive, [xs, ws, bs], dy)

    xp, wp, bp = (t.clone().requires_grad_() for t in (x, w, b))
    paper, _, _ = PaperBatchNorm.apply(xp, wp, bp, eps)
    paper_grads = torch.autograd.grad(paper, [xp, wp, bp], dy)

    y_ref, cache = reference.forward(x.numpy(), w.numpy(), b.numpy(), eps)
    oracle_grads = reference.backward(dy.numpy(), cache)

    np.testing.assert_allclose(paper.detach().numpy(), y_ref, rtol=1e-10, atol=1e-10)
    for got, via_autograd, oracle in zip(paper_grads, naive_grads, oracle_grads, strict=True):
        torch.testing.assert_close(got, via_autograd, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got.numpy(), oracle, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_half_precision_accumulates_in_float32(dtype, backend):
    """Statistics of half-precision input are float32-accurate.

    A large mean over a small spread is where reduced-precision accumulation
    fails: ATen's float16 CPU kernel ("native") misses the mean of this input
    by 3e-4 relative, which is why "auto" must not pick it for half input.
    """
    x = (torch.randn(4096, 2, dtype=torch.float64) + 100).to(dtype)
    x64 = x.double()
    m, v = torch.zeros(2), torch.ones(2)
    out = batch_norm(x, m, v, training=True, momentum=1.0, backend=backend)
    assert out.dtype == dtype
    assert m.dtype == torch.float32
    torch.testing.assert_close(m.double(), x64.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v.double(), x64.var(0), rtol=1e-5, atol=1e-8)
    expected = (x64 - x64.mean(0)) / torch.sqrt(x64.var(0, correction=0) + 1e-5)
    ulp = 2.0**-10 if dtype == torch.float16 else 2.0**-7
    torch.testing.assert_close(out.double(), expected, rtol=ulp, atol=4 * ulp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_batch_leaves_running_statistics(backend):
    x = torch.randn(8, 3)
    x[2, 1] = float("inf")
    mean, var = torch.zeros(3), torch.ones(3)
    out = batch_norm(x, mean, var, training=True, backend=backend)
    assert not torch.isfinite(out[:, 1]).all()  # the output follows the input
    assert torch.isfinite(out[:, 0]).all()
    torch.testing.assert_close(mean, torch.zeros(3))
    torch.testing.assert_close(var, torch.ones(3))


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: batch_norm(torch.randn(1, 3), None, None, training=True), ValueError,
         "more than 1 value per channel"),
        (lambda: batch_norm(torch.randn(1, 3, 1, 1), None, None, training=True), ValueError,
         r"shape \(1, 3, 1, 1\)"),
        (lambda: batch_norm(torch.randn(5), None, None, training=True), ValueError,
         "at least 2 dimensions"),
        (lambda: batch_norm(torch.ones(4, 3, dtype=torch.long), None, None, training=True),
         TypeError, "floating-point"),
        (lambda: batch_norm(torch.randn(4, 3), torch.zeros(2), torch.ones(2)), RuntimeError,
         r"running_mean has shape \(2,\)"),  # a RuntimeError, as torch's (and a ValueError)
        (lambda: batch_norm(torch.randn(4, 3), None, None), ValueError,
         "required when not training"),
        (lambda: batch_norm(torch.randn(4, 3), None, None, training=True, eps=0.0), ValueError,
         "eps must be positive"),
        (lambda: batch_norm(torch.randn(4, 3), None, None, training=True, backend="nope"),
         ValueError, "unknown batch-norm backend 'nope'"),
    ],
)
def test_bad_input_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_eval_on_empty_batch_returns_empty():
    out = batch_norm(torch.randn(0, 3), torch.zeros(3), torch.ones(3))
    assert out.shape == (0, 3)


def test_backends_are_listed():
    assert {"reference", "native"} <= set(bnf.available_backends())
    assert set(bnf.available_backends(torch.randn(2, 2))) >= {"reference", "native"}


def test_available_backends_depend_on_the_input():
    everything = bnf.available_backends()
    half = bnf.available_backends(torch.zeros(2, 3, dtype=torch.float16))
    assert {"reference", "native"} <= set(half) <= set(everything)
    if "hybrid" in everything:  # needs a C++ compiler; float32/float64 CPU input only
        assert "hybrid" not in half
        assert "hybrid" in bnf.available_backends(torch.zeros(2, 3))


# --- errors, eps, defaults, edge batches (what the messages and results promise) ---


def _f64(*tensors):
    return [None if t is None else t.detach().double() for t in tensors]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: batch_norm([[1.0, 2.0]], None, None), TypeError,
         r"^batch_norm: expected a Tensor, got list"),
        (lambda: batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(2)), RuntimeError,
         r"^batch_norm: running_var has shape \(2,\), expected \(3,\)"),
        (lambda: batch_norm(torch.randn(4, 3), None, None, torch.ones(2), None, True),
         ValueError, r"^batch_norm: weight has shape \(2,\), expected \(3,\)"),
        # a (1,) bias would broadcast silently: it must be rejected, as torch does
        (lambda: batch_norm(torch.randn(4, 3), None, None, None, torch.ones(1), True),
         ValueError, r"^batch_norm: bias has shape \(1,\), expected \(3,\)"),
        (lambda: batch_norm(torch.randn(4, 3), None, None, training=True, eps=0.0), ValueError,
         r"^batch_norm: eps must be positive during training"),
        (lambda: batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), eps=-1e-3),
         ValueError, r"^batch_norm: eps must be non-negative, got -0\.001"),
        (lambda: batch_norm(torch.randn(1, 1), None, None, training=True), ValueError,
         r"more than 1 value per channel .*use a batch size > 1 or eval mode\)"),
        # one running statistic is not enough in evaluation
        (lambda: batch_norm(torch.randn(4, 3), torch.zeros(3), None), ValueError,
         r"^running_mean and running_var are required when not training"),
        (lambda: bnf.normalize(torch.randn(4, 3), None, None, None, None, True, 1e-5,
                               activation="tanh"),
         ValueError, r"^batch_norm: activation must be one of .*got 'tanh'"),
    ],
)  # fmt: skip
def test_errors_name_the_function_and_the_problem(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_shape_errors_are_batch_norm_shape_errors():
    for vectors in [(torch.zeros(2), torch.ones(3)), (torch.zeros(3), torch.ones(2))]:
        with pytest.raises(bnf.BatchNormShapeError):
            batch_norm(torch.randn(4, 3), *vectors)


def test_eval_allows_eps_zero_as_torch(one_thread):
    """torch's rule: eps = 0 is fine with running statistics (a variance > 0)."""
    x, mean, var = torch.randn(4, 3, 2), torch.randn(3), torch.rand(3) + 0.5
    w, b = torch.randn(3), torch.randn(3)
    out = batch_norm(x, mean, var, w, b, False, eps=0.0)
    want = F.batch_norm(*_f64(x, mean, var, w, b), False, eps=0.0)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)


def test_default_momentum_is_torchs(one_thread):
    x = torch.randn(6, 3, dtype=torch.float64) * 2 + 1
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    batch_norm(x, mean, var, training=True)
    torch.testing.assert_close(mean, 0.1 * x.mean(0))
    torch.testing.assert_close(var, 0.9 + 0.1 * x.var(0))  # unbiased batch variance


def test_eval_single_value_is_normalized(one_thread):
    """A one-element input in evaluation is normalized with the running statistics."""
    x = torch.tensor([[[3.0]]])
    mean, var, w, b = torch.tensor([1.0]), torch.tensor([4.0]), torch.tensor([2.0]), torch.ones(1)
    out = batch_norm(x, mean, var, w, b, False)
    torch.testing.assert_close(out, torch.tensor([[[2.0 * 2.0 / (4.0 + 1e-5) ** 0.5 + 1.0]]]))


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0, 3, 2, 5)])
def test_empty_training_batch_as_torch(shape, one_thread):
    """Empty output, zero gradients for weight and bias, running statistics untouched."""
    x = torch.randn(shape)
    w, b = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    mean, var = torch.randn(3), torch.rand(3) + 0.5
    before = (mean.clone(), var.clone())
    out = batch_norm(x, mean, var, w, b, True)
    want = F.batch_norm(x, mean.clone(), var.clone(), w, b, True)
    assert out.shape == want.shape == shape and out.dtype == want.dtype
    grads = torch.autograd.grad(out.sum(), [w, b])
    want_grads = torch.autograd.grad(want.sum(), [w, b])
    for got, expected in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(got, torch.zeros(3))
    torch.testing.assert_close((mean, var), before)


def test_normalize_empty_batch_with_residual(one_thread):
    """act(BN(x) + r) of an empty batch: differentiable in r, no statistics, nothing to update."""
    x = torch.randn(0, 3, 4)
    residual = torch.randn(0, 3, 4, requires_grad=True)
    result = bnf.normalize(x, None, None, None, None, True, 1e-5, activation="relu",
                           residual=residual)  # fmt: skip
    assert result.output.shape == (0, 3, 4) and result.output.requires_grad
    (grad,) = torch.autograd.grad(result.output.sum(), [residual])
    assert grad.shape == (0, 3, 4)
    assert result.batch_mean is None and result.batch_var is None
    assert result.updated is True  # nothing to update them with
    running = torch.zeros(3), torch.ones(3)
    in_eval = bnf.normalize(x, None, None, *running, False, 1e-5, residual=residual)
    assert in_eval.output.shape == (0, 3, 4) and in_eval.updated is False


def test_normalize_eval_returns_no_statistics(one_thread):
    x, mean, var = torch.randn(5, 3), torch.randn(3), torch.rand(3) + 0.5
    result = bnf.normalize(x, None, None, mean, var, False, 1e-5, "native")
    want = F.batch_norm(*_f64(x, mean, var), training=False)
    torch.testing.assert_close(result.output.double(), want)
    assert result.batch_mean is None and result.batch_var is None
    assert result.updated is False


def test_normalize_in_kernel_update(one_thread):
    """native's in-kernel update: the running statistics moved by the EMA, no batch stats."""
    x = torch.randn(6, 3, 2, dtype=torch.float64) * 2 + 1
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    result = bnf.normalize(x, None, None, mean, var, True, 1e-5, "native", momentum=0.25)
    assert result.updated is True
    assert result.batch_mean is None and result.batch_var is None
    dims = (0, 2)
    torch.testing.assert_close(mean, 0.25 * x.mean(dims))
    torch.testing.assert_close(var, 0.75 + 0.25 * x.var(dims))
    torch.testing.assert_close(result.output, F.batch_norm(x, None, None, training=True))


# --- backends: registration, availability, and how "auto" sees the activation ---


@pytest.fixture
def own_registry(monkeypatch):
    """A private copy of the backend table and of auto's sightings."""
    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    monkeypatch.setattr(auto, "_seen", {})


def _recording(name: str, calls: list, **fields) -> Backend:
    def forward(input, *args, **kwargs):
        calls.append(name)
        return input.clone(), None, None

    return Backend(name, forward, **fields)


def test_register_reserves_auto(own_registry):
    with pytest.raises(ValueError, match="'auto' is reserved"):
        registry.register(Backend("auto", registry.get("reference").forward))


def test_registered_backend_is_used_by_name(own_registry, one_thread):
    calls = []
    paper = registry.get("reference").forward

    def forward(*args, **kwargs):
        calls.append("spy")
        return paper(*args, **kwargs)

    assert registry.register(Backend("spy", forward)).name == "spy"
    assert Backend("spy", forward).failures() == 0  # a new backend has never failed
    x, w, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(3), torch.randn(3)
    out = batch_norm(x, None, None, w.double(), b.double(), True, backend="spy")
    assert calls == ["spy"]
    torch.testing.assert_close(out, F.batch_norm(x, None, None, w.double(), b.double(), True))


def test_unavailable_backend_error(own_registry):
    registry.register(_recording("nowhere", [], is_available=lambda _input: False))
    with pytest.raises(RuntimeError, match=r"backend 'nowhere' cannot run on a cpu tensor of "
                                           r"dtype torch\.float32"):  # fmt: skip
        batch_norm(torch.randn(4, 3), None, None, training=True, backend="nowhere")


def test_auto_sees_the_activation(own_registry):
    """auto's documented rule for large NCHW float32 CPU training: "hybrid", or "compiled"
    with a fused activation; the activation must reach it from resolve_backend and normalize.
    (Recording stand-ins for the two generated backends: no compile, no kernel run.)"""
    calls = []
    for name in ("hybrid", "compiled"):
        registry.register(_recording(name, calls))
    x = torch.zeros(2, 4, 256, 256)  # auto.MIN_NUMEL elements
    assert x.numel() == auto.MIN_NUMEL
    for _ in range(auto.SIGHTINGS):
        chosen = bnf.resolve_backend("auto", x, True)  # the default activation: identity
    assert chosen.name == "hybrid"
    assert bnf.resolve_backend("auto", x, True, "identity").name == "hybrid"
    assert bnf.resolve_backend("auto", x, True, "relu").name == "compiled"
    for activation, wanted in [("identity", "hybrid"), ("relu", "compiled")]:
        calls.clear()
        bnf.normalize(x, None, None, None, None, True, 1e-5, activation=activation)
        assert calls == [wanted]


def test_fusing_backend_applies_activation_once(own_registry, one_thread):
    """A backend that fuses act(y + r) gets both, the caller adds nothing, and reports
    its batch statistics for the caller to update the running statistics with."""
    paper = registry.get("reference").forward

    def fused(input, weight, bias, rm, rv, training, eps, *, activation, residual):
        y, mean, var = paper(input, weight, bias, rm, rv, training, eps)
        return torch.sigmoid(y + residual) if activation == "sigmoid" else None, mean, var

    registry.register(Backend("fusing", fused, fuses_activation=True))
    x = torch.randn(6, 3, dtype=torch.float64)
    w, b, r = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64), x.flip(0)
    mean, var = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    result = bnf.normalize(x, w, b, mean, var, True, 1e-5, "fusing", activation="sigmoid",
                           residual=r, momentum=0.1)  # fmt: skip
    want = torch.sigmoid(F.batch_norm(x, None, None, w, b, True) + r)
    torch.testing.assert_close(result.output, want)
    torch.testing.assert_close(result.batch_mean, x.mean(0))
    torch.testing.assert_close(result.batch_var, x.var(0, correction=0))
    assert result.updated is False
    untouched = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close((mean, var), untouched)
