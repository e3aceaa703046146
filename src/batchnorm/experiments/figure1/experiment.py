"""The figure: both networks of every seed trained together, then population statistics,
then every output file of the run folder."""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import torch

from batchnorm import recompute_statistics
from batchnorm.experiments.figure1.config import CHOICES, LR_SWEEP, PAPER, SEEDS, Figure1Config
from batchnorm.experiments.figure1.plots import save_figure1
from batchnorm.experiments.figure1.report import (
    headline,
    metrics_csv,
    paper_claims,
    report,
    summarize,
)
from batchnorm.experiments.figure1.train import (
    Arm,
    BatchStream,
    TrainingJob,
    evaluate,
    make_job,
    make_model,
    run_job,
    sizes_of,
)
from batchnorm.experiments.runner import (
    Session,
    flags_of,
    print_summary,
    write_json,
    write_text,
)

__all__ = ["config_document", "population_results", "run_figure", "write_outputs"]


def run_figure(config: Figure1Config, args: argparse.Namespace, session: Session, dataset: Any,
               *, stop_after: int | None = None) -> int:
    out = Path(session.options.out)
    device = session.device
    sizes = sizes_of(config, dataset)
    document = config_document(config, args, session, dataset, sizes)
    write_json(out / "config.json", document)
    arms = [
        Arm(name, seed, make_model(config, sizes, seed, batch_norm=batch_norm, device=device),
            config.lr)
        for seed in range(config.seed, config.seed + config.seeds)
        for name, batch_norm in (("baseline", False), ("bn", True))
    ]
    fingerprint = {"mode": "figure1", **config.to_dict(), "sizes": list(sizes),
                   "train_images": int(dataset.train_images.shape[0])}
    job = make_job(config, arms, (dataset.train_images, dataset.train_labels),
                   (dataset.test_images, dataset.test_labels), out / "checkpoint.pt",
                   fingerprint, device)
    run_job(job, session, "figure1", stop_after=stop_after)
    population_started = time.perf_counter()
    population = population_results(job, config, device)
    job.timings["population_s"] = time.perf_counter() - population_started
    document["timing"] = {**job.timings, **session.metadata.finish()}
    summary = write_outputs(out, document, job.rows, population)
    print_summary(f"figure1: {len(arms) // 2} seed(s), {config.steps} steps, in {out}",
                  headline(summary), out / "report.md",
                  [(claim, held) for claim, held, _numbers in paper_claims(summary)])
    return 0


def config_document(config: Figure1Config, args: argparse.Namespace, session: Session,
                    dataset: Any, sizes: tuple[int, ...]) -> dict[str, Any]:
    """config.json: settings, the paper's fixed setup, our choices and the lr sweep."""
    return {
        "experiment": "figure1",
        "paper": PAPER,
        "settings": config.to_dict(),
        "sizes": list(sizes),
        "choices": CHOICES,
        "lr_sweep": LR_SWEEP,
        "runtime": {**session.runtime(),
                    "dataset_source": getattr(dataset, "source", "injected")},
        "flags": flags_of(args),
    }


def population_results(job: TrainingJob, config: Figure1Config, device: torch.device
                       ) -> dict[int, dict[str, float]]:
    """Per seed: the BN network evaluated with Algorithm 2 population statistics.

    A copy of each trained BN network gets :func:`batchnorm.recompute_statistics` over
    ``config.population_batches`` training mini-batches of ``config.batch_size`` in a
    seeded random order; the trained network itself keeps its moving averages.
    """
    results = {}
    for arm in job.arms:
        if arm.name != "bn":
            continue
        model = copy.deepcopy(arm.model)
        stream = BatchStream(job.train_x.shape[0], config.batch_size,
                             SEEDS(arm.seed)["population"], device)
        batches = (job.train_x.index_select(0, stream.next())
                   for _ in range(config.population_batches))
        recompute_statistics(model, batches)
        results[arm.seed] = evaluate(model, job.eval_x, job.eval_y, job.unit)
    return results


def write_outputs(out: Path, document: dict[str, Any], rows: list[dict[str, Any]],
                  population: dict[int, dict[str, float]]) -> dict[str, Any]:
    """Write every output file of a finished run; returns the summary."""
    summary = summarize(rows, population)
    summary["timing"] = document.get("timing", {})
    write_text(out / "metrics.csv", metrics_csv(rows))
    write_json(out / "summary.json", summary)
    save_figure1(out / "figure1.png", rows)
    write_json(out / "config.json", document)
    write_text(out / "report.md", report(document, summary))
    return summary
