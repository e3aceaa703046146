"""``batchnorm reproduce claims``: its flags and its entry point."""

from __future__ import annotations

import argparse

from batchnorm.experiments.claims.config import PRESET_HELP, PRESETS, LabConfig
from batchnorm.experiments.runner import (
    RunOptions,
    Session,
    add_flags,
    add_preset_flag,
    from_args,
    run_experiment,
)

__all__ = ["PROG", "add_arguments", "run"]

PROG = "batchnorm reproduce claims"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_preset_flag(parser, PRESETS, help=PRESET_HELP)
    add_flags(parser.add_argument_group("claims"), LabConfig)
    add_flags(parser.add_argument_group("run options"), RunOptions,
              defaults={"out": "runs/claims"})


def run(args: argparse.Namespace) -> int:
    """Run the lab ``args`` describes; 0 on success, 2 for bad flags or a refused resume,
    1 for no data."""
    return run_experiment(PROG, args, lambda session: _run(args, session))


def _run(args: argparse.Namespace, session: Session) -> int:
    from batchnorm.experiments.claims.lab import run_lab

    return run_lab(from_args(LabConfig, args, PRESETS), args.preset, session)
