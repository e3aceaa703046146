"""``batchnorm.distributed`` in one process: local moments and Chan et al.'s merge against the
moments of the concatenated data in float64 (the multi-process SyncBN tests are in test_sync)."""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist

from batchnorm.distributed import (
    Moments,
    all_reduce_sums,
    gather_moments,
    local_moments,
    merge_moments,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _expected(x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(n, mean, M2) per channel of x, in float64, from torch.var_mean of the whole tensor."""
    x64 = x.double().movedim(1, 0).reshape(x.shape[1], -1)
    var, mean = torch.var_mean(x64, dim=1, correction=0)
    return x64.shape[1], mean, var * x64.shape[1]


def _assert_moments(got: Moments, x: torch.Tensor, rtol: float = 1e-12) -> None:
    n, mean, m2 = _expected(x)
    assert got.count.shape == () and got.count.dtype == torch.float64
    assert float(got.count) == n
    assert got.mean.dtype == torch.float64 and got.m2.dtype == torch.float64
    torch.testing.assert_close(got.mean, mean, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(got.m2, m2, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(got.var, m2 / n, rtol=rtol, atol=1e-12)


@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3), (3, 2, 4, 5), (2, 3, 2, 3, 2), (6, 1, 4)])
def test_local_moments_of_every_rank_are_the_float64_moments(shape):
    """(N, C, *): every position of a channel counts, whatever the rank (one channel too)."""
    x = torch.randn(shape, dtype=torch.float64) * 3 + torch.arange(shape[1]).view(
        1, -1, *([1] * (len(shape) - 2)))
    _assert_moments(local_moments(x), x)


def test_local_moments_of_one_row_have_zero_spread():
    x = torch.tensor([[1.5, -2.0, 4.0]], dtype=torch.float64)
    got = local_moments(x)
    assert float(got.count) == 1
    torch.testing.assert_close(got.mean, x[0])
    torch.testing.assert_close(got.m2, torch.zeros(3, dtype=torch.float64))


def test_local_moments_of_float64_input_keep_float64_precision():
    """A large offset with a tiny spread: float32 would lose the spread."""
    x = 1e6 + torch.randn(50, 2, dtype=torch.float64) * 1e-3
    _assert_moments(local_moments(x), x, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_local_moments_of_half_input_are_computed_in_float32(dtype):
    """The half values themselves, their moments accumulated in float32 (not in half)."""
    x = (torch.randn(64, 2, 3) * 4 + 30).to(dtype)
    _assert_moments(local_moments(x), x, rtol=1e-5)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0, 1)])
def test_local_moments_of_an_empty_rank_are_zeros(shape):
    got = local_moments(torch.empty(shape, dtype=torch.float32))
    assert got.count.shape == () and got.count.dtype == torch.float64 and float(got.count) == 0
    for tensor in (got.mean, got.m2):
        assert tensor.dtype == torch.float64
        torch.testing.assert_close(tensor, torch.zeros(shape[1], dtype=torch.float64),
                                   rtol=0, atol=0)


def test_local_moments_without_channels_are_empty():
    got = local_moments(torch.empty(4, 0, 2))
    assert float(got.count) == 0 and got.mean.shape == (0,) and got.m2.shape == (0,)


def _merged(parts: list[torch.Tensor]) -> Moments:
    moments = [local_moments(part) for part in parts]
    return merge_moments(torch.stack([m.count for m in moments]),
                         torch.stack([m.mean for m in moments]),
                         torch.stack([m.m2 for m in moments]))


def test_merge_of_unequal_ranks_is_the_concatenated_batch():
    parts = [torch.randn(n, 3, 2, dtype=torch.float64) * (1 + i) + 5 * i
             for i, n in enumerate((2, 7, 1, 4))]
    _assert_moments(_merged(parts), torch.cat(parts))


def test_an_empty_rank_adds_nothing_to_the_merge():
    parts = [torch.randn(n, 2, dtype=torch.float64) * 2 + 10 for n in (3, 0, 5)]
    _assert_moments(_merged(parts), torch.cat(parts))


def test_merge_of_one_rank_is_its_moments():
    x = torch.randn(6, 4, dtype=torch.float64) + 3
    _assert_moments(_merged([x]), x)


def test_merge_includes_the_spread_between_rank_means():
    """Equal-variance ranks with different means: the merged M2 is larger than the sum of theirs."""
    a = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    b = a + 10
    merged = _merged([a, b])
    # values 0, 2, 10, 12: mean 6, M2 = 36 + 16 + 16 + 36
    assert float(merged.count) == 4
    torch.testing.assert_close(merged.mean, torch.tensor([6.0], dtype=torch.float64))
    torch.testing.assert_close(merged.m2, torch.tensor([104.0], dtype=torch.float64))


def test_all_empty_ranks_merge_to_nan():
    merged = _merged([torch.empty(0, 2), torch.empty(0, 2)])
    assert float(merged.count) == 0
    assert merged.mean.isnan().all() and merged.var.isnan().all()


@pytest.fixture
def world_of_one(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=30))
    yield None
    dist.destroy_process_group()


@pytest.mark.parametrize("shape", [(5, 3, 2), (7, 1), (0, 2, 3)])
def test_gather_moments_in_a_world_of_one_are_the_local_batch(world_of_one, shape):
    x = torch.randn(shape, dtype=torch.float64) * 2 + 1
    got = gather_moments(x, None, 1)
    if shape[0] == 0:
        assert float(got.count) == 0 and got.mean.isnan().all()
    else:
        _assert_moments(got, x)


def test_all_reduce_sums_in_a_world_of_one_gives_back_both_sums(world_of_one):
    sum_g = torch.tensor([1.0, -2.0, 3.0])
    sum_gx = torch.tensor([0.5, 4.0, -6.0])
    total_g, total_gx = all_reduce_sums(sum_g, sum_gx, None)
    torch.testing.assert_close(total_g, torch.tensor([1.0, -2.0, 3.0]), rtol=0, atol=0)
    torch.testing.assert_close(total_gx, torch.tensor([0.5, 4.0, -6.0]), rtol=0, atol=0)


def test_gather_moments_unpacks_every_rank_of_the_gathered_table(monkeypatch):
    """Three ranks' packed (n, mean, M2) as an all-gather lays them out, rank after rank:
    the merge is the concatenated batch's (a stand-in collective, no process group)."""
    parts = [torch.randn(n, 2, 3, dtype=torch.float64) * (1 + i) + 4 * i
             for i, n in enumerate((3, 0, 5))]
    others = [local_moments(part) for part in parts]

    def all_gather_single(output, input, group=None):
        assert group == "group" and output.numel() == 3 * input.numel()
        packed = [torch.cat([m.count.reshape(1), m.mean, m.m2]) for m in others]
        torch.testing.assert_close(input, packed[0], rtol=0, atol=0)  # this rank's own
        output.copy_(torch.cat(packed))

    monkeypatch.setattr(dist, "all_gather_single", all_gather_single)
    _assert_moments(gather_moments(parts[0], "group", 3), torch.cat(parts))


@pytest.mark.parametrize("shape", [(0, 3), (4, 3, 2)])
def test_local_moments_stay_on_the_inputs_device(shape):
    """Empty or not, count, mean and M2 live where the input does (here: torch's meta device)."""
    got = local_moments(torch.empty(shape, device="meta"))
    assert [t.device.type for t in got] == ["meta"] * 3
    assert got.count.shape == () and got.mean.shape == (3,) and got.m2.shape == (3,)


def test_gather_moments_gathers_into_a_buffer_on_the_inputs_device(monkeypatch):
    """The collective's output buffer is on the input's device, as NCCL requires (meta here)."""
    calls = []

    def all_gather_single(output, input, group=None):
        calls.append((output.device.type, input.device.type, output.numel(), input.numel()))

    monkeypatch.setattr(dist, "all_gather_single", all_gather_single)
    got = gather_moments(torch.empty(5, 2, 3, device="meta"), None, 4)
    assert calls == [("meta", "meta", 4 * 5, 5)]
    assert got.mean.device.type == "meta" and got.mean.shape == (2,)


def test_all_reduce_sums_sums_over_the_given_group(monkeypatch):
    """A stand-in all-reduce adding two other ranks' (Sg, Sgx): the sums come back split."""
    others = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])]

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None):
        assert op == dist.ReduceOp.SUM and group == "group"
        for other in others:
            tensor.add_(other)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    total_g, total_gx = all_reduce_sums(torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.0]),
                                        "group")
    torch.testing.assert_close(total_g, torch.tensor([11.5, 21.0]), rtol=0, atol=0)
    torch.testing.assert_close(total_gx, torch.tensor([35.0, 44.0]), rtol=0, atol=0)
