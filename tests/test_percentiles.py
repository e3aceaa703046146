"""track_percentiles against torch.quantile and numpy on known inputs."""

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import BatchNorm1d, BatchNorm2d, track_percentiles


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Identity(), BatchNorm1d(3), nn.Sigmoid())


def test_known_values_exactly():
    model = _model()
    tracker = track_percentiles(model, "1", unit=1, q=(0, 25, 50, 100))
    x = torch.zeros(5, 3)
    x[:, 1] = torch.tensor([4.0, 0.0, 2.0, 1.0, 3.0])  # sorted 0..4: percentiles are exact
    model(x)
    assert tracker.records == [(0, (0.0, 1.0, 2.0, 4.0))]


def test_against_torch_quantile_and_numpy():
    model = _model()
    tracker = track_percentiles(model, "1", unit=2)
    batches = [torch.randn(n, 3) * 3 + 1 for n in (7, 64, 2, 33)]
    for x in batches:
        model(x)
    assert tracker.steps == [0, 1, 2, 3]
    expected = torch.stack([torch.quantile(x[:, 2].double(),
                                           torch.tensor([0.15, 0.5, 0.85], dtype=torch.float64))
                            for x in batches])
    torch.testing.assert_close(tracker.as_tensor(), expected, rtol=0, atol=1e-12)
    numpy = np.stack([np.percentile(x[:, 2].double().numpy(), (15, 50, 85)) for x in batches])
    np.testing.assert_allclose(tracker.as_tensor().numpy(), numpy, rtol=0, atol=1e-12)


def test_output_of_a_conv_bn_layer_over_all_positions():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), BatchNorm2d(2), nn.ReLU())
    tracker = track_percentiles(model, "1", unit=1, q=(50,), where="output")
    x = torch.randn(4, 1, 6, 6)
    out = model[1](model[0](x))  # recorded too: the hook is on the module
    model(x)
    values = out[:, 1].reshape(-1).double()
    assert tracker.as_tensor().shape == (2, 1)
    torch.testing.assert_close(tracker.as_tensor()[1, 0], torch.quantile(values, 0.5),
                               rtol=1e-6, atol=1e-6)


def test_every_training_only_and_remove():
    model = _model()
    tracker = track_percentiles(model, "2", unit=0, every=2, training_only=True)
    for _ in range(5):
        model(torch.randn(8, 3))
    model.eval()
    model(torch.randn(8, 3))  # not recorded, not counted
    model.train()
    model(torch.randn(8, 3))
    assert tracker.steps == [0, 2, 4]
    tracker.remove()
    model(torch.randn(8, 3))
    assert tracker.steps == [0, 2, 4] and not model[2]._forward_hooks
    with track_percentiles(model, "1", unit=0) as scoped:
        model(torch.randn(8, 3))
    model(torch.randn(8, 3))
    assert scoped.steps == [0]
    assert track_percentiles(model, "0", 0).as_tensor().shape == (0, 3)


def test_bad_arguments():
    model = _model()
    with pytest.raises(ValueError, match="no submodule 'nope'"):
        track_percentiles(model, "nope", 0)
    with pytest.raises(ValueError, match="unit must be"):
        track_percentiles(model, "1", -1)
    with pytest.raises(ValueError, match="q must be percentages"):
        track_percentiles(model, "1", 0, q=(0.5, 150))
    with pytest.raises(ValueError, match="where must be"):
        track_percentiles(model, "1", 0, where="grad")
    with pytest.raises(ValueError, match="every must be"):
        track_percentiles(model, "1", 0, every=0)
    track_percentiles(model, "1", unit=3)
    with pytest.raises(ValueError, match="has no unit 3 along dim 1"):
        model(torch.randn(4, 3))
    assert batchnorm.track_percentiles is track_percentiles
