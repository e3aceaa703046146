"""The one exception type of the data layer."""

from __future__ import annotations


class DataError(RuntimeError):
    """A dataset could not be found, read or verified.

    The message says what failed and how to provide the data.
    """


class ChecksumError(DataError):
    """A file's SHA-256 is not the pinned one."""
