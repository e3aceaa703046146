import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

# Deterministic, bounded property tests: CI reruns must see the same examples.
settings.register_profile(
    "default",
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "30")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
# Mutation runs (make mutation): a caught mutant must end at its first failing example,
# not spend minutes shrinking it (mutmut would count that as a timeout).
settings.register_profile(
    "mutation",
    parent=settings.get_profile("default"),
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and on a loaded 2-core machine two threads
    ran these small steps many times slower (each step waits for a busy second core)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
