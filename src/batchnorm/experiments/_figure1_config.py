"""Figure 1's settings: what the paper fixes, what we chose where it is silent, and the flags.

Every setting is a field of :class:`Figure1Config` and a flag of
``batchnorm reproduce figure1``; :data:`CHOICES` says why each value we chose is
the default. config.json records all of it, so a run folder explains itself.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = [
    "CHOICES",
    "LR_SWEEP",
    "PAPER",
    "ConfigError",
    "Figure1Config",
    "add_arguments",
    "config_from_args",
]


class ConfigError(ValueError):
    """Flags that cannot run together; the message says which and why."""


#: Fixed by the paper (PAPER.md section 7); not flags except where a test needs them smaller.
PAPER: dict[str, Any] = {
    "architecture": "784-100-100-100-10, fully connected",
    "nonlinearity": "sigmoid, y = g(Wu + b); BN network: y = g(BN(Wu)) in each hidden layer",
    "input": "28x28 binary image",
    "loss": "softmax cross-entropy",
    "batch_size": 60,
    "steps": 50_000,
    "init": "small random Gaussian weights",
    "evaluation": "test accuracy vs steps; 15/50/85th percentiles of one last-hidden-layer "
    "unit's input to the sigmoid",
}

#: The learning-rate sweep behind the default ``--lr`` (``--sweep-lr`` reruns it): the
#: baseline (no BN) alone, one network per rate from the same initial weights on the same
#: batches, trained on the first 50k training images and scored on the last 10k (never the
#: test set); criterion: mean validation accuracy over the last 5 evaluations. Numbers copied
#: from the one run of ``runs/figure1/lr_sweep/lr_sweep.json`` (all other settings at their
#: defaults; CPU, 276 s of training for the 7 rates). The winner is the default lr.
LR_SWEEP: dict[str, Any] = {
    "arm": "baseline",
    "values": [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
    "steps": 50_000,
    "criterion": "mean validation accuracy over the last 5 evaluations",
    "train_images": 50_000,
    "validation_images": 10_000,
    "validation_accuracy": {
        "0.05": 0.96656, "0.1": 0.96902, "0.2": 0.96924, "0.5": 0.97116,
        "1.0": 0.97164, "2.0": 0.97356, "5.0": 0.97270,
    },
    "winner": 2.0,
    "command": "batchnorm reproduce figure1 --sweep-lr --sweep-values 0.05 0.1 0.2 0.5 1 2 5",
}

SWEEP_CRITERION_POINTS = 5


@dataclass(frozen=True)
class Figure1Config:
    """Everything that determines the numbers of a run (runtime options live in argparse)."""

    dataset: str = "mnist"
    steps: int = PAPER["steps"]
    batch_size: int = PAPER["batch_size"]
    seeds: int = 1
    seed: int = 0
    lr: float = LR_SWEEP["winner"]
    momentum: float = 0.0
    init_std: float = 0.1
    binarize_threshold: float = 0.5
    eps: float = 1e-5
    bn_momentum: float = 0.1
    bn_layer: str = "batchnorm"
    hidden: tuple[int, ...] = (100, 100, 100)
    unit: int = 0
    eval_every: int = 500
    checkpoint_every: int = 5000
    population_batches: int = 1000

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["hidden"] = list(self.hidden)
        return data


#: Why each default is what it is (the paper gives no value for any of these).
CHOICES: dict[str, str] = {
    "optimizer": "plain SGD, p <- p - lr * grad, no momentum, no weight decay, constant "
    "learning rate: the paper names none, and plain SGD is what it calls 'SGD'; the update "
    "of torch.optim.SGD (bit for bit, tested) in foreach kernels; --momentum adds torch's "
    "momentum",
    "lr": "the same rate for both networks, the best for the baseline on a validation split "
    "(see lr_sweep); --lr",
    "init_std": "weights ~ N(0, 0.1^2), biases 0: 'small random Gaussian'; 0.1 puts a hidden "
    "unit's Wu + b at about N(0, 1) at the start (~100 active inputs of 784, 100 sigmoid "
    "inputs of the layers above), inside the sigmoid's sensitive range; both networks start "
    "from identical W (same seed); --init-std",
    "binarize_threshold": "pixel / 255 > 0.5 -> 1 else 0 (the paper does not say how it "
    "binarized); --binarize-threshold",
    "eps": "1e-5, torch's default (the paper gives none); --eps",
    "bn_momentum": "moving averages for the while-training evaluation: torch's momentum 0.1 "
    "(weight of the newest batch); --bn-momentum",
    "bn_layer": "this project's batchnorm.BatchNorm1d ('batchnorm'); 'torch' uses "
    "torch.nn.BatchNorm1d (for comparison); --bn-layer",
    "data_order": "each seed draws a fresh permutation of the 60k training images per epoch "
    "(1000 batches of 60, none dropped) from its own seeded torch.Generator; both networks "
    "of a seed see the same batches in the same order",
    "seeds": "seed k = --seed + k sets the initial weights (shared by both arms) and the data "
    "order",
    "evaluation": "every --eval-every steps (default steps/100: 100 points) on the whole 10k "
    "test set, BN network in eval mode with its moving averages; at the end also with "
    "Algorithm 2 population statistics",
    "percentiles": "unit --unit (default 0) of the last hidden layer; 15/50/85th percentiles of "
    "its sigmoid input (Wu + b; BN(Wu) in eval mode in the BN network) over the 10k test images",
    "population_statistics": "batchnorm.recompute_statistics over --population-batches "
    "(default 1000 = one epoch) training mini-batches of 60 in a seeded random order",
    "validation": "the lr sweep trains on the first 50k training images and scores on the last "
    "10k; the test set is used only for the figure",
    "seeds_band": "with --seeds K, curves are the mean over seeds and the band their range "
    "(min to max)",
}

_DATASETS = ("mnist", "fashion-mnist")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _float_in(low: float, high: float, *, low_open: bool, high_open: bool):
    """An argparse type for a finite float in an interval."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (above and below):  # also rejects nan
            raise argparse.ArgumentTypeError(
                f"expected a number in {left}{low}, {high}{right}, got {text!r}"
            )
        return value

    return parse


_positive_float = _float_in(0.0, float("inf"), low_open=True, high_open=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``batchnorm reproduce figure1``; defaults are the paper's or CHOICES'."""
    d = Figure1Config()
    parser.add_argument("--steps", type=_positive_int, default=d.steps,
                        help=f"training steps per network (paper: {d.steps})")
    parser.add_argument("--seeds", type=_positive_int, default=d.seeds,
                        help="seeds per network; curves show mean and range")
    parser.add_argument("--seed", type=_nonnegative_int, default=d.seed, help="first seed")
    parser.add_argument("--lr", type=_positive_float, default=d.lr,
                        help=f"SGD learning rate, both networks (default {d.lr}: the lr sweep's "
                        "winner for the baseline)")
    parser.add_argument("--momentum", type=_float_in(0, 1, low_open=False, high_open=True),
                        default=d.momentum, help="SGD momentum (default 0: plain SGD)")
    parser.add_argument("--init-std", type=_positive_float, default=d.init_std,
                        help="std of the Gaussian initial weights")
    parser.add_argument("--binarize-threshold",
                        type=_float_in(0, 1, low_open=False, high_open=True),
                        default=d.binarize_threshold, help="pixel/255 above this is 1, else 0")
    parser.add_argument("--eps", type=_positive_float, default=d.eps, help="BN epsilon")
    parser.add_argument("--bn-momentum", type=_float_in(0, 1, low_open=True, high_open=False),
                        default=d.bn_momentum, help="BN moving-average momentum")
    parser.add_argument("--bn-layer", choices=["batchnorm", "torch"], default=d.bn_layer,
                        help="batchnorm.BatchNorm1d or torch.nn.BatchNorm1d")
    parser.add_argument("--batch-size", type=_positive_int, default=d.batch_size,
                        help=f"mini-batch size (paper: {d.batch_size})")
    parser.add_argument("--unit", type=_nonnegative_int, default=d.unit,
                        help="the last-hidden-layer unit of Figure 1(b, c)")
    parser.add_argument("--eval-every", type=_positive_int, default=None,
                        help="steps between test evaluations (default: steps/100)")
    parser.add_argument("--checkpoint-every", type=_positive_int, default=None,
                        help="steps between checkpoints, a multiple of --eval-every "
                        "(default: 10 evaluations)")
    parser.add_argument("--population-batches", type=_positive_int, default=d.population_batches,
                        help="training mini-batches for the Algorithm 2 population statistics")
    parser.add_argument("--dataset", choices=_DATASETS, default=d.dataset)
    parser.add_argument("--data-dir", default=None, help="where the dataset files are")
    parser.add_argument("--out", default="runs/figure1", help="run folder")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda if available, else cpu")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch intra-op threads on CPU (default 1: the steps are tiny, and "
                        "on a shared 2-core machine 2 threads ran several times slower)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's checkpoint (same flags)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--sweep-lr", action="store_true",
                        help="instead of the figure: the baseline's learning-rate sweep on a "
                        "validation split, into OUT/lr_sweep")
    parser.add_argument("--sweep-values", type=_positive_float, nargs="+",
                        default=list(LR_SWEEP["values"]), metavar="LR",
                        help="learning rates of --sweep-lr (at least 2)")


def config_from_args(args: argparse.Namespace) -> Figure1Config:
    """The validated config of ``args``; raises :class:`ConfigError` naming the bad flag."""
    eval_every = args.eval_every if args.eval_every is not None else max(1, args.steps // 100)
    if eval_every > args.steps:
        raise ConfigError(f"--eval-every {eval_every} is more than --steps {args.steps}")
    checkpoint_every = (
        args.checkpoint_every if args.checkpoint_every is not None else 10 * eval_every
    )
    if checkpoint_every % eval_every:
        raise ConfigError(
            f"--checkpoint-every {checkpoint_every} must be a multiple of --eval-every "
            f"{eval_every} (checkpoints are taken at evaluation points)"
        )
    if args.batch_size < 2:
        raise ConfigError(f"--batch-size {args.batch_size}: BN needs at least 2 examples a batch")
    hidden = Figure1Config.hidden
    if args.unit >= hidden[-1]:
        raise ConfigError(
            f"--unit {args.unit}: the last hidden layer has units 0..{hidden[-1] - 1}"
        )
    if args.sweep_lr and len(set(args.sweep_values)) < 2:
        raise ConfigError("--sweep-values needs at least 2 different learning rates")
    values = {field.name: getattr(args, field.name) for field in fields(Figure1Config)
              if hasattr(args, field.name)}
    return replace(
        Figure1Config(),
        **{**values, "eval_every": eval_every, "checkpoint_every": checkpoint_every},
    )
