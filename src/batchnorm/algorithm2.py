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

*Models with their own forward.* :func:`batchnormalize` and :func:`fold` read
the model's dataflow (:mod:`batchnorm.graph`, torch.fx), so they work on real
architectures: residual blocks, functional activations (``F.relu``,
``torch.sigmoid``), squeeze-excitation branches. :func:`fold` folds a BN whose
only input is a Linear/Conv output that nothing else uses, by replacing modules
in a copy of the user's own model (its class and ``forward`` are kept; the BN
becomes ``nn.Identity``). :func:`batchnormalize` first rewires adjacent children
of ``nn.Sequential`` containers (keeping the model's class), then, for layers
called from a custom ``forward``, inserts BN into the traced graph and returns
an ``fx.GraphModule`` (an ``nn.Module``: train it, save it, load it). A model
that cannot be traced falls back to the ``nn.Sequential`` rule. Both say what
they changed and what they left, and why (``return_report=True``), and warn
when they change nothing. Given ``example_inputs``, :func:`fold` checks the
folded model's output against the original's. Without them a ``Linear`` before
BN is assumed to see (N, features) input, as BatchNorm1d expects.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, fx, nn

from batchnorm.graph import (
    ACTIVATION_MODULES,
    LINEAR_MAPS,
    calls_per_module,
    feeds_nonlinearity,
    set_submodule,
    trace,
)
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d
from batchnorm.passes import statistics_pass
from batchnorm.statistics import pool_population

__all__ = ["NONLINEARITIES", "Report", "batchnormalize", "fold", "recompute_statistics"]

#: Activation modules before which :func:`batchnormalize` inserts BN.
NONLINEARITIES: tuple[type[nn.Module], ...] = ACTIVATION_MODULES

_FOLDABLE = LINEAR_MAPS
_BATCH_NORMS = nn.modules.batchnorm._BatchNorm


@dataclass
class Report:
    """What an Algorithm 2 tool changed, what it left, and why.

    ``method`` is ``"graph"`` (torch.fx dataflow), ``"sequential"`` (adjacent
    children of ``nn.Sequential`` only) or ``"graph+sequential"``;
    ``untraceable`` gives the reason when tracing failed.
    """

    tool: str
    method: str = "sequential"
    changed: list[str] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)
    untraceable: str | None = None
    #: BN layers folded although they never tracked statistics (mean 0, variance 1).
    untracked: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.tool} ({self.method}): {len(self.changed)} changed, "
                 f"{len(self.left)} left"]
        if self.untraceable:
            lines.append(f"  {self.untraceable}; used the nn.Sequential rule")
        lines += [f"  changed  {name}" for name in self.changed]
        lines += [f"  left     {name}: {why}" for name, why in self.left]
        return "\n".join(lines)


def _bn_for(layer: nn.Module) -> type[nn.Module] | None:
    """The BN class for a layer's output, by what the layer is (subclasses included)."""
    if isinstance(layer, (nn.Linear, nn.Conv1d)):
        return BatchNorm1d
    if isinstance(layer, nn.Conv2d):
        return BatchNorm2d
    if isinstance(layer, nn.Conv3d):
        return BatchNorm3d
    return None


def _features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _without_bias(layer: nn.Module) -> nn.Module:
    """A copy of a Linear/Conv with the same weight and no bias."""
    if layer.bias is None:
        return layer
    stripped = copy.deepcopy(layer)
    stripped.bias = None
    return stripped


def _new_bn(layer: nn.Module, bn_kwargs: dict[str, Any]) -> nn.Module:
    weight = layer.weight
    return _bn_for(layer)(_features(layer), device=weight.device, dtype=weight.dtype,
                          **bn_kwargs)  # fmt: skip


def _batchnormalize_sequentials(model: nn.Module, bn_kwargs: dict[str, Any],
                                report: Report) -> None:
    """Adjacent ``layer, activation`` children of every ``nn.Sequential``, in place."""
    for prefix, sequential in list(model.named_modules()):
        if not isinstance(sequential, nn.Sequential):
            continue
        children = list(sequential._modules.items())  # named_children() skips a reused module
        taken = {name for name, _ in children}
        rebuilt: list[tuple[str, nn.Module]] = []
        for index, (name, child) in enumerate(children):
            following = children[index + 1][1] if index + 1 < len(children) else None
            if _bn_for(child) is not None and isinstance(following, NONLINEARITIES):
                layer = _without_bias(child)
                bn_name = _free_name(f"{name}_bn", taken)
                taken.add(bn_name)
                rebuilt += [(name, layer), (bn_name, _new_bn(layer, bn_kwargs))]
                report.changed.append(_qualified(prefix, name))
            else:
                rebuilt.append((name, child))
        if len(rebuilt) != len(children):
            for name, _ in children:
                delattr(sequential, name)
            for name, child in rebuilt:
                sequential.add_module(name, child)


def _qualified(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _free_name(wanted: str, taken: set[str]) -> str:
    """``wanted``, or ``wanted_1``, ``wanted_2``, ... if a module already has that name
    (a user's own ``conv_bn`` is never replaced or moved)."""
    name, suffix = wanted, 0
    while name in taken:
        suffix += 1
        name = f"{wanted}_{suffix}"
    return name


def _batchnormalize_graph(model: nn.Module, graph: fx.Graph, bn_kwargs: dict[str, Any],
                          report: Report) -> nn.Module:
    """BN after every Linear/Conv whose output reaches a nonlinearity in the traced graph."""
    calls = calls_per_module(graph, model)
    taken = {name for name, _ in model.named_modules()}
    inserted: list[tuple[fx.Node, str, nn.Module]] = []
    for node in list(graph.nodes):
        if node.op != "call_module":
            continue
        layer = model.get_submodule(node.target)
        if _bn_for(layer) is None or not feeds_nonlinearity(node, model):
            continue
        if any(user.op == "call_module" and isinstance(model.get_submodule(user.target),
                                                       _BATCH_NORMS) for user in node.users):
            continue  # already followed by BN (e.g. rewired by the nn.Sequential rule)
        if calls[id(layer)] > 1:
            if all(name != node.target for name, _ in report.left):
                report.left.append((node.target, f"called at {calls[id(layer)]} places; BN "
                                                 "after one call would change the others"))
            continue
        inserted.append((node, _free_name(f"{node.target}_bn", taken), layer))
        taken.add(inserted[-1][1])
    if not inserted:
        return model
    for node, bn_name, layer in inserted:
        stripped = _without_bias(layer)
        set_submodule(model, node.target, stripped)
        set_submodule(model, bn_name, _new_bn(stripped, bn_kwargs))
        with graph.inserting_after(node):
            bn_node = graph.call_module(bn_name, (node,))
        node.replace_all_uses_with(bn_node, delete_user_cb=lambda user, bn=bn_node: user is not bn)
        report.changed.append(node.target)
    graph.lint()
    result = fx.GraphModule(model, graph, class_name=f"BatchNormalized{type(model).__name__}")
    return result.train(model.training)


def batchnormalize(model: nn.Module, *, return_report: bool = False, **bn_kwargs: Any):
    """Return a copy of ``model`` with BN inserted before each nonlinearity (Algorithm 2 step 1).

    Every ``Linear``/``Conv{1,2,3}d`` (or subclass) whose output ``Wu + b`` feeds a
    nonlinearity, a module of :data:`NONLINEARITIES`, a function such as ``F.relu``
    or ``torch.sigmoid``, or a method such as ``x.relu()``, directly or through a
    residual add, becomes ``layer (no bias) -> BN``: beta takes the bias's role.
    Adjacent children of an ``nn.Sequential`` are rewired in place (the model keeps
    its class; BN named ``{layer}_bn``); layers called from a custom ``forward``
    get their BN in the traced graph, and the result is then an ``fx.GraphModule``.
    ``bn_kwargs`` go to the new BN layers (``eps``, ``momentum``, ``estimator``,
    ``backend``). The input model is not modified. Warns if nothing was changed.
    With ``return_report=True`` returns ``(model, Report)``.
    """
    result = copy.deepcopy(model)
    report = Report("batchnormalize")
    _batchnormalize_sequentials(result, bn_kwargs, report)
    graph = trace(result)
    if isinstance(graph, str):
        report.untraceable = graph
    else:
        before = len(report.changed)
        result = _batchnormalize_graph(result, graph, bn_kwargs, report)
        report.method = "graph+sequential" if before else "graph"
    if not report.changed:
        warnings.warn(
            "batchnormalize changed nothing: no Linear/Conv1d/Conv2d/Conv3d feeds a "
            "nonlinearity" + (f" ({report.untraceable})" if report.untraceable else ""),
            stacklevel=2,
        )
    return (result, report) if return_report else result


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
    saved_counts = {layer: layer.num_batches_tracked.clone() for layer in layers}
    # All or nothing: the layers update their own buffers while the batches run, so
    # keep every buffer to put back if anything (a bad batch, Ctrl-C) stops us part-way.
    saved_buffers = {layer: {name: buffer.clone() for name, buffer in layer.named_buffers()}
                     for layer in layers}  # fmt: skip
    pooled: dict[nn.Module, list[Tensor]] = {}

    def observe(layer: nn.Module, x: Tensor) -> None:
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

    try:
        seen = statistics_pass(model, layers, batches, num_batches, observe,
                               "recompute_statistics")
        if seen == 0:
            raise ValueError("recompute_statistics: no batches were given")
        for layer in layers:
            if layer not in pooled or int(pooled[layer][2]) == 0:
                raise ValueError(
                    f"recompute_statistics: every batch had non-finite statistics at "
                    f"{type(layer).__name__}({layer.num_features})"
                    if layer in pooled else
                    f"recompute_statistics: {type(layer).__name__}({layer.num_features}) "
                    "never ran on these batches"
                )  # fmt: skip
    except BaseException:
        for layer, buffers in saved_buffers.items():
            for name, buffer in layer.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        raise
    for layer in layers:
        mean, var, done_batches, done_samples = pooled[layer]
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


def _why_not_foldable(layer: nn.Module, bn: nn.Module) -> str | None:
    """None if ``layer`` then eval-mode ``bn`` can be one layer, else the reason."""
    if not isinstance(layer, _FOLDABLE):
        return f"its input comes from a {type(layer).__name__}, not a Linear/Conv"
    if bn.running_mean is None or bn.running_var is None:
        return "no running statistics (BN uses batch statistics even in eval mode)"
    if _features(layer) != bn.num_features:
        return f"{_features(layer)} outputs feed a BN of {bn.num_features} features"
    return None


def _note_untracked(bn: nn.Module, name: str, report: Report) -> None:
    if bn.num_batches_tracked is not None and int(bn.num_batches_tracked) == 0:
        report.untracked.append(name)


def _fold_sequentials(model: nn.Module, report: Report) -> None:
    for prefix, sequential in list(model.named_modules()):
        if not isinstance(sequential, nn.Sequential):
            continue
        names = list(sequential._modules)  # every position, a reused module's included
        for first, second in itertools.pairwise(names):
            layer, bn = getattr(sequential, first), getattr(sequential, second)
            if isinstance(bn, _BATCH_NORMS) and _why_not_foldable(layer, bn) is None:
                _note_untracked(bn, _qualified(prefix, second), report)
                setattr(sequential, first, _fold_pair(layer, bn))
                setattr(sequential, second, nn.Identity())
                report.changed.append(f"{_qualified(prefix, second)} -> "
                                      f"{_qualified(prefix, first)}")


def _fold_graph(model: nn.Module, graph: fx.Graph, report: Report) -> None:
    calls = calls_per_module(graph, model)
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = model.get_submodule(node.target)
        if not isinstance(bn, _BATCH_NORMS):
            continue
        source = node.args[0] if node.args else None
        reason = None
        if not isinstance(source, fx.Node) or source.op != "call_module":
            reason = "its input is not the output of a layer module"
        elif len(node.args) != 1 or node.kwargs:
            reason = "called with extra arguments"
        elif calls[id(bn)] > 1:
            reason = f"called at {calls[id(bn)]} places"
        else:
            layer = model.get_submodule(source.target)
            reason = _why_not_foldable(layer, bn)
            if reason is None and len(source.users) > 1:
                reason = f"{source.target}'s output is also used elsewhere"
            elif reason is None and calls[id(layer)] > 1:
                reason = f"{source.target} is called at {calls[id(layer)]} places"
        if reason is not None:
            report.left.append((node.target, reason))
            continue
        _note_untracked(bn, node.target, report)
        set_submodule(model, source.target, _fold_pair(layer, bn))
        set_submodule(model, node.target, nn.Identity())
        report.changed.append(f"{node.target} -> {source.target}")


def _outputs(output: Any) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _outputs(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _outputs(item)]
    return []


def fold(model: nn.Module, *, example_inputs: tuple[Any, ...] | None = None,
         return_report: bool = False, rtol: float = 1e-4, atol: float = 1e-5):
    """An eval-mode copy of ``model`` with each BN folded into the layer before it
    (Algorithm 2 step 4).

    A BN whose only input is the output of a ``Linear``/``Conv{1,2,3}d`` (or a
    subclass computing ``Wu + b`` per channel) that nothing else uses is merged
    into that layer, which then computes both; the BN becomes ``nn.Identity``.
    The model's dataflow comes from torch.fx, so blocks with their own
    ``forward`` fold too; an untraceable model falls back to adjacent children
    of ``nn.Sequential``. BN layers left in place (and why) are in the report
    (``return_report=True`` returns ``(model, Report)``). Warns when nothing is
    folded, and when it folds statistics that were never tracked (mean 0, var 1).
    With ``example_inputs`` the folded model's eval output is checked against the
    original's (``rtol``/``atol``); a mismatch raises RuntimeError.
    The input model is not modified.
    """
    result = copy.deepcopy(model).eval()
    report = Report("fold")
    graph = trace(result)
    if isinstance(graph, str):
        report.untraceable = graph
        _fold_sequentials(result, report)
    else:
        report.method = "graph"
        _fold_graph(result, graph, report)
    if report.untracked:
        warnings.warn(
            f"fold: BN layers {report.untracked} never tracked statistics; folding their initial "
            "mean 0 / variance 1. Train them or call batchnorm.recompute_statistics first.",
            stacklevel=2,
        )
    if not report.changed:
        warnings.warn("fold folded nothing: " + "; ".join(
            [f"{name}: {why}" for name, why in report.left] or
            [report.untraceable or "the model has no BN layer after a Linear/Conv"]),
            stacklevel=2)  # fmt: skip
    if example_inputs is not None:
        _check_fold(model, result, example_inputs, rtol, atol)
    return (result, report) if return_report else result


@torch.no_grad()
def _check_fold(model: nn.Module, folded: nn.Module, example_inputs: tuple[Any, ...],
                rtol: float, atol: float) -> None:
    original = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, got = _outputs(original(*example_inputs)), _outputs(folded(*example_inputs))
    for index, (w, g) in enumerate(zip(want, got, strict=True)):
        if not torch.allclose(g, w, rtol=rtol, atol=atol):
            error = float((g.double() - w.double()).abs().max())
            raise RuntimeError(
                f"fold: output {index} of the folded model differs from the original's by up "
                f"to {error:.3g} on example_inputs: a folded layer is not a plain Wu + b map"
            )
