"""Where each dataset is found locally, file by file, without fetching anything (``data info``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._errors import DataError
from ._locations import cache_dir, candidate_dirs, explicit_root, find_files, system_dirs
from ._specs import DatasetSpec, get_spec
from ._verify import verify_file

OK = "ok"
MISSING = "missing"
UNVERIFIED = "present (not verified)"


@dataclass(frozen=True)
class FileStatus:
    filename: str
    path: Path | None
    status: str  # OK, MISSING, UNVERIFIED, or what is wrong with the file


@dataclass(frozen=True)
class LocationStatus:
    label: str
    directory: Path
    files: tuple[FileStatus, ...]

    @property
    def complete(self) -> bool:
        """All files are there and verified: ``load_dataset`` would use this location."""
        return all(f.status == OK for f in self.files)

    @property
    def unverified(self) -> bool:
        """All files are there, not checked (``verify=False``)."""
        return all(f.status in (OK, UNVERIFIED) for f in self.files) and not self.complete

    @property
    def damaged(self) -> tuple[FileStatus, ...]:
        """The files that are there but failed verification."""
        return tuple(f for f in self.files if f.status not in (OK, MISSING, UNVERIFIED))


def _location(spec: DatasetSpec, label: str, directory: Path, verify: bool) -> LocationStatus:
    found = find_files(spec, directory)
    files = []
    for fspec in spec.files:
        path = found.get(fspec.key)
        if path is None:
            files.append(FileStatus(fspec.filename, None, MISSING))
            continue
        status = UNVERIFIED
        if verify:
            try:
                verify_file(path, fspec)
                status = OK
            except DataError as error:
                status = str(error)
        files.append(FileStatus(path.name, path, status))
    return LocationStatus(label, directory, tuple(files))


def dataset_locations(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> list[LocationStatus]:
    """The explicit directory (if set and it holds files), the cache, and system packages."""
    spec = get_spec(name)
    locations = []
    explicit = explicit_root(data_dir)
    if explicit is not None:
        root, origin = explicit
        for directory in candidate_dirs(spec, root):
            if find_files(spec, directory):
                locations.append(_location(spec, origin, directory, verify))
                break
    locations.append(_location(spec, "cache", cache_dir(spec), verify))
    for directory in system_dirs(spec):
        locations.append(_location(spec, "system package", directory, verify))
    return locations


def summary(locations: list[LocationStatus]) -> str:
    """One line: where the data would be loaded from, or why it would not be.

    "found in" only for files that verified; files not checked or failing say so.
    """
    for loc in locations:
        if loc.complete:
            return f"found in {loc.label} {loc.directory} (SHA-256 verified)"
    for loc in locations:
        if loc.unverified:
            return f"in {loc.label} {loc.directory}, unverified (checked when loaded)"
    for loc in locations:
        if loc.damaged:
            return (
                f"not usable: {loc.label} {loc.directory} has {len(loc.damaged)} damaged "
                f"file(s) (fail verification)"
            )
    return "not found"
