"""The official download mirrors: fetch each ``.gz``, check it, store it decompressed.

A download is accepted only if its size and SHA-256 are those of the official archive, and its
decompressed contents are checked again before they are written to the cache.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

from ._errors import DataError
from ._idx import decompress_if_gzip
from ._specs import DatasetSpec, FileSpec
from ._verify import check_sha256, write_verified

#: seconds to wait for a mirror to connect or to send the next block
DOWNLOAD_TIMEOUT = 10.0
#: extra tries of one URL after a transient failure (HTTP 5xx/429, connection lost mid-file)
DOWNLOAD_RETRIES = 2

_CHUNK = 1 << 20


class _UnreachableError(Exception):
    """The mirror cannot be reached at all; skip it for the remaining files."""


class _TransientError(Exception):
    """Worth another try of the same URL."""


def _fetch_url(
    url: str, destination: Path, fspec: FileSpec, *, timeout: float, progress: bool
) -> None:
    """Download ``url`` (at most the official size, in memory), check it, store it decompressed."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": "batchnorm-data/1"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code >= 500 or error.code == 429:
            raise _TransientError(f"HTTP {error.code}") from error
        raise DataError(f"HTTP {error.code} {error.reason}") from error
    except (urllib.error.URLError, OSError) as error:  # DNS, refused, connect timeout
        raise _UnreachableError(str(getattr(error, "reason", error))) from error

    data = bytearray()
    bar = tqdm(
        total=fspec.gz_size,
        unit="B",
        unit_scale=True,
        desc=fspec.filename,
        disable=not progress,
        leave=False,
    )
    with response, bar:
        while True:
            try:
                block = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise _TransientError(
                    f"connection lost after {len(data)} bytes: {error}"
                ) from error
            if not block:
                break
            data += block
            if len(data) > fspec.gz_size:
                raise DataError(f"larger than the official {fspec.gz_size} bytes")
            bar.update(len(block))
    if len(data) != fspec.gz_size:
        raise _TransientError(f"got {len(data)} bytes, expected {fspec.gz_size}")
    # the failure messages are prefixed with the URL by the caller
    check_sha256(data, fspec.gz_sha256, name="archive")
    raw = decompress_if_gzip(data, name="archive")
    write_verified(destination, fspec, raw, name="decompressed archive")


def download_from_mirrors(
    spec: DatasetSpec,
    destination: Path,
    *,
    progress: bool = True,
    timeout: float | None = None,
    retries: int | None = None,
) -> None:
    """Download the official ``.gz`` files, verify them and store them decompressed.

    Files already in ``destination`` are skipped (the caller has verified them).

    Mirrors are tried in order. A mirror that cannot be reached (name lookup, refused
    connection, connect timeout) is skipped for the rest of the files, so with no network this
    fails within one ``timeout`` per mirror. A transient failure (HTTP 5xx/429, a connection
    lost mid-file) is retried ``retries`` times with a short backoff.
    """
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    retries = DOWNLOAD_RETRIES if retries is None else retries
    dead: set[str] = set()
    for fspec in spec.files:
        target = destination / fspec.raw_filename
        if target.is_file():
            continue
        failures = []
        for mirror in spec.mirrors:
            if mirror in dead:
                continue
            url = mirror + fspec.filename
            for attempt in range(retries + 1):
                try:
                    _fetch_url(url, destination, fspec, timeout=timeout, progress=progress)
                    break
                except _UnreachableError as error:
                    dead.add(mirror)
                    failures.append(f"{url}: unreachable: {error}")
                    break
                except _TransientError as error:
                    failures.append(f"{url}: {error}")
                    if attempt < retries:
                        time.sleep(min(2.0**attempt, 8.0))
                except DataError as error:
                    failures.append(f"{url}: {error}")
                    break
            if target.is_file():
                break
        if not target.is_file():
            raise DataError(
                f"download of {fspec.filename} failed: " + "; ".join(failures or ["no mirror"])
            )
