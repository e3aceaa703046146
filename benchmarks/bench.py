"""Run ``batchnorm bench`` and keep its results here (benchmarks/results/).

    python benchmarks/bench.py            # CPU: results/cpu.json and results/cpu.md
    python benchmarks/bench.py --device cuda

Any other ``batchnorm bench`` option passes through (``--quick``, ``--repeats``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from batchnorm.cli import main

RESULTS = Path(__file__).resolve().parent / "results"


def _argv(args: list[str]) -> list[str]:
    device = "cuda" if "cuda" in args else "cpu"
    if "--out" not in args:
        args = [*args, "--out", str(RESULTS / f"{device}.json")]
    if "--md" not in args:
        args = [*args, "--md", str(RESULTS / f"{device}.md")]
    return ["bench", *args]


if __name__ == "__main__":
    sys.exit(main(_argv(sys.argv[1:])))
