"""One invocation of an experiment: shared flags, device, threads, metadata, exit codes.

:func:`run_experiment` is what an experiment's ``run(args)`` returns: it reads the shared
:class:`~batchnorm.experiments.runner.options.RunOptions`, picks the device, sets the
torch thread count for the run (and restores it), starts the :class:`RunMetadata`
clock, claims the run folder (:func:`~batchnorm.experiments.runner.lock.claim_folder`:
writable, locked, not holding another run unless ``--resume``/``--force``) and turns
the expected failures into one line on stderr and an exit code: 2 for an
:class:`ExperimentError` (bad settings, a refused resume, a busy or damaged folder),
1 for missing data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from batchnorm.experiments.runner.errors import ExperimentError
from batchnorm.experiments.runner.lock import claim_folder
from batchnorm.experiments.runner.metadata import RunMetadata, command_line
from batchnorm.experiments.runner.options import RunOptions, resolve_device
from batchnorm.experiments.runner.settings import from_args
from batchnorm.files import write_bytes

__all__ = ["Session", "run_experiment"]


@dataclass
class Session:
    prog: str
    options: RunOptions
    device: torch.device
    metadata: RunMetadata = field(default_factory=RunMetadata)

    def warn(self, message: str) -> None:
        print(f"{self.prog}: {message}", file=sys.stderr)

    def runtime(self) -> dict[str, Any]:
        """Where and how this session runs (never part of what must match to resume)."""
        return {**self.metadata.environment(), "device": str(self.device),
                "command": command_line(*self.prog.split()[1:])}


def _records(out: Path) -> dict[Path, bytes]:
    """The run's JSON records (config, summary) as they are before this invocation."""
    return {path: path.read_bytes() for path in sorted(out.glob("*.json")) if path.is_file()}


def _restore(kept: dict[Path, bytes]) -> None:
    for path, content in kept.items():
        if not path.exists() or path.read_bytes() != content:
            write_bytes(path, content)


def run_experiment(prog: str, args: argparse.Namespace, body: Callable[[Session], int]) -> int:
    """``body(session)``'s exit code, or 2 / 1 with a one-line error (see the module doc)."""
    from batchnorm.data import DataError

    previous_threads = torch.get_num_threads()
    try:
        options = from_args(RunOptions, args)
        session = Session(prog, options, resolve_device(options.device))
        torch.set_num_threads(options.threads)
        with claim_folder(options.out, resume=options.resume, force=options.force) as out:
            kept = _records(out)
            try:
                return int(body(session))
            except ExperimentError:
                _restore(kept)  # a refused run leaves the folder as it found it
                raise
    except ExperimentError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return error.exit_code
    except DataError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(previous_threads)
