"""The errors an experiment reports in one line and exits 2 for (bad flags, a refused resume)."""

from __future__ import annotations

__all__ = ["ConfigError", "ExperimentError"]


class ExperimentError(Exception):
    """A problem of the user's request, not a bug: printed as ``PROG: error: MESSAGE``."""

    exit_code = 2


class ConfigError(ExperimentError, ValueError):
    """Settings that cannot run (together); the message names the flags and says why."""
