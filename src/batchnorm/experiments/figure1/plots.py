"""figure1.png, laid out like the paper's Figure 1: (a) wide, then (b) and (c)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from batchnorm.experiments.figure1.report import ARMS, LABELS, curves
from batchnorm.experiments.runner.plots import mean_band, save_plot

__all__ = ["save_figure1"]

_COLORS = {"baseline": "tab:blue", "bn": "tab:red"}
_PERCENTILE_STYLE = {"p85": ("85th", "tab:green"), "p50": ("50th", "black"),
                     "p15": ("15th", "tab:purple")}


def save_figure1(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """The three panels from the metric rows of both networks, written to ``path``."""
    data = {arm: curves(rows, arm) for arm in ARMS}
    save_plot(path, (13, 3.8), lambda figure: _draw(figure, data))


def _draw(figure: Any, data: dict[str, dict[str, Any]]) -> None:
    grid = figure.add_gridspec(1, 3, width_ratios=[1.6, 1, 1], wspace=0.28)
    seeds = len(data["bn"]["seeds"])

    accuracy_axis = figure.add_subplot(grid[0])
    for arm in ARMS:
        mean_band(accuracy_axis, data[arm]["steps"], data[arm]["accuracy"], _COLORS[arm],
                  LABELS[arm], linewidth=1.5)
    lowest = min(float(data[arm]["accuracy"].mean(axis=0).min()) for arm in ARMS)
    # The paper's axis starts at 0.7; show lower values when there are any.
    accuracy_axis.set_ylim(0.7 if lowest >= 0.7 else max(0.0, lowest - 0.02), 1.0)
    accuracy_axis.set_xlabel("Steps")
    accuracy_axis.set_ylabel("Test accuracy")
    accuracy_axis.set_title("(a)" + (f" mean of {seeds} seeds, band = range" if seeds > 1
                                     else ""))
    accuracy_axis.legend(loc="lower right")

    percentile_axes = [figure.add_subplot(grid[1]), figure.add_subplot(grid[2])]
    for axis, arm, tag in zip(percentile_axes, ARMS, ("(b)", "(c)"), strict=True):
        for key, (label, color) in _PERCENTILE_STYLE.items():
            mean_band(axis, data[arm]["steps"], data[arm][key], color, label, linewidth=1.2)
        axis.set_title(f"{tag} {LABELS[arm]}")
        axis.set_xlabel("Steps")
    # Same scale for (b) and (c), so drift and stability compare at a glance.
    values = np.concatenate([data[arm][key].ravel() for arm in ARMS
                             for key in _PERCENTILE_STYLE])
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    margin = 0.05 * max(high - low, 1e-6)
    for axis in percentile_axes:
        axis.set_ylim(low - margin, high + margin)
    percentile_axes[0].set_ylabel("Input to the sigmoid")
    percentile_axes[1].legend(loc="upper right", title="percentile")
