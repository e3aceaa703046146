"""Running statistics: how mini-batch statistics become the ones used at inference.

Three estimators, chosen per layer:

``"ema"``
    torch's exponential moving average with ``momentum`` (weight of the newest
    batch): ``s <- (1 - momentum) * s + momentum * s_B``, with the unbiased
    batch variance ``m/(m-1) * var_B``.
``"cumulative"``
    torch's ``momentum=None``: the same update with ``momentum = 1/t`` at the
    t-th batch, i.e. the plain average of batch means and unbiased variances
    (t counts the batches averaged in: a skipped non-finite batch does not count).
``"population"``
    Algorithm 2, step 3, exactly, and correct for batches of different sizes::

        E[x]   = sum_B m_B mu_B / sum_B m_B
        Var[x] = sum_B m_B var_B / sum_B (m_B - 1)

    For equal sizes m this is the paper's "mean of the batch means" and
    "m/(m-1) times the mean of the batch variances". It is the pooled
    within-batch variance, the quantity BN normalizes by in training. The
    number of batches and of values per channel it was built from are kept in
    the ``population_batches`` and ``population_samples`` buffers.

The estimators hold no tensors: the statistics live in the layer's buffers
under torch's names (``running_mean``, ``running_var``, ``num_batches_tracked``)
so that state dicts move freely between this project and ``torch.nn``.

A batch with a non-finite statistic in any channel leaves the running
statistics unchanged (the whole update is skipped, so that the buffers always
describe the same set of batches); the layer counts such batches in
``skipped_updates``. The test and the skip stay on the device
(``torch.where`` on a 0-dim flag), never a host synchronization: the update
traces into one ``torch.compile`` / ``torch.export`` graph.
"""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import Tensor

__all__ = [
    "ESTIMATORS",
    "Estimator",
    "pool_population",
    "update_moving_average",
]

Estimator = Literal["ema", "cumulative", "population"]
ESTIMATORS: tuple[Estimator, ...] = ("ema", "cumulative", "population")


class StatisticsOwner(Protocol):
    """The buffers an estimator reads and writes (a BN layer provides them)."""

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor
    momentum: float | None


def _all_finite(batch_mean: Tensor, batch_var: Tensor) -> Tensor:
    """0-dim bool tensor; stays on the device (no host synchronization)."""
    return torch.isfinite(batch_mean).all() & torch.isfinite(batch_var).all()


@torch.no_grad()
def update_moving_average(
    running_mean: Tensor,
    running_var: Tensor,
    batch_mean: Tensor,
    batch_var: Tensor,
    count: int,
    momentum: float | Tensor,
) -> Tensor:
    """In-place moving-average update; returns a 0-dim bool tensor: was it applied?

    ``batch_var`` is the biased variance of ``count`` values per channel;
    ``momentum`` a float or a 0-dim tensor (the cumulative estimator's ``1/t``,
    kept on the device).
    """
    correction = count / (count - 1) if count > 1 else 1.0
    finite = _all_finite(batch_mean, batch_var)
    if isinstance(momentum, Tensor):
        momentum = momentum.to(running_mean.dtype)
    new_mean = torch.lerp(running_mean, batch_mean.to(running_mean.dtype), momentum)
    new_var = torch.lerp(running_var, (batch_var * correction).to(running_var.dtype), momentum)
    running_mean.copy_(torch.where(finite, new_mean, running_mean))
    running_var.copy_(torch.where(finite, new_var, running_var))
    return finite


def pool_population(
    mean: Tensor,
    var: Tensor,
    batches: Tensor,
    samples: Tensor,
    batch_mean: Tensor,
    batch_var: Tensor,
    count: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """Add one batch of ``count`` values per channel to pooled population statistics.

    ``mean``/``var`` are the current estimates built from ``batches`` batches
    holding ``samples`` values per channel; returns the new (mean, var, applied),
    ``applied`` being False (and the estimates unchanged) for a non-finite batch.
    Accumulates in float64 so that thousands of batches lose nothing.
    """
    finite = _all_finite(batch_mean, batch_var)
    old_n = samples.double()
    old_dof = old_n - batches.double()
    new_n = old_n + count
    new_dof = old_dof + (count - 1)
    m64, v64 = mean.double(), var.double()
    pooled_mean = m64 + (batch_mean.double() - m64) * (count / new_n)
    pooled_var = (v64 * old_dof + batch_var.double() * count) / new_dof.clamp_min(1.0)
    return (
        torch.where(finite, pooled_mean, m64).to(mean.dtype),
        torch.where(finite, pooled_var, v64).to(var.dtype),
        finite,
    )


@torch.no_grad()
def update_running_statistics(
    owner: StatisticsOwner,
    estimator: Estimator,
    batch_mean: Tensor,
    batch_var: Tensor,
    count: int,
) -> Tensor:
    """Apply ``estimator`` to ``owner``'s buffers after one training batch.

    ``num_batches_tracked`` must already count this batch. Returns a 0-dim bool
    tensor: True if some channel's update was skipped (non-finite statistics).
    """
    if estimator == "population":
        batches = owner.population_batches  # type: ignore[attr-defined]
        samples = owner.population_samples  # type: ignore[attr-defined]
        mean, var, finite = pool_population(
            owner.running_mean, owner.running_var, batches, samples, batch_mean, batch_var, count
        )
        owner.running_mean.copy_(mean)
        owner.running_var.copy_(var)
        batches.add_(finite.to(batches.dtype))
        samples.add_(finite.to(samples.dtype) * count)
        return ~finite
    if estimator == "cumulative":
        # 1/t with t the batches averaged so far, this one included: a skipped
        # (non-finite) batch counts in num_batches_tracked but not in the average.
        skipped = getattr(owner, "skipped_updates", None)
        applied = owner.num_batches_tracked - (skipped if skipped is not None else 0)
        momentum = 1.0 / applied.clamp_min(1).double()  # 1/t on the device, no sync
    elif estimator == "ema":
        if owner.momentum is None:
            raise ValueError("the 'ema' estimator needs a momentum; momentum=None is 'cumulative'")
        momentum = owner.momentum
    else:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    applied = update_moving_average(
        owner.running_mean, owner.running_var, batch_mean, batch_var, count, momentum
    )
    return ~applied
