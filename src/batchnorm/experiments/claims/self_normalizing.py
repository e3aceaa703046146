"""The "BN is unnecessary" counter-claims: ``selu`` (Klambauer et al. 2017) and ``elu``
(Clevert et al. 2016).

Deep MLPs ``784 - width x depth - 10`` on Fashion-MNIST, plain SGD, each arm over a grid
of rates in one stack of K networks (:class:`DeepStack`), its rate chosen on validation:

======================  ===========  =============  ==============================
arm                     activation   init           normalization
======================  ===========  =============  ==============================
``selu``                SELU         LeCun normal   none
``selu-ad``             SELU         LeCun normal   none, AlphaDropout(``dropout``)
``elu``                 ELU          He normal      none
``elu-bn``              ELU          He normal      BN before the activation
``relu``                ReLU         He normal      none
``relu-bn``             ReLU         He normal      BN before the activation
``relu-bn-after``       ReLU         He normal      BN after the activation
======================  ===========  =============  ==============================

selu(x) = lambda x (x > 0), lambda alpha (exp(x) - 1) (x <= 0), lambda =
1.0507009873554805, alpha = 1.6732632423543772; LeCun normal: W ~ N(0, 1 / fan_in); He
normal: N(0, 2 / fan_in); biases 0 (none in a Linear followed by BN). BN: this project's
:func:`batchnorm.batch_norm`, per network and unit, running statistics for evaluation.

Edge rates: when an arm's validation-best rate is the smallest or largest it has tried,
the next rate one grid factor past that edge is trained too (same seeds and batches, its
own cached stack), at most ``extend`` times per arm and depth; the extensions are listed
in the section. The networks use ``F.selu`` (equal to :func:`selu` to rounding, one
kernel instead of six).

Measured per network: test accuracy (final weights, eval mode), validation accuracy at 80%
of the steps and at the end (the convergence check), the variance of the
per-step training loss over the last epoch, and per hidden layer the mean and variance of
its output (mean over units of the per-unit mean / variance over 2000 validation images,
eval mode).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.training import (
    SEEDS,
    DataSpec,
    batch_indices,
    best_lr,
    late_change,
)
from batchnorm.experiments.runner import Settings, setting
from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    decide,
    mean_interval,
    paired_interval,
)
from batchnorm.experiments.runner.plots import mean_band, save_plot
from batchnorm.functional import batch_norm
from batchnorm.models.stacked import gather_batches, stacked_cross_entropy

__all__ = ["ARMS", "ELU", "SELU", "Arm", "DeepStack", "SelfNormConfig", "edge_rate",
           "margin_verdict"]

VERSION = "self-normalizing-2"  # 2: F.selu in the networks, val_at_80, edge extension
SELU_LAMBDA = 1.0507009873554805
SELU_ALPHA = 1.6732632423543772
MARGIN = 0.01  # "within 1 percentage point of the best BN arm"
STATS_ROWS = 2000


@dataclass(frozen=True)
class Arm:
    activation: str  # "selu" | "elu" | "relu"
    init: str  # "lecun" | "he"
    bn: str = "none"  # "none" | "before" | "after"
    dropout: float = 0.0  # AlphaDropout rate


ARMS: dict[str, Arm] = {
    "selu": Arm("selu", "lecun"),
    "selu-ad": Arm("selu", "lecun", dropout=0.05),
    "elu": Arm("elu", "he"),
    "elu-bn": Arm("elu", "he", "before"),
    "relu": Arm("relu", "he"),
    "relu-bn": Arm("relu", "he", "before"),
    "relu-bn-after": Arm("relu", "he", "after"),
}
BN_ARMS = ("elu-bn", "relu-bn", "relu-bn-after")
SELU_ARMS = ("selu", "selu-ad")


def selu(x: Tensor) -> Tensor:
    """lambda * x for x > 0, lambda * alpha * (exp(x) - 1) otherwise (Klambauer's constants)."""
    return SELU_LAMBDA * torch.where(x > 0, x, SELU_ALPHA * torch.expm1(x.clamp(max=0)))


_ACTIVATIONS = {"selu": F.selu, "elu": F.elu, "relu": torch.relu}


class DeepStack(nn.Module):
    """K MLPs ``sizes`` with one :class:`Arm`'s layout, computed by batched matmuls.

    Weights (K, in, out) drawn for network k from ``generators[k]`` (layer by layer,
    N(0, 1) times the init's std), so the networks of one seed share their draws across
    arms. Input (K, N, in) or (N, in); output logits (K, N, classes).
    """

    def __init__(self, arm: Arm, sizes: Sequence[int],
                 generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        if arm.activation not in _ACTIVATIONS or arm.init not in ("lecun", "he") or \
                arm.bn not in ("none", "before", "after") or not 0 <= arm.dropout < 1:
            raise ValueError(f"DeepStack: bad arm {arm}")
        if len(sizes) < 3:
            raise ValueError(f"DeepStack: need at least one hidden layer, got sizes {sizes}")
        self.arm, self.sizes, K = arm, tuple(sizes), len(generators)
        self.num_networks = K
        gain = 1.0 if arm.init == "lecun" else 2.0
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.gammas = nn.ParameterList()
        self.betas = nn.ParameterList()
        for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            drawn = torch.stack([torch.randn(fan_in, fan_out, generator=g) for g in generators])
            self.weights.append(nn.Parameter(drawn * math.sqrt(gain / fan_in)))
            hidden = index < len(sizes) - 2
            if not (hidden and arm.bn == "before"):
                self.biases.append(nn.Parameter(torch.zeros(K, 1, fan_out)))
            else:
                self.biases.append(nn.Parameter(torch.zeros(0)))  # placeholder: no bias
            if hidden and arm.bn != "none":
                self.gammas.append(nn.Parameter(torch.ones(K * fan_out)))
                self.betas.append(nn.Parameter(torch.zeros(K * fan_out)))
                self.register_buffer(f"mean{index}", torch.zeros(K * fan_out))
                self.register_buffer(f"var{index}", torch.ones(K * fan_out))

    def _bn(self, h: Tensor, index: int) -> Tensor:
        K, N, C = h.shape
        flat = h.transpose(0, 1).reshape(N, K * C)
        out = batch_norm(flat, getattr(self, f"mean{index}"), getattr(self, f"var{index}"),
                         self.gammas[index], self.betas[index], self.training, 0.1, 1e-5)
        return out.view(N, K, C).transpose(0, 1)

    def forward(self, x: Tensor, stats: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """Logits; with ``stats`` a list, appends each hidden output's (mean over units of
        the per-unit mean, mean over units of the per-unit variance), (K,) each."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.num_networks, *x.shape)
        act, arm, last = _ACTIVATIONS[self.arm.activation], self.arm, len(self.weights) - 1
        for index, weight in enumerate(self.weights):
            bias = self.biases[index]
            h = torch.bmm(x, weight) if bias.numel() == 0 else torch.baddbmm(bias, x, weight)
            if index == last:
                return h
            if arm.bn == "before":
                h = self._bn(h, index)
            h = act(h)
            if arm.bn == "after":
                h = self._bn(h, index)
            if stats is not None:
                var, mean = torch.var_mean(h.detach().double(), dim=1, correction=0)
                stats.append((mean.mean(1), var.mean(1)))
            if arm.dropout > 0:
                h = F.alpha_dropout(h, arm.dropout, self.training)
            x = h
        raise AssertionError("unreachable")


@dataclass(frozen=True)
class SelfNormConfig(Settings):
    dataset: str = setting("fashion-mnist", "dataset", choices=("mnist", "fashion-mnist"))
    train: int = setting(10240, "training rows")
    val: int = setting(2000, "validation rows")
    test: int = setting(5000, "test rows")
    width: int = setting(64, "hidden units")
    depths: tuple[int, ...] = setting((8, 32), "hidden layers (the rule reads the last)")
    batch: int = setting(64, "batch size")
    steps: int = setting(640, "SGD steps")
    lrs: tuple[float, ...] = setting((0.005, 0.02, 0.08, 0.32), "learning-rate grid (per arm)")
    extend: int = setting(2, "times an arm's grid is extended past an edge rate that wins "
                             "on validation (one grid factor each time)",
                          check=lambda n: None if n >= 0 else "expected >= 0")
    seeds: tuple[int, ...] = setting((0, 1, 2), "seeds")
    arms: tuple[str, ...] = setting(tuple(ARMS), "arms",
                                    check=lambda a: None if a in ARMS else f"not in {list(ARMS)}")


PRESETS = {
    "quick": SelfNormConfig(train=3000, val=1000, test=1000, width=32, depths=(6,), batch=32,
                            steps=120, lrs=(0.01, 0.1, 1.0), seeds=(0, 1), extend=1),
    "default": SelfNormConfig(),
    "gpu": SelfNormConfig(train=50000, val=10000, width=128, depths=(8, 16, 32), batch=64,
                          steps=8000, lrs=(0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
                          seeds=(0, 1, 2, 3, 4)),
}


# --- training -----------------------------------------------------------------------------


@torch.no_grad()
def _evaluate(model: DeepStack, x: Tensor, y: Tensor, chunk: int = 2000) -> Tensor:
    model.eval()
    correct = torch.zeros(model.num_networks, dtype=torch.float64)
    for start in range(0, len(y), chunk):
        logits = model(x[start:start + chunk])
        correct += (logits.argmax(-1) == y[start:start + chunk]).double().sum(1)
    model.train()
    return correct / len(y)


def train_arm(config: SelfNormConfig, split: Any, arm_name: str, depth: int,
              bar: Any = None) -> list[dict[str, Any]]:
    """One arm at one depth over lrs x seeds: one record per network."""
    grid = [(lr, seed) for lr in config.lrs for seed in config.seeds]
    seeds = [seed for _, seed in grid]
    torch.manual_seed(SEEDS(seeds[0])["dropout"])  # AlphaDropout draws from the global RNG
    model = DeepStack(ARMS[arm_name], (784, *[config.width] * depth, 10),
                      [SEEDS.generator(seed, "init") for seed in seeds])
    lrs = torch.tensor([lr for lr, _ in grid])
    n = len(split.train_y)
    streams = torch.stack([batch_indices(n, config.batch, config.steps, s)
                           for s in config.seeds], dim=1)
    picks = torch.tensor([config.seeds.index(s) for s in seeds])
    epoch = n // config.batch
    window = min(epoch, config.steps // 2)
    params = list(model.parameters())
    last, curve, every = [], [], max(config.steps // 25, 1)
    acc = torch.zeros(len(grid), dtype=torch.float64)
    at_80, val_80 = max(1, round(0.8 * config.steps)), None
    for step in range(config.steps):
        index = streams[step].index_select(0, picks)
        losses = stacked_cross_entropy(model(gather_batches(split.train_x, index)),
                                       gather_batches(split.train_y, index))
        grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                if g is not None and p.numel():
                    scale = lrs.view(-1, *[1] * (p.dim() - 1)) if p.dim() > 1 else \
                        lrs.repeat_interleave(p.numel() // len(grid))
                    p.sub_(g * scale)
        detached = losses.detach().double()
        acc += detached
        if step >= config.steps - window:
            last.append(detached)
        if (step + 1) % every == 0:
            curve.append((acc / every).tolist())
            acc.zero_()
        if step + 1 == at_80:
            val_80 = _evaluate(model, split.val_x, split.val_y)
        if bar is not None:
            bar.advance_to(step + 1)
    val = _evaluate(model, split.val_x, split.val_y)
    test = _evaluate(model, split.test_x, split.test_y)
    stats: list[tuple[Tensor, Tensor]] = []
    model.eval()
    with torch.no_grad():
        model(split.val_x[:STATS_ROWS], stats)
    model.train()
    variance = torch.stack(last).var(0, correction=0)
    assert val_80 is not None
    rows = []
    for k, (lr, seed) in enumerate(grid):
        rows.append({"arm": arm_name, "depth": depth, "lr": lr, "seed": seed,
                     "val": _num(val[k]), "val_at_80": _num(val_80[k]), "test": _num(test[k]),
                     "loss_var": _num(variance[k]), "curve": [_num(c[k]) for c in curve],
                     "act_mean": [_num(m[k]) for m, _ in stats],
                     "act_var": [_num(v[k]) for _, v in stats]})
    return rows


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def edge_rate(tried: Sequence[float], best: float) -> float | None:
    """The next rate past the edge of ``tried`` when ``best`` is its smallest or largest
    rate (one grid factor further: the ratio of the two rates at that edge), else None."""
    rates = sorted(set(tried))
    if len(rates) < 2:
        return None
    if best == rates[0]:
        return float(f"{rates[0] * rates[0] / rates[1]:.4g}")
    if best == rates[-1]:
        return float(f"{rates[-1] * rates[-1] / rates[-2]:.4g}")
    return None


def _stack_rows(config: SelfNormConfig, context: ClaimContext, data: DataSpec, arm: str,
                depth: int) -> list[dict[str, Any]]:
    """One (arm, depth) stack over ``config.lrs`` x seeds, memoized."""
    key = {"version": VERSION, "arm": arm, "layout": vars(ARMS[arm]).copy(),
           "depth": depth, "data": data.key(),
           **{k: v for k, v in config.to_dict().items()
              if k not in ("depths", "arms", "dataset", "train", "val", "test", "extend")}}

    def compute() -> list[dict[str, Any]]:
        split = data.load(context, flat=True)
        with context.bar(config.steps, f"{arm} depth {depth} lr {list(config.lrs)}") as bar:
            bar.start()
            return train_arm(config, split, arm, depth, bar)

    return context.memo(key, compute)


def trainings(config: SelfNormConfig, context: ClaimContext
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (arm, depth) stack, each memoized on its own; then, per arm and depth, while
    its validation-best rate is an edge of the rates it has tried (at most
    ``config.extend`` times), the next rate past that edge is trained (its own stack, same
    seeds and batches). Returns the rows and the extensions made."""
    data = DataSpec(config.dataset, config.train, config.val, config.test)
    rows: list[dict[str, Any]] = []
    extensions: list[dict[str, Any]] = []
    for depth in config.depths:
        for arm in config.arms:
            mine = list(_stack_rows(config, context, data, arm, depth))
            for _ in range(config.extend):
                best = _val_row(mine, arm, depth)[0]
                rate = edge_rate([r["lr"] for r in mine], best)
                if rate is None:
                    break
                extensions.append({"arm": arm, "depth": depth, "edge": best, "lr": rate})
                mine += _stack_rows(dataclasses.replace(config, lrs=(rate,)), context, data,
                                    arm, depth)
            rows += mine
    return rows, extensions


# --- selection and the rule ---------------------------------------------------------------


def _val_row(rows: Sequence[dict], arm: str, depth: int) -> tuple[float, list[dict]]:
    mine = [dict(r, val=r["val"] or 0.0) for r in rows if r["arm"] == arm and r["depth"] == depth]
    lr = best_lr(mine, "val")
    chosen = sorted((r for r in rows if r["arm"] == arm and r["depth"] == depth
                     and r["lr"] == lr), key=lambda r: r["seed"])
    return lr, chosen


def best_arm(rows: Sequence[dict], arms: Sequence[str], depth: int) -> str:
    """The arm (each at its tuned rate) with the best mean validation accuracy."""
    return max(arms, key=lambda a: float(np.mean([r["val"] or 0.0
                                                  for r in _val_row(rows, a, depth)[1]])))


RULE = Rule("no BN needed", "test accuracy (arm - best BN arm), seed-paired", "greater",
            -MARGIN)


def margin_verdict(arm_acc: Sequence[float], bn_acc: Sequence[float]
                   ) -> tuple[Verdict, Interval]:
    """Supported if the seed-paired interval of (arm - best BN arm) test accuracy lies above
    -1 point, not supported if below, mixed if it straddles -1 point."""
    interval = paired_interval(arm_acc, bn_acc)
    return decide(RULE, interval), interval


# --- the claims ---------------------------------------------------------------------------


def _accs(rows: Sequence[dict]) -> list[float]:
    return [r["test"] or 0.0 for r in rows]


def _stats_plot(context: ClaimContext, rows: Sequence[dict], config: SelfNormConfig,
                depth: int) -> str:
    path = context.folder / f"activations_depth{depth}.png"

    def draw(figure: Any) -> None:
        left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
        for arm in config.arms:
            chosen = _val_row(rows, arm, depth)[1]
            layers = np.arange(1, depth + 1)
            for axis, key in ((left, "act_mean"), (right, "act_var")):
                table = np.array([[np.nan if v is None else v for v in r[key]] for r in chosen])
                mean_band(axis, layers, table, label=arm)
        left.set_ylabel("mean of hidden outputs")
        right.set_ylabel("variance of hidden outputs")
        right.set_yscale("log")
        for axis in (left, right):
            axis.set_xlabel("hidden layer")
        left.legend(fontsize="x-small")

    save_plot(path, (11, 4), draw)
    return context.relative(path)


def _loss_plot(context: ClaimContext, rows: Sequence[dict], config: SelfNormConfig,
               depth: int) -> str:
    path = context.folder / f"loss_depth{depth}.png"
    every = max(config.steps // 25, 1)

    def draw(figure: Any) -> None:
        axis = figure.add_subplot(1, 1, 1)
        for arm in config.arms:
            chosen = _val_row(rows, arm, depth)[1]
            table = np.array([[np.nan if v is None else v for v in r["curve"]] for r in chosen])
            mean_band(axis, (np.arange(table.shape[1]) + 1) * every, table, label=arm)
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.set_yscale("log")
        axis.legend(fontsize="x-small")

    save_plot(path, (6.5, 4.2), draw)
    return context.relative(path)


def _edges(rows: Sequence[dict], arm: str, depth: int) -> tuple[float, float]:
    tried = sorted({r["lr"] for r in rows if r["arm"] == arm and r["depth"] == depth})
    return tried[0], tried[-1]


def _late(chosen: Sequence[dict]) -> Interval:
    """Convergence check of the chosen rate's networks: validation accuracy at the end
    minus at 80% of the steps (a diverged network counts as 0)."""
    return late_change([{"val": r["val"] or 0.0, "val_at_80": r.get("val_at_80") or 0.0}
                        for r in chosen])


def _table(rows: Sequence[dict], config: SelfNormConfig) -> list[str]:
    lines = ["| depth | arm | rates tried | lr | test acc % [95%] | val acc end - at 80% of "
             "steps, points [95%] | loss variance, last epoch [95%] | "
             "last-layer mean / variance |", "|---|---|---|---|---|---|---|---|"]
    for depth in config.depths:
        for arm in config.arms:
            lr, chosen = _val_row(rows, arm, depth)
            tried = sorted({r["lr"] for r in rows if r["arm"] == arm and r["depth"] == depth})
            var = mean_interval([r["loss_var"] if r["loss_var"] is not None else math.inf
                                 for r in chosen]) if all(r["loss_var"] is not None
                                                          for r in chosen) else None
            mean = np.mean([r["act_mean"][-1] or 0 for r in chosen])
            variance = np.mean([r["act_var"][-1] or 0 for r in chosen])
            lines.append(f"| {depth} | {arm} | {', '.join(f'{t:g}' for t in tried)} | {lr:g} | "
                         f"{mean_interval(_accs(chosen)).format(100, 2)} | "
                         f"{_late(chosen).format(100, 2)} | "
                         f"{'diverged' if var is None else var.format(1, 4)} | "
                         f"{mean:+.2f} / {variance:.2f} |")
    return lines


def _run(config: SelfNormConfig, context: ClaimContext, contender: Sequence[str],
         who: str) -> ClaimResult:
    missing = [a for a in (*contender, *BN_ARMS) if a not in config.arms]
    if missing:
        raise ValueError(f"{context.claim_id}: the config lacks arms {missing}")
    rows, extensions = trainings(config, context)
    deep = config.depths[-1]
    bn_arm = best_arm(rows, BN_ARMS, deep)
    arm = best_arm(rows, contender, deep)
    bn_lr, bn_rows = _val_row(rows, bn_arm, deep)
    lr, arm_rows = _val_row(rows, arm, deep)
    verdict, interval = margin_verdict(_accs(arm_rows), _accs(bn_rows))
    per_depth = []
    for depth in config.depths:
        a = best_arm(rows, contender, depth)
        b = best_arm(rows, BN_ARMS, depth)
        d = paired_interval(_accs(_val_row(rows, a, depth)[1]), _accs(_val_row(rows, b, depth)[1]))
        per_depth.append(f"| {depth} | {a} | {b} | {d.format(100, 2)} |")
    plots = tuple(p for depth in config.depths for p in (
        _stats_plot(context, rows, config, depth), _loss_plot(context, rows, config, depth)))
    extra = ""
    if who == "elu":
        gain = paired_interval(_accs(_val_row(rows, "elu-bn", deep)[1]),
                               _accs(_val_row(rows, "elu", deep)[1]))
        extra = (f" Clevert's second point, BN does not improve ELU: ELU+BN - ELU = "
                 f"{gain.format(100, 2)} points at depth {deep}.")
    var_arm = np.mean([r["loss_var"] or math.inf for r in arm_rows])
    var_bn = np.mean([r["loss_var"] or math.inf for r in bn_rows])
    acc_arm = mean_interval(_accs(arm_rows))
    acc_bn = mean_interval(_accs(bn_rows))
    late_arm, late_bn = _late(arm_rows), _late(bn_rows)
    finding = (f"At depth {deep}, {arm} (lr {lr:g}) reached {acc_arm.format(100, 2)}% test "
               f"accuracy, the best BN arm {bn_arm} (lr {bn_lr:g}) {acc_bn.format(100, 2)}%; "
               f"difference {interval.format(100, 2)} points -> {verdict}. ")
    finding += {"supported": f"{who.upper()} without BN matched BN within 1 point, as the "
                             "source claims.",
                "not supported": f"{who.upper()} without BN fell more than 1 point behind "
                                 "BN, against the source.",
                "mixed": "The interval straddles the -1-point margin: the seeds cannot tell "
                         "whether it is within 1 point of BN."
                }[verdict]
    finding += (f" Validation accuracy over the last 20% of training changed by "
                f"{late_arm.format(100, 2)} points ({arm}) and {late_bn.format(100, 2)} "
                f"({bn_arm}).")
    finding += (f" Training-loss variance over the last epoch: {var_arm:.3g} ({arm}) vs "
                f"{var_bn:.3g} ({bn_arm}).{extra}")
    ext_text = ("; ".join(f"{e['arm']} depth {e['depth']}: {e['edge']:g} won, "
                          f"tried {e['lr']:g}" for e in extensions) or "none was needed")
    still = [f"{a} depth {d}" for d in config.depths for a in config.arms
             if _val_row(rows, a, d)[0] in _edges(rows, a, d)]
    if still:
        ext_text += f"; still at an edge of the rates tried: {', '.join(still)}"
    section = "\n".join([
        f"{config.dataset} MLPs 784-{config.width}xdepth-10, depths {list(config.depths)}, "
        f"{config.steps} SGD steps of {config.batch} on {config.train} training rows "
        f"({config.steps * config.batch / config.train:.1f} epochs; validation "
        f"{config.val}), rates {list(config.lrs)} tuned per arm and depth on validation; a "
        f"rate at the edge of an arm's grid that wins on validation extends that arm's grid "
        f"by one factor past it (at most {config.extend} times): {ext_text}. "
        f"{len(config.seeds)} seeds; test accuracy on {config.test} images. Convergence "
        f"check: validation accuracy at the end minus at 80% of the steps, per arm at its "
        f"chosen rate (near 0: converged for this schedule; clearly positive: still "
        f"learning).", "",
        "| depth | best non-BN arm | best BN arm | difference, points [95%] |",
        "|---|---|---|---|", *per_depth, "", *_table(rows, config), "",
        *[f"![{p}]({p})" for p in plots]])
    return ClaimResult(verdict, f"test acc {arm} - best BN arm ({bn_arm}), depth {deep}",
                       interval, finding, section,
                       {"arm": arm, "bn_arm": bn_arm, "lr": lr, "bn_lr": bn_lr,
                        "extensions": extensions,
                        "late_change": {arm: late_arm.to_dict(), bn_arm: late_bn.to_dict()}},
                       plots)


def _run_selu(config: SelfNormConfig, context: ClaimContext) -> ClaimResult:
    return _run(config, context, SELU_ARMS, "selu")


def _run_elu(config: SelfNormConfig, context: ClaimContext) -> ClaimResult:
    return _run(config, context, ("elu",), "elu")


_MEASURED = ("Fashion-MNIST MLPs at depths 8 and 32 (width 64 by default): SELU + LeCun "
             "(AlphaDropout 0 and 0.05), ELU, ELU+BN, ReLU + He, ReLU+BN before and after the "
             "activation, each at its own validation-tuned rate (grid extended past a winning "
             "edge rate); test accuracy, the change of validation accuracy over the last 20% "
             "of training, loss variance over the last epoch, activation mean and variance by "
             "depth.")

SELU = ClaimSpec(
    id="selu", title="Self-normalizing networks need no BN",
    source="Klambauer et al. 2017",
    statement="Deep SELU networks (LeCun init) keep their activations near zero mean and "
              "unit variance without normalization and train as well as BN networks, with a "
              "steadier training loss.",
    measured=_MEASURED,
    rule=f"{RULE.describe()} (the better SELU variant on validation against the best BN arm "
         "on validation, at the deepest depth)",
    presets=PRESETS, run=_run_selu)

ELU = ClaimSpec(
    id="elu", title="ELU networks need no BN",
    source="Clevert et al. 2016",
    statement="ELU networks learn as well as ReLU networks with BN, and BN does not improve "
              "ELU networks.",
    measured=_MEASURED,
    rule=f"{RULE.describe()} (ELU without BN against the best BN arm on validation, at the "
         "deepest depth)",
    presets=PRESETS, run=_run_elu)
