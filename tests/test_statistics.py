"""Running-statistics estimators against their formulas and the NumPy oracle."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from batchnorm import BatchNorm1d, BatchNorm2d, reference
from batchnorm.statistics import pool_population, update_moving_average

# Tiny tensors: one intra-op thread (see conftest's one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@given(
    sizes=st.lists(st.integers(2, 9), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_population_is_exact_over_unequal_batches(sizes, seed):
    torch.manual_seed(seed)
    batches = [torch.randn(n, 3, 2, 2, dtype=torch.float64) * 3 + 2 for n in sizes]
    layer = BatchNorm2d(3, estimator="population", dtype=torch.float64)
    for batch in batches:
        layer(batch)
    mean, var = reference.population_statistics([b.numpy() for b in batches])
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)
    assert int(layer.population_batches) == len(sizes)
    assert int(layer.population_samples) == 4 * sum(sizes)


def test_population_equals_paper_formula_for_equal_batches():
    """Algorithm 2 step 3: E = mean of means, Var = m/(m-1) * mean of variances."""
    batches = [torch.randn(7, 4, dtype=torch.float64) + i for i in range(5)]
    layer = BatchNorm1d(4, estimator="population", dtype=torch.float64)
    for batch in batches:
        layer(batch)
    means = torch.stack([b.mean(0) for b in batches])
    variances = torch.stack([b.var(0, correction=0) for b in batches])
    torch.testing.assert_close(layer.running_mean, means.mean(0))
    torch.testing.assert_close(layer.running_var, 7 / 6 * variances.mean(0))


def test_float32_population_of_many_batches_loses_nothing():
    """float32 buffers, float64 pooling: each batch costs one float32 rounding of the
    result, nothing more. Pooling in float32 instead fails here: the pooled variance's
    numerator ``var * (samples - batches)`` (3e34 * 3e4) leaves float32's range long
    before the variance itself does, and the estimate turns inf."""
    generator = torch.Generator().manual_seed(0)
    for loc, sd in ((1000.0, 0.1), (0.0, 1.8e17)):
        layer = BatchNorm1d(2, estimator="population")
        batches = [torch.randn(64, 2, generator=generator) * sd + loc for _ in range(500)]
        for batch in batches:
            layer(batch)
        mean, var = reference.population_statistics([b.double().numpy() for b in batches])
        assert np.isfinite(var).all() and var.max() < 1e36  # float32 holds the answer
        # float32 buffers round once per batch: a random walk of a few ulps over 500 batches
        np.testing.assert_allclose(layer.running_mean.double().numpy(), mean, rtol=1e-6,
                                   atol=1e-6 * sd)  # fmt: skip
        np.testing.assert_allclose(layer.running_var.double().numpy(), var, rtol=1e-5)
        assert int(layer.population_batches) == 500 and int(layer.skipped_updates) == 0


def test_ema_formula():
    mean, var = torch.full((2,), 1.0), torch.full((2,), 2.0)
    batch_mean, batch_var = torch.tensor([3.0, -1.0]), torch.tensor([0.5, 4.0])
    applied = update_moving_average(mean, var, batch_mean, batch_var, count=5, momentum=0.25)
    assert bool(applied)
    torch.testing.assert_close(mean, 0.75 * 1.0 + 0.25 * batch_mean)
    torch.testing.assert_close(var, 0.75 * 2.0 + 0.25 * batch_var * 5 / 4)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_batches_change_nothing(bad):
    mean, var = torch.zeros(2), torch.ones(2)
    applied = update_moving_average(mean, var, torch.tensor([bad, 0.0]), torch.ones(2), 4, 0.1)
    assert not bool(applied)
    torch.testing.assert_close(mean, torch.zeros(2))
    pooled_mean, pooled_var, applied = pool_population(
        torch.ones(2), torch.ones(2), torch.tensor(1), torch.tensor(4),
        torch.zeros(2), torch.tensor([1.0, bad]), 4,
    )
    assert not bool(applied)
    torch.testing.assert_close(pooled_mean, torch.ones(2))
    torch.testing.assert_close(pooled_var, torch.ones(2))


def test_population_layer_skips_non_finite_batch():
    layer = BatchNorm1d(2, estimator="population")
    layer(torch.randn(4, 2))
    snapshot = layer.running_var.clone()
    bad = torch.randn(4, 2)
    bad[0, 1] = float("inf")
    layer(bad)
    torch.testing.assert_close(layer.running_var, snapshot)
    assert int(layer.population_batches) == 1 and int(layer.skipped_updates) == 1


def test_population_of_two_value_batches():
    """The smallest training batch, 2 values per channel: Var = the unbiased variance
    (m/(m-1) = 2 times the biased one), also when pooled with a second such batch."""
    batches = [torch.randn(2, 3, dtype=torch.float64) * 2 + 1 for _ in range(2)]
    layer = BatchNorm1d(3, estimator="population", dtype=torch.float64)
    layer(batches[0])
    torch.testing.assert_close(layer.running_mean, batches[0].mean(0))
    torch.testing.assert_close(layer.running_var, batches[0].var(0))
    layer(batches[1])
    mean, var = reference.population_statistics([b.numpy() for b in batches])
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-12)
    # and pool_population itself, from an empty pool
    pooled_mean, pooled_var, applied = pool_population(
        torch.zeros(2), torch.ones(2), torch.tensor(0), torch.tensor(0),
        torch.tensor([1.0, -2.0]), torch.tensor([0.25, 4.0]), 2,
    )  # fmt: skip
    assert bool(applied)
    torch.testing.assert_close(pooled_mean, torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(pooled_var, torch.tensor([0.5, 8.0]))
