"""BatchNormAct1d/2d: act(BN(x) [+ r]) layers with torch-compatible state dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import BatchNormAct1d, BatchNormAct2d
from batchnorm import functional as bnf

ACT = {"identity": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}


def test_exported():
    assert {"BatchNormAct1d", "BatchNormAct2d"} <= set(batchnorm.__all__)


@pytest.mark.parametrize(
    ("fused", "plain", "shape"),
    [(BatchNormAct1d, nn.BatchNorm1d, (6, 4)), (BatchNormAct2d, nn.BatchNorm2d, (3, 4, 5, 5))],
)
def test_state_dict_is_torch_batch_norm(fused, plain, shape):
    layer, reference = fused(4, activation="sigmoid"), plain(4)
    assert isinstance(layer, plain)
    assert list(layer.state_dict()) == list(reference.state_dict())
    reference.train()(torch.randn(shape))
    layer.load_state_dict(reference.state_dict())
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(layer.state_dict()[key], value)
    reference.load_state_dict(layer.state_dict())


# "compiled" fuses the activation into its kernels; two cases (each compiles its own).
FUSED_CASES = [
    (backend, activation, with_residual)
    for backend in ("native", "reference")
    for activation in ("identity", "relu", "sigmoid")
    for with_residual in (False, True)
] + [("compiled", "relu", True), ("compiled", "identity", False)]


@pytest.mark.parametrize(("backend", "activation", "with_residual"), FUSED_CASES)
def test_fused_layer_equals_torch_float64_then_activation(backend, activation, with_residual):
    """act(BN(x) + r): outputs, gradients and running statistics after two steps, against
    torch.nn.BatchNorm2d in float64 and the activation applied after it (the running
    statistics are torch's own, not this project's update)."""
    torch.manual_seed(2)
    x = torch.randn(4, 3, 5, 6) * 2 + 1
    r = torch.randn(4, 3, 5, 6) if with_residual else None
    layer = BatchNormAct2d(3, activation=activation, backend=backend, momentum=0.3)
    plain = nn.BatchNorm2d(3, momentum=0.3, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    plain.load_state_dict({k: v.double() if v.is_floating_point() else v
                           for k, v in layer.state_dict().items()})  # fmt: skip
    for step in range(2):
        xs = (x * (step + 1)).requires_grad_(True)
        rs = None if r is None else r.clone().requires_grad_(True)
        got = layer(xs, rs)
        x64 = xs.detach().double().requires_grad_(True)
        r64 = None if r is None else r.double().requires_grad_(True)
        want = ACT[activation](plain(x64) + (r64 if r64 is not None else 0))
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    inputs = [xs, layer.weight, layer.bias] + ([rs] if rs is not None else [])
    want_inputs = [x64, plain.weight, plain.bias] + ([r64] if r64 is not None else [])
    grad = torch.randn(got.shape, dtype=torch.float64)
    grads = torch.autograd.grad(got, inputs, grad.float())
    want_grads = torch.autograd.grad(want, want_inputs, grad)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(layer, name).double(), getattr(plain, name),
                                   rtol=1e-6, atol=1e-6)  # fmt: skip
    assert int(layer.num_batches_tracked) == int(plain.num_batches_tracked) == 2
    layer.eval()
    plain.eval()
    with torch.no_grad():
        want = ACT[activation](plain(x.double()) + (r.double() if r is not None else 0))
        torch.testing.assert_close(layer(x, r).double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("activation", "with_residual", "channels_last"),
    [("relu", True, False), ("sigmoid", False, True)],
)
def test_compiled_fused_equals_plain(activation, with_residual, channels_last):
    """The generated kernel with the activation (and residual) inside, forward and backward."""
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    r = torch.randn(4, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    r = r if with_residual else None
    fused = BatchNormAct2d(3, activation=activation, backend="compiled", dtype=torch.float64)
    plain = BatchNormAct2d(3, activation=activation, backend="reference", dtype=torch.float64)
    with torch.no_grad():
        fused.weight.uniform_(0.5, 1.5)
        plain.weight.copy_(fused.weight)
    got, want = fused(x, r), plain(x, r)
    assert got.stride() == x.stride()
    torch.testing.assert_close(got, want)
    grad = torch.randn_like(got)
    params = [x, fused.weight, fused.bias] + ([r] if r is not None else [])
    ref_params = [x, plain.weight, plain.bias] + ([r] if r is not None else [])
    for g, w in zip(
        torch.autograd.grad(got, params, grad),
        torch.autograd.grad(want, ref_params, grad),
        strict=True,
    ):
        torch.testing.assert_close(g, w)
    torch.testing.assert_close(fused.running_mean, plain.running_mean)
    torch.testing.assert_close(fused.running_var, plain.running_var)
    fused.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(x, r), plain(x, r))


def test_mlp_layer_sigmoid():
    layer = BatchNormAct1d(5, activation="sigmoid")
    x = torch.randn(60, 5)
    y = layer(x)
    want = torch.sigmoid(nn.functional.batch_norm(x, None, None, training=True))
    torch.testing.assert_close(y, want)


def test_functional_validates():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="activation"):
        bnf.normalize(x, None, None, None, None, True, 1e-5, activation="tanh")
    with pytest.raises(ValueError, match="residual"):
        bnf.normalize(x, None, None, None, None, True, 1e-5, residual=torch.randn(4, 4))
    with pytest.raises(ValueError, match="activation"):
        BatchNormAct2d(3, activation="gelu")


def test_repr_and_eval_without_statistics_warns():
    layer = BatchNormAct2d(3, activation="relu")
    assert "activation='relu'" in repr(layer)
    with pytest.warns(UserWarning, match="tracked no statistics"):
        layer.eval()(torch.randn(2, 3, 4, 4))
