"""``batchnorm reproduce figure1 --sweep-lr``: the learning rate that is fair to the baseline.

Both networks of Figure 1 train with one learning rate; to be fair to the network
without BN, it is the rate that suits *that* network best. The sweep trains the
baseline once per rate of ``--sweep-values`` (all rates in one loop, from the same
initial weights, on the same batches), on the first 50k training images, scores
each on the last 10k (the validation split, never the test set), and picks the rate
with the best mean validation accuracy over the last evaluations. The result goes
to ``OUT/lr_sweep/`` (lr_sweep.json, lr_sweep.csv, lr_sweep.md); the winner was
copied by hand into :data:`batchnorm.experiments._figure1_config.LR_SWEEP`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from batchnorm.experiments._figure1_config import SWEEP_CRITERION_POINTS, Figure1Config
from batchnorm.experiments._figure1_report import metrics_csv
from batchnorm.experiments._figure1_train import (
    Arm,
    BatchStream,
    TrainingJob,
    binarize,
    make_models,
    train,
)
from batchnorm.experiments._io import write_json, write_text

__all__ = ["VALIDATION_SIZE", "run_sweep", "sweep_result"]

VALIDATION_SIZE = 10_000


def _name(lr: float) -> str:
    return f"lr={lr:g}"


def run_sweep(config: Figure1Config, args, dataset, device, started: float, *,
              stop_after: int | None = None) -> int:
    from batchnorm.experiments import figure1
    from batchnorm.experiments.figure1 import _Progress, seed_streams, sizes_of

    out = Path(args.out) / "lr_sweep"
    values = sorted(set(args.sweep_values))
    total = int(dataset.train_images.shape[0])
    # A small (test) dataset keeps a sixth for validation instead of 10k of 60k.
    validation = VALIDATION_SIZE if total > 2 * VALIDATION_SIZE else total // 6
    train_x, train_y, val_x, val_y = dataset.split(validation_size=validation)
    sizes = sizes_of(config, dataset)
    seed = config.seed  # one seed: the rates differ, the weights and batches do not
    # --lr and --seeds do not apply to the sweep; None keeps that visible in its records.
    settings = {**config.to_dict(), "lr": None, "seeds": None}
    arms = [
        Arm(_name(lr), seed,
            make_models(seed_streams(seed)["init"], sizes=sizes, init_std=config.init_std,
                        batch_norm=False, bn_layer=figure1.bn_layer_class(config.bn_layer),
                        bn_kwargs={}, device=device),
            lr)
        for lr in values
    ]
    checkpoint = out / "checkpoint.pt"
    if not args.resume:
        checkpoint.unlink(missing_ok=True)
    job = TrainingJob(
        arms=arms,
        streams={seed: BatchStream(train_x.shape[0], config.batch_size,
                                   seed_streams(seed)["data"], device)},
        train_x=binarize(train_x, config.binarize_threshold, device),
        train_y=train_y.to(device),
        eval_x=binarize(val_x, config.binarize_threshold, device),
        eval_y=val_y.to(device),
        steps=config.steps,
        eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every,
        momentum=config.momentum,
        unit=config.unit,
        checkpoint_path=checkpoint,
        fingerprint={"mode": "lr_sweep", **settings, "values": values,
                     "sizes": list(sizes), "validation_images": validation},
    )
    with _Progress(config.steps, enabled=not args.no_progress) as progress:
        train(job, resume=args.resume, stop_after=stop_after,
              on_start=progress.start, on_eval=progress.eval)
    result = sweep_result(job.rows, values)
    result.update({
        "arm": "baseline",
        "steps": config.steps,
        "criterion": f"mean validation accuracy over the last {SWEEP_CRITERION_POINTS} "
        "evaluations",
        "train_images": int(train_x.shape[0]),
        "validation_images": validation,
        "settings": settings,
        "timing": {**job.timings, "session_wall_s": time.perf_counter() - started},
    })
    write_text(out / "lr_sweep.csv", metrics_csv(job.rows).replace("test_accuracy",
                                                                   "validation_accuracy"))
    write_json(out / "lr_sweep.json", result)
    write_text(out / "lr_sweep.md", sweep_markdown(result))
    print(f"lr sweep: best learning rate for the baseline: {result['winner']:g} "
          f"(results in {out})")
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
