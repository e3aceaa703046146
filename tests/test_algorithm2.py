"""batchnormalize, recompute_statistics and fold on small MLPs and convnets."""

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    batchnormalize,
    fold,
    recompute_statistics,
    reference,
)


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 8), nn.Sigmoid(),
        nn.Linear(8, 8), nn.ReLU(),
        nn.Linear(8, 3),
    )


def convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
        nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Tanh()),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
    )


def test_batchnormalize_mlp():
    model = mlp()
    bn_model = batchnormalize(model, eps=1e-3)
    layers = list(bn_model)
    assert [type(m) for m in layers] == [
        nn.Flatten, nn.Linear, BatchNorm1d, nn.Sigmoid, nn.Linear, BatchNorm1d, nn.ReLU, nn.Linear
    ]
    assert layers[1].bias is None and layers[4].bias is None
    assert layers[7].bias is not None  # the output layer feeds no nonlinearity
    assert layers[2].eps == 1e-3 and layers[2].num_features == 8
    torch.testing.assert_close(layers[1].weight, model[1].weight)
    assert model[1].bias is not None  # the input model is untouched
    assert bn_model(torch.randn(5, 3, 4)).shape == (5, 3)


def test_batchnormalize_convnet_nested():
    bn_model = batchnormalize(convnet())
    assert isinstance(bn_model[1], BatchNorm2d) and bn_model[0].bias is None
    inner = list(bn_model[3])
    assert isinstance(inner[1], BatchNorm2d) and inner[0].groups == 2
    assert bn_model(torch.randn(3, 2, 6, 6)).shape == (3, 5)


def test_batchnormalize_reads_custom_forward_and_warns_when_nothing_changes():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x):
            return torch.relu(self.linear(x))

    result = batchnormalize(Custom())
    assert isinstance(result.get_submodule("linear_bn"), BatchNorm1d)
    assert result.linear.bias is None
    with pytest.warns(UserWarning, match="changed nothing: no Linear/Conv1d/Conv2d/Conv3d"):
        unchanged = batchnormalize(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    assert not any(isinstance(m, BatchNorm1d) for m in unchanged.modules())


def _train(model, steps=20, shape=(16, 2, 6, 6)):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        loss = model(torch.randn(shape) * 2 + 1).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("make", [mlp, convnet])
def test_fold_equals_eval_model(make):
    shape = (16, 12) if make is mlp else (16, 2, 6, 6)
    model = _train(batchnormalize(make()), shape=shape)
    with torch.no_grad():  # give BN non-trivial affine parameters
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 2)
                module.bias.normal_()
    model.eval()
    folded = fold(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x = torch.randn(32, *shape[1:])
    with torch.no_grad():
        want, got = model(x), folded(x)
    relative = (got - want).abs().max() / want.abs().max()
    assert relative < 1e-5


def test_fold_matches_oracle_and_handles_torch_layers():
    linear = nn.Linear(4, 3)
    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
        bn.num_batches_tracked.fill_(10)  # statistics from somewhere: no warning
    folded = fold(nn.Sequential(linear, bn))[0]
    weight, bias = reference.fold_linear(
        linear.weight.detach().numpy(), linear.bias.detach().numpy(),
        bn.weight.detach().numpy(), bn.bias.detach().numpy(),
        bn.running_mean.numpy(), bn.running_var.numpy(), bn.eps,
    )
    np.testing.assert_allclose(folded.weight.detach().numpy(), weight, rtol=1e-6)
    np.testing.assert_allclose(folded.bias.detach().numpy(), bias, rtol=1e-5, atol=1e-6)


def test_fold_keeps_bn_without_statistics():
    model = nn.Sequential(nn.Linear(3, 3), BatchNorm1d(3, track_running_stats=False))
    with pytest.warns(UserWarning, match="folded nothing: 1: no running statistics"):
        assert isinstance(fold(model)[1], BatchNorm1d)


def _collect_bn_inputs(model, batches):
    """The inputs each BN layer sees with frozen weights and batch statistics."""
    seen = {}
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    hooks = [
        layer.register_forward_pre_hook(
            lambda module, inputs: seen.setdefault(module, []).append(inputs[0].detach().clone())
        )
        for layer in layers
    ]
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    for layer in layers:
        layer.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    for hook in hooks:
        hook.remove()
    model.load_state_dict(snapshot)
    return layers, seen


@pytest.mark.parametrize("torch_layers", [False, True])
def test_recompute_statistics_is_exact_population(torch_layers):
    model = _train(batchnormalize(convnet()))
    if torch_layers:  # the same network with torch's own BN layers
        for parent in model.modules():
            for name, child in parent.named_children():
                if isinstance(child, BatchNorm2d):
                    replacement = nn.BatchNorm2d(child.num_features)
                    replacement.load_state_dict(child.state_dict())
                    setattr(parent, name, replacement)
    model.add_module("dropout", nn.Dropout(0.5))  # must be off during the pass
    batches = [torch.randn(n, 2, 6, 6) * 2 + 1 for n in (8, 3, 5, 8)]
    layers, inputs = _collect_bn_inputs(model, batches)
    weights_before = [p.clone() for p in model.parameters()]
    model.train()
    recompute_statistics(model, [(b, torch.zeros(len(b))) for b in batches])
    assert model.training and model.dropout.training  # modes restored
    for layer in layers:
        mean, var = reference.population_statistics([t.double().numpy() for t in inputs[layer]])
        np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-5, atol=1e-6)
    for before, after in zip(weights_before, model.parameters(), strict=True):
        torch.testing.assert_close(before, after)


def test_recompute_statistics_num_batches_and_errors():
    model = batchnormalize(mlp(), estimator="population")
    batches = (torch.randn(10, 12) for _ in range(100))
    recompute_statistics(model, batches, num_batches=3)
    assert int(model[2].population_batches) == 3 and int(model[2].population_samples) == 30
    model.eval()
    model(torch.randn(4, 12))  # population layers now have statistics
    with pytest.raises(ValueError, match="no batches"):
        recompute_statistics(model, [])
    with pytest.raises(ValueError, match="no BN layer"):
        recompute_statistics(mlp(), [torch.randn(4, 12)])
    with pytest.raises(ValueError, match="num_batches must be at least 1"):
        recompute_statistics(model, [torch.randn(4, 12)], num_batches=0)


def test_exports():
    assert batchnorm.fold is fold


def test_recompute_statistics_counts_the_batches_it_pooled():
    """num_batches_tracked grows by the batches seen, for torch's and our layers alike."""
    model = _train(batchnormalize(convnet()))
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    before = [int(layer.num_batches_tracked) for layer in layers]
    assert min(before) > 0
    recompute_statistics(model, [torch.randn(n, 2, 6, 6) for n in (4, 6, 5)])
    assert [int(layer.num_batches_tracked) for layer in layers] == [b + 3 for b in before]
    population = batchnormalize(mlp(), estimator="population")
    recompute_statistics(population, (torch.randn(10, 12) for _ in range(100)), num_batches=4)
    bns = [m for m in population.modules() if isinstance(m, BatchNorm1d)]
    assert bns and all(int(bn.num_batches_tracked) == 4 for bn in bns)
    recompute_statistics(population, [torch.randn(10, 12)] * 2)
    assert all(int(bn.num_batches_tracked) == 6 for bn in bns)
    assert all(int(bn.population_batches) == 2 for bn in bns)
