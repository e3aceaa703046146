"""Ioffe & Szegedy 2015, sections 3.4 and 4.2.1: BN regularizes the model; Dropout can be
removed or reduced.

The lab's SmallConvNet on a small Fashion-MNIST training subset (small enough to
overfit), trained long (many epochs): four arms, without/with BN x without/with Dropout
(p on the hidden fully connected layer), each BN/no-BN pair at the validation-best rate of
the :mod:`.higher_lr` convnet sweep (Dropout arms at their pair's rate), several seeds,
seed-paired (same initial weights and batches).

Per arm and seed: train accuracy (eval mode, on the whole training subset), test accuracy,
and the gap between them. The rule (:func:`verdict`) has two parts, both needed:
(a) BN reduces the train-test gap: seed-paired ``gap without BN - gap with BN`` > 0;
(b) adding Dropout to BN does not improve test accuracy by more than half a point:
seed-paired ``test(BN + Dropout) - test(BN)`` < 0.005.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from batchnorm.experiments.claims import higher_lr
from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.higher_lr import SweepConfig
from batchnorm.experiments.claims.training import DataSpec, best_lr, convnet_runs, percent
from batchnorm.experiments.runner import POSITIVE, setting
from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    combine,
    decide,
    paired_interval,
)
from batchnorm.experiments.runner.plots import save_plot

__all__ = ["ARMS", "CLAIM", "DROPOUT_RULE", "GAP_RULE", "RegularizerConfig", "verdict"]

ARMS = ("base", "base+dropout", "bn", "bn+dropout")
DROPOUT_BASE = "Dropout without BN (test, Dropout - none)"
ARM_NAMES = {"base": "no BN", "base+dropout": "no BN + Dropout", "bn": "BN",
             "bn+dropout": "BN + Dropout"}
GAP_RULE = Rule("BN reduces overfitting",
                "train-test accuracy gap without BN minus with BN (fraction, seed-paired)",
                "greater", 0.0)
DROPOUT_RULE = Rule("Dropout adds nothing to BN",
                    "test accuracy of BN + Dropout minus BN (fraction, seed-paired)",
                    "less", 0.005)


@dataclass(frozen=True)
class RegularizerConfig(SweepConfig):
    """The sweep (for the rates) plus the overfitting setup. default: 2000 training
    images, 640 steps of 64 (20 epochs), Dropout 0.5; 4 arms x 3 seeds = 12 runs."""

    reg_train: int = setting(2000, "training rows of the overfitting subset", check=POSITIVE)
    reg_steps: int = setting(640, "SGD steps (batch 64)", check=POSITIVE)
    dropout: float = setting(0.5, "Dropout probability of the Dropout arms")


PRESETS = {
    "quick": RegularizerConfig(**higher_lr.fields_of(higher_lr.QUICK), reg_train=500,
                               reg_steps=80),
    "default": RegularizerConfig(),
    "gpu": RegularizerConfig(**higher_lr.fields_of(higher_lr.GPU), reg_train=5000,
                             reg_steps=4000),
}


def verdict(gap_base: Sequence[float], gap_bn: Sequence[float],
            test_bn_dropout: Sequence[float], test_bn: Sequence[float]
            ) -> tuple[Verdict, Interval, dict[str, tuple[Verdict, Interval]]]:
    """Both parts (module doc): supported if both are, not supported if both are not,
    else mixed. The headline interval is part (a)'s."""
    gap = paired_interval(gap_base, gap_bn)
    dropout = paired_interval(test_bn_dropout, test_bn)
    parts = {"gap": (decide(GAP_RULE, gap), gap),
             "dropout": (decide(DROPOUT_RULE, dropout), dropout)}
    return combine(v for v, _ in parts.values()), gap, parts


def _plot(path: Any, results: Mapping[str, list[dict[str, Any]]]) -> None:
    def draw(figure: Any) -> None:
        axis = figure.add_subplot(1, 1, 1)
        positions = np.arange(len(ARMS))
        for offset, (metric, label) in ((-0.15, ("train_acc", "train accuracy")),
                                        (0.15, ("test", "test accuracy"))):
            values = [[r[metric] for r in results[arm]] for arm in ARMS]
            means = [float(np.mean(v)) for v in values]
            axis.bar(positions + offset, means, width=0.3, label=label, alpha=0.6)
            for x, v in zip(positions + offset, values, strict=True):
                axis.plot([x] * len(v), v, "k.", markersize=4)
        axis.set_xticks(positions, [ARM_NAMES[a] for a in ARMS])
        low = min(r["test"] for rows in results.values() for r in rows)
        axis.set_ylim(max(0.0, low - 0.05), 1.0)
        axis.set_ylabel("accuracy (seeds as dots)")
        axis.set_title("SmallConvNet on a small Fashion-MNIST subset")
        axis.legend()

    save_plot(path, (6.5, 4.2), draw)


def run(config: RegularizerConfig, context: ClaimContext) -> ClaimResult:
    sweep = higher_lr.conv_sweep(config, context)
    rates = {arm: best_lr(sweep[arm]) for arm in higher_lr.ARMS}
    data = DataSpec("fashion-mnist", config.reg_train, config.conv_val, config.conv_test)
    results = {}
    for arm in ARMS:
        pair = arm.split("+")[0]
        runs = [higher_lr.conv_run(config, batch_norm=pair == "bn", lr=rates[pair], seed=seed,
                                   steps=config.reg_steps, train_eval=config.reg_train,
                                   dropout=config.dropout if "dropout" in arm else 0.0)
                for seed in range(config.seeds)]
        results[arm] = convnet_runs(context, data, runs, f"overfitting subset ({arm})")
    train = {a: [r["train_acc"] for r in results[a]] for a in ARMS}
    test = {a: [r["test"] for r in results[a]] for a in ARMS}
    gap = {a: [tr - te for tr, te in zip(train[a], test[a], strict=True)] for a in ARMS}
    outcome, interval, parts = verdict(gap["base"], gap["bn"], test["bn+dropout"], test["bn"])
    path = context.folder / "train_test_accuracy.png"
    _plot(path, results)
    lines = ["| arm | lr | train acc. (%) | test acc. (%) | gap (points) | "
             "val. acc. at 80% / end (%) |", "|---|---|---|---|---|---|"]
    for arm in ARMS:
        val = [r["val"] for r in results[arm]]
        at_80 = [r["val_at_80"] for r in results[arm]]
        lines.append(f"| {ARM_NAMES[arm]} | {rates[arm.split('+')[0]]:g} | "
                     f"{percent(train[arm])} | {percent(test[arm])} | {percent(gap[arm])} | "
                     f"{percent(at_80)} / {percent(val)} |")
    extra = {
        DROPOUT_BASE: paired_interval(test["base+dropout"],
                                                                     test["base"]),
        "BN vs no BN (test, BN - no BN)": paired_interval(test["bn"], test["base"]),
    }
    lines += ["", "| part of the rule | value (points) [95% interval] | verdict |",
              "|---|---|---|",
              f"| (a) gap no BN - gap BN > 0 | {parts['gap'][1].format(scale=100)} | "
              f"{parts['gap'][0]} |",
              f"| (b) test BN+Dropout - BN < 0.5 | {parts['dropout'][1].format(scale=100)} | "
              f"{parts['dropout'][0]} |"]
    lines += [f"| (context) {name} | {value.format(scale=100)} | - |"
              for name, value in extra.items()]
    finding = (f"On {config.reg_train} training images: train-test gap "
               f"{percent(gap['base'])} points without BN vs {percent(gap['bn'])} with BN "
               f"(reduction {parts['gap'][1].format(scale=100)}: {parts['gap'][0]}); "
               f"Dropout {config.dropout:g} on top of BN changes test accuracy by "
               f"{parts['dropout'][1].format(scale=100)} points ({parts['dropout'][0]}); "
               f"without BN by {extra[DROPOUT_BASE].format(scale=100)}.")
    if outcome != "supported":
        failed = [name for name, (v, _) in parts.items() if v != "supported"]
        finding += (" Against the source in part " + " and ".join(
            {"gap": "(a): BN does not clearly reduce the gap",
             "dropout": "(b): Dropout still helps BN (or the data cannot exclude it)"}[f]
            for f in failed) + ".")
    section = "\n".join([
        f"{config.reg_train} training images, {config.reg_steps} steps of 64 "
        f"({config.reg_steps * 64 / config.reg_train:.0f} epochs), Dropout p = "
        f"{config.dropout:g}; rates from the higher-lr convnet sweep's validation "
        f"({rates['base']:g} without BN, {rates['bn']:g} with); {config.seeds} seeds.", "",
        *lines, "", f"![train and test accuracy per arm]({context.relative(path)})"])
    details = {"rates": rates, "train": train, "test": test, "gap": gap,
               "parts": {k: {"verdict": v, "interval": i.to_dict()}
                         for k, (v, i) in parts.items()}}
    return ClaimResult(outcome, "train-test gap without BN - with BN (fraction, seed-paired)",
                       interval, finding, section, details, (context.relative(path),))


CLAIM = ClaimSpec(
    id="regularizer",
    title="BN regularizes; Dropout can be removed",
    source="Ioffe & Szegedy 2015, sec. 3.4, 4.2.1",
    statement="Batch Normalization regularizes the model, so Dropout can be removed or "
              "reduced in strength.",
    measured="train and test accuracy of a small convnet on a small Fashion-MNIST subset "
             "(trained to overfit), with and without BN, with and without Dropout",
    rule="both: (a) " + GAP_RULE.describe() + "; (b) " + DROPOUT_RULE.describe()
         + "; supported if both parts are, not supported if both are not, else mixed",
    presets=PRESETS,
    run=run,
)
