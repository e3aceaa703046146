"""The layers are drop-ins for torch.nn.BatchNorm1d/2d/3d."""

import copy
import io
import os
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import batchnorm
from _shapes import bn_shapes
from batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from batchnorm.backends import registry
from batchnorm.backends.native import FUSED_UPDATE_MAX_NUMEL
from batchnorm.functional import BatchNormShapeError
from batchnorm.layers import _user_stacklevel

OURS = {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}
TORCH = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _pair(rank, channels, dtype, backend="auto", **kwargs):
    ours = OURS[rank](channels, backend=backend, dtype=dtype, **kwargs)
    theirs = TORCH[rank](channels, dtype=dtype, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _step(layer, x):
    x = x.detach().clone().requires_grad_()
    out = layer(x)
    grad_out = torch.cos(torch.arange(out.numel(), dtype=out.dtype)).reshape(out.shape)
    out.backward(grad_out)
    return out, x.grad


@pytest.mark.parametrize("backend", ["reference", "native", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(
    shape=bn_shapes(),
    momentum=st.sampled_from([0.1, 0.5, None]),
    affine=st.booleans(),
    track=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_torch_layers(backend, dtype, shape, momentum, affine, track, seed):
    torch.manual_seed(seed)
    ours, theirs = _pair(
        len(shape), shape[1], dtype, backend,
        momentum=momentum, affine=affine, track_running_stats=track,
    )
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 2)
            ours.bias.normal_()
        theirs.load_state_dict(ours.state_dict())
    for step in range(4):
        x = torch.randn(shape, dtype=dtype) * (step + 1) + step
        out, grad = _step(ours, x)
        want, want_grad = _step(theirs, x)
        torch.testing.assert_close(out, want, **TOL[dtype])
        torch.testing.assert_close(grad, want_grad, **TOL[dtype])
    if affine:
        torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **TOL[dtype])
        torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, **TOL[dtype])
    for name, buffer in theirs.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buffer, **TOL[dtype])
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, dtype=dtype)
    torch.testing.assert_close(ours(x), theirs(x), **TOL[dtype])


def test_channels_last_and_isinstance():
    ours, theirs = _pair(4, 8, torch.float32)
    x = torch.randn(4, 8, 5, 5).to(memory_format=torch.channels_last)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert isinstance(ours, nn.BatchNorm2d)
    assert isinstance(ours, nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("rank", [2, 4, 5])
def test_state_dict_round_trip_with_torch(rank):
    ours, theirs = _pair(rank, 6, torch.float32)
    shape = (4, 6) + (3,) * (rank - 2)
    for _ in range(3):
        ours(torch.randn(shape) * 2 + 1)
    theirs.load_state_dict(ours.state_dict(), strict=True)  # ours -> torch
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    back = OURS[rank](6)
    theirs(torch.randn(shape))  # torch moves on
    back.load_state_dict(theirs.state_dict(), strict=True)  # torch -> ours
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], value)
    # and through a file, as users save them
    buffer = io.BytesIO()
    torch.save(back.state_dict(), buffer)
    buffer.seek(0)
    theirs.load_state_dict(torch.load(buffer, weights_only=True))


def test_population_layer_state_and_torch_interop():
    layer = BatchNorm1d(3, estimator="population")
    batches = [torch.randn(n, 3) * 2 + 1 for n in (5, 9, 2)]
    for batch in batches:
        layer(batch)
    state = layer.state_dict()
    assert int(state["population_batches"]) == 3
    assert int(state["population_samples"]) == 16
    # torch ignores the two extra counters only when told to
    torch_layer = nn.BatchNorm1d(3)
    result = torch_layer.load_state_dict(state, strict=False)
    assert set(result.unexpected_keys) == {"population_batches", "population_samples"}
    torch.testing.assert_close(torch_layer.running_var, layer.running_var)
    # a torch state dict loads strictly into a population layer: statistics of unknown origin
    fresh = BatchNorm1d(3, estimator="population")
    fresh.load_state_dict(torch_layer.state_dict(), strict=True)
    assert int(fresh.population_batches) == 0
    torch.testing.assert_close(fresh.running_mean, layer.running_mean)


def test_deepcopy_and_repr():
    layer = BatchNorm2d(4, estimator="population", backend="reference")
    clone = copy.deepcopy(layer)
    assert clone.estimator == "population" and clone.backend == "reference"
    assert "estimator='population'" in repr(layer) and "backend='reference'" in repr(layer)
    assert repr(BatchNorm2d(4)) == repr(nn.BatchNorm2d(4))


def test_one_value_per_channel_names_layer_and_shape():
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\).*\(1, 3\)"):
        BatchNorm1d(3)(torch.randn(1, 3))
    # eval mode accepts a single example (after statistics exist), normalized by them
    layer = BatchNorm1d(3)
    layer(torch.randn(4, 3) * 2 + 1)
    layer.eval()
    x = torch.randn(1, 3)
    want = (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps)
    torch.testing.assert_close(layer(x), want * layer.weight + layer.bias)
    loaded = BatchNorm1d(3).eval()  # statistics from a state dict count too (no warning)
    loaded.load_state_dict(layer.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(loaded(x), layer(x))


@pytest.mark.parametrize(
    ("layer", "shape", "match"),
    [
        (BatchNorm2d(3), (4, 3, 5), r"BatchNorm2d\(3\): expected 4D input, got 3D"),
        (BatchNorm1d(3), (4, 3, 5, 5), r"BatchNorm1d\(3\): expected 2D or 3D input"),
        (BatchNorm1d(3), (3,), r"BatchNorm1d\(3\): expected 2D or 3D input, got 1D"),
        (BatchNorm2d(3), (4, 2, 2, 2), r"BatchNorm2d\(3\): expected 3 channels.*2 channels"),
        (BatchNorm2d(3), (4, 5, 2, 2), r"BatchNorm2d\(3\): expected 3 channels.*5 channels"),
        (BatchNorm3d(2), (2, 2, 2, 2), r"BatchNorm3d\(2\): expected 5D input"),
    ],
)
def test_bad_shapes(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(shape))


def test_empty_batch_in_eval_mode_is_fine():
    layer = BatchNorm1d(3)
    layer(torch.randn(4, 3))
    layer.eval()
    assert layer(torch.randn(0, 3)).shape == (0, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(num_features=0), ValueError, "num_features must be positive"),
        (dict(num_features=2.0), TypeError, "num_features must be an int"),
        (dict(num_features=2, momentum=1.5), ValueError, "momentum must be in"),
        (dict(num_features=2, estimator="median"), ValueError, "estimator must be one of"),
        (dict(num_features=2, estimator="ema", momentum=None), ValueError, "estimator 'ema' needs"),
        (dict(num_features=2, backend="cuda-magic"), ValueError, "unknown backend"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    """Each error names the class being built (BatchNorm2d) and what is wrong."""
    with pytest.raises(error, match=rf"^BatchNorm2d: {match}"):
        BatchNorm2d(**kwargs)


def test_non_finite_batch_is_skipped_and_counted():
    layer = BatchNorm1d(2)
    layer(torch.randn(8, 2))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    bad = torch.randn(8, 2)
    bad[3, 0] = float("nan")
    out = layer(bad)
    assert torch.isnan(out[:, 0]).all() and torch.isfinite(out[:, 1]).all()
    torch.testing.assert_close(layer.running_mean, before["running_mean"])
    torch.testing.assert_close(layer.running_var, before["running_var"])
    assert int(layer.skipped_updates) == 1
    assert int(layer.num_batches_tracked) == 2  # torch counts every training call
    assert "skipped_updates" not in layer.state_dict()  # keeps torch's keys


def test_eval_before_statistics_warns_or_raises():
    layer = BatchNorm2d(3).eval()
    no_statistics = r"BatchNorm2d\(3\) is in eval mode but has tracked no"
    with pytest.warns(UserWarning, match=no_statistics) as record:
        layer(torch.randn(2, 3, 4, 4))
    message = str(record[0].message)  # what it would use, and the three ways out
    assert "normalize with the initial running_mean=0, running_var=1." in message
    assert "Train it, load a state dict, or call batchnorm.recompute_statistics(" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(torch.randn(2, 3, 4, 4))  # warned once per layer
    population = BatchNorm2d(3, estimator="population").eval()
    with pytest.raises(RuntimeError, match="recompute_statistics"):
        population(torch.randn(2, 3, 4, 4))
    # without running statistics eval mode uses batch statistics, as in torch
    BatchNorm2d(3, track_running_stats=False).eval()(torch.randn(2, 3, 4, 4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_input_keeps_float32_statistics(dtype):
    layer = BatchNorm2d(4)
    x = (torch.randn(8, 4, 6, 6) * 0.5 + 50).to(dtype)
    out = layer(x)
    assert out.dtype == dtype and layer.running_mean.dtype == torch.float32
    x64 = x.double()
    expected_mean = 0.9 * 0 + 0.1 * x64.mean(dim=(0, 2, 3))
    torch.testing.assert_close(layer.running_mean.double(), expected_mean, rtol=1e-6, atol=1e-6)


def test_momentum_none_is_cumulative_average():
    layer = BatchNorm1d(3, momentum=None)
    batches = [torch.randn(6, 3) * (i + 1) for i in range(5)]
    for batch in batches:
        layer(batch)
    means = torch.stack([b.mean(0) for b in batches])
    variances = torch.stack([b.var(0) for b in batches])
    torch.testing.assert_close(layer.running_mean, means.mean(0))
    torch.testing.assert_close(layer.running_var, variances.mean(0))


def test_public_api():
    assert set(batchnorm.__all__) >= {
        "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm",
        "batchnormalize", "fold", "recompute_statistics",
    }


def test_overflowing_variance_is_skipped_on_every_path():
    """Finite input whose variance overflows float32 must not reach the running stats."""
    for backend in ("auto", "native", "reference"):
        layer = BatchNorm1d(2, backend=backend)
        x = torch.randn(8, 2)
        x[0, 0] = 3e19  # finite, but its square is not
        layer(x)
        assert torch.isfinite(layer.running_var).all(), backend
        assert int(layer.skipped_updates) == 1, backend


@pytest.mark.parametrize("estimator", ["population", "ema", "cumulative"])
def test_reset_running_stats_forgets_everything(estimator):
    """Back to a new layer's buffers, population counters included."""
    momentum = None if estimator == "cumulative" else 0.1
    layer = BatchNorm1d(3, estimator=estimator, momentum=momentum)
    for n in (5, 7):
        layer(torch.randn(n, 3) * 3 + 2)
    layer.reset_running_stats()
    fresh = BatchNorm1d(3, estimator=estimator, momentum=momentum)
    assert layer.state_dict().keys() == fresh.state_dict().keys()
    for name, value in fresh.state_dict().items():
        if name not in ("weight", "bias"):
            torch.testing.assert_close(layer.state_dict()[name], value, msg=name)
    # ... so that what it learns next is the new batches alone
    batch = torch.randn(6, 3) * 2 - 1
    layer(batch)
    if estimator == "population":
        assert int(layer.population_batches) == 1 and int(layer.population_samples) == 6
        torch.testing.assert_close(layer.running_mean, batch.mean(0))
        torch.testing.assert_close(layer.running_var, batch.var(0))
    # and a reset layer in eval mode knows it has no statistics
    layer.reset_running_stats()
    layer.eval()
    if estimator == "population":
        with pytest.raises(RuntimeError, match="tracked no statistics"):
            layer(batch)
    else:
        with pytest.warns(UserWarning, match="tracked no statistics"):
            layer(batch)


def test_repr_names_only_what_differs_from_torch():
    """momentum=None already says 'cumulative' (torch's convention): no estimator= for it."""
    assert "estimator" not in repr(BatchNorm1d(3, momentum=None))
    assert "estimator" not in repr(BatchNorm1d(3))
    population = repr(BatchNorm1d(3, estimator="population", backend="reference"))
    assert population.startswith("BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True")
    assert population.endswith("estimator='population', backend='reference')")


def test_momentum_bounds_are_inclusive_and_buffers_are_typed():
    for momentum in (0.0, 1.0):
        assert BatchNorm1d(3, momentum=momentum).momentum == momentum
    layer = BatchNorm2d(3, estimator="population", device="meta")
    for name in ("population_batches", "population_samples", "skipped_updates",
                 "num_batches_tracked"):
        buffer = getattr(layer, name)
        assert buffer.dtype == torch.long and buffer.device.type == "meta", name
    assert layer.weight.device.type == "meta" and layer.running_mean.device.type == "meta"
    assert "skipped_updates" not in layer.state_dict()


def test_eval_warning_points_at_the_caller_and_one_batch_is_enough():
    layer = BatchNorm1d(3).eval()
    with pytest.warns(UserWarning) as record:
        layer(torch.randn(4, 3))
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampolines add frames
        assert record[0].filename == __file__
    trained_once = BatchNorm1d(3)
    trained_once(torch.randn(4, 3))
    trained_once.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained_once(torch.randn(4, 3))


def test_strict_loading_still_refuses_unknown_keys():
    layer = BatchNorm1d(3)
    state = {**BatchNorm1d(3).state_dict(), "surprise": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="surprise"):
        layer.load_state_dict(state)
    with pytest.raises(RuntimeError, match="size mismatch"):
        layer.load_state_dict(BatchNorm1d(4).state_dict())
    assert layer.load_state_dict(state, strict=False).unexpected_keys == ["surprise"]


# --- the small-batch fast path (layers._BatchNorm._train_small) ---------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["identity", "sigmoid", "relu"])
def test_small_batch_fast_path_matches_the_general_path(monkeypatch, dtype, activation):
    """Same outputs, gradients, statistics and guard as the general path (forced by
    making the fast path decline), and it is taken for an eager (60, 100) batch."""
    from batchnorm.layers import _BatchNorm

    def build():
        torch.manual_seed(0)
        if activation == "identity":
            return BatchNorm1d(100, dtype=dtype)
        return batchnorm.BatchNormAct1d(100, activation=activation, dtype=dtype)

    fast, general = build(), build()
    calls = []
    train_small = _BatchNorm._train_small

    def spy(self, input, act):
        if self is general:
            return None
        out = train_small(self, input, act)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(_BatchNorm, "_train_small", spy)
    torch.manual_seed(1)
    batches = [torch.randn(60, 100, dtype=dtype) * 3 + 1 for _ in range(3)]
    bad = batches[1].clone()
    bad[7, 11] = float("inf")
    nan = batches[0].clone()
    nan[0, 0] = float("nan")
    for x in [batches[0], bad, batches[1], nan, batches[2]]:
        outs, grads = [], []
        for layer in (fast, general):
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            y.pow(2).sum().backward()
            outs.append(y)
            grads.append((xi.grad, layer.weight.grad, layer.bias.grad))
        torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0, equal_nan=True)
        for a, b in zip(grads[0], grads[1], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert calls and all(calls)
    for name in ("running_mean", "running_var", "num_batches_tracked", "skipped_updates"):
        torch.testing.assert_close(getattr(fast, name), getattr(general, name), rtol=0, atol=0)
    assert int(fast.skipped_updates) == 2 and int(fast.num_batches_tracked) == 5
    assert torch.isfinite(fast.running_mean).all() and torch.isfinite(fast.running_var).all()


def test_small_batch_fast_path_declines_what_it_does_not_cover():
    """Bad input still gets the general path's precise errors; other estimators and
    backends never take it."""
    layer = BatchNorm1d(100)
    assert layer._train_small(torch.randn(60, 100, dtype=torch.float16), "identity") is None
    assert layer._train_small(torch.randn(1, 100), "identity") is None
    assert layer._train_small(torch.randn(60, 99), "identity") is None
    assert BatchNorm1d(100, momentum=None)._train_small(torch.randn(60, 100), "identity") is None
    assert BatchNorm1d(100, backend="reference")._train_small(
        torch.randn(60, 100), "identity") is None  # fmt: skip
    with pytest.raises(ValueError, match="expected 100 channels"):
        layer(torch.randn(60, 99))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        layer(torch.randn(1, 100))
    layer.eps = 0.0
    with pytest.raises(ValueError, match="eps must be positive"):
        layer(torch.randn(60, 100))


# --- state the forward must refuse or honour (both sides of _forward's conditions) --------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("missing", ["running_mean", "running_var"])
def test_one_running_statistic_missing_is_refused_like_torch(one_thread, training, missing):
    """torch refuses a layer with one running statistic set to None (in both modes); so do
    we, naming the layer, before anything is counted or updated (a fast-path-sized batch)."""
    ours, theirs = _pair(2, 3, torch.float32)
    for layer in (ours, theirs):
        layer(torch.randn(8, 3) + 1)
        setattr(layer, missing, None)
        layer.train(training)
    kept = {k: v.clone() for k, v in ours.state_dict().items()}
    x = torch.randn(8, 3)
    with pytest.raises((ValueError, RuntimeError)):
        theirs(x)
    with pytest.raises(ValueError, match=r"^BatchNorm1d\(3\): running_mean and running_var must"):
        ours(x)
    for name, value in ours.state_dict().items():
        torch.testing.assert_close(value, kept[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("vector", ["running_mean", "running_var", "weight", "bias"])
def test_one_wrong_size_vector_raises_shape_error_naming_layer(one_thread, training, vector):
    """A (4,) vector on a 3-channel layer (the others right): BatchNormShapeError naming the
    layer, the vector and its shape, as torch raises a RuntimeError; nothing counted."""
    ours, theirs = _pair(2, 3, torch.float32)
    for layer in (ours, theirs):
        layer(torch.randn(8, 3))
        wrong = torch.ones(4)
        setattr(layer, vector, nn.Parameter(wrong) if vector in ("weight", "bias") else wrong)
        layer.train(training)
    x = torch.randn(8, 3)  # small: the training fast path's size
    with pytest.raises(RuntimeError):
        theirs(x)
    with pytest.raises(BatchNormShapeError, match=rf"^BatchNorm1d\(3\): {vector} has shape \(4,\)"):
        ours(x)
    assert int(ours.num_batches_tracked) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tracking_switched_off_after_construction_matches_torch(one_thread, dtype):
    """track_running_stats=False set on a trained layer (buffers kept): training uses batch
    statistics and leaves the buffers and the count alone; eval uses the kept buffers."""
    ours, theirs = _pair(2, 3, dtype)
    batches = [torch.randn(8, 3, dtype=dtype) * (i + 1) + i for i in range(5)]
    for i, x in enumerate(batches):
        if i == 2:
            ours.track_running_stats = theirs.track_running_stats = False
            frozen = {k: v.clone() for k, v in theirs.state_dict().items()}
        out, grad = _step(ours, x)
        want, want_grad = _step(theirs, x)
        torch.testing.assert_close(out, want, **TOL[dtype])
        torch.testing.assert_close(grad, want_grad, **TOL[dtype])
    for name, value in frozen.items():
        torch.testing.assert_close(ours.state_dict()[name], value, **TOL[dtype], msg=name)
    assert int(ours.num_batches_tracked) == 2
    ours.eval()
    theirs.eval()
    x = torch.randn(4, 3, dtype=dtype)
    torch.testing.assert_close(ours(x), theirs(x), **TOL[dtype])


def test_cumulative_average_leaves_out_empty_batches(one_thread):
    """momentum=None: the running statistics are the plain averages of the batches' means and
    unbiased variances; an empty batch (empty output) counts in num_batches_tracked, as in
    torch, but not in the average (it is counted in skipped_updates instead)."""
    layer = BatchNorm1d(3, momentum=None, dtype=torch.float64)
    batches = [torch.randn(n, 3, dtype=torch.float64) * (n + 1) + n for n in (4, 0, 6, 5, 0)]
    for x in batches:
        assert layer(x).shape == x.shape
    real = [x for x in batches if x.numel()]
    mean = torch.stack([x.mean(0) for x in real]).mean(0)
    var = torch.stack([x.var(0) for x in real]).mean(0)
    torch.testing.assert_close(layer.running_mean, mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.running_var, var, rtol=1e-12, atol=1e-12)
    assert int(layer.num_batches_tracked) == 5 and int(layer.skipped_updates) == 2


def test_empty_batch_with_moving_average_matches_torch(one_thread):
    ours, theirs = _pair(2, 3, torch.float64)
    for x in (torch.randn(6, 3, dtype=torch.float64) + 2, torch.randn(0, 3, dtype=torch.float64)):
        torch.testing.assert_close(ours(x), theirs(x), **TOL[torch.float64])
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, **TOL[torch.float64])
    assert int(ours.skipped_updates) == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_layer_rounds_like_the_float64_formula(one_thread, dtype):
    """A layer built in half precision (its parameters and buffers too): each output within
    one rounding (finfo.eps) of the paper's transform in float64 of the very same input
    values, and the running statistics the EMA of the batch statistics."""
    layer = BatchNorm1d(3, dtype=dtype)
    eps = torch.finfo(dtype).eps
    mean = torch.zeros(3, dtype=torch.float64)
    var = torch.ones(3, dtype=torch.float64)
    for step in range(3):
        x = (torch.randn(8, 3) * 3 + 100).to(dtype)  # large mean: where precision matters
        x64 = x.double()
        want = (x64 - x64.mean(0)) / torch.sqrt(x64.var(0, unbiased=False) + layer.eps)
        out = layer(x)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), want, rtol=eps, atol=eps, msg=f"step {step}")
        mean = 0.9 * mean + 0.1 * x64.mean(0)
        var = 0.9 * var + 0.1 * x64.var(0)
    torch.testing.assert_close(layer.running_mean.double(), mean, rtol=2 * eps, atol=2 * eps)
    torch.testing.assert_close(layer.running_var.double(), var, rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("training", [True, False])
def test_unknown_activation_is_refused_not_applied_as_identity(one_thread, training):
    """An activation set after construction to a name the package does not know: the
    forward refuses it with the known names (no silent identity on the fast path)."""
    layer = batchnorm.BatchNormAct1d(4)
    layer(torch.randn(8, 4))
    layer.activation = "gelu"
    layer.train(training)
    with pytest.raises(ValueError, match="activation must be one of"):
        layer(torch.randn(8, 4))


def test_fast_path_covers_exactly_the_in_kernel_update_sizes(one_thread):
    """The fast path takes training batches up to FUSED_UPDATE_MAX_NUMEL elements (the
    native in-kernel update's limit) and declines, doing nothing, above; both sides give
    torch's outputs and statistics."""
    channels = 4
    ours, theirs = _pair(2, channels, torch.float64)
    at_limit = torch.randn(FUSED_UPDATE_MAX_NUMEL // channels, channels, dtype=torch.float64)
    out = ours._train_small(at_limit, "identity")
    assert out is not None
    torch.testing.assert_close(out, theirs(at_limit), **TOL[torch.float64])
    above = torch.randn(FUSED_UPDATE_MAX_NUMEL // channels + 1, channels, dtype=torch.float64)
    above = above * 2 + 1
    assert ours._train_small(above, "identity") is None
    assert int(ours.num_batches_tracked) == 1
    torch.testing.assert_close(ours(above), theirs(above), **TOL[torch.float64])
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, **TOL[torch.float64])


def test_layer_runs_the_backend_it_names(one_thread, monkeypatch):
    """backend= selects the registered backend that computes the forward, in training and
    in eval (a registered spy around native's transform), with torch's numbers."""
    native = registry.get("native")
    seen = []

    def spy(input, weight, bias, running_mean, running_var, training, eps):
        seen.append(training)
        return native.forward(input, weight, bias, running_mean, running_var, training, eps)

    monkeypatch.setitem(registry._BACKENDS, "spy", registry.Backend("spy", spy))
    ours = BatchNorm1d(3, backend="spy", dtype=torch.float64)
    theirs = nn.BatchNorm1d(3, dtype=torch.float64)
    for x in (torch.randn(6, 3, dtype=torch.float64) + 1, torch.randn(6, 3, dtype=torch.float64)):
        torch.testing.assert_close(ours(x), theirs(x), **TOL[torch.float64])
    ours.eval()
    theirs.eval()
    x = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), **TOL[torch.float64])
    assert seen == [True, True, False]


def test_bias_false_keeps_a_weight_only_layer_like_torch(one_thread):
    ours, theirs = _pair(4, 3, torch.float64, bias=False)
    assert ours.bias is None and ours.weight is not None
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for step in range(2):
        x = torch.randn(2, 3, 2, 2, dtype=torch.float64) * (step + 1)
        out, grad = _step(ours, x)
        want, want_grad = _step(theirs, x)
        torch.testing.assert_close(out, want, **TOL[torch.float64])
        torch.testing.assert_close(grad, want_grad, **TOL[torch.float64])
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, **TOL[torch.float64])


def test_one_accumulated_update_is_enough_for_eval(one_thread):
    """accumulate_statistics applies one update on exit (num_batches_tracked 1, the layer's
    own flag restored): eval then uses those statistics silently, as torch would after one
    forward of the concatenated batch."""
    ours, theirs = _pair(2, 3, torch.float64)
    micro = [torch.randn(4, 3, dtype=torch.float64) * 2 + 1 for _ in range(2)]
    with batchnorm.accumulate_statistics(ours):
        for x in micro:
            ours(x)
    theirs(torch.cat(micro))
    assert int(ours.num_batches_tracked) == 1
    ours.eval()
    theirs.eval()
    x = torch.randn(4, 3, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(ours(x), theirs(x), **TOL[torch.float64])


def test_user_stacklevel_called_from_outside_the_package_points_at_the_caller():
    """From a line outside batchnorm and torch.nn the stacklevel is that line's own (1)."""
    with pytest.warns(UserWarning, match="here") as record:
        warnings.warn("here", stacklevel=_user_stacklevel())
    assert record[0].filename == __file__
