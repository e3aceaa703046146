"""torch 2.13 parity: PyTorch's own BatchNorm tests, ported to run with our classes.

Ported (by intent, not copied), each running our class next to torch's with the
same state and comparing outputs, gradients and buffers:

* ``torch/testing/_internal/common_modules.py``: every BatchNorm1d/2d/3d
  ``ModuleInput`` (default, simple average, momentum, not affine, not tracking
  stats, 3d input, zero batch, ``bias=False``), in training and eval, as
  ``test_modules.py``'s ``test_forward``/``test_repr``/``test_pickle``/
  ``test_factory_kwargs``/``test_memory_format``/``test_if_train_and_eval_modes_differ``
  would run them;
* ``test/test_nn.py``: ``test_batchnorm_update_stats``,
  ``test_batchnorm_buffer_update_when_stats_are_not_tracked``,
  ``test_batchnorm_raises_error_if_{running_mean,running_var,weight,bias}_is_not_same_size_as_input``
  (a RuntimeError), ``test_batchnorm_grad`` (gradcheck and gradgradcheck, float64),
  ``test_batchnorm_nhwc_cpu``, ``test_batchnorm_non_contig_cpu``, the eps checks;
* ``test/nn/test_load_state_dict.py``: loading a version-1 state dict without
  ``num_batches_tracked`` (``test_load_state_dict_BC``).

Not ported: CUDA/cuDNN/MIOpen cases (no GPU here), the lazy modules (we have no
LazyBatchNorm), and ``test_batchnorm_{half,bfloat16}_overflow`` on CPU: our
``auto`` backend computes reduced-precision CPU training in float32 on purpose
(tests/test_functional.py), so it deliberately differs from ATen there.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle

import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

pytestmark = pytest.mark.usefixtures("one_thread")

OURS = {"BatchNorm1d": BatchNorm1d, "BatchNorm2d": BatchNorm2d, "BatchNorm3d": BatchNorm3d}
THEIRS = {"BatchNorm1d": nn.BatchNorm1d, "BatchNorm2d": nn.BatchNorm2d,
          "BatchNorm3d": nn.BatchNorm3d}  # fmt: skip

# (class, constructor args, constructor kwargs, input shape, desc): common_modules' entries.
MODULE_INPUTS = [
    ("BatchNorm1d", (10,), {}, (4, 10), "default"),
    ("BatchNorm1d", (5,), {}, (4, 5, 3), "3d_input"),
    ("BatchNorm1d", (10, 1e-3, None), {}, (4, 10), "affine_simple_average"),
    ("BatchNorm1d", (10, 1e-3, 0.3, False), {}, (4, 10), "not_affine"),
    ("BatchNorm1d", (10, 1e-3, 0.3, True, False), {}, (4, 10), "not_tracking_stats"),
    ("BatchNorm1d", (5, 1e-3, 0.3, False), {}, (4, 5, 3), "3d_input_not_affine"),
    ("BatchNorm1d", (5, 1e-3, 0.3, False), {}, (0, 5, 9), "zero_batch"),
    ("BatchNorm1d", (10,), {"bias": False}, (4, 10), "affine_not_bias"),
    ("BatchNorm2d", (3,), {}, (2, 3, 6, 6), "default"),
    ("BatchNorm2d", (3, 1e-3, None), {}, (2, 3, 6, 6), "2d_simple_average"),
    ("BatchNorm2d", (3, 1e-3, 0.8), {}, (2, 3, 6, 6), "momentum"),
    ("BatchNorm2d", (3, 1e-3, 0.8, False), {}, (2, 3, 6, 6), "not_affine"),
    ("BatchNorm2d", (3, 1e-3, 0.8, True, False), {}, (2, 3, 6, 6), "not_tracking_stats"),
    ("BatchNorm2d", (5, 1e-3, 0.3, False), {}, (0, 5, 2, 2), "zero_batch"),
    ("BatchNorm2d", (3,), {"bias": False}, (2, 3, 6, 6), "affine_not_bias"),
    ("BatchNorm3d", (3,), {}, (2, 3, 4, 4, 4), "default"),
    ("BatchNorm3d", (3, 1e-3, None), {}, (2, 3, 4, 4, 4), "3d_simple_average"),
    ("BatchNorm3d", (3, 1e-3, 0.7), {}, (2, 3, 4, 4, 4), "momentum"),
    ("BatchNorm3d", (3, 1e-3, 0.7, False), {}, (2, 3, 4, 4, 4), "not_affine"),
    ("BatchNorm3d", (3, 1e-3, 0.7, True, False), {}, (2, 3, 4, 4, 4), "not_tracking_stats"),
    ("BatchNorm3d", (5, 1e-3, 0.3, False), {}, (0, 5, 2, 2, 2), "zero_batch"),
    ("BatchNorm3d", (3,), {"bias": False}, (2, 3, 4, 4, 4), "affine_not_bias"),
]
IDS = [f"{name}-{desc}" for name, *_, desc in MODULE_INPUTS]


def _pair(name, args, kwargs, dtype=torch.float64):
    torch.manual_seed(0)
    theirs = THEIRS[name](*args, **kwargs, dtype=dtype)
    if theirs.weight is not None:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            if theirs.bias is not None:
                theirs.bias.uniform_(-1, 1)
    ours = OURS[name](*args, **kwargs, dtype=dtype)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _run(module, x, weight_out):
    x = x.clone().requires_grad_(True)
    y = module(x)
    params = [x, *module.parameters()]
    grads = torch.autograd.grad((y * weight_out).sum(), params, allow_unused=True)
    return y.detach(), grads


@pytest.mark.parametrize(("name", "args", "kwargs", "shape", "desc"), MODULE_INPUTS, ids=IDS)
def test_module_inputs_forward_backward_and_buffers_equal_torch(name, args, kwargs, shape, desc):
    """test_modules.py's test_forward (and its gradient checks) with torch as the oracle:
    three training steps then eval, float64."""
    ours, theirs = _pair(name, args, kwargs)
    for step in range(4):
        training = step < 3
        ours.train(training), theirs.train(training)
        x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
        weight_out = torch.randn(shape, dtype=torch.float64)
        y_o, g_o = _run(ours, x, weight_out)
        y_t, g_t = _run(theirs, x, weight_out)
        torch.testing.assert_close(y_o, y_t)
        for a, b in zip(g_o, g_t, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                torch.testing.assert_close(a, b)
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, msg=key)


@pytest.mark.parametrize(("name", "args", "kwargs", "shape", "desc"), MODULE_INPUTS, ids=IDS)
def test_module_inputs_repr_state_dict_pickle_and_factory_kwargs(name, args, kwargs, shape, desc):
    """test_repr, test_pickle, test_factory_kwargs: same keys, repr, dtypes; pickles."""
    ours, theirs = _pair(name, args, kwargs, dtype=torch.float32)
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert ours.state_dict()[key].dtype == value.dtype, key
    again = pickle.loads(pickle.dumps(ours))
    x = torch.randn(shape)
    torch.testing.assert_close(again(x), copy.deepcopy(ours)(x))
    meta = OURS[name](*args, **kwargs, device="meta", dtype=torch.float64)
    assert all(t.device.type == "meta" for t in meta.state_dict().values())
    assert meta.running_mean is None or meta.running_mean.dtype == torch.float64
    assert meta.num_batches_tracked is None or meta.num_batches_tracked.dtype == torch.long


def test_signature_is_torchs_plus_keywords():
    """Every parameter of torch 2.13's constructor, in order and kind, then ours."""
    for name in OURS:
        theirs = list(inspect.signature(THEIRS[name]).parameters.values())
        ours = list(inspect.signature(OURS[name]).parameters.values())
        assert [(p.name, p.kind, p.default) for p in ours[: len(theirs)]] == [
            (p.name, p.kind, p.default) for p in theirs
        ]
        assert {p.name for p in ours[len(theirs):]} == {"estimator", "backend"}
        with pytest.raises(TypeError):
            OURS[name](3, 1e-5, 0.1, True, True, None, None, False)  # bias is keyword-only


def test_bias_false_keeps_weight_and_trains_like_torch():
    ours, _ = _pair("BatchNorm2d", (3,), {"bias": False})
    assert ours.bias is None and ours.weight is not None
    assert "bias=False" in repr(ours)
    fused = batchnorm.fused.BatchNormAct2d(3, bias=False)
    assert fused.bias is None and "bias" not in fused.state_dict()


@pytest.mark.parametrize("name", list(OURS))
def test_zero_batch_in_training_is_torchs(name):
    """Empty output, zero gradients for weight and bias, num_batches_tracked counted,
    statistics untouched."""
    shape = {"BatchNorm1d": (0, 3), "BatchNorm2d": (0, 3, 2, 2),
             "BatchNorm3d": (0, 3, 2, 2, 2)}[name]  # fmt: skip
    ours, theirs = _pair(name, (3,), {})
    for module in (ours, theirs):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        y = module(x)
        y.sum().backward()
        assert y.shape == shape
        torch.testing.assert_close(module.weight.grad, torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(module.bias.grad, torch.zeros(3, dtype=torch.float64))
        assert int(module.num_batches_tracked) == 1
        torch.testing.assert_close(module.running_mean, torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(module.running_var, torch.ones(3, dtype=torch.float64))


def test_eps_is_checked_by_the_forward_as_torch_does():
    """eps=0 constructs and runs in eval (an eval-only model keeps working); a training
    forward needs eps > 0 and eval eps >= 0, as torch.nn.functional.batch_norm checks."""
    x = torch.randn(4, 3)
    for eps in (0.0, -1.0):
        for cls in (nn.BatchNorm1d, BatchNorm1d):
            layer = cls(3, eps=eps)
            with pytest.raises(ValueError, match="eps must be positive during training"):
                layer(x)
            layer.load_state_dict(nn.BatchNorm1d(3).state_dict())
            layer.eval()
            if eps == 0.0:
                torch.testing.assert_close(layer(x), x)
            else:
                with pytest.raises(ValueError, match="eps must be non-negative"):
                    layer(x)


@pytest.mark.parametrize("vector", ["running_mean", "running_var", "weight", "bias"])
@pytest.mark.parametrize("training", [True, False])
def test_wrong_size_vectors_raise_a_runtime_error(vector, training):
    """test_batchnorm_raises_error_if_*_is_not_same_size_as_input: a RuntimeError (ours is
    also a ValueError naming the layer)."""
    for cls in (nn.BatchNorm1d, BatchNorm1d):
        layer = cls(3).train(training)
        layer.num_batches_tracked.fill_(1)
        bad = torch.zeros(5) if "running" in vector else nn.Parameter(torch.ones(5))
        setattr(layer, vector, bad)
        with pytest.raises(RuntimeError):
            layer(torch.randn(4, 3))
    with pytest.raises(ValueError, match=rf"BatchNorm1d\(3\): {vector} has shape \(5,\)"):
        layer(torch.randn(4, 3))


def test_update_stats_and_buffers_when_not_tracked():
    """test_batchnorm_update_stats and ..._buffer_update_when_stats_are_not_tracked:
    counts, statistics, and no update (batch statistics used) with track_running_stats
    switched off after construction, and eval with running buffers set to None."""
    ours, theirs = _pair("BatchNorm2d", (3,), {"momentum": None})
    for _ in range(3):
        x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
        ours(x), theirs(x)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    assert int(ours.num_batches_tracked) == 3
    for module in (ours, theirs):
        module.track_running_stats = False
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    before = copy.deepcopy(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))
    for key, value in before.items():
        torch.testing.assert_close(ours.state_dict()[key], value)
    for module in (ours, theirs):  # eval with the buffers dropped: batch statistics
        module.eval()
        module.running_mean = module.running_var = None
    torch.testing.assert_close(ours(x), theirs(x))


def test_gradcheck_and_gradgradcheck_float64():
    """test_batchnorm_grad: first and second derivatives, training and eval."""
    layer = BatchNorm2d(3, dtype=torch.float64)
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    for training in (True, False):
        layer.train(training)
        layer.num_batches_tracked.fill_(1)
        stats = {k: v.clone() for k, v in layer.named_buffers()}

        def fn(inp, w, b, layer=layer, stats=stats):  # fresh buffers: updates stay local
            state = {k: v.clone() for k, v in stats.items()} | {"weight": w, "bias": b}
            return torch.func.functional_call(layer, state, (inp,))

        w = layer.weight.detach().clone().requires_grad_(True)
        b = layer.bias.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(fn, (x, w, b))
        assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_channels_last_and_non_contiguous_input():
    """test_batchnorm_nhwc_cpu / test_batchnorm_non_contig_cpu / test_memory_format:
    same values as torch, output in the input's memory format."""
    ours, theirs = _pair("BatchNorm2d", (4,), {}, dtype=torch.float32)
    x = torch.randn(3, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    y = ours(x)
    torch.testing.assert_close(y, theirs(x))
    assert y.is_contiguous(memory_format=torch.channels_last)
    z = torch.randn(3, 5, 4, 5).transpose(1, 2)  # non-contiguous NCHW view
    torch.testing.assert_close(ours(z), theirs(z))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)


def test_train_and_eval_modes_differ_and_to_dtype():
    """test_if_train_and_eval_modes_differ; test_to: buffers follow .to(dtype), the
    counter stays long."""
    layer = BatchNorm1d(3)
    x = torch.randn(6, 3) * 3 + 2
    assert not torch.allclose(layer(x), layer.eval()(x))
    layer.double()
    assert layer.running_mean.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.long
    assert layer.skipped_updates.dtype == torch.long


def test_load_version_1_state_dict_without_num_batches_tracked():
    """test_load_state_dict_BC: a version-1 dict (no num_batches_tracked) loads, keeping
    the counter torch keeps, into our layer as into torch's."""
    source = nn.BatchNorm2d(3)
    source(torch.randn(4, 3, 2, 2))
    state = source.state_dict()
    del state["num_batches_tracked"]
    state._metadata[""]["version"] = 1
    for cls in (nn.BatchNorm2d, BatchNorm2d):
        layer = cls(3)
        layer.load_state_dict(copy.deepcopy(state))
        assert int(layer.num_batches_tracked) == 0
        torch.testing.assert_close(layer.running_mean, source.running_mean)


def test_torch_save_load_roundtrip_of_the_module():
    layer = BatchNorm2d(3, estimator="population")
    layer(torch.randn(4, 3, 2, 2))
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(again.running_var, layer.running_var)
    assert again.estimator == "population"
