"""figure2.png: validation accuracy of every variant against training steps (log x, seed
bands), and the learning-rate schedules the runs followed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from batchnorm.experiments.inception.analysis import group_seeds
from batchnorm.experiments.inception.recipe import CONTROLS, VARIANTS, Recipe
from batchnorm.experiments.inception.train import learning_rate
from batchnorm.experiments.runner.plots import mean_band, save_plot

__all__ = ["save_figure2"]


def save_figure2(path: str | Path, results: dict[str, dict[str, Any]],
                 target: float | None = None) -> None:
    """Left: one curve per recipe (mean over its seeds, band = their range), controls dashed.
    Right: the lr schedules (lr / lr0) of the runs."""
    save_plot(path, (13, 5.2), lambda figure: _draw(figure, results, target), dpi=110)


def _seed_table(runs: list[dict[str, Any]]) -> tuple[list[int], np.ndarray]:
    """Steps of the longest run and (seeds, steps) accuracies, NaN where a run stopped."""
    longest = max(runs, key=lambda run: len(run["history"]))
    steps = [h["step"] for h in longest["history"]]
    table = np.full((len(runs), len(steps)), np.nan)
    for row, run in enumerate(runs):
        accuracy = {h["step"]: h["val_accuracy"] for h in run["history"]}
        table[row] = [accuracy.get(step, np.nan) for step in steps]
    return steps, table


def _draw(figure: Any, results: dict[str, dict[str, Any]], target: float | None) -> None:
    axis, schedule = figure.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    groups = group_seeds(list(results))
    colors = iter(f"C{i}" for i in range(20))
    for name in (*VARIANTS, *CONTROLS):
        if name not in groups:
            continue
        runs = [results[n] for n in groups[name]]
        steps, table = _seed_table(runs)
        label = f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
        if any(run["diverged"] for run in runs):
            label += f", diverged at step {min(r['diverged_at_step'] or 0 for r in runs)}"
        color = next(colors)
        dashed = name in CONTROLS
        if np.isfinite(table).any():
            mean_band(axis, steps, table, color=color, label=label,
                      linestyle="--" if dashed else "-", marker=".", markersize=3)
        else:
            axis.plot([], [], color=color, label=label, linestyle="--" if dashed else "-")
        if name in ("inception", "bn-x5"):  # the two decay speeds (x1, x6)
            recipe = Recipe(**runs[0]["recipe"])
            total = runs[0]["scale"]["steps"]
            every = range(0, total, max(1, total // 300))
            schedule.plot(list(every), [learning_rate(recipe, t, total) / recipe.lr
                                        for t in every], color=color,
                          label=f"{name}: decay speed x{recipe.lr_decay_speed:g}")
    if target is not None:
        axis.axhline(target, color="gray", lw=0.8, ls=":", label=f"target {100 * target:g}%")
    axis.set_xscale("log")
    axis.set_xlabel("training steps (mini-batches of 32, log scale)")
    axis.set_ylabel("validation accuracy (fraction, single crop)")
    axis.set_title("Figure 2 at small scale: mean over seeds, band = seed range")
    axis.set_ylim(0, 1.15)
    axis.legend(loc="upper left", fontsize=7, ncol=2)
    schedule.set_xlabel("training steps (mini-batches of 32)")
    schedule.set_ylabel("learning rate / initial learning rate")
    schedule.set_title("learning-rate schedules (every run ends at 0)")
    schedule.set_ylim(0, 1.05)
    schedule.legend(loc="upper right", fontsize=7)
