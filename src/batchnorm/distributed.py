"""Per-channel statistics of a batch split across processes, merged exactly.

Each rank r holds n_r values of channel c (n_r may differ between ranks, and
may be 0) and reduces them to its moments (n_r, mean_r, M2_r), M2 being the sum
of squared deviations about the rank's own mean. One all-gather of those
2C + 1 numbers per rank, then Chan et al.'s parallel formula, in float64::

    n    = sum_r n_r
    mean = sum_r n_r mean_r / n
    M2   = sum_r M2_r + sum_r n_r (mean_r - mean)^2
    var  = M2 / n                                  (biased: what BN normalizes by)

which equals the two-pass statistics of the concatenated batch (no
E[x^2] - E[x]^2 cancellation). A rank with no values sends (0, 0, 0): it adds
nothing and still takes part in the collective. No host synchronization: the
count stays a tensor.

Backward needs two more sums per channel over the whole batch,
``Sg = sum g`` and ``Sgx = sum g (x - mean)`` (docs/method.md section 3):
one all-reduce (:func:`all_reduce_sums`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Moments", "all_reduce_sums", "gather_moments", "local_moments", "merge_moments"]


class Moments(NamedTuple):
    """Per-channel moments of a batch: count (0-dim), mean (C,), M2 (C,)."""

    count: Tensor
    mean: Tensor
    m2: Tensor

    @property
    def var(self) -> Tensor:
        """The biased variance M2 / n."""
        return self.m2 / self.count


def local_moments(input: Tensor) -> Moments:
    """(n, mean, M2) per channel of an (N, C, *) input, in float64 (zeros if it is empty)."""
    channels = input.shape[1]
    count = input.numel() // max(channels, 1)
    if count == 0:
        zeros = torch.zeros(channels, dtype=torch.float64, device=input.device)
        return Moments(torch.zeros((), dtype=torch.float64, device=input.device), zeros, zeros)
    dims = [0, *range(2, input.dim())]
    work = input if input.dtype == torch.float64 else input.float()
    var, mean = torch.var_mean(work, dim=dims, correction=0)
    n = torch.full((), float(count), dtype=torch.float64, device=input.device)
    return Moments(n, mean.double(), var.double() * count)


def merge_moments(counts: Tensor, means: Tensor, m2s: Tensor) -> Moments:
    """Chan et al.'s merge of R ranks' moments: counts (R,), means and m2s (R, C).

    A rank with count 0 contributes nothing; if every count is 0 the mean and M2
    are NaN (0/0), which the running-statistics update skips.
    """
    count = counts.sum()
    weights = counts.unsqueeze(1)
    mean = (weights * means).sum(0) / count
    m2 = m2s.sum(0) + (weights * (means - mean) ** 2).sum(0)
    return Moments(count, mean, m2)


def gather_moments(input: Tensor, group: dist.ProcessGroup | None, world_size: int) -> Moments:
    """The moments of the batch formed by every rank's ``input``: one all-gather."""
    local = local_moments(input)
    packed = torch.cat([local.count.reshape(1), local.mean, local.m2])
    gathered = torch.empty(world_size * packed.numel(), dtype=packed.dtype, device=packed.device)
    dist.all_gather_single(gathered, packed, group=group)
    table = gathered.view(world_size, packed.numel())
    channels = local.mean.numel()
    return merge_moments(table[:, 0], table[:, 1 : 1 + channels], table[:, 1 + channels :])


def all_reduce_sums(sum_g: Tensor, sum_gx: Tensor, group: dist.ProcessGroup | None
                    ) -> tuple[Tensor, Tensor]:
    """(Sg, Sgx) summed over the ranks: one all-reduce of 2C numbers."""
    packed = torch.cat([sum_g, sum_gx])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return packed[: sum_g.numel()], packed[sum_g.numel() :]
