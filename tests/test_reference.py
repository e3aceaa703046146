"""The NumPy oracle itself, against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from batchnorm import reference
from batchnorm.backends.reference import PaperBatchNorm, affine_with_statistics


def test_forward_normalizes_each_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(16, 3, 4, 4))
    y, cache = reference.forward(x, np.ones(3), np.zeros(3), eps=0.0)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-12)
    assert cache.mu.shape == (3,)


def test_identity_is_representable():
    """gamma = sqrt(Var[x]), beta = E[x] recovers the input (section 2)."""
    rng = np.random.default_rng(1)
    x = rng.normal(-1.0, 4.0, size=(32, 5))
    gamma, beta = np.sqrt(x.var(axis=0)), x.mean(axis=0)
    y, _ = reference.forward(x, gamma, beta, eps=0.0)
    np.testing.assert_allclose(y, x, rtol=1e-12, atol=1e-12)


def test_backward_matches_torch_autograd():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 2, 3))
    gamma, beta, dy = rng.normal(size=2), rng.normal(size=2), rng.normal(size=(6, 2, 3))
    _, cache = reference.forward(x, gamma, beta, 1e-5)
    dx, dgamma, dbeta = reference.backward(dy, cache)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, True, 0.0, 1e-5)
    want = torch.autograd.grad(yt, [xt, gt, bt], torch.tensor(dy))
    for got, expected in zip((dx, dgamma, dbeta), want, strict=True):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-9, atol=1e-12)


def test_inference_and_fold_agree():
    rng = np.random.default_rng(3)
    weight, bias = rng.normal(size=(4, 3)), rng.normal(size=4)
    gamma, beta = rng.normal(size=4), rng.normal(size=4)
    mean, var = rng.normal(size=4), rng.uniform(0.5, 2.0, size=4)
    u = rng.normal(size=(10, 3))
    unfolded = reference.inference(u @ weight.T + bias, gamma, beta, mean, var, 1e-5)
    folded_weight, folded_bias = reference.fold_linear(weight, bias, gamma, beta, mean, var, 1e-5)
    np.testing.assert_allclose(u @ folded_weight.T + folded_bias, unfolded, rtol=1e-12)


def test_population_statistics_weights_by_batch_size():
    a = np.zeros((2, 1)) + np.array([[0.0], [2.0]])  # mean 1, var 1
    b = np.zeros((6, 1)) + 5.0  # mean 5, var 0
    mean, var = reference.population_statistics([a, b])
    np.testing.assert_allclose(mean, [(2 * 1 + 6 * 5) / 8])
    np.testing.assert_allclose(var, [(2 * 1 + 6 * 0) / (1 + 5)])


# --- float64 throughout: low-precision arguments are computed in float64 -----------------

AXES = (0, 2)  # statistics axes of the (N, C, L) inputs below


def _float32(*shape, seed, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype(np.float32)


def test_forward_of_float32_input_is_algorithm1_in_float64():
    x, gamma, beta = _float32(5, 2, 3, seed=4, loc=3.0), _float32(2, seed=5), _float32(2, seed=6)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=AXES, keepdims=True)
    var = ((x64 - mu) ** 2).mean(axis=AXES, keepdims=True)
    xhat = (x64 - mu) / np.sqrt(var + 1e-3)
    want = gamma.astype(np.float64)[:, None] * xhat + beta.astype(np.float64)[:, None]
    y, cache = reference.forward(x, gamma, beta, 1e-3)
    np.testing.assert_allclose(y, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(cache.xhat, xhat, rtol=1e-13, atol=1e-13)
    arrays = (y, cache.x, cache.mu, cache.var, cache.xhat, cache.gamma)
    assert all(a.dtype == np.float64 for a in arrays)


def test_backward_of_float32_upstream_gradient_is_float64_accurate():
    x, dy = _float32(5, 2, 3, seed=0), _float32(5, 2, 3, seed=1)
    gamma, beta = _float32(2, seed=2), _float32(2, seed=3)
    _, cache = reference.forward(x, gamma, beta, 1e-5)
    got = reference.backward(dy, cache)
    xt, gt, bt = (torch.tensor(a, dtype=torch.float64).requires_grad_() for a in (x, gamma, beta))
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, True, 0.0, 1e-5)
    want = torch.autograd.grad(yt, [xt, gt, bt], torch.tensor(dy, dtype=torch.float64))
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-12, atol=1e-12)


def test_population_statistics_algorithm2_over_unequal_float32_batches():
    """E[x] = sum m_B mu_B / sum m_B, Var[x] = sum m_B var_B / sum (m_B - 1), by hand."""
    batches = [_float32(n, 3, 2, seed=n, loc=1.0) for n in (2, 3, 5)]
    values = [b.astype(np.float64).transpose(1, 0, 2).reshape(3, -1) for b in batches]
    sizes = [v.shape[1] for v in values]  # m_B = N * L per channel: 4, 6, 10
    mean = sum(v.sum(axis=1) for v in values) / sum(sizes)
    squares = sum(((v - v.mean(axis=1, keepdims=True)) ** 2).sum(axis=1) for v in values)
    var = squares / sum(m - 1 for m in sizes)
    got_mean, got_var = reference.population_statistics(iter(batches))
    np.testing.assert_allclose(got_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(got_var, var, rtol=1e-13)


def test_population_statistics_of_no_batches_says_so():
    with pytest.raises(ValueError, match="at least one batch"):
        reference.population_statistics([])


def test_inference_and_fold_with_float32_statistics_are_float64_accurate():
    """Algorithm 2 step 4 and W' = gamma W / sqrt(Var + eps), b' = gamma (b - E) / ... + beta."""
    gamma, beta, mean = _float32(3, seed=7), _float32(3, seed=8), _float32(3, seed=9)
    var = np.abs(_float32(3, seed=10)) + np.float32(0.1)
    x = _float32(4, 3, 2, seed=11)
    g, be, mu, v = (a.astype(np.float64)[:, None] for a in (gamma, beta, mean, var))
    want = g * (x.astype(np.float64) - mu) / np.sqrt(v + 1e-3) + be
    got = reference.inference(x, gamma, beta, mean, var, 1e-3)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    weight, bias = _float32(3, 2, seed=12), _float32(3, seed=13)
    folded_weight, folded_bias = reference.fold_linear(weight, bias, gamma, beta, mean, var, 1e-3)
    scale = g / np.sqrt(v + 1e-3)
    np.testing.assert_allclose(folded_weight, scale * weight, rtol=1e-13)
    np.testing.assert_allclose(folded_bias, (scale * (bias[:, None] - mu) + be)[:, 0], rtol=1e-13)


@pytest.mark.parametrize("weight_shape", [(4, 3), (4, 2, 3, 3)], ids=["linear", "conv2d"])
def test_fold_without_bias_folds_a_zero_bias(weight_shape):
    """No bias (a Linear/Conv with bias=False, out != in channels): b' = beta - gamma E / s."""
    rng = np.random.default_rng(14)
    weight = rng.normal(size=weight_shape)
    gamma, beta, mean = rng.normal(size=4), rng.normal(size=4), rng.normal(size=4)
    var = rng.uniform(0.5, 2.0, size=4)
    folded_weight, folded_bias = reference.fold_linear(weight, None, gamma, beta, mean, var, 0.1)
    scale = gamma / np.sqrt(var + 0.1)
    for o in range(4):
        np.testing.assert_allclose(folded_weight[o], scale[o] * weight[o], rtol=1e-13)
    np.testing.assert_allclose(folded_bias, beta - scale * mean, rtol=1e-13, atol=1e-15)


# --- the "reference" backend's autograd Function -------------------------------------------


def _torch_grads(x, weight, bias, dy, eps, **kwargs):
    """torch's own batch norm and autograd in float64: the independent truth."""
    leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias) if t is not None]
    xs, rest = leaves[0], iter(leaves[1:])
    ws = next(rest) if weight is not None else None
    bs = next(rest) if bias is not None else None
    y = F.batch_norm(xs, None, None, ws, bs, True, 0.0, eps)
    return torch.autograd.grad(y, leaves, dy.double(), **kwargs), leaves


def test_paper_mean_and_var_outputs_are_not_differentiable():
    """backward ignores gradients of the returned statistics, so they must not carry any."""
    x = torch.randn(4, 3, requires_grad=True)
    _, mean, var = PaperBatchNorm.apply(x, None, None, 1e-5)
    assert not mean.requires_grad
    assert not var.requires_grad


@pytest.mark.parametrize("bias", [None, torch.zeros(3)], ids=["no-bias", "frozen-bias"])
def test_paper_weight_gradient_when_bias_needs_none(bias):
    x = torch.randn(5, 3, 2, dtype=torch.float64)
    weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(5, 3, 2, dtype=torch.float64)
    y, _, _ = PaperBatchNorm.apply(x, weight, None if bias is None else bias.double(), 1e-5)
    (got,) = torch.autograd.grad(y, [weight], dy)
    (_, want, *_), _ = _torch_grads(x, weight, bias, dy, 1e-5)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_paper_gradient_with_create_graph(dtype):
    """create_graph=True recomputes mean and invstd inside the graph: the same first
    derivatives (eps large and a far-from-zero mean, so both matter), and the second."""
    x = (torch.randn(6, 3, 2, dtype=torch.float64) + 100.0).to(dtype).requires_grad_()
    weight = torch.randn(3, dtype=torch.float64).to(dtype).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64).to(dtype).requires_grad_()
    dy = torch.randn(6, 3, 2, dtype=torch.float64).to(dtype)
    y, _, _ = PaperBatchNorm.apply(x, weight, bias, 0.5)
    got = torch.autograd.grad(y, [x, weight, bias], dy, create_graph=True)
    want, leaves = _torch_grads(x, weight, bias, dy, 0.5, create_graph=True)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    assert got[0].requires_grad and got[1].requires_grad  # dL/dbeta = sum(dy) is constant
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w.detach(), **tol)
    if dtype == torch.float64:
        v = torch.randn(6, 3, 2, dtype=torch.float64)
        second = torch.autograd.grad((got[0] * v).sum(), [x, weight])
        second_want = torch.autograd.grad((want[0] * v).sum(), leaves[:2])
        for g, w in zip(second, second_want, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


def test_paper_half_input_gradient_is_computed_in_float32():
    """dy = 8 + small: the constant part cancels in dL/dx, so rounding dL/dxhat = dy * gamma
    to float16 would swamp the result; in float32 only the final rounding remains."""
    h = torch.float16
    x = torch.randn(16, 3, dtype=torch.float64).to(h).requires_grad_()
    weight = torch.tensor([1.1, -0.9, 1.3], dtype=h, requires_grad=True)
    bias = torch.zeros(3, dtype=h, requires_grad=True)
    dy = (8.0 + 0.25 * torch.rand(16, 3, dtype=torch.float64)).to(h)
    y, _, _ = PaperBatchNorm.apply(x, weight, bias, 1e-5)
    (dx,) = torch.autograd.grad(y, [x], dy)
    (want, *_), _ = _torch_grads(x, weight, bias, dy, 1e-5)
    assert dx.dtype == h
    torch.testing.assert_close(dx.double(), want, rtol=2.0**-10, atol=1e-4)


def test_paper_float32_parameters_of_half_input_get_float32_accurate_gradients():
    h = torch.float16
    x = torch.randn(16, 3, dtype=torch.float64).to(h).requires_grad_()
    weight = torch.randn(3, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    dy = torch.randn(16, 3, dtype=torch.float64).to(h)
    y, _, _ = PaperBatchNorm.apply(x, weight, bias, 1e-5)
    dx, dweight, dbias = torch.autograd.grad(y, [x, weight, bias], dy)
    (want_dx, want_dweight, want_dbias), _ = _torch_grads(x, weight, bias, dy, 1e-5)
    assert (dx.dtype, dweight.dtype, dbias.dtype) == (h, torch.float32, torch.float32)
    torch.testing.assert_close(dweight.double(), want_dweight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dbias.double(), want_dbias, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), want_dx, rtol=2.0**-10, atol=1e-3)


def test_affine_with_half_statistics_rounds_once():
    """Eval on float16 input and float16 statistics: the affine map of Algorithm 2 step 4 in
    float32, rounded once to float16 -- within half an ulp of the exact value (+1e-5)."""
    h = torch.float16
    x = torch.linspace(-8, 8, 97, dtype=torch.float64).reshape(-1, 1).repeat(1, 3).to(h)
    mean = torch.tensor([0.5, -1.0, 0.25], dtype=h)
    var = torch.tensor([3e-5, 2.9, 700.0], dtype=h)
    weight = torch.tensor([1.5, -0.75, 2.0], dtype=h)
    bias = torch.tensor([0.25, 0.5, -1.0], dtype=h)
    exact = (x.double() - mean.double()) / torch.sqrt(var.double() + 1e-5) * weight.double()
    exact = exact + bias.double()
    got = affine_with_statistics(x, weight, bias, mean, var, 1e-5)
    assert got.dtype == h
    rounded = exact.to(h).abs()
    half_ulp = 0.5 * (torch.nextafter(rounded, torch.tensor(float("inf"), dtype=h)) - rounded)
    assert ((got.double() - exact).abs() <= half_ulp.double() + 1e-5).all()
