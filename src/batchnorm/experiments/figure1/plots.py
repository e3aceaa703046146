"""figure1_<pair>.png: (a) accuracy, (b, c) the unit's percentiles without / with BN,
(d) BN's x-hat, (e) the whole last hidden layer, (f) accuracy vs learning rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from batchnorm.experiments.figure1.report import ARMS, LABELS, curves
from batchnorm.experiments.runner.plots import mean_band, save_plot

__all__ = ["save_figure1"]

_COLORS = {"baseline": "tab:blue", "bn": "tab:red"}
_PERCENTILE_STYLE = {"85": ("85th", "tab:green"), "50": ("50th", "black"),
                     "15": ("15th", "tab:purple")}


def save_figure1(path: str | Path, rows: list[dict[str, Any]], pair: str,
                 sweep: dict[str, Any] | None, unit: int) -> None:
    """The six panels of one rate pair, written to ``path``."""
    data = {arm: curves(rows, arm, pair) for arm in ARMS}
    population = curves(rows, "bn", pair, "population")
    save_plot(path, (15, 8.5), lambda figure: _draw(figure, data, population, sweep, unit))


def _steps_axis(axis: Any) -> None:
    axis.set_xscale("symlog", linthresh=1)
    axis.set_xlim(left=0)
    axis.set_xlabel("training steps (log scale; 0 at the left edge)")


def _percentiles(axis, steps, curve, prefix: str, **line) -> None:
    for key, (label, color) in _PERCENTILE_STYLE.items():
        mean_band(axis, steps, curve[f"{prefix}p{key}"], color, label, **line)


def _draw(figure: Any, data: dict[str, dict[str, Any]], population: dict[str, Any],
          sweep: dict[str, Any] | None, unit: int) -> None:
    grid = figure.add_gridspec(2, 3, wspace=0.25, hspace=0.38)
    seeds = len(data["bn"]["seeds"])
    lrs = {arm: data[arm]["lr"] for arm in ARMS}

    axis = figure.add_subplot(grid[0, 0])
    for arm in ARMS:
        mean_band(axis, data[arm]["steps"], data[arm]["accuracy"], _COLORS[arm],
                  f"{LABELS[arm]} (lr {lrs[arm]:g})", linewidth=1.5)
    _steps_axis(axis)
    axis.set_ylim(0.0, 1.0)
    if int((data["bn"]["steps"] >= 1000).sum()) >= 2:
        inset = axis.inset_axes([0.45, 0.12, 0.52, 0.45])
        for arm in ARMS:
            keep = data[arm]["steps"] >= 1000
            mean_band(inset, data[arm]["steps"][keep], data[arm]["accuracy"][:, keep],
                      _COLORS[arm])
        inset.set_title("from step 1000 (linear steps)", fontsize="small")
        inset.tick_params(labelsize="x-small")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"(a) test accuracy, mean of {seeds} seeds, band = min-max")
    axis.legend(loc="upper left")

    panels = [(grid[0, 1], "baseline", "", "(b) without BN: sigmoid input Wu + b"),
              (grid[0, 2], "bn", "", "(c) with BN: sigmoid input gamma x-hat + beta"),
              (grid[1, 0], "bn", "xhat_", "(d) with BN: x-hat (before gamma, beta)")]
    shared = []
    for spec, arm, prefix, title in panels:
        axis = figure.add_subplot(spec)
        _percentiles(axis, data[arm]["steps"], data[arm], prefix, linewidth=1.2)
        if arm == "bn" and population["seeds"]:
            for key, (_label, color) in _PERCENTILE_STYLE.items():
                axis.plot(population["steps"], population[f"{prefix}p{key}"].mean(axis=0),
                          "o", color=color, markersize=4,
                          label="population stats" if key == "50" else None)
        _steps_axis(axis)
        axis.set_title(f"{title}, unit {unit}", fontsize="medium")
        axis.set_ylabel("value over the 10k test images")
        axis.legend(loc="lower left", title="percentile", ncol=2)
        if prefix == "":
            shared.append(axis)
    values = np.concatenate([data[arm][f"p{k}"].ravel() for arm in ARMS
                             for k in _PERCENTILE_STYLE])
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    margin = 0.05 * max(high - low, 1e-6)
    for axis in shared:  # same scale for (b) and (c)
        axis.set_ylim(low - margin, high + margin)

    axis = figure.add_subplot(grid[1, 1])
    for arm in ARMS:
        for key, style in (("15", ":"), ("50", "-"), ("85", "--")):
            mean_band(axis, data[arm]["steps"], data[arm][f"layer_p{key}"], _COLORS[arm],
                      f"{LABELS[arm]} p{key}", linestyle=style, linewidth=1.2)
    _steps_axis(axis)
    axis.set_ylabel("median over the 100 units")
    axis.set_title("(e) last hidden layer, sigmoid input: median over units",
                   fontsize="medium")
    axis.legend(loc="lower left", ncol=2)

    axis = figure.add_subplot(grid[1, 2])
    if sweep and "per_seed_final" in sweep:
        values = [float(v) for v in sweep["values"]]
        for arm in ARMS:
            table = np.array([sweep["per_seed_final"][arm][str(v)] for v in values])
            mean = table.mean(axis=1)
            axis.errorbar(values, mean, yerr=[mean - table.min(axis=1), table.max(axis=1) - mean],
                          color=_COLORS[arm], marker="o", capsize=3, label=LABELS[arm])
            best = sweep["winners"][arm]
            axis.plot([best], [mean[values.index(best)]], "*", color=_COLORS[arm],
                      markersize=14)
        axis.axhline(sweep["trains_threshold"], color="gray", linestyle=":",
                     label="'trains' threshold")
        axis.set_xscale("log")
        axis.set_ylim(0.0, 1.0)
        axis.legend(loc="lower left")
        axis.set_title(f"(f) sweep: {sweep['steps']} steps, {sweep['seeds']} seeds, "
                       "star = best", fontsize="medium")
    else:
        axis.set_title("(f) no learning-rate sweep recorded", fontsize="medium")
    axis.set_xlabel("learning rate (log scale)")
    axis.set_ylabel("final validation accuracy")
