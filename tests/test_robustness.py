"""Nothing silently wrong: extreme magnitudes, skipped batches, old checkpoints,
interrupted Algorithm 2 passes, integer-like arguments, the meta device."""

from __future__ import annotations

import os
import stat
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import BatchNorm1d, BatchNorm2d, recompute_statistics
from batchnorm import functional as bnf
from batchnorm.backends import auto
from batchnorm.files import write_text

SHAPE = (8, 3, 16, 16)  # one shape class: each generated kernel compiles once
# ATen's own statistics overflow float32 above about this magnitude at this size
# (its variance sum is stored in float32); the generated kernels rescale before squaring.
ATEN_RANGE = 1e15


def _inputs(magnitude: float, kind: str, channels_last: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(np.log10(magnitude)) + 40)
    noise = torch.randn(SHAPE, generator=g)
    if kind == "spread":  # zero mean, std = magnitude
        x = noise * magnitude
    elif kind == "offset":  # large mean, small spread: the cancellation case
        x = magnitude + noise * magnitude * 1e-3
    else:  # channels of very different magnitudes in one tensor
        scales = torch.tensor([magnitude, 1.0, 1e-3]).view(1, 3, 1, 1)
        x = noise * scales + torch.tensor([0.0, 1e3, -5.0]).view(1, 3, 1, 1)
    x = x.float()
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _truth(x: torch.Tensor, eps: float = 1e-5):
    x64 = x.double()
    var, mean = torch.var_mean(x64, dim=(0, 2, 3), correction=0)
    return (x64 - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps), mean, var


def _error(x, backend):
    y, _, var, _ = bnf.normalize(x, None, None, None, None, True, 1e-5, backend)
    want, _, want_var = _truth(x)
    out = float((y.double() - want).abs().max())
    # relative, except below float32's smallest normal number, where var is reported as
    # float32 (the contract) and cannot hold the value
    tiny = torch.finfo(torch.float32).tiny
    var_error = float(((var.double() - want_var).abs() / want_var.clamp_min(tiny)).max())
    return out, var_error


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("kind", ["spread", "offset", "mixed"])
@pytest.mark.parametrize("magnitude", [1e-20, 1e-6, 1.0, 1e6, 1e15, 1e19])
def test_every_backend_against_float64_truth(magnitude, kind, channels_last):
    x = _inputs(magnitude, kind, channels_last)
    assert torch.isfinite(x).all()
    errors = {name: _error(x, name) for name in ("compiled", "hybrid", "native", "reference")}
    for name in ("compiled", "hybrid"):  # the fast kernels: right over float32's whole range
        out, var_error = errors[name]
        assert out < 2e-5, (name, out)
        assert var_error < 1e-5, (name, var_error)
    if magnitude <= ATEN_RANGE and not (kind == "offset" and magnitude >= 1e6):
        for name in ("native", "reference"):
            assert errors[name][0] < 1e-3, (name, errors[name])
    # auto never trades correctness for speed: from the call that picks a generated
    # kernel on, it is at least as right as ATen on the same input
    auto.reset()
    for _ in range(auto.SIGHTINGS + 1):
        out, _ = _error(x, "auto")
        assert out <= max(errors["native"][0], 2e-5) or out < 2e-5, (out, errors["native"])


def test_the_reported_nan_case_is_finite_and_right():
    """randn * 1e19 made the hybrid backend (auto's choice from call 3) return NaN.

    (The first calls run ATen, whose float32 variance sum overflows at this size: its
    output is finite but zero, and the layer skips those updates as non-finite.)"""
    x = torch.randn(16, 8, 64, 64, generator=torch.Generator().manual_seed(0)) * 1e19
    layer = BatchNorm2d(8)
    auto.reset()
    for _ in range(auto.SIGHTINGS + 1):
        y = layer(x)
        assert torch.isfinite(y).all()
    assert float((y.double() - _truth(x)[0]).abs().max()) < 2e-5
    assert torch.isfinite(layer.running_var).all()
    assert int(layer.skipped_updates) < int(layer.num_batches_tracked)


def test_cumulative_average_ignores_a_skipped_batch():
    """Batch means 1, NaN, 11: the average of the finite batches is 6, not 4.33."""
    for backend in ("auto", "reference"):
        layer = BatchNorm1d(1, momentum=None, backend=backend)
        for mean in (1.0, float("nan"), 11.0):
            layer(torch.tensor([[mean - 1.0], [mean + 1.0]]))
        assert float(layer.running_mean) == pytest.approx(6.0), backend
        assert int(layer.num_batches_tracked) == 3 and int(layer.skipped_updates) == 1


def test_old_torch_state_dict_without_num_batches_tracked_loads_silently():
    source = nn.BatchNorm2d(4)
    source.train()
    source(torch.randn(8, 4, 3, 3) * 2 + 1)
    state = {k: v for k, v in source.state_dict().items() if k != "num_batches_tracked"}
    x = torch.randn(2, 4, 3, 3)
    source.eval()
    for estimator in ("ema", "population"):
        layer = BatchNorm2d(4, estimator=estimator)
        layer.load_state_dict(state)
        layer.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.testing.assert_close(layer(x), source(x))


def test_fresh_layer_in_eval_still_warns():
    layer = BatchNorm1d(3).eval()
    with pytest.warns(UserWarning, match="tracked no statistics"):
        layer(torch.randn(4, 3))


def _snapshot(model):
    return {name: b.clone() for name, b in model.named_buffers()}


@pytest.mark.parametrize("failure", ["batch of one", "interrupt", "nothing finite"])
def test_recompute_statistics_is_all_or_nothing(failure):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3),
                          nn.BatchNorm1d(3))
    model.train()
    for _ in range(3):
        model(torch.randn(16, 4))
    before = _snapshot(model)

    def batches():
        yield torch.randn(16, 4)
        yield torch.randn(16, 4) + 3
        if failure == "batch of one":
            yield torch.randn(1, 4)
        elif failure == "interrupt":
            raise KeyboardInterrupt

    source = batches() if failure != "nothing finite" else [torch.full((4, 4), float("nan"))]
    with pytest.raises((ValueError, KeyboardInterrupt)):
        recompute_statistics(model, source)
    after = _snapshot(model)
    assert after.keys() == before.keys()
    for name in before:
        assert torch.equal(after[name], before[name]) or (
            torch.isnan(before[name]).all() and torch.isnan(after[name]).all()), name
    assert model.training


def test_integer_like_num_features_and_nan_eps():
    layer = BatchNorm2d(np.int64(3))
    assert layer.num_features == 3 and type(layer.num_features) is int
    with pytest.raises(TypeError, match="num_features must be an int"):
        BatchNorm2d(3.0)
    with pytest.raises(ValueError, match="eps must be positive"):
        batchnorm.batch_norm(torch.randn(4, 3), None, None, training=True, eps=float("nan"))


def test_meta_device_eval_works_like_torch():
    layer = BatchNorm2d(4, device="meta").eval()
    y = layer(torch.empty(2, 4, 3, 3, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 4, 3, 3)


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
