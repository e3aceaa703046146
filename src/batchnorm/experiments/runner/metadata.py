"""Run metadata: the software and machine a run used, its wall time and the load around it."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["RunMetadata", "command_line", "flags_of"]


def _load_average() -> list[float] | None:
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):  # not on this platform
        return None


@dataclass
class RunMetadata:
    """Started with the run; :meth:`finish` gives the wall time and the load at both ends."""

    started: float = field(default_factory=time.perf_counter)
    load_at_start: list[float] | None = field(default_factory=_load_average)

    def environment(self) -> dict[str, Any]:
        return {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "threads": torch.get_num_threads(),
        }

    def finish(self) -> dict[str, Any]:
        return {
            "wall_seconds": time.perf_counter() - self.started,
            "load_average_at_start": self.load_at_start,
            "load_average_at_end": _load_average(),
        }


def command_line(*subcommand: str) -> str | None:
    """The ``batchnorm ...`` command this process runs, if it runs ``subcommand``."""
    if sys.argv[1 : 1 + len(subcommand)] != list(subcommand):
        return None
    return " ".join(["batchnorm", *sys.argv[1:]])


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag as used (runtime ones included), so that the command can be rebuilt."""
    return {key: value for key, value in sorted(vars(args).items()) if not key.startswith("_")}
