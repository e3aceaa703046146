"""``batchnorm data fetch NAME``: fetch a dataset, verify it, say where it came from."""

from __future__ import annotations

import argparse
import sys
import time

from ._errors import DataError
from ._load import load_dataset
from ._specs import DATASETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=[*DATASETS, "all"], help="the dataset, or all of them")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="a directory holding the official files (default: $BATCHNORM_DATA, then the cache)",
    )
    parser.add_argument(
        "--no-download",
        action="store_true",
        help="use only local files: no mirrors, no PyPI, no apt",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def run(args: argparse.Namespace) -> int:
    names = list(DATASETS) if args.name == "all" else [args.name]
    status = 0
    for name in names:
        start = time.perf_counter()
        try:
            ds = load_dataset(
                name, data_dir=args.data_dir, download=not args.no_download, progress=not args.quiet
            )
        except DataError as error:
            print(f"batchnorm data fetch {name}: {error}", file=sys.stderr)
            status = 1
            continue
        seconds = time.perf_counter() - start
        print(f"{name}: {ds.source}")
        for part in ("train", "test"):
            images = getattr(ds, f"{part}_images")
            labels = getattr(ds, f"{part}_labels")
            print(
                f"  {part}: images {tuple(images.shape)} {images.dtype}, "
                f"labels {tuple(labels.shape)} {labels.dtype}"
            )
        print(f"  classes: {', '.join(ds.classes)}")
        print(f"  loaded in {seconds:.2f} s")
    return status
