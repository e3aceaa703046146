"""figure2.png: the validation accuracy of every variant against training steps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from batchnorm.experiments.inception.recipe import CONTROLS, VARIANTS
from batchnorm.experiments.runner.plots import mean_band, save_plot

__all__ = ["save_figure2"]


def save_figure2(path: str | Path, results: dict[str, dict[str, Any]]) -> None:
    """One curve per variant (mean over its seeds, band = their range), controls dashed."""
    save_plot(path, (8, 5), lambda figure: _draw(figure, results), dpi=120)


def _seed_table(results: dict[str, dict[str, Any]], name: str) -> tuple[list[int], np.ndarray]:
    """Steps of the variant's first seed and (seeds, steps) accuracies, NaN where a run
    stopped early (diverged)."""
    runs = [results[name]] + [results[other] for other in sorted(results)
                              if other.startswith(f"{name}@s")]
    steps = [h["step"] for h in results[name]["history"]]
    table = np.full((len(runs), len(steps)), np.nan)
    for row, run in enumerate(runs):
        accuracy = {h["step"]: h["val_accuracy"] for h in run["history"]}
        table[row] = [accuracy.get(step, np.nan) for step in steps]
    return steps, table


def _draw(figure: Any, results: dict[str, dict[str, Any]]) -> None:
    axis = figure.add_subplot()
    for name in (*VARIANTS, *CONTROLS):
        if name not in results:
            continue
        steps, table = _seed_table(results, name)
        label = name + (" (diverged)" if results[name]["diverged"] else "")
        mean_band(axis, steps, table, label=label, linestyle="--" if name in CONTROLS else "-")
    if "inception" in results and results["inception"]["max_accuracy"] is not None:
        axis.axhline(results["inception"]["max_accuracy"], color="gray", lw=0.8, ls=":")
    axis.set_xlabel("training steps (mini-batches of 32)")
    axis.set_ylabel("validation accuracy (single crop)")
    axis.set_title("Figure 2 at small scale: Inception variants")
    axis.set_ylim(0, 1)
    axis.legend(loc="lower right", fontsize=8)
