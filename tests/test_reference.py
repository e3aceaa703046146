"""The NumPy oracle itself, against independent computations."""

import numpy as np
import torch

from batchnorm import reference


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
