"""``batchnorm data info``: where each dataset is found locally; downloads nothing."""

from __future__ import annotations

import argparse

from ._locations import cache_root, explicit_root
from ._specs import DATASETS
from ._status import dataset_locations, summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="also look in this directory")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="only list files, do not check their SHA-256 (faster)",
    )


def run(args: argparse.Namespace) -> int:
    explicit = explicit_root(args.data_dir)
    print(f"cache root: {cache_root()}")
    print(f"explicit directory: {f'{explicit[0]} ({explicit[1]})' if explicit else 'none'}")
    for name, spec in DATASETS.items():
        locations = dataset_locations(name, args.data_dir, verify=not args.no_verify)
        print(f"\n{name} ({spec.title}): {summary(locations)}")
        for loc in locations:
            print(f"  {loc.label}: {loc.directory}")
            for file in loc.files:
                print(f"    {file.filename}: {file.status}")
        if not any(loc.complete or loc.unverified for loc in locations):
            print(f"  fetch it with: batchnorm data fetch {name}")
    return 0
