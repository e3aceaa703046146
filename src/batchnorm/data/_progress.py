"""One-line status messages on stderr, shown when ``progress`` is on."""

from __future__ import annotations

import sys


def say(message: str, progress: bool) -> None:
    if progress:
        print(f"batchnorm.data: {message}", file=sys.stderr, flush=True)
