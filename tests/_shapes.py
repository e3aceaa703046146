"""Hypothesis strategies shared by the tests."""

from hypothesis import strategies as st


@st.composite
def bn_shapes(draw, min_rank: int = 2, max_rank: int = 5, max_batch: int = 6):
    """(N, C, *spatial) with at least 2 values per channel."""
    rank = draw(st.integers(min_rank, max_rank))
    batch = draw(st.integers(1, max_batch))
    channels = draw(st.integers(1, 5))
    spatial = [draw(st.integers(1, 5)) for _ in range(rank - 2)]
    values_per_channel = batch
    for size in spatial:
        values_per_channel *= size
    if values_per_channel < 2:
        batch += 1
    return (batch, channels, *spatial)
