"""Figure 1's numbers and words: metrics.csv, summary.json, the paper's claims, report.md.

Everything here is computed from the metric rows, so a resumed run and an
uninterrupted one write the same files (apart from the measured times).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

__all__ = [
    "ARMS",
    "LABELS",
    "METRIC_COLUMNS",
    "curves",
    "headline",
    "metrics_csv",
    "paper_claims",
    "report",
    "summarize",
]

ARMS = ("baseline", "bn")
LABELS = {"baseline": "Without BN", "bn": "With BN"}
#: metrics.csv columns; ``accuracy`` of the rows is written as ``test_accuracy``.
METRIC_COLUMNS = ("seed", "arm", "step", "test_accuracy", "train_loss", "p15", "p50", "p85")
PERCENTILES = ("p15", "p50", "p85")


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV; floats as ``repr`` (shortest exact form), so the file is bit-exact."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        values = {**row, "test_accuracy": row["accuracy"]}
        writer.writerow([repr(values[column]) if isinstance(values[column], float)
                         else values[column] for column in METRIC_COLUMNS])
    return buffer.getvalue()


def curves(rows: list[dict[str, Any]], arm: str) -> dict[str, Any]:
    """``{"steps": (T,), "seeds": [...], metric: (seeds, T)}`` for one arm."""
    mine = [row for row in rows if row["arm"] == arm]
    seeds = sorted({row["seed"] for row in mine})
    steps = sorted({row["step"] for row in mine})
    position = {step: i for i, step in enumerate(steps)}
    result: dict[str, Any] = {"steps": np.array(steps), "seeds": seeds}
    for metric in ("accuracy", "train_loss", *PERCENTILES):
        table = np.full((len(seeds), len(steps)), np.nan)
        for row in mine:
            table[seeds.index(row["seed"]), position[row["step"]]] = row[metric]
        result[metric] = table
    return result


def _at(curve: dict[str, Any], index: int) -> dict[str, float]:
    return {p: float(curve[p][:, index].mean()) for p in PERCENTILES}


def _percentile_summary(curve: dict[str, Any]) -> dict[str, Any]:
    steps = curve["steps"]
    tenth = int(np.searchsorted(steps, steps[-1] / 10))  # first point at >= 10% of the run
    first, early, final = _at(curve, 0), _at(curve, min(tenth, len(steps) - 1)), _at(curve, -1)
    median = curve["p50"].mean(axis=0)
    spread = (curve["p85"] - curve["p15"]).mean(axis=0)
    return {
        "first": {"step": int(steps[0]), **first},
        "at_10_percent": {"step": int(steps[min(tenth, len(steps) - 1)]), **early},
        "final": {"step": int(steps[-1]), **final},
        "median_drift": final["p50"] - first["p50"],
        "median_range": float(median.max() - median.min()),
        "spread_first": first["p85"] - first["p15"],
        "spread_final": final["p85"] - final["p15"],
        "spread_range": float(spread.max() - spread.min()),
    }


def summarize(rows: list[dict[str, Any]], population: dict[int, dict[str, float]]
              ) -> dict[str, Any]:
    """summary.json: per arm the final and best test accuracy (mean over seeds), etc."""
    summary: dict[str, Any] = {}
    for arm in ARMS:
        curve = curves(rows, arm)
        accuracy = curve["accuracy"]
        mean = accuracy.mean(axis=0)
        best = int(mean.argmax())
        summary[arm] = {
            "final_test_accuracy": float(accuracy[:, -1].mean()),
            "max_test_accuracy": float(accuracy.max(axis=1).mean()),
            "max_test_accuracy_step": int(curve["steps"][best]),
            "final_train_loss": float(curve["train_loss"][:, -1].mean()),
            "per_seed": {
                str(seed): {"final_test_accuracy": float(accuracy[i, -1]),
                            "max_test_accuracy": float(accuracy[i].max())}
                for i, seed in enumerate(curve["seeds"])
            },
            "percentiles": _percentile_summary(curve),
        }
    target = summary["baseline"]["final_test_accuracy"]
    bn = curves(rows, "bn")
    reached = np.nonzero(bn["accuracy"].mean(axis=0) >= target)[0]
    steps_needed = int(bn["steps"][reached[0]]) if reached.size else None
    summary["bn"]["steps_to_baseline_final"] = steps_needed
    summary["bn"]["speedup_to_baseline_final"] = (
        float(bn["steps"][-1] / steps_needed) if steps_needed else None
    )
    if population:
        values = [population[seed]["accuracy"] for seed in sorted(population)]
        summary["bn"]["final_test_accuracy_population_stats"] = float(np.mean(values))
        for seed in sorted(population):
            per_seed = summary["bn"]["per_seed"][str(seed)]
            per_seed["final_test_accuracy_population_stats"] = population[seed]["accuracy"]
            per_seed["population_percentiles"] = {
                p: population[seed][p] for p in PERCENTILES
            }
    else:
        summary["bn"]["final_test_accuracy_population_stats"] = None
    summary["steps"] = int(bn["steps"][-1])
    summary["seeds"] = bn["seeds"]
    summary["definitions"] = {
        "final_test_accuracy": "test accuracy after the last step, mean over seeds",
        "max_test_accuracy": "best test accuracy over the evaluations, mean over seeds",
        "steps_to_baseline_final": "first evaluation step at which the BN network's "
        "seed-mean test accuracy reaches the baseline's final one (null: never)",
        "final_test_accuracy_population_stats": "BN network after the last step with "
        "Algorithm 2 population statistics instead of its moving averages",
    }
    return summary


def pct(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def paper_claims(summary: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The paper's Figure 1 claims: (claim, whether this run shows it, the numbers)."""
    base, bn = summary["baseline"], summary["bn"]
    gap = bn["final_test_accuracy"] - base["final_test_accuracy"]
    needed = bn["steps_to_baseline_final"]
    bp, np_ = base["percentiles"], bn["percentiles"]
    return [
        ("BN ends with a higher test accuracy than the baseline", gap > 0,
         f"BN {pct(bn['final_test_accuracy'])} (population statistics "
         f"{pct(bn['final_test_accuracy_population_stats'])}), baseline "
         f"{pct(base['final_test_accuracy'])}: {100 * gap:+.2f} points"),
        ("BN reaches the baseline's final accuracy sooner",
         needed is not None and needed < summary["steps"],
         "never" if needed is None else f"after {needed} of {summary['steps']} steps"),
        ("BN's sigmoid input is more stable than the baseline's",
         np_["median_range"] < bp["median_range"] and np_["spread_range"] < bp["spread_range"],
         f"median range {np_['median_range']:.2f} with BN vs {bp['median_range']:.2f} "
         f"without; range of the 15-85 spread {np_['spread_range']:.2f} vs "
         f"{bp['spread_range']:.2f}; spread first -> final {np_['spread_first']:.2f} -> "
         f"{np_['spread_final']:.2f} vs {bp['spread_first']:.2f} -> {bp['spread_final']:.2f}"),
    ]


def headline(summary: dict[str, Any]) -> list[str]:
    """The numbers the run ends with on stdout."""
    base, bn = summary["baseline"], summary["bn"]
    lines = [f"final test accuracy: baseline {pct(base['final_test_accuracy'])}, BN "
             f"{pct(bn['final_test_accuracy'])}, BN with population statistics "
             f"{pct(bn['final_test_accuracy_population_stats'])}"]
    if bn["steps_to_baseline_final"] is not None:
        lines.append(f"BN reaches the baseline's final accuracy after "
                     f"{bn['steps_to_baseline_final']} of {summary['steps']} steps "
                     f"({bn['speedup_to_baseline_final']:.1f}x fewer)")
    return lines


# ----------------------------------------------------------------------------- report.md


def _triple(values: dict[str, float]) -> str:
    return " / ".join(f"{values[p]:+.2f}" for p in PERCENTILES)


def report(document: dict[str, Any], summary: dict[str, Any]) -> str:
    """report.md of a finished run."""
    s = document["settings"]
    timing = document.get("timing", {})
    lines = [
        "# Figure 1 (Ioffe & Szegedy 2015): MNIST, with and without BN",
        "",
        "![Figure 1](figure1.png)",
        "",
        "(a) test accuracy vs training steps; (b, c) the 15th, 50th and 85th percentiles of "
        f"the input to the sigmoid of unit {s['unit']} of the last hidden layer over the "
        "10k test images, (b) without and (c) with BN"
        + (f"; mean over {s['seeds']} seeds, band = range over seeds." if s["seeds"] > 1
           else "."),
        "",
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
        *_sweep_section(document["lr_sweep"], s["lr"]),
        "## Results",
        "",
        *_results_table(summary),
        "",
        *_percentile_section(summary),
        *_timing_section(timing, document["runtime"], s),
        *_paper_section(summary),
    ]
    return "\n".join(lines) + "\n"


def _sweep_section(sweep: dict[str, Any], lr: float) -> list[str]:
    lines = [
        "## Learning rate",
        "",
        f"Both networks use lr = {lr:g}. The default is the winner of the baseline's "
        f"learning-rate sweep (`{sweep['command']}`): the network without BN, "
        f"{sweep['steps']} steps per rate, trained on the first {sweep['train_images']} "
        f"training images and scored on the last {sweep['validation_images']} (never the "
        f"test set); criterion: {sweep['criterion']}.",
        "",
    ]
    results = sweep.get("validation_accuracy")
    if results:
        lines += ["| lr | validation accuracy | |", "|---|---|---|"]
        for value in sweep["values"]:
            mark = "winner" if value == sweep["winner"] else ""
            lines.append(f"| {value:g} | {pct(results.get(str(value)))} | {mark} |")
        lines.append("")
    else:
        lines += ["(The sweep's results are not recorded in this build.)", ""]
    if lr != sweep["winner"]:
        lines += [f"Note: this run's lr {lr:g} is not the sweep's winner {sweep['winner']:g}.",
                  ""]
    return lines


def _results_table(summary: dict[str, Any]) -> list[str]:
    base, bn = summary["baseline"], summary["bn"]
    lines = [
        "| network | final test accuracy | best test accuracy (step) | final, population "
        "statistics |",
        "|---|---|---|---|",
        f"| without BN | {pct(base['final_test_accuracy'])} | "
        f"{pct(base['max_test_accuracy'])} ({base['max_test_accuracy_step']}) | n/a |",
        f"| with BN (moving averages) | {pct(bn['final_test_accuracy'])} | "
        f"{pct(bn['max_test_accuracy'])} ({bn['max_test_accuracy_step']}) | "
        f"{pct(bn['final_test_accuracy_population_stats'])} |",
        "",
    ]
    needed = bn["steps_to_baseline_final"]
    if needed is None:
        lines.append("The BN network never reached the baseline's final test accuracy.")
    else:
        lines.append(
            f"The BN network reaches the baseline's final test accuracy "
            f"({pct(base['final_test_accuracy'])}) after {needed} steps, "
            f"{bn['speedup_to_baseline_final']:.1f}x fewer than the baseline's "
            f"{summary['steps']}."
        )
    lines += ["", "Accuracies are means over seeds; best = mean over seeds of each seed's best.",
              ""]
    if len(summary["seeds"]) > 1:
        lines += ["| seed | without BN final | with BN final | with BN, population |",
                  "|---|---|---|---|"]
        for seed in summary["seeds"]:
            b, n = base["per_seed"][str(seed)], bn["per_seed"][str(seed)]
            lines.append(f"| {seed} | {pct(b['final_test_accuracy'])} | "
                         f"{pct(n['final_test_accuracy'])} | "
                         f"{pct(n.get('final_test_accuracy_population_stats'))} |")
        lines.append("")
    return lines


def _percentile_section(summary: dict[str, Any]) -> list[str]:
    lines = [
        "## Distribution of the sigmoid input (Figure 1 b, c)",
        "",
        "15th / 50th / 85th percentiles of the unit's sigmoid input:",
        "",
        "| network | first evaluation | at 10% of the run | final | median drift | "
        "median range | spread first -> final |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        p = summary[arm]["percentiles"]
        lines.append(
            f"| {LABELS[arm]} | {_triple(p['first'])} (step {p['first']['step']}) | "
            f"{_triple(p['at_10_percent'])} (step {p['at_10_percent']['step']}) | "
            f"{_triple(p['final'])} | {p['median_drift']:+.2f} | {p['median_range']:.2f} | "
            f"{p['spread_first']:.2f} -> {p['spread_final']:.2f} |"
        )
    lines += [
        "",
        "Median drift = final minus first median; median range = max minus min of the median "
        "over all evaluations; spread = 85th minus 15th percentile.",
        "",
    ]
    return lines


def _loads(values: list[float] | None) -> str:
    return "n/a" if values is None else ", ".join(f"{v:.2f}" for v in values)


def _timing_section(timing: dict[str, Any], runtime: dict[str, Any], s: dict[str, Any]
                    ) -> list[str]:
    if not timing:
        return []
    train_s, eval_s = timing.get("train_s", 0.0), timing.get("eval_s", 0.0)
    arms = 2 * s["seeds"]
    loop = train_s + eval_s + timing.get("checkpoint_s", 0.0)
    return [
        "## Wall time",
        "",
        f"- device: {runtime['device']}, torch threads: {runtime['threads']}, "
        f"CPUs: {runtime['cpu_count']}, torch {runtime['torch']}, numpy {runtime['numpy']}, "
        f"Python {runtime['python']}, {runtime['platform']}",
        f"- training: {train_s:.1f} s for {s['steps']} steps x {arms} networks "
        f"({1000 * train_s / max(s['steps'], 1):.3f} ms per step of all networks)",
        f"- evaluation: {eval_s:.1f} s; checkpoints: {timing.get('checkpoint_s', 0.0):.1f} s; "
        f"population statistics: {timing.get('population_s', 0.0):.1f} s",
        f"- training + evaluation + checkpoints: **{loop:.1f} s**; whole command (last "
        f"session, data loading and outputs included): {timing.get('wall_seconds', 0.0):.1f} s;"
        f" sessions: {timing.get('sessions', 1)}",
        f"- load average (1, 5, 15 min) at the start: "
        f"{_loads(timing.get('load_average_at_start'))}; at the end: "
        f"{_loads(timing.get('load_average_at_end'))} (the machine is shared: times are "
        "inflated when the load exceeds the CPU count)",
        "",
    ]


def _paper_section(summary: dict[str, Any]) -> list[str]:
    """Each of the paper's Figure 1 claims, with this run's numbers and a yes/no."""
    return [
        "## Against the paper",
        "",
        "The paper's Figure 1(a), read off the plot: BN ends near 98%, the baseline near "
        "95-96%; (b, c): without BN the percentiles drift in mean and spread, with BN they "
        "stay stable. Here:",
        "",
        *[f"- {claim}: {'yes' if held else 'no'} ({numbers})."
          for claim, held, numbers in paper_claims(summary)],
        "",
    ]
