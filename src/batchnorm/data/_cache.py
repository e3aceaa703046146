"""The user cache: verified on every read, bad files deleted, and a note of where it came from.

Every source that fetches (mirrors, registries) stores the decompressed files here, each
verified before it is written; this module reads them back.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from ..files import write_text
from ._errors import DataError
from ._locations import find_files
from ._specs import DatasetSpec
from ._verify import check_pairs, verify_file

_PROVENANCE_FILE = "SOURCE.txt"  # where the cached files came from, for people


def verified_cache(spec: DatasetSpec, directory: Path) -> dict[str, np.ndarray] | None:
    """The cached arrays if all four files are there and verify; bad files are deleted.

    A cache file that fails verification is never used: it is deleted with one
    ``RuntimeWarning`` (attributed to the caller of ``load_dataset``), and the caller fetches
    it again.
    """
    found = find_files(spec, directory)
    arrays, bad = {}, []
    for fspec in spec.files:
        if fspec.key not in found:
            continue
        try:
            arrays[fspec.key] = verify_file(found[fspec.key], fspec)
        except DataError as error:
            bad.append(str(error))
            with contextlib.suppress(OSError):
                found[fspec.key].unlink()
    if bad:
        warnings.warn(
            f"{spec.title} cache {directory} held bad files, deleted them and will fetch them "
            "again: " + "; ".join(bad),
            RuntimeWarning,
            stacklevel=3,
        )
    if len(arrays) != len(spec.files):
        return None
    check_pairs(spec, arrays)
    return arrays


def describe(directory: Path) -> str:
    """The ``Dataset.source`` of data loaded from the cache ``directory``."""
    origin = ""
    with contextlib.suppress(OSError):
        origin = (directory / _PROVENANCE_FILE).read_text().strip()
    return f"cache {directory} (SHA-256 verified" + (f"; fetched from {origin})" if origin else ")")


def record_origin(directory: Path, origin: str) -> None:
    """Note, for :func:`describe`, which source filled the cache ``directory``."""
    with contextlib.suppress(OSError):
        write_text(directory / _PROVENANCE_FILE, origin + "\n")
