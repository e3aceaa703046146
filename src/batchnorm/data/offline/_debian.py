"""Fashion-MNIST from Debian's ``dataset-fashion-mnist``: ``apt-get download``, no root needed.

The package's files are the official archives with a normalised gzip header, so their
decompressed contents are checked against the pinned hashes and stored as they are.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from pathlib import Path

from .._errors import DataError
from .._idx import read_maybe_gzip
from .._locations import find_files
from .._progress import say
from .._specs import DEBIAN_FASHION_DIR, DEBIAN_FASHION_PACKAGE, DatasetSpec
from .._verify import write_verified
from ._command import run_command


def fetch_debian_fashion(spec: DatasetSpec, destination: Path, *, progress: bool = True) -> None:
    """Download the package, unpack it and store its four files, verified, in ``destination``."""
    package = DEBIAN_FASHION_PACKAGE
    say(f"{spec.name}: fetching Debian package {package} with apt-get download", progress)
    with tempfile.TemporaryDirectory(prefix="batchnorm-apt-") as tmp_name:
        tmp = Path(tmp_name)
        command = [
            "apt-get", "download", "-o", "Acquire::Retries=2", "-o", "Acquire::http::Timeout=15",
            package,
        ]  # fmt: skip
        try:
            run_command(command, cwd=tmp, what=f"apt-get download {package}")
        except DataError as first_error:
            # A fresh machine may have no package lists: fetch them into a private
            # directory (no root needed) and ask again with those.
            lists = tmp / "lists"
            (lists / "partial").mkdir(parents=True)
            private = ["-o", f"Dir::State::Lists={lists}", "-o", "Debug::NoLocking=1"]
            say(f"{spec.name}: {first_error}; refreshing package lists privately", progress)
            run_command(
                ["apt-get", *private, "update"], cwd=tmp, what="apt-get update (private lists)"
            )
            run_command(
                [*command[:2], *private, *command[2:]], cwd=tmp, what=f"apt-get download {package}"
            )
        debs = sorted(tmp.glob(f"{package}_*.deb"))
        if not debs:
            raise DataError(f"apt-get download {package}: no .deb was downloaded")
        extracted = tmp / "extracted"
        extracted.mkdir()
        if shutil.which("dpkg-deb"):
            run_command(
                ["dpkg-deb", "-x", str(debs[0]), str(extracted)], cwd=tmp, what="dpkg-deb -x"
            )
            source = extracted / DEBIAN_FASHION_DIR.lstrip("/")
        else:
            extract_deb_member(debs[0], spec.filenames, extracted)
            source = extracted
        copy_verified(spec, source, destination)


def extract_deb_member(deb: Path, member_suffixes: tuple[str, ...], out: Path) -> None:
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


def copy_verified(spec: DatasetSpec, source: Path, destination: Path) -> None:
    """Copy the dataset's files from ``source`` to ``destination`` decompressed, verifying each."""
    found = find_files(spec, source)
    missing = [f.filename for f in spec.files if f.key not in found]
    if missing:
        raise DataError(f"{source}: missing {', '.join(missing)}")
    for fspec in spec.files:
        raw = read_maybe_gzip(found[fspec.key])
        write_verified(destination, fspec, raw, name=str(found[fspec.key]))
