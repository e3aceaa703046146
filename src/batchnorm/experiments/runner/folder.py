"""Run folders: every file written atomically (:mod:`batchnorm.files`), tensors loaded safely.

Text and JSON go through :func:`batchnorm.files.write_text` / ``write_json``; tensor
files (checkpoints, saved predictions) through :func:`save_tensors`, and they are read
back with ``weights_only=True``: a file in a run folder is data and never runs code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from batchnorm.files import atomic_write, write_json, write_text

__all__ = ["load_tensors", "save_tensors", "write_json", "write_text"]


def save_tensors(path: str | Path, state: Any) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_tensors(path: str | Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)
