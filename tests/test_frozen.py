"""Frozen BN: eval-mode BN as a fixed affine map; freeze/unfreeze round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    freeze_batchnorm,
    unfreeze_batchnorm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TORCH_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
OUR_BN = {1: BatchNorm1d, 2: BatchNorm2d, 3: BatchNorm3d}
FROZEN = {1: FrozenBatchNorm1d, 2: FrozenBatchNorm2d, 3: FrozenBatchNorm3d}
SPATIAL = {1: (5,), 2: (4, 3), 3: (3, 2, 2)}


def _trained(layer: nn.Module, dim: int, steps: int = 3) -> nn.Module:
    with torch.no_grad():
        if layer.affine:
            layer.weight.uniform_(0.5, 2.0)
            layer.bias.uniform_(-1.0, 1.0)
    dtype = layer.running_mean.dtype
    for _ in range(steps):
        layer(torch.randn(8, layer.num_features, *SPATIAL[dim], dtype=dtype) * 3 + 1)
    return layer


def _model(dim: int = 2) -> nn.Module:
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
    return nn.Sequential(conv(3, 4, 1), TORCH_BN[dim](4), nn.ReLU(),
                         nn.Sequential(conv(4, 5, 1), OUR_BN[dim](5, momentum=0.3)),
                         nn.Flatten(), nn.LazyLinear(2), nn.BatchNorm1d(2))  # fmt: skip


def _warm(model: nn.Module, dim: int = 2) -> torch.Tensor:
    for _ in range(3):
        model(torch.randn(8, 3, *SPATIAL[dim]) * 2 + 1)
    return torch.randn(6, 3, *SPATIAL[dim])


def test_formula_in_float64():
    frozen = FrozenBatchNorm2d(3, eps=1e-3, dtype=torch.float64)
    state = {"weight": torch.tensor([1.0, -2.0, 0.5]), "bias": torch.tensor([0.0, 1.0, -1.0]),
             "running_mean": torch.tensor([0.5, -1.0, 3.0]),
             "running_var": torch.tensor([0.25, 4.0, 1e-4])}  # fmt: skip
    frozen.load_state_dict({k: v.double() for k, v in state.items()})
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    s = {k: v.double().numpy().reshape(1, 3, 1, 1) for k, v in state.items()}
    expected = (x.numpy() - s["running_mean"]) / np.sqrt(s["running_var"] + 1e-3) * s["weight"] \
        + s["bias"]
    np.testing.assert_allclose(frozen(x).numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("source", ["torch", "ours"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loads_a_bn_state_dict_and_equals_eval_bn(dim, source, dtype):
    bn = _trained((TORCH_BN if source == "torch" else OUR_BN)[dim](4, dtype=dtype), dim)
    frozen = FROZEN[dim](4, dtype=dtype)
    frozen.load_state_dict(bn.state_dict())  # strict: num_batches_tracked is accepted
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert int(frozen.num_batches_tracked) == 3
    x = torch.randn(5, 4, *SPATIAL[dim], dtype=dtype) * 2
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(frozen(x), bn.eval()(x), **tolerance)
    torch.testing.assert_close(frozen.train()(x), bn(x), **tolerance)  # train mode: still frozen


def test_1d_flat_input_and_rank_errors():
    bn = _trained(nn.BatchNorm1d(4), 1)
    frozen = FrozenBatchNorm1d(4)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(7, 4)
    torch.testing.assert_close(frozen(x), bn.eval()(x))
    with pytest.raises(ValueError, match="expected 4D input"):
        FrozenBatchNorm2d(4)(torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="channels"):
        FrozenBatchNorm2d(4)(torch.randn(2, 3, 3, 3))


def test_buffers_never_change_and_get_no_gradient():
    frozen = FrozenBatchNorm2d(3).train()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    frozen(x * 5 + 3).sum().backward()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())
    assert list(frozen.parameters()) == []
    torch.testing.assert_close(x.grad, torch.full_like(x, 5.0) * frozen.scale_shift()[0][0])


def test_trainable_affine_trains_and_statistics_stay():
    frozen = FrozenBatchNorm1d(3, trainable_affine=True)
    assert [name for name, _ in frozen.named_parameters()] == ["weight", "bias"]
    x = torch.randn(6, 3)
    frozen(x).pow(2).sum().backward()
    torch.testing.assert_close(frozen.bias.grad, 2 * frozen(x).detach().sum(0))
    xhat = x / (1 + frozen.eps) ** 0.5
    torch.testing.assert_close(frozen.weight.grad, 2 * (frozen(x).detach() * xhat).sum(0))
    assert "trainable_affine=True" in repr(frozen)


def test_half_precision_rounds_once():
    bn = _trained(nn.BatchNorm2d(3), 2)
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 5, 5).to(torch.bfloat16)
    y = frozen(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, bn.eval()(x.float()).to(torch.bfloat16), rtol=0.01, atol=0.02)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("trainable_affine", [False, True])
def test_freeze_model_matches_eval_and_round_trips(dim, trainable_affine):
    model = _model(dim)
    x = _warm(model, dim)
    expected = model.eval()(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {id(p) for p in model.parameters()}
    model.train()
    frozen = freeze_batchnorm(model, trainable_affine=trainable_affine)
    assert frozen is model
    kinds = [type(m) for m in model.modules() if isinstance(m, batchnorm.frozen._FrozenBatchNorm)]
    assert kinds == [FROZEN[dim], FROZEN[dim], FrozenBatchNorm1d]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model.training and model[1].training  # mode kept
    torch.testing.assert_close(model(x), expected)  # train mode, frozen statistics
    bn_params = 6 if trainable_affine else 0
    assert len(list(model.parameters())) == 2 + 2 + 2 + bn_params
    if trainable_affine:  # the BN parameters are the same objects (the optimizer keeps them)
        assert {id(p) for p in model.parameters()} == params_before
    back = unfreeze_batchnorm(model, momentum=0.05)
    assert [type(m) for m in back.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] \
        == [OUR_BN[dim], OUR_BN[dim], BatchNorm1d]
    assert back[1].momentum == 0.05
    assert {k: v.dtype for k, v in back.state_dict().items()} == \
        {k: v.dtype for k, v in state.items()}
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0, msg=key)
    if trainable_affine:
        assert {id(p) for p in back.parameters()} == params_before
    torch.testing.assert_close(back.eval()(x), expected, rtol=0, atol=0)


def test_freeze_the_root_layer_and_unfreeze_it():
    bn = _trained(nn.BatchNorm2d(3), 2).eval()
    x = torch.randn(2, 3, 4, 4)
    frozen = freeze_batchnorm(bn)
    assert isinstance(frozen, FrozenBatchNorm2d) and not frozen.training
    torch.testing.assert_close(frozen(x), bn(x))
    back = unfreeze_batchnorm(frozen)
    assert type(back) is BatchNorm2d and not back.training
    torch.testing.assert_close(back.eval()(x), bn(x), rtol=1e-12, atol=1e-12)
    assert freeze_batchnorm(frozen) is frozen  # nothing left to freeze


def test_freeze_ghost_renorm_and_no_affine():
    layers = nn.Sequential(batchnorm.GhostBatchNorm2d(3, 2), batchnorm.BatchRenorm2d(3),
                           nn.BatchNorm2d(3, affine=False))  # fmt: skip
    for _ in range(3):
        layers(torch.randn(8, 3, 2, 2) * 2 + 1)
    x = torch.randn(4, 3, 2, 2)
    expected = layers.eval()(x)
    torch.testing.assert_close(freeze_batchnorm(layers)(x), expected)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in layers)


def test_unfreeze_after_loading_a_torch_state_dict_does_not_warn(recwarn):
    bn = _trained(nn.BatchNorm2d(3), 2)
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(bn.state_dict())
    back = unfreeze_batchnorm(frozen).eval()
    back(torch.randn(2, 3, 2, 2))
    assert int(back.num_batches_tracked) == 3
    assert not [w for w in recwarn if "tracked no statistics" in str(w.message)]


@pytest.mark.parametrize(
    ("layer", "error", "match"),
    [(batchnorm.BatchNormAct2d(3), TypeError, "activation"),
     (nn.SyncBatchNorm(3), TypeError, "only BatchNorm1d/2d/3d"),
     (nn.LazyBatchNorm2d(), TypeError, "only BatchNorm1d/2d/3d"),
     (nn.BatchNorm2d(3, track_running_stats=False), ValueError, "no running statistics")],
)  # fmt: skip
def test_freeze_refuses_what_it_cannot_keep(layer, error, match):
    with pytest.raises(error, match=match):
        freeze_batchnorm(nn.Sequential(nn.Identity(), nn.Sequential(layer)))
    with pytest.raises(error, match=r"1\.0"):  # names the layer's path
        freeze_batchnorm(nn.Sequential(nn.Identity(), nn.Sequential(layer)))


@pytest.mark.parametrize(("args", "error"), [((0,), ValueError), ((2.0,), TypeError),
                                             ((3, 0.0), ValueError)])
def test_bad_arguments(args, error):
    with pytest.raises(error):
        FrozenBatchNorm2d(*args)


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    frozen = freeze_batchnorm(_trained(nn.BatchNorm2d(3), 2))
    x = torch.randn(4, 3, 5, 5)
    explanation = torch._dynamo.explain(frozen)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(frozen, fullgraph=True)(x), frozen(x))


# ---------------------------------------------------------------- construction and repr


def test_meta_device_reaches_every_buffer_both_ways():
    """device= goes to every buffer, num_batches_tracked too (here: torch's meta device)."""
    assert {v.device.type for v in FrozenBatchNorm2d(3, device="meta").buffers()} == {"meta"}
    frozen = freeze_batchnorm(nn.BatchNorm2d(3, device="meta"))
    assert {v.device.type for v in frozen.buffers()} == {"meta"}
    back = unfreeze_batchnorm(frozen)
    assert {v.device.type for v in [*back.buffers(), *back.parameters()]} == {"meta"}


@pytest.mark.parametrize(
    ("change", "match"),
    [(lambda state: state.pop("running_var"), r"Missing key.*running_var"),
     (lambda state: state.update(extra=torch.zeros(1)), r"Unexpected key.*extra"),
     (lambda state: state.update(bias=torch.zeros(4)), r"size mismatch for bias")],
)  # fmt: skip
def test_a_strict_load_reports_what_does_not_fit(change, match):
    state = _trained(nn.BatchNorm2d(3), 2).state_dict()
    change(state)
    with pytest.raises(RuntimeError, match=match):
        FrozenBatchNorm2d(3).load_state_dict(state)


def test_unfreeze_into_the_population_estimator_keeps_the_statistics():
    bn = _trained(nn.BatchNorm2d(3), 2)
    back = unfreeze_batchnorm(freeze_batchnorm(bn), estimator="population")
    assert back.estimator == "population" and int(back.population_batches) == 0
    torch.testing.assert_close(back.running_var, bn.running_var, rtol=0, atol=0)
    torch.testing.assert_close(back.running_mean, bn.running_mean, rtol=0, atol=0)


def test_a_fresh_layer_is_the_identity_bn_of_torchvision():
    """weight 1, bias 0, running_mean 0, running_var 1: y = x / sqrt(1 + eps), every dimension."""
    for dim, frozen_class in FROZEN.items():
        frozen = frozen_class(3, eps=0.25)
        x = torch.randn(2, 3, *SPATIAL[dim])
        torch.testing.assert_close(frozen(x), x / 1.25**0.5)
        assert frozen.eps == 0.25 and frozen.num_features == 3 and not frozen.trainable_affine
        assert int(frozen.num_batches_tracked) == 0
        assert frozen.num_batches_tracked.dtype == torch.long


def test_repr_is_torchvisions():
    assert repr(FrozenBatchNorm2d(3)) == "FrozenBatchNorm2d(3, eps=1e-05)"
    assert repr(FrozenBatchNorm1d(2, 1e-3, trainable_affine=True)) == \
        "FrozenBatchNorm1d(2, eps=0.001, trainable_affine=True)"


def test_dtype_and_device_go_to_every_buffer():
    frozen = FrozenBatchNorm3d(2, dtype=torch.float64, device="cpu")
    assert {k: v.dtype for k, v in frozen.state_dict().items()} == dict.fromkeys(
        ["weight", "bias", "running_mean", "running_var"], torch.float64)
    trainable = FrozenBatchNorm3d(2, dtype=torch.float64, trainable_affine=True)
    assert trainable.weight.dtype == torch.float64 and trainable.bias.dtype == torch.float64


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [((True,), TypeError, "FrozenBatchNorm2d: num_features must be an int"),
     ((2.0,), TypeError, "num_features must be an int"),
     ((0,), ValueError, "FrozenBatchNorm2d: num_features must be positive"),
     ((-3,), ValueError, "num_features must be positive"),
     ((3, 0.0), ValueError, "FrozenBatchNorm2d: eps must be positive"),
     ((3, -1e-5), ValueError, "eps must be positive")],
)  # fmt: skip
def test_bad_arguments_say_what_is_wrong(args, error, match):
    with pytest.raises(error, match=match):
        FrozenBatchNorm2d(*args)


def test_one_channel_and_numpy_int_are_accepted():
    assert FrozenBatchNorm2d(1).num_features == 1
    frozen = FrozenBatchNorm1d(np.int64(2))
    assert type(frozen.num_features) is int and frozen(torch.ones(1, 2)).shape == (1, 2)


def test_a_single_sample_is_normalized_with_the_frozen_statistics():
    """Inference: no batch statistics, so one value per channel is fine (BN in eval mode too)."""
    bn = _trained(nn.BatchNorm1d(4), 1).eval()
    frozen = FrozenBatchNorm1d(4)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(1, 4)
    torch.testing.assert_close(frozen.train()(x), bn(x))


def test_rank_errors_name_the_accepted_ranks():
    ranks = r"FrozenBatchNorm1d\(4\): expected 2D or 3D input, got 4D"
    with pytest.raises(ValueError, match=ranks):
        FrozenBatchNorm1d(4)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"expected 5D input, got 4D input of shape \(2, 4, 3"):
        FrozenBatchNorm3d(4)(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match=r"FrozenBatchNorm3d\(4\): expected 4 channels"):
        FrozenBatchNorm3d(4)(torch.randn(2, 3, 1, 1, 1))


# ---------------------------------------------------------------- freezing


def test_freeze_keeps_the_layers_dtype_eps_and_statistics():
    bn = _trained(nn.BatchNorm1d(3, eps=0.5, dtype=torch.float64), 1)
    frozen = freeze_batchnorm(bn)
    assert {v.dtype for v in frozen.state_dict().values()} == {torch.float64}
    assert frozen.eps == 0.5
    x = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(frozen(x), bn.eval()(x), rtol=1e-12, atol=1e-12)
    back = unfreeze_batchnorm(frozen)
    assert back.eps == 0.5
    assert {k: v.dtype for k, v in back.state_dict().items()} == \
        {k: v.dtype for k, v in bn.state_dict().items()}
    torch.testing.assert_close(back.eval()(x), bn(x), rtol=1e-12, atol=1e-12)
    for key in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(frozen.state_dict()[key], bn.state_dict()[key], rtol=0, atol=0)
    assert int(frozen.num_batches_tracked) == 3


def test_freeze_without_affine_is_weight_one_bias_zero():
    bn = _trained(nn.BatchNorm2d(3, affine=False), 2)
    frozen = freeze_batchnorm(bn, trainable_affine=True)
    torch.testing.assert_close(frozen.weight, torch.ones(3), rtol=0, atol=0)
    torch.testing.assert_close(frozen.bias, torch.zeros(3), rtol=0, atol=0)
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(frozen(x), bn.eval()(x))


def test_freeze_copies_a_non_trainable_affine():
    bn = _trained(nn.BatchNorm2d(3), 2)
    frozen = freeze_batchnorm(bn)
    assert list(frozen.parameters()) == []
    torch.testing.assert_close(frozen.weight, bn.weight.detach(), rtol=0, atol=0)
    torch.testing.assert_close(frozen.bias, bn.bias.detach(), rtol=0, atol=0)
    with torch.no_grad():
        bn.weight.add_(1)  # a copy: the BN's later changes do not reach the frozen layer
    assert not torch.equal(frozen.weight, bn.weight.detach())


def test_a_layer_missing_one_statistic_is_refused():
    bn = _trained(nn.BatchNorm2d(3), 2)
    bn.running_var = None
    with pytest.raises(ValueError, match="no running statistics"):
        freeze_batchnorm(bn)
    other = _trained(nn.BatchNorm2d(3), 2)
    other.running_mean = None
    with pytest.raises(ValueError, match="no running statistics"):
        freeze_batchnorm(other)


def test_a_layer_without_a_batch_counter_freezes_with_zero():
    bn = _trained(nn.BatchNorm2d(3), 2)
    bn.num_batches_tracked = None
    assert int(freeze_batchnorm(bn).num_batches_tracked) == 0


@pytest.mark.parametrize("layer", [batchnorm.BatchNormAct1d(3), batchnorm.BatchNormAct2d(3)])
def test_errors_name_the_path_or_the_model(layer):
    with pytest.raises(TypeError, match=r"freeze_batchnorm: the model \(BatchNormAct.d\): "
                                        r"a fused BN \+ activation .*drop the activation"):
        freeze_batchnorm(layer)
    with pytest.raises(TypeError, match=r"freeze_batchnorm: 0\.1 \(BatchNormAct.d\)"):
        freeze_batchnorm(nn.Sequential(nn.Sequential(nn.Identity(), layer)))
    with pytest.raises(TypeError, match=r"freeze_batchnorm: the model \(SyncBatchNorm\): only "
                                        r"BatchNorm1d/2d/3d .* can be frozen"):
        freeze_batchnorm(nn.SyncBatchNorm(3))


def test_freeze_and_unfreeze_leave_other_layers_and_their_order():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.ReLU(),
                          nn.Sequential(nn.Identity(), nn.BatchNorm1d(3)))  # fmt: skip
    model(torch.randn(4, 3))
    linear, relu, identity = model[0], model[2], model[3][0]
    freeze_batchnorm(model)
    assert model[0] is linear and model[2] is relu and model[3][0] is identity
    assert [type(m) for m in model.children()] == \
        [nn.Linear, FrozenBatchNorm1d, nn.ReLU, nn.Sequential]
    assert isinstance(model[3][1], FrozenBatchNorm1d)
    unfreeze_batchnorm(model)
    assert model[0] is linear and model[2] is relu and model[3][0] is identity
    assert isinstance(model[1], BatchNorm1d) and isinstance(model[3][1], BatchNorm1d)


def test_unfreeze_of_a_loaded_frozen_layer_trains_again():
    frozen = FrozenBatchNorm2d(3, eps=1e-3)
    bn = _trained(nn.BatchNorm2d(3, eps=1e-3), 2)
    frozen.load_state_dict(bn.state_dict())
    frozen.eval()
    back = unfreeze_batchnorm(frozen)
    assert back.eps == 1e-3 and not back.training and back.affine and back.track_running_stats
    assert [name for name, _ in back.named_parameters()] == ["weight", "bias"]
    x = torch.randn(4, 3, 2, 2)
    back.train()(x)
    bn.train()(x)
    torch.testing.assert_close(back.running_var, bn.running_var)
    assert int(back.num_batches_tracked) == 4


def test_an_affine_free_bn_round_trips_through_freezing():
    """Frozen from BN(affine=False) (weight 1, bias 0), unfrozen with affine=False: no
    parameters, the same statistics and eval outputs."""
    bn = _trained(nn.BatchNorm2d(3, affine=False), 2).eval()
    back = unfreeze_batchnorm(freeze_batchnorm(bn), affine=False)
    assert back.weight is None and back.bias is None and list(back.parameters()) == []
    torch.testing.assert_close(back.running_var, bn.running_var, rtol=0, atol=0)
    x = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(back(x), bn(x))
