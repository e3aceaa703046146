"""Verification: a file is used or stored only if its decompressed bytes have the pinned SHA-256.

The hash decides; the IDX parser runs first only so that a mismatch can say *why* (a truncated
file, the wrong dimensions, ...). Nothing unverified is ever written: :func:`write_verified` is
how every source puts a file into the cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..files import write_bytes
from ._errors import ChecksumError, DataError
from ._idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_maybe_gzip
from ._specs import IMAGE_SHAPE, DatasetSpec, FileSpec


def sha256_hex(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha256(data: bytes | bytearray, expected: str, *, name: str) -> None:
    """Raise :class:`ChecksumError` unless ``sha256(data) == expected``."""
    actual = sha256_hex(data)
    if actual != expected:
        raise ChecksumError(f"{name}: SHA-256 mismatch: got {actual}, expected {expected}")


def _expected(fspec: FileSpec) -> tuple[int, tuple[int, ...]]:
    if fspec.is_images:
        return IMAGES_MAGIC, (fspec.count, *IMAGE_SHAPE)
    return LABELS_MAGIC, (fspec.count,)


def verify_array_bytes(raw: bytes | bytearray, fspec: FileSpec, *, name: str) -> np.ndarray:
    """Check decompressed IDX bytes against ``fspec`` and decode them."""
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


def verify_file(path: Path, fspec: FileSpec) -> np.ndarray:
    """The array in ``path`` (``.gz`` or not), verified against ``fspec``."""
    return verify_array_bytes(read_maybe_gzip(path), fspec, name=str(path))


def verify_files(spec: DatasetSpec, paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """All four arrays of ``spec`` from ``paths`` (by key), each verified; pairs checked."""
    missing = [f.filename for f in spec.files if f.key not in paths]
    if missing:
        raise DataError(f"missing {', '.join(missing)}")
    arrays = {fspec.key: verify_file(paths[fspec.key], fspec) for fspec in spec.files}
    check_pairs(spec, arrays)
    return arrays


def check_pairs(spec: DatasetSpec, arrays: dict[str, np.ndarray]) -> None:
    """Each part has as many images as labels."""
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{spec.title}: {images.shape[0]} {part} images but {labels.shape[0]} labels"
            )


def write_verified(
    destination: Path, fspec: FileSpec, raw: bytes | bytearray, *, name: str
) -> None:
    """Store decompressed ``raw`` as ``destination/<raw filename>`` if it has the pinned hash."""
    check_sha256(raw, fspec.raw_sha256, name=name)
    write_bytes(destination / fspec.raw_filename, raw)
