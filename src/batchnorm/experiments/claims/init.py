"""Ioffe & Szegedy 2015, section 3.3: BN makes training less sensitive to the initial
parameter scale.

The Figure 1 MLP (sigmoid, MNIST), with and without BN, initial weights
``scale * N(0, 0.1^2)`` for scales over three decades (x0.01 .. x10 of Figure 1's std),
each arm at its own validation-best rate of the :mod:`.higher_lr` MLP sweep (the scale-1
networks are that sweep's, reused through the memo), several seeds (seed-paired: the
same standard-normal draws and batches at every scale and in both arms).

Per arm and seed the spread of test accuracy over the scales (best minus worst); the
number is the seed-paired difference ``spread without BN - spread with BN`` (accuracy
points; positive: BN is less sensitive). Rule: :func:`verdict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from batchnorm.experiments.claims import higher_lr
from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.higher_lr import ARM_NAMES, ARMS, SweepConfig
from batchnorm.experiments.claims.training import MLPGrid, best_lr, mlp_grid, percent, plot_lines
from batchnorm.experiments.runner import setting
from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    decide,
    paired_interval,
)

__all__ = ["CLAIM", "RULE", "InitConfig", "spreads", "verdict"]

RULE = Rule("BN makes training less sensitive to the initial weight scale",
            "spread of test accuracy over init scales without BN minus with BN "
            "(accuracy fraction, seed-paired)", "greater", 0.02)


@dataclass(frozen=True)
class InitConfig(SweepConfig):
    """The :class:`higher_lr.SweepConfig` (whose MLP sweep picks each arm's rate) plus the
    init scales. default: 7 scales (x0.01 .. x10, factor ~3) x 3 seeds x 2 arms; the six
    scales other than 1 are new networks (36 in two stacks of 1500 steps)."""

    scales: tuple[float, ...] = setting((0.01, 0.03162, 0.1, 0.3162, 1.0, 3.162, 10.0),
                                        "multipliers of the MLP's initial weight std")


PRESETS = {
    "quick": InitConfig(**higher_lr.fields_of(higher_lr.QUICK), scales=(0.01, 1.0, 10.0)),
    "default": InitConfig(),
    "gpu": InitConfig(**higher_lr.fields_of(higher_lr.GPU)),
}


def verdict(spread_bn: Sequence[float], spread_base: Sequence[float]
            ) -> tuple[Verdict, Interval]:
    """:data:`RULE` on the seed-paired ``spread_base - spread_bn`` (supported if its 95%
    interval lies above 2 accuracy points)."""
    interval = paired_interval(spread_base, spread_bn)
    return decide(RULE, interval), interval


def spreads(table: dict[float, list[float]]) -> list[float]:
    """Per seed max - min over scales of ``table`` (scale -> per-seed accuracies)."""
    matrix = np.array(list(table.values()))  # (scales, seeds)
    return (matrix.max(axis=0) - matrix.min(axis=0)).tolist()


def run(config: InitConfig, context: ClaimContext) -> ClaimResult:
    sweep = higher_lr.mlp_sweep(config, context)
    seeds = tuple(range(config.seeds))
    others = tuple(s for s in config.scales if s != 1.0)
    tables: dict[str, dict[float, list[float]]] = {}
    rates: dict[str, float] = {}
    for arm in ARMS:
        rate = best_lr(sweep[arm])
        rates[arm] = rate
        rows = mlp_grid(context, higher_lr.mlp_data(config),
                        MLPGrid.product(lrs=(rate,), seeds=seeds, scales=others,
                                        batch_norm=arm == "bn",
                                        **higher_lr.mlp_settings(config)),
                        f"init scales ({ARM_NAMES[arm]}, lr {rate:g})") if others else []
        rows = rows + [r for r in sweep[arm] if r["lr"] == rate]
        table = {}
        for scale in sorted(config.scales):
            found = {r["seed"]: r["test"] for r in rows if r["scale"] == scale}
            table[scale] = [found[s] for s in seeds]
        tables[arm] = table
    spread = {arm: spreads(tables[arm]) for arm in ARMS}
    result, interval = verdict(spread["bn"], spread["base"])
    path = context.folder / "test_accuracy_vs_init_scale.png"
    scales = sorted(config.scales)
    plot_lines(path, scales, {f"{ARM_NAMES[a]} (lr {rates[a]:g})":
                              np.array([tables[a][s] for s in scales]).T for a in ARMS},
               xlabel="initial weight std / 0.1", ylabel="test accuracy",
               title="Figure 1 MLP: test accuracy vs initial weight scale")
    lines = ["| init scale (x std 0.1) | " + " | ".join(
        f"test acc. {ARM_NAMES[a]} (lr {rates[a]:g}) (%)" for a in ARMS) + " |",
        "|---|---|---|"]
    lines += [f"| {s:g} | " + " | ".join(percent(tables[a][s]) for a in ARMS) + " |"
              for s in scales]
    lines += ["", "| arm | spread over scales per seed (points) | mean spread (%) |",
              "|---|---|---|"]
    lines += [f"| {ARM_NAMES[a]} | {', '.join(f'{100 * v:.2f}' for v in spread[a])} | "
              f"{percent(spread[a])} |" for a in ARMS]
    worst = {a: min(scales, key=lambda s, a=a: float(np.mean(tables[a][s]))) for a in ARMS}
    finding = (f"Test accuracy spread over init scales x{scales[0]:g} .. x{scales[-1]:g}: "
               f"{percent(spread['base'])} points without BN vs {percent(spread['bn'])} with "
               f"BN (worst scale x{worst['base']:g} vs x{worst['bn']:g}); the paired "
               f"difference is {interval.format(scale=100)} points.")
    if result != "supported":
        finding += (" Against the source: BN's accuracy is not clearly (by > 2 points) less "
                    "sensitive to the initial scale here.")
    section = "\n".join([
        f"Each arm at its validation-best rate of the higher-lr MLP sweep ({rates['base']:g} "
        f"without BN, {rates['bn']:g} with); {config.mlp_steps} steps, {config.seeds} seeds.",
        "", *lines, "", f"![test accuracy vs init scale]({context.relative(path)})"])
    details = {"rates": rates, "tables": {a: {str(s): v for s, v in t.items()}
                                          for a, t in tables.items()},
               "spreads": spread}
    return ClaimResult(result, "spread of test accuracy over init scales, no BN - BN "
                       "(fraction, seed-paired)", interval, finding, section, details,
                       (context.relative(path),))


def _rule_words() -> str:
    return RULE.describe()


CLAIM = ClaimSpec(
    id="init",
    title="BN makes training less sensitive to initialization",
    source="Ioffe & Szegedy 2015, sec. 3.3",
    statement="With Batch Normalization, training is less sensitive to the scale of the "
              "initial parameters.",
    measured="test accuracy of the Figure 1 MLP vs the initial weight scale (x0.01 .. x10 "
             "of std 0.1), with and without BN, each at its validation-best rate; per seed "
             "the spread (best - worst) over scales",
    rule=_rule_words(),
    presets=PRESETS,
    run=run,
)
