"""``batchnorm reproduce figure1``: its flags and its entry point."""

from __future__ import annotations

import argparse
from typing import Any

from batchnorm.experiments.figure1.config import (
    PRESETS,
    SWEEP_PRESETS,
    Figure1Config,
    SweepOptions,
)
from batchnorm.experiments.figure1.recorded_sweep import RECORDED_SWEEP
from batchnorm.experiments.runner import (
    RunOptions,
    Session,
    add_flags,
    add_preset_flag,
    from_args,
    run_experiment,
)

__all__ = ["PROG", "add_arguments", "config_from_args", "run"]

PROG = "batchnorm reproduce figure1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags: --preset, one per setting of :class:`Figure1Config`, the sweep, the run."""
    add_preset_flag(parser, PRESETS)
    add_flags(parser.add_argument_group("settings (they decide the numbers; recorded in "
                                        "config.json)"), Figure1Config)
    add_flags(parser.add_argument_group("learning-rate sweep"), SweepOptions)
    add_flags(parser.add_argument_group("run options"), RunOptions,
              defaults={"out": "runs/figure1"})


def config_from_args(args: argparse.Namespace) -> Figure1Config:
    """The validated settings of ``args`` (flags over --preset over defaults), with each
    arm's rate from the recorded sweep unless given."""
    return from_args(Figure1Config, args, PRESETS).with_rates(RECORDED_SWEEP["winners"])


def run(args: argparse.Namespace, *, dataset: Any = None, stop_after: int | None = None) -> int:
    """Run the experiment ``args`` describes; 0 on success, 2 for bad flags or a refused
    resume, 1 for no data.

    ``dataset`` (a :class:`batchnorm.data.Dataset`) replaces ``--dataset`` (tests use
    a tiny synthetic one); ``stop_after`` simulates a kill after that many steps
    (raises :class:`~batchnorm.experiments.figure1.train.SimulatedKillError`).
    """
    return run_experiment(PROG, args, lambda session: _run(args, session, dataset, stop_after))


def _run(args: argparse.Namespace, session: Session, dataset: Any, stop_after: int | None
         ) -> int:
    config = from_args(Figure1Config, args, PRESETS)
    options = from_args(SweepOptions, args, SWEEP_PRESETS)
    if dataset is None:
        from batchnorm.data import load_dataset

        dataset = load_dataset(config.dataset, data_dir=session.options.data_dir,
                               progress=not session.options.no_progress)
    from batchnorm.experiments.figure1.experiment import run_figure

    timing: dict[str, Any] = {}
    if options.sweep_lr:
        from batchnorm.experiments.figure1.sweep import run_sweep

        sweep = run_sweep(config, options, session, dataset, stop_after=stop_after)
        sweep = {"source": f"this run ({session.options.out}/lr_sweep)", **sweep}
        timing["sweep"] = sweep.get("timing", {})
    else:
        sweep = dict(RECORDED_SWEEP)
    config = config.with_rates(sweep["winners"])
    args.lr_baseline, args.lr_bn = config.lr_baseline, config.lr_bn
    return run_figure(config, sweep, args, session, dataset, stop_after=stop_after,
                      timing=timing)
