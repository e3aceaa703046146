"""Atomic file writes: a reader never sees a half-written file.

Every file this project writes that a user may keep (dataset cache files,
run-folder configs, metrics, reports, plots, checkpoints) goes through
:func:`atomic_write`: the content is written to a uniquely named temporary
file in the destination folder, flushed and fsynced, then moved over the
destination with :func:`os.replace` (atomic on POSIX and Windows). An error or
a kill part-way leaves the old file intact and removes the temporary one.
Created files follow the process umask (mode ``0o666 & ~umask``), as
``open(path, "w")`` would. Imports nothing from this package (a leaf).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_bytes", "write_json", "write_text"]


def _temporary(path: Path) -> tuple[int, Path]:
    """An exclusively created temporary file beside ``path`` (fd, path)."""
    for _ in range(16):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise OSError(f"{path.parent}: cannot create a temporary file")  # pragma: no cover


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(handle)`` on a binary handle; the result replaces ``path`` atomically.

    The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes | bytearray) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """Indented JSON; Paths become strings, tensors and NumPy values become lists/numbers."""
    write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # torch.Tensor, numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON")
