"""Seed streams: every random source of a run derived, by name, from the run's seed.

Two shapes, both pure functions of integers, so a resumed run sees the same streams:

* :class:`SeedStreams`, a few named streams per run seed: with ``n`` names, stream
  ``i`` of seed ``s`` is ``n * s + i`` (distinct for every seed and name);
* :func:`indexed_seed`, one seed per item (an epoch, a step) of a stream keyed by
  ``s``: ``s * 1_000_003 + index``.
"""

from __future__ import annotations

import torch

__all__ = ["SeedStreams", "indexed_generator", "indexed_seed"]

_STRIDE = 1_000_003  # a prime above any step count of these experiments


class SeedStreams:
    """Named streams of one run seed, e.g. ``SeedStreams("init", "data")(3)["data"] == 7``."""

    def __init__(self, *names: str) -> None:
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"stream names must be distinct and not empty, got {names}")
        self.names = names

    def __call__(self, seed: int) -> dict[str, int]:
        count = len(self.names)
        return {name: count * seed + index for index, name in enumerate(self.names)}

    def generator(self, seed: int, name: str) -> torch.Generator:
        """A CPU generator seeded with stream ``name`` of ``seed``."""
        return torch.Generator().manual_seed(self(seed)[name])


def indexed_seed(seed: int, index: int) -> int:
    """The seed of item ``index`` (epoch, step) of the stream keyed by ``seed``."""
    return seed * _STRIDE + index


def indexed_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(indexed_seed(seed, index))
