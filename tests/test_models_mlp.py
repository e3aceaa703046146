"""The MNIST network of Figure 1: structure, initialization, pre-activations, Algorithm 2."""

import pytest
import torch
from torch import nn

from batchnorm import BatchNorm1d, batchnormalize, fold, recompute_statistics
from batchnorm.models import MLP, PAPER_SIZES, gaussian_init_

SMALL = (20, 8, 8, 8, 3)


def layer_types(model: nn.Module) -> list[type]:
    return [type(module) for module in model]


def test_paper_architecture_without_bn():
    model = MLP()
    assert PAPER_SIZES == (784, 100, 100, 100, 10)
    assert layer_types(model) == [nn.Linear, nn.Sigmoid] * 3 + [nn.Linear]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (784, 100), (100, 100), (100, 100), (100, 10)]
    assert all(m.bias is not None for m in linears)
    assert model(torch.rand(5, 784)).shape == (5, 10)


def test_bn_goes_before_each_sigmoid_and_replaces_the_bias():
    model = MLP(batch_norm=True)
    assert layer_types(model) == [nn.Linear, BatchNorm1d, nn.Sigmoid] * 3 + [nn.Linear]
    hidden = [m for m in model if isinstance(m, nn.Linear)][:-1]
    assert all(m.bias is None for m in hidden)
    assert model.output.bias is not None  # the output layer is Wu + b in both networks


def test_matches_batchnormalize_of_the_baseline():
    """Algorithm 2 step 1 applied to MLP() gives MLP(batch_norm=True), key for key."""
    made = MLP(SMALL, batch_norm=True)
    converted = batchnormalize(MLP(SMALL))
    assert {k: v.shape for k, v in made.state_dict().items()} == {
        k: v.shape for k, v in converted.state_dict().items()}
    assert layer_types(made) == layer_types(converted)


def test_same_seed_same_weights_with_and_without_bn():
    a = MLP(init_std=0.1, generator=torch.Generator().manual_seed(3))
    b = MLP(batch_norm=True, init_std=0.1, generator=torch.Generator().manual_seed(3))
    for name in ("linear1", "linear2", "linear3", "output"):
        assert torch.equal(getattr(a, name).weight, getattr(b, name).weight)
    assert torch.count_nonzero(a.linear1.bias) == 0
    assert torch.count_nonzero(a.output.bias) == 0
    assert a.linear1.weight.std().item() == pytest.approx(0.1, rel=0.02)
    assert a.linear1.weight.mean().item() == pytest.approx(0.0, abs=0.002)
    assert torch.equal(b.linear1_bn.weight, torch.ones(100))
    assert torch.equal(b.linear1_bn.bias, torch.zeros(100))


def test_gaussian_init_rejects_a_bad_std():
    with pytest.raises(ValueError, match="init std"):
        gaussian_init_(MLP(SMALL), 0.0)


@pytest.mark.parametrize("sizes", [(784,), (784, 0, 10), (784, 10.5, 10), (True, 10)])
def test_bad_sizes(sizes):
    with pytest.raises(ValueError, match="sizes"):
        MLP(sizes)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_preactivations_are_the_sigmoid_inputs(batch_norm):
    torch.manual_seed(0)
    model = MLP(SMALL, batch_norm=batch_norm, init_std=0.5)
    x = torch.rand(16, 20)
    logits, pre = model.forward_with_preactivations(x)
    assert torch.equal(logits, model(x))
    assert [p.shape for p in pre] == [(16, 8)] * 3
    # The last one by hand: Wu + b, or BN(Wu) with batch statistics (train mode).
    u = torch.sigmoid(pre[1])
    z = model.linear3(u)
    if batch_norm:
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + model.linear3_bn.eps)
    torch.testing.assert_close(pre[2], z, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.output(torch.sigmoid(pre[2])), logits)


def test_population_statistics_and_fold_work_on_it():
    torch.manual_seed(0)
    model = MLP(SMALL, batch_norm=True, init_std=0.5)
    batches = [torch.rand(12, 20) for _ in range(5)]
    recompute_statistics(model, batches)
    model.eval()
    folded = fold(model)
    assert not any(isinstance(m, BatchNorm1d) for m in folded)
    x = torch.rand(7, 20)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    logits, pre = folded.forward_with_preactivations(x)
    assert len(pre) == 3
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-5)


def test_torch_batchnorm_layer_can_be_used():
    model = MLP(SMALL, batch_norm=True, bn_layer=nn.BatchNorm1d, bn_kwargs={"eps": 1e-3})
    bns = [m for m in model if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 3
    assert not any(isinstance(m, BatchNorm1d) for m in bns)
    assert all(m.eps == 1e-3 for m in bns)
