"""Ioffe & Szegedy 2015, sections 3.3 and 4.2: BN enables higher learning rates.

Two models, each without and with BN, trained at every rate of a log grid wide enough
that both arms fail at its top, several seeds (seed-paired: same initial weights and
batches in both arms):

* the Figure 1 MLP (784-100-100-100-10, sigmoid, N(0, 0.1^2) weights, plain SGD, batch
  60) on MNIST, one :class:`~batchnorm.models.stacked.StackedMLP` per arm holding every
  rate x seed;
* the lab's :class:`~batchnorm.models.SmallConvNet` (ReLU; with this project's
  BatchNorm2d/1d or none; SGD momentum 0.9, batch 64) on Fashion-MNIST.

Per arm and seed the largest rate that *trains* (:func:`training.trains`: finite loss and
a final validation accuracy >= 90% of that arm and seed's best over the grid); per arm
the validation-best rate (:func:`training.best_lr`) and the test accuracy there. The
number: per seed ``log2(max trainable lr with BN / max trainable lr without)``; the rule
(:func:`verdict`) asks for at least one doubling beyond the grid's resolution for each
model. The sweeps are also :mod:`.init`'s and :mod:`.bjorck`'s (same memo keys).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.training import (
    ConvRun,
    DataSpec,
    MLPGrid,
    best_lr,
    convnet_runs,
    late_change,
    max_trainable_lr,
    mlp_grid,
    per_seed,
    percent,
    plot_lines,
)
from batchnorm.experiments.runner import Settings, setting
from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    combine,
    decide,
    mean_interval,
)
from batchnorm.models.mlp import PAPER_SIZES

__all__ = [
    "ARMS",
    "CLAIM",
    "MODELS",
    "RULE",
    "SweepConfig",
    "conv_sweep",
    "fields_of",
    "lr_summary",
    "mlp_sweep",
    "sweeps",
    "verdict",
]

ARMS = ("base", "bn")
ARM_NAMES = {"base": "without BN", "bn": "with BN"}
MODELS = ("mlp", "conv")
MODEL_NAMES = {"mlp": "Figure 1 MLP (sigmoid, MNIST)", "conv": "SmallConvNet (ReLU, Fashion-MNIST)"}

RULE = Rule("BN enables higher learning rates",
            "log2(largest trainable lr with BN / without BN), per seed", "greater", 0.5)


@dataclass(frozen=True)
class SweepConfig(Settings):
    """The two learning-rate sweeps (shared by higher-lr, init and bjorck).

    default (measured on 2 cores, --threads 1): MLP 11 rates (factor 2, 0.125 .. 128) x
    3 seeds x 2 arms = 66 networks of 1500 steps (1.6 epochs of 55k images) in two stacks;
    convnet 6 rates (factor sqrt(10), 0.01 .. 3.16) x 3 seeds x 2 arms = 36 runs of 400 steps
    (0.5 epoch of 55k Fashion-MNIST images): smaller than the issue's design (more steps,
    a finer grid) to fit the lab's budget; the convergence check is in the report.
    """

    seeds: int = setting(3, "seeds per arm and rate")
    mlp_train: int | None = setting(None, "MLP training rows (None: all 55k)")
    mlp_val: int = setting(5000, "validation rows (last rows of the official train set)")
    mlp_test: int | None = setting(None, "test rows (None: all 10k)")
    mlp_lrs: tuple[float, ...] = setting(tuple(2.0 ** k for k in range(-3, 8)), "MLP rates")
    mlp_steps: int = setting(1500, "MLP SGD steps (batch 60)")
    mlp_init_std: float = setting(0.1, "MLP weight std (Figure 1's)")
    conv_train: int | None = setting(None, "convnet training rows (None: all 55k)")
    conv_val: int = setting(5000, "convnet validation rows")
    conv_test: int | None = setting(5000, "convnet test rows")
    conv_lrs: tuple[float, ...] = setting((0.01, 0.03162, 0.1, 0.3162, 1.0, 3.162),
                                          "convnet rates")
    conv_steps: int = setting(400, "convnet SGD steps (batch 64, momentum 0.9)")
    conv_channels: tuple[int, ...] = setting((8, 16), "convnet channels")
    conv_hidden: int = setting(64, "convnet hidden units")


QUICK = SweepConfig(seeds=2, mlp_train=10000, mlp_val=2000, mlp_test=2000,
                    mlp_lrs=(0.125, 0.5, 2.0, 8.0, 32.0, 128.0), mlp_steps=300,
                    conv_train=5000, conv_val=1000, conv_test=1000,
                    conv_lrs=(0.03162, 0.3162, 3.162), conv_steps=60)
DEFAULT = SweepConfig()
GPU = SweepConfig(seeds=5, mlp_lrs=tuple(2.0 ** (k / 2) for k in range(-8, 17)),
                  mlp_steps=10000, conv_test=None,
                  conv_lrs=tuple(float(f"{10 ** (k / 4):.4g}") for k in range(-12, 7)),
                  conv_steps=4000, conv_channels=(32, 64), conv_hidden=256)
PRESETS = {"quick": QUICK, "default": DEFAULT, "gpu": GPU}


def fields_of(config: SweepConfig) -> dict[str, Any]:
    """The sweep's fields of ``config`` (to build a derived claim's config from a preset)."""
    return {field.name: getattr(config, field.name) for field in dataclasses.fields(SweepConfig)}


# ----------------------------------------------------------------------------- the sweeps


def mlp_data(config: SweepConfig) -> DataSpec:
    return DataSpec("mnist", config.mlp_train, config.mlp_val, config.mlp_test)


def conv_data(config: SweepConfig) -> DataSpec:
    return DataSpec("fashion-mnist", config.conv_train, config.conv_val, config.conv_test)


def mlp_settings(config: SweepConfig) -> dict[str, Any]:
    return {"sizes": PAPER_SIZES, "steps": config.mlp_steps, "init_std": config.mlp_init_std,
            "train_eval": 0}


def mlp_sweep(config: SweepConfig, context: ClaimContext) -> dict[str, list[dict[str, Any]]]:
    """arm -> one result per (rate, seed) of the MLP sweep (one memoized stack per arm)."""
    seeds = tuple(range(config.seeds))
    return {arm: mlp_grid(context, mlp_data(config),
                          MLPGrid.product(lrs=config.mlp_lrs, seeds=seeds,
                                          batch_norm=arm == "bn", **mlp_settings(config)),
                          f"MLP lr sweep ({ARM_NAMES[arm]})")
            for arm in ARMS}


def conv_run(config: SweepConfig, *, batch_norm: bool, lr: float, seed: int,
             **changes: Any) -> ConvRun:
    """A convnet run of the sweep's kind (``changes``: other fields, e.g. dropout)."""
    fields = {"steps": config.conv_steps, "channels": tuple(config.conv_channels),
              "hidden": config.conv_hidden, "train_eval": 0, **changes}
    return ConvRun(batch_norm=batch_norm, lr=lr, seed=seed, **fields)


def conv_sweep(config: SweepConfig, context: ClaimContext) -> dict[str, list[dict[str, Any]]]:
    """arm -> one result per (rate, seed) of the convnet sweep (each run memoized)."""
    return {arm: convnet_runs(context, conv_data(config),
                              [conv_run(config, batch_norm=arm == "bn", lr=lr, seed=seed)
                               for lr in config.conv_lrs for seed in range(config.seeds)],
                              f"convnet lr sweep ({ARM_NAMES[arm]})")
            for arm in ARMS}


def sweeps(config: SweepConfig, context: ClaimContext) -> dict[str, dict[str, list[dict]]]:
    """model -> arm -> results."""
    return {"mlp": mlp_sweep(config, context), "conv": conv_sweep(config, context)}


# ----------------------------------------------------------------------------- the rule


def verdict(ratios: Mapping[str, Sequence[float]]) -> tuple[Verdict, Interval,
                                                            dict[str, tuple[Verdict, Interval]]]:
    """The rule, on per-seed log2 ratios per model (seed-aligned lists).

    Per model: :data:`RULE` (supported if the 95% interval lies above 0.5, i.e. BN's
    largest trainable rate is at least one doubling above the baseline's on every seed's
    average, beyond the grid's half-step). Overall: all models agree, else mixed. The
    headline interval is over seeds of the per-seed mean of the models' ratios.
    """
    if not ratios:
        raise ValueError("verdict: no models")
    per_model = {}
    for model, values in ratios.items():
        interval = mean_interval(values)
        per_model[model] = (decide(RULE, interval), interval)
    lengths = {len(values) for values in ratios.values()}
    if len(lengths) != 1:
        raise ValueError(f"verdict: models have different seed counts {sorted(lengths)}")
    pooled = mean_interval(np.mean([list(v) for v in ratios.values()], axis=0).tolist())
    return combine(v for v, _ in per_model.values()), pooled, per_model


def log2_ratios(results: Mapping[str, Sequence[Mapping[str, Any]]], seeds: int) -> list[float]:
    """Per seed log2(max trainable lr with BN / without) (a seed where no rate trains
    counts as half the grid's smallest rate)."""
    lows = {arm: min(r["lr"] for r in results[arm]) / 2 for arm in ARMS}
    values = []
    for seed in range(seeds):
        top = {arm: max_trainable_lr(results[arm], seed) or lows[arm] for arm in ARMS}
        values.append(math.log2(top["bn"] / top["base"]))
    return values


def lr_summary(results: Mapping[str, Sequence[Mapping[str, Any]]], seeds: int
               ) -> dict[str, dict[str, Any]]:
    """Per arm: validation-best rate, its val/test/val-at-80% accuracies per seed, the
    largest trainable rate per seed, whether it is the grid's top."""
    summary = {}
    for arm in ARMS:
        rows = results[arm]
        best = best_lr(rows)
        tops = [max_trainable_lr(rows, seed) for seed in range(seeds)]
        summary[arm] = {
            "best_lr": best,
            "val": per_seed(rows, "val")[best], "test": per_seed(rows, "test")[best],
            "val_at_80": per_seed(rows, "val_at_80")[best],
            "max_trainable": tops,
            "top_of_grid": max(r["lr"] for r in rows),
        }
    return summary


def sweep_table(results: Mapping[str, Sequence[Mapping[str, Any]]], summary: Mapping) -> str:
    """Markdown: per rate, each arm's final validation accuracy (mean [95% interval])."""
    lines = ["| lr | " + " | ".join(f"val. acc. {ARM_NAMES[a]} (%)" for a in ARMS) + " |",
             "|---|" + "---|" * len(ARMS)]
    tables = {arm: per_seed(results[arm], "val") for arm in ARMS}
    for lr in sorted(tables["base"]):
        cells = []
        for arm in ARMS:
            mark = " **(best)**" if lr == summary[arm]["best_lr"] else ""
            cells.append(percent(tables[arm][lr]) + mark)
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def arm_table(summary: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| arm | best lr (val.) | val. acc. (%) | test acc. at best lr (%) | "
             "val. acc. at 80% of steps (%) | largest trainable lr per seed |",
             "|---|---|---|---|---|---|"]
    for arm in ARMS:
        s = summary[arm]
        tops = ", ".join("none" if t is None else f"{t:g}" for t in s["max_trainable"])
        lines.append(f"| {ARM_NAMES[arm]} | {s['best_lr']:g} | {percent(s['val'])} | "
                     f"{percent(s['test'])} | {percent(s['val_at_80'])} | {tops} |")
    return "\n".join(lines)


def sweep_plot(context: ClaimContext, model: str, results: Mapping[str, Sequence[Mapping]],
               metric: str = "val") -> str:
    path = context.folder / f"{model}_{metric}_vs_lr.png"
    tables = {arm: per_seed(results[arm], metric) for arm in ARMS}
    lrs = sorted(tables["base"])
    label = "final validation accuracy" if metric == "val" else "test accuracy"
    plot_lines(path, lrs, {ARM_NAMES[arm]: np.array([tables[arm][lr] for lr in lrs]).T
                           for arm in ARMS},
               xlabel="learning rate", ylabel=label, title=f"{MODEL_NAMES[model]}: {label}")
    return context.relative(path)


# ----------------------------------------------------------------------------- the claim


def run(config: SweepConfig, context: ClaimContext) -> ClaimResult:
    results = sweeps(config, context)
    ratios, summaries, plots, parts = {}, {}, [], []
    for model in MODELS:
        ratios[model] = log2_ratios(results[model], config.seeds)
        summaries[model] = lr_summary(results[model], config.seeds)
    overall, pooled, per_model = verdict(ratios)
    censored = []
    for model in MODELS:
        plot = sweep_plot(context, model, results[model])
        plots.append(plot)
        s = summaries[model]
        if any(t == s["bn"]["top_of_grid"] for t in s["bn"]["max_trainable"]):
            censored.append(model)
        model_verdict, interval = per_model[model]
        drift = {arm: late_change([r for r in results[model][arm]
                                   if r["lr"] == s[arm]["best_lr"]]) for arm in ARMS}
        parts += [f"### {MODEL_NAMES[model]}", "",
                  f"log2 ratio of largest trainable rates (BN / no BN), per seed: "
                  f"{', '.join(f'{v:g}' for v in ratios[model])}; mean "
                  f"{interval.format(digits=2)}: **{model_verdict}**.", "",
                  arm_table(s), "",
                  "Convergence check: at each arm's best rate, the validation accuracy changed "
                  f"by {drift['base'].format(scale=100)} points (without BN) and "
                  f"{drift['bn'].format(scale=100)} (with BN) over the last 20% of the steps.",
                  "", sweep_table(results[model], s), "",
                  f"![{model} validation accuracy vs learning rate]({plot})", ""]
    words = []
    for model in MODELS:
        s = summaries[model]
        words.append(
            f"{MODEL_NAMES[model]}: largest trainable rate {_tops(s['base'])} without BN, "
            f"{_tops(s['bn'])} with BN (log2 ratio {per_model[model][1].format()}); "
            f"best rates {s['base']['best_lr']:g} vs {s['bn']['best_lr']:g}, test accuracy "
            f"there {percent(s['base']['test'])}% vs {percent(s['bn']['test'])}%")
    finding = "; ".join(words) + "."
    if censored:
        finding += (f" For {', '.join(censored)} BN still trained at the grid's top rate on "
                    "some seed, so its ratio there is a lower bound.")
    for model in MODELS:
        model_verdict, interval = per_model[model]
        if model_verdict == "supported":
            continue
        values = ratios[model]
        finding += (f" Against the source for the {model} ({model_verdict}): per-seed log2 "
                    f"ratios {', '.join(f'{v:.2f}' for v in values)}")
        if min(values) > 0:
            finding += (f" (BN's largest trainable rate {2 ** min(values):.3g}x to "
                        f"{2 ** max(values):.3g}x the baseline's on every seed)")
        if model_verdict == "not supported":
            finding += ("; the 95% interval lies below the margin of 0.5: BN did not train at "
                        "clearly higher rates.")
            continue
        low = "none" if interval.low is None else f"{interval.low:.2f}"
        finding += (f", but the 95% interval over {len(values)} seeds reaches down to {low}, "
                    "not clearly above the margin of 0.5 (one doubling on the grid's scale).")
    section = "\n".join([
        f"Trains = finite loss and final validation accuracy >= 90% of the arm and seed's "
        f"best over the grid. Seeds: {config.seeds} per arm and rate. Headline: per seed, "
        "the mean of the two models' log2 ratios.", "", *parts])
    details = {"ratios": ratios, "summaries": summaries,
               "per_model": {m: {"verdict": v, "interval": i.to_dict()}
                             for m, (v, i) in per_model.items()}}
    return ClaimResult(overall, "log2(largest trainable lr with BN / without), mean of MLP "
                       "and convnet", pooled, finding, section, details, tuple(plots))


def _tops(summary: Mapping[str, Any]) -> str:
    return "/".join("none" if t is None else f"{t:g}" for t in summary["max_trainable"])


CLAIM = ClaimSpec(
    id="higher-lr",
    title="BN enables higher learning rates",
    source="Ioffe & Szegedy 2015, sec. 3.3, 4.2",
    statement="Batch Normalization enables higher learning rates: training does not "
              "diverge or stall at rates that break the unnormalized network.",
    measured="final validation accuracy vs learning rate (log grid), with and without BN, "
             "for the Figure 1 sigmoid MLP on MNIST and a small ReLU convnet on "
             "Fashion-MNIST; per seed the largest rate that trains (finite loss, validation "
             "accuracy >= 90% of the arm's best), test accuracy at each arm's "
             "validation-best rate",
    rule=RULE.describe() + ", for each model; both models must agree (else mixed)",
    presets=PRESETS,
    run=run,
)
