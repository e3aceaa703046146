"""The end-of-run summary with three-valued verdicts (supported / not supported / mixed).

Like :func:`batchnorm.experiments.runner.summary.print_summary`, whose verdicts are
yes/no, but for :mod:`batchnorm.experiments.runner.evidence` verdicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["print_verdict_summary"]


def print_verdict_summary(title: str, headline: Iterable[str], report: str | Path,
                          verdicts: Iterable[tuple[str, str]] = ()) -> None:
    """``title``, the headline numbers, ``verdict: claim`` lines, the report's path."""
    lines = [title, *(f"  {line}" for line in headline)]
    lines += [f"  {verdict:>13}: {claim}" for claim, verdict in verdicts]
    lines.append(f"  report: {report}")
    print("\n".join(lines), flush=True)
