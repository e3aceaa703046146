"""From run histories to the numbers the claims are judged on, and the verdict rules.

Everything here is a pure function of result dicts (``results/<run>.json``), so it is
tested on synthetic histories. Definitions (fixed before the run):

* **final accuracy**: the final weights on the whole validation split (and test set);
  never a maximum over noisy curve points. A diverged run counts as chance (10%).
* **steps to target**: the first evaluated step whose validation accuracy is at least
  the absolute target (config ``TARGET_ACCURACY``); resolution = the evaluation
  interval. A run that never reaches it is *censored* at its step budget (a lower
  bound on its true value: this favours the slower arm, so a "faster" verdict is
  conservative).
* **plateau**: a least-squares line through the curve points in the last
  ``PLATEAU_WINDOW`` of the run; its rise over that window below ``PLATEAU_GAIN`` means
  the curve has plateaued.
* **verdicts**: seed-paired differences with 95% Student-t intervals
  (:func:`~batchnorm.experiments.runner.evidence.paired_interval`); a comparison with
  one seed per arm has no t-interval and instead uses ``difference +- the largest
  seed-to-seed range`` among the recipes run with several seeds (an empirical noise
  bound, labelled as such in the report). A steps interval is never narrower than
  +- one evaluation interval (steps are only read at evaluations).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    combine,
    decide,
    paired_interval,
)

__all__ = [
    "CHANCE",
    "CLAIMS",
    "PLATEAU_GAIN",
    "PLATEAU_WINDOW",
    "Claim",
    "Comparison",
    "best_recipe",
    "group_seeds",
    "judge",
    "plateau_gain",
    "run_numbers",
    "seed_spread",
    "steps_to_reach",
]

CHANCE = 0.10  # ten classes: a diverged run's accuracy
PLATEAU_WINDOW = 0.2  # the last 20% of the run's steps
PLATEAU_GAIN = 0.01  # plateaued: the fitted line rises < 1 point over that window


def steps_to_reach(history: list[dict[str, Any]], target: float) -> int | None:
    """First evaluated step whose validation accuracy is at least ``target``."""
    for point in history:
        if point["val_accuracy"] >= target:  # NaN (diverged) compares False
            return int(point["step"])
    return None


def plateau_gain(history: list[dict[str, Any]], total_steps: int) -> float | None:
    """Rise of the least-squares line through the points of the last ``PLATEAU_WINDOW`` of
    the run, over that window (accuracy units); None with fewer than 2 finite points."""
    start = total_steps * (1 - PLATEAU_WINDOW)
    points = [(h["step"], h["val_accuracy"]) for h in history
              if h["step"] >= start and math.isfinite(h["val_accuracy"])]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return slope * total_steps * PLATEAU_WINDOW


def run_numbers(result: dict[str, Any], target: float,
                baseline_final: float | None) -> dict[str, Any]:
    """The per-run numbers of the report (see the module docstring)."""
    history, steps = result["history"], result["scale"]["steps"]
    diverged = bool(result["diverged"])
    reached = None if diverged else steps_to_reach(history, target)
    gain = None if diverged else plateau_gain(history, steps)
    return {
        "name": result["name"],
        "seed": result["seed"],
        "diverged": diverged,
        "diverged_at_step": result.get("diverged_at_step"),
        "final_val_accuracy": result.get("final_val_accuracy"),
        "test_accuracy": result.get("test_accuracy"),
        "last_curve_accuracy": result.get("last_curve_accuracy"),
        "steps_to_target": reached,
        "steps_to_baseline_final": (None if diverged or baseline_final is None
                                    else steps_to_reach(history, baseline_final)),
        "plateau_gain": gain,
        "plateaued": None if gain is None else gain < PLATEAU_GAIN,
        # The quantities verdicts use: censored / chance where there is no number.
        "steps": steps if reached is None else reached,
        "censored": reached is None,
        "final": CHANCE if diverged else result.get("final_val_accuracy"),
        "eval_interval": steps / max(1, min(result["scale"]["evaluations"], steps)),
        "budget": steps,
    }


_SEED_NAME = re.compile(r"^(?P<variant>.+?)(@s(?P<seed>\d+))?$")


def group_seeds(names: list[str]) -> dict[str, list[str]]:
    """Run names grouped by recipe (``bn-x5``, ``bn-x5@s1`` -> ``bn-x5``), seed order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        match = _SEED_NAME.match(name)
        assert match is not None
        groups.setdefault(match["variant"], []).append((int(match["seed"] or 0), name))
    return {variant: [name for _, name in sorted(runs)] for variant, runs in groups.items()}


def seed_spread(per_variant: dict[str, list[dict[str, Any]]], metric: str) -> float | None:
    """The largest seed-to-seed range (max - min) of ``metric`` over recipes with >= 2 seeds."""
    ranges = [max(r[metric] for r in runs) - min(r[metric] for r in runs)
              for runs in per_variant.values() if len(runs) >= 2
              and all(r[metric] is not None for r in runs)]
    return max(ranges) if ranges else None


@dataclass(frozen=True)
class Comparison:
    """``metric(a) - metric(b)``, seed-paired, judged by ``rule``."""

    a: str
    b: str
    metric: str  # "steps" (steps to target, censored) or "final" (final val accuracy)
    rule: Rule

    def label(self) -> str:
        return f"{self.metric}({self.a}) - {self.metric}({self.b})"


@dataclass(frozen=True)
class Claim:
    name: str
    comparisons: tuple[Comparison, ...]


def _faster(a: str, b: str) -> Comparison:
    """``b`` reaches the target in fewer steps than ``a``: steps(a) - steps(b) > 0."""
    return Comparison(a, b, "steps", Rule(f"{b} reaches the target in fewer steps than {a}",
                                          f"steps({a}) - steps({b})", "greater", 0.0))


def _higher(a: str, b: str) -> Comparison:
    return Comparison(a, b, "final", Rule(f"{a} ends more accurate than {b}",
                                          f"final({a}) - final({b})", "greater", 0.0))


#: The paper's claims (docs/method.md section 8) and how each is judged, fixed before the run.
CLAIMS: tuple[Claim, ...] = (
    Claim("BN trains faster (bn-baseline vs inception; only BN differs)",
          (_faster("inception", "bn-baseline"),)),
    Claim("a higher lr helps with BN (bn-x5, bn-x30 vs bn-baseline)",
          (_faster("bn-baseline", "bn-x5"), _faster("bn-baseline", "bn-x30"),
           _higher("bn-x30", "bn-baseline"))),
    Claim("BN is what makes the high rate work (bn-x5 vs the same changes without BN)",
          (_higher("bn-x5", "inception-changes"), _faster("inception-changes", "bn-x5"),
           _higher("bn-x5", "inception-x5"), _higher("bn-x30", "inception-x30"))),
    Claim("sigmoid is trainable with BN (bn-x5-sigmoid vs inception-sigmoid)",
          (_higher("bn-x5-sigmoid", "inception-sigmoid"),)),
)


def _compare(comparison: Comparison, per_variant: dict[str, list[dict[str, Any]]],
             spreads: dict[str, float | None]) -> dict[str, Any] | None:
    a, b = per_variant.get(comparison.a), per_variant.get(comparison.b)
    if not a or not b:
        return None
    metric = comparison.metric
    by_seed_a = {r["seed"]: r[metric] for r in a if r[metric] is not None}
    by_seed_b = {r["seed"]: r[metric] for r in b if r[metric] is not None}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds:
        return None
    values_a, values_b = [by_seed_a[s] for s in seeds], [by_seed_b[s] for s in seeds]
    interval = paired_interval(values_a, values_b)
    kind = "95% Student-t over seed-paired differences"
    if interval.n < 2 and spreads.get(metric) is not None:
        spread = spreads[metric]
        if metric == "steps":  # never finer than the curve's resolution
            spread = max(spread, *(r["eval_interval"] for r in (*a, *b)))
        interval = Interval(interval.mean, interval.mean - spread, interval.mean + spread, 1)
        kind = "one seed: difference +- the largest seed-to-seed range (not a t-interval)"
    if metric == "steps" and interval.low is not None:
        # A step count is read at evaluations only: never claim it finer than one interval
        # (two seeds landing on the same evaluation would give a zero-width t-interval).
        floor = max(r["eval_interval"] for r in (*a, *b))
        if interval.mean - interval.low < floor:
            interval = Interval(interval.mean, interval.mean - floor, interval.mean + floor,
                                interval.n)
            kind += ", widened to +- one evaluation interval (steps are read at evaluations)"
    censored = [r["name"] for r in (*a, *b) if metric == "steps" and r["censored"]]
    return {"comparison": comparison.label(), "rule": comparison.rule.describe(),
            "seeds": seeds, "a": values_a, "b": values_b, "interval": interval.to_dict(),
            "interval_kind": kind, "verdict": decide(comparison.rule, interval),
            "censored_runs": censored, "metric": metric}


def judge(per_variant: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every claim of :data:`CLAIMS` whose recipes were run: its comparisons and verdict.

    ``per_variant``: recipe -> the :func:`run_numbers` of its seeds."""
    spreads = {metric: seed_spread(per_variant, metric) for metric in ("steps", "final")}
    judged = []
    for claim in CLAIMS:
        rows = [row for row in (_compare(c, per_variant, spreads) for c in claim.comparisons)
                if row is not None]
        if not rows:
            continue
        verdict: Verdict = combine(row["verdict"] for row in rows)
        judged.append({"claim": claim.name, "verdict": verdict, "comparisons": rows})
    return judged


def best_recipe(per_variant: dict[str, list[dict[str, Any]]], candidates: tuple[str, ...]
                ) -> str | None:
    """The candidate with the highest mean final validation accuracy among those with >= 2
    finished (not diverged) seeds; None if there is none."""
    scored = {name: sum(r["final"] for r in runs) / len(runs)
              for name, runs in per_variant.items()
              if name in candidates and len(runs) >= 2
              and all(not r["diverged"] and r["final"] is not None for r in runs)}
    return max(scored, key=lambda name: scored[name]) if scored else None
