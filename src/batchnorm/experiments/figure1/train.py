"""The training engine of Figure 1 and its sweep: two :class:`StackedMLP` (without and with
BN) whose network k shares seed k's initial weights and batches, one lr per network.

:func:`train` runs a :class:`TrainingJob` step by step and evaluates on the job's
evaluation set at the steps of its schedule: per network accuracy, loss and, unless
the job is ``light`` (the sweep), the percentiles of the last hidden layer (the chosen
unit and every unit). At checkpoint steps (and the last step) each BN network is also
evaluated with Algorithm 2 population statistics. Checkpoints are fingerprinted; a
resumed run continues bit for bit.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from batchnorm.experiments.figure1.config import SEEDS, Figure1Config
from batchnorm.experiments.runner import (
    ConfigError,
    Progress,
    Session,
    indexed_generator,
    load_checkpoint,
    resume_from,
    save_checkpoint,
)
from batchnorm.models.stacked import (
    StackedMLP,
    StackedSGD,
    gather_batches,
    stacked_cross_entropy,
)

__all__ = [
    "ARMS",
    "PERCENTILES",
    "BatchStream",
    "Network",
    "SimulatedKillError",
    "TrainingJob",
    "binarize",
    "evaluate_stack",
    "make_job",
    "make_stack",
    "quantiles",
    "run_job",
    "sizes_of",
    "train",
]

PERCENTILES = (0.15, 0.50, 0.85)
ARMS = ("baseline", "bn")


class SimulatedKillError(RuntimeError):
    """Raised by :func:`train` when ``stop_after`` steps ran: a kill, for the resume tests."""


def binarize(images: Tensor, threshold: float, device: torch.device | str = "cpu") -> Tensor:
    """uint8 images (N, H, W) -> float32 (N, H*W) of 0/1: pixel / 255 > threshold."""
    flat = images.reshape(images.shape[0], -1).to(device)
    return (flat.float() / 255.0 > threshold).float()


class BatchStream:
    """Mini-batch indices: a fresh permutation of ``n`` examples each epoch.

    An epoch is ``n // batch_size`` batches; the remaining examples (none for 60k and
    60) wait for the next permutation. The state (generator, current permutation,
    position) is saved with :meth:`state_dict`, so a resumed stream continues exactly.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        if n < batch_size:
            raise ConfigError(f"--batch-size {batch_size}: cannot draw batches of {batch_size} "
                              f"from {n} training examples")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = -1
        self._new_epoch()

    def _new_epoch(self) -> None:
        per_epoch = self.n // self.batch_size
        perm = torch.randperm(self.n, generator=self.generator)
        self.batches = perm[: per_epoch * self.batch_size].view(per_epoch, self.batch_size)
        self.batches = self.batches.to(self.device)
        self.position = 0
        self.epoch += 1

    def next(self) -> Tensor:
        if self.position == self.batches.shape[0]:
            self._new_epoch()
        batch = self.batches[self.position]
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "batches": self.batches.cpu(),
                "position": self.position, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.batches = state["batches"].to(self.device)
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


def sizes_of(config: Figure1Config, dataset: Any) -> tuple[int, ...]:
    """Layer widths: the dataset's pixels, the hidden layers, 10 classes."""
    pixels = int(dataset.train_images[0].numel())
    return (pixels, *config.hidden, 10)


@dataclass(frozen=True)
class Network:
    """Network k of both stacks: its seed, its rate pair's name and each arm's lr."""

    seed: int
    pair: str
    lrs: dict[str, float]  # arm -> lr


def make_stack(config: Figure1Config, sizes: tuple[int, ...], networks: list[Network], arm: str,
               device: torch.device) -> StackedMLP:
    """The stack of one arm; network k drawn from its seed's init stream (as an MLP would be)."""
    stack = StackedMLP(len(networks), sizes, batch_norm=arm == "bn", init_std=config.init_std,
                       generators=[SEEDS.generator(net.seed, "init") for net in networks],
                       bn_kwargs={"eps": config.eps, "momentum": config.bn_momentum})
    return stack.to(device)


@dataclass
class TrainingJob:
    """What :func:`train` runs. ``fingerprint`` must match a checkpoint to resume from it."""

    networks: list[Network]
    stacks: dict[str, StackedMLP]  # arm -> its stack
    streams: dict[int, BatchStream]  # seed -> its batches
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    steps: int
    schedule: list[int]  # evaluation steps, 0 first, the last step last
    checkpoint_steps: set[int]
    momentum: float
    unit: int
    population_batches: int
    layer_images: int | None
    checkpoint_path: Path
    fingerprint: dict[str, Any]
    light: bool = False  # the sweep: accuracy and loss only, no percentiles or population
    rows: list[dict[str, Any]] = field(default_factory=list)
    #: "arm/stats/kind" -> per evaluation a (K, units, 3) tensor of every unit's percentiles
    layer: dict[str, list[Tensor]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def make_job(config: Figure1Config, networks: list[Network], sizes: tuple[int, ...],
             train_data: tuple[Tensor, Tensor], eval_data: tuple[Tensor, Tensor], *,
             steps: int, schedule: list[int], checkpoint_steps: set[int], checkpoint: Path,
             fingerprint: dict[str, Any], device: torch.device, light: bool = False
             ) -> TrainingJob:
    """The job of ``networks`` on uint8 ``(images, labels)``: binarized, on ``device``."""
    (train_images, train_labels), (eval_images, eval_labels) = train_data, eval_data
    streams = {seed: BatchStream(train_images.shape[0], config.batch_size, SEEDS(seed)["data"],
                                 device)
               for seed in dict.fromkeys(net.seed for net in networks)}
    return TrainingJob(
        networks=networks,
        stacks={arm: make_stack(config, sizes, networks, arm, device) for arm in ARMS},
        streams=streams,
        train_x=binarize(train_images, config.binarize_threshold, device),
        train_y=train_labels.to(device),
        eval_x=binarize(eval_images, config.binarize_threshold, device),
        eval_y=eval_labels.to(device),
        steps=steps, schedule=schedule, checkpoint_steps=checkpoint_steps,
        momentum=config.momentum, unit=config.unit,
        population_batches=config.population_batches, layer_images=config.layer_images,
        checkpoint_path=checkpoint, fingerprint=fingerprint, light=light,
    )


def quantiles(values: Tensor, qs: tuple[float, ...] = PERCENTILES) -> Tensor:
    """Linear-interpolation quantiles along dim -2 (the examples): (..., N, C) -> (..., q, C).

    Equal to :func:`torch.quantile` (tested), by one sort, which is much faster for many
    columns.
    """
    ordered = values.sort(dim=-2).values
    n = values.shape[-2]
    out = []
    for q in qs:
        position = q * (n - 1)
        low = int(position)
        high = min(low + 1, n - 1)
        weight = position - low
        out.append(torch.lerp(ordered[..., low, :], ordered[..., high, :], weight))
    return torch.stack(out, dim=-2)


@torch.inference_mode()
def evaluate_stack(stack: StackedMLP, x: Tensor, y: Tensor, unit: int, *, light: bool = False,
                   layer_images: int | None = None) -> dict[str, Tensor]:
    """Every network of ``stack`` in eval mode on (x, y).

    Returns per network (dim 0 = K): ``accuracy``, ``loss``; unless ``light`` also
    ``pre`` (K, 3): the 15/50/85th percentiles of ``unit``'s sigmoid input in the last
    hidden layer, ``pre_layer`` (K, units, 3) the same for every unit (over the first
    ``layer_images`` images of ``x``, default all: sorting is most of an evaluation's
    cost); with BN ``xhat`` and ``xhat_layer`` likewise for x-hat (before gamma and beta).
    """
    was_training = stack.training
    stack.eval()
    try:
        outputs = stack.forward_with_preactivations(x)
    finally:
        stack.train(was_training)
    logits = outputs.logits.double()
    result = {"accuracy": (logits.argmax(dim=2) == y).double().mean(dim=1),
              "loss": stacked_cross_entropy(logits, y)}
    if light:
        return result
    kinds = {"pre": outputs.preactivations[-1]}
    if outputs.normalized is not None:
        kinds["xhat"] = outputs.normalized[-1]
    for kind, values in kinds.items():
        result[kind] = quantiles(values[:, :, unit:unit + 1].double())[:, :, 0]  # (K, 3)
        layer = quantiles(values[:, :layer_images].double()).transpose(1, 2)  # (K, units, 3)
        result[f"{kind}_layer"] = layer
    return result


def population_stack(stack: StackedMLP, job: TrainingJob, step: int) -> StackedMLP:
    """A copy of the BN ``stack`` with Algorithm 2 population statistics: weights frozen,
    :meth:`StackedMLP.recompute_statistics` over ``job.population_batches`` training
    batches; network k's batches are drawn by a generator seeded by (its seed, ``step``)."""
    copied = copy.deepcopy(stack)
    size = job.streams[job.networks[0].seed].batch_size
    n = job.train_x.shape[0]
    indices = torch.stack([
        torch.randint(n, (job.population_batches, size),
                      generator=indexed_generator(SEEDS(net.seed)["population"], step))
        for net in job.networks], dim=1).to(job.train_x.device)  # (batches, K, size)
    copied.recompute_statistics(gather_batches(job.train_x, batch) for batch in indices)
    return copied


def run_job(job: TrainingJob, session: Session, desc: str, *,
            stop_after: int | None = None) -> TrainingJob:
    """:func:`train` as the run's options say: from the checkpoint with ``--resume``
    (a fresh run deletes it first), with a progress bar unless ``--no-progress``."""
    resume = resume_from(job.checkpoint_path, session.options.resume)
    if session.options.resume and not resume:
        session.warn(f"no checkpoint {job.checkpoint_path}: starting from step 0")
    with Progress(job.steps, desc, enabled=not session.options.no_progress) as progress:
        return train(job, resume=resume, stop_after=stop_after, progress=progress)


def _optimizers(job: TrainingJob) -> dict[str, StackedSGD]:
    return {arm: StackedSGD(stack, [net.lrs[arm] for net in job.networks], job.momentum)
            for arm, stack in job.stacks.items()}


def _checkpoint_state(job: TrainingJob, optimizers: dict[str, StackedSGD], step: int,
                      loss_sum: dict[str, Tensor]) -> dict[str, Any]:
    return {
        "step": step,
        "models": {arm: stack.state_dict() for arm, stack in job.stacks.items()},
        "optimizers": {arm: opt.state_dict() for arm, opt in optimizers.items()},
        "streams": {seed: stream.state_dict() for seed, stream in job.streams.items()},
        "loss_sum": {arm: value.cpu() for arm, value in loss_sum.items()},
        "rows": job.rows,
        "layer": job.layer,
        "timings": job.timings,
    }


def train(job: TrainingJob, *, resume: bool = False, stop_after: int | None = None,
          progress: Progress | None = None) -> TrainingJob:
    """Train both stacks of ``job`` for ``job.steps`` steps; returns ``job`` with its rows.

    ``job.rows`` gets one row per arm, network, statistics kind and evaluation (see
    :func:`_rows`). ``resume``: continue from ``job.checkpoint_path`` (its fingerprint
    must match). ``stop_after``: raise :class:`SimulatedKillError` after that many steps
    of this call, without writing anything (a kill).
    """
    for stack in job.stacks.values():
        stack.train()
    optimizers = _optimizers(job)
    device = job.train_x.device
    K = len(job.networks)
    loss_sum = {arm: torch.zeros(K, dtype=torch.float64, device=device) for arm in job.stacks}
    step = 0
    for key in ("train_s", "eval_s", "population_s", "checkpoint_s"):
        job.timings.setdefault(key, 0.0)
    job.timings.setdefault("sessions", 0)
    if resume:
        state = load_checkpoint(job.checkpoint_path, job.fingerprint)
        for arm, stack in job.stacks.items():
            stack.load_state_dict(state["models"][arm])
            optimizers[arm].load_state_dict(state["optimizers"][arm])
        for seed, stream in job.streams.items():
            stream.load_state_dict(state["streams"][seed])
        loss_sum = {arm: value.to(device) for arm, value in state["loss_sum"].items()}
        job.rows[:] = state["rows"]
        job.layer.clear()
        job.layer.update(state["layer"])
        job.timings.update(state["timings"])
        step = int(state["step"])
    elif job.schedule[0] == 0:
        _evaluate(job, 0, None)
    job.timings["sessions"] += 1
    progress = progress or Progress(job.steps, "", enabled=False)
    progress.start(step)
    seeds = [net.seed for net in job.networks]
    order = {seed: i for i, seed in enumerate(job.streams)}
    picks = torch.tensor([order[seed] for seed in seeds], device=device)
    stacks = list(job.stacks.items())
    targets = [t for t in job.schedule if t > step]
    session_steps = 0
    last_eval = max([t for t in job.schedule if t <= step], default=0)
    for target in targets:
        chunk = target - step
        if stop_after is not None and session_steps + chunk > stop_after:
            _steps(job, stacks, optimizers, picks, loss_sum, stop_after - session_steps)
            raise SimulatedKillError(f"stopped after {stop_after} steps (at step {step})")
        started = time.perf_counter()
        _steps(job, stacks, optimizers, picks, loss_sum, chunk)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        job.timings["train_s"] += time.perf_counter() - started
        step += chunk
        session_steps += chunk
        mean_loss = {arm: value / (step - last_eval) for arm, value in loss_sum.items()}
        _evaluate(job, step, mean_loss)
        last_eval = step
        for value in loss_sum.values():
            value.zero_()
        if step in job.checkpoint_steps or step == job.steps:
            started = time.perf_counter()
            save_checkpoint(job.checkpoint_path, job.fingerprint,
                            _checkpoint_state(job, optimizers, step, loss_sum))
            job.timings["checkpoint_s"] += time.perf_counter() - started
        progress.advance_to(step, **_mean_accuracy(job.rows, step))
    return job


def _mean_accuracy(rows: list[dict[str, Any]], step: int) -> dict[str, str]:
    """Per arm, the latest test accuracy averaged over networks (for the progress bar)."""
    accuracy: dict[str, list[float]] = {}
    for row in rows:
        if row["step"] == step and row["stats"] != "population":
            accuracy.setdefault(row["arm"], []).append(row["accuracy"])
    return {arm: f"{sum(values) / len(values):.4f}" for arm, values in accuracy.items()}


def _steps(job: TrainingJob, stacks, optimizers, picks: Tensor, loss_sum: dict[str, Tensor],
           count: int) -> None:
    """``count`` SGD steps of every network; the hot loop, so no host work beyond the calls."""
    streams = list(job.streams.values())
    for _ in range(count):
        batches = torch.stack([stream.next() for stream in streams])
        index = batches.index_select(0, picks)  # (K, batch): network k gets its seed's batch
        x = gather_batches(job.train_x, index)
        y = gather_batches(job.train_y, index)
        for arm, stack in stacks:
            losses = stacked_cross_entropy(stack(x), y)
            optimizer = optimizers[arm]
            optimizer.zero_grad()
            losses.sum().backward()
            optimizer.step()
            loss_sum[arm].add_(losses.detach())


def _evaluate(job: TrainingJob, step: int, mean_loss: dict[str, Tensor] | None) -> None:
    started = time.perf_counter()
    for arm, stack in job.stacks.items():
        result = evaluate_stack(stack, job.eval_x, job.eval_y, job.unit, light=job.light,
                                layer_images=job.layer_images)
        loss = None if mean_loss is None else mean_loss[arm]
        job.rows.extend(_rows(job, arm, "moving" if arm == "bn" else "none", step, result, loss))
        _keep_layer(job, arm, "moving" if arm == "bn" else "none", result)
    job.timings["eval_s"] += time.perf_counter() - started
    population = not job.light and (step in job.checkpoint_steps or step == job.steps)
    if population and "bn" in job.stacks:
        started = time.perf_counter()
        stack = population_stack(job.stacks["bn"], job, step)
        result = evaluate_stack(stack, job.eval_x, job.eval_y, job.unit,
                                layer_images=job.layer_images)
        job.rows.extend(_rows(job, "bn", "population", step, result, None))
        job.timings["population_s"] += time.perf_counter() - started


def _keep_layer(job: TrainingJob, arm: str, stats: str, result: dict[str, Tensor]) -> None:
    for kind in ("pre", "xhat"):
        if f"{kind}_layer" in result:
            job.layer.setdefault(f"{arm}/{stats}/{kind}", []).append(
                result[f"{kind}_layer"].float().cpu())


def _rows(job: TrainingJob, arm: str, stats: str, step: int, result: dict[str, Tensor],
          train_loss: Tensor | None) -> list[dict[str, Any]]:
    """One row per network: seed, arm, pair, lr, stats (none / moving / population), step,
    accuracy, test_loss, train_loss (mean since the previous evaluation; None at step 0
    and for population rows), p15/p50/p85 of the unit's sigmoid input, xhat_p15/50/85
    (BN), layer_p15/50/85 (median over the layer's units of each percentile)."""
    rows = []
    for k, net in enumerate(job.networks):
        row: dict[str, Any] = {
            "seed": net.seed, "arm": arm, "pair": net.pair, "lr": net.lrs[arm], "stats": stats,
            "step": step, "accuracy": float(result["accuracy"][k]),
            "test_loss": float(result["loss"][k]),
            "train_loss": None if train_loss is None else float(train_loss[k]),
        }
        for prefix, kind in (("", "pre"), ("xhat_", "xhat")):
            for i, name in enumerate(("p15", "p50", "p85")):
                row[prefix + name] = (float(result[kind][k, i]) if kind in result else None)
        for i, name in enumerate(("p15", "p50", "p85")):
            row["layer_" + name] = (float(result["pre_layer"][k, :, i].median())
                                    if "pre_layer" in result else None)
        rows.append(row)
    return rows
