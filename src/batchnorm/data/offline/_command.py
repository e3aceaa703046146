"""Running a registry client (pip, apt-get, dpkg-deb) with a time limit; failing is a DataError."""

from __future__ import annotations

import subprocess
from pathlib import Path

from .._errors import DataError

#: seconds for ``pip download`` / ``apt-get download`` before giving up
REGISTRY_TIMEOUT = 600.0


def run_command(command: list[str], *, cwd: Path, what: str) -> None:
    """Run ``command`` without input; if it fails, :class:`DataError` with its last lines."""
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=REGISTRY_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as error:
        raise DataError(f"{what}: {command[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise DataError(f"{what}: timed out after {REGISTRY_TIMEOUT:.0f} s") from error
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DataError(f"{what} failed (exit {result.returncode}): " + " | ".join(tail))
