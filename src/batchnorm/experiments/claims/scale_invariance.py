"""The paper's section 3.3 (docs/method.md section 6.6): BN makes a layer scale-invariant.

For a scalar a and a weight W followed by BN (eps ignored)::

    BN((a W) u) = BN(W u)                 the layer's output
    dL/du unchanged                       back-propagation through the layer
    dL/d(a W) = (1/a) dL/dW               larger weights get smaller gradients

Checked in float64 on real MNIST batches through trained BN networks (this project's
:class:`~batchnorm.layers.BatchNorm1d`), every hidden layer scaled in turn by each a, with
eps = 1e-30 (the identities are exact only without eps; the trained eps = 1e-5 is reported
beside it). Relative error of A against B: ``max|A - B| / max|B|``.

The consequence during training: since L(aW) = L(W), dL/dW is orthogonal to W, so plain
SGD only grows it: ``||W_t+1||^2 = ||W_t||^2 + lr^2 ||g_t||^2`` and the effective step on
the direction of W, ``lr / ||W_t||^2``, decays. Measured per hidden layer over training
(ReLU BN MLPs, He init, several seeds and rates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.data import load_split
from batchnorm.experiments.claims.santurkar import STREAMS, accuracy, he_stack
from batchnorm.experiments.runner import Settings, setting
from batchnorm.experiments.runner.evidence import Interval, Rule, Verdict, decide, mean_interval
from batchnorm.experiments.runner.plots import mean_band, save_plot
from batchnorm.models.stacked import gather_batches, stacked_cross_entropy

__all__ = ["CLAIM", "ScaleConfig", "identity_errors", "relative_error", "verdict"]

VERSION = "scale-invariance-1"
TOLERANCE = 1e-10  # float64: the identities hold to rounding, far below this
EXACT_EPS = 1e-30


@dataclass(frozen=True)
class ScaleConfig(Settings):
    train: int = setting(50000, "training rows")
    test: int = setting(10000, "test rows")
    width: int = setting(100, "hidden units")
    depth: int = setting(3, "hidden layers")
    batch: int = setting(60, "batch size")
    steps: int = setting(1000, "SGD steps")
    lrs: tuple[float, ...] = setting((0.1, 1.0), "learning rates")
    seeds: tuple[int, ...] = setting((0, 1, 2), "seeds")
    scales: tuple[float, ...] = setting((0.01, 0.1, 10.0, 100.0), "weight scales a")
    batches: int = setting(3, "MNIST batches per identity check")
    records: int = setting(30, "norm records over training")


PRESETS = {
    "quick": ScaleConfig(train=10000, test=2000, steps=150, seeds=(0, 1), batches=1, records=10),
    "default": ScaleConfig(),
    "gpu": ScaleConfig(width=512, depth=5, steps=20000, seeds=(0, 1, 2, 3, 4), batches=10),
}


# --- the identities -----------------------------------------------------------------------


def relative_error(a: Tensor, b: Tensor) -> float:
    """``max|a - b| / max|b|`` (0 when both are zero)."""
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _pass(mlp: nn.Module, layer: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """BN output of hidden layer ``layer``, dL/dW of its Linear, dL/dx; one float64 pass."""
    seen: list[Tensor] = []
    bn = mlp.get_submodule(f"linear{layer}_bn")
    handle = bn.register_forward_hook(lambda module, args, out: seen.append(out))
    x = x.clone().requires_grad_(True)
    weight = mlp.get_submodule(f"linear{layer}").weight
    try:
        loss = nn.functional.cross_entropy(mlp(x), y)
        grad_w, grad_x = torch.autograd.grad(loss, [weight, x])
    finally:
        handle.remove()
    return seen[0].detach(), grad_w, grad_x


def identity_errors(mlp: nn.Module, x: Tensor, y: Tensor, scales: Sequence[float],
                    eps: float) -> dict[str, float]:
    """The largest relative error, over hidden layers and ``scales``, of each identity:
    ``output`` BN(aWu) vs BN(Wu), ``weight_grad`` a dL/d(aW) vs dL/dW, ``input_grad`` dL/du
    vs dL/du; ``mlp`` (an :class:`MLP` with BN) is run in float64 with BN ``eps`` and in
    training mode (batch statistics), then restored."""
    net = _float64_copy(mlp, eps)
    x, errors = x.double(), {"output": 0.0, "weight_grad": 0.0, "input_grad": 0.0}
    layers = len(net.sizes) - 2
    for layer in range(1, layers + 1):
        weight = net.get_submodule(f"linear{layer}").weight
        original = weight.detach().clone()
        base = _pass(net, layer, x, y)
        for a in scales:
            with torch.no_grad():
                weight.copy_(original * a)
            out, grad_w, grad_x = _pass(net, layer, x, y)
            with torch.no_grad():
                weight.copy_(original)
            found = {"output": relative_error(out, base[0]),
                     "weight_grad": relative_error(a * grad_w, base[1]),
                     "input_grad": relative_error(grad_x, base[2])}
            errors = {k: max(errors[k], found[k]) for k in errors}
    return errors


def _float64_copy(mlp: nn.Module, eps: float) -> nn.Module:
    import copy

    net = copy.deepcopy(mlp).double().train()
    for module in net.modules():
        if hasattr(module, "eps") and hasattr(module, "running_mean"):
            module.eps = eps  # the copy is thrown away: its running statistics may move
    return net


# --- the verdict rule ---------------------------------------------------------------------

RULE = Rule("BN is scale-invariant (paper section 3.3)",
            "the largest relative error of the identities per seed", "less", TOLERANCE)


def verdict(per_seed_max_error: Sequence[float]) -> tuple[Verdict, Interval]:
    """Per seed, the largest relative error of all identities (all layers, scales and
    batches): supported if the 95% interval lies below 1e-10, not supported if above.
    Errors are capped at 1 (100%: an infinite or NaN one counts as totally broken)."""
    values = [min(v, 1.0) if not math.isnan(v) else 1.0 for v in per_seed_max_error]
    interval = mean_interval(values)
    return decide(RULE, interval), interval


# --- training and measuring ---------------------------------------------------------------


def _train(config: ScaleConfig, context: ClaimContext, bar: Any) -> dict[str, Any]:
    split = load_split(context, "mnist", train=config.train, val=5000, test=config.test)
    grid = [(lr, seed) for lr in config.lrs for seed in config.seeds]
    K = len(grid)
    seeds = [seed for _, seed in grid]
    sizes = (784, *[config.width] * config.depth, 10)
    model = he_stack(K, sizes, seeds, batch_norm=True, activation=nn.ReLU)
    lrs = torch.tensor([lr for lr, _ in grid], dtype=torch.float64)
    data = {seed: STREAMS.generator(seed, "data") for seed in config.seeds}
    picks = torch.tensor([config.seeds.index(seed) for seed in seeds])
    every = max(config.steps // config.records, 1)
    weights = [getattr(model, f"linear{i}_weight") for i in range(1, config.depth + 1)]
    params = [p for p in model.parameters()]
    norms, steps, cosines = [], [], []

    def record(step: int) -> None:
        steps.append(step)
        norms.append([w.detach().double().flatten(1).norm(dim=1).tolist() for w in weights])

    record(0)
    n = len(split.train_y)
    for step in range(config.steps):
        index = torch.stack([torch.randint(n, (config.batch,), generator=data[s])
                             for s in config.seeds]).index_select(0, picks)
        x, y = gather_batches(split.train_x, index), gather_batches(split.train_y, index)
        grads = torch.autograd.grad(stacked_cross_entropy(model(x), y).sum(), params)
        with torch.no_grad():
            grad_of = dict(zip(map(id, params), grads, strict=True))
            cos = []
            for w in weights:
                g = grad_of[id(w)].double().flatten(1)
                v = w.double().flatten(1)
                cos.append(((g * v).sum(1) / (g.norm(dim=1) * v.norm(dim=1))).abs())
            cosines.append(torch.stack(cos).max(0).values)
            for p, g in zip(params, grads, strict=True):
                p.sub_(g * lrs.to(p.dtype).view(-1, *[1] * (p.dim() - 1)))
        if (step + 1) % every == 0 or step + 1 == config.steps:
            record(step + 1)
        bar.advance_to(step + 1)
    test = accuracy(model, split.test_x, split.test_y)
    gen = torch.Generator().manual_seed(12345)
    checks = []
    for k in range(K):
        mlp = model.to_mlp(k)
        errors = {"exact": {"output": 0.0, "weight_grad": 0.0, "input_grad": 0.0},
                  "trained_eps": {"output": 0.0, "weight_grad": 0.0, "input_grad": 0.0}}
        for _ in range(config.batches):
            rows = torch.randint(n, (config.batch,), generator=gen)
            x, y = split.train_x[rows], split.train_y[rows]
            for label, eps in (("exact", EXACT_EPS), ("trained_eps", model.eps)):
                found = identity_errors(mlp, x, y, config.scales, eps)
                errors[label] = {key: max(errors[label][key], found[key]) for key in found}
        checks.append(errors)
    max_cos = torch.stack(cosines).max(0).values
    return {"grid": grid, "steps": steps, "norms": norms, "test": test.tolist(),
            "checks": checks, "max_cos": max_cos.tolist()}


def _run(config: ScaleConfig, context: ClaimContext) -> ClaimResult:
    key = {"version": VERSION, **config.to_dict()}

    def compute() -> dict[str, Any]:
        with context.bar(config.steps, "train") as bar:
            bar.start()
            return _train(config, context, bar)

    record = context.memo(key, compute)
    grid = [tuple(g) for g in record["grid"]]
    per_seed = {}
    for (_, seed), check in zip(grid, record["checks"], strict=True):
        per_seed[seed] = max(per_seed.get(seed, 0.0), *check["exact"].values())
    result_verdict, interval = verdict([per_seed[s] for s in config.seeds])
    worst_exact = {k: max(c["exact"][k] for c in record["checks"]) for k in
                   ("output", "weight_grad", "input_grad")}
    worst_eps = {k: max(c["trained_eps"][k] for c in record["checks"]) for k in worst_exact}
    norms = np.array(record["norms"])  # (records, layers, K)
    steps = np.array(record["steps"])
    rows = ["| lr | layer | norm at 0 | norm at end [95%] | lr/norm^2 at end [95%] | "
            "decay of lr/norm^2 [95%] |", "|---|---|---|---|---|---|"]
    decays = {}
    for lr in config.lrs:
        ks = [k for k, g in enumerate(grid) if g[0] == lr]
        for layer in range(config.depth):
            start, end = norms[0, layer, ks], norms[-1, layer, ks]
            decay = mean_interval((start / end) ** 2)
            decays[f"{lr:g}/{layer + 1}"] = decay.to_dict()
            rows.append(f"| {lr:g} | {layer + 1} | {start.mean():.2f} | "
                        f"{mean_interval(end).format(1, 2)} | "
                        f"{mean_interval(lr / end ** 2).format(1, 5)} | {decay.format(1, 3)} |")
    path = context.folder / "effective_lr.png"

    def draw(figure: Any) -> None:
        left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
        for lr in config.lrs:
            ks = [k for k, g in enumerate(grid) if g[0] == lr]
            for layer in range(config.depth):
                table = norms[:, layer, ks].T
                label = f"lr {lr:g}, layer {layer + 1}"
                mean_band(left, steps, table, label=label)
                mean_band(right, steps, lr / table ** 2, label=label)
        left.set_ylabel("||W_t|| (Frobenius)")
        right.set_ylabel("effective lr = lr / ||W_t||^2")
        right.set_yscale("log")
        for axis in (left, right):
            axis.set_xlabel("step")
        left.legend(fontsize="x-small")

    save_plot(path, (11, 4), draw)
    plot = context.relative(path)
    test = mean_interval(record["test"])
    holds = "as the paper says" if result_verdict == "supported" else "only approximately"
    all_decays = [Interval.from_dict(d).mean for d in decays.values()]
    finding = (f"With eps = {EXACT_EPS:g} the largest relative error of the three identities "
               f"over layers, a in {list(config.scales)}, batches and seeds is "
               f"{max(worst_exact.values()):.1e} (float64 rounding), so BN's scale "
               f"invariance holds {holds}; "
               f"with the trained eps = 1e-5 it is {max(worst_eps.values()):.1e} "
               "(eps breaks it for small a, as expected). Under SGD every hidden weight "
               f"norm grew (max |cos(W, g)| = {max(record['max_cos']):.1e}: the gradient is "
               f"orthogonal to W), so the effective rate lr/||W||^2 was multiplied by "
               f"{min(all_decays):.2f} to {max(all_decays):.2f} over training (the largest "
               "fall at the largest rate, in the first layer).")
    section = "\n".join([
        f"Trained ReLU BN MLPs 784-{config.width}x{config.depth}-10 on MNIST ({config.steps} "
        f"SGD steps of {config.batch}, rates {list(config.lrs)}, seeds {list(config.seeds)}; "
        f"test accuracy {test.format(100, 2)}%); identities on {config.batches} training "
        f"batches per network, every hidden layer scaled by a in {list(config.scales)}.", "",
        "| identity | max rel. error, eps = 1e-30 | max rel. error, eps = 1e-5 |",
        "|---|---|---|",
        *[f"| {name} | {worst_exact[k]:.2e} | {worst_eps[k]:.2e} |" for k, name in (
            ("output", "BN(aWu) = BN(Wu)"), ("weight_grad", "a dL/d(aW) = dL/dW"),
            ("input_grad", "dL/du unchanged"))],
        "", "Effective learning rate of the scale-invariant weights (decay = "
        "(||W_0|| / ||W_T||)^2, the factor by which lr/||W||^2 fell):", "", *rows, "",
        f"![weight norms and effective rate]({plot})"])
    return ClaimResult(result_verdict, "max relative error of the identities (float64)",
                       interval, finding, section,
                       {"exact": worst_exact, "trained_eps": worst_eps, "decay": decays,
                        "per_seed": per_seed}, (plot,))


CLAIM = ClaimSpec(
    id="scale-invariance", title="BN makes layers invariant to the scale of their weights",
    source="Ioffe & Szegedy 2015, sec. 3.3",
    statement="BN(aWu) = BN(Wu) and dL/d(aW) = dL/dW / a: the weight scale does not affect "
              "back-propagation, and larger weights get smaller gradients.",
    measured="Relative errors of the identities in float64 on MNIST batches through trained "
             "BN MLPs (every hidden layer, a in {0.01, 0.1, 10, 100}); the weight norms and "
             "effective rate lr/||W||^2 over SGD training.",
    rule=RULE.describe(), presets=PRESETS, run=_run)
