"""accumulate_statistics: k micro-batches leave the running statistics of ONE forward of
the concatenated batch (every estimator, torch's layers, 1d and 2d), gradients unchanged."""

import warnings

import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import BatchNorm1d, BatchNorm2d, BatchNormAct2d, accumulate_statistics
from batchnorm.accumulate import Moments, moments

SIZES = (3, 5, 2, 6)  # unequal micro-batches
STATE = ("running_mean", "running_var", "num_batches_tracked",
         "population_batches", "population_samples", "skipped_updates")


def _net(kind: str, dim: int) -> nn.Module:
    norm = {
        ("ours", 1): lambda c, **kw: BatchNorm1d(c, **kw),
        ("ours", 2): lambda c, **kw: BatchNorm2d(c, **kw),
        ("torch", 1): lambda c, **kw: nn.BatchNorm1d(c, **kw),
        ("torch", 2): lambda c, **kw: nn.BatchNorm2d(c, **kw),
    }[kind, dim]
    return norm


def _model(dim: int, norm, **kw) -> nn.Module:
    if dim == 1:
        return nn.Sequential(nn.Linear(6, 4), norm(4, **kw), nn.ReLU(), nn.Linear(4, 5),
                             norm(5, **kw))
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), norm(3, **kw), nn.ReLU(),
                         nn.Conv2d(3, 4, 3), norm(4, **kw))


def _inputs(dim: int, sizes=SIZES) -> list[torch.Tensor]:
    shape = (6,) if dim == 1 else (2, 5, 5)
    # distinct micro-batch means: the between-micro-batch variance matters
    return [torch.randn(n, *shape) * (1 + i) + 2 * i for i, n in enumerate(sizes)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: buffer.clone() for name, buffer in model.named_buffers()
            if name.rsplit(".", 1)[-1] in STATE}


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name].double(), b[name].double(), rtol=1e-6, atol=1e-6,
                                   msg=name)


CASES = [
    ("ours", {"estimator": "ema"}),
    ("ours", {"estimator": "ema", "momentum": 0.3}),
    ("ours", {"estimator": "cumulative", "momentum": None}),
    ("ours", {"estimator": "population"}),
    ("torch", {}),
    ("torch", {"momentum": None}),
]


def _first_layer_model(dim: int, norm, **kw) -> nn.Module:
    """One BN layer after a linear map: its input is the same micro-batched or not."""
    if dim == 1:
        return nn.Sequential(nn.Linear(6, 4), norm(4, **kw))
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), norm(3, **kw))


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize(("kind", "kw"), CASES)
def test_micro_batches_equal_one_concatenated_batch(one_thread, dim, kind, kw):
    torch.manual_seed(1)
    accumulated = _first_layer_model(dim, _net(kind, dim), **kw)
    reference = _first_layer_model(dim, _net(kind, dim), **kw)
    reference.load_state_dict(accumulated.state_dict())
    for step in range(3):  # several optimizer steps: ema/cumulative/population history
        micro = _inputs(dim)
        with accumulate_statistics(accumulated) as seen:
            for x in micro:
                accumulated(x)
        reference(torch.cat(micro))
        assert seen.calls[accumulated[1]] == len(micro)
        _assert_same_state(_state(accumulated), _state(reference))
        assert int(accumulated[1].num_batches_tracked) == step + 1


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize(("kind", "kw"), CASES)
def test_every_layer_equals_one_batch_of_the_inputs_it_saw(one_thread, dim, kind, kw):
    """Deeper layers see micro-batch-normalized inputs, which differ from a concatenated
    forward's; each layer's statistics are those of ONE batch of what it was given."""
    torch.manual_seed(1)
    model = _model(dim, _net(kind, dim), **kw)
    layers = [m for m in model if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    twins = [type(layer)(layer.num_features, **kw) for layer in layers]
    for twin, layer in zip(twins, layers, strict=True):
        twin.load_state_dict(layer.state_dict())
    for _ in range(2):
        seen_inputs: dict[nn.Module, list[torch.Tensor]] = {layer: [] for layer in layers}
        def keep(module, args, seen_inputs=seen_inputs):
            seen_inputs[module].append(args[0].detach().clone())

        handles = [layer.register_forward_pre_hook(keep) for layer in layers]
        with accumulate_statistics(model):
            for x in _inputs(dim):
                model(x)
        for handle in handles:
            handle.remove()
        for twin, layer in zip(twins, layers, strict=True):
            twin(torch.cat(seen_inputs[layer]))
            _assert_same_state(_state(layer), _state(twin))


def test_per_micro_batch_updates_differ_from_the_concatenated_batch(one_thread):
    """The defect the context removes: without it the statistics are not those of one batch."""
    torch.manual_seed(1)
    plain = _model(2, _net("ours", 2))
    reference = _model(2, _net("ours", 2))
    reference.load_state_dict(plain.state_dict())
    micro = _inputs(2)
    for x in micro:
        plain(x)
    reference(torch.cat(micro))
    assert not torch.allclose(plain[1].running_var, reference[1].running_var, atol=1e-3)
    assert int(plain[1].num_batches_tracked) == len(micro)


def test_pooled_moments_are_exact():
    x = torch.randn(40, 3, dtype=torch.float64) * 3 + 1
    parts = torch.split(x, [7, 1, 20, 12])
    pooled = moments(parts[0])
    for part in parts[1:]:
        pooled = pooled.merge(moments(part))
    whole = moments(x)
    assert pooled.n == 40
    torch.testing.assert_close(pooled.mean, whole.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled.m2, whole.m2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled.biased_var, x.var(dim=0, correction=0))
    # the between-part spread is in it: not the mean of the parts' variances
    within = sum(moments(p).m2 for p in parts) / 40
    assert (pooled.biased_var - within).abs().min() > 0


def test_moments_reject_a_vector():
    with pytest.raises(ValueError, match="expected \\(N, C, \\*\\)"):
        moments(torch.randn(5))
    assert isinstance(moments(torch.randn(4, 2, 3)), Moments)


@pytest.mark.parametrize("kind", ["ours", "torch"])
def test_gradients_and_outputs_are_unchanged(one_thread, kind):
    torch.manual_seed(2)
    model = _model(2, _net(kind, 2))
    twin = _model(2, _net(kind, 2))
    twin.load_state_dict(model.state_dict())
    micro = _inputs(2)
    outs, twin_outs = [], []
    with accumulate_statistics(model):
        for x in micro:  # gradient accumulation: forward and backward per micro-batch
            outs.append(model(x))
            outs[-1].square().sum().backward()
    for x in micro:
        twin_outs.append(twin(x))
        twin_outs[-1].square().sum().backward()
    for a, b in zip(outs, twin_outs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)


def test_fused_layer_with_residual(one_thread):
    torch.manual_seed(3)
    layer = BatchNormAct2d(3, activation="relu")
    reference = BatchNormAct2d(3, activation="relu")
    micro = [torch.randn(n, 3, 4, 4) + i for i, n in enumerate((2, 3, 1))]
    residual = [torch.randn_like(x) for x in micro]
    with accumulate_statistics(layer):
        for x, r in zip(micro, residual, strict=True):
            layer(x, r)
    reference(torch.cat(micro), torch.cat(residual))
    _assert_same_state(_state(layer), _state(reference))


def test_eval_and_no_grad_forwards_inside_the_block(one_thread):
    torch.manual_seed(4)
    model = _first_layer_model(1, _net("ours", 1))
    reference = _first_layer_model(1, _net("ours", 1))
    reference.load_state_dict(model.state_dict())
    micro = _inputs(1)
    with accumulate_statistics(model) as seen:
        with torch.no_grad():
            model(micro[0])
        model.eval()
        with pytest.warns(UserWarning, match="tracked no statistics"):
            model(micro[1])  # eval: not recorded, updates nothing
        model.train()
        model(micro[2])
    reference(torch.cat([micro[0], micro[2]]))
    assert seen.calls[model[1]] == 2
    _assert_same_state(_state(model), _state(reference))


def test_nested_contexts_update_once(one_thread):
    torch.manual_seed(5)
    model = _first_layer_model(1, _net("torch", 1))
    reference = _first_layer_model(1, _net("torch", 1))
    reference.load_state_dict(model.state_dict())
    micro = _inputs(1)
    with accumulate_statistics(model):
        model(micro[0])
        with accumulate_statistics(model[1]) as inner:
            model(micro[1])
        assert inner.layers == [] and int(model[1].num_batches_tracked) == 0
        model(micro[2])
    reference(torch.cat(micro[:3]))
    _assert_same_state(_state(model), _state(reference))


def test_an_exception_restores_the_entry_state_and_removes_the_hooks(one_thread):
    torch.manual_seed(6)
    model = _model(2, _net("ours", 2), estimator="population")
    model(torch.randn(4, 2, 5, 5))
    before = _state(model)
    with pytest.raises(RuntimeError, match="planted"), accumulate_statistics(model):
        model(torch.randn(4, 2, 5, 5))
        model[1].running_mean.add_(7.0)  # even a stray write is put back
        raise RuntimeError("planted")
    _assert_same_state(_state(model), before)
    for layer in (model[1], model[4]):
        assert not layer._forward_hooks and not layer._forward_pre_hooks
    model(torch.randn(4, 2, 5, 5))  # and the layer updates normally again
    assert int(model[1].num_batches_tracked) == 2


def test_hooks_are_removed_and_a_later_step_updates_normally(one_thread):
    model = _model(1, _net("ours", 1))
    with accumulate_statistics(model):
        model(torch.randn(4, 6))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    model(torch.randn(4, 6))
    assert int(model[1].num_batches_tracked) == 2


def test_non_finite_micro_batch_is_skipped_as_one_batch(one_thread):
    layer = BatchNorm1d(3)
    with accumulate_statistics(layer):
        layer(torch.randn(4, 3))
        bad = torch.randn(4, 3)
        bad[0, 1] = float("nan")
        layer(bad)
    assert int(layer.num_batches_tracked) == 1 and int(layer.skipped_updates) == 1
    torch.testing.assert_close(layer.running_mean, torch.zeros(3))


def test_an_empty_block_changes_nothing():
    layer = nn.BatchNorm1d(3)
    before = _state(layer)
    with accumulate_statistics(layer) as seen:
        pass
    assert seen.pooled == {}
    _assert_same_state(_state(layer), before)


def test_bad_arguments():
    for model in (nn.Linear(2, 2), BatchNorm1d(3, track_running_stats=False)):
        with pytest.raises(ValueError, match="no BN layer"), accumulate_statistics(model):
            pass
    with pytest.raises(TypeError, match=r"expected an nn\.Module"), \
            accumulate_statistics("model"):  # type: ignore[arg-type]
        pass


def test_exported():
    assert batchnorm.accumulate_statistics is accumulate_statistics


def test_backward_after_the_block(one_thread):
    """Forwards inside, backward after exit: neither the restores nor the update on exit may
    bump the buffers' autograd version (torch's layer saves them for backward)."""
    for norm in (nn.BatchNorm2d, BatchNorm2d):
        model = nn.Sequential(nn.Conv2d(2, 3, 3), norm(3))
        with accumulate_statistics(model):
            loss = sum(model(x).square().sum() for x in _inputs(2))
        loss.backward()
        assert model[0].weight.grad is not None


def test_batch_renorm_updates_as_one_batch(one_thread):
    """Batch Renorm updates its statistics with BN's estimator: one batch."""
    renorm = batchnorm.BatchRenorm2d
    layer, reference = renorm(3), renorm(3)
    micro = [torch.randn(n, 3, 4, 4) * (i + 1) + i for i, n in enumerate((2, 5, 3))]
    with accumulate_statistics(layer):
        for x in micro:
            layer(x)
    reference(torch.cat(micro))
    _assert_same_state(_state(layer), _state(reference))


def test_frozen_layers_are_left_alone():
    frozen = batchnorm.FrozenBatchNorm2d
    model = nn.Sequential(frozen(3), BatchNorm2d(3))
    with accumulate_statistics(model) as seen:
        model(torch.randn(4, 3, 5, 5))
    assert seen.layers == [model[1]]


def test_a_layer_that_stopped_tracking_is_left_alone(one_thread):
    """track_running_stats=False after construction: torch's layer keeps its buffers but
    updates nothing in training; the context must not give it an update either."""
    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3))
    model[0].track_running_stats = False
    before = _state(model)
    with accumulate_statistics(model) as seen:
        model(torch.randn(5, 3) + 2)
    assert seen.layers == [model[1]]
    for name in ("0.running_mean", "0.running_var", "0.num_batches_tracked"):
        torch.testing.assert_close(model.state_dict()[name], before[name], rtol=0, atol=0)
    assert int(model[1].num_batches_tracked) == 1
    assert batchnorm.accumulate.tracking_layers(model) == [model[1]]


def test_moments_pool_every_position_of_a_channel():
    """(N, C, H, W): per channel over N, H and W, against torch.var_mean of the whole."""
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64) * 2 + 1
    got = moments(x)
    var, mean = torch.var_mean(x.transpose(0, 1).reshape(2, -1), dim=1, correction=0)
    assert got.n == 3 * 4 * 5
    torch.testing.assert_close(got.mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.m2, var * 60, rtol=1e-12, atol=1e-12)
    assert got.mean.dtype == torch.float64
    half = moments(x.float().half())
    torch.testing.assert_close(half.mean, x.half().double().mean(dim=(0, 2, 3)),
                               rtol=1e-12, atol=1e-12)


def test_the_eval_warning_stays_once_per_layer_across_the_block(one_thread):
    """A layer that already warned in eval mode does not warn again after a recorded forward
    (its warned-once flag is put back as it was, not reset)."""
    layer = BatchNorm1d(3).eval()
    with pytest.warns(UserWarning, match="tracked no statistics"):
        layer(torch.randn(4, 3))
    with accumulate_statistics(layer):
        layer.train()(torch.randn(4, 3))
        layer.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            layer(torch.randn(4, 3))


@pytest.mark.parametrize("kind", ["ours", "torch"])
def test_a_layer_called_with_a_keyword_input_is_accumulated(one_thread, kind):
    """``layer(input=x)``: a plain forward hook sees no positional argument; the block must
    still pool the call and leave ONE update of the concatenated batch (not k of its own)."""
    layer = _net(kind, 1)(4)
    reference = _net(kind, 1)(4)
    micro = [torch.randn(n, 4) * (1 + i) + 2 * i for i, n in enumerate(SIZES)]
    with accumulate_statistics(layer) as seen:
        for x in micro:
            layer(input=x)
    assert seen.calls[layer] == len(micro)
    reference(torch.cat(micro))
    _assert_same_state(_state(layer), _state(reference))
