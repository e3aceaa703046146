"""The runtime flags every experiment shares: where, on what, how; not what is computed."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from batchnorm.experiments.runner.errors import ConfigError
from batchnorm.experiments.runner.settings import POSITIVE, Settings, setting

__all__ = ["RunOptions", "resolve_device"]


def _device_name(name: str) -> str | None:
    if name in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", name):
        return None
    return "expected auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class RunOptions(Settings):
    """Flags that change where and how a run goes, never its numbers (not fingerprinted)."""

    out: str = setting("runs", "run folder")
    data_dir: str | None = setting(None, "where the dataset files are")
    device: str = setting("auto", "auto: cuda if available, else cpu", check=_device_name)
    threads: int = setting(1, "torch intra-op threads per process (default 1: the steps are "
                           "tiny, and on a shared 2-core machine 2 threads ran several times "
                           "slower)", check=POSITIVE)
    resume: bool = setting(False, "continue from the run folder's checkpoints (refused, exit "
                           "2, if their settings differ from this run's)")
    force: bool = setting(False, "start afresh in a run folder that already holds a run "
                          "(without it such a folder is refused: nothing is overwritten)")
    no_progress: bool = setting(False, "no progress bars")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; a CUDA device that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return torch.device(name)
