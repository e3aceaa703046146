"""Reading the classic ``mnist.pkl.gz`` without trusting it.

The pickle is a Python 2 protocol-2 pickle of ``((train_x, train_y), (valid_x, valid_y),
(test_x, test_y))``: float32 images of shape ``(n, 784)`` and int64 labels, 50k/10k/10k rows.
It is loaded with :class:`RestrictedUnpickler`, which resolves only the three globals numpy
arrays need, so a crafted pickle cannot call anything else.

The images are stored as ``pixel / 256`` (every value is ``k / 256`` for an integer ``k`` in
0..255, which float32 represents exactly), so ``x * 256`` recovers the byte exactly. The
conversion asserts that: ``uint8(x * 256) / 256 == x`` bit for bit, else :class:`DataError`.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._errors import DataError

_SCALE = np.float32(256.0)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _numpy_global(module: str, name: str) -> Any:
    if name == "_reconstruct":
        try:  # numpy >= 2 moved it; importing numpy.core there only warns
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # pragma: no cover - numpy 1.x
            from numpy.core.multiarray import _reconstruct
        return _reconstruct
    return {"ndarray": np.ndarray, "dtype": np.dtype}[name]


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits numpy arrays and nothing else that is callable.

    ``find_class`` resolves only ``numpy.core.multiarray._reconstruct`` (or its numpy 2 home
    ``numpy._core.multiarray._reconstruct``), ``numpy.ndarray`` and ``numpy.dtype``; any other
    global raises :class:`DataError` before anything is imported or called. Persistent ids are
    refused as well.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        return _numpy_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing to unpickle a persistent id")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 strings as latin-1)."""
    return restricted_load(io.BytesIO(data))


def restricted_load(stream: IO[bytes]) -> Any:
    try:
        return RestrictedUnpickler(stream, encoding="latin1").load()
    except DataError:
        raise
    except (gzip.BadGzipFile, zlib.error) as error:  # from a gzip stream under the pickle
        raise DataError(f"corrupt gzip data: {error}") from error
    except Exception as error:  # any malformed pickle: say so, never leak a bare error
        raise DataError(f"cannot unpickle: {type(error).__name__}: {error}") from error


def floats_to_bytes(images: np.ndarray, *, name: str) -> np.ndarray:
    """``uint8`` pixels of float32 images stored as ``pixel / 256``, proven exact."""
    if not isinstance(images, np.ndarray) or images.dtype != np.float32:
        raise DataError(f"{name}: expected a float32 array, got {type(images).__name__}")
    scaled = images * _SCALE
    if not (np.all(scaled >= 0) and np.all(scaled <= 255)):
        raise DataError(f"{name}: values outside [0, 255/256]; not pixel/256 data")
    pixels = scaled.astype(np.uint8)
    if not np.array_equal(pixels.astype(np.float32) / _SCALE, images):
        raise DataError(f"{name}: values are not exact multiples of 1/256; cannot invert")
    return pixels


def _labels(labels: Any, count: int, *, name: str) -> np.ndarray:
    if not isinstance(labels, np.ndarray) or labels.shape != (count,):
        raise DataError(f"{name}: expected {count} labels")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{name}: labels must be integers in [0, 9]")
    return labels.astype(np.uint8)


def mnist_arrays_from_pickle(payload: Any, *, name: str = "mnist.pkl.gz") -> dict[str, np.ndarray]:
    """The standard 60k/10k MNIST arrays from the unpickled 50k/10k/10k tuple.

    Training = the pickle's 50k training rows followed by its 10k validation rows (together the
    standard 60k training set, in its order); test = its 10k test rows. Images come back as
    ``uint8 (n, 28, 28)``, labels as ``uint8 (n,)``.
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = payload
    except (TypeError, ValueError) as error:
        raise DataError(f"{name}: not the ((x, y), (x, y), (x, y)) MNIST pickle") from error
    parts = {}
    triples = (("train", train_x, train_y), ("valid", valid_x, valid_y), ("test", test_x, test_y))
    for part, x, y in triples:
        if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != 784:
            raise DataError(f"{name}: {part} images are not an (n, 784) array")
        pixels = floats_to_bytes(x, name=f"{name} {part} images").reshape(-1, 28, 28)
        parts[part] = (pixels, _labels(y, x.shape[0], name=f"{name} {part} labels"))
    return {
        "train_images": np.concatenate([parts["train"][0], parts["valid"][0]]),
        "train_labels": np.concatenate([parts["train"][1], parts["valid"][1]]),
        "test_images": parts["test"][0],
        "test_labels": parts["test"][1],
    }


def read_mnist_pickle_gz(data: bytes, *, name: str = "mnist.pkl.gz") -> dict[str, np.ndarray]:
    """Decompress, restricted-unpickle and convert a ``mnist.pkl.gz`` given as bytes."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            payload = restricted_load(stream)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{name}: corrupt gzip file: {error}") from error
    return mnist_arrays_from_pickle(payload, name=name)


def read_mnist_pickle_file(path: Path) -> dict[str, np.ndarray]:
    """:func:`read_mnist_pickle_gz` of the file ``path`` (a user's own ``mnist.pkl.gz``)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    return read_mnist_pickle_gz(data, name=str(path))
