"""Training steps of K Figure 1 networks: one StackedMLP step against K standalone MLPs.

    .venv/bin/python benchmarks/engine.py            # results/engine.md and results/engine.json
    .venv/bin/python benchmarks/engine.py --budget 30 --ks 1 12   # a quick look

The workload is the paper's Figure 1: 784-100-100-100-10 sigmoid networks, batch 60,
binary 0/1 inputs (random here: the cost of a step does not depend on the pixel values),
cross-entropy, plain SGD with one learning rate per network. K networks are half with BN
(ceil(K/2), the rest without), paired by seed as in Figure 1: a seed's BN and baseline
network train on the same batches, every seed draws its own.

* ``stacked``: :class:`batchnorm.models.stacked.StackedMLP`, one stack of the BN networks
  and one of the baselines; one gather of the seeds' batches, one backward, one
  :class:`~batchnorm.models.stacked.StackedSGD` step per stack.
* ``standalone``: K :class:`batchnorm.models.mlp.MLP` stepped one after another, as the
  Figure 1 trainer does it today: per seed one ``index_select`` of its batch, each
  network's mean cross-entropy, the losses summed into one backward, then foreach SGD
  (``torch._foreach_add_`` with each network's lr).

Method: the script re-executes itself once with glibc's allocator told to keep freed
memory (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX``, as
``batchnorm bench`` does; otherwise large temporaries are fresh mmaps and their page
faults are timed) and ``OMP_WAIT_POLICY=PASSIVE`` (see THREAD_ENV; values set in the
environment beforehand win, and all are recorded), fixes the thread count (2), warms
every engine up, then runs rounds:
in each round every (K, engine) pair, in a shuffled order, times one block of steps
(about 96 network-steps), so that load changes hit all alike. Reported: medians over the
rounds of network-steps per second, the interquartile range, and the speed-up
stacked / standalone. The load average (os.getloadavg) is recorded before and after:
the machine is shared, so absolute numbers move with it; the interleaving keeps the
ratios comparable.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_ARENA_MAX": "1",
}
#: With 2 threads on 2 shared cores, OpenMP's default spin-waiting turns every parallel
#: region into a wait for a core another process holds: steps ran 10-50x slower (and
#: erratically) while one other job was busy. Passive waiting keeps the numbers sane.
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
RUN_ENV = {**ALLOCATOR_ENV, **THREAD_ENV}
_REEXEC_GUARD = "BATCHNORM_ENGINE_BENCH_REEXEC"
RESULTS = Path(__file__).resolve().parent / "results"
BATCH = 60
EXAMPLES = 60_000
NETWORK_STEPS_PER_BLOCK = 96


def _reexec_with_run_env() -> None:
    """Restart once with RUN_ENV (values already in the environment win)."""
    if os.environ.get(_REEXEC_GUARD) == "1" or all(key in os.environ for key in RUN_ENV):
        return
    env = {**RUN_ENV, **os.environ, _REEXEC_GUARD: "1"}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def _load() -> list[float]:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return []


class Workload:
    """K networks (ceil(K/2) with BN, K//2 without) and the batches of their seeds."""

    def __init__(self, k: int, data_x, data_y, seed: int = 0) -> None:
        import torch

        self.k = k
        self.n_bn, self.n_plain = math.ceil(k / 2), k // 2
        self.seeds = self.n_bn  # seed s: BN network s and (if any) baseline network s
        self.x, self.y = data_x, data_y
        self.generator = torch.Generator().manual_seed(seed)
        self.lrs_bn = [0.5 * (1 + s % 3) for s in range(self.n_bn)]
        self.lrs_plain = [0.5 * (1 + s % 3) for s in range(self.n_plain)]

    def indices(self):
        import torch

        return torch.randint(0, EXAMPLES, (self.seeds, BATCH), generator=self.generator)


class Stacked:
    name = "stacked"

    def __init__(self, work: Workload) -> None:
        import torch

        from batchnorm.models.stacked import StackedMLP, StackedSGD

        self.work = work
        gens = [torch.Generator().manual_seed(s) for s in range(work.seeds)]
        self.bn = StackedMLP(work.n_bn, batch_norm=True, init_std=1.0, generators=gens)
        self.optimizers = [StackedSGD(self.bn, torch.tensor(work.lrs_bn, dtype=torch.float64))]
        self.plain = None
        if work.n_plain:
            self.plain = StackedMLP(work.n_plain, batch_norm=False, init_std=1.0,
                                    generators=gens[: work.n_plain])
            self.optimizers.append(
                StackedSGD(self.plain, torch.tensor(work.lrs_plain, dtype=torch.float64)))

    def step(self, index) -> None:
        from batchnorm.models.stacked import gather_batches, stacked_cross_entropy

        x, y = gather_batches(self.work.x, index), gather_batches(self.work.y, index)
        loss = stacked_cross_entropy(self.bn(x), y).sum()
        if self.plain is not None:
            n = self.work.n_plain
            loss = loss + stacked_cross_entropy(self.plain(x[:n]), y[:n]).sum()
        for optimizer in self.optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()


class Standalone:
    name = "standalone"

    def __init__(self, work: Workload) -> None:
        import torch

        from batchnorm.models.mlp import MLP

        self.work = work
        self.groups = []  # per seed: its networks and their lrs
        for s in range(work.seeds):
            nets = [(MLP(batch_norm=True, init_std=1.0,
                         generator=torch.Generator().manual_seed(s)), work.lrs_bn[s])]
            if s < work.n_plain:
                nets.append((MLP(init_std=1.0, generator=torch.Generator().manual_seed(s)),
                             work.lrs_plain[s]))
            self.groups.append(nets)
        self.params = [(list(net.parameters()), lr) for nets in self.groups for net, lr in nets]

    def step(self, index) -> None:
        import torch
        import torch.nn.functional as F

        losses = []
        for s, nets in enumerate(self.groups):
            x = self.work.x.index_select(0, index[s])
            y = self.work.y.index_select(0, index[s])
            for net, _lr in nets:
                losses.append(F.cross_entropy(net(x), y))
        for params, _lr in self.params:
            for param in params:
                param.grad = None
        torch.stack(losses).sum().backward()
        with torch.no_grad():
            for params, lr in self.params:
                torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)


def _time_block(engine, work: Workload, steps: int) -> float:
    indices = [work.indices() for _ in range(steps)]
    started = time.perf_counter()
    for index in indices:
        engine.step(index)
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 6, 12, 24, 48])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=float, default=150.0,
                        help="seconds of timed rounds (at least --min-rounds rounds)")
    parser.add_argument("--min-rounds", type=int, default=5)
    parser.add_argument("--max-rounds", type=int, default=60)
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.json")
    parser.add_argument("--md", type=Path, default=RESULTS / "engine.md")
    parser.add_argument("--no-reexec", action="store_true")
    args = parser.parse_args(argv)
    if not args.no_reexec:
        _reexec_with_run_env()
    import torch

    torch.set_num_threads(args.threads)
    load_before = _load()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(f"# torch {torch.__version__}, {args.threads} threads, load {load_before}", flush=True)
    g = torch.Generator().manual_seed(0)
    data_x = (torch.rand(EXAMPLES, 784, generator=g) > 0.5).float()
    data_y = torch.randint(0, 10, (EXAMPLES,), generator=g)
    pairs = []
    for k in args.ks:
        work = Workload(k, data_x, data_y)
        steps = max(1, math.ceil(NETWORK_STEPS_PER_BLOCK / k))
        for engine in (Stacked(work), Standalone(work)):
            _time_block(engine, work, 3)  # warm-up
            pairs.append((k, engine, work, steps))
    times: dict[tuple[int, str], list[float]] = {(k, e.name): [] for k, e, _w, _s in pairs}
    order = random.Random(0)
    t0 = time.perf_counter()
    rounds = 0
    while rounds < args.max_rounds and (
        rounds < args.min_rounds or time.perf_counter() - t0 < args.budget
    ):
        order.shuffle(pairs)
        for k, engine, work, steps in pairs:
            times[(k, engine.name)].append(_time_block(engine, work, steps))
        rounds += 1
    elapsed = time.perf_counter() - t0
    load_after = _load()
    rows = []
    for k in args.ks:
        row = {"k": k, "bn_networks": math.ceil(k / 2), "plain_networks": k // 2}
        for name in ("stacked", "standalone"):
            samples = sorted(times[(k, name)])
            q = statistics.quantiles(samples, n=4) if len(samples) > 1 else samples * 3
            row[f"{name}_ms_per_step"] = statistics.median(samples) * 1e3
            row[f"{name}_iqr_ms"] = (q[2] - q[0]) * 1e3
            row[f"{name}_network_steps_per_s"] = k / statistics.median(samples)
        row["speedup"] = row["standalone_ms_per_step"] / row["stacked_ms_per_step"]
        rows.append(row)
        print(f"K={k:3d}  stacked {row['stacked_network_steps_per_s']:7.0f}  standalone "
              f"{row['standalone_network_steps_per_s']:7.0f} network-steps/s  "
              f"x{row['speedup']:.2f}", flush=True)
    meta = {
        "date": started_at,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_before": load_before,
        "load_after": load_after,
        "rounds": rounds,
        "timed_s": round(elapsed, 1),
        "batch": BATCH,
        "network_steps_per_block": NETWORK_STEPS_PER_BLOCK,
        "env": {key: os.environ.get(key) for key in RUN_ENV},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    args.md.write_text(_markdown(meta, rows))
    print(f"wrote {args.out} and {args.md}")
    return 0


def _markdown(meta: dict, rows: list[dict]) -> str:
    env = ", ".join(f"{key}={value}" for key, value in meta["env"].items())
    lines = [
        "# Engine benchmark: K Figure 1 networks, stacked vs standalone",
        "",
        f"{meta['date']}; torch {meta['torch']}, Python {meta['python']}, "
        f"{meta['threads']} threads on {meta['cpu_count']} CPUs; environment: {env}. "
        f"Load average before / after: {' '.join(map(str, meta['load_before']))} / "
        f"{' '.join(map(str, meta['load_after']))}. "
        f"Medians of {meta['rounds']} interleaved rounds ({meta['timed_s']} s timed); "
        "IQR = interquartile range of ms per step.",
        "",
        "784-100-100-100-10 sigmoid MLPs, batch 60, plain SGD with per-network lrs; "
        "ceil(K/2) networks with BN, K//2 without, a seed's two networks sharing batches. "
        "stacked = two `StackedMLP`s + `StackedSGD`; standalone = K `MLP`s stepped one "
        "after another (one summed backward, foreach SGD: the Figure 1 trainer today).",
        "",
        "| K | stacked net-steps/s | stacked ms/step (IQR) | standalone net-steps/s "
        "| standalone ms/step (IQR) | speed-up |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['k']} | {row['stacked_network_steps_per_s']:.0f} | "
            f"{row['stacked_ms_per_step']:.2f} ({row['stacked_iqr_ms']:.2f}) | "
            f"{row['standalone_network_steps_per_s']:.0f} | "
            f"{row['standalone_ms_per_step']:.2f} ({row['standalone_iqr_ms']:.2f}) | "
            f"{row['speedup']:.2f} |"
        )
    lines += [
        "",
        "Reading: the machine is shared (see the load), so absolute rates move with it; the "
        "rounds interleave the engines, so the ratios are comparable. A profile of K = 48 on "
        "one thread put about three quarters of the stacked step in `bmm`/`baddbmm` (about "
        "57 GFLOP/s, against 80 for a large single-core sgemm): from K of about 12 on, the "
        "stacked step is matmul-bound and its cost grows linearly with K, so the speed-up "
        "levels off (near standalone time / matmul time) instead of growing with K. K = 1 and "
        "2 are one "
        "or two stacks of one network (BN and baseline cannot share a stack): there the "
        "stack's reshapes make it slower than plain `MLP`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
