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
    empty = track_percentiles(model, "0", 0).as_tensor()
    assert empty.shape == (0, 3) and empty.dtype == torch.float64


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


def _tracked_values(tracker, column: torch.Tensor, q=(15, 50, 85)) -> torch.Tensor:
    return torch.quantile(column.double(), torch.tensor(q, dtype=torch.float64) / 100)


def test_defaults_record_the_input_every_forward_in_eval_mode_too():
    """q = (15, 50, 85), where="input", every=1, training_only=False."""
    model = _model()
    tracker = track_percentiles(model, "1", 0)
    assert tracker.q == (15.0, 50.0, 85.0) and tracker.where == "input"
    xs = [torch.randn(9, 3) * 2 for _ in range(2)]
    model(xs[0])
    model.eval()
    model(xs[1])
    assert tracker.steps == [0, 1]
    expected = torch.stack([_tracked_values(tracker, x[:, 0]) for x in xs])
    torch.testing.assert_close(tracker.as_tensor(), expected, rtol=0, atol=1e-12)
    assert tracker.as_tensor().dtype == torch.float64
    assert all(isinstance(value, float) for _, values in tracker.records for value in values)


def test_every_third_forward_counted_from_zero():
    model = _model()
    tracker = track_percentiles(model, "1", 2, q=(50,), every=3)
    xs = [torch.randn(5, 3) for _ in range(7)]
    for x in xs:
        model(x)
    assert tracker.steps == [0, 3, 6]
    torch.testing.assert_close(tracker.as_tensor()[:, 0],
                               torch.stack([xs[i][:, 2].double().median() for i in (0, 3, 6)]),
                               rtol=0, atol=0)


def test_training_only_skips_eval_forwards_without_counting_them():
    model = nn.Sequential(nn.Identity(), nn.Identity())
    tracker = track_percentiles(model, "1", 0, q=(100,), training_only=True)
    x = torch.arange(12.0).reshape(4, 3)
    model.eval()
    model(x)
    model.train()
    model(x)
    assert tracker.records == [(0, (9.0,))]


def test_boundary_percentiles_and_a_3d_input_over_all_positions():
    model = nn.Sequential(BatchNorm1d(2))
    tracker = track_percentiles(model, "0", 1, q=[0, 100.0, 37.5])
    x = torch.randn(3, 2, 5) * 4
    model(x)
    column = x[:, 1].reshape(-1).double()
    expected = np.percentile(column.numpy(), (0, 100, 37.5))
    np.testing.assert_allclose(tracker.as_tensor()[0].numpy(), expected, rtol=0, atol=1e-12)
    assert tracker.q == (0.0, 100.0, 37.5)


def test_the_output_is_read_with_where_output():
    model = nn.Sequential(nn.Linear(3, 3))
    tracker = track_percentiles(model, "0", 1, q=(50,), where="output")
    x = torch.randn(7, 3)
    out = model(x).detach()
    assert tracker.records[0][1][0] == float(out[:, 1].double().median())


def test_context_manager_removes_the_hook_and_yields_the_tracker():
    model = _model()
    with track_percentiles(model, "1", 0) as tracker:
        assert isinstance(tracker, batchnorm.percentiles.PercentileTracker)
        assert model[1]._forward_hooks
    assert not model[1]._forward_hooks


class _TupleOut(nn.Module):
    def forward(self, x):
        return x, x


@pytest.mark.parametrize(
    ("where", "x", "match"),
    [("input", torch.randn(5), r"'0' input \(5,\) has no unit 0"),
     ("output", torch.randn(4, 3), r"'0' output tuple has no unit 0")],
)  # fmt: skip
def test_values_without_the_unit_are_refused_with_what_was_there(where, x, match):
    model = nn.Sequential(_TupleOut())
    track_percentiles(model, "0", 0, where=where)
    with pytest.raises(ValueError, match=match):
        model(x)


def test_a_missing_submodule_lists_the_names_there_are():
    model = nn.Sequential(*[nn.Identity() for _ in range(3)])
    with pytest.raises(ValueError, match=r"no submodule 'x'; the model has \['0', '1', '2'\]$"):
        track_percentiles(model, "x", 0)
    big = nn.Sequential(*[nn.Identity() for _ in range(13)])
    with pytest.raises(ValueError, match=r"\['0', .*'11'\] \.\.\.$") as info:
        track_percentiles(big, "x", 0)
    assert "'12'" not in str(info.value)
    exactly = nn.Sequential(*[nn.Identity() for _ in range(12)])
    with pytest.raises(ValueError, match=r"'11'\]$"):
        track_percentiles(exactly, "x", 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"unit": True}, "unit must be a non-negative int"),
     ({"unit": 1.0}, "unit must be a non-negative int"),
     ({"q": ()}, "q must be percentages in"),
     ({"q": (-0.5, 50)}, "q must be percentages in"),
     ({"q": (50, 100.5)}, "q must be percentages in"),
     ({"where": "Input"}, "where must be 'input' or 'output'"),
     ({"every": True}, "every must be a positive int"),
     ({"every": 2.0}, "every must be a positive int"),
     ({"every": -1}, "every must be a positive int")],
)  # fmt: skip
def test_bad_arguments_say_what_is_wrong(kwargs, match):
    arguments = {"unit": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        track_percentiles(_model(), "1", **arguments)


def test_unit_zero_and_every_one_are_accepted():
    model = _model()
    tracker = track_percentiles(model, "1", 0, every=1)
    model(torch.randn(4, 3))
    model(torch.randn(4, 3))
    assert tracker.steps == [0, 1]


def test_a_layer_called_with_a_keyword_input_is_recorded():
    """``layer(input=x)`` gives a forward hook no positional argument: the input is still read."""

    class KeywordCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = BatchNorm1d(3)

        def forward(self, x):
            return self.bn(input=x)

    model = KeywordCall()
    x = torch.randn(50, 3)
    with track_percentiles(model, "bn", unit=2, q=(50,)) as tracker:
        model(x)
    assert tracker.records[0][1][0] == pytest.approx(float(torch.quantile(x[:, 2].double(),
                                                                          0.5)))
