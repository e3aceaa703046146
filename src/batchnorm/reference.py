"""A float64 NumPy oracle of the paper, to read next to it (docs/method.md sections 2-5).

Arrays have shape (N, C, *); every statistic is per channel over all other axes
(per activation for (N, C), per feature map for convolutions). No PyTorch here:
the tests hold every backend and layer to these functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

__all__ = [
    "Cache",
    "backward",
    "fold_linear",
    "forward",
    "inference",
    "population_statistics",
]


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _per_channel(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


class Cache(NamedTuple):
    x: np.ndarray
    mu: np.ndarray
    var: np.ndarray
    xhat: np.ndarray
    gamma: np.ndarray
    eps: float


def forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float
) -> tuple[np.ndarray, Cache]:
    """Algorithm 1: returns y and what :func:`backward` needs."""
    x = np.asarray(x, dtype=np.float64)
    m_axes = _axes(x)
    mu = x.mean(axis=m_axes)  # mini-batch mean
    var = ((x - _per_channel(mu, x)) ** 2).mean(axis=m_axes)  # mini-batch variance (biased)
    xhat = (x - _per_channel(mu, x)) / np.sqrt(_per_channel(var, x) + eps)  # normalize
    y = _per_channel(gamma, x) * xhat + _per_channel(beta, x)  # scale and shift
    return y, Cache(x, mu, var, xhat, np.asarray(gamma, dtype=np.float64), eps)


def backward(dy: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The chain rule as printed in section 3: returns (dL/dx, dL/dgamma, dL/dbeta)."""
    x, mu, var, xhat, gamma, eps = cache
    dy = np.asarray(dy, dtype=np.float64)
    axes = _axes(x)
    m = x.size // x.shape[1]
    c = x - _per_channel(mu, x)
    dxhat = dy * _per_channel(gamma, x)
    dvar = (dxhat * c).sum(axis=axes) * -0.5 * (var + eps) ** -1.5
    dmu = (dxhat * -1.0 / np.sqrt(_per_channel(var, x) + eps)).sum(axis=axes) + dvar * (
        -2.0 * c
    ).sum(axis=axes) / m
    dx = (
        dxhat / np.sqrt(_per_channel(var, x) + eps)
        + _per_channel(dvar, x) * 2.0 * c / m
        + _per_channel(dmu, x) / m
    )
    dgamma = (dy * xhat).sum(axis=axes)
    dbeta = dy.sum(axis=axes)
    return dx, dgamma, dbeta


def population_statistics(batches: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 2, step 3, over mini-batches of any sizes (each of shape (m_B, C, *)).

    E[x] = sum m_B mu_B / sum m_B and Var[x] = sum m_B var_B / sum (m_B - 1): for
    equal sizes m, the mean of batch means and m/(m-1) times the mean of batch variances.
    """
    weighted_means, weighted_vars, sizes, dofs = [], [], 0, 0
    for batch in batches:
        batch = np.asarray(batch, dtype=np.float64)
        m = batch.size // batch.shape[1]
        mu = batch.mean(axis=_axes(batch))
        var = ((batch - _per_channel(mu, batch)) ** 2).mean(axis=_axes(batch))
        weighted_means.append(m * mu)
        weighted_vars.append(m * var)
        sizes += m
        dofs += m - 1
    if not sizes:
        raise ValueError("population_statistics needs at least one batch")
    return np.sum(weighted_means, axis=0) / sizes, np.sum(weighted_vars, axis=0) / dofs


def inference(
    x: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> np.ndarray:
    """Algorithm 2, step 4: y = gamma/sqrt(Var+eps) x + (beta - gamma E/sqrt(Var+eps))."""
    x = np.asarray(x, dtype=np.float64)
    scale = np.asarray(gamma, dtype=np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(beta, dtype=np.float64) - scale * np.asarray(mean, dtype=np.float64)
    return _per_channel(scale, x) * x + _per_channel(shift, x)


def fold_linear(
    weight: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a Linear/Conv (out-channels first) followed by eval BN, as one."""
    weight = np.asarray(weight, dtype=np.float64)
    scale = np.asarray(gamma, dtype=np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    old_bias = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
    folded_weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    folded_bias = (old_bias - np.asarray(mean, np.float64)) * scale + np.asarray(beta, np.float64)
    return folded_weight, folded_bias
