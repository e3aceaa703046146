"""Ghost BN: training equals BN chunk by chunk; running statistics pooled once per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from batchnorm import BatchNorm2d, GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d

pytestmark = pytest.mark.usefixtures("one_thread")

GHOSTS = {2: GhostBatchNorm1d, 3: GhostBatchNorm1d, 4: GhostBatchNorm2d, 5: GhostBatchNorm3d}


def _reference(x: np.ndarray, vbs: int, gamma: np.ndarray, beta: np.ndarray, eps: float):
    """Float64 NumPy, from the formula: BN of each chunk of ``vbs`` consecutive samples."""
    outputs = []
    shape = (1, -1) + (1,) * (x.ndim - 2)
    axes = (0, *range(2, x.ndim))
    for start in range(0, x.shape[0], vbs):
        chunk = x[start:start + vbs]
        mu = chunk.mean(axis=axes, keepdims=True)
        var = ((chunk - mu) ** 2).mean(axis=axes, keepdims=True)
        outputs.append(gamma.reshape(shape) * (chunk - mu) / np.sqrt(var + eps)
                       + beta.reshape(shape))  # fmt: skip
    return np.concatenate(outputs)


def _pooled(x: np.ndarray, vbs: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented running-statistics input: batch mean, pooled unbiased within-chunk var."""
    axes = (0, *range(2, x.ndim))
    squares, dof = 0.0, 0
    for start in range(0, x.shape[0], vbs):
        chunk = x[start:start + vbs]
        squares = squares + ((chunk - chunk.mean(axis=axes, keepdims=True)) ** 2).sum(axis=axes)
        dof += chunk.size // x.shape[1] - 1
    return x.mean(axis=axes), squares / dof


def _layer(rank: int, channels: int, vbs: int, **kwargs) -> nn.Module:
    layer = GHOSTS[rank](channels, vbs, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.uniform_(-1.0, 1.0)
    return layer


@given(
    rank=st.sampled_from([2, 3, 4, 5]),
    n=st.integers(2, 13),
    vbs=st.integers(1, 6),
    channels=st.integers(1, 3),
    backend=st.sampled_from(["reference", "native"]),
)
def test_training_output_equals_bn_of_each_chunk(rank, n, vbs, channels, backend):
    spatial = (3, 2, 2)[: rank - 2]
    if (n % vbs == 1 or vbs == 1) and not spatial:
        return  # a 1-sample chunk of (N, C) input has no variance (tested below)
    x = torch.randn(n, channels, *spatial, dtype=torch.float64) * 3 + 1
    layer = _layer(rank, channels, vbs, backend=backend)
    expected = _reference(x.numpy(), vbs, layer.weight.detach().numpy(),
                          layer.bias.detach().numpy(), layer.eps)  # fmt: skip
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", ["reference", "native"])
@pytest.mark.parametrize(("n", "vbs"), [(12, 4), (14, 4), (9, 2), (8, 8), (5, 8)])
def test_gradients_equal_bn_chunk_by_chunk(backend, n, vbs):
    x = torch.randn(n, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    layer = _layer(4, 3, vbs, backend=backend)
    grad = torch.randn(n, 3, 4, 2, dtype=torch.float64)
    layer(x).backward(grad)
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    chunks = [F.batch_norm(part, None, None, gamma, beta, True, 0.0, layer.eps)
              for part in x2.split(vbs)]  # fmt: skip
    torch.cat(chunks).backward(grad)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, gamma.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, beta.grad, rtol=1e-10, atol=1e-12)


def test_gradcheck():
    x = torch.randn(7, 2, 3, dtype=torch.float64, requires_grad=True)
    layer = _layer(3, 2, 3, backend="reference")
    weight = layer.weight.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()

    def call(x, weight, bias):
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(call, (x, weight, bias))


@pytest.mark.parametrize(("n", "vbs", "rank"), [(12, 4, 4), (14, 4, 4), (10, 4, 2), (9, 4, 5)])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_running_statistics_take_the_pooled_chunk_statistics_once(n, vbs, rank, momentum):
    spatial = (3, 2, 2)[: rank - 2]
    x = torch.randn(n, 3, *spatial, dtype=torch.float64) * 2 + 0.5
    layer = _layer(rank, 3, vbs, momentum=momentum)
    layer.running_mean.fill_(0.25)
    layer.running_var.fill_(2.0)
    layer(x)
    mean, var = _pooled(x.numpy(), vbs)
    np.testing.assert_allclose(layer.running_mean.numpy(), (1 - momentum) * 0.25
                               + momentum * mean, rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(layer.running_var.numpy(), (1 - momentum) * 2.0 + momentum * var,
                               rtol=1e-12)  # fmt: skip
    assert int(layer.num_batches_tracked) == 1  # one forward, not one per chunk


def test_pooled_variance_is_not_the_whole_batch_variance():
    """Chunks with different means: the within-chunk variance is far below the batch's."""
    x = torch.cat([torch.randn(4, 2, dtype=torch.float64) + shift for shift in (-10, 10)])
    layer = GhostBatchNorm1d(2, 4, momentum=1.0, dtype=torch.float64)
    layer(x)
    _, var = _pooled(x.numpy(), 4)
    np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)
    assert (layer.running_var < 10).all()
    assert (x.var(0) > 50).all()


def test_population_estimator_pools_the_chunks():
    x = torch.randn(12, 3, dtype=torch.float64)
    layer = _layer(2, 3, 4, estimator="population")
    layer(x)
    mean, var = _pooled(x.numpy(), 4)
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)


@pytest.mark.parametrize("n", [4, 3])
def test_a_batch_no_larger_than_the_ghost_batch_is_plain_bn(n):
    x = torch.randn(n, 3, 5, 5)
    ghost, bn = GhostBatchNorm2d(3, 4), BatchNorm2d(3)
    torch.testing.assert_close(ghost(x), bn(x), rtol=0, atol=0)
    torch.testing.assert_close(ghost.running_var, bn.running_var, rtol=0, atol=0)


def test_non_finite_chunk_skips_the_update_but_not_the_count():
    x = torch.randn(8, 2)
    x[5, 0] = float("nan")
    layer = GhostBatchNorm1d(2, 4)
    layer(x)
    assert torch.equal(layer.running_mean, torch.zeros(2))
    assert int(layer.num_batches_tracked) == 1 and int(layer.skipped_updates) == 1


def test_eval_equals_bn_with_the_same_state():
    torch_bn = nn.BatchNorm2d(3)
    for _ in range(3):
        torch_bn(torch.randn(16, 3, 4, 4) * 2 + 1)
    ghost = GhostBatchNorm2d(3, 4)
    ghost.load_state_dict(torch_bn.state_dict())
    assert list(ghost.state_dict()) == list(torch_bn.state_dict())
    x = torch.randn(16, 3, 4, 4)
    torch.testing.assert_close(ghost.eval()(x), torch_bn.eval()(x))


def test_eval_without_running_statistics_uses_the_whole_batch():
    x = torch.randn(12, 3) * 3
    ghost = GhostBatchNorm1d(3, 4, track_running_stats=False).eval()
    torch.testing.assert_close(ghost(x), F.batch_norm(x, None, None, training=True))


def test_training_depends_on_the_chunk_not_on_the_rest_of_the_batch():
    x = torch.randn(8, 2)
    layer = GhostBatchNorm1d(2, 4, track_running_stats=False)
    y = layer(x)
    x2 = x.clone()
    x2[4:] = x2[4:] * 100 + 7
    torch.testing.assert_close(layer(x2)[:4], y[:4])
    assert not torch.allclose(layer(x2)[:4], BatchNorm2d(2)(x2[:, :, None, None])[:4, :, 0, 0])


def test_single_sample_remainder_of_flat_input_raises():
    with pytest.raises(ValueError, match=r"last ghost batch .* 1 value per channel"):
        GhostBatchNorm1d(3, 4)(torch.randn(9, 3))
    assert GhostBatchNorm1d(3, 4)(torch.randn(9, 3, 2)).shape == (9, 3, 2)  # 2 values: fine


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-2, ValueError),
                                              (2.0, TypeError), (True, TypeError)])
def test_bad_virtual_batch_size(value, error):
    with pytest.raises(error, match="virtual_batch_size"):
        GhostBatchNorm2d(3, value)


def test_wrong_rank_raises():
    with pytest.raises(ValueError, match="expected 4D input"):
        GhostBatchNorm2d(3, 2)(torch.randn(8, 3))


def test_is_a_batchnorm_with_torchs_buffers_and_repr():
    layer = GhostBatchNorm3d(4, 16, momentum=0.2)
    assert isinstance(layer, nn.BatchNorm3d)
    assert "virtual_batch_size=16" in repr(layer) and "momentum=0.2" in repr(layer)
    assert set(layer.state_dict()) == set(nn.BatchNorm3d(4).state_dict())


def test_half_precision_input():
    x = torch.randn(8, 3, 4, 4).to(torch.bfloat16)
    y = GhostBatchNorm2d(3, 4)(x)
    assert y.dtype == torch.bfloat16
    expected = _reference(x.double().numpy(), 4, np.ones(3), np.zeros(3), 1e-5)
    np.testing.assert_allclose(y.detach().double().numpy(), expected, atol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["compiled", "hybrid"])
def test_generated_backends(backend):
    x = torch.randn(10, 3, 4, 4)
    layer = GhostBatchNorm2d(3, 4, backend=backend)
    expected = _reference(x.double().numpy(), 4, np.ones(3), np.zeros(3), 1e-5)
    np.testing.assert_allclose(layer(x).detach().double().numpy(), expected, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("n", [12, 14])
def test_compiles_without_graph_breaks(n):
    torch._dynamo.reset()
    eager, compiled = GhostBatchNorm2d(3, 4), GhostBatchNorm2d(3, 4)
    x = torch.randn(n, 3, 5, 5) * 2 + 1
    explanation = torch._dynamo.explain(GhostBatchNorm2d(3, 4))(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    fn = torch.compile(compiled, fullgraph=True)
    torch.testing.assert_close(fn(x), eager(x))
    torch.testing.assert_close(compiled.running_var, eager.running_var)
    eager.eval(), compiled.eval()
    explanation = torch._dynamo.explain(compiled)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(fn(x), eager(x))


@pytest.mark.parametrize("shape", [(8, 3, 0, 5), (8, 3, 5, 0)])
def test_empty_training_batch_is_counted_and_skipped_like_bn(shape):
    """A batch with no values per channel (N > vbs, an empty spatial dimension): BN's rule,
    an empty output, the step counted and no statistics changed (as torch's BatchNorm2d)."""
    ghost, torch_bn = GhostBatchNorm2d(3, 4), nn.BatchNorm2d(3)
    x = torch.randn(shape)
    assert ghost(x).shape == torch_bn(x).shape == shape
    for name, value in torch_bn.state_dict().items():
        assert torch.equal(ghost.state_dict()[name], value), name
    assert int(ghost.num_batches_tracked) == 1 and int(ghost.skipped_updates) == 1


def test_virtual_batch_size_1_is_instance_norm():
    """One sample per ghost batch: each sample normalized over its own positions, i.e. torch's
    instance norm with the same affine (vbs=1 is valid, not an error)."""
    layer = _layer(3, 2, 1, backend="reference")
    x = torch.randn(5, 2, 4, dtype=torch.float64) * 2 + 1
    expected = F.instance_norm(x, weight=layer.weight.detach(), bias=layer.bias.detach(),
                               eps=layer.eps)  # fmt: skip
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("n", "vbs", "length"), [(10, 4, 2), (9, 4, 2), (7, 3, 3), (11, 3, 2)])
def test_remainders_of_more_than_one_value_per_channel_are_normalized(n, vbs, length):
    """A last ghost batch with 2+ values per channel (e.g. 2 samples of length 2) is BN of it."""
    x = torch.randn(n, 3, length, dtype=torch.float64) * 3 + 1
    layer = _layer(3, 3, vbs, backend="reference")
    expected = _reference(x.numpy(), vbs, layer.weight.detach().numpy(),
                          layer.bias.detach().numpy(), layer.eps)  # fmt: skip
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n", [12, 14])
def test_no_affine(n):
    layer = GhostBatchNorm2d(3, 4, affine=False, dtype=torch.float64)
    x = torch.randn(n, 3, 2, 2, dtype=torch.float64) * 2 - 1
    expected = _reference(x.numpy(), 4, np.ones(3), np.zeros(3), layer.eps)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-10, atol=1e-10)
    mean, var = _pooled(x.numpy(), 4)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), 0.9 + 0.1 * var, rtol=1e-12)


def test_positional_bn_arguments_after_virtual_batch_size():
    """(num_features, virtual_batch_size, eps, momentum, affine, ...) as BN's signature."""
    layer = GhostBatchNorm1d(3, 4, 1e-3, 0.5, False)
    settings = (layer.eps, layer.momentum, layer.affine, layer.virtual_batch_size)
    assert settings == (1e-3, 0.5, False, 4)
    x = torch.randn(8, 3, dtype=torch.float64)
    layer.double()(x)
    mean, _ = _pooled(x.numpy(), 4)
    np.testing.assert_allclose(layer.running_mean.numpy(), 0.5 * mean, rtol=1e-12)


@pytest.mark.parametrize(("value", "error", "phrase"), [
    (0, ValueError, "virtual_batch_size must be positive"),
    (1.5, TypeError, "virtual_batch_size must be an int")])  # fmt: skip
def test_bad_virtual_batch_size_error_names_the_layer(value, error, phrase):
    with pytest.raises(error, match=f"GhostBatchNorm2d: {phrase}"):
        GhostBatchNorm2d(3, value)


def test_wrong_channel_count_names_the_layer():
    with pytest.raises(ValueError, match=r"GhostBatchNorm1d\(3\): expected 3 channels"):
        GhostBatchNorm1d(3, 2)(torch.randn(8, 4))


def test_single_sample_remainder_error_says_what_to_do():
    with pytest.raises(ValueError, match=r"BN of it is undefined \(choose a batch size"):
        GhostBatchNorm1d(3, 4)(torch.randn(5, 3))


def test_layer_runs_the_backend_it_names(monkeypatch):
    """backend= is the backend of both calls, the full ghost batches and the remainder
    (a registered spy around the reference transform)."""
    from batchnorm.backends import registry

    reference = registry.get("reference")
    seen = []

    def spy(input, *args):
        seen.append(tuple(input.shape))
        return reference.forward(input, *args)

    monkeypatch.setitem(registry._BACKENDS, "spy", registry.Backend("spy", spy))
    layer = _layer(2, 2, 4, backend="spy")
    x = torch.randn(10, 2, dtype=torch.float64)
    expected = _reference(x.numpy(), 4, layer.weight.detach().numpy(),
                          layer.bias.detach().numpy(), layer.eps)  # fmt: skip
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    assert seen == [(4, 4), (2, 2)]  # 2 full ghost batches as 4 channels, then the 2 left
