"""Shared training machinery of the claims: MLP grids as one stack, convnet runs, evaluation,
learning-rate selection on validation and the "trains" criterion.

Two kinds of sub-run, each cached through :meth:`ClaimContext.memo` under a key holding
everything that decides its numbers (with :data:`VERSION`, bumped whenever the code
changes them), so claims with equal keys share them:

* :func:`mlp_grid`: one :class:`~batchnorm.models.stacked.StackedMLP` of K networks
  (network k: its lr, seed and init scale), trained by :class:`StackedSGD` on seed-paired
  batches; network k's initial weights are ``scale_k * N(0, init_std^2)`` drawn from its
  seed's ``init`` stream, its batches from its seed's ``data`` stream, so the networks of
  one seed see the same batches whatever their lr, arm or scale;
* :func:`convnet_runs`: :class:`~batchnorm.models.SmallConvNet` runs, one per
  (arm, lr, seed, ...), SGD with momentum; a run whose loss turns non-finite stops there.

Every sub-run reports per network: ``val`` (final validation accuracy), ``val_at_80``
(validation accuracy at 80% of the steps: the convergence check), ``test`` (final test
accuracy), ``train_acc`` (accuracy on the first ``train_eval`` training images, eval
mode; None when ``train_eval`` is 0), ``train_loss`` (mean training loss over the last
10% of the steps, None if not finite) and ``finite``. Accuracies are fractions in [0, 1].

Selection (never on test): :func:`best_lr` is the rate with the highest seed-mean final
validation accuracy (ties: the smaller rate). :func:`trains`: a run trains when its loss
stayed finite and its final validation accuracy is at least :data:`TRAINS_FRACTION` of the
best final validation accuracy of its arm and seed over the grid;
:func:`max_trainable_lr` is the largest rate of a seed that trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchnorm.experiments.claims.base import ClaimContext
from batchnorm.experiments.claims.data import Split, load_split
from batchnorm.experiments.runner import SeedStreams
from batchnorm.experiments.runner.evidence import Interval, mean_interval
from batchnorm.experiments.runner.plots import mean_band, save_plot
from batchnorm.models.stacked import StackedMLP, StackedSGD, gather_batches, stacked_cross_entropy

__all__ = [
    "ACTIVATIONS",
    "SEEDS",
    "TRAINS_FRACTION",
    "VERSION",
    "ConvRun",
    "DataSpec",
    "MLPGrid",
    "batch_indices",
    "best_lr",
    "convnet_runs",
    "late_change",
    "lr_grid",
    "max_trainable_lr",
    "mlp_grid",
    "per_seed",
    "percent",
    "plot_lines",
    "train_convnet",
    "train_mlp_grid",
    "trains",
]

#: Bump when a change of this module changes the numbers of a sub-run (invalidates caches).
VERSION = "claims-training-1"
SEEDS = SeedStreams("init", "data", "dropout")
#: A run trains when its final validation accuracy is >= this fraction of its arm and
#: seed's best over the grid (and its loss stayed finite).
TRAINS_FRACTION = 0.9
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU,
                                                   "tanh": nn.Tanh}
EVAL_CHUNK = 2000


@dataclass(frozen=True)
class DataSpec:
    """Which split: dataset name and the sizes of :func:`load_split` (None: all rows)."""

    name: str = "mnist"
    train: int | None = None
    val: int = 5000
    test: int | None = None

    def key(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, context: ClaimContext, *, flat: bool) -> Split:
        """The split on the context's device, loaded once per lab run and shape."""
        name = f"split:{self.name}:{self.train}:{self.val}:{self.test}:{flat}"
        if name not in context.datasets:
            context.datasets[name] = load_split(context, self.name, train=self.train,
                                                val=self.val, test=self.test, flat=flat)
        return context.datasets[name]


def lr_grid(low: float, high: float, per_decade: int) -> tuple[float, ...]:
    """Log-spaced rates from ``low`` to ``high`` with ``per_decade`` points per factor 10
    (e.g. 2: factor sqrt(10) steps), rounded to 4 significant digits."""
    if not 0 < low <= high or per_decade < 1:
        raise ValueError(f"lr_grid: need 0 < low <= high and per_decade >= 1, got "
                         f"{low}, {high}, {per_decade}")
    count = round(math.log10(high / low) * per_decade)
    return tuple(float(f"{low * 10 ** (i / per_decade):.4g}") for i in range(count + 1))


def batch_indices(n: int, batch_size: int, steps: int, seed: int) -> Tensor:
    """(steps, batch_size) int64 indices into ``n`` examples: consecutive epochs, each a
    fresh permutation from ``seed``'s data stream (an epoch's remainder is dropped)."""
    if not 0 < batch_size <= n:
        raise ValueError(f"batch_indices: batch size {batch_size} not in [1, {n}]")
    generator = SEEDS.generator(seed, "data")
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    parts = [torch.randperm(n, generator=generator)[:per_epoch * batch_size]
             for _ in range(epochs)]
    return torch.cat(parts).view(-1, batch_size)[:steps]


def _schedule(steps: int) -> tuple[int, int, int]:
    """(step of the 80% evaluation, first step of the final 10% loss window, steps)."""
    return max(1, round(0.8 * steps)), steps - max(1, steps // 10), steps


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ----------------------------------------------------------------------------- MLP grids


@dataclass(frozen=True)
class MLPGrid:
    """One arm's stack: network k has ``lrs[k]``, ``seeds[k]``, ``scales[k]``."""

    sizes: tuple[int, ...]
    batch_norm: bool
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]
    scales: tuple[float, ...]
    steps: int
    init_std: float = 0.1
    batch_size: int = 60
    momentum: float = 0.0
    activation: str = "sigmoid"
    bn_momentum: float = 0.1
    train_eval: int = 5000

    def __post_init__(self) -> None:
        if not len(self.lrs) == len(self.seeds) == len(self.scales) > 0:
            raise ValueError(f"MLPGrid: {len(self.lrs)} lrs, {len(self.seeds)} seeds, "
                             f"{len(self.scales)} scales; need one of each per network")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"MLPGrid: activation {self.activation!r} not in "
                             f"{sorted(ACTIVATIONS)}")

    @classmethod
    def product(cls, *, lrs: Sequence[float], seeds: Sequence[int],
                scales: Sequence[float] = (1.0,), **settings: Any) -> MLPGrid:
        """Every (lr, scale, seed) combination, lr outermost."""
        combos = [(lr, scale, seed) for lr in lrs for scale in scales for seed in seeds]
        return cls(lrs=tuple(c[0] for c in combos), scales=tuple(c[1] for c in combos),
                   seeds=tuple(c[2] for c in combos), **settings)

    def key(self) -> dict[str, Any]:
        return {"kind": "mlp-grid", "version": VERSION, **asdict(self)}


@torch.no_grad()
def _stack_accuracy(stack: StackedMLP, x: Tensor, y: Tensor) -> Tensor:
    """(K,) eval-mode accuracy of every network on (x, y), in chunks."""
    was_training = stack.training
    stack.eval()
    correct = torch.zeros(stack.num_networks, dtype=torch.float64, device=x.device)
    try:
        for start in range(0, len(y), EVAL_CHUNK):
            logits = stack(x[start:start + EVAL_CHUNK])
            correct += (logits.argmax(dim=2) == y[start:start + EVAL_CHUNK]).sum(dim=1)
    finally:
        stack.train(was_training)
    return correct / len(y)


def train_mlp_grid(grid: MLPGrid, split: Split,
                   progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Train ``grid`` on ``split`` (flat inputs); one result dict per network (module doc)."""
    device = split.train_x.device
    K = len(grid.lrs)
    stack = StackedMLP(K, grid.sizes, batch_norm=grid.batch_norm, init_std=grid.init_std,
                       generators=[SEEDS.generator(seed, "init") for seed in grid.seeds],
                       bn_kwargs={"momentum": grid.bn_momentum},
                       activation=ACTIVATIONS[grid.activation]).to(device)
    with torch.no_grad():
        scales = torch.tensor(grid.scales, dtype=torch.float32, device=device)
        for weight, _ in stack._linears():
            weight.mul_(scales.view(-1, 1, 1))
    optimizer = StackedSGD(stack, list(grid.lrs), grid.momentum)
    distinct = list(dict.fromkeys(grid.seeds))
    streams = torch.stack([batch_indices(len(split.train_y), grid.batch_size, grid.steps, s)
                           for s in distinct], dim=1).to(device)  # (steps, seeds, batch)
    picks = torch.tensor([distinct.index(s) for s in grid.seeds], device=device)
    at_80, window, steps = _schedule(grid.steps)
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    val_80 = None
    stack.train()
    for step in range(steps):
        index = streams[step].index_select(0, picks)
        losses = stacked_cross_entropy(stack(gather_batches(split.train_x, index)),
                                       gather_batches(split.train_y, index))
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        if step >= window:
            loss_sum += losses.detach()
        if step + 1 == at_80:
            val_80 = _stack_accuracy(stack, split.val_x, split.val_y)
        if progress is not None and (step + 1) % 50 == 0:
            progress(50)
    if progress is not None:
        progress(steps % 50)
    val = _stack_accuracy(stack, split.val_x, split.val_y)
    test = _stack_accuracy(stack, split.test_x, split.test_y)
    n_train = min(grid.train_eval, len(split.train_y))
    train_acc = (_stack_accuracy(stack, split.train_x[:n_train], split.train_y[:n_train])
                 if n_train else torch.full((K,), math.nan))
    train_loss = (loss_sum / (steps - window)).tolist()
    assert val_80 is not None
    return [{"lr": grid.lrs[k], "seed": grid.seeds[k], "scale": grid.scales[k],
             "val": float(val[k]), "val_at_80": float(val_80[k]), "test": float(test[k]),
             "train_acc": _finite_or_none(float(train_acc[k])),
             "train_loss": _finite_or_none(train_loss[k]),
             "finite": math.isfinite(train_loss[k])} for k in range(K)]


def mlp_grid(context: ClaimContext, data: DataSpec, grid: MLPGrid,
             desc: str) -> list[dict[str, Any]]:
    """:func:`train_mlp_grid` through the memo (data loaded only when it must train)."""
    def compute() -> list[dict[str, Any]]:
        split = data.load(context, flat=True)
        with context.bar(grid.steps, desc) as bar:
            bar.start()
            done = [0]

            def advance(count: int) -> None:
                done[0] += count
                bar.advance_to(done[0])

            return train_mlp_grid(grid, split, advance)

    return context.memo({"data": data.key(), **grid.key()}, compute)


# ----------------------------------------------------------------------------- convnets


@dataclass(frozen=True)
class ConvRun:
    """One :class:`SmallConvNet` training (norm: this project's BatchNorm2d/1d or none)."""

    batch_norm: bool
    lr: float
    seed: int
    steps: int
    batch_size: int = 64
    momentum: float = 0.9
    channels: tuple[int, int] = (8, 16)
    hidden: int = 64
    dropout: float = 0.0
    init_scale: float = 1.0
    train_eval: int = 5000

    def key(self) -> dict[str, Any]:
        return {"kind": "convnet", "version": VERSION, **asdict(self)}

    def build(self) -> nn.Module:
        from batchnorm import BatchNorm1d, BatchNorm2d
        from batchnorm.models import SmallConvNet

        return SmallConvNet(norm2d=BatchNorm2d if self.batch_norm else None,
                            norm1d=BatchNorm1d if self.batch_norm else None,
                            channels=self.channels, hidden=self.hidden, dropout=self.dropout,
                            init_scale=self.init_scale,
                            generator=SEEDS.generator(self.seed, "init"))


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    was_training = model.training
    model.eval()
    try:
        correct = sum(int((model(x[i:i + EVAL_CHUNK]).argmax(dim=1)
                           == y[i:i + EVAL_CHUNK]).sum()) for i in range(0, len(y), EVAL_CHUNK))
    finally:
        model.train(was_training)
    return correct / len(y)


def train_convnet(run: ConvRun, split: Split) -> dict[str, Any]:
    """Train ``run`` on ``split`` (image inputs); the result dict of the module doc.

    Dropout draws from the run's ``dropout`` stream (the global generator, forked); the
    loss is checked every 25 steps and a non-finite loss ends the run (then it counts as
    not finite, its accuracies are those of the model as it stands).
    """
    device = split.train_x.device
    model = run.build().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=run.lr, momentum=run.momentum)
    index = batch_indices(len(split.train_y), run.batch_size, run.steps, run.seed).to(device)
    at_80, window, steps = _schedule(run.steps)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    val_80 = None
    finite = True
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(SEEDS(run.seed)["dropout"])
        model.train()
        for step in range(steps):
            batch = index[step]
            loss = F.cross_entropy(model(split.train_x[batch]), split.train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step >= window:
                loss_sum += loss.detach()
            if step % 25 == 24 and not math.isfinite(float(loss.detach())):
                finite = False
                break
            if step + 1 == at_80:
                val_80 = _accuracy(model, split.val_x, split.val_y)
    val = _accuracy(model, split.val_x, split.val_y)
    mean_loss = float(loss_sum) / (steps - window)
    finite = finite and math.isfinite(mean_loss)
    n_train = min(run.train_eval, len(split.train_y))
    return {"lr": run.lr, "seed": run.seed, "scale": run.init_scale, "val": val,
            "val_at_80": val if val_80 is None else val_80,
            "test": _accuracy(model, split.test_x, split.test_y),
            "train_acc": (_accuracy(model, split.train_x[:n_train], split.train_y[:n_train])
                          if n_train else None),
            "train_loss": mean_loss if finite else None, "finite": finite}


def convnet_runs(context: ClaimContext, data: DataSpec, runs: Sequence[ConvRun],
                 desc: str) -> list[dict[str, Any]]:
    """Every run of ``runs`` through the memo, with a progress bar over their steps."""
    results = []
    with context.bar(sum(run.steps for run in runs), desc) as bar:
        bar.start()
        done = 0
        for run in runs:
            results.append(context.memo(
                {"data": data.key(), **run.key()},
                lambda run=run: train_convnet(run, data.load(context, flat=False))))
            done += run.steps
            bar.advance_to(done)
    return results


# ----------------------------------------------------------------------------- selection


def per_seed(results: Iterable[Mapping[str, Any]], metric: str, **where: Any
             ) -> dict[float, list[float]]:
    """lr -> the ``metric`` of each seed (in seed order) among results matching ``where``."""
    table: dict[float, dict[int, float]] = {}
    for result in results:
        if all(result[name] == value for name, value in where.items()):
            table.setdefault(result["lr"], {})[result["seed"]] = result[metric]
    return {lr: [values[s] for s in sorted(values)] for lr, values in sorted(table.items())}


def best_lr(results: Iterable[Mapping[str, Any]], metric: str = "val", **where: Any) -> float:
    """The rate with the highest seed-mean ``metric`` (validation); ties: the smaller rate."""
    table = per_seed(results, metric, **where)
    if not table:
        raise ValueError(f"best_lr: no results match {where}")
    return max(table, key=lambda lr: (float(np.mean(table[lr])), -lr))


def trains(result: Mapping[str, Any], best_val: float) -> bool:
    """The criterion (module doc): finite loss, val >= TRAINS_FRACTION * best_val."""
    return bool(result["finite"]) and result["val"] >= TRAINS_FRACTION * best_val


def max_trainable_lr(results: Iterable[Mapping[str, Any]], seed: int, **where: Any
                     ) -> float | None:
    """The largest rate of ``seed`` that :func:`trains` (None if none does)."""
    mine = [r for r in results
            if r["seed"] == seed and all(r[k] == v for k, v in where.items())]
    if not mine:
        raise ValueError(f"max_trainable_lr: no results for seed {seed} and {where}")
    best = max(r["val"] for r in mine)
    passing = [r["lr"] for r in mine if trains(r, best)]
    return max(passing) if passing else None


# ----------------------------------------------------------------------------- reporting


def late_change(results: Iterable[Mapping[str, Any]]) -> Interval:
    """The convergence check: per run, final validation accuracy minus that at 80% of the
    steps, over the runs (seeds) given."""
    return mean_interval([r["val"] - r["val_at_80"] for r in results])


def percent(values: Sequence[float]) -> str:
    """``"97.12 [96.80, 97.44]"``: mean and 95% interval over seeds, in percent."""
    interval: Interval = mean_interval(values)
    if interval.low is None or interval.high is None:
        return f"{100 * interval.mean:.2f}"
    return f"{100 * interval.mean:.2f} [{100 * interval.low:.2f}, {100 * interval.high:.2f}]"


def plot_lines(path: Path, x: Sequence[float], series: Mapping[str, np.ndarray], *,
               xlabel: str, ylabel: str, title: str, logx: bool = True,
               ylim: tuple[float, float] | None = (0.0, 1.0)) -> None:
    """One axis: per label a (seeds, len(x)) table as its seed-mean line and seed band."""
    def draw(figure: Any) -> None:
        axis = figure.add_subplot(1, 1, 1)
        for label, table in series.items():
            mean_band(axis, list(x), np.asarray(table, dtype=float), label=label, marker="o",
                      markersize=3)
        if logx:
            axis.set_xscale("log")
        if ylim is not None:
            axis.set_ylim(*ylim)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.legend()

    save_plot(path, (6.5, 4.2), draw)
