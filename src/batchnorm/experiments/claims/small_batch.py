"""Ioffe 2017 (Batch Renormalization): BN suffers at small batches; Batch Renorm fixes it.

The lab's :class:`~batchnorm.models.SmallConvNet` on Fashion-MNIST, every arm seeing the
same number of training samples (so a smaller batch takes more SGD steps):

* BN (this project's BatchNorm2d/1d) and Batch Renorm (:mod:`batchnorm.renorm`) at
  per-step batches ``batches`` (default 2, 4, 8, 32);
* torch's GroupNorm (no batch statistics: the batch-independent reference) at
  ``gn_batches``;
* Ghost BN (:mod:`batchnorm.ghost`) at the large batch ``large_batch`` with ghost batches
  of ``ghost_size``, and BN at the same large batch as its control.

**Our choices.** SGD with momentum 0.9, lr = c * B / 32 (the linear scaling rule: equal
samples, equal noise scale), the constant c tuned per arm (kind, batch) on seed 0's
validation accuracy over ``lr_constants``; the other seeds run at the chosen c.
Batch Renorm's schedule is scaled to each run's length: plain BN for the first 10% of the
steps, then rmax 1 -> 3 and dmax 0 -> 5 linearly over the next 30% (the paper: 5k warm-up
steps of a run of about 100k+). Normalization momentum is torch's 0.1 for every arm.
Accuracies are in eval mode (running statistics: where small batches hurt) on the test
rows; choices are made on validation only. Seeds pair the arms of one batch size (same
initial weights and the same batches).

The rule (:func:`verdict`, fixed before the run): supported if the seed-paired 95%
interval of ``test(Batch Renorm at 4) - test(BN at 4)`` lies above :data:`MARGIN`
(half a point; Ioffe reports +2.3 points at batch 4 on ImageNet, 74.2% -> 76.5%, with
batch-32 BN at 78.3%); not supported if it lies below; mixed if it straddles it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.data import Split
from batchnorm.experiments.claims.training import SEEDS, DataSpec, batch_indices, percent
from batchnorm.experiments.runner import POSITIVE, Settings, setting
from batchnorm.experiments.runner.evidence import (
    Interval,
    Rule,
    Verdict,
    decide,
    paired_interval,
)
from batchnorm.experiments.runner.plots import mean_band, save_plot

__all__ = ["ANCHOR_BATCH", "CLAIM", "KINDS", "MARGIN", "RULE", "Arm", "SmallBatchConfig",
           "SmallBatchRun", "train_run", "verdict"]

#: Bump when a change of this module changes the numbers of a sub-run (invalidates caches).
VERSION = "small-batch-1"
KINDS = ("bn", "renorm", "gn", "ghost")
KIND_NAMES = {"bn": "BN", "renorm": "Batch Renorm", "gn": "GroupNorm", "ghost": "Ghost BN"}
ANCHOR_BATCH = 4
MARGIN = 0.005
RULE = Rule("Batch Renorm beats BN at batch 4",
            "test accuracy of Batch Renorm minus BN at batch 4 (fraction, seed-paired)",
            "greater", MARGIN)
EVAL_CHUNK = 2000
WARMUP_FRACTION, RAMP_FRACTION = 0.1, 0.3


@dataclass(frozen=True)
class SmallBatchConfig(Settings):
    """default (2 cores, --threads 1, <= 8 min): 1000 samples per run (batch 2: 500 steps,
    batch 128: 7), BN and Batch Renorm at 2/4/8/32, GroupNorm at 4, Ghost BN (ghost 32) and
    BN at 128; 2 lr constants on seed 0, then 3 more seeds: 11 arms, 55 runs. Small, to fit
    the lab's CPU budget (per-step overhead dominates at batch 2); the gpu preset is the
    real size."""

    seeds: int = setting(4, "seeds per arm", check=POSITIVE)
    samples: int = setting(1000, "training samples seen by every run", check=POSITIVE)
    batches: tuple[int, ...] = setting((2, 4, 8, 32), "per-step batches of BN and Batch Renorm",
                                       check=POSITIVE)
    gn_batches: tuple[int, ...] = setting((4,), "per-step batches of GroupNorm",
                                          check=POSITIVE)
    large_batch: int = setting(128, "batch of Ghost BN and its BN control", check=POSITIVE)
    ghost_size: int = setting(32, "Ghost BN's virtual batch size", check=POSITIVE)
    gn_groups: int = setting(4, "GroupNorm groups", check=POSITIVE)
    lr_constants: tuple[float, ...] = setting((0.05, 0.15),
                                              "lr = c * batch / 32; c tuned per arm",
                                              check=POSITIVE)
    train: int | None = setting(20000, "training rows (None: all 55k)")
    val: int = setting(1000, "validation rows (for the lr choice)", check=POSITIVE)
    test: int | None = setting(2000, "test rows (None: all 10k)")
    channels: tuple[int, ...] = setting((8, 16), "convnet channels", check=POSITIVE)
    hidden: int = setting(64, "convnet hidden units", check=POSITIVE)


PRESETS = {
    "quick": SmallBatchConfig(seeds=2, samples=192, batches=(4, 32), gn_batches=(4,),
                              large_batch=64, ghost_size=16, lr_constants=(0.1,), train=5000,
                              val=500, test=500),
    "default": SmallBatchConfig(),
    "gpu": SmallBatchConfig(seeds=5, samples=55000, gn_batches=(2, 4, 8, 32), large_batch=256,
                            lr_constants=(0.01, 0.03162, 0.1, 0.3162, 1.0), train=None,
                            val=5000, test=None, channels=(16, 32), hidden=128),
}


@dataclass(frozen=True)
class Arm:
    """A normalization kind at a per-step batch (``ghost``: ghost batches of ``ghost``)."""

    kind: str
    batch: int
    ghost: int = 0

    @property
    def name(self) -> str:
        text = f"{self.kind}@{self.batch}"
        return text + (f"/{self.ghost}" if self.kind == "ghost" else "")

    @property
    def label(self) -> str:
        extra = f", ghost {self.ghost}" if self.kind == "ghost" else ""
        return f"{KIND_NAMES[self.kind]} (batch {self.batch}{extra})"


def arms(config: SmallBatchConfig) -> list[Arm]:
    """Every arm of ``config``, in report order."""
    found = [Arm(kind, batch) for kind in ("bn", "renorm") for batch in config.batches]
    found += [Arm("gn", batch) for batch in config.gn_batches]
    found += [Arm("bn", config.large_batch), Arm("ghost", config.large_batch, config.ghost_size)]
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class SmallBatchRun:
    """One training: arm, lr, seed, and everything else that decides its numbers."""

    kind: str
    batch: int
    lr: float
    seed: int
    samples: int
    ghost: int = 0
    gn_groups: int = 4
    channels: tuple[int, ...] = (8, 16)
    hidden: int = 64
    momentum: float = 0.9

    @property
    def steps(self) -> int:
        return max(1, self.samples // self.batch)

    def key(self) -> dict[str, Any]:
        return {"kind": "small-batch", "version": VERSION, **asdict(self)}

    def norms(self) -> tuple[Callable[[int], nn.Module], Callable[[int], nn.Module]]:
        """(norm2d, norm1d) factories of this run's kind."""
        from batchnorm import (
            BatchNorm1d,
            BatchNorm2d,
            BatchRenorm1d,
            BatchRenorm2d,
            GhostBatchNorm1d,
            GhostBatchNorm2d,
        )

        if self.kind == "bn":
            return BatchNorm2d, BatchNorm1d
        if self.kind == "renorm":
            schedule = {"warmup_steps": round(WARMUP_FRACTION * self.steps),
                        "ramp_steps": round(RAMP_FRACTION * self.steps)}
            return (lambda c: BatchRenorm2d(c, **schedule),
                    lambda c: BatchRenorm1d(c, **schedule))
        if self.kind == "ghost":
            return (lambda c: GhostBatchNorm2d(c, self.ghost),
                    lambda c: GhostBatchNorm1d(c, self.ghost))
        if self.kind == "gn":
            def group_norm(c: int) -> nn.Module:
                return nn.GroupNorm(math.gcd(self.gn_groups, c), c)

            return group_norm, group_norm
        raise ValueError(f"small-batch: unknown kind {self.kind!r}; expected one of {KINDS}")

    def build(self) -> nn.Module:
        from batchnorm.models import SmallConvNet

        norm2d, norm1d = self.norms()
        return SmallConvNet(norm2d=norm2d, norm1d=norm1d, channels=self.channels,
                            hidden=self.hidden, generator=SEEDS.generator(self.seed, "init"))


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + EVAL_CHUNK]).argmax(dim=1) == y[i:i + EVAL_CHUNK]).sum())
                  for i in range(0, len(y), EVAL_CHUNK))
    return correct / len(y)


def train_run(run: SmallBatchRun, split: Split,
              progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train ``run``; eval-mode validation and test accuracy (fractions), the mean training
    loss over the last 10% of the steps, and whether the loss stayed finite (checked every
    25 steps; a non-finite loss ends the run, which then keeps the model as it stands)."""
    device = split.train_x.device
    model = run.build().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=run.lr, momentum=run.momentum)
    index = batch_indices(len(split.train_y), run.batch, run.steps, run.seed).to(device)
    window = run.steps - max(1, run.steps // 10)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    finite = True
    model.train()
    for step in range(run.steps):
        batch = index[step]
        loss = F.cross_entropy(model(split.train_x[batch]), split.train_y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= window:
            loss_sum += loss.detach()
        if step % 25 == 24:
            if not math.isfinite(float(loss.detach())):
                finite = False
                break
            if progress is not None:
                progress(25)
    mean_loss = float(loss_sum) / (run.steps - window)
    finite = finite and math.isfinite(mean_loss)
    return {"lr": run.lr, "seed": run.seed, "val": _accuracy(model, split.val_x, split.val_y),
            "test": _accuracy(model, split.test_x, split.test_y),
            "train_loss": mean_loss if finite else None, "finite": finite}


def verdict(renorm: Sequence[float], bn: Sequence[float]) -> tuple[Verdict, Interval]:
    """:data:`RULE` on per-seed test accuracies of Batch Renorm and BN at batch 4 (module doc)."""
    interval = paired_interval(renorm, bn)
    return decide(RULE, interval), interval


def _lr(constant: float, batch: int) -> float:
    return float(f"{constant * batch / 32:.4g}")


def _run_arms(config: SmallBatchConfig, context: ClaimContext) -> tuple[
        dict[Arm, list[dict[str, Any]]], dict[Arm, float], dict[Arm, list[dict[str, Any]]]]:
    """arm -> per-seed results at its chosen constant; arm -> that constant; arm -> seed 0's
    validation accuracy at every constant."""
    data = DataSpec("fashion-mnist", config.train, config.val, config.test)
    common = {"samples": config.samples, "gn_groups": config.gn_groups,
              "channels": tuple(config.channels), "hidden": config.hidden}
    selected = arms(config)

    def runs_of(arm: Arm, constants: Sequence[float], seeds: Sequence[int]
                ) -> list[SmallBatchRun]:
        return [SmallBatchRun(arm.kind, arm.batch, _lr(c, arm.batch), seed, ghost=arm.ghost,
                              **common) for c in constants for seed in seeds]  # fmt: skip

    steps = {arm: max(1, config.samples // arm.batch) for arm in selected}
    total = sum(steps[arm] * (len(config.lr_constants) + config.seeds - 1) for arm in selected)
    results: dict[Arm, list[dict[str, Any]]] = {}
    chosen: dict[Arm, float] = {}
    tuning: dict[Arm, list[dict[str, Any]]] = {}
    with context.bar(total, "arms x lr x seeds (steps)") as bar:
        bar.start()
        done = [0, 0]  # steps finished (whole runs), steps of the run in flight

        def advance(count: int) -> None:
            done[1] += count
            bar.advance_to(done[0] + done[1])

        def memo(run: SmallBatchRun) -> dict[str, Any]:
            done[1] = 0
            value = context.memo({"data": data.key(), **run.key()},
                                 lambda: train_run(run, data.load(context, flat=False), advance))
            done[0] += run.steps
            bar.advance_to(done[0])
            return value

        for arm in selected:
            first = [memo(run) for run in runs_of(arm, config.lr_constants, [0])]
            best = max(range(len(first)),
                       key=lambda i: (first[i]["val"] if first[i]["finite"] else -1.0,
                                      -config.lr_constants[i]))  # fmt: skip
            chosen[arm] = config.lr_constants[best]
            tuning[arm] = [{"c": c, "val": r["val"], "finite": r["finite"]}
                           for c, r in zip(config.lr_constants, first, strict=True)]
            rest = [memo(run) for run in runs_of(arm, [chosen[arm]], range(1, config.seeds))]
            results[arm] = [first[best], *rest]
    return results, chosen, tuning


def _plot(path: Any, config: SmallBatchConfig, test: Mapping[Arm, list[float]]) -> None:
    def draw(figure: Any) -> None:
        axis = figure.add_subplot(1, 1, 1)
        for kind in ("bn", "renorm", "gn"):
            mine = sorted((a for a in test if a.kind == kind and a.batch != config.large_batch),
                          key=lambda a: a.batch)  # fmt: skip
            if mine:
                table = np.array([test[a] for a in mine]).T
                mean_band(axis, [a.batch for a in mine], table, label=KIND_NAMES[kind],
                          marker="o", markersize=4)  # fmt: skip
        for arm, marker in ((Arm("bn", config.large_batch), "s"),
                            (Arm("ghost", config.large_batch, config.ghost_size), "D")):
            if arm in test:
                values = test[arm]
                axis.plot([arm.batch] * len(values), values, marker, color="grey", alpha=0.5)
                axis.plot([arm.batch], [float(np.mean(values))], marker, label=arm.label)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("per-step batch size (equal samples seen)")
        axis.set_ylabel("test accuracy, eval mode (band: seed range)")
        axis.set_title("SmallConvNet on Fashion-MNIST: small batches")
        axis.legend(fontsize=7)

    save_plot(path, (6.5, 4.2), draw)


def _finding(config: SmallBatchConfig, test: Mapping[Arm, list[float]], outcome: Verdict,
             interval: Interval, differences: Mapping[str, Interval]) -> str:
    """What came out, in words, and where it disagrees with the anchor."""
    bn4, renorm4 = Arm("bn", ANCHOR_BATCH), Arm("renorm", ANCHOR_BATCH)
    text = (f"At per-step batch 4, Batch Renorm minus BN is {interval.format(scale=100)} "
            f"test points over {interval.n} seeds ({outcome}: BN {percent(test[bn4])}%, "
            f"Batch Renorm {percent(test[renorm4])}%). Ioffe 2017 (Inception v3, ImageNet) "
            "reports BN at batch 4 at about 74.2% against 76.5% with Batch Renorm, and 78.3% "
            "for batch-32 BN")
    text += "; we agree." if outcome == "supported" else "; we do not clearly see that gain."
    smallest = min(config.batches)
    if smallest != ANCHOR_BATCH:
        text += (f" At batch {smallest} Batch Renorm minus BN is "
                 f"{differences[f'Batch Renorm - BN at {smallest}'].format(scale=100)} points "
                 f"(BN {percent(test[Arm('bn', smallest)])}%).")
    top = max(config.batches)
    if top != ANCHOR_BATCH:
        steps = max(1, config.samples // top)
        text += (f" BN at {top} reaches {percent(test[Arm('bn', top)])}% in only {steps} "
                 "steps (equal samples): at this budget the large batches are undertrained, "
                 "so 'approaches batch-32 BN' is not a fair test here.")
    ghost = f"Ghost BN - BN at {config.large_batch}"
    text += f" Ghost BN minus BN at {config.large_batch}: {differences[ghost].format(scale=100)}."
    text += (" Our setup differs from the anchor's: a small convnet, short runs, and the "
             "batch is the per-step batch (Ioffe's micro-batches of 4 were per worker, "
             "with gradients pooled over 50 workers).")
    return text


def run(config: SmallBatchConfig, context: ClaimContext) -> ClaimResult:
    if ANCHOR_BATCH not in config.batches:
        raise ValueError(f"small-batch: the rule compares at batch {ANCHOR_BATCH}; "
                         f"batches {config.batches} must include it")
    runs, chosen, tuning = _run_arms(config, context)
    test = {arm: [r["test"] for r in rows] for arm, rows in runs.items()}
    renorm4, bn4 = Arm("renorm", ANCHOR_BATCH), Arm("bn", ANCHOR_BATCH)
    outcome, interval = verdict(test[renorm4], test[bn4])
    context_rows: dict[str, Interval] = {}
    top = max(config.batches)
    if top != ANCHOR_BATCH:
        context_rows[f"BN at {top} - Batch Renorm at 4"] = paired_interval(
            test[Arm("bn", top)], test[renorm4])
        context_rows[f"BN at {top} - BN at 4"] = paired_interval(test[Arm("bn", top)], test[bn4])
    if Arm("gn", ANCHOR_BATCH) in test:
        context_rows["GroupNorm at 4 - BN at 4"] = paired_interval(
            test[Arm("gn", ANCHOR_BATCH)], test[bn4])
    ghost = Arm("ghost", config.large_batch, config.ghost_size)
    context_rows[f"Ghost BN - BN at {config.large_batch}"] = paired_interval(
        test[ghost], test[Arm("bn", config.large_batch)])
    for batch in config.batches:
        if batch != ANCHOR_BATCH:
            context_rows[f"Batch Renorm - BN at {batch}"] = paired_interval(
                test[Arm("renorm", batch)], test[Arm("bn", batch)])
    path = context.folder / "accuracy_vs_batch.png"
    _plot(path, config, test)
    lines = ["| arm | steps | c (lr = c·B/32) | lr | finite runs | val. acc. (%) | "
             "test acc. (%) |", "|---|---|---|---|---|---|---|"]
    for arm, rows in runs.items():
        steps = max(1, config.samples // arm.batch)
        lines.append(f"| {arm.label} | {steps} | {chosen[arm]:g} | "
                     f"{_lr(chosen[arm], arm.batch):g} | "
                     f"{sum(r['finite'] for r in rows)}/{len(rows)} | "
                     f"{percent([r['val'] for r in rows])} | {percent(test[arm])} |")
    lines += ["", "| difference (seed-paired) | points [95% interval] |", "|---|---|",
              f"| **Batch Renorm at 4 - BN at 4 (the rule: > {100 * MARGIN:g})** | "
              f"{interval.format(scale=100)} |"]
    lines += [f"| {name} | {value.format(scale=100)} |" for name, value in context_rows.items()]
    finding = _finding(config, test, outcome, interval, context_rows)
    section = "\n".join([
        f"SmallConvNet (channels {tuple(config.channels)}, hidden {config.hidden}) on "
        f"Fashion-MNIST; every run sees {config.samples} training samples (SGD momentum 0.9); "
        f"lr = c·B/32 with c chosen per arm on seed 0's validation accuracy from "
        f"{config.lr_constants}; {config.seeds} seeds; eval-mode accuracy (running "
        f"statistics). Batch Renorm: plain BN for the first {WARMUP_FRACTION:.0%} of the "
        f"steps, rmax 1→3 and dmax 0→5 over the next {RAMP_FRACTION:.0%}.", "",
        *lines, "", f"![test accuracy against batch size]({context.relative(path)})"])
    details = {"arms": {arm.name: {"c": chosen[arm], "runs": rows, "tuning": tuning[arm]}
                        for arm, rows in runs.items()},
               "context": {name: value.to_dict() for name, value in context_rows.items()}}
    return ClaimResult(outcome, RULE.quantity, interval, finding, section, details,
                       (context.relative(path),))


CLAIM = ClaimSpec(
    id="small-batch",
    title="Batch Renorm rescues BN at small batches",
    source="Ioffe 2017, Batch Renormalization (arXiv:1702.03275), small minibatches",
    statement="BN degrades with small mini-batches, because training uses batch statistics "
              "and inference moving averages; Batch Renorm at batch 4 clearly beats BN at "
              "batch 4 and approaches batch-32 BN.",
    measured="eval-mode test accuracy of a small convnet on Fashion-MNIST with BN, Batch "
             "Renorm, GroupNorm at per-step batches 2-32 and Ghost BN at a large batch, "
             "equal samples seen, lr tuned per arm on validation",
    rule=RULE.describe(),
    presets=PRESETS,
    run=run,
)
