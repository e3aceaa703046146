"""Batch Renorm: the formula against a float64 reference, its BN limit, schedule, compile."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchRenorm1d,
    BatchRenorm2d,
    BatchRenorm3d,
)
from batchnorm.renorm import renorm_limits

pytestmark = pytest.mark.usefixtures("one_thread")

RENORMS = {2: BatchRenorm1d, 3: BatchRenorm1d, 4: BatchRenorm2d, 5: BatchRenorm3d}
BNS = {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}


def _reference(x, gamma, beta, mu, var, eps, rmax, dmax):
    """Float64 NumPy from the formula (Ioffe 2017, Algorithm 1)."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mu_b = x.mean(axis=axes)
    sigma_b = np.sqrt(((x - mu_b.reshape(shape)) ** 2).mean(axis=axes) + eps)
    sigma = np.sqrt(var + eps)
    r = np.clip(sigma_b / sigma, 1 / rmax, rmax)
    d = np.clip((mu_b - mu) / sigma, -dmax, dmax)
    xhat = (x - mu_b.reshape(shape)) / sigma_b.reshape(shape)
    return gamma.reshape(shape) * (xhat * r.reshape(shape) + d.reshape(shape)) + beta.reshape(shape)


def _torch_reference(x, gamma, beta, mu, var, eps, rmax, dmax):
    """The same in torch, differentiable, with r and d detached (for gradients)."""
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    var_b, mu_b = torch.var_mean(x, dim=dims, correction=0)
    sigma_b = torch.sqrt(var_b + eps)
    sigma = torch.sqrt(var + eps)
    r = (sigma_b / sigma).clamp(1 / rmax, rmax).detach()
    d = ((mu_b - mu) / sigma).clamp(-dmax, dmax).detach()
    xhat = (x - mu_b.view(shape)) / sigma_b.view(shape)
    return gamma.view(shape) * (xhat * r.view(shape) + d.view(shape)) + beta.view(shape)


def _layer(rank, channels, *, rmax=3.0, dmax=5.0, step=10**6, **kwargs):
    """A float64 renorm layer past its ramp, with non-trivial affine and running statistics."""
    layer = RENORMS[rank](channels, rmax=rmax, dmax=dmax, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        if layer.affine:
            layer.weight.uniform_(0.5, 2.0)
            layer.bias.uniform_(-1.0, 1.0)
        layer.running_mean.uniform_(-1.0, 1.0)
        layer.running_var.uniform_(0.3, 3.0)
        layer.num_batches_tracked.fill_(step)
    return layer


def _state(layer):
    return [t.detach().clone().numpy() for t in (layer.weight, layer.bias, layer.running_mean,
                                                  layer.running_var)]  # fmt: skip


@given(
    rank=st.sampled_from([2, 3, 4, 5]),
    n=st.integers(2, 9),
    channels=st.integers(1, 4),
    scale=st.sampled_from([0.1, 1.0, 10.0]),
    shift=st.sampled_from([-5.0, 0.0, 3.0]),
    limits=st.sampled_from([(3.0, 5.0), (1.5, 0.5), (1.0, 0.0), (100.0, 100.0)]),
    backend=st.sampled_from(["reference", "native"]),
)
def test_training_output_matches_the_formula(rank, n, channels, scale, shift, limits, backend):
    spatial = (3, 2, 2)[: rank - 2]
    x = torch.randn(n, channels, *spatial, dtype=torch.float64) * scale + shift
    layer = _layer(rank, channels, rmax=limits[0], dmax=limits[1], backend=backend)
    expected = _reference(x.numpy(), *_state(layer), layer.eps, *limits)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize(("rmax", "dmax"), [(3.0, 5.0), (1.2, 0.1)])
def test_gradients_treat_r_and_d_as_constants(backend, rmax, dmax):
    x = (torch.randn(6, 3, 4, 4, dtype=torch.float64) * 2 + 1).requires_grad_()
    layer = _layer(4, 3, rmax=rmax, dmax=dmax, backend=backend)
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    expected = _torch_reference(x2, gamma, beta, layer.running_mean.clone(),
                                layer.running_var.clone(), layer.eps, rmax, dmax)  # fmt: skip
    grad = torch.randn_like(x)
    layer(x).backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, gamma.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, beta.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck_where_r_and_d_are_clipped():
    """With both corrections clipped, r and d are locally constant: the full function's
    numerical Jacobian must then equal the analytical one."""
    x = (torch.randn(5, 2, 3, dtype=torch.float64) * 4 + 10).requires_grad_()
    layer = _layer(3, 2, rmax=1.5, dmax=0.5, backend="reference", momentum=0.0)
    layer.running_mean.fill_(-10.0)  # d far beyond dmax
    layer.running_var.fill_(0.01)  # sigma_B / sigma far beyond rmax
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()

    def call(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(call, (x, weight, bias))


@pytest.mark.parametrize("rank", [2, 3, 4, 5])
@pytest.mark.parametrize("backend", ["reference", "native"])
def test_rmax_1_dmax_0_is_bn_exactly(rank, backend):
    spatial = (3, 2, 2)[: rank - 2]
    renorm = RENORMS[rank](3, rmax=1.0, dmax=0.0, warmup_steps=0, ramp_steps=0,
                           backend=backend)  # fmt: skip
    bn = BNS[rank](3, backend=backend)
    with torch.no_grad():
        for layer in (renorm, bn):
            layer.weight.copy_(torch.tensor([0.5, 1.5, -2.0]))
            layer.bias.copy_(torch.tensor([0.1, -0.3, 2.0]))
    for step in range(3):
        x = (torch.randn(4, 3, *spatial) * (step + 1) + step).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y, y2 = renorm(x), bn(x2)
        torch.testing.assert_close(y, y2, rtol=0, atol=0)
        grad = torch.randn_like(y)
        y.backward(grad)
        y2.backward(grad)
        torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)
        torch.testing.assert_close(renorm.weight.grad, bn.weight.grad, rtol=0, atol=0)
        torch.testing.assert_close(renorm.bias.grad, bn.bias.grad, rtol=0, atol=0)
        torch.testing.assert_close(renorm.running_var, bn.running_var, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(renorm.running_mean, bn.running_mean, rtol=1e-6, atol=1e-7)


def test_warmup_is_plain_bn_then_the_correction_starts():
    x = torch.randn(4, 3, 5, 5) * 3 + 2
    renorm = BatchRenorm2d(3, warmup_steps=2, ramp_steps=4)
    bn = BatchNorm2d(3)
    for _ in range(2):
        torch.testing.assert_close(renorm(x), bn(x), rtol=0, atol=0)
    # Step 2: limits still 1 and 0 (the ramp starts here).
    torch.testing.assert_close(renorm(x), bn(x), rtol=0, atol=0)
    # Step 3: running statistics lag the batch (mean 2, var 9): the correction acts.
    assert not torch.allclose(renorm(x), bn(x), atol=1e-3)


def test_schedule():
    steps = torch.tensor([0, 99, 100, 150, 200, 300, 10**9])
    rmax_t, dmax_t = renorm_limits(steps, 3.0, 5.0, warmup_steps=100, ramp_steps=100)
    torch.testing.assert_close(rmax_t, torch.tensor([1.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0]))
    torch.testing.assert_close(dmax_t, torch.tensor([0.0, 0.0, 0.0, 2.5, 5.0, 5.0, 5.0]))
    rmax_t, dmax_t = renorm_limits(steps, 3.0, 5.0, warmup_steps=100, ramp_steps=0)
    torch.testing.assert_close(rmax_t, torch.tensor([1.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0]))
    layer = BatchRenorm1d(2)
    assert (layer.rmax, layer.dmax, layer.warmup_steps, layer.ramp_steps) == (3.0, 5.0, 500, 3000)
    layer.num_batches_tracked.fill_(2000)
    torch.testing.assert_close(layer.limits(), (torch.tensor(2.0), torch.tensor(2.5)))


def test_without_clipping_training_uses_the_running_statistics():
    """r and d unclipped: (x - mu_B) / sigma_B * r + d = (x - mu) / sigma, the eval transform."""
    layer = _layer(4, 3, rmax=1e6, dmax=1e6)
    x = torch.randn(8, 3, 4, 4, dtype=torch.float64) * 2 + 1
    expected = layer.eval()(x)  # before the training step changes the running statistics
    torch.testing.assert_close(layer.train()(x), expected, rtol=1e-10, atol=1e-10)


def test_running_statistics_follow_torchs_ema():
    x = torch.randn(6, 3, 4, 4) * 2 + 1
    renorm, bn = BatchRenorm2d(3, momentum=0.3, warmup_steps=0), nn.BatchNorm2d(3, momentum=0.3)
    for _ in range(3):
        renorm(x)
        bn(x)
    torch.testing.assert_close(renorm.running_mean, bn.running_mean)
    torch.testing.assert_close(renorm.running_var, bn.running_var)  # unbiased, as torch
    assert int(renorm.num_batches_tracked) == 3


def test_eval_equals_bn_and_loads_torch_state_dicts():
    torch_bn = nn.BatchNorm2d(3)
    for _ in range(3):
        torch_bn(torch.randn(16, 3, 4, 4) * 2 + 1)
    renorm = BatchRenorm2d(3)
    renorm.load_state_dict(torch_bn.state_dict())
    assert list(renorm.state_dict()) == list(torch_bn.state_dict())
    x = torch.randn(16, 3, 4, 4)
    torch.testing.assert_close(renorm.eval()(x), torch_bn.eval()(x))
    assert isinstance(renorm, nn.BatchNorm2d)


def test_no_affine():
    layer = _layer(2, 3, rmax=1.5, dmax=0.5, affine=False)
    x = torch.randn(8, 3, dtype=torch.float64) * 3
    state = [np.ones(3), np.zeros(3), layer.running_mean.numpy().copy(),
             layer.running_var.numpy().copy()]  # fmt: skip
    expected = _reference(x.numpy(), *state, layer.eps, 1.5, 0.5)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-10)


def test_non_finite_batch_keeps_the_running_statistics():
    layer = BatchRenorm1d(2, warmup_steps=0)
    x = torch.randn(8, 2)
    x[3, 1] = float("inf")
    layer(x)
    assert torch.equal(layer.running_mean, torch.zeros(2))
    assert int(layer.skipped_updates) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [({"rmax": 0.5}, ValueError, "rmax"), ({"dmax": -1.0}, ValueError, "dmax"),
     ({"warmup_steps": -1}, ValueError, "warmup_steps"),
     ({"ramp_steps": 1.5}, TypeError, "ramp_steps"),
     ({"track_running_stats": False}, ValueError, "track_running_stats")],
)  # fmt: skip
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        BatchRenorm2d(3, **kwargs)


def test_repr():
    text = repr(BatchRenorm3d(4, rmax=2.0, dmax=1.0, warmup_steps=10, ramp_steps=20))
    assert "rmax=2.0, dmax=1.0, warmup_steps=10, ramp_steps=20" in text


def test_half_precision_input():
    layer = _layer(4, 3, rmax=1.5, dmax=0.5)
    layer.float()
    x = (torch.randn(4, 3, 4, 4) * 2 + 1).to(torch.bfloat16)
    expected = _reference(x.double().numpy(), *[s.astype(np.float64) for s in _state(layer)],
                          layer.eps, 1.5, 0.5)  # fmt: skip
    y = layer(x)
    assert y.dtype == torch.bfloat16
    np.testing.assert_allclose(y.detach().double().numpy(), expected, atol=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["compiled", "hybrid"])
def test_generated_backends(backend):
    x = torch.randn(10, 3, 4, 4)
    layer = BatchRenorm2d(3, backend=backend, warmup_steps=0, ramp_steps=0)
    layer.running_mean.fill_(0.5)
    expected = _reference(x.double().numpy(), np.ones(3), np.zeros(3), np.full(3, 0.5),
                          np.ones(3), 1e-5, 3.0, 5.0)  # fmt: skip
    np.testing.assert_allclose(layer(x).detach().double().numpy(), expected, atol=1e-4)


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    eager, compiled = (BatchRenorm2d(3, warmup_steps=1, ramp_steps=2) for _ in range(2))
    explanation = torch._dynamo.explain(BatchRenorm2d(3, warmup_steps=1, ramp_steps=2))(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    fn = torch.compile(compiled, fullgraph=True)
    for step in range(4):  # through warm-up and ramp: the schedule is traced, not a guard
        xs = x * (step + 1) + step
        torch.testing.assert_close(fn(xs), eager(xs))
    torch.testing.assert_close(compiled.running_var, eager.running_var)
    eager.eval(), compiled.eval()
    explanation = torch._dynamo.explain(compiled)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(fn(x), eager(x))


@pytest.mark.parametrize("shape", [(0, 3), (8, 3, 0)])
def test_empty_training_batch_is_counted_and_skipped_like_bn(shape):
    """An empty training batch: BN's rule, an empty output, the step counted and the running
    statistics unchanged (as torch's BatchNorm1d), no error."""
    renorm, torch_bn = BatchRenorm1d(3, warmup_steps=0), nn.BatchNorm1d(3)
    x = torch.randn(shape)
    assert renorm(x).shape == torch_bn(x).shape == shape
    for name, value in torch_bn.state_dict().items():
        assert torch.equal(renorm.state_dict()[name], value), name
    assert int(renorm.num_batches_tracked) == 1 and int(renorm.skipped_updates) == 1


def test_schedule_tensors_have_the_requested_dtype():
    """Both ramp forms return ``dtype`` tensors: a float64 layer clips in float64."""
    steps = torch.tensor([0, 5, 10])
    for ramp in (0, 4):
        rmax_t, dmax_t = renorm_limits(steps, 1.0 + 1e-12, 5.0, warmup_steps=5, ramp_steps=ramp,
                                       dtype=torch.float64)  # fmt: skip
        assert rmax_t.dtype == dmax_t.dtype == torch.float64
        assert rmax_t[-1].item() == 1.0 + 1e-12  # not rounded to float32's 1.0
    rmax_t, _ = renorm_limits(steps, 3.0, 5.0, 5, 0, dtype=torch.float64)
    assert rmax_t.tolist() == [1.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("kwargs", "error", "phrase"),
    [({"rmax": 0.5}, ValueError, "rmax must be >= 1"),
     ({"dmax": -1.0}, ValueError, "dmax must be >= 0"),
     ({"warmup_steps": -1}, ValueError, "warmup_steps must be >= 0"),
     ({"warmup_steps": 2.0}, TypeError, "warmup_steps must be an int"),
     ({"ramp_steps": -3}, ValueError, "ramp_steps must be >= 0"),
     ({"ramp_steps": True}, TypeError, "ramp_steps must be an int"),
     ({"track_running_stats": False}, ValueError, "needs track_running_stats=True")],
)  # fmt: skip
def test_bad_arguments_errors_name_the_layer_and_the_problem(kwargs, error, phrase):
    with pytest.raises(error, match=f"BatchRenorm2d: .*{phrase}"):
        BatchRenorm2d(3, **kwargs)


def test_positional_bn_arguments():
    """(num_features, eps, momentum, affine, ...) as BN's signature."""
    layer = BatchRenorm1d(3, 1e-3, 0.5, False, warmup_steps=0, dtype=torch.float64)
    assert (layer.eps, layer.momentum, layer.affine) == (1e-3, 0.5, False)
    x = torch.randn(8, 3, dtype=torch.float64) + 2
    layer(x)
    torch.testing.assert_close(layer.running_mean, 0.5 * x.mean(0), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("shape", "match"),
    [((8, 4), r"BatchRenorm1d\(3\): expected 3 channels"),
     ((1, 3), r"BatchRenorm1d\(3\): expected more than 1 value per channel")],
)  # fmt: skip
def test_bad_training_input_errors_name_the_layer(shape, match):
    layer = BatchRenorm1d(3)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(shape))
    assert int(layer.num_batches_tracked) == 0


def test_bfloat16_layer_on_every_backend():
    """A bfloat16 layer (model.bfloat16()) trains on bfloat16 input with each backend: the
    folded weight and bias stay in the layer's dtype, as ATen's kernel requires."""
    for backend in ("native", "reference"):
        layer = _layer(4, 3, rmax=1.5, dmax=0.5, backend=backend).to(torch.bfloat16)
        state = [s.astype(np.float64) for s in _state(layer.double())]
        layer.to(torch.bfloat16)
        x = (torch.randn(4, 3, 2, 2) * 2 + 1).to(torch.bfloat16)
        y = layer(x)
        assert y.dtype == torch.bfloat16
        expected = _reference(x.double().numpy(), *state, layer.eps, 1.5, 0.5)
        np.testing.assert_allclose(y.detach().double().numpy(), expected, atol=0.1)


def test_population_estimator_pools_the_batches():
    """estimator='population': the running statistics are the batches' pooled mean and
    pooled unbiased within-batch variance, counting every value (float64 formula)."""
    layer = BatchRenorm1d(2, estimator="population", warmup_steps=0, dtype=torch.float64)
    batches = [torch.randn(4, 2, 3, dtype=torch.float64) * s + s for s in (1.0, 3.0)]
    for x in batches:
        layer(x)
    values = [x.transpose(0, 1).reshape(2, -1) for x in batches]
    mean = torch.cat(values, 1).mean(1)
    squares = sum(((v - v.mean(1, keepdim=True)) ** 2).sum(1) for v in values)
    torch.testing.assert_close(layer.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, squares / (2 * (12 - 1)), rtol=1e-12, atol=0)
    assert int(layer.population_samples) == 24 and int(layer.population_batches) == 2
