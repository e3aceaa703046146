"""Figure 1's settings: what the paper fixes, what we chose where it is silent, the presets.

Every setting is a field of :class:`Figure1Config` and a flag of
``batchnorm reproduce figure1``; :data:`CHOICES` says why each value we chose is
the default. config.json records all of it, so a run folder explains itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchnorm.experiments.runner import (
    NONNEGATIVE,
    POSITIVE,
    ConfigError,
    SeedStreams,
    Settings,
    interval,
    setting,
)

__all__ = [
    "CHOICES",
    "LR_SWEEP",
    "PAPER",
    "PRESETS",
    "SEEDS",
    "Figure1Config",
    "SweepOptions",
]

#: Fixed by the paper (docs/method.md section 7); not flags except where a test needs them
#: smaller.
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
DATASETS = ("mnist", "fashion-mnist")

#: Per seed k: the initial weights (shared by both networks), the data order, and the
#: batches of the population statistics; seed k's streams are 3k, 3k + 1, 3k + 2.
SEEDS = SeedStreams("init", "data", "population")


@dataclass(frozen=True)
class Figure1Config(Settings):
    """Everything that determines the numbers of a run (the fingerprint of its checkpoint)."""

    dataset: str = setting("mnist", "the dataset", choices=DATASETS)
    steps: int = setting(PAPER["steps"], f"training steps per network (paper: {PAPER['steps']})",
                         check=POSITIVE)
    batch_size: int = setting(PAPER["batch_size"],
                              f"mini-batch size (paper: {PAPER['batch_size']})", check=POSITIVE)
    seeds: int = setting(1, "seeds per network; curves show mean and range", check=POSITIVE)
    seed: int = setting(0, "first seed", check=NONNEGATIVE)
    lr: float = setting(LR_SWEEP["winner"], f"SGD learning rate, both networks (default "
                        f"{LR_SWEEP['winner']}: the lr sweep's winner for the baseline)",
                        check=POSITIVE)
    momentum: float = setting(0.0, "SGD momentum (default 0: plain SGD)",
                              check=interval(0, 1, high_open=True))
    init_std: float = setting(0.1, "std of the Gaussian initial weights", check=POSITIVE)
    binarize_threshold: float = setting(0.5, "pixel/255 above this is 1, else 0",
                                        check=interval(0, 1, high_open=True))
    eps: float = setting(1e-5, "BN epsilon", check=POSITIVE)
    bn_momentum: float = setting(0.1, "BN moving-average momentum",
                                 check=interval(0, 1, low_open=True))
    bn_layer: str = setting("batchnorm", "batchnorm.BatchNorm1d or torch.nn.BatchNorm1d",
                            choices=("batchnorm", "torch"))
    hidden: tuple[int, ...] = setting((100, 100, 100), "hidden layer widths", flag=False)
    unit: int = setting(0, "the last-hidden-layer unit of Figure 1(b, c)", check=NONNEGATIVE)
    eval_every: int | None = setting(None, "steps between test evaluations (default: "
                                     "steps/100)", check=POSITIVE)
    checkpoint_every: int | None = setting(None, "steps between checkpoints, a multiple of "
                                           "--eval-every (default: 10 evaluations)",
                                           check=POSITIVE)
    population_batches: int = setting(1000, "training mini-batches for the Algorithm 2 "
                                      "population statistics", check=POSITIVE)

    def __post_init__(self) -> None:
        super().__post_init__()
        eval_every = self.eval_every if self.eval_every is not None else max(1, self.steps // 100)
        if eval_every > self.steps:
            raise ConfigError(f"--eval-every {eval_every} is more than --steps {self.steps}")
        checkpoint_every = (self.checkpoint_every if self.checkpoint_every is not None
                            else 10 * eval_every)
        if checkpoint_every % eval_every:
            raise ConfigError(
                f"--checkpoint-every {checkpoint_every} must be a multiple of --eval-every "
                f"{eval_every} (checkpoints are taken at evaluation points)")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size {self.batch_size}: BN needs at least 2 examples "
                              "a batch")
        if self.unit >= self.hidden[-1]:
            raise ConfigError(f"--unit {self.unit}: the last hidden layer has units "
                              f"0..{self.hidden[-1] - 1}")
        object.__setattr__(self, "eval_every", eval_every)
        object.__setattr__(self, "checkpoint_every", checkpoint_every)


#: ``--preset``: named settings; flags given on the command line override them.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},  # the paper's run, 50k steps (about 100-150 s on one CPU thread)
    "quick": {"steps": 2000, "population_batches": 100},  # a smoke test, about 20 s
}


@dataclass(frozen=True)
class SweepOptions(Settings):
    """``--sweep-lr``: the baseline's learning-rate sweep instead of the figure."""

    sweep_lr: bool = setting(False, "instead of the figure: the baseline's learning-rate "
                             "sweep on a validation split, into OUT/lr_sweep")
    sweep_values: tuple[float, ...] = setting(tuple(LR_SWEEP["values"]), "learning rates of "
                                              "--sweep-lr (at least 2)", check=POSITIVE,
                                              metavar="LR")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sweep_lr and len(set(self.sweep_values)) < 2:
            raise ConfigError("--sweep-values needs at least 2 different learning rates")


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
