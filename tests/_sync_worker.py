"""One rank of tests/test_sync.py's distributed job (run as a script, one process per rank).

``python tests/_sync_worker.py RANK WORLD INIT_FILE CASES_FILE OUT_DIR``: joins a gloo
group (file:// rendezvous), runs every case of CASES_FILE on this rank's slice of the
batch with :class:`batchnorm.SyncBatchNorm` and saves what the test compares with one
process on the whole batch: outputs, input and parameter gradients, running statistics
after each training step, eval-mode outputs, and how many collectives each phase ran.
"""

from __future__ import annotations

import datetime
import sys

import torch
import torch.distributed as dist

from batchnorm.sync import SyncBatchNorm

CALLS = {"all_gather_single": 0, "all_reduce": 0}


def _count(name: str) -> None:
    original = getattr(dist, name)

    def counted(*args, **kwargs):
        CALLS[name] += 1
        return original(*args, **kwargs)

    setattr(dist, name, counted)


def _calls() -> dict[str, int]:
    counts = dict(CALLS)
    for name in CALLS:
        CALLS[name] = 0
    return counts


def run_case(case: dict, rank: int) -> dict | None:
    group = None
    if case.get("group") is not None:  # every rank creates it, only members use it
        group = dist.new_group(case["group"])
        if rank not in case["group"]:
            return None
    start = sum(case["sizes"][:rank])
    part = slice(start, start + case["sizes"][rank])
    layer = SyncBatchNorm(case["channels"], momentum=case["momentum"], process_group=group,
                          estimator=case["estimator"], dtype=case["dtype"])
    with torch.no_grad():
        layer.weight.copy_(case["weight"])
        layer.bias.copy_(case["bias"])
    steps = []
    for x_full, w_full in zip(case["inputs"], case["loss_weights"], strict=True):
        x = x_full[part].clone().requires_grad_(True)
        layer.zero_grad()
        output = layer(x)
        forward_calls = _calls()
        (output * w_full[part]).sum().backward()
        steps.append({
            "output": output.detach(), "grad_input": x.grad, "grad_weight": layer.weight.grad,
            "grad_bias": layer.bias.grad, "running_mean": layer.running_mean.clone(),
            "running_var": layer.running_var.clone(),
            "num_batches_tracked": layer.num_batches_tracked.clone(),
            "forward_calls": forward_calls, "backward_calls": _calls(),
        })
    layer.eval()
    evaluated = layer(case["inputs"][0][part]).detach()
    return {"steps": steps, "eval": evaluated, "eval_calls": _calls(),
            "state": layer.state_dict()}


def main() -> None:
    rank, world, init_file, cases_file, out_dir = sys.argv[1:6]
    rank, world = int(rank), int(world)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    _count("all_gather_single")
    _count("all_reduce")
    cases = torch.load(cases_file, weights_only=False)
    results = {name: run_case(case, rank) for name, case in cases.items()}
    dist.destroy_process_group()
    torch.save(results, f"{out_dir}/rank{rank}.pt")


if __name__ == "__main__":
    main()
