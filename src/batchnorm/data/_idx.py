"""The IDX file format of MNIST and Fashion-MNIST, read and written strictly.

An IDX file is a big-endian header, ``0x00 0x00 <type> <ndim>`` then ``ndim`` 32-bit sizes,
followed by the data. Only unsigned bytes (type 0x08) occur in these datasets, so only they are
accepted: images have magic ``0x00000803`` (``N x rows x cols``), labels ``0x00000801`` (``N``).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ._errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
_UBYTE = 0x08


def parse_idx(
    data: bytes | bytearray,
    *,
    name: str = "IDX data",
    magic: int | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> np.ndarray:
    """Decode an uncompressed IDX file of unsigned bytes into a writable ``uint8`` array.

    ``magic`` and ``shape`` (``None`` entries match any size) are what the caller expects;
    a mismatch, a bad header or a file of the wrong length raises :class:`DataError` naming
    ``name``.
    """
    if len(data) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(data)} bytes, no header)")
    zero, dtype_code, ndim = struct.unpack_from(">HBB", data, 0)
    found_magic = struct.unpack_from(">I", data, 0)[0]
    if zero != 0 or dtype_code != _UBYTE or ndim == 0:
        raise DataError(
            f"{name}: not an IDX file of unsigned bytes (magic number 0x{found_magic:08x})"
        )
    if magic is not None and found_magic != magic:
        raise DataError(
            f"{name}: magic number 0x{found_magic:08x}, expected 0x{magic:08x} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'})"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX file ({len(data)} bytes, header is {header})")
    dims = struct.unpack_from(f">{ndim}I", data, 4)
    if shape is not None and (
        len(dims) != len(shape)
        or any(w is not None and w != d for d, w in zip(dims, shape, strict=True))
    ):
        wanted = "x".join("N" if w is None else str(w) for w in shape)
        raise DataError(f"{name}: dimensions {'x'.join(map(str, dims))}, expected {wanted}")
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataError(
            f"{name}: {state}: {len(data)} bytes, expected {expected} for dimensions "
            f"{'x'.join(map(str, dims))}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    # torch.from_numpy wants a writable array: a bytearray is used in place, bytes are copied
    return array if array.flags.writeable else array.copy()


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a ``uint8`` array (the inverse of :func:`parse_idx`)."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8 or array.ndim == 0:
        raise ValueError(f"encode_idx needs a uint8 array with ndim >= 1, got {array.dtype}")
    header = struct.pack(">HBB", 0, _UBYTE, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.tobytes()


def read_maybe_gzip(path: Path) -> bytes | bytearray:
    """The bytes of ``path``, decompressed if it is gzip (by content, not by name).

    An uncompressed file comes back as a ``bytearray``, so that :func:`parse_idx` can use it
    in place without a copy.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            data = bytearray(size)
            got = handle.readinto(data)
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    if got != size:
        raise DataError(f"{path}: file changed while it was read ({got} of {size} bytes)")
    return decompress_if_gzip(data, name=str(path))


def decompress_if_gzip(data: bytes | bytearray, *, name: str) -> bytes | bytearray:
    """``data`` decompressed if it starts with the gzip magic bytes, else ``data`` itself."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{name}: corrupt or truncated gzip file: {error}") from error
