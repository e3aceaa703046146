"""Property tests that reach every code path, held to the float64 NumPy oracle.

The other property tests draw small inputs, where "native" and "auto" are
ATen's in-kernel update and a comparison with ``F.batch_norm`` is a
comparison with itself. Here the truth is :mod:`batchnorm.reference` (float64
NumPy, no torch) and the inputs straddle every threshold the code has:

* ``native``: in-kernel update up to ``FUSED_UPDATE_MAX_NUMEL`` (2**18) elements,
  the general path (:mod:`batchnorm.statistics`) above it;
* ``auto``: ATen below ``MIN_NUMEL`` (2**19), and at or above it ATen for the
  first ``SIGHTINGS - 1`` calls of a shape class, then ``hybrid`` (NCHW) or
  ``compiled`` (channels last, of rank 3, 4 and 5);
* layouts: contiguous, channels last (any rank), a transposed dense layout and
  a non-dense one (every other sample); magnitudes from 1e-6 to 1e6.

The generated kernels compile once per shape class, so their cases reuse a
few shapes and hypothesis varies only the values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, reference
from batchnorm.backends import auto, native
from batchnorm.functional import batch_norm

TOL = {torch.float64: 1e-9, torch.float32: 2e-4}  # outputs and gradients
STAT_TOL = {torch.float64: 1e-11, torch.float32: 1e-5}  # running statistics
MAGNITUDES = [1e-6, 1e-3, 1.0, 1e3, 1e6]  # standard deviation of the input
LOCATIONS = [0.0, 1.0, -30.0]  # mean, in standard deviations


def arrange(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    d = x.dim()
    if layout == "channels_last" and d >= 3:  # (N, *, C) in memory, e.g. (L*C, 1, C) strides
        return x.permute(0, *range(2, d), 1).contiguous().permute(0, d - 1, *range(1, d - 1))
    if layout == "transposed" and d >= 4:  # dense, neither contiguous nor channels last
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided":  # every other sample of a batch twice as large: not dense
        return torch.stack([x, torch.full_like(x, float("nan"))], 1)[:, 0]
    return x.contiguous()


def close(got: torch.Tensor, want: np.ndarray, tol: float, scale: float, what: str) -> None:
    """``|got - want| <= tol * (|want| + scale)`` elementwise."""
    got_np = got.detach().double().numpy()
    assert got_np.shape == want.shape, what
    bound = tol * (np.abs(want) + scale)
    worst = np.max(np.abs(got_np - want) - bound)
    assert worst <= 0, f"{what}: off by {np.max(np.abs(got_np - want)):.3g} (bound {tol:.1g})"


def grad_layouts(x: torch.Tensor) -> set[tuple[int, ...]]:
    """Strides dL/dx may have: the input's own layout (``torch.empty_like``) for the layouts
    torch has a memory format for (ATen keeps those), else that or the contiguous one (ATen
    returns a rank-3 channels-last or transposed input's gradient contiguous, and torch's
    layout propagation may, when a dimension of size 1 makes the format ambiguous)."""
    own = _strides(torch.empty_like(x))
    formats = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)
    known = [f for f in formats if f is torch.contiguous_format
             or x.dim() == (4 if f is torch.channels_last else 5)]  # fmt: skip
    if min(x.shape) > 1 and any(x.is_contiguous(memory_format=f) for f in known):
        return {own}
    return {own, _strides(torch.empty(x.shape))}


def _strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of the dimensions longer than 1 (the others' strides mean nothing)."""
    return tuple(step if n > 1 else 0 for n, step in zip(t.shape, t.stride(), strict=True))


class Oracle:
    """Running statistics, as the layers keep them, updated in float64 NumPy."""

    def __init__(self, mean: np.ndarray, var: np.ndarray, momentum: float):
        self.mean, self.var, self.momentum = mean.copy(), var.copy(), momentum

    def step(self, x: np.ndarray) -> None:
        m = x.size // x.shape[1]
        axes = (0, *range(2, x.ndim))
        mu, var = x.mean(axis=axes), x.var(axis=axes)
        self.mean = (1 - self.momentum) * self.mean + self.momentum * mu
        self.var = (1 - self.momentum) * self.var + self.momentum * var * m / (m - 1)


def check_training_calls(backend, x0, calls, *, affine=True, eps=1e-5, momentum=0.1, sd=1.0,
                         loc=0.0):  # fmt: skip
    """``calls`` training calls of ``batch_norm`` on one shape class (values vary per call):
    output, the three gradients and the running statistics after each call, then evaluation,
    against the oracle."""
    c, dtype = x0.shape[1], x0.dtype
    tol = TOL[dtype]
    gen = torch.Generator().manual_seed(int(x0.numel()))
    w = torch.rand(c, dtype=dtype, generator=gen) + 0.5 if affine else None
    b = torch.randn(c, dtype=dtype, generator=gen) if affine else None
    rm = torch.linspace(-1, 1, c, dtype=dtype) * (abs(loc) + 1) * sd
    rv = torch.linspace(0.5, 2, c, dtype=dtype) * sd**2
    oracle = Oracle(rm.double().numpy(), rv.double().numpy(), momentum)
    gamma = w.double().numpy() if affine else np.ones(c)
    beta = b.double().numpy() if affine else np.zeros(c)
    for call in range(calls):
        x = (x0 * (1 + 0.25 * call)).detach().requires_grad_(True)
        params = [x] + ([w.requires_grad_(True), b.requires_grad_(True)] if affine else [])
        y = batch_norm(x, rm, rv, w, b, True, momentum, eps, backend=backend)
        assert y.shape == x.shape and y.dtype == dtype
        dy = torch.cos(torch.arange(y.numel(), dtype=torch.float64)).reshape(y.shape)
        # dL/dy in y's layout, as the next layer's backward hands it back
        grads = torch.autograd.grad(y, params, torch.empty_like(y).copy_(dy))
        xn = x.detach().double().numpy()
        want, cache = reference.forward(xn, gamma, beta, eps)
        want_grads = reference.backward(dy.numpy(), cache)
        what = f"{backend} call {call + 1} of {tuple(x.shape)} {x.stride()} {dtype}"
        close(y, want, tol, 1.0, f"{what}: output")
        # Gradient scales: dx ~ gamma * invstd * dy; dgamma, dbeta ~ sqrt(m) * dy.
        dx_scale = float(np.max(np.abs(gamma) / np.sqrt(cache.var + eps)))
        sum_scale = float(np.sqrt(xn.size // c))
        for name, got, expected, scale in zip(("dx", "dgamma", "dbeta"), grads, want_grads,
                                              (dx_scale, sum_scale, sum_scale),
                                              strict=False):  # fmt: skip
            close(got, expected, tol, scale, f"{what}: {name}")
        assert _strides(grads[0]) in grad_layouts(x), what
        oracle.step(xn)
        # Tight enough to see a variance left biased (a factor (m-1)/m) at m ~ 1000-30000
        # (ATen's float32 channels-last statistics are good to ~5e-6 at m = 66048);
        # "native" recovers var from float32 1/sqrt(var + eps): a few ulps of var + eps.
        stat_tol = STAT_TOL[dtype]
        close(rm, oracle.mean, stat_tol, sd, f"{what}: running_mean")
        close(rv, oracle.var, stat_tol, eps, f"{what}: running_var")
    with torch.no_grad():
        y = batch_norm(x0, rm, rv, w, b, False, momentum, eps, backend=backend)
    want = reference.inference(x0.double().numpy(), gamma, beta, rm.double().numpy(),
                               rv.double().numpy(), eps)  # fmt: skip
    close(y, want, tol, 1.0, f"{backend} eval of {tuple(x0.shape)} {x0.stride()}")


@st.composite
def small_inputs(draw, layouts=("contiguous", "channels_last", "transposed", "strided")):
    rank = draw(st.integers(2, 5))
    shape = (draw(st.integers(2, 9)), draw(st.integers(1, 6)),
             *(draw(st.integers(1, 6)) for _ in range(rank - 2)))  # fmt: skip
    layout = draw(st.sampled_from(layouts))
    sd = draw(st.sampled_from(MAGNITUDES))
    loc = draw(st.sampled_from(LOCATIONS))
    seed = draw(st.integers(0, 2**16))
    return shape, layout, sd, loc, seed


def _values(shape, layout, sd, loc, seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=gen) * sd + loc * sd
    return arrange(x.to(dtype), layout)


@pytest.mark.parametrize("backend", ["reference", "native", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=25)
@given(case=small_inputs(), affine=st.booleans(), eps=st.sampled_from([1e-5, 1e-3]),
       momentum=st.sampled_from([0.1, 0.7]))  # fmt: skip
def test_small_inputs_match_oracle(backend, dtype, case, affine, eps, momentum):
    shape, layout, sd, loc, seed = case
    x = _values(shape, layout, sd, loc, seed, dtype)
    check_training_calls(backend, x, 2, affine=affine, eps=eps, momentum=momentum, sd=sd,
                         loc=loc)  # fmt: skip


# Just at and just above native's in-kernel-update limit, and below auto's MIN_NUMEL
# (so float64 here: auto's rules list float32 only, and these shapes stay on ATen).
LIMIT = native.FUSED_UPDATE_MAX_NUMEL
AROUND_NATIVE_LIMIT = [(4, 4, 128, 128), (4, 4, 128, 129), (1025, 256), (4, 8, 8193)]


@pytest.mark.parametrize("shape", AROUND_NATIVE_LIMIT)
@pytest.mark.parametrize("backend", ["native", "auto"])
@settings(max_examples=3)
@given(layout=st.sampled_from(["contiguous", "channels_last", "strided"]),
       sd=st.sampled_from(MAGNITUDES), momentum=st.sampled_from([0.1, 0.7]))  # fmt: skip
def test_both_sides_of_native_update_limit(shape, backend, layout, sd, momentum):
    numel = int(np.prod(shape))
    assert numel <= LIMIT or numel > LIMIT  # documents the two sides
    assert numel < auto.MIN_NUMEL
    for dtype in (torch.float32, torch.float64):
        x = _values(shape, layout, sd, 1.0, 7, dtype)
        check_training_calls(backend, x, 2, momentum=momentum, sd=sd, loc=1.0)


def test_the_limit_cases_are_on_both_sides():
    sizes = [int(np.prod(s)) for s in AROUND_NATIVE_LIMIT]
    assert min(sizes) <= LIMIT < max(sizes)


# --- the generated kernels: a few shape classes, values varied by hypothesis -----------

# Rank-3 channels last has strides (L*C, 1, C); rank 5 is torch.channels_last_3d.
GENERATED_CLASSES = [
    ((4, 3, 5), "channels_last"),
    ((3, 4, 5, 6), "channels_last"),
    ((2, 3, 4, 5, 3), "channels_last"),
    ((3, 4, 5, 6), "transposed"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "layout"), GENERATED_CLASSES)
@pytest.mark.parametrize("backend", ["compiled", "hybrid"])
@settings(max_examples=4)
@given(sd=st.sampled_from(MAGNITUDES), loc=st.sampled_from(LOCATIONS), affine=st.booleans(),
       seed=st.integers(0, 2**16))  # fmt: skip
def test_generated_kernels_match_oracle(shape, layout, backend, sd, loc, affine, seed):
    x = _values(shape, layout, sd, loc, seed, torch.float32)
    check_training_calls(backend, x, 2, affine=affine, sd=sd, loc=loc)
    # Output in the input's layout (what torch.empty_like gives), in training and evaluation
    # (ATen, too, returns a transposed input's output contiguous).
    with torch.no_grad():
        outputs = [batch_norm(x, torch.zeros(shape[1]), torch.ones(shape[1]), training=training,
                              backend=backend) for training in (True, False)]  # fmt: skip
    for y in outputs:
        assert _strides(y) in grad_layouts(x)
        if layout == "channels_last":
            assert _strides(y) == _strides(torch.empty_like(x))


def test_channels_last_helper_matches_torch_memory_formats():
    x = torch.randn(2, 3, 4, 5)
    assert arrange(x, "channels_last").stride() == x.to(
        memory_format=torch.channels_last).stride()  # fmt: skip
    x5 = torch.randn(2, 3, 4, 5, 6)
    assert arrange(x5, "channels_last").stride() == x5.to(
        memory_format=torch.channels_last_3d).stride()  # fmt: skip
    assert arrange(torch.randn(4, 3, 5), "channels_last").stride() == (15, 1, 3)


# --- auto at and above MIN_NUMEL: ATen, then after SIGHTINGS calls a generated kernel ----


@pytest.fixture
def choices(monkeypatch):
    """Every backend name ``auto`` chooses, in order (and a fresh sightings table)."""
    auto.reset()
    seen: list[str] = []
    choose = auto.choose

    def spy(*args, **kwargs):
        seen.append(choose(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(auto, "choose", spy)
    yield seen
    auto.reset()


BIG_CASES = [
    ((2, 4, 256, 256), "contiguous", "hybrid"),
    ((16, 8, 4096), "channels_last", "compiled"),  # rank 3: strides (L*C, 1, C)
    ((4, 8, 16, 32, 32), "channels_last", "compiled"),  # rank 5: channels_last_3d
]


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "layout", "generated"), BIG_CASES)
def test_auto_switches_to_generated_kernels_correctly(choices, shape, layout, generated):
    assert int(np.prod(shape)) >= auto.MIN_NUMEL
    x = _values(shape, layout, 3.0, 1.0, 11, torch.float32)
    check_training_calls("auto", x, auto.SIGHTINGS + 1, sd=3.0, loc=1.0)
    training_choices = choices[: auto.SIGHTINGS + 1]
    assert training_choices == ["native"] * (auto.SIGHTINGS - 1) + [generated] * 2
    # One element fewer than MIN_NUMEL stays on ATen however often it is seen.
    choices.clear()
    small = torch.randn(auto.MIN_NUMEL - 1, 1)
    for _ in range(auto.SIGHTINGS + 1):
        batch_norm(small, None, None, training=True, backend="auto")
    assert set(choices) == {"native"}


# --- auto inside a training loop, against the same model in float64 torch --------------


def _model(rank: int, ours: bool, dtype: torch.dtype) -> nn.Sequential:
    """conv -> BN (>= MIN_NUMEL values: auto's generated kernel) -> relu -> conv -> BN
    (> 2**18 values: native's general update, through the estimator)."""
    conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[rank]
    bn = ({3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d} if ours else
          {3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d})[rank]  # fmt: skip
    return nn.Sequential(
        conv(3, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(),
        conv(8, 5, 1, bias=False), bn(5),
    ).to(dtype)  # fmt: skip


def _prefixed(prefix: str):
    return lambda message: f"{prefix}: {message}"


LOOP_INPUTS = [
    (4, (8, 3, 64, 130), None, "hybrid"),
    (4, (8, 3, 64, 130), torch.channels_last, "compiled"),
    (3, (8, 3, 8320), None, "hybrid"),  # Conv1d output is contiguous
    (5, (4, 3, 8, 32, 65), torch.channels_last_3d, "compiled"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("rank", "shape", "memory_format", "generated"), LOOP_INPUTS)
def test_auto_in_a_training_loop_matches_torch_float64(choices, rank, shape, memory_format,
                                                       generated):  # fmt: skip
    torch.manual_seed(3)
    ours = _model(rank, True, torch.float32)
    theirs = _model(rank, False, torch.float64)
    theirs.load_state_dict({k: v.double() if v.is_floating_point() else v
                            for k, v in ours.state_dict().items()})  # fmt: skip
    if memory_format is not None:
        ours.to(memory_format=memory_format)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.05)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.05)
    steps = auto.SIGHTINGS + 1
    for step in range(steps):
        x = torch.randn(shape) * 2 + 0.5
        if memory_format == "channels_last":
            x = arrange(x, "channels_last")
        elif memory_format is not None:
            x = x.contiguous(memory_format=memory_format)
        target = torch.randn(shape[0], 5, *shape[2:])
        losses = []
        for model, opt, dt in ((ours, opt_ours, torch.float32), (theirs, opt_theirs,
                                                                  torch.float64)):  # fmt: skip
            opt.zero_grad()
            out = model(x.to(dt))
            loss = ((out - target.to(dt)) ** 2).mean()
            loss.backward()
            losses.append((out.detach(), loss.detach()))
        torch.testing.assert_close(losses[0][0].double(), losses[1][0], rtol=1e-4, atol=1e-4)
        for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            # ATen's float32 channels-last backward (the second BN's) is good to ~4e-4.
            scale = max(1e-3, float(q.grad.abs().max()))
            torch.testing.assert_close(p.grad.double() / scale, q.grad / scale, rtol=3e-3,
                                       atol=3e-3, msg=_prefixed(f"step {step}: grad of {name}"))
        opt_ours.step()
        opt_theirs.step()
        mine = ours.state_dict()
        for name, c in theirs.state_dict().items():
            torch.testing.assert_close(mine[name].double(), c.double(), rtol=1e-4, atol=1e-5,
                                       msg=_prefixed(f"step {step}: {name}"))
    assert generated in choices  # the loop did reach the generated kernel
    assert choices.count("native") >= auto.SIGHTINGS - 1
    ours.eval()
    theirs.eval()
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(ours(x).double(), theirs(x.double()), rtol=1e-4, atol=1e-4)
