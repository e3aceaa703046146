"""The figure: both stacks (without and with BN) of every seed and rate pair trained
together, population statistics at checkpoints, then every output file of the run folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from batchnorm.experiments.figure1.config import (
    CHOICES,
    PAPER,
    SEEDS,
    Figure1Config,
    eval_schedule,
)
from batchnorm.experiments.figure1.plots import save_figure1
from batchnorm.experiments.figure1.report import (
    headline,
    metrics_csv,
    report,
    summarize,
    verdict_lines,
)
from batchnorm.experiments.figure1.train import (
    Network,
    make_job,
    quantiles,
    run_job,
    sizes_of,
)
from batchnorm.experiments.runner import Session, flags_of, print_summary, write_json, write_text
from batchnorm.models.stacked import StackedMLP

__all__ = ["init_distribution", "networks_of", "run_figure"]


def networks_of(config: Figure1Config) -> list[Network]:
    """Network k of both stacks: per rate pair (own, then shared) every seed."""
    return [Network(seed, pair, {"baseline": lr_baseline, "bn": lr_bn})
            for pair, lr_baseline, lr_bn in config.pairs()
            for seed in range(config.seed, config.seed + config.seeds)]


def run_figure(config: Figure1Config, sweep: dict[str, Any], args: argparse.Namespace,
               session: Session, dataset: Any, *, stop_after: int | None = None,
               timing: dict[str, Any] | None = None) -> int:
    """Train, evaluate, write; ``sweep`` is the sweep the rates came from (for the report)."""
    out = Path(session.options.out)
    device = session.device
    sizes = sizes_of(config, dataset)
    networks = networks_of(config)
    schedule = eval_schedule(config.steps, config.eval_every, config.early_until,
                             config.early_points)
    checkpoints = {t for t in schedule if t > 0 and t % config.checkpoint_every == 0}
    fingerprint = {"mode": "figure1", **config.to_dict(), "sizes": list(sizes),
                   "train_images": int(dataset.train_images.shape[0])}
    job = make_job(config, networks, sizes, (dataset.train_images, dataset.train_labels),
                   (dataset.test_images, dataset.test_labels), steps=config.steps,
                   schedule=schedule, checkpoint_steps=checkpoints,
                   checkpoint=out / "checkpoint.pt", fingerprint=fingerprint, device=device)
    document = {
        "experiment": "figure1", "paper": PAPER, "settings": config.to_dict(),
        "sizes": list(sizes), "choices": CHOICES, "schedule": schedule,
        "networks": [{"seed": n.seed, "pair": n.pair, "lrs": n.lrs} for n in networks],
        "lr_sweep": sweep,
        "init_distribution": init_distribution(config, sizes, job.eval_x),
        "runtime": {**session.runtime(), "dataset_source": getattr(dataset, "source",
                                                                   "injected")},
        "flags": flags_of(args),
    }
    write_json(out / "config.json", document)
    run_job(job, session, "figure1", stop_after=stop_after)
    parts = dict(timing or {})
    parts["figure"] = dict(job.timings)
    summary = summarize(job.rows, job.layer, job.schedule, document["networks"], sweep,
                        config.steps)
    document["timing"] = {"parts": parts, **session.metadata.finish()}
    summary["timing"] = document["timing"]
    summary["init_distribution"] = document["init_distribution"]
    write_text(out / "metrics.csv", metrics_csv(job.rows))
    write_json(out / "summary.json", summary)
    for pair in summary["pairs"]:
        save_figure1(out / f"figure1_{pair}.png", job.rows, pair, sweep, config.unit)
    write_json(out / "config.json", document)
    write_text(out / "report.md", report(document, summary))
    print_summary(
        f"figure1: {config.seeds} seed(s) per arm, {config.steps} steps, in {out}",
        headline(summary), out / "report.md", verdict_lines(summary))
    return 0


@torch.inference_mode()
def init_distribution(config: Figure1Config, sizes: tuple[int, ...], x: torch.Tensor
                      ) -> dict[str, Any]:
    """At init (seed ``config.seed``, without BN): per hidden layer the median over units of
    the 15/50/85th percentiles over the images ``x`` of the sigmoid input, the median 15-85
    spread, and the chosen unit's spread (in the last layer: the unit of Figure 1)."""
    stack = StackedMLP(1, sizes, init_std=config.init_std,
                       generators=[SEEDS.generator(config.seed, "init")]).to(x.device)
    layers = []
    for h in stack.forward_with_preactivations(x).preactivations:
        q = quantiles(h[0].double())  # (3, units)
        spread = q[2] - q[0]
        layers.append({"p15": float(q[0].median()), "p50": float(q[1].median()),
                       "p85": float(q[2].median()), "spread": float(spread.median()),
                       "unit_spread": float(spread[config.unit])})
    return {"init_std": config.init_std, "seed": config.seed, "unit": config.unit,
            "images": int(x.shape[0]), "layers": layers}

