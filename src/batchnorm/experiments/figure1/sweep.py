"""``batchnorm reproduce figure1 --sweep-lr``: the learning rate that is fair to the baseline.

Both networks of Figure 1 train with one learning rate; to be fair to the network
without BN, it is the rate that suits *that* network best. The sweep trains the
baseline once per rate of ``--sweep-values`` (all rates in one loop, from the same
initial weights, on the same batches), on the first 50k training images, scores
each on the last 10k (the validation split, never the test set), and picks the rate
with the best mean validation accuracy over the last evaluations. The result goes
to ``OUT/lr_sweep/`` (lr_sweep.json, lr_sweep.csv, lr_sweep.md); the winner was
copied by hand into :data:`batchnorm.experiments.figure1.config.LR_SWEEP`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from batchnorm.experiments.figure1.config import (
    SWEEP_CRITERION_POINTS,
    Figure1Config,
    SweepOptions,
)
from batchnorm.experiments.figure1.report import metrics_csv
from batchnorm.experiments.figure1.train import Arm, make_job, make_model, run_job, sizes_of
from batchnorm.experiments.runner import Session, print_summary, write_json, write_text

__all__ = ["VALIDATION_SIZE", "run_sweep", "sweep_markdown", "sweep_result"]

VALIDATION_SIZE = 10_000


def _name(lr: float) -> str:
    return f"lr={lr:g}"


def run_sweep(config: Figure1Config, options: SweepOptions, session: Session, dataset: Any,
              *, stop_after: int | None = None) -> int:
    out = Path(session.options.out) / "lr_sweep"
    values = sorted(set(options.sweep_values))
    total = int(dataset.train_images.shape[0])
    # A small (test) dataset keeps a sixth for validation instead of 10k of 60k.
    validation = VALIDATION_SIZE if total > 2 * VALIDATION_SIZE else total // 6
    train_x, train_y, val_x, val_y = dataset.split(validation_size=validation)
    sizes = sizes_of(config, dataset)
    seed = config.seed  # one seed: the rates differ, the weights and batches do not
    # --lr and --seeds do not apply to the sweep; None keeps that visible in its records.
    settings = {**config.to_dict(), "lr": None, "seeds": None}
    arms = [Arm(_name(lr), seed, make_model(config, sizes, seed, batch_norm=False,
                                            device=session.device), lr)
            for lr in values]
    fingerprint = {"mode": "lr_sweep", **settings, "values": values, "sizes": list(sizes),
                   "validation_images": validation}
    job = make_job(config, arms, (train_x, train_y), (val_x, val_y), out / "checkpoint.pt",
                   fingerprint, session.device)
    run_job(job, session, "lr sweep", stop_after=stop_after)
    result = sweep_result(job.rows, values)
    result.update({
        "arm": "baseline",
        "steps": config.steps,
        "criterion": f"mean validation accuracy over the last {SWEEP_CRITERION_POINTS} "
        "evaluations",
        "train_images": int(train_x.shape[0]),
        "validation_images": validation,
        "settings": settings,
        "timing": {**job.timings, **session.metadata.finish()},
    })
    write_text(out / "lr_sweep.csv", metrics_csv(job.rows).replace("test_accuracy",
                                                                   "validation_accuracy"))
    write_json(out / "lr_sweep.json", result)
    write_text(out / "lr_sweep.md", sweep_markdown(result))
    print_summary(f"figure1 lr sweep: {len(values)} rates, {config.steps} steps, in {out}",
                  [f"best learning rate for the baseline: {result['winner']:g} (validation "
                   f"accuracy {100 * result['validation_accuracy'][str(result['winner'])]:.2f}%)"],
                  out / "lr_sweep.md")
    return 0


def sweep_result(rows: list[dict[str, Any]], values: list[float]) -> dict[str, Any]:
    """Per rate: smoothed final, final and best validation accuracy; and the winner."""
    scores, finals, bests = {}, {}, {}
    for lr in values:
        accuracy = np.array([row["accuracy"] for row in rows if row["arm"] == _name(lr)])
        scores[str(lr)] = float(accuracy[-SWEEP_CRITERION_POINTS:].mean())
        finals[str(lr)] = float(accuracy[-1])
        bests[str(lr)] = float(accuracy.max())
    # Ties go to the smaller rate (listed first).
    winner = max(values, key=lambda lr: (scores[str(lr)], -lr))
    return {"values": values, "validation_accuracy": scores,
            "final_validation_accuracy": finals, "max_validation_accuracy": bests,
            "winner": winner}


def sweep_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Learning-rate sweep for Figure 1 (baseline, no BN)",
        "",
        f"{result['steps']} steps per rate, trained on {result['train_images']} training "
        f"images, scored on {result['validation_images']} held-out ones; criterion: "
        f"{result['criterion']}.",
        "",
        "| lr | criterion | final | best | |",
        "|---|---|---|---|---|",
    ]
    for lr in result["values"]:
        key = str(lr)
        lines.append(
            f"| {lr:g} | {100 * result['validation_accuracy'][key]:.2f}% | "
            f"{100 * result['final_validation_accuracy'][key]:.2f}% | "
            f"{100 * result['max_validation_accuracy'][key]:.2f}% | "
            f"{'winner' if lr == result['winner'] else ''} |"
        )
    timing = result.get("timing", {})
    lines += ["", f"Training took {timing.get('train_s', 0.0):.0f} s "
              f"(evaluation {timing.get('eval_s', 0.0):.0f} s).", ""]
    return "\n".join(lines)
