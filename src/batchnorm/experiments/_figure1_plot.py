"""figure1.png, laid out like the paper's Figure 1: (a) wide, then (b) and (c).

Uses :class:`matplotlib.figure.Figure` directly (no pyplot): no global state, no
display backend, safe inside tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure

from batchnorm.experiments._figure1_report import ARMS, LABELS, curves

__all__ = ["figure1"]

_COLORS = {"baseline": "tab:blue", "bn": "tab:red"}
_PERCENTILE_STYLE = {"p85": ("85th", "tab:green"), "p50": ("50th", "black"),
                     "p15": ("15th", "tab:purple")}


def _band(axis, steps, table, color, label=None, **line) -> None:
    """Mean over seeds as a line; with several seeds their range as a band."""
    axis.plot(steps, table.mean(axis=0), color=color, label=label, **line)
    if table.shape[0] > 1:
        axis.fill_between(steps, table.min(axis=0), table.max(axis=0), color=color,
                          alpha=0.2, linewidth=0)


def figure1(rows: list[dict[str, Any]]) -> Figure:
    """The three panels from the metric rows of both networks."""
    figure = Figure(figsize=(13, 3.8))
    grid = figure.add_gridspec(1, 3, width_ratios=[1.6, 1, 1], wspace=0.28)
    data = {arm: curves(rows, arm) for arm in ARMS}
    seeds = len(data["bn"]["seeds"])

    accuracy_axis = figure.add_subplot(grid[0])
    for arm in ARMS:
        _band(accuracy_axis, data[arm]["steps"], data[arm]["accuracy"], _COLORS[arm],
              LABELS[arm], linewidth=1.5)
    lowest = min(float(data[arm]["accuracy"].mean(axis=0).min()) for arm in ARMS)
    # The paper's axis starts at 0.7; show lower values when there are any.
    accuracy_axis.set_ylim(0.7 if lowest >= 0.7 else max(0.0, lowest - 0.02), 1.0)
    accuracy_axis.set_xlabel("Steps")
    accuracy_axis.set_ylabel("Test accuracy")
    accuracy_axis.set_title("(a)" + (f" mean of {seeds} seeds, band = range" if seeds > 1
                                     else ""))
    accuracy_axis.legend(loc="lower right")
    accuracy_axis.grid(alpha=0.3)

    percentile_axes = [figure.add_subplot(grid[1]), figure.add_subplot(grid[2])]
    for axis, arm, tag in zip(percentile_axes, ARMS, ("(b)", "(c)"), strict=True):
        for key, (label, color) in _PERCENTILE_STYLE.items():
            _band(axis, data[arm]["steps"], data[arm][key], color, label, linewidth=1.2)
        axis.set_title(f"{tag} {LABELS[arm]}")
        axis.set_xlabel("Steps")
        axis.grid(alpha=0.3)
    # Same scale for (b) and (c), so drift and stability compare at a glance.
    values = np.concatenate([data[arm][key].ravel() for arm in ARMS
                             for key in _PERCENTILE_STYLE])
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    margin = 0.05 * max(high - low, 1e-6)
    for axis in percentile_axes:
        axis.set_ylim(low - margin, high + margin)
    percentile_axes[0].set_ylabel("Input to the sigmoid")
    percentile_axes[1].legend(loc="upper right", fontsize="small", title="percentile",
                              title_fontsize="small")
    return figure
