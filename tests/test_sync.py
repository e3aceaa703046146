"""batchnorm.SyncBatchNorm: one batch split over gloo processes is normalized as one batch.

The specification: 3 processes on this machine, each holding a slice of a batch (unequal
sizes, one rank empty), give what one process running BN on the concatenated batch in
float64 gives: outputs, input gradients, parameter gradients summed over the ranks,
running statistics (every estimator), eval outputs (with no collective); and the
statistics merge (Chan et al.) is exact. Plus conversion both ways and state dicts.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

import batchnorm
from batchnorm.distributed import local_moments, merge_moments
from batchnorm.fused import BatchNormAct2d
from batchnorm.sync import SyncBatchNorm, revert_sync_batchnorm

WORKER = Path(__file__).with_name("_sync_worker.py")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the statistics merge


def test_merge_of_unequal_and_empty_parts_is_the_concatenated_batch_statistics():
    torch.manual_seed(1)
    parts = [torch.randn(n, 3, 2, dtype=torch.float64) * 5 + 100 for n in (0, 1, 4, 7)]
    moments = [local_moments(part) for part in parts]
    merged = merge_moments(torch.stack([m.count for m in moments]),
                           torch.stack([m.mean for m in moments]),
                           torch.stack([m.m2 for m in moments]))
    var, mean = torch.var_mean(torch.cat(parts), dim=(0, 2), correction=0)
    assert float(merged.count) == 12 * 2
    torch.testing.assert_close(merged.mean, mean, rtol=0, atol=1e-12)
    torch.testing.assert_close(merged.var, var, rtol=1e-12, atol=0)


def test_an_all_empty_batch_merges_to_nan_not_an_error():
    empty = local_moments(torch.zeros(0, 2, 3))
    merged = merge_moments(empty.count.reshape(1), empty.mean[None], empty.m2[None])
    assert float(merged.count) == 0 and merged.mean.isnan().all()


# ---------------------------------------------------------------- one process


def test_is_a_torch_sync_batchnorm_with_torchs_constructor_and_ours():
    group = object()
    layer = SyncBatchNorm(4, 1e-3, 0.2, True, True, group, estimator="ema", backend="native")
    assert isinstance(layer, nn.SyncBatchNorm)
    assert isinstance(layer, nn.modules.batchnorm._BatchNorm)
    assert layer.process_group is group and layer.eps == 1e-3 and layer.momentum == 0.2
    assert layer.estimator == "ema" and layer.backend == "native"
    assert SyncBatchNorm(3, bias=False).bias is None


def test_without_a_process_group_it_is_local_bn_as_torchs_falls_back():
    torch.manual_seed(2)
    ours, local = SyncBatchNorm(3), batchnorm.BatchNorm1d(3)
    for shape in [(8, 3), (8, 3, 5)]:
        x = torch.randn(shape)
        torch.testing.assert_close(ours(x), local(x), rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, local.running_var, rtol=0, atol=0)
    assert SyncBatchNorm(2)(torch.randn(3, 2, 2, 2, 2)).shape == (3, 2, 2, 2, 2)
    with pytest.raises(ValueError, match=r"SyncBatchNorm\(3\).*at least 2 dimensions"):
        ours(torch.randn(3))


def test_a_world_of_one_runs_no_collective(tmp_path, monkeypatch):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0,
                            world_size=1, timeout=datetime.timedelta(seconds=60))
    try:
        monkeypatch.setattr(dist, "all_gather_single", _no_collective)
        x = torch.randn(6, 3, 2, 2)
        torch.testing.assert_close(SyncBatchNorm(3)(x), batchnorm.BatchNorm2d(3)(x))
    finally:
        dist.destroy_process_group()


def _no_collective(*args, **kwargs):
    raise AssertionError("a collective ran")


def test_state_dicts_move_between_ours_torchs_sync_and_plain_batchnorm():
    ours = SyncBatchNorm(3)
    ours(torch.randn(5, 3, 2, 2))
    for other in (nn.SyncBatchNorm(3), nn.BatchNorm2d(3), batchnorm.BatchNorm2d(3)):
        other.load_state_dict(ours.state_dict())
        fresh = SyncBatchNorm(3)
        fresh.load_state_dict(other.state_dict())
        for key, value in ours.state_dict().items():
            torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4),
                         batchnorm.BatchNorm2d(4, estimator="population", backend="native"),
                         BatchNormAct2d(4, activation="relu"), nn.SyncBatchNorm(4),
                         nn.Sequential(nn.Flatten(2), nn.BatchNorm1d(4)))


def test_convert_and_revert_keep_state_and_each_layer_its_dimension():
    torch.manual_seed(3)
    model = _model()
    x = torch.randn(6, 2, 3, 3)
    model(x)
    model.eval()
    expected = model(x)
    bn2d = model[1]
    converted = SyncBatchNorm.convert_sync_batchnorm(model, process_group="group")
    kinds = [type(layer).__name__ for layer in converted.modules()]
    assert kinds.count("SyncBatchNorm") == 4 and "BatchNormAct2d" in kinds
    assert converted[1].weight is bn2d.weight and converted[1].running_var is bn2d.running_var
    assert converted[1].process_group == "group" and not converted[1].training
    assert converted[2].estimator == "population" and converted[2].backend == "native"
    assert converted[2].population_samples is model[2].population_samples
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    reverted = revert_sync_batchnorm(converted)
    assert [type(layer) for layer in (reverted[1], reverted[2], reverted[4], reverted[5][1])] \
        == [batchnorm.BatchNorm2d] * 3 + [batchnorm.BatchNorm1d]
    assert reverted[2].estimator == "population"
    torch.testing.assert_close(reverted(x), expected, rtol=0, atol=0)


def test_revert_needs_a_dimension_when_the_layer_cannot_tell():
    with pytest.raises(ValueError, match="pass dim=1, 2 or 3"):
        revert_sync_batchnorm(nn.SyncBatchNorm(3))
    assert type(revert_sync_batchnorm(nn.SyncBatchNorm(3), dim=3)) is batchnorm.BatchNorm3d
    with pytest.raises(ValueError, match="dim must be 1, 2 or 3"):
        revert_sync_batchnorm(SyncBatchNorm(3), dim=4)
    seen = SyncBatchNorm(3)
    seen(torch.randn(4, 3, 2, 2, 2))
    assert type(revert_sync_batchnorm(seen)) is batchnorm.BatchNorm3d


# ---------------------------------------------------------------- three processes

WORLD = 3


def _case(shape_tail, sizes, estimator, momentum, dtype=torch.float64, steps=2, group=None):
    channels = shape_tail[0]
    total = sum(sizes)
    generator = torch.Generator().manual_seed(len(shape_tail) * 100 + total)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "channels": channels, "sizes": sizes, "estimator": estimator, "momentum": momentum,
        "group": group,
        "dtype": dtype, "weight": draw(channels) + 1, "bias": draw(channels),
        "inputs": [(draw(total, *shape_tail) * 3 + 10).to(dtype) for _ in range(steps)],
        "loss_weights": [draw(total, *shape_tail).to(dtype) for _ in range(steps)],
    }


CASES = {
    "unequal-4d-ema": _case((3, 4, 5), [2, 5, 3], "ema", 0.1),
    "empty-rank-2d-cumulative": _case((4,), [4, 0, 3], "cumulative", None),
    "one-sample-rank-3d-population": _case((2, 3), [1, 2, 4], "population", None),
    "float32-4d-ema": _case((3, 2, 2), [3, 3, 2], "ema", 0.3, dtype=torch.float32),
    "bfloat16-4d-ema": _case((2, 3, 3), [2, 4, 3], "ema", 0.1, dtype=torch.bfloat16),
    # process_group=: ranks 0 and 1 synchronize together, rank 2 stays out (holds nothing).
    "subgroup-4d-ema": _case((3, 2, 3), [3, 2, 0], "ema", 0.1, group=[0, 1]),
}


def _reference(case):
    """One process, the whole batch, float64."""
    channels, dims = case["channels"], case["inputs"][0].dim()
    layer = batchnorm.BatchNorm2d if dims == 4 else batchnorm.BatchNorm1d
    layer = layer(channels, momentum=case["momentum"], estimator=case["estimator"],
                  dtype=torch.float64, backend="reference")
    with torch.no_grad():
        layer.weight.copy_(case["weight"])
        layer.bias.copy_(case["bias"])
    steps = []
    for x, w in zip(case["inputs"], case["loss_weights"], strict=True):
        x = x.double().requires_grad_(True)
        layer.zero_grad()
        output = layer(x)
        (output * w.double()).sum().backward()
        steps.append({"output": output.detach(), "grad_input": x.grad,
                      "grad_weight": layer.weight.grad.clone(),
                      "grad_bias": layer.bias.grad.clone(),
                      "running_mean": layer.running_mean.clone(),
                      "running_var": layer.running_var.clone()})
    layer.eval()
    return steps, layer(case["inputs"][0].double()).detach()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory):
    """Run every case in one job of WORLD gloo processes; their results by rank."""
    folder = tmp_path_factory.mktemp("sync")
    torch.save(CASES, folder / "cases.pt")
    processes = [subprocess.Popen(
        [sys.executable, str(WORKER), str(rank), str(WORLD), str(folder / "init"),
         str(folder / "cases.pt"), str(folder)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    ) for rank in range(WORLD)]
    logs = []
    try:
        for process in processes:
            logs.append(process.communicate(timeout=180)[0])
    except subprocess.TimeoutExpired:
        pytest.fail("a SyncBatchNorm rank hung (no result within 180 s)")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for rank, process in enumerate(processes):
        assert process.returncode == 0, f"rank {rank} failed:\n{logs[rank][-3000:]}"
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _tolerance(case):
    return {torch.float64: {"rtol": 1e-10, "atol": 1e-11},
            torch.float32: {"rtol": 1e-5, "atol": 2e-5},
            torch.bfloat16: {"rtol": 2e-2, "atol": 5e-2}}[case["dtype"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_ranks_together_equal_one_process_on_the_concatenated_batch(distributed, name):
    case = CASES[name]
    tolerance = _tolerance(case)
    reference_steps, reference_eval = _reference(case)
    bounds = torch.tensor([0, *case["sizes"]]).cumsum(0).tolist()
    members = case["group"] if case["group"] is not None else range(WORLD)
    assert all(distributed[rank][name] is None for rank in range(WORLD) if rank not in members)
    distributed = [distributed[rank] for rank in members]
    for step, expected in enumerate(reference_steps):
        ranks = [result[name]["steps"][step] for result in distributed]
        for key in ("output", "grad_input"):
            whole = torch.cat([rank[key].double() for rank in ranks])
            torch.testing.assert_close(whole, expected[key], **tolerance, msg=key)
        for key in ("grad_weight", "grad_bias"):  # what DDP's all-reduce adds up
            summed = sum(rank[key].double() for rank in ranks)
            torch.testing.assert_close(summed, expected[key], **tolerance, msg=key)
        for rank in ranks:
            for key in ("running_mean", "running_var"):
                torch.testing.assert_close(rank[key].double(), expected[key], **tolerance,
                                           msg=key)
            assert int(rank["num_batches_tracked"]) == step + 1
            assert rank["forward_calls"] == {"all_gather_single": 1, "all_reduce": 0}
            assert rank["backward_calls"] == {"all_gather_single": 0, "all_reduce": 1}
    for rank, result in enumerate(distributed):
        part = slice(bounds[rank], bounds[rank + 1])
        torch.testing.assert_close(result[name]["eval"].double(), reference_eval[part],
                                   **tolerance)
        assert result[name]["eval_calls"] == {"all_gather_single": 0, "all_reduce": 0}


@pytest.mark.slow
def test_state_after_distributed_training_loads_into_torch_and_one_process(distributed):
    state = distributed[0]["unequal-4d-ema"]["state"]
    for other in (nn.SyncBatchNorm(3, dtype=torch.float64), nn.BatchNorm2d(3, dtype=torch.float64)):
        other.load_state_dict(state)
    local = revert_sync_batchnorm(SyncBatchNorm(3, dtype=torch.float64), dim=2)
    local.load_state_dict(state)
    for result in distributed[1:]:  # every rank holds the same statistics
        for key, value in result["unequal-4d-ema"]["state"].items():
            torch.testing.assert_close(value, state[key], rtol=0, atol=0)
