"""The end-of-run summary: a few lines on stdout, the same shape for every experiment."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["print_summary"]


def print_summary(title: str, headline: Iterable[str], report: str | Path,
                  verdicts: Iterable[tuple[str, bool]] = ()) -> None:
    """``title``, the headline numbers, the verdicts (claim: yes/no), the report's path."""
    lines = [title, *(f"  {line}" for line in headline)]
    lines += [f"  {'yes' if held else 'no '}  {claim}" for claim, held in verdicts]
    lines.append(f"  report: {report}")
    print("\n".join(lines), flush=True)
