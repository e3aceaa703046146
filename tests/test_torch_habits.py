"""Habits of torch users that our layers must survive, with torch's own layer as the oracle.

AMP (CPU bfloat16 autocast here) with a GradScaler, ``torch.func.functional_call``,
deepcopy / pickle / ``torch.save`` + ``torch.load(weights_only=True)`` of state
dicts, and ``torch.nn.utils.fusion.fuse_conv_bn_eval``.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from batchnorm import BatchNorm1d, BatchNorm2d
from batchnorm.fused import BatchNormAct2d

pytestmark = pytest.mark.usefixtures("one_thread")


def _convnet(norm):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), norm(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 5 * 5, 3),
    )  # fmt: skip


def _trained_bn(cls=BatchNorm2d, **kwargs):
    torch.manual_seed(0)
    layer = cls(4, **kwargs)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    for _ in range(3):
        layer(torch.randn(6, 4, 3, 3) * 2 + 1)
    return layer


def test_bfloat16_autocast_with_grad_scaler_keeps_float32_finite_statistics():
    """Three AMP steps (CPU bfloat16 autocast, GradScaler): the BN output dtype is torch's,
    running statistics and parameters stay float32 and finite and close to torch's."""
    models = {"ours": _convnet(BatchNorm2d), "torch": _convnet(nn.BatchNorm2d)}
    models["torch"].load_state_dict(models["ours"].state_dict())
    out_dtypes = {}
    for name, model in models.items():
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
        torch.manual_seed(1)
        for _ in range(3):
            x, target = torch.randn(8, 3, 5, 5), torch.randint(0, 3, (8,))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out_dtypes[name] = model[1](model[0](x)).dtype
                loss = nn.functional.cross_entropy(model(x), target)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        bn = model[1]
        assert bn.running_mean.dtype == bn.running_var.dtype == torch.float32
        assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
        assert bn.weight.dtype == torch.float32 and torch.isfinite(bn.weight).all()
        assert int(bn.num_batches_tracked) == 6  # the dtype probe counts too
    assert out_dtypes["ours"] == out_dtypes["torch"]
    ours, theirs = models["ours"][1], models["torch"][1]
    # bfloat16 has 8 bits of mantissa: agreement to its precision, not float32's.
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours.running_var, theirs.running_var, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(ours.weight, theirs.weight, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("training", [True, False])
def test_functional_call_uses_and_updates_the_given_tensors(training):
    """functional_call with replaced parameters and buffers: the output uses them, a
    training call updates the given buffers (not the module's), as torch's layer does."""
    results = {}
    for name, cls in (("ours", BatchNorm2d), ("torch", nn.BatchNorm2d)):
        layer = cls(4).train(training)
        module_state = copy.deepcopy(layer.state_dict())
        torch.manual_seed(2)
        given = {
            "weight": torch.rand(4) + 0.5, "bias": torch.randn(4),
            "running_mean": torch.randn(4), "running_var": torch.rand(4) + 0.5,
            "num_batches_tracked": torch.tensor(5),
        }  # fmt: skip
        x = torch.randn(6, 4, 3, 3)
        y = torch.func.functional_call(layer, given, (x,))
        for key, value in module_state.items():
            torch.testing.assert_close(layer.state_dict()[key], value, msg=key)
        results[name] = (y, given)
    (y_o, given_o), (y_t, given_t) = results["ours"], results["torch"]
    torch.testing.assert_close(y_o, y_t)
    for key in given_t:
        torch.testing.assert_close(given_o[key], given_t[key], msg=key)


def test_functional_call_gradients_match_torch():
    x = torch.randn(6, 4, 3, 3)
    grads = {}
    for name, cls in (("ours", BatchNorm2d), ("torch", nn.BatchNorm2d)):
        layer = cls(4)
        params = {"weight": torch.full((4,), 1.5, requires_grad=True),
                  "bias": torch.zeros(4, requires_grad=True)}  # fmt: skip
        y = torch.func.functional_call(layer, params, (x,), strict=False)
        grads[name] = torch.autograd.grad((y**3).sum(), list(params.values()))
    for a, b in zip(grads["ours"], grads["torch"], strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("estimator", ["ema", "cumulative", "population"])
def test_state_dict_survives_deepcopy_pickle_and_weights_only_load(estimator):
    """The state dict (torch's keys, plus the population counters) round-trips through
    deepcopy, pickle and torch.save/torch.load(weights_only=True); loaded into a fresh
    layer it reproduces the eval output without the 'no statistics' warning."""
    kwargs = {"ema": {}, "cumulative": {"momentum": None},
              "population": {"estimator": "population"}}[estimator]  # fmt: skip
    layer = _trained_bn(**kwargs).eval()
    state = layer.state_dict()
    assert "skipped_updates" not in state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    copies = [copy.deepcopy(state), pickle.loads(pickle.dumps(state)),
              torch.load(buffer, weights_only=True)]  # fmt: skip
    x = torch.randn(5, 4, 3, 3)
    for loaded in copies:
        assert list(loaded) == list(state)
        fresh = BatchNorm2d(4, **kwargs).eval()
        fresh.load_state_dict(loaded)
        torch.testing.assert_close(fresh(x), layer(x))
    if estimator != "population":  # torch's layer takes our dict as is, and vice versa
        theirs = nn.BatchNorm2d(4, momentum=kwargs.get("momentum", 0.1)).eval()
        theirs.load_state_dict(copies[2])
        torch.testing.assert_close(theirs(x), layer(x))


def test_module_deepcopy_keeps_estimator_backend_and_skip_counter():
    layer = _trained_bn(estimator="population", backend="reference")
    bad = torch.randn(6, 4, 3, 3)
    bad[0, 0, 0, 0] = float("inf")
    layer(bad)
    twin = copy.deepcopy(layer)
    assert (twin.estimator, twin.backend) == ("population", "reference")
    assert int(twin.skipped_updates) == int(layer.skipped_updates) == 1
    twin(torch.randn(6, 4, 3, 3))
    assert int(layer.num_batches_tracked) == 4  # the copy is independent


@pytest.mark.parametrize("cls", [BatchNorm2d, BatchNormAct2d])
def test_fuse_conv_bn_eval_folds_our_layers(cls):
    """torch.nn.utils.fusion.fuse_conv_bn_eval folds our BatchNorm2d into the conv (the
    fused layer's activation is not part of BN: fold, then apply it)."""
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1).eval()
    bn = _trained_bn(cls).eval()
    x = torch.randn(2, 3, 5, 5)
    fused = fuse_conv_bn_eval(conv, bn)
    want = bn(conv(x))
    got = fused(x)
    if cls is BatchNormAct2d:
        got = torch.relu(got)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fuse_conv_bn_eval_with_bias_false_layer():
    conv = nn.Conv2d(3, 4, 3).eval()
    bn = BatchNorm2d(4, bias=False)
    for _ in range(2):
        bn(torch.randn(4, 4, 3, 3) + 2)
    bn.eval()
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fuse_conv_bn_eval(conv, bn)(x), bn(conv(x)), atol=1e-5,
                               rtol=1e-5)  # fmt: skip


def test_batchnorm1d_in_a_linear_fuser():
    """fuse_linear_bn_eval takes our BatchNorm1d too."""
    from torch.nn.utils.fusion import fuse_linear_bn_eval

    linear = nn.Linear(5, 4).eval()
    bn = BatchNorm1d(4)
    for _ in range(2):
        bn(torch.randn(8, 4) * 2 + 1)
    bn.eval()
    x = torch.randn(3, 5)
    torch.testing.assert_close(fuse_linear_bn_eval(linear, bn)(x), bn(linear(x)), atol=1e-5,
                               rtol=1e-5)  # fmt: skip
