"""Ioffe & Szegedy 2015, section 3.3 and Figure 1: BN makes it possible to train deep
networks with saturating nonlinearities.

A deep sigmoid MLP (784 - 10 hidden layers of 100 - 10, N(0, 0.1^2) weights, plain SGD,
batch 60) on MNIST, without and with BN before every sigmoid; each arm's rate chosen on
validation from a log grid; several seeds, seed-paired (same initial weights and batches
in both arms). The number: per seed, test accuracy with BN minus without, each at its
arm's validation-best rate. Rule: :func:`verdict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.training import (
    DataSpec,
    MLPGrid,
    best_lr,
    late_change,
    mlp_grid,
    per_seed,
    percent,
    plot_lines,
)
from batchnorm.experiments.runner import POSITIVE, Settings, setting
from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    decide,
    paired_interval,
)

__all__ = ["CLAIM", "RULE", "SaturatingConfig", "verdict"]

ARMS = ("base", "bn")
ARM_NAMES = {"base": "without BN", "bn": "with BN"}
RULE = Rule("BN makes deep sigmoid networks trainable",
            "test accuracy with BN minus without (fraction, seed-paired, each arm at its "
            "validation-best rate)", "greater", 0.01)


@dataclass(frozen=True)
class SaturatingConfig(Settings):
    """default: 10 hidden sigmoid layers of 100; 6 rates (factor 4, 1/16 .. 64) x 3 seeds
    x 2 arms = 36 networks of 1500 steps (1.6 epochs) in two stacks."""

    seeds: int = setting(3, "seeds per arm and rate")
    train: int | None = setting(None, "training rows (None: all 55k)")
    val: int = setting(5000, "validation rows")
    test: int | None = setting(None, "test rows (None: all 10k)")
    depth: int = setting(10, "hidden layers", check=POSITIVE)
    width: int = setting(100, "hidden units per layer", check=POSITIVE)
    lrs: tuple[float, ...] = setting((0.0625, 0.25, 1.0, 4.0, 16.0, 64.0), "rates")
    steps: int = setting(1500, "SGD steps (batch 60)", check=POSITIVE)
    init_std: float = setting(0.1, "weight std", check=POSITIVE)


PRESETS = {
    "quick": SaturatingConfig(seeds=2, train=10000, val=2000, test=2000,
                              lrs=(0.25, 2.0, 16.0), steps=300),
    "default": SaturatingConfig(),
    "gpu": SaturatingConfig(seeds=5, depth=20, lrs=tuple(2.0 ** k for k in range(-4, 8)),
                            steps=20000),
}


def verdict(test_bn: Sequence[float], test_base: Sequence[float]) -> tuple[Verdict, Interval]:
    """:data:`RULE` on the seed-paired ``test_bn - test_base`` (supported if its 95%
    interval lies above 1 accuracy point)."""
    interval = paired_interval(test_bn, test_base)
    return decide(RULE, interval), interval


def run(config: SaturatingConfig, context: ClaimContext) -> ClaimResult:
    data = DataSpec("mnist", config.train, config.val, config.test)
    sizes = (784, *[config.width] * config.depth, 10)
    seeds = tuple(range(config.seeds))
    results, best, tests = {}, {}, {}
    for arm in ARMS:
        grid = MLPGrid.product(lrs=config.lrs, seeds=seeds, sizes=sizes,
                               batch_norm=arm == "bn", steps=config.steps,
                               init_std=config.init_std, train_eval=0)
        results[arm] = mlp_grid(context, data, grid, f"deep sigmoid MLP ({ARM_NAMES[arm]})")
        best[arm] = best_lr(results[arm])
        tests[arm] = per_seed(results[arm], "test")[best[arm]]
    outcome, interval = verdict(tests["bn"], tests["base"])
    val = {arm: per_seed(results[arm], "val") for arm in ARMS}
    at_80 = {arm: per_seed(results[arm], "val_at_80")[best[arm]] for arm in ARMS}
    path = context.folder / "val_accuracy_vs_lr.png"
    lrs = sorted(config.lrs)
    plot_lines(path, lrs, {ARM_NAMES[a]: np.array([val[a][lr] for lr in lrs]).T for a in ARMS},
               xlabel="learning rate", ylabel="final validation accuracy",
               title=f"{config.depth}-hidden-layer sigmoid MLP on MNIST")
    lines = ["| lr | " + " | ".join(f"val. acc. {ARM_NAMES[a]} (%)" for a in ARMS) + " |",
             "|---|---|---|"]
    lines += [f"| {lr:g} | " + " | ".join(
        percent(val[a][lr]) + (" **(best)**" if lr == best[a] else "") for a in ARMS) + " |"
        for lr in lrs]
    lines += ["", "| arm | best lr (val.) | test acc. (%) | val. acc. (%) | "
              "val. acc. at 80% of steps (%) |", "|---|---|---|---|---|"]
    lines += [f"| {ARM_NAMES[a]} | {best[a]:g} | {percent(tests[a])} | "
              f"{percent(val[a][best[a]])} | {percent(at_80[a])} |" for a in ARMS]
    drift = {a: late_change([r for r in results[a] if r["lr"] == best[a]]) for a in ARMS}
    lines += ["", "Convergence check: at each arm's best rate the validation accuracy changed by "
              f"{drift['base'].format(scale=100)} points (without BN) and "
              f"{drift['bn'].format(scale=100)} (with BN) over the last 20% of the steps."]
    finding = (f"{config.depth} hidden sigmoid layers: test accuracy {percent(tests['base'])}% "
               f"without BN (best rate {best['base']:g}) vs {percent(tests['bn'])}% with BN "
               f"(best rate {best['bn']:g}); paired difference {interval.format(scale=100)} "
               "points.")
    if outcome != "supported":
        finding += (" Against the source: with a tuned rate the deep sigmoid network without "
                    "BN is not clearly (by > 1 point) worse here.")
    section = "\n".join([
        f"Sizes {'-'.join(map(str, sizes))}, {config.steps} steps, {config.seeds} seeds.", "",
        *lines, "", f"![validation accuracy vs learning rate]({context.relative(path)})"])
    details = {"best_lr": best, "test": tests,
               "val": {a: {str(k): v for k, v in val[a].items()} for a in ARMS}}
    return ClaimResult(outcome, "test accuracy with BN - without (fraction, seed-paired)",
                       interval, finding, section, details, (context.relative(path),))


CLAIM = ClaimSpec(
    id="saturating",
    title="BN makes deep saturating networks trainable",
    source="Ioffe & Szegedy 2015, sec. 3.3, Fig. 1",
    statement="Batch Normalization makes it possible to train deep networks with "
              "saturating nonlinearities (sigmoid), which otherwise get stuck.",
    measured="test accuracy of a 10-hidden-layer sigmoid MLP on MNIST with and without BN, "
             "each at its validation-best rate of a log grid",
    rule=RULE.describe(),
    presets=PRESETS,
    run=run,
)
