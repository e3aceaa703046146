"""batchnormalize, recompute_statistics and fold on small MLPs and convnets."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    algorithm2,
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


# --- reports, names and the graph rule of batchnormalize ----------------------------------


def test_report_str_gives_the_counts_the_fallback_and_every_entry():
    report = batchnorm.Report("fold", "sequential", changed=["body.1 -> body.0"],
                              left=[("head", "its input comes from a ReLU")],
                              untraceable="not traceable by torch.fx (TraceError: x)")
    lines = str(report).splitlines()
    assert lines[0] == "fold (sequential): 1 changed, 1 left"
    assert lines[1].split(";") == ["  not traceable by torch.fx (TraceError: x)",
                                   " used the nn.Sequential rule"]
    assert lines[2].split() == ["changed", "body.1", "->", "body.0"]
    assert lines[3].split(maxsplit=2) == ["left", "head:", "its input comes from a ReLU"]
    assert len(lines) == 4
    traced = batchnorm.Report("batchnormalize", "graph", changed=["fc"])
    assert str(traced).splitlines() == ["batchnormalize (graph): 1 changed, 0 left",
                                        "  changed  fc"]


class _ModuleThenFunction(nn.Module):
    """fc1 -> ReLU module -> fc2 -> torch.tanh -> out, in a custom forward."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4, dtype=torch.float64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 5, dtype=torch.float64)
        self.out = nn.Linear(5, 2, dtype=torch.float64)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(self.act(self.fc1(x)))))


def _normalized(h, eps):
    """BN in training mode with gamma = 1, beta = 0: batch mean, biased batch variance."""
    return (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + eps)


def test_batchnormalize_graph_puts_bn_on_wu_before_every_nonlinearity(one_thread):
    model = _ModuleThenFunction()
    result, report = batchnormalize(model, eps=1e-3, return_report=True)
    assert report.tool == "batchnormalize" and report.method == "graph"
    assert report.changed == ["fc1", "fc2"] and report.left == []
    assert "_ModuleThenFunction" in type(result).__name__  # says which model it came from
    assert result.training
    x = torch.randn(7, 3, dtype=torch.float64)
    h = torch.relu(_normalized(x @ model.fc1.weight.T, 1e-3))  # the bias is gone: beta's role
    h = torch.tanh(_normalized(h @ model.fc2.weight.T, 1e-3))
    want = h @ model.out.weight.T + model.out.bias
    torch.testing.assert_close(result(x), want, rtol=1e-10, atol=1e-12)


def test_batchnormalize_report_names_nested_sequential_layers():
    result, report = batchnormalize(convnet(), return_report=True)
    assert report.method == "graph+sequential"
    assert report.changed == ["0", "2.0"]
    assert str(report).startswith("batchnormalize (graph+sequential): 2 changed, 0 left")
    assert type(result) is nn.Sequential


def test_batchnormalize_new_names_skip_every_name_a_user_module_has():
    model = nn.Sequential()
    for name, module in [("a", nn.Linear(3, 3)), ("act_a", nn.ReLU()), ("a_bn", nn.Identity()),
                         ("b", nn.Linear(3, 3)), ("act_b", nn.Tanh()), ("b_bn", nn.Identity()),
                         ("b_bn_1", nn.Identity())]:
        model.add_module(name, module)
    result = batchnormalize(model)
    assert [name for name, _ in result.named_children()] == [
        "a", "a_bn_1", "act_a", "a_bn", "b", "b_bn_2", "act_b", "b_bn", "b_bn_1"]
    assert isinstance(result.a_bn_1, BatchNorm1d) and isinstance(result.b_bn_2, BatchNorm1d)
    assert all(isinstance(result.get_submodule(n), nn.Identity) for n in ("a_bn", "b_bn_1"))


def test_batchnormalize_new_bn_lives_on_the_layers_device_and_dtype():
    model = nn.Sequential(nn.Linear(3, 4, device="meta", dtype=torch.float64), nn.ReLU())
    bn = batchnormalize(model)[1]
    tensors = [*bn.parameters(), bn.running_mean, bn.running_var]
    assert all(t.device.type == "meta" and t.dtype == torch.float64 for t in tensors)


def test_batchnormalize_a_layer_reused_in_a_sequential_keeps_its_bias_elsewhere():
    """named_children() lists a reused module once: the rebuild must see every position."""
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # the second use feeds no nonlinearity
    result = batchnormalize(model)
    assert [type(m) for m in result] == [nn.Linear, BatchNorm1d, nn.ReLU, nn.Linear]
    assert result[0].bias is None
    assert result[3].bias is not None
    torch.testing.assert_close(result[3].bias, shared.bias)
    torch.testing.assert_close(result[0].weight, shared.weight)


def test_batchnormalize_leaves_a_layer_called_twice_once_and_goes_on():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.fc2 = nn.Linear(4, 4)

        def forward(self, x):
            return torch.tanh(self.fc2(torch.relu(self.fc(torch.relu(self.fc(x))))))

    result, report = batchnormalize(Twice(), return_report=True)
    assert report.changed == ["fc2"]
    assert len(report.left) == 1 and report.left[0][0] == "fc"
    assert "called at 2 places" in report.left[0][1]
    assert "BN after one call would change the others" in report.left[0][1]
    assert result.fc.bias is not None and not hasattr(result, "fc_bn")


def test_batchnormalize_gives_no_second_bn_to_a_layer_that_has_one():
    class PreNormalized(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)
            self.fc2 = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)  # reaches relu through the add, and has its own BN
            return torch.sigmoid(self.fc2(torch.relu(self.bn(y) + y)))

    result, report = batchnormalize(PreNormalized(), return_report=True)
    assert report.changed == ["fc2"]
    assert result.fc.bias is not None
    norms = [m for m in result.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 2  # the user's bn and the one for fc2


class Untraceable(nn.Module):
    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
            return self.body(x)
        return self.body(-x)


def test_batchnormalize_warning_says_what_is_missing_and_points_at_the_caller():
    """stacklevel: a warning names the line that called the tool, not one in algorithm2.py."""
    with pytest.warns(UserWarning, match=r"changed nothing: .* feeds a nonlinearity$") as record:
        _, report = batchnormalize(nn.Sequential(nn.Linear(3, 3)), return_report=True)
    assert record[0].filename != algorithm2.__file__
    assert report.untraceable is None
    with pytest.warns(UserWarning, match=r"feeds a nonlinearity \(not traceable") as record:
        _, report = batchnormalize(Untraceable(nn.Sequential(nn.Linear(3, 3))),
                                   return_report=True)
    assert record[0].filename != algorithm2.__file__
    assert report.method == "sequential" and "not traceable" in report.untraceable


# --- fold ---------------------------------------------------------------------------------


def _with_statistics(bn: nn.Module, batches: int = 5) -> nn.Module:
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2)
            bn.bias.normal_()
        bn.num_batches_tracked.fill_(batches)
    return bn.eval()


def test_fold_untraceable_model_folds_sequential_pairs(one_thread):
    shared = nn.Linear(4, 4, dtype=torch.float64)  # folded at 0, used unfolded at 3
    body = nn.Sequential(
        shared, _with_statistics(nn.BatchNorm1d(4, dtype=torch.float64)), nn.Tanh(),
        shared, nn.ReLU(),
        nn.Linear(4, 3, dtype=torch.float64), nn.BatchNorm1d(3, dtype=torch.float64),
    )  # the last BN never tracked statistics
    model = Untraceable(body).eval()
    with pytest.warns(UserWarning, match="never tracked statistics") as record:
        folded, report = fold(model, return_report=True)
    assert record[0].filename != algorithm2.__file__
    assert "'body.6'" in str(record[0].message)
    assert report.tool == "fold" and report.method == "sequential"
    assert "not traceable" in report.untraceable
    assert report.changed == ["body.1 -> body.0", "body.6 -> body.5"]
    assert report.untracked == ["body.6"]
    assert isinstance(folded.body[1], nn.Identity) and isinstance(folded.body[6], nn.Identity)
    x = torch.randn(6, 4, dtype=torch.float64)
    with torch.no_grad():
        for sample in (x, -x):
            torch.testing.assert_close(folded(sample), model(sample), rtol=1e-12, atol=1e-12)


def test_fold_fallback_pairs_only_adjacent_layers_when_one_is_reused(one_thread):
    shared = nn.Linear(4, 4, dtype=torch.float64)
    body = nn.Sequential(shared, nn.Tanh(), nn.Linear(4, 4, dtype=torch.float64), shared,
                         _with_statistics(nn.BatchNorm1d(4, dtype=torch.float64)))
    model = Untraceable(body).eval()  # the BN follows the reused layer, not the one at 2
    folded, report = fold(model, return_report=True)
    assert report.changed == ["body.4 -> body.3"]
    x = torch.randn(6, 4, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)


class _ScaledBatchNorm(nn.BatchNorm1d):
    def forward(self, input, scale=1.0):
        return super().forward(input) * scale


class _ManyReasons(nn.Module):
    """One BN of every kind fold must leave, and one it folds, last."""

    def __init__(self):
        super().__init__()
        for name in ("fc_act", "fc_kw", "fc_extra", "fc_e1", "fc_e2", "side", "fc_twice",
                     "fc_nostats", "fc_ok"):
            self.add_module(name, nn.Linear(4, 4, dtype=torch.float64))
        self.wide = nn.Linear(2, 3, dtype=torch.float64)
        self.relu = nn.ReLU()
        for name in ("pre", "bn_act", "bn_kw", "bn_shared", "bn_side", "bn_twice", "bn_ok"):
            self.add_module(name, _with_statistics(nn.BatchNorm1d(4, dtype=torch.float64)))
        self.bn_extra = _with_statistics(_ScaledBatchNorm(4, dtype=torch.float64))
        self.bn_wide = _with_statistics(nn.BatchNorm1d(2, dtype=torch.float64))
        self.bn_nostats = nn.BatchNorm1d(4, track_running_stats=False, dtype=torch.float64)

    def forward(self, x):
        z = self.side(x)
        out = (
            self.pre(x)
            + self.bn_act(self.relu(self.fc_act(x)))
            + self.bn_kw(input=self.fc_kw(x))
            + self.bn_extra(self.fc_extra(x), 2.0)
            + self.bn_shared(self.fc_e1(x)) + self.bn_shared(self.fc_e2(x))
            + self.bn_side(z) + z
            + self.bn_twice(self.fc_twice(x)) + self.fc_twice(x)
            + self.bn_nostats(self.fc_nostats(x))
        )
        wide = self.bn_wide(self.wide(x.view(-1, 2, 2))).flatten(1)  # BN over dim 1, not 3
        return out, wide, self.bn_ok(self.fc_ok(x))


def test_fold_leaves_each_bn_it_cannot_fold_with_the_reason(one_thread):
    model = _ManyReasons().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    folded, report = fold(model, example_inputs=(x,), return_report=True, rtol=1e-9, atol=0)
    assert report.method == "graph" and report.untraceable is None
    assert report.changed == ["bn_ok -> fc_ok"] and report.untracked == []
    assert isinstance(folded.bn_ok, nn.Identity)
    left = dict(report.left)
    assert set(left) == {"pre", "bn_act", "bn_kw", "bn_extra", "bn_shared", "bn_side",
                         "bn_twice", "bn_wide", "bn_nostats"}
    assert left["pre"].startswith("its input is not the output of a layer module")
    assert "not the output of a layer module" in left["bn_kw"]  # passed by keyword
    assert "comes from a ReLU, not a Linear/Conv" in left["bn_act"]
    assert left["bn_extra"].startswith("called with extra arguments")
    assert "called at 2 places" in left["bn_shared"]
    assert "side's output is also used elsewhere" in left["bn_side"]
    assert "fc_twice is called at 2 places" in left["bn_twice"]
    assert "3 outputs feed a BN of 2 features" in left["bn_wide"]
    assert "no running statistics (BN uses batch statistics" in left["bn_nostats"]
    assert [name for name, _ in report.left].count("bn_shared") == 2  # both calls
    with torch.no_grad():
        for want, got in zip(model(x), folded(x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_fold_warnings_say_why_nothing_folded_and_point_at_the_caller():
    nothing = "folded nothing: the model has no BN layer after a Linear/Conv"
    with pytest.warns(UserWarning, match=nothing) as record:
        fold(nn.Sequential(nn.Linear(3, 3)))
    assert record[0].filename != algorithm2.__file__
    with pytest.warns(UserWarning, match=r"folded nothing: not traceable") as record:
        fold(Untraceable(nn.Sequential(nn.Linear(3, 3))))
    assert record[0].filename != algorithm2.__file__
    model = nn.Sequential(nn.ReLU(), _with_statistics(nn.BatchNorm1d(3)), nn.Tanh(),
                          _with_statistics(nn.BatchNorm1d(3)))
    with pytest.warns(UserWarning, match="folded nothing") as record:
        _, report = fold(model, return_report=True)
    assert [name for name, _ in report.left] == ["1", "3"]
    entries = str(record[0].message).split("folded nothing: ", 1)[1].split("; ")
    assert [entry.split(": ", 1)[0] for entry in entries] == ["1", "3"]
    assert "comes from a ReLU" in entries[0] and "comes from a Tanh" in entries[1]


def test_fold_warns_about_untracked_statistics_only_and_names_the_layer():
    from collections import OrderedDict

    tracked = nn.Sequential(OrderedDict(fc=nn.Linear(3, 3), norm=_with_statistics(
        nn.BatchNorm1d(3), batches=1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, report = fold(tracked, return_report=True)
    assert report.untracked == [] and report.changed == ["norm -> fc"]
    fresh = nn.Sequential(OrderedDict(fc=nn.Linear(3, 3), norm=nn.BatchNorm1d(3)))
    with pytest.warns(UserWarning, match="never tracked statistics") as record:
        _, report = fold(fresh, return_report=True)
    message = str(record[0].message)
    assert record[0].filename != algorithm2.__file__ and "'norm'" in message
    assert "folding their initial mean 0 / variance 1" in message
    assert "Train them or call batchnorm.recompute_statistics" in message
    assert report.untracked == ["norm"] and report.changed == ["norm -> fc"]


def test_fold_without_affine_parameters(one_thread):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, dtype=torch.float64),
                          _with_statistics(nn.BatchNorm2d(3, affine=False, dtype=torch.float64)))
    folded = fold(model)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-12, atol=1e-12)
    assert isinstance(folded[1], nn.Identity)


def test_fold_float32_parameters_are_the_exact_fold_rounded_once(one_thread):
    """Folded in float64: each float32 parameter is within half an ulp of the exact value,
    even where BN's mean cancels a large bias (BN's mean tracks the bias it follows)."""
    layer = nn.Linear(32, 16)
    bn = nn.BatchNorm1d(16)
    with torch.no_grad():
        layer.bias.uniform_(900, 1100)
        bn.running_mean.copy_(layer.bias + torch.randn(16))
        bn.running_var.uniform_(1e-3, 1e-1)
        bn.weight.uniform_(0.5, 2)
        bn.bias.normal_()
        bn.num_batches_tracked.fill_(1)
    folded = fold(nn.Sequential(layer, bn))[0]
    weight, bias = reference.fold_linear(
        *(t.detach().double().numpy() for t in (layer.weight, layer.bias, bn.weight, bn.bias,
                                                bn.running_mean, bn.running_var)), bn.eps)
    for got, exact in ((folded.weight, weight), (folded.bias, bias)):
        assert got.dtype == torch.float32
        error = np.abs(got.detach().double().numpy() - exact)
        assert np.all(error <= 2.0**-24 * np.abs(exact)), error.max()


class _Offset(nn.Linear):
    """Wu + b + 0.1: not what BN can be folded into (the 0.1 escapes BN's scale)."""

    def forward(self, x):
        return super().forward(x) + 0.1


def _offset_model():
    bn = nn.BatchNorm1d(3)
    with torch.no_grad():  # output = 2 (Wu + b + 0.1) / sqrt(1 + eps) + 10, about 10
        bn.weight.fill_(2)
        bn.bias.fill_(10)
        bn.num_batches_tracked.fill_(1)
    return _Offset(4, 3), bn.eval()


def test_fold_check_uses_its_tolerances():
    layer, bn = _offset_model()
    model = nn.Sequential(layer, bn)
    x = torch.randn(8, 4)
    # folded: 2 (Wu + b) / sqrt(1 + eps) + 10 + 0.1, off by 0.2 / sqrt(1 + eps) - 0.1
    with pytest.raises(RuntimeError, match=r"differs from the original's by up to 0\.1 "):
        fold(model, example_inputs=(x,))  # 1 % of the output is far beyond rtol=1e-4
    fold(model, example_inputs=(x,), rtol=0.05)  # ... and within 5 %
    fold(model, example_inputs=(x,), rtol=0, atol=0.11)


def test_fold_check_compares_every_tensor_of_nested_outputs():
    layer, bn = _offset_model()

    class Nested(nn.Module):
        def __init__(self):
            super().__init__()
            self.plain = nn.Linear(4, 3)
            self.layer, self.bn = layer, bn

        def forward(self, x):
            return {"outputs": (self.plain(x), [self.bn(self.layer(x))])}

    with pytest.raises(RuntimeError, match="output 1 of the folded model differs"):
        fold(Nested(), example_inputs=(torch.randn(8, 4),))


# ---------------------------------------------------------------- the statistics pass (passes.py)

from batchnorm.passes import first_tensor, statistics_pass  # noqa: E402


def test_first_tensor_takes_the_input_of_every_batch_form():
    x, y = torch.randn(2, 3), torch.randn(2)
    assert first_tensor(x, "who") is x
    assert first_tensor((x, y), "who") is x
    assert first_tensor([x], "who") is x
    assert first_tensor({"image": x, "label": y}, "who") is x


@pytest.mark.parametrize(
    ("batch", "kind"),
    [((), "tuple"), ([], "list"), ({}, "dict"), (("text", torch.zeros(1)), "tuple"),
     ({"label": 3, "image": torch.zeros(1)}, "dict"), (np.zeros(3), "ndarray"), (None, "NoneType")],
)  # fmt: skip
def test_first_tensor_refuses_a_batch_without_a_leading_tensor(batch, kind):
    with pytest.raises(TypeError, match=rf"^caller: a batch must be a Tensor .*got {kind}$"):
        first_tensor(batch, "caller")


def _pass_model():
    return nn.Sequential(nn.Linear(3, 3), BatchNorm1d(3), nn.Dropout(0.5), nn.BatchNorm1d(3))


def test_statistics_pass_runs_bn_layers_in_training_and_everything_else_in_eval():
    model = _pass_model()
    modes = []
    model[2].register_forward_pre_hook(
        lambda module, args: modes.append([m.training for m in model.modules()]))
    seen = []
    batches = [torch.randn(4, 3), (torch.randn(5, 3), torch.zeros(5))]
    model.train()
    model[0].eval()  # a mixed model: every module gets its own mode back
    count = statistics_pass(model, [model[1], model[3]], batches, None,
                            lambda layer, x: seen.append((layer, x.shape[0])), "who")
    assert count == 2
    # root, Linear, BN, Dropout, BN: only the given BN layers train
    assert modes == [[False, False, True, False, True]] * 2
    assert [(layer is model[1], layer is model[3], n) for layer, n in seen] == \
        [(True, False, 4), (False, True, 4), (True, False, 5), (False, True, 5)]
    assert [m.training for m in model.modules()] == [True, False, True, True, True]
    assert all(not m._forward_pre_hooks for m in (model[1], model[3]))


def test_statistics_pass_observes_the_input_the_layer_gets():
    model = _pass_model()
    x = torch.randn(6, 3)
    got = []
    statistics_pass(model, [model[1]], [x], None, lambda layer, t: got.append(t.clone()), "who")
    torch.testing.assert_close(got[0], model[0](x), rtol=0, atol=0)


def test_statistics_pass_stops_after_num_batches_and_counts_what_it_ran():
    model = _pass_model()
    observed = []
    batches = iter([torch.randn(4, 3) for _ in range(5)])
    count = statistics_pass(model, [model[1]], batches, 2,
                            lambda layer, x: observed.append(x), "who")
    assert count == 2 and len(observed) == 2
    assert len(list(batches)) == 2  # the third batch was drawn to find the end, no more
    assert statistics_pass(model, [model[1]], [torch.randn(4, 3)] * 3, 3,
                           lambda layer, x: None, "who") == 3
    assert statistics_pass(model, [model[1]], [], None, lambda layer, x: None, "who") == 0


def test_statistics_pass_restores_modes_and_hooks_when_it_fails():
    model = _pass_model().eval()

    def observe(layer, x):
        raise RuntimeError("planted")

    with pytest.raises(RuntimeError, match="planted"):
        statistics_pass(model, [model[1]], [torch.randn(4, 3)], None, observe, "who")
    assert not any(m.training for m in model.modules())
    assert not model[1]._forward_pre_hooks
    with pytest.raises(TypeError, match=r"^who: a batch must be"):
        statistics_pass(model, [model[1]], ["text"], None, lambda layer, x: None, "who")
    assert not any(m.training for m in model.modules()) and not model[1]._forward_pre_hooks


def test_statistics_pass_sees_a_layer_called_with_a_keyword_input():
    """A custom forward calling ``bn(input=h)``: the pass observes h, and recompute_statistics
    gives the statistics of h (not a crash on an empty positional tuple)."""

    class KeywordCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.bn = nn.Linear(3, 3), BatchNorm1d(3)

        def forward(self, x):
            return self.bn(input=self.linear(x))

    model = KeywordCall()
    x = torch.randn(8, 3) * 2 + 1
    got = []
    statistics_pass(model, [model.bn], [x], None, lambda layer, t: got.append(t.clone()), "who")
    torch.testing.assert_close(got[0], model.linear(x), rtol=0, atol=0)
