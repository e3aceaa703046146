"""The run folder as a resource: checked, locked, and never overwritten by surprise.

:func:`claim_folder` runs before an experiment touches anything:

* ``--out`` must be a folder this process can create and write (a file, or a folder
  without write permission, is a one-line error, exit 2);
* a folder that already holds a run (anything but the lock file) is refused for a
  fresh run unless ``--force`` (or ``--resume``, which continues it);
* an exclusive lock (``fcntl.flock`` on ``OUT/.lock``, released by the kernel when the
  process ends, even on ``kill -9``) stops a second run into the same folder at once,
  with a message naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from batchnorm.experiments.runner.errors import ConfigError, ExperimentError

__all__ = ["LOCK_NAME", "FolderBusyError", "claim_folder"]

LOCK_NAME = ".lock"


class FolderBusyError(ExperimentError):
    """Another process is running into the same run folder."""


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot create it ({error.strerror or error})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: no permission to write there")


def _holds_a_run(out: Path) -> bool:
    return any(entry.name != LOCK_NAME for entry in out.iterdir())


@contextlib.contextmanager
def claim_folder(out: str | Path, *, resume: bool, force: bool) -> Iterator[Path]:
    """Check, lock and hold ``out`` for the duration of the ``with`` block."""
    out = Path(out)
    _check_writable(out)
    try:
        handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (held for the whole block)
    except OSError as error:
        raise ConfigError(f"--out {out}: cannot create its lock file ({error.strerror})"
                          ) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderBusyError(f"--out {out}: a run is in progress there ({holder}); wait "
                                  "for it or choose another --out") from None
        if not resume and not force and _holds_a_run(out):
            raise ConfigError(f"--out {out}: already holds a run; --resume continues it, "
                              "--force starts afresh (replacing its files), or choose another "
                              "--out")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield out
    finally:
        handle.close()  # releases the lock
