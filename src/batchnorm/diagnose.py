"""A health check of every BN layer: are its running statistics fit for inference?

``batchnorm.diagnose(model, batches)`` finds each layer that keeps running
statistics by its buffers (``running_mean`` and ``running_var``: torch's BN
layers, this project's, and any other layer that holds them), runs ``batches``
through the model once, the way Algorithm 2 step 3 does (the model in eval
mode, its BN layers in training mode, so each layer sees inputs normalized as
in training), and compares each layer's running statistics with the *fresh*
statistics of what it was given. Per channel c, over all N values seen::

    shift_c     = |mean_fresh_c - running_mean_c| / sqrt(running_var_c + eps)
    var_ratio_c = var_fresh_c / running_var_c        (var_fresh unbiased, pooled exactly)

reported as max and mean over channels (and ``var_log_mean``, the mean of |ln var_ratio_c|,
a symmetric summary).

``shift`` is the train/eval discrepancy of the mean in units of the running std
(what an inference-time input is off by); a factor ``max(r, 1/r)`` of the
variance ratio far from 1 means eval outputs are scaled wrongly. The pass
changes nothing: buffers, the ``_has_statistics`` flags and every module's
train/eval mode are put back, also when a batch raises.

Findings (thresholds in :class:`Limits`):

* ``running mean off``: max shift > ``shift``;
* ``running variance off``: max variance factor > ``var_factor``;
* ``dead channels``: |gamma| <= ``dead_gamma`` (the channel outputs beta alone);
* ``running variance below eps``: the channel is divided by ~sqrt(eps) at inference;
* ``never trained``: ``num_batches_tracked == 0`` (initial mean 0 / var 1);
* ``few batches``: ``0 < num_batches_tracked < min_batches``, or population
  counters (``population_samples``) below ``min_samples``;
* ``skipped updates``: ``skipped_updates > 0`` (non-finite batches were left out);
* ``non-finite running statistics``; ``did not run`` on these batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from batchnorm.accumulate import Moments, moments
from batchnorm.passes import statistics_pass

__all__ = ["Diagnosis", "LayerDiagnosis", "Limits", "diagnose", "statistics_layers"]


@dataclass(frozen=True)
class Limits:
    """When a number becomes a finding (see the module docstring)."""

    shift: float = 0.5
    var_factor: float = 2.0
    dead_gamma: float = 1e-4
    min_batches: int = 10
    min_samples: int = 1000


@dataclass
class LayerDiagnosis:
    """One BN layer: its numbers and what they say (``findings`` empty: healthy)."""

    name: str
    kind: str
    channels: int
    batches_tracked: int | None
    population_samples: int | None
    skipped_updates: int | None
    fresh_samples: int
    shift_max: float | None
    shift_mean: float | None
    var_factor_max: float | None
    var_ratio_mean: float | None
    var_log_mean: float | None  # mean over channels of |ln var_ratio|
    dead_channels: list[int] = field(default_factory=list)
    tiny_var_channels: list[int] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Diagnosis:
    """Every layer's :class:`LayerDiagnosis`, in module order; ``str()`` is the table."""

    layers: list[LayerDiagnosis]
    batches: int

    def __iter__(self) -> Iterator[LayerDiagnosis]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def flagged(self) -> list[LayerDiagnosis]:
        return [layer for layer in self.layers if layer.findings]

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "layers": [layer.to_dict() for layer in self.layers]}

    def table(self) -> str:
        header = ("layer", "type", "C", "tracked", "shift max", "shift mean", "var x max",
                  "var ratio", "findings")
        rows = [header]
        for d in self.layers:
            rows.append((d.name or "(model)", d.kind, str(d.channels), _int(d.batches_tracked),
                         _num(d.shift_max), _num(d.shift_mean), _num(d.var_factor_max),
                         _num(d.var_ratio_mean), "; ".join(d.findings) or "ok"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
        lines = ["  ".join([cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
                           + [row[-1]]) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths) + "  " + "-" * 8)
        summary = (f"{len(self.flagged)} of {len(self.layers)} BN layers flagged "
                   f"({self.batches} batches)")
        return "\n".join([*lines, summary])

    def __str__(self) -> str:
        return self.table()


def _int(value: int | None) -> str:
    return "-" if value is None else str(value)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def statistics_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every module holding ``running_mean`` and ``running_var``
    tensors: BN layers of any class, found by their buffers."""
    return [
        (name, module) for name, module in model.named_modules()
        if isinstance(getattr(module, "running_mean", None), Tensor)
        and isinstance(getattr(module, "running_var", None), Tensor)
    ]  # fmt: skip


def _count(module: nn.Module, name: str) -> int | None:
    value = getattr(module, name, None)
    return int(value) if isinstance(value, Tensor) and value.numel() == 1 else None


@torch.no_grad()
def _fresh_moments(model: nn.Module, layers: list[nn.Module], batches: Iterable[Any],
                   num_batches: int | None) -> tuple[dict[nn.Module, Moments], int]:
    """Pooled moments of each layer's input over the batches; the model is left as found."""
    saved = {module: ({name: buffer.clone() for name, buffer in
                       module.named_buffers(recurse=False)},
                      module.__dict__.get("_has_statistics"))
             for module in model.modules()}  # fmt: skip
    pooled: dict[nn.Module, Moments] = {}

    def observe(layer: nn.Module, x: Tensor) -> None:
        seen = moments(x)
        pooled[layer] = seen if layer not in pooled else pooled[layer].merge(seen)

    try:
        seen = statistics_pass(model, layers, batches, num_batches, observe, "diagnose")
    finally:
        for module, (buffers, flag) in saved.items():
            for name, buffer in module.named_buffers(recurse=False):
                if name in buffers:
                    buffer.data.copy_(buffers[name])
            if flag is not None:
                module.__dict__["_has_statistics"] = flag
    return pooled, seen


def _finite_float(value: Tensor) -> float:
    number = float(value)
    return number if math.isfinite(number) else float("nan")


def _layer_diagnosis(name: str, layer: nn.Module, fresh: Moments | None,
                     limits: Limits) -> LayerDiagnosis:
    running_mean = layer.running_mean.detach().double().cpu()
    running_var = layer.running_var.detach().double().cpu()
    eps = float(getattr(layer, "eps", 1e-5))
    tracked = _count(layer, "num_batches_tracked")
    population = _count(layer, "population_samples")
    skipped = _count(layer, "skipped_updates")
    found: list[str] = []
    shift_max = shift_mean = factor_max = ratio_mean = log_mean = None
    if fresh is None:
        found.append("did not run on these batches")
    else:
        mean = fresh.mean.cpu()
        var = fresh.m2.cpu() / max(fresh.n - 1, 1)
        shift = (mean - running_mean).abs() / (running_var + eps).sqrt()
        ratio = var / running_var
        factor = torch.maximum(ratio, 1 / ratio)
        shift_max, shift_mean = _finite_float(shift.max()), _finite_float(shift.mean())
        factor_max, ratio_mean = _finite_float(factor.max()), _finite_float(ratio.mean())
        log_mean = _finite_float(ratio.log().abs().mean())
        if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
            found.append("non-finite inputs in these batches")
        if shift_max > limits.shift:
            found.append(f"running mean off by up to {shift_max:.3g} running std "
                         f"(channel {int(shift.argmax())})")
        if factor_max > limits.var_factor:
            found.append(f"running variance off by a factor up to {factor_max:.3g} "
                         f"(channel {int(factor.argmax())})")
    weight = getattr(layer, "weight", None)
    dead: list[int] = []
    if isinstance(weight, Tensor) and weight.shape == running_mean.shape:
        dead = torch.nonzero(weight.detach().abs().cpu() <= limits.dead_gamma).flatten().tolist()
    if dead:
        found.append(f"{len(dead)} dead channels (|gamma| <= {limits.dead_gamma:g}): "
                     f"{_channels(dead)}")
    tiny = torch.nonzero(running_var < eps).flatten().tolist()
    if tiny:
        found.append(f"{len(tiny)} channels with running variance below eps: {_channels(tiny)}")
    if not (torch.isfinite(running_mean).all() and torch.isfinite(running_var).all()):
        found.append("non-finite running statistics")
    if tracked == 0:
        found.append("never trained (num_batches_tracked = 0): initial mean 0 / var 1")
    elif tracked is not None and tracked < limits.min_batches:
        found.append(f"statistics from only {tracked} batches")
    if population is not None and tracked != 0 and population < limits.min_samples:
        found.append(f"population statistics from only {population} values per channel")
    if skipped:
        found.append(f"{skipped} non-finite batches skipped")
    return LayerDiagnosis(name, type(layer).__name__, running_mean.numel(), tracked, population,
                          skipped, 0 if fresh is None else fresh.n, shift_max, shift_mean,
                          factor_max, ratio_mean, log_mean, dead, tiny, found)


def _channels(indices: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (", ..." if len(indices) > limit else "")


def diagnose(model: nn.Module, batches: Iterable[Any], num_batches: int | None = None,
             limits: Limits | None = None) -> Diagnosis:
    """Check every BN layer of ``model`` against fresh statistics of ``batches``.

    ``batches`` yields Tensors or tuples whose first element is the input (the first
    ``num_batches`` of them, all if None). Returns a :class:`Diagnosis`; the model is
    left exactly as it was. Raises ``ValueError`` without BN layers or batches.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"diagnose: expected an nn.Module, got {type(model).__name__}")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"diagnose: num_batches must be at least 1, got {num_batches}")
    limits = limits or Limits()
    named = statistics_layers(model)
    if not named:
        raise ValueError("diagnose: the model has no layer with running statistics")
    pooled, seen = _fresh_moments(model, [layer for _, layer in named], batches, num_batches)
    if seen == 0:
        raise ValueError("diagnose: no batches were given")
    return Diagnosis([_layer_diagnosis(name, layer, pooled.get(layer), limits)
                      for name, layer in named], seen)
