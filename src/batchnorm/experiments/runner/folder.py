"""Run folders: every file written atomically (:mod:`batchnorm.files`), tensors verified.

Text and JSON go through :func:`batchnorm.files.write_text` / ``write_json``. Tensor
files (checkpoints, saved predictions) go through :func:`save_tensors`: the
``torch.save`` bytes behind a one-line header holding their SHA-256, written in one
atomic replace (so the previous file stays whole until the new one is complete, and
the checksum can never disagree with the data it describes), plus a ``NAME.sha256``
file beside it in ``sha256sum -c`` format for people. :func:`load_tensors` checks the
header's checksum before anything is unpickled and reads with ``weights_only=True``:
a file in a run folder is data and never runs code. A damaged, truncated or foreign
file raises :class:`DamagedFileError` (one line, exit 2), never a traceback.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from batchnorm.experiments.runner.errors import ExperimentError
from batchnorm.files import atomic_write, write_json, write_text

__all__ = ["DamagedFileError", "load_tensors", "save_tensors", "write_json", "write_text"]

_MAGIC = b"batchnorm-tensors sha256="


class DamagedFileError(ExperimentError):
    """A tensor file whose content does not match its checksum, or cannot be read."""


def save_tensors(path: str | Path, state: Any) -> None:
    """``state`` as a checksummed tensor file, atomically (see the module docstring)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    content = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload
    atomic_write(path, lambda handle: handle.write(content))
    whole = hashlib.sha256(content).hexdigest()
    write_text(path.with_name(path.name + ".sha256"), f"{whole}  {path.name}\n")


def load_tensors(path: str | Path) -> Any:
    """The verified content of a :func:`save_tensors` file (see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DamagedFileError(f"{path}: cannot read it ({error.strerror or error})") from None
    header, newline, payload = data.partition(b"\n")
    if not newline or not header.startswith(_MAGIC):
        raise DamagedFileError(f"{path}: not a checksummed batchnorm tensor file (damaged "
                               "header, or written by another program)")
    if hashlib.sha256(payload).hexdigest().encode() != header[len(_MAGIC):]:
        raise DamagedFileError(f"{path}: damaged (its content does not match its SHA-256; "
                               "truncated or altered); delete it, or start afresh with --force")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DamagedFileError(f"{path}: holds objects other than tensors and plain data "
                               "(refused by torch.load(weights_only=True))") from None
    except (zipfile.BadZipFile, RuntimeError, EOFError) as error:
        raise DamagedFileError(f"{path}: unreadable tensor data ({type(error).__name__})"
                               ) from None
