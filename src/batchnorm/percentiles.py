"""Percentiles of one unit's values over training (the paper's Figure 1(b, c), generalized).

``tracker = batchnorm.track_percentiles(model, "4", unit=0)`` puts a forward hook on the
submodule named ``"4"``; each forward records, for channel ``unit`` of the module's input
(or output, ``where="output"``), the ``q`` percentiles over every value it holds in the batch
(the N rows, and all positions for an (N, C, *) input), with linear interpolation between
order statistics, as :func:`torch.quantile`::

    sorted values v_0 <= ... <= v_{n-1},   p = q/100 * (n - 1)
    percentile(q) = v_floor(p) + (p - floor(p)) * (v_floor(p)+1 - v_floor(p))

``tracker.records`` is a list of ``(step, percentiles)``, step counting the module's
forwards from 0 (every ``every``-th is recorded; ``training_only`` skips eval-mode
forwards, which then do not count); ``tracker.as_tensor()`` is a (records, len(q)) float64
tensor; ``tracker.remove()`` (or leaving a ``with`` block) removes the hook.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from batchnorm.passes import hook_input

__all__ = ["PercentileTracker", "track_percentiles"]


class PercentileTracker:
    """The recorded percentiles of one unit and the hook that records them."""

    def __init__(self, module: nn.Module, name: str, unit: int, q: tuple[float, ...],
                 where: str, every: int, training_only: bool) -> None:
        self.name, self.unit, self.q = name, unit, q
        self.where, self.every, self.training_only = where, every, training_only
        self.records: list[tuple[int, tuple[float, ...]]] = []
        self.step = 0
        self._fractions = torch.tensor([value / 100 for value in q], dtype=torch.float64)
        self._handle = module.register_forward_hook(self._record, with_kwargs=True)

    @torch.no_grad()
    def _record(self, module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        if self.training_only and not module.training:
            return
        step, self.step = self.step, self.step + 1
        if step % self.every:
            return
        values = hook_input(args, kwargs) if self.where == "input" else output
        if not isinstance(values, Tensor) or values.dim() < 2 or values.shape[1] <= self.unit:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"track_percentiles: {self.name!r} {self.where} {shape} has no "
                             f"unit {self.unit} along dim 1")
        column = values.detach()[:, self.unit].reshape(-1).double()
        found = torch.quantile(column, self._fractions.to(column.device))
        self.records.append((step, tuple(float(value) for value in found)))

    @property
    def steps(self) -> list[int]:
        return [step for step, _ in self.records]

    def as_tensor(self) -> Tensor:
        """``(len(records), len(q))`` float64: row i holds the percentiles at ``steps[i]``."""
        if not self.records:
            return torch.empty(0, len(self.q), dtype=torch.float64)
        return torch.tensor([values for _, values in self.records], dtype=torch.float64)

    def remove(self) -> None:
        """Stop recording (the records stay)."""
        self._handle.remove()

    def __enter__(self) -> PercentileTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def track_percentiles(model: nn.Module, layer_name: str, unit: int,
                      q: Sequence[float] = (15, 50, 85), *, where: str = "input",
                      every: int = 1, training_only: bool = False) -> PercentileTracker:
    """Record the ``q`` percentiles (in percent) of channel ``unit`` of submodule
    ``layer_name``'s input (or output) at each forward; see the module docstring."""
    try:
        module = model.get_submodule(layer_name)
    except AttributeError:
        names = [name for name, _ in model.named_modules() if name]
        raise ValueError(f"track_percentiles: no submodule {layer_name!r}; "
                         f"the model has {names[:12]}{' ...' if len(names) > 12 else ''}") from None
    if isinstance(unit, bool) or not isinstance(unit, int) or unit < 0:
        raise ValueError(f"track_percentiles: unit must be a non-negative int, got {unit!r}")
    q = tuple(float(value) for value in q)
    if not q or not all(0 <= value <= 100 for value in q):
        raise ValueError(f"track_percentiles: q must be percentages in [0, 100], got {q}")
    if where not in ("input", "output"):
        raise ValueError(f"track_percentiles: where must be 'input' or 'output', got {where!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"track_percentiles: every must be a positive int, got {every!r}")
    return PercentileTracker(module, layer_name, unit, q, where, every, training_only)
