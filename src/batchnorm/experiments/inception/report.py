"""Turn run results into figure2.png, summary.json, metrics.csv and report.md.

Everything is recomputed from ``results/*.json`` (and the runs' probability files),
so the main runs, the sweep and the ablation can be run at different times into one
folder and the report always shows all that exists. The numbers and verdict rules
are in :mod:`.analysis`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from batchnorm.experiments.inception.analysis import (
    PLATEAU_GAIN,
    PLATEAU_WINDOW,
    best_recipe,
    group_seeds,
    judge,
    run_numbers,
    seed_spread,
    steps_to_reach,
)
from batchnorm.experiments.inception.recipe import CONTROLS, MAIN, PAPER_FIGURE3, VARIANTS
from batchnorm.experiments.runner import load_tensors, write_json, write_text

__all__ = [
    "average_probabilities",
    "headline",
    "load_results",
    "steps_to_reach",
    "write_outputs",
]


def load_results(run_dir: Path) -> dict[str, dict[str, Any]]:
    results = {}
    for path in sorted((run_dir / "results").glob("*.json")):
        result = json.loads(path.read_text())
        results[result["name"]] = result
    return results


def average_probabilities(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of the members' class probabilities
    (not of their logits: section 9 averages probabilities)."""
    return torch.stack(probabilities).mean(dim=0)


def _accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probabilities.argmax(1) == labels).float().mean())


def _variant_numbers(results: dict[str, dict[str, Any]], target: float
                     ) -> dict[str, list[dict[str, Any]]]:
    """Recipe -> per-seed run numbers, for the variants and controls (not sweep/ablation)."""
    groups = group_seeds([n for n in results if not n.startswith(("sweep-", "ablation-"))])
    baseline = [results[n] for n in groups.get("inception", []) if not results[n]["diverged"]]
    finals = [r["last_curve_accuracy"] for r in baseline if r.get("last_curve_accuracy")]
    baseline_final = sum(finals) / len(finals) if finals else None
    return {variant: [run_numbers(results[n], target, baseline_final) for n in names]
            for variant, names in groups.items() if variant in (*VARIANTS, *CONTROLS)}


def ensemble_of_best(run_dir: Path, results: dict[str, dict[str, Any]],
                     per_variant: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """Section 9 at our scale: the seeds of the best main recipe (highest mean final
    validation accuracy), their class probabilities averaged, against each member."""
    best = best_recipe(per_variant, MAIN)
    if best is None:
        return None
    members = [r["name"] for r in per_variant[best]]
    files = [run_dir / "results" / f"{m}.pt" for m in members]
    if not all(f.exists() for f in files):
        return None
    labels = load_tensors(run_dir / "results" / "labels.pt")
    probabilities = [load_tensors(f) for f in files]
    ensemble = {split: _accuracy(average_probabilities([p[split] for p in probabilities]),
                                 labels[split]) for split in ("val", "test")}
    member_rows = {m: {"val": results[m]["final_val_accuracy"],
                       "test": results[m]["test_accuracy"]} for m in members}
    mean_member_test = sum(row["test"] for row in member_rows.values()) / len(members)
    return {"recipe": best, "members": members, "val_accuracy": ensemble["val"],
            "test_accuracy": ensemble["test"], "member_accuracies": member_rows,
            "gain_over_mean_member_test": ensemble["test"] - mean_member_test,
            "gain_over_best_member_test": ensemble["test"] - max(
                row["test"] for row in member_rows.values())}


def _ablation(results: dict[str, dict[str, Any]], per_variant: dict[str, list[dict[str, Any]]]
              ) -> dict[str, Any] | None:
    """Each undone change against bn-x5 (seed 0), called an effect only where the change of
    final validation accuracy exceeds bn-x5's own seed-to-seed range."""
    names = sorted(n for n in results if n.startswith("ablation-undo-"))
    reference = results.get("ablation-bn-x5") or results.get("bn-x5")
    if reference is None or not names:
        return None
    bn_x5 = per_variant.get("bn-x5", [])
    spread = seed_spread({"bn-x5": bn_x5}, "final") if len(bn_x5) >= 2 else None
    rows = []
    for name in names:
        result = results[name]
        final = None if result["diverged"] else result["final_val_accuracy"]
        delta = None if final is None else final - reference["final_val_accuracy"]
        call = ("diverged" if final is None else "no seed spread known" if spread is None
                else "effect" if abs(delta) > spread else "noise (within the seed spread)")
        rows.append({"name": name.removeprefix("ablation-"), "final_val_accuracy": final,
                     "test_accuracy": result.get("test_accuracy"), "delta_final": delta,
                     "call": call})
    return {"reference_final_val_accuracy": reference["final_val_accuracy"],
            "bn_x5_seed_spread": spread, "rows": rows}


def _sweep(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    names = [n for n in results if n.startswith("sweep-")]
    rows = [{"lr": results[n]["recipe"]["lr"],
             "final_val_accuracy": results[n].get("final_val_accuracy"),
             "diverged": results[n]["diverged"]} for n in names]
    return sorted(rows, key=lambda r: r["lr"])


def _write_metrics(run_dir: Path, results: dict[str, dict[str, Any]]) -> None:
    lines = ["run,step,val_accuracy,train_loss,lr"]
    for name, result in results.items():
        for h in result["history"]:
            lines.append(f"{name},{h['step']},{h['val_accuracy']:.6f},{h['train_loss']:.6f},"
                         f"{h['lr']:.6g}")
    write_text(run_dir / "metrics.csv", "\n".join(lines) + "\n")


_NOTES = f"""How to read it (definitions in `experiments/inception/analysis.py`, fixed in
advance):
* Schedule: every run anneals to lr 0 at its last step: lr(t) = lr0 * 0.5^(p * speed / 3)
  * (1 + cos(pi p)) / 2, p = t / (steps - 1). Speed 1 (baseline) or 6 (the paper's "6x
  faster decay", change 4): the exponential factor keeps the paper's meaning, the cosine
  envelope ends every run at 0 (none ends mid-flight).
* Final numbers are the final weights on the whole validation split (10k) and the test
  set, never a maximum over curve points. The curve is measured on the first `eval_size`
  validation images (eval-mode BN, running statistics).
* Steps to target: first evaluation at or above the fixed absolute target; resolution =
  the evaluation interval; a run that never reaches it is censored at the step budget
  (shown as ">N"), which favours the slower arm. Steps to baseline final: first
  evaluation at or above `inception`'s mean last curve point.
* Plateaued: the least-squares line through the curve points of the last
  {PLATEAU_WINDOW:.0%} of the steps rises less than {100 * PLATEAU_GAIN:g} point(s) over that
  window. With the lr annealed to 0 a flat end is partly the schedule's doing:
  "plateaued" says the run ended settled, not that more steps would not help.
* Verdicts: seed-paired differences with 95% Student-t intervals; with 2 seeds the t
  quantile is 12.7, so intervals are wide and "mixed" is frequent: that is the honest
  answer at this budget. One-seed comparisons use difference +- the largest
  seed-to-seed range among the 2-seed recipes (labelled; not a t-interval).
* Controls: `inception-changes` = bn-x5's six non-lr changes (no dropout, L2 / 5, 6x
  faster decay, no LRN, full shuffle, light distortion) at the base lr without BN: it
  differs from bn-x5 only in BN and lr. `inception-x5` / `inception-x30` = bn-x5 / bn-x30
  without BN (only BN differs). Divergence = a non-finite training loss (counted as
  chance accuracy, 10%)."""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _seeds(values: list[Any], fmt: Any) -> str:
    return " / ".join(fmt(v) for v in values)


def _steps(row: dict[str, Any], key: str = "steps_to_target") -> str:
    if row["diverged"]:
        return "diverged"
    value = row[key]
    return f">{row['budget']}" if value is None else str(value)


def _mean(values: list[float | None]) -> float | None:
    numbers = [v for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers and len(numbers) == len(values) else None


def _variant_table(per_variant: dict[str, list[dict[str, Any]]]) -> list[str]:
    out = ["| model | seeds | final val acc (mean; per seed) | test acc (mean; per seed) "
           "| steps to target | steps to baseline final | plateaued (rise over last 20%) "
           "| paper: steps to 72.2% | paper: max |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name in (*VARIANTS, *CONTROLS):
        runs = per_variant.get(name)
        if not runs:
            continue
        final = [r["final_val_accuracy"] for r in runs]
        test = [r["test_accuracy"] for r in runs]
        plateau = _seeds(runs, lambda r: "-" if r["plateau_gain"] is None else (
            f"{'yes' if r['plateaued'] else 'no'} ({100 * r['plateau_gain']:+.1f})"))
        paper = PAPER_FIGURE3.get(name)
        paper_steps = "-" if paper is None else ("never" if paper[0] is None
                                                 else f"{paper[0]:.1e}")
        paper_max = "-" if paper is None else f"{paper[1]}%"
        if name == "inception-x5":
            paper_steps = "diverged (paper's lr x5 without BN)"
        if name == "inception-sigmoid":
            paper_steps, paper_max = "never", "chance"
        out.append(f"| {name} | {len(runs)} | {_pct(_mean(final))}; {_seeds(final, _pct)} | "
                   f"{_pct(_mean(test))}; {_seeds(test, _pct)} | "
                   f"{_seeds(runs, _steps)} | "
                   f"{_seeds(runs, lambda r: _steps(r, 'steps_to_baseline_final'))} | "
                   f"{plateau} | {paper_steps} | {paper_max} |")
    return out


def _format_interval(row: dict[str, Any]) -> str:
    interval = row["interval"]
    scale, unit, digits = (100, " pts", 2) if row["metric"] == "final" else (1, " steps", 0)

    def number(value: float) -> str:
        return f"{value * scale:+.{digits}f}{unit}"

    if interval["low"] is None:
        return f"{number(interval['mean'])} (n={interval['n']}, no interval)"
    return f"{number(interval['mean'])} [{number(interval['low'])}, {number(interval['high'])}]"


def _verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    out = ["| claim | verdict | comparison (a - b) | per seed a; b | difference [95% interval] "
           "| verdict | interval |", "|---|---|---|---|---|---|---|"]
    for claim in verdicts:
        for index, row in enumerate(claim["comparisons"]):
            fmt = _pct if row["metric"] == "final" else (lambda v: f"{v:.0f}")
            censored = f" (censored: {', '.join(row['censored_runs'])})" if row[
                "censored_runs"] else ""
            head = (f"{claim['claim']} | **{claim['verdict']}**" if index == 0 else " | ")
            out.append(f"| {head} | {row['comparison']}{censored} | "
                       f"{_seeds(row['a'], fmt)}; {_seeds(row['b'], fmt)} | "
                       f"{_format_interval(row)} | {row['verdict']} | {row['interval_kind']} |")
    return out


def against_paper(per_variant: dict[str, list[dict[str, Any]]], target: float | None
                  ) -> list[str]:
    """Plain statements where these runs disagree with the paper (or with our own plan)."""
    def mean_final(name: str) -> float | None:
        runs = per_variant.get(name)
        return _mean([r["final"] for r in runs]) if runs else None

    notes = []
    x5 = per_variant.get("inception-x5")
    if x5 and not any(r["diverged"] for r in x5) and (mean_final("inception-x5") or 0) > 0.5:
        x30_final = mean_final("inception-x30")
        notes.append(f"Against the paper: Inception at lr x5 without BN did not diverge here "
                     f"(final {_pct(mean_final('inception-x5'))}; `inception` "
                     f"{_pct(mean_final('inception'))}, `inception-changes` "
                     f"{_pct(mean_final('inception-changes'))}); the paper's diverged. Ours has "
                     "He init and the six other changes"
                     + ("" if x30_final is None else
                        f"; at lr x30 the no-BN network ended at {_pct(x30_final)}") + ".")
    x30, bx5 = mean_final("bn-x30"), mean_final("bn-x5")
    if x30 is not None and bx5 is not None and x30 < bx5:
        notes.append(f"Against the paper: BN-x30 ended below BN-x5 ({_pct(x30)} vs "
                     f"{_pct(bx5)}); in the paper BN-x30 ends highest (74.8% vs 73.0%). "
                     "Both beat bn-baseline.")
    baseline = per_variant.get("inception")
    if target is not None and baseline and all(r["censored"] for r in baseline):
        notes.append(f"Against our plan: `inception` never reached the target "
                     f"{_pct(target)} fixed before the run (final {_pct(mean_final('inception'))}"
                     "); its steps to target are censored at the budget, a lower bound that "
                     "favours it. Steps to baseline final is the uncensored comparison.")
    return notes


def _render(config: dict[str, Any], per_variant: dict[str, list[dict[str, Any]]],
            verdicts: list[dict[str, Any]], ensemble: dict[str, Any] | None,
            ablation: dict[str, Any] | None, sweep: list[dict[str, Any]],
            results: dict[str, dict[str, Any]], target: float | None) -> str:
    out = ["# Inception variants at small scale (Figures 2-3 of Ioffe & Szegedy 2015)", ""]
    any_result = next(iter(results.values()), None)
    if any_result:
        scale = any_result["scale"]
        out += [f"Network: small Inception, depth {any_result['depth']} weight layers, width "
                f"x{scale['width']:g}; {scale['steps']} steps of 32 per run, "
                f"{scale['evaluations']} evaluations on {scale['eval_size']} validation "
                "images. Parameters: " + ", ".join(
                    f"{v} {results[runs[0]['name']]['parameters']:,}"
                    for v, runs in per_variant.items()) + ".", ""]
    out += [_NOTES, ""]
    if per_variant:
        out += [f"## Figure 3: final accuracy and steps to the target {_pct(target)} "
                "(validation)", ""]
        out += _variant_table(per_variant)
        out += ["", "![Figure 2](figure2.png)", ""]
        out += [f"* {note}" for note in against_paper(per_variant, target)] + [""]
    if verdicts:
        out += ["## Verdicts (computed by `analysis.judge`; a claim is supported only if "
                "every comparison is)", ""]
        out += _verdict_lines(verdicts)
        out += ["", "Rule for every comparison (`runner.evidence.decide`, margin 0): supported "
                "if the whole 95% interval of a - b lies above 0; not supported if it lies "
                "entirely below 0 (the paper's claim is contradicted); mixed if it straddles "
                "0 (these seeds cannot tell). A claim is supported (not supported) only if all "
                "its comparisons are; otherwise mixed.", ""]
    if ensemble:
        out += [f"## Ensemble (section 9): the {len(ensemble['members'])} seeds of the best "
                f"recipe, {ensemble['recipe']} (highest mean final validation accuracy)", "",
                "| model | val acc | test acc |", "|---|---|---|",
                f"| ensemble (mean of class probabilities) | {_pct(ensemble['val_accuracy'])} "
                f"| {_pct(ensemble['test_accuracy'])} |"]
        out += [f"| member {m} | {_pct(a['val'])} | {_pct(a['test'])} |"
                for m, a in ensemble["member_accuracies"].items()]
        out += ["", f"Test gain over the mean member: "
                f"{100 * ensemble['gain_over_mean_member_test']:+.2f} pts; over the best member: "
                f"{100 * ensemble['gain_over_best_member_test']:+.2f} pts (the recipe was chosen "
                "on validation, so test is the unbiased number; one ensemble, no interval).",
                ""]
    if ablation:
        spread = ablation["bn_x5_seed_spread"]
        out += ["## Ablation: bn-x5 (seed 0) with one change of section 4.2.1 undone", "",
                f"bn-x5 seed-0 final val acc {_pct(ablation['reference_final_val_accuracy'])}; "
                f"bn-x5 seed-to-seed range {_pct(spread)}: a change within it is noise.", "",
                "| run | final val acc | change vs bn-x5 | test acc | call |",
                "|---|---|---|---|---|"]
        for row in ablation["rows"]:
            delta = "-" if row["delta_final"] is None else f"{100 * row['delta_final']:+.2f} pts"
            out.append(f"| {row['name']} | {_pct(row['final_val_accuracy'])} | {delta} | "
                       f"{_pct(row['test_accuracy'])} | {row['call']} |")
        out.append("")
    if sweep:
        out += ["## Learning-rate sweep for `inception` (base lr)", "",
                "| lr | final val acc | diverged |", "|---|---|---|"]
        out += [f"| {r['lr']:g} | {_pct(r['final_val_accuracy'])} | {r['diverged']} |"
                for r in sweep]
        out.append("")
    seconds = sum(r.get("seconds", 0.0) for r in results.values())
    out += ["## Choices and conditions", ""]
    for name, value in config.items():  # config.json, config-ablation.json, config-sweep.json
        run = value.get("run", {})
        wall = run.get("wall_seconds")
        out += [f"`{name}` (wall time {'-' if wall is None else f'{wall / 60:.1f} min'}, "
                f"load average at start {run.get('load_average_at_start')}, at end "
                f"{run.get('load_average_at_end')}):", "", "```json",
                json.dumps(value, indent=1), "```", ""]
    out += [f"Training wall time, summed over runs: {seconds / 60:.1f} min. "
            "Per run: " + ", ".join(f"{n} {r.get('seconds', 0) / 60:.1f} min"
                                     for n, r in results.items()) + ".", ""]
    return "\n".join(out)


def _target(config: dict[str, Any]) -> float | None:
    for value in config.values():
        if value.get("target_accuracy") is not None:
            return float(value["target_accuracy"])
    return None


def write_outputs(run_dir: Path) -> dict[str, Any]:
    """Write summary.json, metrics.csv, figure2.png and report.md from all results."""
    results = load_results(run_dir)
    config = {path.name: json.loads(path.read_text())
              for path in sorted(run_dir.glob("config*.json"))}
    target = _target(config)
    per_variant = _variant_numbers(results, target if target is not None else 1.0)
    verdicts = judge(per_variant)
    ensemble = ensemble_of_best(run_dir, results, per_variant)
    ablation = _ablation(results, per_variant)
    sweep = _sweep(results)
    summary: dict[str, Any] = {
        "target_accuracy": target,
        "variants": per_variant,
        "verdicts": verdicts,
        "ensemble": ensemble,
        "ablation": ablation,
        "lr_sweep": sweep,
    }
    write_json(run_dir / "summary.json", summary)
    _write_metrics(run_dir, results)
    if per_variant:
        from batchnorm.experiments.inception.plots import save_figure2  # matplotlib: when used

        save_figure2(run_dir / "figure2.png", results, target)
    write_text(run_dir / "report.md", _render(config, per_variant, verdicts, ensemble,
                                              ablation, sweep, results, target))
    return summary


def headline(summary: dict[str, Any]) -> list[str]:
    """The numbers a run ends with on stdout: one line per kind of result that exists."""
    lines = []
    variants = summary["variants"]
    if variants:
        lines.append("final validation accuracy: " + ", ".join(
            f"{name} {_pct(_mean([r['final'] for r in runs]))}"
            + (" (diverged)" if any(r["diverged"] for r in runs) else "")
            for name, runs in variants.items()))
    for claim in summary["verdicts"]:
        lines.append(f"verdict: {claim['claim']}: {claim['verdict']}")
    if summary["ensemble"]:
        ensemble = summary["ensemble"]
        lines.append(f"ensemble of {ensemble['recipe']} seeds: test accuracy "
                     f"{_pct(ensemble['test_accuracy'])} "
                     f"({100 * ensemble['gain_over_mean_member_test']:+.2f} pts over the mean "
                     "member)")
    if summary["ablation"]:
        lines.append("ablation, change of final val accuracy vs bn-x5: " + ", ".join(
            f"{row['name']} {100 * row['delta_final']:+.2f} ({row['call'].split(' ')[0]})"
            for row in summary["ablation"]["rows"] if row["delta_final"] is not None))
    if summary["lr_sweep"]:
        best = max(summary["lr_sweep"], key=lambda row: row["final_val_accuracy"] or 0.0)
        lines.append(f"best base lr for inception: {best['lr']:g} (final validation accuracy "
                     f"{_pct(best['final_val_accuracy'])})")
    return lines
