"""convert, fold and batchnormalize on models of the kinds people have.

The blocks are written for this project after the usual designs: a ResNet basic
block and bottleneck, a MobileNetV2/EfficientNet inverted residual with a
squeeze-excitation branch, a network mixing activation modules and functional
activations, and a model torch.fx cannot trace (for the fallback).
"""

from __future__ import annotations

import copy
import io
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import batchnorm
from batchnorm import BatchNorm1d, BatchNorm2d, Report, batchnormalize, convert, fold


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, bn: bool = True) -> None:
        super().__init__()
        norm = nn.BatchNorm2d if bn else (lambda c: nn.Identity())
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
        self.bn2 = norm(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not bn), norm(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class PaddedConv2d(nn.Conv2d):
    """'Same' padding computed in forward (as TensorFlow-ported models do): still Wu + b."""

    def forward(self, x):
        pad = self.kernel_size[0] // 2
        x = F.pad(x, (pad, pad, pad, pad))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = torch.sigmoid(self.expand(F.silu(self.reduce(scale))))
        return x * scale


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand_conv = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn0 = nn.BatchNorm2d(hidden)
        self.depthwise = PaddedConv2d(hidden, hidden, 3, groups=hidden, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, max(1, channels // 4))
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = F.relu6(self.bn0(self.expand_conv(x)))
        out = F.silu(self.bn1(self.depthwise(out)))
        out = self.se(out)
        return x + self.bn2(self.project(out))


class Net(nn.Module):
    """A small model of the real kind: stem, residual stages, SE block, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.block = InvertedResidual(16, 2)
        self.layer3 = Bottleneck(16, 8, 24)
        self.head = nn.Linear(24, 10)
        self.head_bn = nn.BatchNorm1d(10)

    def forward(self, x):
        x = self.layer3(self.block(self.layer2(self.layer1(self.stem(x)))))
        return self.head_bn(self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


BN_LAYERS = 14  # each follows a conv or linear layer whose output nothing else uses


def trained(model: nn.Module, shape=(16, 3, 8, 8), steps: int = 3) -> nn.Module:
    """A few training steps so that every BN has non-trivial statistics and affine values."""
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = model(torch.randn(shape) * 1.5 + 0.5).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model


def count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# --- convert ------------------------------------------------------------------------------


def test_convert_swaps_every_torch_bn_and_keeps_state():
    torch.manual_seed(1)
    model = trained(Net()).eval()
    x = torch.randn(4, 3, 8, 8)
    want = model(x)
    params_before = {name: p for name, p in model.named_parameters()}
    state_before = copy.deepcopy(model.state_dict())
    converted = convert(model, backend="native")
    assert converted is model  # in place, like convert_sync_batchnorm
    ours = [m for m in model.modules() if isinstance(m, (BatchNorm1d, BatchNorm2d))]
    assert len(ours) == BN_LAYERS == count(model, nn.modules.batchnorm._BatchNorm)
    assert all(type(m) in (BatchNorm1d, BatchNorm2d) for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert all(not m.training and m.backend == "native" for m in ours)
    # the same parameter objects (an optimizer built before keeps working), same state
    assert {name: p for name, p in model.named_parameters()}.keys() == params_before.keys()
    assert all(p is params_before[name] for name, p in model.named_parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key
    assert torch.equal(model(x), want)  # bit-identical: ATen underneath


def test_convert_training_is_bit_identical_and_round_trips():
    torch.manual_seed(2)
    theirs = trained(Net())
    ours = convert(copy.deepcopy(theirs), backend="native")
    x = torch.randn(8, 3, 8, 8)
    assert torch.equal(ours(x), theirs(x))  # training mode: batch statistics + update
    for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    back = batchnorm.convert_to_torch(ours)
    assert all(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in back.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm))
    back.load_state_dict(theirs.state_dict())


def test_convert_keeps_device_dtype_mode_grad_and_options():
    layer = nn.BatchNorm2d(3, momentum=None, track_running_stats=True).double().eval()
    layer.weight.requires_grad_(False)
    new = convert(layer, estimator="population")  # the root itself is a BN layer
    assert type(new) is BatchNorm2d and new.estimator == "population"
    assert new.weight.dtype == torch.float64 and not new.weight.requires_grad
    assert not new.training and new.momentum is None
    untracked = convert(nn.BatchNorm1d(4, affine=False, track_running_stats=False))
    assert untracked.running_mean is None and untracked.weight is None
    assert untracked(torch.randn(5, 4)).shape == (5, 4)


# --- fold ---------------------------------------------------------------------------------


@pytest.mark.parametrize("convert_first", [False, True])
def test_fold_finds_every_bn_in_custom_forward_methods(convert_first):
    torch.manual_seed(3)
    model = trained(Net())
    if convert_first:
        model = convert(model)
    x = torch.randn(6, 3, 8, 8)
    folded, report = fold(model, example_inputs=(x,), return_report=True)
    assert isinstance(report, Report) and report.method == "graph"
    assert len(report.changed) == BN_LAYERS, str(report)
    assert count(folded, nn.modules.batchnorm._BatchNorm) == 0
    assert type(folded) is Net  # the user's class and forward are kept
    model.eval()
    with torch.no_grad():
        want, got = model(x), folded(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max())
    assert model.block.bn1 is not folded.block.bn1  # the input model is untouched
    assert count(model, nn.modules.batchnorm._BatchNorm) == BN_LAYERS


def test_fold_leaves_what_it_cannot_fold_and_says_why():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.pre = nn.BatchNorm2d(2)
            self.side = nn.Conv2d(2, 4, 1)
            self.bn_side = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(self.pre(x))          # pre: its input is the network input
            z = self.side(x)
            return self.bn(y) + self.bn_side(z) + z  # side's output is used twice

    model = trained(Shared(), shape=(8, 2, 5, 5))
    x = torch.randn(3, 2, 5, 5)
    folded, report = fold(model, example_inputs=(x,), return_report=True)
    left = dict(report.left)
    assert report.changed == ["bn -> conv"]
    assert "not the output of a layer" in left["pre"]
    assert "also used elsewhere" in left["bn_side"]
    assert isinstance(folded.pre, nn.BatchNorm2d) and isinstance(folded.bn, nn.Identity)


def test_fold_warns_when_nothing_folds_and_on_untracked_statistics():
    with pytest.warns(UserWarning, match="folded nothing"):
        fold(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    fresh = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    with pytest.warns(UserWarning, match="never tracked statistics"):
        fold(fresh)


def test_fold_checks_its_result_on_example_inputs():
    class NotLinear(nn.Conv2d):
        def forward(self, x):  # not a Wu + b map: folding BN into it changes the output
            return torch.tanh(super().forward(x))

    model = trained(nn.Sequential(NotLinear(2, 3, 3), nn.BatchNorm2d(3)), shape=(8, 2, 5, 5))
    with pytest.raises(RuntimeError, match="not a plain Wu"):
        fold(model, example_inputs=(torch.randn(4, 2, 5, 5),))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 2))

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: torch.fx cannot trace it
            return self.body(x)
        return self.body(-x)


def test_fold_falls_back_to_the_sequential_rule():
    model = trained(Untraceable(), shape=(16, 4))
    x = torch.randn(5, 4)
    folded, report = fold(model, example_inputs=(x,), return_report=True)
    assert report.method == "sequential" and "not traceable" in report.untraceable
    assert report.changed == ["body.1 -> body.0"]
    assert isinstance(folded.body[1], nn.Identity)


# --- batchnormalize -----------------------------------------------------------------------


class Mixed(nn.Module):
    """Module and functional activations, a residual add, an output layer."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(3, 8, 1)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 16)
        self.out = nn.Linear(16, 5)

    def forward(self, x):
        h = self.act1(self.conv1(x))
        h = F.relu(self.conv2(h) + self.shortcut(x))
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)
        h = torch.sigmoid(self.fc1(h))
        h = self.fc2(h).tanh()
        return self.out(h)


def test_batchnormalize_custom_forward_functional_activations_and_residuals():
    torch.manual_seed(4)
    model = Mixed()
    result, report = batchnormalize(model, eps=1e-3, return_report=True)
    assert report.method == "graph"
    assert sorted(report.changed) == ["conv1", "conv2", "fc1", "fc2", "shortcut"]
    assert isinstance(result, torch.fx.GraphModule) and isinstance(result, nn.Module)
    assert isinstance(result.get_submodule("conv2_bn"), BatchNorm2d)
    assert isinstance(result.get_submodule("fc1_bn"), BatchNorm1d)
    assert result.get_submodule("fc1_bn").eps == 1e-3
    assert result.conv2.bias is None and result.shortcut.bias is None  # beta replaces b
    assert result.out.bias is not None  # the output layer feeds no nonlinearity
    assert model.conv1.bias is not None  # the input is untouched
    # the BN sits on Wu: with gamma=1, beta=0 each BN output channel has mean ~0, var ~1
    seen = {}
    hook = result.get_submodule("conv2_bn").register_forward_hook(
        lambda _m, _i, out: seen.setdefault("out", out))
    x = torch.randn(16, 3, 6, 6)
    result(x).sum().backward()
    hook.remove()
    mean = seen["out"].mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    # a user can keep training it, save it and load it
    buffer = io.BytesIO()
    torch.save(result.state_dict(), buffer)
    buffer.seek(0)
    again = batchnormalize(Mixed(), eps=1e-3)
    again.load_state_dict(torch.load(buffer, weights_only=True))
    result.eval()
    again.eval()
    torch.testing.assert_close(again(x), result(x))


def test_batchnormalize_resnet_block_without_bn():
    block = BasicBlock(4, 8, stride=2, bn=False)
    result, report = batchnormalize(block, return_report=True)
    # conv1 -> relu; conv2 and the shortcut conv -> add -> relu
    assert sorted(report.changed) == ["conv1", "conv2", "shortcut.0"]
    assert result(torch.randn(4, 4, 8, 8)).shape == (4, 8, 4, 4)


def test_batchnormalize_keeps_sequential_models_and_names():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    result, report = batchnormalize(model, return_report=True)
    assert type(result) is nn.Sequential and report.changed == ["0"]
    assert [type(m) for m in result] == [nn.Linear, BatchNorm1d, nn.ReLU, nn.Linear]


def test_batchnormalize_never_replaces_a_users_module_of_the_same_name():
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(2, 8, 3))
    model.add_module("relu", nn.ReLU())
    model.add_module("conv_bn", nn.BatchNorm2d(8))
    model.add_module("head", nn.Flatten())
    result = batchnormalize(model)
    names = [name for name, _ in result.named_children()]
    assert names == ["conv", "conv_bn_1", "relu", "conv_bn", "head"]
    assert count(result, nn.modules.batchnorm._BatchNorm) == 2


def test_batchnormalize_shared_layer_is_left_with_a_reason():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return F.relu(self.fc(F.relu(self.fc(x))))

    with pytest.warns(UserWarning, match="changed nothing"):
        _, report = batchnormalize(Twice(), return_report=True)
    assert report.left == [("fc", "called at 2 places; BN after one call would change the "
                                  "others")]


def test_batchnormalize_untraceable_model_uses_the_sequential_rule():
    model = Untraceable()
    model.body = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, report = batchnormalize(model, return_report=True)
    assert report.untraceable and report.changed == ["body.0"]
    assert isinstance(result.body[1], BatchNorm1d)
