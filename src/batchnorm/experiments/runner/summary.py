"""The end-of-run summary: a few lines on stdout, the same shape for every experiment.

The title, the headline numbers, one ``verdict: claim`` line per claim (the
three-valued verdicts of :mod:`batchnorm.experiments.runner.evidence`:
supported / not supported / mixed), and the path of ``report.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["print_summary"]


def print_summary(title: str, headline: Iterable[str], report: str | Path,
                  verdicts: Iterable[tuple[str, str]] = ()) -> None:
    """``title``, the headline numbers, ``verdict: claim`` lines, the report's path."""
    lines = [title, *(f"  {line}" for line in headline)]
    lines += [f"  {verdict:>13}: {claim}" for claim, verdict in verdicts]
    lines.append(f"  report: {report}")
    print("\n".join(lines), flush=True)
