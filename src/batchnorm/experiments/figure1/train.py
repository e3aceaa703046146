"""The training engine of Figure 1: several small networks stepped together, cheaply.

A step of the paper's network is a few dozen tiny kernels, so its cost is framework
overhead, not arithmetic. Hence:

* the training set is binarized once into one float tensor on the device, and a
  mini-batch is one ``index_select`` of it;
* batch indices come from a per-epoch permutation drawn by a seeded
  ``torch.Generator`` (one per seed; the arms of a seed share its batches);
* all arms (baseline, BN, every seed; or every learning rate of the sweep) are one
  autograd graph: the losses are summed (each arm's gradient is unchanged, since
  d(sum)/d(loss_i) = 1 exactly), so one ``backward`` and one foreach SGD step serve all;
* nothing leaves the device between evaluations (the running loss is a tensor).

Checkpoints (atomic, at evaluation points, fingerprinted by the settings) hold the
models, the optimizer, every generator and permutation, the metrics so far and the
timings, so that a resumed run continues with exactly the numbers an uninterrupted
run gets (bit for bit on CPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from batchnorm import BatchNorm1d
from batchnorm.experiments.figure1.config import SEEDS, Figure1Config
from batchnorm.experiments.runner import (
    CheckpointMismatchError,
    Progress,
    Session,
    load_checkpoint,
    resume_from,
    save_checkpoint,
)
from batchnorm.models.mlp import MLP

__all__ = [
    "Arm",
    "BatchStream",
    "PlainSGD",
    "SimulatedKillError",
    "TrainingJob",
    "binarize",
    "evaluate",
    "make_job",
    "make_model",
    "run_job",
    "sizes_of",
    "train",
]

PERCENTILES = (0.15, 0.50, 0.85)


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
            raise ValueError(f"cannot draw batches of {batch_size} from {n} examples")
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
        return {
            "generator": self.generator.get_state(),
            "batches": self.batches.cpu(),
            "position": self.position,
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.batches = state["batches"].to(self.device)
        self.position = int(state["position"])
        self.epoch = int(state["epoch"])


def sizes_of(config: Figure1Config, dataset: Any) -> tuple[int, ...]:
    """Layer widths: the dataset's pixels, the hidden layers, 10 classes."""
    pixels = int(dataset.train_images[0].numel())
    return (pixels, *config.hidden, 10)


def make_model(config: Figure1Config, sizes: tuple[int, ...], seed: int, *, batch_norm: bool,
               device: torch.device) -> MLP:
    """The network of one arm; the same ``seed`` gives the same W with and without BN."""
    bn_layer = BatchNorm1d if config.bn_layer == "batchnorm" else nn.BatchNorm1d
    model = MLP(sizes, batch_norm=batch_norm, bn_layer=bn_layer,
                bn_kwargs={"eps": config.eps, "momentum": config.bn_momentum},
                init_std=config.init_std, generator=SEEDS.generator(seed, "init"))
    return model.to(device)


@dataclass
class Arm:
    """One network being trained: its name (e.g. ``"bn"``), seed, model and learning rate."""

    name: str
    seed: int
    model: MLP
    lr: float


@dataclass
class TrainingJob:
    """What :func:`train` runs. ``fingerprint`` must match a checkpoint to resume from it."""

    arms: list[Arm]
    streams: dict[int, BatchStream]  # seed -> its batches
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    steps: int
    eval_every: int
    checkpoint_every: int
    momentum: float
    unit: int
    checkpoint_path: Path
    fingerprint: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def make_job(config: Figure1Config, arms: list[Arm], train_data: tuple[Tensor, Tensor],
             eval_data: tuple[Tensor, Tensor], checkpoint: Path, fingerprint: dict[str, Any],
             device: torch.device) -> TrainingJob:
    """The job of ``arms`` on uint8 ``(images, labels)``: binarized, on ``device``, with one
    batch stream per seed of the arms."""
    (train_images, train_labels), (eval_images, eval_labels) = train_data, eval_data
    streams = {seed: BatchStream(train_images.shape[0], config.batch_size, SEEDS(seed)["data"],
                                 device) for seed in dict.fromkeys(arm.seed for arm in arms)}
    return TrainingJob(
        arms=arms,
        streams=streams,
        train_x=binarize(train_images, config.binarize_threshold, device),
        train_y=train_labels.to(device),
        eval_x=binarize(eval_images, config.binarize_threshold, device),
        eval_y=eval_labels.to(device),
        steps=config.steps,
        eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every,
        momentum=config.momentum,
        unit=config.unit,
        checkpoint_path=checkpoint,
        fingerprint=fingerprint,
    )


@torch.inference_mode()
def evaluate(model: MLP, x: Tensor, y: Tensor, unit: int) -> dict[str, float]:
    """Accuracy on (x, y) in eval mode and the percentiles of ``unit``'s sigmoid input.

    One batched pass over all of ``x``; the unit is in the last hidden layer.
    """
    was_training = model.training
    model.eval()
    try:
        logits, preactivations = model.forward_with_preactivations(x)
    finally:
        model.train(was_training)
    accuracy = (logits.argmax(dim=1) == y).double().mean()
    values = preactivations[-1][:, unit].double()
    quantiles = torch.quantile(values, torch.tensor(PERCENTILES, dtype=values.dtype,
                                                     device=values.device))
    result = {"accuracy": accuracy, "p15": quantiles[0], "p50": quantiles[1],
              "p85": quantiles[2]}
    return {key: float(value) for key, value in result.items()}


class PlainSGD:
    """SGD, ``p <- p - lr * d`` with ``d = grad`` (or torch's momentum buffer), per arm lr.

    The same update as ``torch.optim.SGD`` (dampening 0, no Nesterov, no weight decay)
    in two or three foreach kernels per arm: ``torch.optim.SGD.step`` spent about
    0.25 ms of Python per call here, an eighth of the whole step of both networks.
    """

    def __init__(self, groups: list[tuple[list[Tensor], float]], momentum: float) -> None:
        self.groups = groups
        self.momentum = momentum
        self.buffers: list[list[Tensor] | None] = [None] * len(groups)

    def zero_grad(self) -> None:
        for params, _lr in self.groups:
            for param in params:
                param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for index, (params, lr) in enumerate(self.groups):
            grads = [param.grad for param in params]
            if self.momentum:
                buffers = self.buffers[index]
                if buffers is None:  # torch's first step: the buffer is the gradient
                    buffers = self.buffers[index] = torch._foreach_mul(grads, 1.0)
                else:
                    torch._foreach_mul_(buffers, self.momentum)
                    torch._foreach_add_(buffers, grads)
                grads = buffers
            torch._foreach_add_(params, grads, alpha=-lr)

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "lrs": [lr for _params, lr in self.groups],
                "buffers": self.buffers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["lrs"] != [lr for _params, lr in self.groups]:
            raise CheckpointMismatchError("the checkpoint's learning rates differ from this run's")
        self.buffers = [
            None if saved is None
            else [b.to(p.device) for b, p in zip(saved, params, strict=True)]
            for saved, (params, _lr) in zip(state["buffers"], self.groups, strict=True)
        ]


def _optimizer(arms: list[Arm], momentum: float) -> PlainSGD:
    return PlainSGD([(list(arm.model.parameters()), arm.lr) for arm in arms], momentum)


def _checkpoint_state(job: TrainingJob, optimizer, step: int, loss_sum: Tensor) -> dict:
    return {
        "step": step,
        "models": [arm.model.state_dict() for arm in job.arms],
        "optimizer": optimizer.state_dict(),
        "streams": {seed: stream.state_dict() for seed, stream in job.streams.items()},
        "torch_rng": torch.get_rng_state(),
        "loss_sum": loss_sum.cpu(),
        "rows": job.rows,
        "timings": job.timings,
    }


def _load_into(job: TrainingJob, optimizer, state: dict[str, Any]) -> tuple[int, Tensor]:
    """Restore ``state`` (a checkpoint) into the job; returns (step, running loss sum)."""
    for arm, model_state in zip(job.arms, state["models"], strict=True):
        arm.model.load_state_dict(model_state)
    optimizer.load_state_dict(state["optimizer"])
    for seed, stream in job.streams.items():
        stream.load_state_dict(state["streams"][seed])
    torch.set_rng_state(state["torch_rng"])
    job.rows[:] = state["rows"]
    job.timings.update(state["timings"])
    device = job.train_x.device
    return int(state["step"]), state["loss_sum"].to(device)


def run_job(job: TrainingJob, session: Session, desc: str, *,
            stop_after: int | None = None) -> TrainingJob:
    """:func:`train` as the run's options say: from the checkpoint with ``--resume``
    (a fresh run deletes it first), with a progress bar unless ``--no-progress``."""
    resume = resume_from(job.checkpoint_path, session.options.resume)
    if session.options.resume and not resume:
        session.warn(f"no checkpoint {job.checkpoint_path}: starting from step 0")
    with Progress(job.steps, desc, enabled=not session.options.no_progress) as progress:
        return train(job, resume=resume, stop_after=stop_after, progress=progress)


def train(
    job: TrainingJob,
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: Progress | None = None,
) -> TrainingJob:
    """Train every arm of ``job`` for ``job.steps`` steps; returns ``job`` with its rows.

    ``job.rows`` gets one row per arm and evaluation: seed, arm, step, accuracy,
    train_loss (mean over the steps since the previous evaluation), p15, p50, p85.
    ``resume``: continue from ``job.checkpoint_path`` (its fingerprint must match).
    ``stop_after``: raise :class:`SimulatedKillError` after that many steps of this call,
    without writing anything (a kill).
    """
    for arm in job.arms:
        arm.model.train()
    optimizer = _optimizer(job.arms, job.momentum)
    device = job.train_x.device
    loss_sum = torch.zeros(len(job.arms), dtype=torch.float64, device=device)
    step = 0
    for key in ("train_s", "eval_s", "checkpoint_s"):
        job.timings.setdefault(key, 0.0)
    job.timings.setdefault("sessions", 0)
    if resume:
        state = load_checkpoint(job.checkpoint_path, job.fingerprint)
        step, loss_sum = _load_into(job, optimizer, state)
    job.timings["sessions"] += 1
    progress = progress or Progress(job.steps, "", enabled=False)
    progress.start(step)
    # Per seed: its stream and the arms that share its batches (arm order = loss order).
    groups = [
        (job.streams[seed], [arm.model for arm in job.arms if arm.seed == seed])
        for seed in sorted(job.streams)
    ]
    session_steps = 0
    while step < job.steps:
        chunk = min(job.eval_every - step % job.eval_every, job.steps - step)
        if stop_after is not None and session_steps + chunk > stop_after:
            _steps(groups, job.train_x, job.train_y, optimizer, loss_sum,
                   stop_after - session_steps)
            raise SimulatedKillError(f"stopped after {stop_after} steps (at step {step})")
        started = time.perf_counter()
        _steps(groups, job.train_x, job.train_y, optimizer, loss_sum, chunk)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        job.timings["train_s"] += time.perf_counter() - started
        step += chunk
        session_steps += chunk
        started = time.perf_counter()
        new_rows = _evaluate_all(job, step, loss_sum / chunk)
        loss_sum.zero_()
        job.rows.extend(new_rows)
        job.timings["eval_s"] += time.perf_counter() - started
        if step % job.checkpoint_every == 0 or step == job.steps:
            started = time.perf_counter()
            save_checkpoint(job.checkpoint_path, job.fingerprint,
                            _checkpoint_state(job, optimizer, step, loss_sum))
            job.timings["checkpoint_s"] += time.perf_counter() - started
        progress.advance_to(step, **_mean_accuracy(new_rows))
    return job


def _mean_accuracy(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per arm name, the latest test accuracy averaged over seeds (for the progress bar)."""
    accuracy: dict[str, list[float]] = {}
    for row in rows:
        accuracy.setdefault(row["arm"], []).append(row["accuracy"])
    return {arm: f"{sum(values) / len(values):.4f}" for arm, values in accuracy.items()}


def _steps(groups, train_x: Tensor, train_y: Tensor, optimizer, loss_sum: Tensor,
           count: int) -> None:
    """``count`` SGD steps of every arm; the hot loop, so no host work beyond the calls."""
    for _ in range(count):
        losses = []
        for stream, models in groups:
            index = stream.next()
            x = train_x.index_select(0, index)
            y = train_y.index_select(0, index)
            for model in models:
                losses.append(F.cross_entropy(model(x), y))
        stacked = torch.stack(losses)
        optimizer.zero_grad()
        stacked.sum().backward()
        optimizer.step()
        loss_sum.add_(stacked.detach())


def _evaluate_all(job: TrainingJob, step: int, mean_losses: Tensor) -> list[dict[str, Any]]:
    losses = mean_losses.tolist()
    rows = []
    for arm, loss in zip(job.arms, losses, strict=True):
        result = evaluate(arm.model, job.eval_x, job.eval_y, job.unit)
        rows.append({"seed": arm.seed, "arm": arm.name, "step": step,
                     "accuracy": result["accuracy"], "train_loss": loss,
                     "p15": result["p15"], "p50": result["p50"], "p85": result["p85"]})
    return rows
