"""Turn run results into figure2.png, summary.json, metrics.csv and report.md.

Everything is recomputed from ``results/*.json`` (and the ensemble's probability
files), so the main run, the ensemble, the sweep and the ablation can be run at
different times into one folder and the report always shows all that exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from batchnorm.experiments.inception.recipe import CONTROLS, PAPER_FIGURE3, VARIANTS
from batchnorm.experiments.runner import load_tensors, write_json, write_text

__all__ = [
    "average_probabilities",
    "figure3_rows",
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


def steps_to_reach(history: list[dict[str, Any]], target: float) -> int | None:
    """First evaluated step whose validation accuracy is at least ``target``."""
    for point in history:
        if point["val_accuracy"] >= target:  # NaN (diverged) compares False
            return int(point["step"])
    return None


def average_probabilities(probabilities: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of the members' class probabilities
    (not of their logits: section 9 averages probabilities)."""
    return torch.stack(probabilities).mean(dim=0)


def figure3_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant: max accuracy, steps to reach ``inception``'s max, speed-up, divergence."""
    baseline = results.get("inception")
    target = baseline["max_accuracy"] if baseline else None
    base_steps = steps_to_reach(baseline["history"], target) if baseline and target else None
    rows = []
    for name in (*VARIANTS, *CONTROLS):
        if name not in results:
            continue
        result = results[name]
        steps = steps_to_reach(result["history"], target) if target is not None else None
        rows.append({
            "name": name,
            "max_accuracy": result["max_accuracy"],
            "steps_to_inception_max": steps,
            "speedup_vs_inception": (base_steps / steps) if steps and base_steps else None,
            "diverged": bool(result["diverged"]),
            "diverged_at_step": result.get("diverged_at_step"),
            "test_accuracy": result.get("test_accuracy"),
            "final_val_accuracy": result.get("final_val_accuracy"),
            # Extra seeds (--seeds K) are runs named "<variant>@s<k>".
            "max_accuracy_all_seeds": [result["max_accuracy"]] + [
                results[other]["max_accuracy"] for other in sorted(results)
                if other.startswith(f"{name}@s")],
        })
    return rows


def _ensemble(run_dir: Path, results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    members = sorted(name for name in results if name.startswith("ensemble-"))
    members = [m for m in members if not results[m]["diverged"]]
    if not members:
        return None
    labels = load_tensors(run_dir / "results" / "labels.pt")
    probabilities = {m: load_tensors(run_dir / "results" / f"{m}.pt") for m in members}
    test = average_probabilities([probabilities[m]["test"] for m in members])
    val = average_probabilities([probabilities[m]["val"] for m in members])
    best = max(members, key=lambda m: results[m]["final_val_accuracy"])  # chosen on validation
    return {
        "members": members,
        "ensemble_test_accuracy": float((test.argmax(1) == labels["test"]).float().mean()),
        "ensemble_val_accuracy": float((val.argmax(1) == labels["val"]).float().mean()),
        "best_member": best,
        "best_member_test_accuracy": results[best]["test_accuracy"],
        "best_member_val_accuracy": results[best]["final_val_accuracy"],
        "member_test_accuracies": {m: results[m]["test_accuracy"] for m in members},
    }


def _ablation(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    reference = results.get("ablation-bn-x5") or results.get("bn-x5")
    target = results["inception"]["max_accuracy"] if "inception" in results else None
    names = sorted(n for n in results if n.startswith("ablation-undo-"))
    if reference is None or not names:
        return []
    rows = []
    for name in ["ablation-bn-x5", *names]:
        result = results.get(name, reference if name == "ablation-bn-x5" else None)
        if result is None:
            continue
        rows.append({
            "name": name.removeprefix("ablation-"),
            "max_accuracy": result["max_accuracy"],
            "delta_max_vs_bn_x5": (result["max_accuracy"] - reference["max_accuracy"])
            if result["max_accuracy"] is not None else None,
            "final_val_accuracy": result.get("final_val_accuracy"),
            "test_accuracy": result.get("test_accuracy"),
            "diverged": bool(result["diverged"]),
            "steps_to_inception_max": steps_to_reach(result["history"], target)
            if target is not None else None,
        })
    return rows


def _sweep(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    names = [n for n in results if n.startswith("sweep-")]
    rows = [{"lr": results[n]["recipe"]["lr"], "max_accuracy": results[n]["max_accuracy"],
             "diverged": results[n]["diverged"]} for n in names]
    return sorted(rows, key=lambda r: r["lr"])


def _write_metrics(run_dir: Path, results: dict[str, dict[str, Any]]) -> None:
    lines = ["run,step,val_accuracy,train_loss,lr"]
    for name, result in results.items():
        for h in result["history"]:
            lines.append(f"{name},{h['step']},{h['val_accuracy']:.6f},{h['train_loss']:.6f},"
                         f"{h['lr']:.6g}")
    write_text(run_dir / "metrics.csv", "\n".join(lines) + "\n")


_NOTES = """Choices the paper leaves open (all flags; values in the JSON below):
* Data: validation = last 10k of the training set; the curve (Figure 2) is measured on
  its first `eval_size` images at >= 50 points per run (eval-mode BN, running statistics),
  so each point has a sampling error of about +-1 point at eval_size 1000; the final
  validation and test numbers use all 10k images. "Max accuracy" is the curve's maximum,
  as in the paper, and is biased upwards by that noise (more so for noisier curves).
* Network: He init for ReLU, Glorot for sigmoid (torch's default init left the 14-layer
  ReLU net without BN untrainable: that would have been a failure of init, not of BN);
  LRN after the stem's max-pool (GoogLeNet's order); no auxiliary classifiers.
* Recipe: SGD momentum 0.9, batch 32; base lr from the sweep below; lr x5 / x30 for
  BN-x5 / BN-x30 and the no-BN control inception-x5. Divergence = non-finite loss.
* One torch thread per process (2 threads on this shared 2-core machine were 5-15x
  slower); channels_last on (measured faster without BN, mixed with BN under load)."""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _render(config: dict[str, Any], rows: list[dict[str, Any]], ensemble: dict[str, Any] | None,
            ablation: list[dict[str, Any]], sweep: list[dict[str, Any]],
            results: dict[str, dict[str, Any]]) -> str:
    out = ["# Inception variants at small scale (Figures 2-3 of Ioffe & Szegedy 2015)", ""]
    any_result = next(iter(results.values()), None)
    if any_result:
        out += [f"Network: small Inception, depth {any_result['depth']} weight layers, "
                f"parameters per variant: "
                + ", ".join(f"{n} {results[n]['parameters']:,}" for n in rows_names(rows, results))
                + ".", ""]
    out += [_NOTES, ""]
    out += ["## Figure 3 (steps to reach `inception`'s best validation accuracy)", "",
            "| model | steps to inception max | speed-up | max val acc | test acc | diverged "
            "| paper: steps to 72.2% | paper: max |",
            "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        paper = PAPER_FIGURE3.get(row["name"])
        paper_steps = "-" if paper is None else ("never" if paper[0] is None
                                                 else f"{paper[0]:.1e}")
        paper_max = "-" if paper is None else f"{paper[1]}%"
        if row["name"] in ("inception-x5", "inception-sigmoid"):
            paper_steps, paper_max = ("diverged", "-") if row["name"] == "inception-x5" else (
                "never", "chance")
        steps = "never" if row["steps_to_inception_max"] is None else str(
            row["steps_to_inception_max"])
        speedup = "-" if row["speedup_vs_inception"] is None else (
            f"{row['speedup_vs_inception']:.1f}x")
        diverged = f"yes (step {row['diverged_at_step']})" if row["diverged"] else "no"
        out.append(f"| {row['name']} | {steps} | {speedup} | {_pct(row['max_accuracy'])} | "
                   f"{_pct(row['test_accuracy'])} | {diverged} | {paper_steps} | {paper_max} |")
    out += ["", "![Figure 2](figure2.png)", ""]
    if ensemble:
        out += ["## Ensemble (section 9)", "",
                "| model | test acc | val acc |", "|---|---|---|",
                f"| ensemble of {len(ensemble['members'])} (mean of class probabilities) | "
                f"{_pct(ensemble['ensemble_test_accuracy'])} | "
                f"{_pct(ensemble['ensemble_val_accuracy'])} |",
                f"| best member ({ensemble['best_member']}, chosen on validation) | "
                f"{_pct(ensemble['best_member_test_accuracy'])} | "
                f"{_pct(ensemble['best_member_val_accuracy'])} |", ""]
    if ablation:
        out += ["## Ablation: bn-x5 with one change of section 4.2.1 undone", "",
                "| run | max val acc | change vs bn-x5 | steps to inception max | final val acc "
                "| test acc | diverged |",
                "|---|---|---|---|---|---|---|"]
        for row in ablation:
            delta = "-" if row["delta_max_vs_bn_x5"] is None else (
                f"{100 * row['delta_max_vs_bn_x5']:+.2f} pts")
            steps = row["steps_to_inception_max"]
            out.append(f"| {row['name']} | {_pct(row['max_accuracy'])} | {delta} | "
                       f"{'never' if steps is None else steps} | "
                       f"{_pct(row['final_val_accuracy'])} | {_pct(row['test_accuracy'])} | "
                       f"{'yes' if row['diverged'] else 'no'} |")
        out.append("")
    if sweep:
        out += ["## Learning-rate sweep for `inception` (base lr)", "",
                "| lr | max val acc | diverged |", "|---|---|---|"]
        out += [f"| {r['lr']:g} | {_pct(r['max_accuracy'])} | {r['diverged']} |" for r in sweep]
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
    out += [
            f"Training wall time, summed over runs: {seconds / 60:.1f} min. "
            "Per run: " + ", ".join(f"{n} {r.get('seconds', 0) / 60:.1f} min"
                                     for n, r in results.items()) + ".", ""]
    return "\n".join(out)


def rows_names(rows: list[dict[str, Any]], results: dict[str, dict[str, Any]]) -> list[str]:
    names = [r["name"] for r in rows] or list(results)[:1]
    return [n for n in names if n in results]


def write_outputs(run_dir: Path) -> dict[str, Any]:
    """Write summary.json, metrics.csv, figure2.png and report.md from all results."""
    results = load_results(run_dir)
    config = {path.name: json.loads(path.read_text())
              for path in sorted(run_dir.glob("config*.json"))}
    rows = figure3_rows(results)
    ensemble = _ensemble(run_dir, results)
    ablation = _ablation(results)
    sweep = _sweep(results)
    summary: dict[str, Any] = {
        "variants": {row["name"]: {k: row[k] for k in (
            "max_accuracy", "steps_to_inception_max", "speedup_vs_inception", "diverged",
            "test_accuracy", "max_accuracy_all_seeds")} for row in rows},
        "ensemble_accuracy": ensemble["ensemble_test_accuracy"] if ensemble else None,
        "ensemble": ensemble,
        "ablation": ablation,
        "lr_sweep": sweep,
    }
    write_json(run_dir / "summary.json", summary)
    _write_metrics(run_dir, results)
    if rows:
        from batchnorm.experiments.inception.plots import save_figure2  # matplotlib: when used

        save_figure2(run_dir / "figure2.png", results)
    write_text(run_dir / "report.md", _render(config, rows, ensemble, ablation, sweep, results))
    return summary


def headline(summary: dict[str, Any]) -> list[str]:
    """The numbers a run ends with on stdout: one line per kind of result that exists."""
    lines = []
    variants = summary["variants"]
    if variants:
        lines.append("max validation accuracy: " + ", ".join(
            f"{name} {_pct(row['max_accuracy'])}" + (" (diverged)" if row["diverged"] else "")
            for name, row in variants.items()))
        faster = [f"{name} {row['speedup_vs_inception']:.1f}x"
                  for name, row in variants.items()
                  if name != "inception" and row["speedup_vs_inception"] is not None]
        lines.append("speed-up to inception's max: " + (", ".join(faster) or "none reached it"))
    if summary["ensemble"]:
        ensemble = summary["ensemble"]
        lines.append(f"ensemble of {len(ensemble['members'])}: test accuracy "
                     f"{_pct(ensemble['ensemble_test_accuracy'])} (best member "
                     f"{_pct(ensemble['best_member_test_accuracy'])})")
    if summary["ablation"]:
        lines.append("ablation, change of max accuracy vs bn-x5: " + ", ".join(
            f"{row['name']} {100 * row['delta_max_vs_bn_x5']:+.2f}"
            for row in summary["ablation"] if row["delta_max_vs_bn_x5"] is not None))
    if summary["lr_sweep"]:
        best = max(summary["lr_sweep"], key=lambda row: row["max_accuracy"] or 0.0)
        lines.append(f"best base lr for inception: {best['lr']:g} (max validation accuracy "
                     f"{_pct(best['max_accuracy'])})")
    return lines
