"""Algorithm 2 of the paper as tools: batch-normalize a network, compute its
population statistics, fold BN into the layer before it.

1. :func:`batchnormalize` inserts BN immediately before each nonlinearity,
   ``z = g(BN(Wu))``, dropping the bias of ``Wu + b`` (beta takes its role).
2. Train as usual.
3. :func:`recompute_statistics` freezes the weights, runs training batches and
   sets every BN layer to the population statistics::

       E[x] = sum_B m_B mu_B / sum_B m_B,   Var[x] = sum_B m_B var_B / sum_B (m_B - 1)

   (for equal batch sizes m: the mean of the batch means and m/(m-1) times the
   mean of the batch variances).
4. :func:`fold` turns each eval-mode BN into the affine map
   ``y = gamma / sqrt(Var + eps) * x + (beta - gamma E / sqrt(Var + eps))``
   and merges it into the preceding Linear or Conv.

All three work on torch's own BN layers as well as this project's.

Model shapes understood by :func:`batchnormalize` and :func:`fold`: a
``Linear``/``Conv1d/2d/3d`` and the module it feeds must be *adjacent children
of an ``nn.Sequential``* (at any depth of nesting). Layers called from a custom
``forward`` cannot be rewired without tracing, so they are left alone and
reported: :func:`batchnormalize` raises if it finds nothing to change;
:func:`fold` leaves unfoldable BN layers in place (still correct, just not folded).
A ``Linear`` is assumed to see (N, features) input, as BatchNorm1d expects.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d
from batchnorm.statistics import pool_population

__all__ = ["NONLINEARITIES", "batchnormalize", "fold", "recompute_statistics"]

#: Activation modules before which :func:`batchnormalize` inserts BN.
NONLINEARITIES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.Softplus,
    nn.Softsign,
    nn.LogSigmoid,
    nn.Tanhshrink,
)

_BN_FOR_LAYER: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: BatchNorm1d,
    nn.Conv1d: BatchNorm1d,
    nn.Conv2d: BatchNorm2d,
    nn.Conv3d: BatchNorm3d,
}
_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCH_NORMS = nn.modules.batchnorm._BatchNorm


def _sequentials(model: nn.Module) -> list[nn.Sequential]:
    return [module for module in model.modules() if isinstance(module, nn.Sequential)]


def _without_bias(layer: nn.Module) -> nn.Module:
    """A copy of a Linear/Conv with the same weight and no bias."""
    if layer.bias is None:
        return layer
    stripped = copy.deepcopy(layer)
    stripped.bias = None
    return stripped


def batchnormalize(model: nn.Module, **bn_kwargs: Any) -> nn.Module:
    """Return a copy of ``model`` with BN inserted before each nonlinearity.

    Every ``Linear``/``Conv{1,2,3}d`` directly followed (in an ``nn.Sequential``)
    by one of :data:`NONLINEARITIES` becomes ``layer (no bias) -> BN -> activation``.
    ``bn_kwargs`` go to the new BN layers (e.g. ``eps``, ``momentum``,
    ``estimator``, ``backend``). The input model is not modified.
    """
    result = copy.deepcopy(model)
    inserted = 0
    for sequential in _sequentials(result):
        children = list(sequential.named_children())
        rebuilt: list[tuple[str, nn.Module]] = []
        for index, (name, child) in enumerate(children):
            following = children[index + 1][1] if index + 1 < len(children) else None
            bn_type = _BN_FOR_LAYER.get(type(child))
            if bn_type is not None and isinstance(following, NONLINEARITIES):
                layer = _without_bias(child)
                linear = isinstance(layer, nn.Linear)
                features = layer.out_features if linear else layer.out_channels
                weight = layer.weight
                bn = bn_type(features, device=weight.device, dtype=weight.dtype, **bn_kwargs)
                rebuilt += [(name, layer), (f"{name}_bn", bn)]
                inserted += 1
            else:
                rebuilt.append((name, child))
        if len(rebuilt) != len(children):
            for name, _ in children:
                delattr(sequential, name)
            for name, child in rebuilt:
                sequential.add_module(name, child)
    if inserted == 0:
        raise ValueError(
            "batchnormalize found no Linear/Conv1d/Conv2d/Conv3d followed by a nonlinearity "
            "module in an nn.Sequential; layers called from a custom forward() cannot be "
            "rewired automatically: insert batchnorm.BatchNorm*d there by hand"
        )
    return result


def _first_tensor(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict) and batch:
        return next(iter(batch.values()))
    raise TypeError(
        f"recompute_statistics: a batch must be a Tensor or a (inputs, ...) tuple, "
        f"got {type(batch).__name__}"
    )


@torch.no_grad()
def recompute_statistics(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
) -> nn.Module:
    """Set every BN layer's running statistics to population statistics (Algorithm 2, step 3).

    The model runs in eval mode (dropout off) except its BN layers, which
    normalize with batch statistics exactly as in training; weights do not
    change. Each BN layer's statistics are pooled exactly (float64) over the
    first ``num_batches`` batches (all of them if None), whatever their sizes.
    ``batches`` yields Tensors or tuples whose first element is the input.
    Works in place on torch's and this project's BN layers; returns ``model``.
    """
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    layers = [
        module
        for module in model.modules()
        if isinstance(module, _BATCH_NORMS) and module.track_running_stats
    ]
    if not layers:
        raise ValueError("recompute_statistics: the model has no BN layer that tracks statistics")
    modes = {module: module.training for module in model.modules()}
    saved_counts = {layer: layer.num_batches_tracked.clone() for layer in layers}
    pooled: dict[nn.Module, list[Tensor]] = {}

    def observe(layer: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        x = inputs[0]
        dims = [0, *range(2, x.dim())]
        count = x.numel() // x.shape[1]
        if count < 2:
            raise ValueError(
                f"recompute_statistics: {type(layer).__name__}({layer.num_features}) got input "
                f"of shape {tuple(x.shape)}: need more than 1 value per channel"
            )
        x64 = x.double()
        batch_var, batch_mean = torch.var_mean(x64, dim=dims, correction=0)
        state = pooled.setdefault(
            layer,
            [
                torch.zeros_like(batch_mean),
                torch.ones_like(batch_var),
                torch.zeros((), dtype=torch.long, device=x.device),
                torch.zeros((), dtype=torch.long, device=x.device),
            ],
        )
        mean, var, done_batches, done_samples = state
        new_mean, new_var, applied = pool_population(
            mean, var, done_batches, done_samples, batch_mean, batch_var, count
        )
        state[0], state[1] = new_mean, new_var
        done_batches.add_(applied.long())
        done_samples.add_(applied.long() * count)

    hooks = [layer.register_forward_pre_hook(observe) for layer in layers]
    seen = 0
    try:
        model.eval()
        for layer in layers:
            layer.train()
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            model(_first_tensor(batch))
            seen += 1
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.train(training)
    if seen == 0:
        raise ValueError("recompute_statistics: no batches were given")
    for layer in layers:
        mean, var, done_batches, done_samples = pooled[layer]
        if int(done_batches) == 0:
            raise ValueError(
                f"recompute_statistics: every batch had non-finite statistics at "
                f"{type(layer).__name__}({layer.num_features})"
            )
        layer.running_mean.copy_(mean.to(layer.running_mean.dtype))
        layer.running_var.copy_(var.to(layer.running_var.dtype))
        layer.num_batches_tracked.copy_(saved_counts[layer] + seen)
        if hasattr(layer, "population_batches"):
            layer.population_batches.copy_(done_batches)
            layer.population_samples.copy_(done_samples)
        if hasattr(layer, "_has_statistics"):
            layer._has_statistics = False
    return model


def _fold_pair(layer: nn.Module, bn: nn.Module) -> nn.Module:
    """``layer`` followed by eval-mode ``bn`` as one layer of the same type."""
    folded = copy.deepcopy(layer)
    weight = layer.weight.detach()
    compute = torch.float64  # fold in float64, store in the layer's dtype
    invstd = torch.rsqrt(bn.running_var.to(compute) + bn.eps)
    scale = invstd if bn.weight is None else bn.weight.detach().to(compute) * invstd
    shift = -bn.running_mean.to(compute) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().to(compute)
    old_bias = (
        layer.bias.detach().to(compute)
        if layer.bias is not None
        else torch.zeros_like(scale)
    )
    view = [-1] + [1] * (weight.dim() - 1)
    folded.weight = nn.Parameter((weight.to(compute) * scale.view(view)).to(weight.dtype))
    folded.bias = nn.Parameter((old_bias * scale + shift).to(weight.dtype))
    return folded


def _foldable(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(layer, _FOLDABLE) or not isinstance(bn, _BATCH_NORMS):
        return False
    if bn.running_mean is None or bn.running_var is None:
        return False  # no statistics: BN uses batch statistics even in eval mode
    if isinstance(layer, nn.Linear):
        return layer.out_features == bn.num_features
    return layer.out_channels == bn.num_features


def fold(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BN folded into the layer before it.

    Each ``Linear``/``Conv{1,2,3}d`` directly followed by a BN layer (adjacent
    children of an ``nn.Sequential``) is replaced by one layer computing both;
    the BN becomes ``nn.Identity``. BN layers with nothing to fold into, or
    without running statistics, are kept. The input model is not modified.
    """
    result = copy.deepcopy(model).eval()
    for sequential in _sequentials(result):
        names = [name for name, _ in sequential.named_children()]
        for first, second in itertools.pairwise(names):
            layer, bn = getattr(sequential, first), getattr(sequential, second)
            if _foldable(layer, bn):
                setattr(sequential, first, _fold_pair(layer, bn))
                setattr(sequential, second, nn.Identity())
    return result
