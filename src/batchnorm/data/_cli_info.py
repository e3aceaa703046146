"""``batchnorm data info``: where each dataset is found locally; downloads nothing."""

from __future__ import annotations

import argparse

from . import _sources
from ._load import dataset_locations
from ._specs import DATASETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="also look in this directory")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="only list files, do not check their SHA-256 (faster)",
    )


def run(args: argparse.Namespace) -> int:
    explicit = _sources.explicit_root(args.data_dir)
    print(f"cache root: {_sources.cache_root()}")
    print(f"explicit directory: {f'{explicit[0]} ({explicit[1]})' if explicit else 'none'}")
    for name, spec in DATASETS.items():
        locations = dataset_locations(name, args.data_dir, verify=not args.no_verify)
        usable = [loc for loc in locations if loc.complete]
        summary = f"found in {usable[0].label} {usable[0].directory}" if usable else "not found"
        print(f"\n{name} ({spec.title}): {summary}")
        for loc in locations:
            print(f"  {loc.label}: {loc.directory}")
            for file in loc.files:
                print(f"    {file.filename}: {file.status}")
        if not usable:
            print(f"  fetch it with: batchnorm data fetch {name}")
    return 0
