"""``batchnorm reproduce figure1``: the paper's Figure 1 (MNIST), end to end.

Trains the 784-100-100-100-10 sigmoid network with and without BN (PAPER.md
section 7) on the same batches from the same initial weights, evaluates both on
the 10k test images every ``--eval-every`` steps, and writes into ``--out``:

``config.json``   every setting, every choice the paper leaves open and why, the lr sweep
``metrics.csv``   one row per seed, network and evaluation: accuracy, loss, percentiles
``figure1.png``   (a) test accuracy vs steps, (b) baseline and (c) BN: 15/50/85th
                  percentiles of one last-hidden-unit's input to the sigmoid
``summary.json``  final and best accuracy per network, steps BN needs to reach the
                  baseline's final accuracy, BN with Algorithm 2 population statistics
``report.md``     all of the above for people, with the measured wall time and load
``checkpoint.pt`` the state at the last evaluation checkpoint (``--resume`` continues it)

``--sweep-lr`` runs the baseline's learning-rate sweep instead (into ``OUT/lr_sweep``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from batchnorm.algorithm2 import recompute_statistics
from batchnorm.experiments import _figure1_config as cfg
from batchnorm.experiments._figure1_config import ConfigError, Figure1Config
from batchnorm.experiments._figure1_train import (
    Arm,
    BatchStream,
    CheckpointMismatchError,
    SimulatedKillError,
    TrainingJob,
    binarize,
    evaluate,
    make_models,
    train,
)
from batchnorm.experiments._io import write_json
from batchnorm.layers import BatchNorm1d

__all__ = ["SimulatedKillError", "add_arguments", "run"]

PROG = "batchnorm reproduce figure1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cfg.add_arguments(parser)


def run(
    args: argparse.Namespace,
    *,
    dataset: Any = None,
    stop_after: int | None = None,
) -> int:
    """Run the experiment ``args`` describes; 0 on success, 2 for bad flags, 1 for no data.

    ``dataset`` (a :class:`batchnorm.data.Dataset`) replaces ``--dataset`` (tests use
    a tiny synthetic one); ``stop_after`` simulates a kill after that many steps
    (raises :class:`SimulatedKillError`).
    """
    started = time.perf_counter()
    try:
        config = cfg.config_from_args(args)
        device = _device(args.device)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if dataset is None:
        from batchnorm.data import DataError, load_dataset

        try:
            dataset = load_dataset(config.dataset, data_dir=args.data_dir,
                                   progress=not args.no_progress)
        except DataError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
    previous_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        if args.sweep_lr:
            from batchnorm.experiments._figure1_sweep import run_sweep

            return run_sweep(config, args, dataset, device, started, stop_after=stop_after)
        return _run_figure(config, args, dataset, device, started, stop_after=stop_after)
    except CheckpointMismatchError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous_threads)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available (use --device cpu)")
    return torch.device(name)


def seed_streams(seed: int) -> dict[str, int]:
    """Independent generator seeds of one seed: weights, data order, population batches."""
    return {"init": 3 * seed, "data": 3 * seed + 1, "population": 3 * seed + 2}


def bn_layer_class(name: str) -> type[nn.Module]:
    return BatchNorm1d if name == "batchnorm" else nn.BatchNorm1d


def sizes_of(config: Figure1Config, dataset: Any) -> tuple[int, ...]:
    pixels = int(dataset.train_images[0].numel())
    return (pixels, *config.hidden, 10)


def runtime_info(args: argparse.Namespace, device: torch.device, dataset: Any) -> dict[str, Any]:
    """Where and how a session ran (not part of what must match to resume)."""
    return {
        "device": str(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "dataset_source": getattr(dataset, "source", "injected"),
        "command": " ".join([PROG, *sys.argv[3:]]) if sys.argv[1:3] == ["reproduce", "figure1"]
        else None,
    }


def config_document(config: Figure1Config, args, device, dataset, sizes) -> dict[str, Any]:
    """config.json: settings, the paper's fixed setup, our choices and the lr sweep."""
    return {
        "experiment": "figure1",
        "paper": cfg.PAPER,
        "settings": config.to_dict(),
        "sizes": list(sizes),
        "choices": cfg.CHOICES,
        "lr_sweep": cfg.LR_SWEEP,
        "runtime": runtime_info(args, device, dataset),
        # Every flag as given (runtime ones included), so the command can be rebuilt.
        "flags": {key: value for key, value in sorted(vars(args).items())
                  if not key.startswith("_")},
    }


def _run_figure(config, args, dataset, device, started, *, stop_after) -> int:
    from batchnorm.experiments._figure1_report import write_outputs

    out = Path(args.out)
    sizes = sizes_of(config, dataset)
    document = config_document(config, args, device, dataset, sizes)
    checkpoint = out / "checkpoint.pt"
    if not args.resume:
        checkpoint.unlink(missing_ok=True)  # a fresh run never continues an old one
    elif not checkpoint.exists():
        print(f"{PROG}: no checkpoint in {out}: starting from step 0", file=sys.stderr)
    write_json(out / "config.json", document)
    load_before = os.getloadavg()
    job = build_job(config, dataset, device, sizes, checkpoint)
    with _Progress(config.steps, enabled=not args.no_progress) as progress:
        train(job, resume=args.resume, stop_after=stop_after,
              on_start=progress.start, on_eval=progress.eval)
    population_started = time.perf_counter()
    population = population_results(job, config, device)
    job.timings["population_s"] = time.perf_counter() - population_started
    timing = {
        **job.timings,
        "session_wall_s": time.perf_counter() - started,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }
    document["timing"] = timing
    write_outputs(out, document, job.rows, population)
    return 0


def build_job(config: Figure1Config, dataset, device, sizes, checkpoint: Path) -> TrainingJob:
    """Both networks for every seed, their batch streams and the data, on ``device``."""
    bn_kwargs = {"eps": config.eps, "momentum": config.bn_momentum}
    arms, streams = [], {}
    for seed in range(config.seed, config.seed + config.seeds):
        for name, batch_norm in (("baseline", False), ("bn", True)):
            model = make_models(seed_streams(seed)["init"], sizes=sizes,
                                init_std=config.init_std, batch_norm=batch_norm,
                                bn_layer=bn_layer_class(config.bn_layer), bn_kwargs=bn_kwargs,
                                device=device)
            arms.append(Arm(name, seed, model, config.lr))
        streams[seed] = BatchStream(dataset.train_images.shape[0], config.batch_size,
                                    seed_streams(seed)["data"], device)
    return TrainingJob(
        arms=arms,
        streams=streams,
        train_x=binarize(dataset.train_images, config.binarize_threshold, device),
        train_y=dataset.train_labels.to(device),
        eval_x=binarize(dataset.test_images, config.binarize_threshold, device),
        eval_y=dataset.test_labels.to(device),
        steps=config.steps,
        eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every,
        momentum=config.momentum,
        unit=config.unit,
        checkpoint_path=checkpoint,
        fingerprint={"mode": "figure1", **config.to_dict(), "sizes": list(sizes),
                     "train_images": int(dataset.train_images.shape[0])},
    )


def population_results(job: TrainingJob, config: Figure1Config, device) -> dict[int, dict]:
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
                             seed_streams(arm.seed)["population"], device)
        batches = (job.train_x.index_select(0, stream.next())
                   for _ in range(config.population_batches))
        recompute_statistics(model, batches)
        results[arm.seed] = evaluate(model, job.eval_x, job.eval_y, job.unit)
    return results


class _Progress:
    """A tqdm bar over training steps showing each network's latest test accuracy."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def start(self, step: int) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, initial=step, unit="step", desc="figure1",
                            dynamic_ncols=True, smoothing=0.1)

    def eval(self, step: int, rows: list[dict[str, Any]]) -> None:
        if self.bar is None:
            return
        accuracy: dict[str, list[float]] = {}
        for row in rows:
            accuracy.setdefault(row["arm"], []).append(row["accuracy"])
        self.bar.set_postfix({arm: f"{sum(v) / len(v):.4f}" for arm, v in accuracy.items()},
                             refresh=False)
        self.bar.update(step - self.bar.n)
