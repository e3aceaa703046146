"""Several processes train one run together: the global batch split across ranks, SyncBN.

Rank r of W takes a contiguous share of each global batch of B (sizes differ by at
most one), every BN layer becomes :class:`batchnorm.SyncBatchNorm` (statistics of the
whole global batch), and the gradients are averaged over ranks with each rank's loss
``W * sum_i CE_i / B`` over its share: the average is the gradient of the global
batch's mean loss, the same as one process on the whole batch (up to floating point).

* CUDA: NCCL and :class:`~torch.nn.parallel.DistributedDataParallel`.
* CPU: gloo, and one flat all-reduce of the gradients after ``backward``
  (:func:`average_gradients`): torch's DDP refuses CPU modules that contain a
  SyncBatchNorm, which ours is (``isinstance``).

Rank 0 does everything that is not training: evaluation, checkpoints, results, the
report. Ranks find each other either from ``torchrun``'s environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``: :func:`from_environment`)
or, for ``--nproc N`` on one machine, through a rendezvous file.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from batchnorm.sync import SyncBatchNorm

__all__ = ["Launch", "average_gradients", "barrier", "from_environment", "is_main", "rank",
           "shard", "start", "stop", "sum_over_ranks", "to_sync", "world_size", "wrap"]

#: Seconds a collective may wait before it fails (``$BATCHNORM_DIST_TIMEOUT``, default
#: 1800: rank 0 evaluates and writes while the others wait in the next collective).
TIMEOUT_VARIABLE = "BATCHNORM_DIST_TIMEOUT"


@dataclass(frozen=True)
class Launch:
    """Where this process stands among the ranks of one training job."""

    rank: int
    world_size: int
    local_rank: int
    init_method: str = "env://"


def from_environment(env: Mapping[str, str] = os.environ) -> Launch | None:
    """The job ``torchrun`` (or any launcher setting RANK/WORLD_SIZE) started us in; None for
    a single process (no variables, or WORLD_SIZE 1)."""
    if "RANK" not in env or "WORLD_SIZE" not in env or int(env["WORLD_SIZE"]) <= 1:
        return None
    return Launch(int(env["RANK"]), int(env["WORLD_SIZE"]),
                  int(env.get("LOCAL_RANK", env["RANK"])))


def start(launch: Launch, device: torch.device) -> torch.device:
    """Join the job's process group (NCCL for CUDA, gloo for CPU); this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", launch.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=launch.init_method, rank=launch.rank,
                            world_size=launch.world_size,
                            timeout=datetime.timedelta(
                                seconds=float(os.environ.get(TIMEOUT_VARIABLE, 1800))))
    return device


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """Ranks training together (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(batch_size: int, rank: int, world_size: int) -> slice:
    """Rank ``rank``'s contiguous share of a batch: sizes ``batch_size // world_size``, the
    first ``batch_size % world_size`` ranks one more."""
    base, extra = divmod(batch_size, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def to_sync(model: nn.Module) -> nn.Module:
    """Every BN layer of ``model`` as a SyncBatchNorm (parameters and buffers kept)."""
    return SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train with: DDP on CUDA; on CPU the model itself, all ranks starting
    from rank 0's parameters and buffers (call :func:`average_gradients` after backward)."""
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index],
                                                   broadcast_buffers=False)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor, src=0)
    return model


def average_gradients(model: nn.Module) -> None:
    """Replace every gradient by its mean over the ranks: one all-reduce (CPU path). A
    parameter without a gradient on this rank takes part with zeros."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return  # DDP averaged them during backward
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size()
    for parameter, synced in zip(parameters, _unflatten_dense_tensors(flat, grads), strict=True):
        parameter.grad = synced.view_as(parameter)


def sum_over_ranks(value: Tensor) -> Tensor:
    """A copy of ``value`` summed over the ranks."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total
