"""``batchnorm bench``: every backend against ``torch.nn.functional.batch_norm``.

BN is memory-bound, so each case is also compared with the *floor*: the bytes
it must move, timed as a plain copy of the same number of bytes in the same run
(``floor_ms``: copying ``floor_bytes / 2`` bytes reads and writes ``floor_bytes``)::

    training forward           read x twice, write y          3 * numel * itemsize
    training forward+backward  + read x and dy twice, write dx  8 * numel * itemsize
    evaluation forward         read x, write y                2 * numel * itemsize

Method: the process re-executes itself once with glibc's allocator told to keep
freed memory (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``MALLOC_ARENA_MAX``), otherwise every large output is a fresh ``mmap`` and its
page faults are timed too. It fixes the thread count, warms every candidate up
(long enough for ``auto`` to switch and for kernels to compile), then times the
candidates round-robin, one call each per round in a shuffled order, so that a
change in machine load hits all of them alike; it reports medians and the
interquartile range.
Forward+backward is ``torch.autograd.grad`` of the output with respect to x,
gamma and beta (no gradient accumulation into ``.grad``).

End to end: one SGD training step of the paper's Figure 1 MLP
(784-100-100-100-10, BN before each sigmoid, batch 60) and of a small convnet,
with torch's layers and with this project's.

A user's step (``--model resnet|mlp [--compile]``): whole training steps
(forward, backward, SGD step) of one model built three ways with the same
weights, torch's BN + activation, ours + activation, our fused BN+activation,
optionally each under ``torch.compile``. Each round times every variant once,
in a fresh random order; the reported ratio is the median over rounds of the
per-round ratio ours / torch (a load change within a round hits both), next to
the medians of the times. ``--profile`` adds torch.profiler's top operators.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: glibc allocator settings the benchmark runs under (see the module docstring).
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 32),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
    "MALLOC_ARENA_MAX": "1",
}
_REEXEC_GUARD = "BATCHNORM_BENCH_REEXEC"

#: (name, shape, layout) of the kernel cases.
CASES: list[tuple[str, tuple[int, ...], str]] = [
    ("64x64x56x56", (64, 64, 56, 56), "nchw"),
    ("64x64x56x56", (64, 64, 56, 56), "nhwc"),
    ("256x128x14x14", (256, 128, 14, 14), "nchw"),
    ("32x256x28x28", (32, 256, 28, 28), "nchw"),
    ("4096x1024", (4096, 1024), "nc"),
    ("60x100", (60, 100), "nc"),
]
QUICK_CASES: list[tuple[str, tuple[int, ...], str]] = [
    ("8x16x14x14", (8, 16, 14, 14), "nchw"),
    ("8x16x14x14", (8, 16, 14, 14), "nhwc"),
    ("60x100", (60, 100), "nc"),
]
MODES = ("train_fwd", "train_fwd_bwd", "eval_fwd")
FLOOR_PASSES = {"train_fwd": 3, "train_fwd_bwd": 8, "eval_fwd": 2}
BASELINE = "torch"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument(
        "--md", type=Path, default=None, help="write the table as Markdown here"
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case")
    parser.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16", "float64"), default="float32"
    )
    parser.add_argument(
        "--backends", default=None, help="comma-separated backends (default: all available)"
    )
    parser.add_argument("--cases", default=None, help="comma-separated case names (default: all)")
    parser.add_argument(
        "--modes", default=None, help=f"comma-separated modes among {', '.join(MODES)}"
    )
    parser.add_argument(
        "--no-end-to-end", action="store_true", help="skip the MLP and convnet training steps"
    )
    parser.add_argument(
        "--no-reexec", action="store_true", help="do not re-execute with the allocator settings"
    )
    parser.add_argument(
        "--model", choices=STEP_MODELS, default=None,
        help="time whole training steps of this model (ours against torch's) instead",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true", help="with --model: each variant under torch.compile"
    )
    parser.add_argument(
        "--profile", action="store_true", help="with --model: add torch.profiler's top operators"
    )


def _reexec_with_allocator_env() -> None:
    """Replace this process by itself with :data:`ALLOCATOR_ENV` set (before any allocation
    of note: glibc reads these variables once, at start-up)."""
    env = dict(os.environ)
    env.update(ALLOCATOR_ENV)
    env[_REEXEC_GUARD] = "1"
    # The interpreter's own command line (``-m batchnorm.cli``, a script, the console
    # entry point): re-running a module's file by path would put src/batchnorm on
    # sys.path, where statistics.py shadows the standard library's.
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    os.execve(sys.executable, argv, env)


@dataclass
class Timing:
    median_ms: float
    iqr_ms: float
    samples: int


def _summarize(seconds: list[float]) -> Timing:
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) >= 4:
        q = statistics.quantiles(ms, n=4)
        iqr = q[2] - q[0]
    else:
        iqr = ms[-1] - ms[0]
    return Timing(statistics.median(ms), iqr, len(ms))


def time_round_robin(
    candidates: dict[str, Callable[[], Any]], repeats: int, warmup: int, sync: Callable[[], None]
) -> dict[str, Timing]:
    """Median and IQR of each candidate, timed one call each per round."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
        sync()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    order = list(candidates)
    shuffle = random.Random(0).shuffle
    for _ in range(repeats):
        # A fresh order each round: what runs just before a candidate (cache contents,
        # which freed block its output lands in) must not favour it every time.
        shuffle(order)
        for name in order:
            fn = candidates[name]
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {name: _summarize(values) for name, values in samples.items()}


def _make_input(shape, layout, dtype, device):
    import torch

    x = torch.randn(shape, device=device).to(dtype)
    if layout == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _kernel_candidates(x, mode: str, backends: list[str]):
    """name -> zero-argument callable running one BN call of ``mode``."""
    import torch

    from batchnorm.backends import compute_dtype
    from batchnorm.functional import batch_norm

    c = x.shape[1]
    param_dtype = compute_dtype(x.dtype)
    weight = torch.rand(c, device=x.device, dtype=param_dtype)
    bias = torch.rand(c, device=x.device, dtype=param_dtype)
    training = mode != "eval_fwd"
    grad = torch.randn_like(x) if mode == "train_fwd_bwd" else None
    if grad is not None:
        x = x.detach().requires_grad_(True)
        weight.requires_grad_(True)
        bias.requires_grad_(True)

    def make(name: str):
        running_mean = torch.zeros(c, device=x.device, dtype=param_dtype)
        running_var = torch.ones(c, device=x.device, dtype=param_dtype)
        if name == BASELINE:

            def forward():
                return torch.nn.functional.batch_norm(
                    x, running_mean, running_var, weight, bias, training, 0.1, 1e-5
                )
        else:

            def forward():
                return batch_norm(
                    x, running_mean, running_var, weight, bias, training, 0.1, 1e-5,
                    backend=name,
                )  # fmt: skip

        if grad is None:

            def run():
                with torch.no_grad():
                    return forward()

            return run

        def run_backward():
            return torch.autograd.grad(forward(), (x, weight, bias), grad)

        return run_backward

    return {name: make(name) for name in [BASELINE, *backends]}


def _copy_candidate(nbytes: int, device):
    """A copy that reads and writes ``nbytes`` in all (the floor's yardstick)."""
    import torch

    n = max(nbytes // 2 // 4, 1)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _sync_for(device: str) -> Callable[[], None]:
    import torch

    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _selected_backends(args, x) -> list[str]:
    from batchnorm.functional import available_backends

    usable = available_backends(x)
    if args.backends:
        wanted = [name.strip() for name in args.backends.split(",") if name.strip()]
        return [name for name in wanted if name == "auto" or name in usable]
    return [*usable, "auto"]


def bench_kernels(args) -> list[dict[str, Any]]:
    import torch

    dtype = getattr(torch, args.dtype)
    cases = QUICK_CASES if args.quick else CASES
    if args.cases:
        cases = [case for case in cases if case[0] in args.cases.split(",")]
    modes = args.modes.split(",") if args.modes else MODES
    repeats = args.repeats or (5 if args.quick else 15)
    sync = _sync_for(args.device)
    rows: list[dict[str, Any]] = []
    for case, shape, layout in cases:
        x = _make_input(shape, layout, dtype, args.device)
        backends = _selected_backends(args, x)
        for mode in modes:
            floor_bytes = FLOOR_PASSES[mode] * x.numel() * x.element_size()
            candidates = _kernel_candidates(x, mode, backends)
            candidates["copy"] = _copy_candidate(floor_bytes, args.device)
            # Warm-up long enough for auto to see a shape often enough to switch, and
            # for the compiled kernels (forward and backward) to be generated.
            timings = time_round_robin(candidates, repeats, warmup=6, sync=sync)
            floor_ms = timings.pop("copy").median_ms
            base = timings[BASELINE].median_ms
            for name, timing in timings.items():
                rows.append(
                    {
                        "case": case,
                        "shape": list(shape),
                        "layout": layout,
                        "dtype": args.dtype,
                        "mode": mode,
                        "backend": name,
                        **asdict(timing),
                        "gbps": floor_bytes / (timing.median_ms * 1e-3) / 1e9,
                        "ratio_native": timing.median_ms / base,
                        "ratio_floor": timing.median_ms / floor_ms,
                        "floor_ms": floor_ms,
                        "floor_bytes": floor_bytes,
                        "copy_gbps": floor_bytes / (floor_ms * 1e-3) / 1e9,
                    }
                )
            _print_rows(rows[-len(timings) :])
    return rows


def _mlp(norm: Callable[[int], Any]):
    from torch import nn

    layers: list[nn.Module] = []
    width = 784
    for _ in range(3):
        # BN replaces the bias (Algorithm 2, step 1).
        layers += [nn.Linear(width, 100, bias=False), *norm(100)]
        width = 100
    layers.append(nn.Linear(100, 10))
    return nn.Sequential(*layers)


def _convnet(norm: Callable[[int], Any], channels_last: bool):
    from torch import nn

    layers: list[nn.Module] = []
    width = 3
    for out, stride in ((32, 1), (64, 2), (128, 2)):
        layers += [nn.Conv2d(width, out, 3, stride, 1, bias=False), *norm(out)]
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    model = nn.Sequential(*layers)
    if channels_last:
        model = model.to(memory_format=__import__("torch").channels_last)
    return model


def _training_step(model, inputs, targets):
    import torch

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()

    return step


STEP_MODELS = ("resnet", "mlp")


def _resnet(norm: Callable[[int], Any]):
    """A small ResNet-like convnet: a stem and 3 basic blocks, 7 BN layers, for 32x32.

    ``norm(n)`` gives BN + ReLU (or the fused layer); the BN before a block's residual
    add is the first module of ``norm(n, plain=True)``.
    """
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), *norm(cout),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), norm(cout, plain=True)[0],
            )  # fmt: skip
            self.skip = (
                nn.Identity() if stride == 1 and cin == cout
                else nn.Conv2d(cin, cout, 1, stride, bias=False)
            )  # fmt: skip

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    import torch

    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1, bias=False), *norm(16),
        Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def _step_variants(model: str) -> dict[str, Callable[[int], Any]]:
    """name -> norm factory (a list of modules: BN then its activation, or one fused layer)."""
    from torch import nn

    import batchnorm

    if model == "mlp":
        return {
            "torch.nn.BatchNorm1d+Sigmoid": lambda n: [nn.BatchNorm1d(n), nn.Sigmoid()],
            "batchnorm.BatchNorm1d+Sigmoid": lambda n: [batchnorm.BatchNorm1d(n), nn.Sigmoid()],
            "batchnorm.BatchNormAct1d(sigmoid)":
                lambda n: [batchnorm.BatchNormAct1d(n, activation="sigmoid"), nn.Identity()],
        }  # fmt: skip
    return {
        "torch.nn.BatchNorm2d+ReLU": lambda n, plain=False: [nn.BatchNorm2d(n), nn.ReLU()],
        "batchnorm.BatchNorm2d+ReLU":
            lambda n, plain=False: [batchnorm.BatchNorm2d(n), nn.ReLU()],
        "batchnorm.BatchNormAct2d(relu)": lambda n, plain=False: [
            batchnorm.BatchNorm2d(n) if plain else batchnorm.BatchNormAct2d(n),
            nn.Identity(),  # keeps the module indices, so the weights load across variants
        ],
    }  # fmt: skip


def _step_inputs(model: str, device: str):
    import torch

    torch.manual_seed(0)
    if model == "mlp":
        x = (torch.rand(60, 784, device=device) > 0.5).float()  # binary, as in the paper
        return x, torch.randint(0, 10, (60,), device=device)
    return torch.randn(64, 3, 32, 32, device=device), torch.randint(0, 10, (64,), device=device)


def _profile_step(step: Callable[[], Any], rounds: int = 20) -> list[dict[str, Any]]:
    """torch.profiler's top operators (self CPU time) over ``rounds`` steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        {"op": e.key, "calls_per_step": e.count / rounds,
         "self_us_per_step": e.self_cpu_time_total / rounds}
        for e in events[:12]
    ]  # fmt: skip


def bench_step(args) -> dict[str, Any]:
    """Whole training steps of ``args.model``, ours against torch's (module docstring)."""
    import torch

    device = args.device
    sync = _sync_for(device)
    variants = _step_variants(args.model)
    build = _mlp if args.model == "mlp" else _resnet
    x, y = _step_inputs(args.model, device)
    models: dict[str, Any] = {}
    for name, norm in variants.items():
        torch.manual_seed(0)
        models[name] = build(norm).to(device)
    reference = next(iter(models.values())).state_dict()
    for model in models.values():  # the same weights (and statistics) in every variant
        model.load_state_dict(reference)
    steps = {}
    for name, model in models.items():
        runnable = torch.compile(model) if args.compile else model
        steps[name] = _training_step(runnable, x, y)
        steps[name].model = model  # type: ignore[attr-defined]
    rounds = args.repeats or (5 if args.quick else 61)
    warmup = 3 if args.quick else 10
    # A sample is `inner` consecutive steps: an MLP step (well under a millisecond idle)
    # is shorter than the load changes a sample should average over.
    inner = 1 if args.quick or args.model == "resnet" else 20
    for step in steps.values():
        for _ in range(warmup):
            step()
    sync()
    base = next(iter(steps))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    shuffle = random.Random(0).shuffle
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            sync()
            start = time.perf_counter()
            for _ in range(inner):
                steps[name]()
            sync()
            samples[name].append((time.perf_counter() - start) / inner)
    rows = []
    for name, seconds in samples.items():
        ratios = [a / b for a, b in zip(seconds, samples[base], strict=True)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [min(ratios), 0, max(ratios)]
        row = {
            "variant": name, **asdict(_summarize(seconds)),
            "ratio_torch": statistics.median(ratios), "ratio_q1": q[0], "ratio_q3": q[2],
        }  # fmt: skip
        if args.profile:
            row["profile"] = _profile_step(steps[name], rounds=5 if args.quick else 20)
        rows.append(row)
        print(
            f"{args.model:>7} {'compiled' if args.compile else 'eager':>8} {name:>36} "
            f"{row['median_ms']:8.3f} ms  x torch {row['ratio_torch']:5.3f} "
            f"[{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}]",
            flush=True,
        )
    return {"model": args.model, "compiled": args.compile, "rounds": rounds,
            "steps_per_sample": inner, "rows": rows}  # fmt: skip


def step_markdown(result: dict[str, Any]) -> str:
    """One step benchmark as a Markdown table (and its profiles, if any)."""
    meta, step = result["meta"], result["step"]
    mode = "torch.compile" if step["compiled"] else "eager"
    lines = [
        f"# Training step: {step['model']}, {mode}, {meta['device']}, {meta['threads']} threads",
        "",
        f"torch {meta['torch']}, {meta['cpu']}; load average before/after: "
        f"{meta['load_before']} / {meta['load_after']}; {meta['date']}. {step['rounds']} rounds, "
        f"each variant once per round ({step.get('steps_per_sample', 1)} consecutive steps) "
        "in a shuffled order; x torch = median over rounds of "
        "the per-round ratio (IQR in brackets).",
        "",
        "| variant | median ms | IQR ms | x torch | ratio IQR |",
        "|---|---:|---:|---:|---|",
    ]
    for row in step["rows"]:
        lines.append(
            f"| {row['variant']} | {row['median_ms']:.3f} | {row['iqr_ms']:.3f} | "
            f"{row['ratio_torch']:.3f} | [{row['ratio_q1']:.3f}, {row['ratio_q3']:.3f}] |"
        )
    for row in step["rows"]:
        if row.get("profile"):
            lines += ["", f"## Profile: {row['variant']} (self CPU time per step)", "",
                      "| op | calls/step | self us/step |", "|---|---:|---:|"]  # fmt: skip
            lines += [
                f"| {p['op']} | {p['calls_per_step']:.1f} | {p['self_us_per_step']:.1f} |"
                for p in row["profile"]
            ]
    return "\n".join(lines) + "\n"


def bench_end_to_end(args) -> list[dict[str, Any]]:
    import torch
    from torch import nn

    import batchnorm

    sync = _sync_for(args.device)
    device = args.device
    repeats = args.repeats or (10 if args.quick else 60)
    rows: list[dict[str, Any]] = []

    mlp_norms = {
        "torch.nn.BatchNorm1d": lambda n: [nn.BatchNorm1d(n), nn.Sigmoid()],
        "batchnorm.BatchNorm1d": lambda n: [batchnorm.BatchNorm1d(n), nn.Sigmoid()],
        "batchnorm.BatchNormAct1d": lambda n: [batchnorm.BatchNormAct1d(n, activation="sigmoid")],
    }
    conv_norms = {
        "torch.nn.BatchNorm2d": lambda n: [nn.BatchNorm2d(n), nn.ReLU(inplace=True)],
        "batchnorm.BatchNorm2d": lambda n: [batchnorm.BatchNorm2d(n), nn.ReLU(inplace=True)],
        "batchnorm.BatchNormAct2d": lambda n: [batchnorm.BatchNormAct2d(n, activation="relu")],
    }
    conv_batch = 8 if args.quick else 32
    models: list[tuple[str, dict[str, Callable[[], Any]]]] = []
    torch.manual_seed(0)
    mlp_x = (torch.rand(60, 784, device=device) > 0.5).float()  # binary, as in the paper
    mlp_y = torch.randint(0, 10, (60,), device=device)
    models.append(
        (
            "figure1_mlp_b60",
            {
                name: _training_step(_mlp(norm).to(device), mlp_x, mlp_y)
                for name, norm in mlp_norms.items()
            },
        )
    )
    for channels_last in (False, True):
        conv_x = torch.randn(conv_batch, 3, 32, 32, device=device)
        if channels_last:
            conv_x = conv_x.contiguous(memory_format=torch.channels_last)
        conv_y = torch.randint(0, 10, (conv_batch,), device=device)
        models.append(
            (
                f"convnet_b{conv_batch}_32x32" + ("_nhwc" if channels_last else ""),
                {
                    name: _training_step(
                        _convnet(norm, channels_last).to(device), conv_x, conv_y
                    )
                    for name, norm in conv_norms.items()
                },
            )
        )
    for model_name, steps in models:
        timings = time_round_robin(steps, repeats, warmup=8, sync=sync)
        base = next(iter(timings.values())).median_ms
        for name, timing in timings.items():
            rows.append(
                {
                    "model": model_name,
                    "variant": name,
                    **asdict(timing),
                    "ratio_torch": timing.median_ms / base,
                }
            )
        _print_end_to_end(rows[-len(timings) :])
    return rows


def _print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(
            f"{row['case']:>14} {row['layout']:>4} {row['mode']:>13} {row['backend']:>9} "
            f"{row['median_ms']:9.3f} ms  IQR {row['iqr_ms']:7.3f}  {row['gbps']:6.1f} GB/s  "
            f"x native {row['ratio_native']:5.2f}  x floor {row['ratio_floor']:5.2f}",
            flush=True,
        )


def _print_end_to_end(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(
            f"{row['model']:>24} {row['variant']:>26} {row['median_ms']:8.3f} ms  "
            f"IQR {row['iqr_ms']:6.3f}  x torch {row['ratio_torch']:5.2f}",
            flush=True,
        )


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    meta = result["meta"]
    lines = [
        f"# BN benchmark: {meta['device']}, {meta['threads']} threads, {meta['dtype']}",
        "",
        f"torch {meta['torch']}, {meta['cpu']}; load average before/after: "
        f"{meta['load_before']} / {meta['load_after']}. Medians of {meta['repeats']} "
        "round-robin rounds; IQR = interquartile range; x native = time / "
        "torch.nn.functional.batch_norm's; x floor = time / copy of the floor's bytes.",
        "",
        "| case | layout | mode | backend | ms | IQR ms | GB/s | x native | x floor |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["kernels"]:
        lines.append(
            f"| {row['case']} | {row['layout']} | {row['mode']} | {row['backend']} | "
            f"{row['median_ms']:.3f} | {row['iqr_ms']:.3f} | {row['gbps']:.1f} | "
            f"{row['ratio_native']:.2f} | {row['ratio_floor']:.2f} |"
        )
    if result.get("end_to_end"):
        lines += [
            "",
            "## Training step, end to end",
            "",
            "| model | variant | ms | IQR ms | x torch |",
            "|---|---|---:|---:|---:|",
        ]
        for row in result["end_to_end"]:
            lines.append(
                f"| {row['model']} | {row['variant']} | {row['median_ms']:.3f} | "
                f"{row['iqr_ms']:.3f} | {row['ratio_torch']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def run(args: argparse.Namespace) -> int:
    if (
        not args.no_reexec
        and args.device == "cpu"
        and os.environ.get(_REEXEC_GUARD) != "1"
        and "MALLOC_MMAP_THRESHOLD_" not in os.environ
    ):
        _reexec_with_allocator_env()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("batchnorm bench: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    load_before = _load()
    print(
        f"# torch {torch.__version__}, {args.threads} threads, {args.device}, {args.dtype}, "
        f"load {load_before}",
        flush=True,
    )
    if args.model is not None:
        step = bench_step(args)
        result = {"meta": _meta(args, torch, load_before), "step": step}
        _write(args, result, step_markdown)
        return 0
    kernels = bench_kernels(args)
    end_to_end = [] if args.no_end_to_end else bench_end_to_end(args)
    from batchnorm.backends import _inductor

    result = {
        "meta": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": args.device
            if args.device == "cpu"
            else torch.cuda.get_device_name(),
            "cpu": _cpu_name(),
            "threads": args.threads,
            "dtype": args.dtype,
            "quick": args.quick,
            "repeats": args.repeats or (5 if args.quick else 15),
            "allocator_env": {key: os.environ.get(key) for key in ALLOCATOR_ENV},
            "load_before": load_before,
            "load_after": _load(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "compile_cache": _inductor.cache_info(),
            "floor_passes": FLOOR_PASSES,
        },
        "kernels": kernels,
        "end_to_end": end_to_end,
    }
    _write(args, result, markdown)
    return 0


def _meta(args, torch, load_before: str) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(),
        "cpu": _cpu_name(),
        "threads": args.threads,
        "allocator_env": {key: os.environ.get(key) for key in ALLOCATOR_ENV},
        "load_before": load_before,
        "load_after": _load(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _write(args, result: dict[str, Any], to_markdown: Callable[[dict[str, Any]], str]) -> None:
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(to_markdown(result))
        print(f"wrote {args.md}")
