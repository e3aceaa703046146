"""Where a dataset's files may lie on this machine; nothing here reads or checks them.

The explicit directory (``data_dir`` or ``$BATCHNORM_DATA``) and the layouts searched under it,
the user cache (``$XDG_CACHE_HOME/batchnorm/<name>``), installed system-package directories, and
which of the four files a directory holds.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from ._specs import DatasetSpec


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/batchnorm`` (default ``~/.cache/batchnorm``)."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base.strip() else Path.home() / ".cache"
    return root / "batchnorm"


def cache_dir(spec: DatasetSpec) -> Path:
    return cache_root() / spec.name


def explicit_root(data_dir: str | os.PathLike[str] | None) -> tuple[Path, str] | None:
    """The explicit directory and where it came from (argument or ``BATCHNORM_DATA``)."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "data_dir argument"
    env = os.environ.get("BATCHNORM_DATA", "").strip()
    if env:
        return Path(env).expanduser(), "BATCHNORM_DATA"
    return None


def candidate_dirs(spec: DatasetSpec, root: Path) -> list[Path]:
    """Where under ``root`` the files may lie: ``root/<name>``, torchvision's layout, ``root``."""
    return [root / spec.name, *(root / alias for alias in spec.aliases), root]


def system_dirs(spec: DatasetSpec) -> Iterator[Path]:
    """Installed system-package directories that hold the dataset (e.g. Debian's)."""
    for directory in spec.system_dirs:
        path = Path(directory)
        if path.is_dir():
            yield path


def find_files(spec: DatasetSpec, directory: Path) -> dict[str, Path]:
    """The dataset's files present in ``directory`` (uncompressed or ``.gz``), by key."""
    found = {}
    for fspec in spec.files:
        for filename in (fspec.raw_filename, fspec.filename):
            path = directory / filename
            if path.is_file():
                found[fspec.key] = path
                break
    return found
