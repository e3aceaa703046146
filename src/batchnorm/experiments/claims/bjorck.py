"""Bjorck et al. 2018 (Understanding Batch Normalization): BN's benefit comes from the
larger learning rates it allows; at the unnormalized network's best rate BN helps little.

Read from the :mod:`.higher_lr` sweeps (the same memoized sub-runs, nothing new is
trained): for each model (the Figure 1 MLP on MNIST, the SmallConvNet on Fashion-MNIST),
``lr_base`` and ``lr_bn`` are each arm's validation-best rate; per seed (seed-paired)

* same-rate gain ``G_same = test(BN at lr_base) - test(no BN at lr_base)``,
* own-rate gain ``G_own = test(BN at lr_bn) - test(no BN at lr_base)`` (BN's total gain).

Rule (:func:`verdict`), per model, both parts needed: (a) BN helps at all: ``G_own`` > 0;
(b) less than half of that gain is there at the baseline's rate: ``G_same - G_own / 2``
< 0. Supported if both parts are, not supported if both are not, else mixed; the models
combined (all agree, else mixed). When both arms pick the same rate, ``G_same = G_own``
and (b) fails whenever BN helps: the benefit is then not a matter of the rate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from batchnorm.experiments.claims import higher_lr
from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.higher_lr import ARM_NAMES, ARMS, MODEL_NAMES, MODELS
from batchnorm.experiments.claims.training import best_lr, per_seed, percent
from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    combine,
    decide,
    mean_interval,
)
from batchnorm.experiments.runner.plots import mean_band, save_plot

__all__ = ["CLAIM", "OWN_RULE", "SAME_RULE", "gains", "verdict"]

OWN_RULE = Rule("BN improves test accuracy at its own best rate",
                "G_own = test(BN at lr_bn) - test(no BN at lr_base)", "greater", 0.0)
SAME_RULE = Rule("at the baseline's rate BN gives less than half its gain",
                 "G_same - G_own / 2", "less", 0.0)


def gains(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Rates and per-seed gains (module doc) of one model's sweep (arm -> results)."""
    rates = {arm: best_lr(results[arm]) for arm in ARMS}
    test = {arm: per_seed(results[arm], "test") for arm in ARMS}
    base = test["base"][rates["base"]]
    same = [b - a for b, a in zip(test["bn"][rates["base"]], base, strict=True)]
    own = [b - a for b, a in zip(test["bn"][rates["bn"]], base, strict=True)]
    return {"rates": rates, "same": same, "own": own,
            "test_base": base, "test_bn_same": test["bn"][rates["base"]],
            "test_bn_own": test["bn"][rates["bn"]]}


def verdict(same: Mapping[str, Sequence[float]], own: Mapping[str, Sequence[float]]
            ) -> tuple[Verdict, Interval, dict[str, dict[str, tuple[Verdict, Interval]]]]:
    """The rule on per-model, per-seed gains (seed-aligned). The headline interval is over
    seeds of the models' mean of ``G_same - G_own / 2``."""
    if set(same) != set(own) or not same:
        raise ValueError("verdict: same and own need the same, non-empty models")
    parts: dict[str, dict[str, tuple[Verdict, Interval]]] = {}
    differences = []
    for model in same:
        d = [s - o / 2 for s, o in zip(same[model], own[model], strict=True)]
        differences.append(d)
        own_interval, d_interval = mean_interval(own[model]), mean_interval(d)
        parts[model] = {"own": (decide(OWN_RULE, own_interval), own_interval),
                        "same": (decide(SAME_RULE, d_interval), d_interval)}
    per_model = [combine(v for v, _ in p.values()) for p in parts.values()]
    headline = mean_interval(np.mean(differences, axis=0).tolist())
    return combine(per_model), headline, parts


def _plot(path: Any, model: str, results: Mapping[str, Sequence[Mapping[str, Any]]],
          rates: Mapping[str, float]) -> None:
    def draw(figure: Any) -> None:
        axis = figure.add_subplot(1, 1, 1)
        for arm, color in zip(ARMS, ("C0", "C1"), strict=True):
            table = per_seed(results[arm], "test")
            lrs = sorted(table)
            mean_band(axis, lrs, np.array([table[lr] for lr in lrs]).T, color=color,
                      label=ARM_NAMES[arm], marker="o", markersize=3)
            axis.axvline(rates[arm], color=color, linestyle="--", linewidth=1,
                         label=f"best rate {ARM_NAMES[arm]} (val.)")
        axis.set_xscale("log")
        axis.set_ylim(0, 1)
        axis.set_xlabel("learning rate")
        axis.set_ylabel("test accuracy")
        axis.set_title(MODEL_NAMES[model])
        axis.legend()

    save_plot(path, (6.5, 4.2), draw)


def run(config: higher_lr.SweepConfig, context: ClaimContext) -> ClaimResult:
    sweeps = higher_lr.sweeps(config, context)
    found = {model: gains(sweeps[model]) for model in MODELS}
    outcome, headline, parts = verdict({m: found[m]["same"] for m in MODELS},
                                       {m: found[m]["own"] for m in MODELS})
    plots, lines, words = [], [], []
    lines += ["| model | lr no BN | lr BN | test no BN (%) | test BN at lr no BN (%) | "
              "test BN at lr BN (%) | G_same (points) | G_own (points) | "
              "G_same - G_own/2 (points) | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
    for model in MODELS:
        g, p = found[model], parts[model]
        verdict_model = combine(v for v, _ in p.values())
        lines.append(
            f"| {MODEL_NAMES[model]} | {g['rates']['base']:g} | {g['rates']['bn']:g} | "
            f"{percent(g['test_base'])} | {percent(g['test_bn_same'])} | "
            f"{percent(g['test_bn_own'])} | {mean_interval(g['same']).format(scale=100)} | "
            f"{p['own'][1].format(scale=100)} | {p['same'][1].format(scale=100)} | "
            f"{verdict_model} |")
        path = context.folder / f"{model}_test_vs_lr.png"
        _plot(path, model, sweeps[model], g["rates"])
        plots.append(context.relative(path))
        own_mean = float(np.mean(g["own"]))
        share = (f"share of the mean gain {float(np.mean(g['same'])) / own_mean:.2f}"
                 if own_mean > 0 else "BN does not help on average at its own rate")
        words.append(f"{MODEL_NAMES[model]}: BN's gain {p['own'][1].format(scale=100)} points "
                     f"at its own rate {g['rates']['bn']:g}, "
                     f"{mean_interval(g['same']).format(scale=100)} at the baseline's rate "
                     f"{g['rates']['base']:g} ({share}; {verdict_model})")
    finding = "; ".join(words) + "."
    for model in MODELS:
        own_verdict, same_verdict = parts[model]["own"][0], parts[model]["same"][0]
        if own_verdict == same_verdict == "supported":
            continue
        reasons = []
        if own_verdict != "supported":
            reasons.append("BN's gain at its own best rate is not clearly positive (part (a) "
                           f"{own_verdict})")
        if same_verdict != "supported":
            reasons.append("BN at the baseline's rate does not clearly keep less than half of "
                           f"that gain (part (b) {same_verdict})")
        finding += f" Against Bjorck et al. for the {model}: " + "; ".join(reasons) + "."
    section = "\n".join([
        "Read from the higher-lr sweeps (same sub-runs); rates chosen on validation, test "
        f"accuracy reported; {config.seeds} seeds.", "", *lines, "",
        *[f"![{m} test accuracy vs learning rate]({p})" for m, p in zip(MODELS, plots,
                                                                        strict=True)]])
    details = {m: {**found[m], "parts": {k: {"verdict": v, "interval": i.to_dict()}
                                         for k, (v, i) in parts[m].items()}} for m in MODELS}
    return ClaimResult(outcome, "G_same - G_own/2 (test accuracy fraction, mean of the two "
                       "models; < 0 supports Bjorck)", headline, finding, section, details,
                       tuple(plots))


CLAIM = ClaimSpec(
    id="bjorck",
    title="BN's benefit is the larger learning rate it allows",
    source="Bjorck et al. 2018",
    statement="Batch Normalization's benefit comes from the larger learning rates it "
              "allows; at the unnormalized network's best rate BN helps little.",
    measured="test accuracy of BN at the baseline's validation-best rate and at its own, "
             "against the baseline at its best rate (the higher-lr sweeps of the MLP and the "
             "convnet)",
    rule="per model, both: (a) " + OWN_RULE.describe() + "; (b) " + SAME_RULE.describe()
         + "; a model is supported if both parts are, not supported if both are not, else "
         "mixed; the two models must agree (else mixed)",
    presets=higher_lr.PRESETS,
    run=run,
)
