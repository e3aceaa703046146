"""Real data for end-to-end tests: loaded (downloaded if need be) or, outside CI, skipped.

``.ci/run`` sets ``BATCHNORM_REQUIRE_DATA=1``: there a dataset that cannot be loaded fails
the test instead of skipping it, so CI can never pass by skipping every real-data test.
"""

import os

import pytest

from batchnorm.data import DataError, Dataset, load_dataset


def required() -> bool:
    return os.environ.get("BATCHNORM_REQUIRE_DATA") == "1" or os.environ.get("CI") == "true"


def dataset_or_skip(name: str) -> Dataset:
    try:
        return load_dataset(name, progress=False)
    except DataError as error:  # pragma: no cover - depends on the machine
        if required():
            pytest.fail(f"{name} must be available in CI: {error}")
        pytest.skip(f"{name} not available: {error}")
