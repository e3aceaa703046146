"""Figure 1's numbers and words: metrics.csv, summary.json, verdicts, report.md.

Everything here is computed from the metric rows (and the per-unit percentiles kept
with them), so a resumed run and an uninterrupted one write the same files (apart
from the measured times). The verdict rules (:data:`RULES`) and the stability
criterion (:func:`relative_drift`, :data:`STABILITY`) are fixed here, before any run.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    combine,
    decide,
    mean_interval,
    paired_interval,
)

__all__ = [
    "ARMS",
    "LABELS",
    "LEVELS",
    "METRIC_COLUMNS",
    "RULES",
    "STABILITY",
    "curves",
    "headline",
    "metrics_csv",
    "relative_drift",
    "report",
    "summarize",
    "verdicts",
]

ARMS = ("baseline", "bn")
LABELS = {"baseline": "Without BN", "bn": "With BN"}
PAIR_LABELS = {"own": "each arm at its own best rate", "shared": "both at the shared rate"}
METRIC_COLUMNS = ("seed", "arm", "pair", "lr", "stats", "step", "test_accuracy", "test_loss",
                  "train_loss", "p15", "p50", "p85", "xhat_p15", "xhat_p50", "xhat_p85",
                  "layer_p15", "layer_p50", "layer_p85")
PERCENTILES = ("p15", "p50", "p85")
#: Test accuracies whose first-reaching step measures speed.
LEVELS = (0.95, 0.97)
#: The stability criterion, fixed before the run: relative drift after step ``from`` (and
#: after 10% of the run), see :func:`relative_drift`; the claim compares
#: log10(drift with BN / drift without) per seed, median over the last hidden layer's units.
STABILITY = {"from_step": 100, "late_fraction": 0.1}

#: The verdict rules (runner.evidence): quantity per seed, BN minus baseline, seed-paired.
RULES = {
    "faster": Rule("BN trains faster", "steps to reach the test accuracy level, BN minus "
                   "baseline", "less", 0.0),
    "accuracy": Rule("BN reaches a higher accuracy", "final test accuracy, BN (moving "
                     "averages) minus baseline", "greater", 0.0),
    "rates": Rule("BN allows higher learning rates", "log10 of the rate (largest that trains; "
                  "best on validation), BN minus baseline, over sweep seeds", "greater", 0.0),
    "stable": Rule("The sigmoid input distribution is more stable with BN", "log10(relative "
                   "drift with BN / without), median over the last hidden layer's units",
                   "less", 0.0),
}


def _show(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV; floats as ``repr`` (shortest exact form), so the file is bit-exact."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        values = {**row, "test_accuracy": row["accuracy"]}
        writer.writerow([_show(values.get(column)) for column in METRIC_COLUMNS])
    return buffer.getvalue()


def curves(rows: list[dict[str, Any]], arm: str, pair: str = "own", stats: str | None = None
           ) -> dict[str, Any]:
    """``{"steps": (T,), "seeds": [...], metric: (seeds, T)}`` for one arm and pair
    (``stats``: BN's "moving" (default) or "population"; the baseline has "none")."""
    stats = stats or ("moving" if arm == "bn" else "none")
    mine = [r for r in rows if r["arm"] == arm and r["pair"] == pair and r["stats"] == stats]
    seeds = sorted({row["seed"] for row in mine})
    steps = sorted({row["step"] for row in mine})
    position = {step: i for i, step in enumerate(steps)}
    result: dict[str, Any] = {"steps": np.array(steps), "seeds": seeds,
                              "lr": mine[0]["lr"] if mine else None}
    for metric in ("accuracy", "test_loss", "train_loss", *PERCENTILES, "xhat_p15",
                   "xhat_p50", "xhat_p85", "layer_p15", "layer_p50", "layer_p85"):
        table = np.full((len(seeds), len(steps)), np.nan)
        for row in mine:
            if row.get(metric) is not None:
                table[seeds.index(row["seed"]), position[row["step"]]] = row[metric]
        result[metric] = table
    return result


def relative_drift(trajectory: np.ndarray, steps: np.ndarray, start: int) -> np.ndarray:
    """The stability criterion. ``trajectory`` (T, ..., 3): 15/50/85th percentiles at
    ``steps``; returns (...): the largest |p_q(t) - p_q(s)| over t >= s and the three
    percentiles, divided by the 15-85 spread p85(s) - p15(s), where s is the first
    evaluation at or after ``start``. 0 = no drift; 1 = a move as large as the spread."""
    first = int(np.searchsorted(steps, start))
    first = min(first, len(steps) - 1)
    reference = trajectory[first]
    spread = np.maximum(reference[..., 2] - reference[..., 0], 1e-12)
    moves = np.abs(trajectory[first:] - reference[None]).max(axis=(0, -1))
    return moves / spread


def _steps_to(curve: dict[str, Any], level: float) -> tuple[list[float], int]:
    """Per seed the first evaluation step with test accuracy >= level (never: the last step,
    counted as censored); and how many seeds never reached it."""
    values, never = [], 0
    for row in curve["accuracy"]:
        hits = np.nonzero(row >= level)[0]
        if hits.size:
            values.append(float(curve["steps"][hits[0]]))
        else:
            values.append(float(curve["steps"][-1]))
            never += 1
    return values, never


def _interval(values: list[float]) -> dict[str, Any]:
    return mean_interval(values).to_dict()


def _layer_drift(layer: dict[str, list], key: str, steps: list[int], start: int,
                 networks: list[int]) -> np.ndarray | None:
    """Per network of ``networks`` (indices into the stack): the median over units of the
    relative drift, and the 15th/85th percentiles over units: (n, 3)."""
    if key not in layer or not layer[key]:
        return None
    trajectory = np.stack([np.asarray(t, dtype=np.float64) for t in layer[key]])  # (T, K, U, 3)
    drift = relative_drift(trajectory[:, networks], np.asarray(steps), start)  # (n, U)
    return np.stack([np.median(drift, axis=1), np.percentile(drift, 15, axis=1),
                     np.percentile(drift, 85, axis=1)], axis=1)


def _pair_summary(rows, layer, schedule, networks, pair: str, total_steps: int
                  ) -> dict[str, Any]:
    late = max(1, int(STABILITY["late_fraction"] * total_steps))
    index = [k for k, net in enumerate(networks) if net["pair"] == pair]
    result: dict[str, Any] = {"arms": {}, "differences": {}}
    per_arm: dict[str, dict[str, Any]] = {}
    population_steps = sorted({r["step"] for r in rows if r["stats"] == "population"})
    for arm in ARMS:
        curve = curves(rows, arm, pair)
        if not curve["seeds"]:
            return {}
        final = [float(v) for v in curve["accuracy"][:, -1]]
        arm_summary: dict[str, Any] = {
            "lr": curve["lr"], "seeds": curve["seeds"],
            "final_test_accuracy": _interval(final),
            "final_test_loss": _interval([float(v) for v in curve["test_loss"][:, -1]]),
            "per_seed_final_test_accuracy": final,
            "steps_to": {}, "drift": {},
        }
        per_arm[arm] = {"final": final}
        for level in LEVELS:
            values, never = _steps_to(curve, level)
            arm_summary["steps_to"][str(level)] = {**_interval(values), "never": never,
                                                   "per_seed": values}
            per_arm[arm][f"steps_{level}"] = values
        trajectory = np.stack([curve["p15"], curve["p50"], curve["p85"]], axis=-1)
        pieces = {"unit": {}, "layer_median": {}}
        stats = "moving" if arm == "bn" else "none"
        for name, start in (("from_100", STABILITY["from_step"]), ("late", late)):
            unit = relative_drift(trajectory.transpose(1, 0, 2), curve["steps"], start)
            layer_drift = _layer_drift(layer, f"{arm}/{stats}/pre", schedule, start, index)
            pieces["unit"][name] = [float(v) for v in unit]
            if layer_drift is not None:
                pieces["layer_median"][name] = [float(v) for v in layer_drift[:, 0]]
                pieces.setdefault("layer_units_15_85", {})[name] = [
                    [float(a), float(b)] for a, b in layer_drift[:, 1:]]
            if arm == "bn":
                xtraj = np.stack([curve["xhat_p15"], curve["xhat_p50"], curve["xhat_p85"]], -1)
                pieces.setdefault("xhat_unit", {})[name] = [
                    float(v) for v in relative_drift(xtraj.transpose(1, 0, 2), curve["steps"],
                                                     start)]
                xlayer = _layer_drift(layer, "bn/moving/xhat", schedule, start, index)
                if xlayer is not None:
                    pieces.setdefault("xhat_layer_median", {})[name] = [
                        float(v) for v in xlayer[:, 0]]
        # The unit's drift over the population-statistics evaluations only (BN with
        # Algorithm 2 statistics, the baseline at the same steps), from the first of them.
        if population_steps:
            if arm == "bn":
                pop = curves(rows, "bn", pair, "population")
                ptraj = np.stack([pop["p15"], pop["p50"], pop["p85"]], axis=-1)
                psteps = pop["steps"]
                arm_summary["final_test_accuracy_population"] = _interval(
                    [float(v) for v in pop["accuracy"][:, -1]])
                arm_summary["per_seed_final_test_accuracy_population"] = [
                    float(v) for v in pop["accuracy"][:, -1]]
                arm_summary["population_steps"] = [int(s) for s in psteps]
            else:
                keep = np.isin(curve["steps"], population_steps)
                ptraj, psteps = trajectory[:, keep], curve["steps"][keep]
            pieces["unit_population_steps"] = {"from_first": [
                float(v) for v in relative_drift(ptraj.transpose(1, 0, 2), psteps,
                                                 int(psteps[0]))]}
        arm_summary["drift"] = pieces
        arm_summary["percentiles"] = {
            name: {"step": int(curve["steps"][i]),
                   **{p: float(np.mean(curve[p][:, i])) for p in PERCENTILES},
                   **({f"xhat_{p}": float(np.mean(curve[f"xhat_{p}"][:, i]))
                       for p in PERCENTILES} if arm == "bn" else {})}
            for name, i in (("first", 0), ("final", -1))}
        per_arm[arm]["drift"] = pieces
        result["arms"][arm] = arm_summary
    base, bn = per_arm["baseline"], per_arm["bn"]
    diff = result["differences"]
    diff["final_test_accuracy"] = paired_interval(bn["final"], base["final"]).to_dict()
    for level in LEVELS:
        diff[f"steps_to_{level}"] = paired_interval(bn[f"steps_{level}"],
                                                    base[f"steps_{level}"]).to_dict()
    for what, name in (("layer_median", "from_100"), ("layer_median", "late"),
                       ("unit", "from_100"), ("unit", "late"),
                       ("unit_population_steps", "from_first")):
        a = bn["drift"].get(what, {}).get(name)
        b = base["drift"].get(what, {}).get(name)
        if a and b:
            diff[f"log10_drift_ratio_{what}_{name}"] = paired_interval(
                [math.log10(max(x, 1e-12)) for x in a],
                [math.log10(max(y, 1e-12)) for y in b]).to_dict()
    return result


def sweep_evidence(sweep: dict[str, Any]) -> dict[str, Any]:
    """From a sweep result: per arm and seed the largest rate that trains and the best rate;
    the seed-paired log10 differences BN minus baseline."""
    per_seed = sweep["per_seed_final"]  # arm -> rate -> [acc per seed]
    values = [float(v) for v in sweep["values"]]
    seeds = len(next(iter(per_seed["baseline"].values())))
    largest: dict[str, list[float]] = {}
    best: dict[str, list[float]] = {}
    for arm in ARMS:
        largest[arm], best[arm] = [], []
        for i in range(seeds):
            accs = [per_seed[arm][str(v)][i] for v in values]
            trains = [v for v, a in zip(values, accs, strict=True)
                      if a >= sweep["trains_threshold"]]
            largest[arm].append(max(trains) if trains else min(values) / 10)
            best[arm].append(values[int(np.argmax(accs))])
    logs = {arm: {"largest": [math.log10(v) for v in largest[arm]],
                  "best": [math.log10(v) for v in best[arm]]} for arm in ARMS}
    return {
        "largest_rate_that_trains": largest, "best_rate_per_seed": best,
        "top_of_grid": max(values),
        "log10_largest_difference": paired_interval(logs["bn"]["largest"],
                                                    logs["baseline"]["largest"]).to_dict(),
        "log10_best_difference": paired_interval(logs["bn"]["best"],
                                                 logs["baseline"]["best"]).to_dict(),
    }


def summarize(rows: list[dict[str, Any]], layer: dict[str, list], schedule: list[int],
              networks: list[dict[str, Any]], sweep: dict[str, Any] | None,
              steps: int) -> dict[str, Any]:
    """summary.json: per rate pair and arm the final numbers with intervals, speed, drift;
    the paired differences; the sweep's evidence; the verdicts."""
    summary: dict[str, Any] = {"steps": steps, "pairs": {}}
    for pair in ("own", "shared"):
        found = _pair_summary(rows, layer, schedule, networks, pair, steps)
        if found:
            summary["pairs"][pair] = found
    summary["seeds"] = summary["pairs"]["own"]["arms"]["bn"]["seeds"]
    if sweep is not None and "per_seed_final" in sweep:
        summary["sweep"] = sweep_evidence(sweep)
    summary["verdicts"] = verdicts(summary)
    summary["definitions"] = {
        "final_test_accuracy": "test accuracy at the LAST evaluation (never a maximum over "
        "test evaluations); mean over seeds with a 95% Student-t interval",
        "steps_to": "first evaluation step whose test accuracy reaches the level; a seed that "
        "never reaches it counts as the last step (censored; 'never' counts them)",
        "drift": "relative drift (report.relative_drift): max over t >= s and the 15/50/85th "
        "percentiles of |p(t) - p(s)| / (p85(s) - p15(s)); from_100: s = 100; late: s = 10% "
        "of the run; unit_population_steps: over the population-statistics evaluations",
        "differences": "seed-paired BN minus baseline, mean and 95% interval",
    }
    return summary


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per claim: the verdict (supported / not supported / mixed), from the rules in
    :data:`RULES` applied to each piece of evidence and combined."""
    claims = []

    def claim(key: str, pieces: list[tuple[str, dict[str, Any]]], note: str = "") -> None:
        rule = RULES[key]
        decided = [(name, decide(rule, Interval.from_dict(data)), data) for name, data in pieces]
        if not decided:
            return
        claims.append({
            "claim": rule.claim, "rule": rule.describe(), "quantity": rule.quantity,
            "verdict": combine(v for _n, v, _d in decided), "note": note,
            "evidence": [{"what": name, "verdict": v, "interval": d} for name, v, d in decided],
        })

    pairs = summary["pairs"]
    claim("faster", [(f"{pair}: steps to {100 * level:.0f}%",
                      data["differences"][f"steps_to_{level}"])
                     for pair, data in pairs.items() for level in LEVELS])
    claim("accuracy", [(f"{pair}: final test accuracy", data["differences"]
                        ["final_test_accuracy"]) for pair, data in pairs.items()])
    if "sweep" in summary:
        sweep = summary["sweep"]
        claim("rates", [("largest rate that trains", sweep["log10_largest_difference"]),
                        ("best validation rate", sweep["log10_best_difference"])],
              note=f"grid tops out at {sweep['top_of_grid']:g}: a largest rate equal to it "
              "is a lower bound")
    stable = []
    for pair, data in pairs.items():
        for key, label in (("log10_drift_ratio_layer_median_from_100", "layer, from step 100"),
                           ("log10_drift_ratio_unit_population_steps_from_first",
                            "unit, population-statistics checkpoints")):
            if key in data["differences"]:
                stable.append((f"{pair}: {label}", data["differences"][key]))
    claim("stable", stable)
    return claims


def pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def _fmt(data: dict[str, Any], scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    return Interval.from_dict(data).format(scale, digits, unit)


def _plain(data: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """``mean [low, high]`` without signs (for levels, not differences)."""
    if data["low"] is None:
        return f"{data['mean'] * scale:.{digits}f} (n={data['n']})"
    return (f"{data['mean'] * scale:.{digits}f} [{data['low'] * scale:.{digits}f}, "
            f"{data['high'] * scale:.{digits}f}]")


def headline(summary: dict[str, Any]) -> list[str]:
    """The numbers the run ends with on stdout."""
    lines = []
    for pair, data in summary["pairs"].items():
        base, bn = data["arms"]["baseline"], data["arms"]["bn"]
        diff = data["differences"]
        lines.append(
            f"{pair} rates (baseline {base['lr']:g}, BN {bn['lr']:g}): final test accuracy "
            f"baseline {_plain(base['final_test_accuracy'], 100)}%, BN "
            f"{_plain(bn['final_test_accuracy'], 100)}%, BN - baseline "
            f"{_fmt(diff['final_test_accuracy'], 100)} points; steps to 97%: BN - baseline "
            f"{_fmt(diff['steps_to_0.97'], 1, 0)}")
    return lines


def verdict_lines(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["claim"], c["verdict"]) for c in summary["verdicts"]]


# ----------------------------------------------------------------------------- report.md


def report(document: dict[str, Any], summary: dict[str, Any]) -> str:
    """report.md of a finished run."""
    s = document["settings"]
    timing = document.get("timing", {})
    lines = [
        "# Figure 1 (Ioffe & Szegedy 2015): MNIST, with and without BN",
        "",
        f"{len(summary['seeds'])} seeds per arm, {s['steps']} steps of batch {s['batch_size']}; "
        "every number below is a mean over seeds with a 95% Student-t interval; differences "
        "are seed-paired (BN minus baseline; network k of both arms shares seed k's initial "
        "weights and batches).",
        "",
        *_paper_section(summary),
        "## Figures",
        "",
    ]
    for pair in summary["pairs"]:
        lines += [f"![{pair}](figure1_{pair}.png)", "",
                  f"*{PAIR_LABELS[pair]}.* (a) test accuracy vs steps (log-x from step 1; "
                  "step 0 is drawn at the left edge), mean and min-max band over seeds; "
                  f"(b) without BN, (c) with BN: 15th/50th/85th percentiles of the sigmoid "
                  f"input of unit {s['unit']} of the last hidden layer over the 10k test images "
                  "(BN: moving averages, lines; population statistics at checkpoints, dots); "
                  "(d) the BN unit's x-hat (before gamma and beta); (e) median over the "
                  "layer's 100 units of each percentile; (f) accuracy vs learning rate (sweep, "
                  "validation split).", ""]
    lines += [
        *_results_section(summary),
        *_stability_section(summary),
        *_sweep_section(document.get("lr_sweep"), summary),
        *_init_section(document.get("init_distribution")),
        "## Setup",
        "",
        "Fixed by the paper (docs/method.md section 7):",
        "",
        *[f"- {key}: {value}" for key, value in document["paper"].items()],
        "",
        "Settings of this run (every one is a flag of `batchnorm reproduce figure1`):",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in s.items()],
        "",
        "Where the paper is silent, we chose:",
        "",
        *[f"- **{key}**: {why}" for key, why in document["choices"].items()],
        "",
        *_timing_section(timing, document["runtime"], s),
    ]
    return "\n".join(lines) + "\n"


def _paper_section(summary: dict[str, Any]) -> list[str]:
    lines = [
        "## Against the paper",
        "",
        "The paper's Figure 1 (read off the plot): BN ends near 98%, the baseline near "
        "95-96%, BN higher throughout; without BN the percentiles drift, with BN they stay "
        "steady; section 3.3: BN allows much higher learning rates. Verdict rules "
        "(runner.evidence, fixed before the run): *supported* if the whole 95% interval of "
        "the seed-paired difference lies on the claimed side of 0, *not supported* if it lies "
        "entirely on the other side, *mixed* if it straddles 0 or the pieces of evidence "
        "disagree.",
        "",
        "| claim | verdict | evidence (BN minus baseline, mean [95% interval]) |",
        "|---|---|---|",
    ]
    for c in summary["verdicts"]:
        parts = []
        for e in c["evidence"]:
            data = e["interval"]
            if "accuracy" in e["what"]:
                value = _fmt(data, 100, 2, " pts")
            elif "steps" in e["what"]:
                value = _fmt(data, 1, 0, " steps")
            else:
                value = _fmt(data, 1, 2)
            parts.append(f"{e['what']}: {value} ({e['verdict']})")
        note = f" Note: {c['note']}." if c.get("note") else ""
        lines.append(f"| {c['claim']} | **{c['verdict']}** | {'; '.join(parts)}.{note} |")
    lines += ["", "Quantities: " + "; ".join(f"{r.claim}: {r.quantity}"
                                             for r in RULES.values()) + ".", ""]
    against = [c["claim"] for c in summary["verdicts"] if c["verdict"] == "not supported"]
    if against:
        lines += ["**Against the paper here:** " + "; ".join(against) + ".", ""]
    return lines


def _results_section(summary: dict[str, Any]) -> list[str]:
    lines = ["## Results", "",
             "| rates | network | lr | final test accuracy (%) | BN, population statistics "
             "(%) | steps to 95% | steps to 97% |",
             "|---|---|---|---|---|---|---|"]
    for pair, data in summary["pairs"].items():
        for arm in ARMS:
            a = data["arms"][arm]
            population = a.get("final_test_accuracy_population")
            steps = [f"{_plain(a['steps_to'][str(level)], 1, 0)}"
                     + (f" ({a['steps_to'][str(level)]['never']} never)"
                        if a["steps_to"][str(level)]["never"] else "") for level in LEVELS]
            lines.append(f"| {pair} | {LABELS[arm]} | {a['lr']:g} | "
                         f"{_plain(a['final_test_accuracy'], 100)} | "
                         f"{_plain(population, 100) if population else 'n/a'} | "
                         f"{steps[0]} | {steps[1]} |")
    lines += ["", "Per seed, final test accuracy (%):", ""]
    for pair, data in summary["pairs"].items():
        for arm in ARMS:
            a = data["arms"][arm]
            values = ", ".join(f"{100 * v:.2f}" for v in a["per_seed_final_test_accuracy"])
            extra = ""
            if "per_seed_final_test_accuracy_population" in a:
                extra = "; population statistics " + ", ".join(
                    f"{100 * v:.2f}" for v in a["per_seed_final_test_accuracy_population"])
            lines.append(f"- {pair}, {LABELS[arm]}: {values}{extra}")
    lines += ["", "A test set of 10k images has a binomial standard error of about 0.16 "
              "points per model at 97%; the seed intervals include it.", ""]
    return lines


def _stability_section(summary: dict[str, Any]) -> list[str]:
    lines = ["## Stability of the last hidden layer's input (Figure 1 b, c)", "",
             "Relative drift (the criterion, fixed before the run): the largest change of the "
             "15th, 50th or 85th percentile after step s, divided by the 15-85 spread at step "
             "s (1 = a move as large as the spread). Unit = the chosen unit; layer = median "
             "over the 100 units (15th-85th percentile over units in brackets, seed 0).", "",
             "| rates | network | unit, s=100 | layer, s=100 | unit, s=10% | layer, s=10% | "
             "unit, population checkpoints | x-hat layer, s=100 |",
             "|---|---|---|---|---|---|---|---|"]
    for pair, data in summary["pairs"].items():
        for arm in ARMS:
            d = data["arms"][arm]["drift"]

            def mean(values: list[float] | None) -> str:
                return "n/a" if not values else f"{np.mean(values):.2f}"

            def units(name: str, d=d) -> str:
                spread = d.get("layer_units_15_85", {}).get(name)
                return "" if not spread else f" [{spread[0][0]:.2f}-{spread[0][1]:.2f}]"

            lines.append(
                f"| {pair} | {LABELS[arm]} | {mean(d['unit'].get('from_100'))} | "
                f"{mean(d['layer_median'].get('from_100'))}{units('from_100')} | "
                f"{mean(d['unit'].get('late'))} | "
                f"{mean(d['layer_median'].get('late'))}{units('late')} | "
                f"{mean(d.get('unit_population_steps', {}).get('from_first'))} | "
                f"{mean(d.get('xhat_layer_median', {}).get('from_100'))} |")
    lines += ["", "Percentiles of the chosen unit's sigmoid input (mean over seeds), first and "
              "last evaluation:", ""]
    for pair, data in summary["pairs"].items():
        for arm in ARMS:
            p = data["arms"][arm]["percentiles"]
            text = " -> ".join(
                f"step {p[w]['step']}: " + " / ".join(f"{p[w][q]:+.2f}" for q in PERCENTILES)
                for w in ("first", "final"))
            lines.append(f"- {pair}, {LABELS[arm]}: {text}")
    lines += ["", "With BN, the sigmoid input is gamma * x-hat + beta: gamma and beta are "
              "learned at the arm's learning rate, so it can move even when x-hat does not "
              "(x-hat column above); the moving averages lag the weights at high rates, so the "
              "population-statistics checkpoints are the check.", ""]
    return lines


def _sweep_section(sweep: dict[str, Any] | None, summary: dict[str, Any]) -> list[str]:
    if not sweep or "per_seed_final" not in sweep:
        return ["## Learning rates", "", f"No sweep recorded ({(sweep or {}).get('source')}).",
                ""]
    lines = ["## Learning rates (sweep on the validation split)", "",
             f"Source: {sweep.get('source', 'this run')}. Both arms, {sweep['seeds']} seeds per "
             f"rate, {sweep['steps']} steps each (shorter than the figure's runs), trained on "
             f"the first {sweep['train_images']} training images, scored on the last "
             f"{sweep['validation_images']} (the test set is never read). Criterion: "
             f"{sweep['criterion']}. A rate trains when the final validation accuracy is >= "
             f"{100 * sweep['trains_threshold']:.0f}%.", "",
             "| lr | without BN (%) | with BN (%) |", "|---|---|---|"]
    for value in sweep["values"]:
        cells = []
        for arm in ARMS:
            accs = sweep["per_seed_final"][arm][str(value)]
            mark = " **best**" if value == sweep["winners"][arm] else ""
            cells.append(f"{100 * np.mean(accs):.2f} ({100 * min(accs):.2f}-"
                         f"{100 * max(accs):.2f}){mark}")
        lines.append(f"| {value:g} | {cells[0]} | {cells[1]} |")
    lines += ["", "Mean over seeds (min-max) of the final validation accuracy."]
    if "sweep" in summary:
        ev = summary["sweep"]
        lines += ["", "Largest rate that trains, per seed: " + "; ".join(
            f"{LABELS[arm]} {', '.join(f'{v:g}' for v in ev['largest_rate_that_trains'][arm])}"
            for arm in ARMS) + ". Best rate per seed: " + "; ".join(
            f"{LABELS[arm]} {', '.join(f'{v:g}' for v in ev['best_rate_per_seed'][arm])}"
            for arm in ARMS) + "."]
    return [*lines, ""]


def _init_section(init: dict[str, Any] | None) -> list[str]:
    if not init:
        return []
    lines = ["## Initialization (measured, not assumed)", "",
             f"At init (std {init['init_std']:g}, seed {init['seed']}, the test images), the "
             "input to each hidden layer's sigmoid: median over the layer's units of the "
             "15th / 50th / 85th percentile over images, and of the 15-85 spread:", "",
             "| layer | p15 | p50 | p85 | 15-85 spread (median over units) | spread of the "
             f"chosen unit {init['unit']} |", "|---|---|---|---|---|---|"]
    for i, layer in enumerate(init["layers"], 1):
        lines.append(f"| {i} | {layer['p15']:+.3f} | {layer['p50']:+.3f} | {layer['p85']:+.3f} "
                     f"| {layer['spread']:.3f} | {layer['unit_spread']:.3f} |")
    lines += ["", "For N(0, 1) the 15-85 spread would be 2.07: only the first layer is near it; "
              "the sigmoid squashes the signal, so the last hidden layer's inputs vary across "
              "images far less (the old note 'std 0.1 puts Wu + b near N(0, 1)' was wrong "
              "beyond the first layer).", ""]
    return lines


def _loads(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def _timing_section(timing: dict[str, Any], runtime: dict[str, Any], s: dict[str, Any]
                    ) -> list[str]:
    if not timing:
        return []
    lines = ["## Wall time", "",
             f"- device: {runtime['device']}, torch threads: {runtime['threads']}, CPUs: "
             f"{runtime['cpu_count']}, torch {runtime['torch']}, Python {runtime['python']}"]
    for name, part in timing.get("parts", {}).items():
        lines.append(
            f"- {name}: training {part.get('train_s', 0.0):.1f} s, evaluation "
            f"{part.get('eval_s', 0.0):.1f} s, population statistics "
            f"{part.get('population_s', 0.0):.1f} s, checkpoints "
            f"{part.get('checkpoint_s', 0.0):.1f} s, sessions {part.get('sessions', 1)}")
    lines += [
        f"- whole command (last session): **{timing.get('wall_seconds', 0.0):.1f} s**",
        f"- load average (1, 5, 15 min) at the start: "
        f"{_loads(timing.get('load_average_at_start'))}; at the end: "
        f"{_loads(timing.get('load_average_at_end'))} (2 CPUs, shared: times are inflated "
        "when the load exceeds the CPU count)", ""]
    return lines
