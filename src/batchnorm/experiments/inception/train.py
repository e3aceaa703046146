"""Train one Inception run: SGD with momentum, periodic validation, checkpoints.

A run stops early and is marked ``diverged`` as soon as its training loss is not
finite (the paper's Inception x5 "reached machine infinity"). Checkpoints are written
atomically at every evaluation and fingerprinted by the run's settings
(:func:`run_fingerprint`); a finished run leaves ``results/<name>.json`` (with the
fingerprint) and ``results/<name>.pt`` (class probabilities on validation and test,
for the ensemble). ``resume`` continues either only if the settings are the same.

Random streams of a run with seed ``s``: the initial weights and dropout come from
torch's global generator seeded with ``s``; the batch order of epoch ``e`` and the
distortions of step ``t`` from :func:`~batchnorm.experiments.runner.indexed_seed`
``(s, e)`` and ``(s, t)``.

Several processes (:mod:`.parallel`: ``--nproc``, or ``torchrun``) train a run together
when a process group of more than one rank is initialized: each rank takes its share of
the same global batch (distorted as a whole, then split), BN layers are SyncBatchNorm and
the gradients averaged, so the run matches one process up to floating point; dropout
then draws from ``(s, t, rank)`` at every step (so a resumed run continues exactly).
Rank 0 alone evaluates and writes checkpoints and results.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from batchnorm.experiments.inception import parallel
from batchnorm.experiments.inception.config import Scale
from batchnorm.experiments.inception.data import Splits, batch_order, distort
from batchnorm.experiments.inception.recipe import DISTORTIONS, Recipe
from batchnorm.experiments.runner import (
    Progress,
    check_fingerprint,
    indexed_generator,
    indexed_seed,
    load_checkpoint,
    resume_from,
    save_checkpoint,
    save_tensors,
    write_json,
)
from batchnorm.models.inception import InceptionConfig, SmallInception, count_parameters

__all__ = [
    "RunSpec",
    "build_model",
    "build_optimizer",
    "check_resumable",
    "evaluation_steps",
    "learning_rate",
    "predict",
    "run_fingerprint",
    "train_run",
]

EVAL_BATCH = 1000
HALF_LIFE_RUNS = 3.0  # at decay speed 1 the exponential factor halves every 3 run lengths


@dataclass(frozen=True)
class RunSpec:
    """One training run: a named recipe at a scale with a seed."""

    name: str
    recipe: Recipe
    scale: Scale
    seed: int = 0


def run_fingerprint(spec: RunSpec, splits: Splits) -> dict[str, Any]:
    """Every setting that decides a run's numbers (its name aside)."""
    return {"seed": spec.seed, "recipe": spec.recipe.to_dict(), "scale": spec.scale.to_dict(),
            "dataset": splits.name, "train_images": len(splits.train_x),
            "val_images": len(splits.val_x), "test_images": len(splits.test_x)}


def check_resumable(spec: RunSpec, splits: Splits, run_dir: Path) -> None:
    """Raise :class:`~batchnorm.experiments.runner.CheckpointMismatchError` now if
    ``train_run(..., resume=True)`` would refuse ``spec``'s result or checkpoint (so that a
    refused resume stops before any process is started or any file written)."""
    fingerprint = run_fingerprint(spec, splits)
    result_path = run_dir / "results" / f"{spec.name}.json"
    checkpoint_path = run_dir / "checkpoints" / f"{spec.name}.pt"
    if result_path.exists():
        check_fingerprint(result_path, json.loads(result_path.read_text()).get("fingerprint"),
                          fingerprint)
    elif checkpoint_path.exists():
        load_checkpoint(checkpoint_path, fingerprint)


def build_model(recipe: Recipe, scale: Scale) -> SmallInception:
    config = InceptionConfig(
        batch_norm=recipe.batch_norm,
        activation=recipe.activation,
        lrn=recipe.lrn,
        dropout=recipe.dropout,
        width=scale.width,
        head_bn1d=recipe.head_bn1d,
        init_scale=recipe.init_scale,
    )
    return SmallInception(config)


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """SGD with momentum; L2 decay only on conv/linear weights (tensors of rank > 1)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [
            {"params": decay, "weight_decay": recipe.weight_decay, "name": "weights"},
            {"params": no_decay, "weight_decay": 0.0, "name": "bn-and-biases"},
        ],
        lr=recipe.lr,
        momentum=recipe.momentum,
    )


def learning_rate(recipe: Recipe, step: int, total_steps: int) -> float:
    """The lr of (0-based) ``step``: exponential decay at ``recipe.lr_decay_speed`` (half-life
    3 run lengths at speed 1) times a cosine envelope reaching exactly 0 at the last step,
    ``lr * 0.5 ** (p * speed / 3) * (1 + cos(pi * p)) / 2`` with ``p = step / (steps - 1)``."""
    progress = min(1.0, step / max(1, total_steps - 1))
    exponential = 0.5 ** (progress * recipe.lr_decay_speed / HALF_LIFE_RUNS)
    return recipe.lr * exponential * (1 + math.cos(math.pi * progress)) / 2


def evaluation_steps(total_steps: int, evaluations: int) -> list[int]:
    """``evaluations`` steps spread evenly over the run, the last one at ``total_steps``."""
    count = min(evaluations, total_steps)
    return sorted({max(1, round(total_steps * k / count)) for k in range(1, count + 1)})


def _prepare(images: Tensor, splits: Splits, channels_last: bool) -> Tensor:
    x = images.unsqueeze(1).float().div_(255).sub_(splits.mean).div_(splits.std)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def predict(
    model: nn.Module, images: Tensor, splits: Splits, device: torch.device, channels_last: bool
) -> Tensor:
    """Class probabilities (N, classes) in eval mode (BN uses its running statistics)."""
    model.eval()
    outputs = []
    for start in range(0, len(images), EVAL_BATCH):
        x = _prepare(images[start : start + EVAL_BATCH], splits, channels_last).to(device)
        outputs.append(torch.softmax(model(x).float(), dim=1).cpu())
    model.train()
    return torch.cat(outputs)


def _accuracy(probabilities: Tensor, labels: Tensor) -> float:
    return float((probabilities.argmax(1) == labels).float().mean())


def train_run(
    spec: RunSpec,
    splits: Splits,
    run_dir: Path,
    device: str | torch.device = "cpu",
    channels_last: bool = True,
    resume: bool = False,
    progress: bool = True,
    position: int = 0,
) -> dict[str, Any]:
    """Train ``spec`` to completion (or divergence); return its result dict.

    With ``resume``, a finished run's result is returned as it is and an interrupted
    run continues from its checkpoint; either raises
    :class:`~batchnorm.experiments.runner.CheckpointMismatchError` if it was made with
    other settings.
    """
    result_path = run_dir / "results" / f"{spec.name}.json"
    checkpoint_path = run_dir / "checkpoints" / f"{spec.name}.pt"
    fingerprint = run_fingerprint(spec, splits)
    if resume and result_path.exists():
        result = json.loads(result_path.read_text())
        check_fingerprint(result_path, result.get("fingerprint"), fingerprint)
        return result

    torch.manual_seed(spec.seed)
    recipe, scale = spec.recipe, spec.scale
    dev = torch.device(device)
    ranks, rank, main = parallel.world_size(), parallel.rank(), parallel.is_main()
    model = build_model(recipe, scale)
    if ranks > 1:
        model = parallel.to_sync(model)
    model = model.to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, recipe)
    distortion = DISTORTIONS[recipe.distortion]
    eval_at = set(evaluation_steps(scale.steps, scale.evaluations))
    eval_images, eval_labels = splits.val_x[: scale.eval_size], splits.val_y[: scale.eval_size]

    state: dict[str, Any] = {"step": 0, "history": [], "diverged_at": None, "seconds": 0.0,
                             "loss_sum": 0.0, "loss_count": 0}
    # Only rank 0 deletes a stale checkpoint; the others read what it reads.
    if resume_from(checkpoint_path, resume) if main else resume and checkpoint_path.exists():
        checkpoint = load_checkpoint(checkpoint_path, fingerprint)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"])
        state = checkpoint["state"]
    trainer = model
    if ranks > 1:
        parallel.barrier()  # every rank has read the checkpoint before any rank moves on
        trainer = parallel.wrap(model, dev)
        part = parallel.shard(recipe.batch_size, rank, ranks)

    n_train = len(splits.train_x)
    batches_per_epoch = n_train // recipe.batch_size
    order_epoch, order = -1, torch.empty(0, dtype=torch.long)
    started = time.perf_counter() - state["seconds"]
    model.train()
    with Progress(scale.steps, spec.name, enabled=progress and main, position=position) as bar:
        bar.start(state["step"])
        while state["step"] < scale.steps and state["diverged_at"] is None:
            step = state["step"]
            epoch, within = divmod(step, batches_per_epoch)
            if epoch != order_epoch:
                order_epoch = epoch
                order = batch_order(n_train, recipe.batch_size, epoch, spec.seed,
                                    recipe.shuffle, recipe.shard_size)
            index = order[within]
            images = distort(splits.train_x[index].unsqueeze(1).float().div_(255), distortion,
                             indexed_generator(spec.seed, step))
            x, y = images.sub_(splits.mean).div_(splits.std), splits.train_y[index]
            if ranks > 1:  # this rank's share of the global batch
                x, y = x[part], y[part]
                torch.manual_seed(indexed_seed(indexed_seed(spec.seed, step), rank))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x, y = x.to(dev), y.to(dev)

            lr = learning_rate(recipe, step, scale.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if ranks > 1:  # averaged over ranks: the gradient of the global batch's mean loss
                share = nn.functional.cross_entropy(trainer(x), y, reduction="sum")
                share = share / recipe.batch_size
                value = float(parallel.sum_over_ranks(share))
                loss = share * ranks
            else:
                loss = nn.functional.cross_entropy(model(x), y)
                value = float(loss.detach())
            state["step"] = step + 1
            if not math.isfinite(value):
                state["diverged_at"] = step + 1  # stop here: the paper's "machine infinity"
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if ranks > 1:
                    parallel.average_gradients(trainer)
                optimizer.step()
                state["loss_sum"] += value
                state["loss_count"] += 1
            if main and (state["step"] in eval_at or state["diverged_at"] is not None):
                accuracy = (float("nan") if state["diverged_at"] is not None else
                            _accuracy(predict(model, eval_images, splits, dev, channels_last),
                                      eval_labels))
                mean_loss = state["loss_sum"] / max(1, state["loss_count"])
                state["history"].append({"step": state["step"], "val_accuracy": accuracy,
                                         "train_loss": mean_loss, "lr": lr})
                state["loss_sum"], state["loss_count"] = 0.0, 0
                state["seconds"] = time.perf_counter() - started
                save_checkpoint(checkpoint_path, fingerprint,
                                {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "rng": torch.get_rng_state(), "state": state})
                bar.advance_to(state["step"], val=f"{accuracy:.4f}", loss=f"{mean_loss:.3f}")
            else:
                bar.advance_to(state["step"])
    if not main:  # rank 0 evaluates and writes the results
        return {"name": spec.name, "rank": rank}
    return _finish(spec, fingerprint, model, state, splits, run_dir, dev, channels_last,
                   started)


def _finish(spec: RunSpec, fingerprint: dict[str, Any], model: SmallInception,
            state: dict[str, Any], splits: Splits, run_dir: Path, dev: torch.device,
            channels_last: bool, started: float) -> dict[str, Any]:
    """Final evaluation on the whole validation split and the test set; write results."""
    diverged = state["diverged_at"] is not None
    curve = [h for h in state["history"] if math.isfinite(h["val_accuracy"])]
    result: dict[str, Any] = {
        "name": spec.name, "seed": spec.seed, "recipe": spec.recipe.to_dict(),
        "scale": spec.scale.to_dict(), "fingerprint": fingerprint,
        "parameters": count_parameters(model),
        "depth": model.depth, "diverged": diverged, "diverged_at_step": state["diverged_at"],
        "history": state["history"],
        # The curve's last point (final weights): never the maximum over noisy points.
        "last_curve_accuracy": curve[-1]["val_accuracy"] if curve and not diverged else None,
        "final_val_accuracy": None, "test_accuracy": None,
    }
    if not diverged:
        val_p = predict(model, splits.val_x, splits, dev, channels_last)
        test_p = predict(model, splits.test_x, splits, dev, channels_last)
        result["final_val_accuracy"] = _accuracy(val_p, splits.val_y)
        result["test_accuracy"] = _accuracy(test_p, splits.test_y)
        save_tensors(run_dir / "results" / f"{spec.name}.pt", {"val": val_p, "test": test_p})
    result["seconds"] = time.perf_counter() - started
    write_json(run_dir / "results" / f"{spec.name}.json", result)
    return result
