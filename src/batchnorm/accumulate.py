"""Running statistics under gradient accumulation: k micro-batches, one update.

With gradient accumulation (k micro-batches per optimizer step) every BN layer
updates its running statistics once per *micro-batch*: k moving-average steps
instead of one (the effective momentum changes) and each with a micro-batch
variance, which misses the spread *between* the micro-batch means
(pytorch/pytorch#46516). Inside ::

    with batchnorm.accumulate_statistics(model):
        for micro in micro_batches:
            loss_fn(model(micro)).backward()
    optimizer.step()

each BN layer still normalizes every micro-batch with that micro-batch's own
statistics (outputs and gradients are unchanged), but its running statistics
are updated once, on exit, with the exact statistics of all the micro-batches
together: the same ``running_mean``, ``running_var``, ``num_batches_tracked``
(and, for the ``"population"`` estimator, its counters) as one forward of the
concatenated batch. Exactly so for a layer whose input does not depend on the batching
(e.g. the first BN layer); a deeper layer receives inputs normalized per micro-batch by
the layers before it, which differ from a concatenated forward's, and gets the statistics
of ONE batch made of what it actually received.

Per channel, each micro-batch contributes (n_b, mean_b, M2_b), M2 the sum of
squared deviations from mean_b, computed in float64 from the layer's input. They
are pooled exactly (Chan, Golub & LeVeque 1979)::

    n     = n_a + n_b
    delta = mean_b - mean_a
    mean  = mean_a + delta * n_b / n
    M2    = M2_a + M2_b + delta^2 * n_a * n_b / n

so the pooled biased variance M2 / n includes the between-micro-batch part. The
update on exit is the layer's own for one batch of n values: this project's
layers apply their estimator (:func:`batchnorm.statistics.update_running_statistics`;
a non-finite batch is skipped and counted in ``skipped_updates``); any other
subclass of torch's ``_BatchNorm`` gets torch's rule,
``s <- (1 - momentum) s + momentum s_B`` with ``var_B = M2 / (n - 1)`` and
``momentum = 1 / num_batches_tracked`` for ``momentum=None``.

How: a forward pre-hook on each BN layer that tracks running statistics keeps
its buffers; a forward hook records the micro-batch's moments and puts the
buffers back (so whatever the layer's own update did, in Python or in a
kernel, is undone). Only training-mode forwards are recorded (an eval-mode
forward updates nothing, so it is left alone); ``torch.no_grad`` does not matter.

Our choices:

* *Exceptions.* If the block raises, every layer's buffers are put back as they
  were on entry and nothing is applied (the optimizer step the block was building
  is presumably not taken either); the exception propagates.
* *Nesting.* A layer belongs to the outermost active context that covers it;
  an inner context leaves it alone, so it is updated once, at the outermost exit.
* *A layer called several times per forward* (shared module) pools every call
  inside the block into its one update.
* Layers whose forward is not a plain BN over the whole batch (e.g. ghost batch
  norm, which updates per ghost batch) get the plain one-batch update too.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from batchnorm.passes import hook_input
from batchnorm.statistics import ESTIMATORS, update_running_statistics

__all__ = ["Accumulation", "Moments", "accumulate_statistics", "moments", "tracking_layers"]

_BatchNormBase = nn.modules.batchnorm._BatchNorm

#: Layers owned by an active context (nesting: the outermost owns them).
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@dataclass(frozen=True)
class Moments:
    """Per-channel count ``n``, ``mean`` and ``m2 = sum (x - mean)^2`` (float64)."""

    n: int
    mean: Tensor
    m2: Tensor

    def merge(self, other: Moments) -> Moments:
        """The moments of both sets of values together (Chan et al.; module docstring)."""
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + delta.square() * (self.n * other.n / n)
        return Moments(n, mean, m2)

    @property
    def biased_var(self) -> Tensor:
        """``M2 / n``: the variance BN would normalize one batch of these values by."""
        return self.m2 / self.n


def moments(x: Tensor) -> Moments:
    """The per-channel moments of an (N, C, *) tensor, in float64."""
    if x.dim() < 2:
        raise ValueError(f"moments: expected (N, C, *) input, got shape {tuple(x.shape)}")
    x64 = x.detach().double()
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x64, dim=dims, correction=0)
    n = x.numel() // x.shape[1]
    return Moments(n, mean, var * n)


def tracking_layers(model: nn.Module) -> list[nn.Module]:
    """The BN layers of ``model`` (itself included) that keep running statistics."""
    return [
        module for module in model.modules()
        if isinstance(module, _BatchNormBase) and module.track_running_stats
        and module.running_mean is not None
    ]  # fmt: skip


def _snapshot(layer: nn.Module) -> dict[str, object]:
    saved: dict[str, object] = {name: buffer.clone()
                                for name, buffer in layer.named_buffers(recurse=False)}
    if "_has_statistics" in layer.__dict__:
        saved["_has_statistics"] = layer.__dict__["_has_statistics"]
    return saved


@torch.no_grad()
def _restore(layer: nn.Module, saved: dict[str, object]) -> None:
    # Through ``.data``: the write must not bump the buffers' autograd version, or a
    # backward through an earlier micro-batch (which saved them) would refuse to run.
    # Training-mode BN backward never reads the running statistics, and torch's own
    # in-kernel update writes them the same way.
    for name, buffer in layer.named_buffers(recurse=False):
        if name in saved:
            buffer.data.copy_(saved[name])  # type: ignore[arg-type]
    if "_has_statistics" in saved:
        layer.__dict__["_has_statistics"] = saved["_has_statistics"]


@torch.no_grad()
def _apply(layer: nn.Module, pooled: Moments) -> None:
    """``layer``'s running-statistics update for one batch with these moments."""
    mean, var, count = pooled.mean, pooled.biased_var, pooled.n
    # the buffers' storage, without autograd version bumps (see _restore)
    owner = SimpleNamespace(momentum=layer.momentum, **{
        name: buffer.data for name, buffer in layer.named_buffers(recurse=False)})
    owner.num_batches_tracked.add_(1)
    estimator = getattr(layer, "estimator", None)
    if estimator in ESTIMATORS:
        skipped = update_running_statistics(owner, estimator, mean, var, count)
        if hasattr(owner, "skipped_updates"):
            owner.skipped_updates.add_(skipped.to(owner.skipped_updates.dtype))
        return
    momentum = layer.momentum
    if momentum is None:
        momentum = 1.0 / float(owner.num_batches_tracked)
    unbiased = pooled.m2 / (count - 1) if count > 1 else var
    for buffer, value in ((owner.running_mean, mean), (owner.running_var, unbiased)):
        buffer.copy_(torch.lerp(buffer.double(), value.to(buffer.device), momentum))


class Accumulation:
    """What :func:`accumulate_statistics` yields: the micro-batches seen so far per layer."""

    def __init__(self, layers: list[nn.Module]) -> None:
        self.layers = layers
        self.pooled: dict[nn.Module, Moments] = {}
        self.calls: dict[nn.Module, int] = {layer: 0 for layer in layers}
        self._saved: dict[nn.Module, list[dict[str, object]]] = {layer: [] for layer in layers}

    def _before(self, layer: nn.Module, args: tuple) -> None:
        self._saved[layer].append(_snapshot(layer) if layer.training else {})

    def _after(self, layer: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        saved = self._saved[layer].pop()
        input = hook_input(args, kwargs)
        if not layer.training or input is None:
            return
        _restore(layer, saved)
        seen = moments(input)
        previous = self.pooled.get(layer)
        self.pooled[layer] = seen if previous is None else previous.merge(seen)
        self.calls[layer] += 1


@contextlib.contextmanager
def accumulate_statistics(model: nn.Module) -> Iterator[Accumulation]:
    """Update every BN layer of ``model`` once, on exit, with all the block's batches together.

    See the module docstring. Yields an :class:`Accumulation` (``calls``: recorded
    training forwards per layer; ``pooled``: their moments). Raises ``ValueError``
    if ``model`` has no BN layer that tracks running statistics.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"accumulate_statistics: expected an nn.Module, got {type(model).__name__}")
    found = tracking_layers(model)
    if not found:
        raise ValueError("accumulate_statistics: the model has no BN layer that tracks "
                         "running statistics")
    layers = [layer for layer in found if layer not in _ACTIVE]  # nesting: outermost owns
    state = Accumulation(layers)
    entry = {layer: _snapshot(layer) for layer in layers}
    handles = []
    for layer in layers:
        handles.append(layer.register_forward_pre_hook(state._before))
        handles.append(layer.register_forward_hook(state._after, with_kwargs=True))
        _ACTIVE.add(layer)
    try:
        yield state
    except BaseException:
        for layer in layers:
            _restore(layer, entry[layer])
        raise
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            _ACTIVE.discard(layer)
    for layer in layers:
        if layer in state.pooled:
            _apply(layer, state.pooled[layer])
