"""Figure 1's settings: what the paper fixes, what we chose where it is silent, the presets.

Every setting is a field of :class:`Figure1Config` (the figure run) or of
:class:`SweepOptions` (the learning-rate sweep) and a flag of
``batchnorm reproduce figure1``; :data:`CHOICES` says why each value we chose is the
default. config.json records all of it, so a run folder explains itself.

The field defaults are the paper's run (50k steps); ``--preset default`` (what
``make reproduce`` runs) is a shorter run that fits in about two minutes on two CPU
cores, ``--preset full`` is everything (sweep, 5 seeds, both rate pairs, 50k steps).
"""

from __future__ import annotations

import math
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
    "PAPER",
    "PRESETS",
    "SEEDS",
    "SWEEP_PRESETS",
    "SWEEP_VALUES",
    "TRAINS_THRESHOLD",
    "Figure1Config",
    "SweepOptions",
    "eval_schedule",
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

DATASETS = ("mnist", "fashion-mnist")
#: The sweep's grid: log-spaced from far below any useful rate to far above where plain
#: SGD on sigmoids stops training (about half a decade apart).
SWEEP_VALUES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
#: A network "trains" at a rate when its final validation accuracy is at least this
#: (chance is 10%; every network that learns at all passes 90% within the sweep's steps).
TRAINS_THRESHOLD = 0.90

#: Per seed k: the initial weights (shared by both networks), the data order, and the
#: batches of the population statistics; seed k's streams are 3k, 3k + 1, 3k + 2.
SEEDS = SeedStreams("init", "data", "population")


def _rate(value: float | None) -> str | None:
    return None if value is None else POSITIVE(value)


@dataclass(frozen=True)
class Figure1Config(Settings):
    """Everything that determines the numbers of a run (the fingerprint of its checkpoint)."""

    dataset: str = setting("mnist", "the dataset", choices=DATASETS)
    steps: int = setting(PAPER["steps"], f"training steps per network (paper: {PAPER['steps']})",
                         check=POSITIVE)
    batch_size: int = setting(PAPER["batch_size"],
                              f"mini-batch size (paper: {PAPER['batch_size']})", check=POSITIVE)
    seeds: int = setting(5, "seeds per network; curves show the mean and a band over seeds",
                         check=POSITIVE)
    seed: int = setting(0, "first seed", check=NONNEGATIVE)
    lr_baseline: float | None = setting(None, "SGD learning rate of the network without BN "
                                        "(default: the recorded sweep's best for it)",
                                        check=_rate)
    lr_bn: float | None = setting(None, "SGD learning rate of the BN network (default: the "
                                  "recorded sweep's best for it)", check=_rate)
    shared_lr: float | None = setting(None, "also train both networks at this one rate (a "
                                      "second pair of runs; --preset full: 0.1, paper-like)",
                                      check=_rate)
    momentum: float = setting(0.0, "SGD momentum (default 0: plain SGD)",
                              check=interval(0, 1, high_open=True))
    init_std: float = setting(0.1, "std of the Gaussian initial weights", check=POSITIVE)
    binarize_threshold: float = setting(0.5, "pixel/255 above this is 1, else 0",
                                        check=interval(0, 1, high_open=True))
    eps: float = setting(1e-5, "BN epsilon", check=POSITIVE)
    bn_momentum: float = setting(0.1, "BN moving-average momentum",
                                 check=interval(0, 1, low_open=True))
    hidden: tuple[int, ...] = setting((100, 100, 100), "hidden layer widths", flag=False)
    unit: int = setting(0, "the last-hidden-layer unit of Figure 1(b, c)", check=NONNEGATIVE)
    eval_every: int | None = setting(None, "steps between regular test evaluations after the "
                                     "early ones (default: steps/50)", check=POSITIVE)
    early_until: int = setting(1000, "log-spaced evaluations from step 1 up to this step "
                               "(besides step 0)", check=POSITIVE)
    early_points: int = setting(10, "number of log-spaced early evaluations", check=NONNEGATIVE)
    checkpoint_every: int | None = setting(None, "steps between checkpoints (and population-"
                                           "statistics evaluations), a multiple of --eval-every "
                                           "(default: 10 evaluations)", check=POSITIVE)
    layer_images: int | None = setting(None, "test images for the percentiles of every unit "
                                       "of the last hidden layer (default: all; the chosen "
                                       "unit always uses all)", check=POSITIVE)
    population_batches: int = setting(500, "training mini-batches for the Algorithm 2 "
                                      "population statistics", check=POSITIVE)

    def __post_init__(self) -> None:
        super().__post_init__()
        eval_every = self.eval_every if self.eval_every is not None else max(1, self.steps // 50)
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

    def with_rates(self, winners: dict[str, float]) -> Figure1Config:
        """The config with each arm's rate not given filled in from ``winners``."""
        return self.replace(
            lr_baseline=self.lr_baseline if self.lr_baseline is not None else
            float(winners["baseline"]),
            lr_bn=self.lr_bn if self.lr_bn is not None else float(winners["bn"]))

    def pairs(self) -> list[tuple[str, float, float]]:
        """(pair name, baseline lr, BN lr): each arm at its own rate, then the shared rate."""
        if self.lr_baseline is None or self.lr_bn is None:
            raise ValueError("the learning rates are not resolved (call with_rates first)")
        pairs = [("own", self.lr_baseline, self.lr_bn)]
        if self.shared_lr is not None:
            pairs.append(("shared", self.shared_lr, self.shared_lr))
        return pairs


def eval_schedule(steps: int, eval_every: int, early_until: int, early_points: int
                  ) -> list[int]:
    """Evaluation steps: 0, ``early_points`` log-spaced steps in [1, early_until] (rounded,
    distinct), then every ``eval_every`` steps, and always the last step."""
    points = {0, steps, *range(eval_every, steps + 1, eval_every)}
    top = min(early_until, steps)
    if early_points == 1:
        points.add(top)
    elif early_points > 1 and top >= 1:
        ratio = math.log(top) / (early_points - 1)
        points.update(max(1, round(math.exp(ratio * i))) for i in range(early_points))
    return sorted(points)


#: ``--preset``: named settings; flags given on the command line override them.
PRESETS: dict[str, dict[str, Any]] = {
    # make reproduce: 3 seeds per arm at each arm's recorded rate, 10k steps (<= 150 s).
    "default": {"steps": 10_000, "seeds": 3, "eval_every": 500, "population_batches": 200,
                "layer_images": 2000},
    # everything: 5 seeds, the paper's 50k steps, own rates and the shared rate 0.1.
    "full": {"steps": 50_000, "seeds": 5, "shared_lr": 0.1},
    "quick": {"steps": 2000, "seeds": 2, "population_batches": 50},  # a smoke test
}


@dataclass(frozen=True)
class SweepOptions(Settings):
    """``--sweep-lr``: the learning-rate sweep of both arms, before the figure."""

    sweep_lr: bool = setting(False, "first recompute the learning-rate sweep (both arms, "
                             "validation split) into OUT/lr_sweep; the figure then uses its "
                             "best rate per arm")
    sweep_values: tuple[float, ...] = setting(SWEEP_VALUES, "learning rates of the sweep (at "
                                              "least 2)", check=POSITIVE, metavar="LR")
    sweep_steps: int = setting(5000, "training steps per network in the sweep", check=POSITIVE)
    sweep_seeds: int = setting(3, "seeds per rate and arm in the sweep", check=POSITIVE)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sweep_lr and len(set(self.sweep_values)) < 2:
            raise ConfigError("--sweep-values needs at least 2 different learning rates")


#: The sweep options of each preset (same names as :data:`PRESETS`).
SWEEP_PRESETS: dict[str, dict[str, Any]] = {"default": {}, "full": {"sweep_lr": True},
                                            "quick": {}}


#: Why each default is what it is (the paper gives no value for any of these).
CHOICES: dict[str, str] = {
    "optimizer": "plain SGD, p <- p - lr * grad, no momentum, no weight decay, constant "
    "learning rate: the paper names none, and plain SGD is what it calls 'SGD' "
    "(batchnorm.models.stacked.StackedSGD, tested equal to torch.optim.SGD); --momentum adds "
    "torch's momentum",
    "lr": "each arm its own rate: the best on a validation split in the sweep (both arms, "
    f"rates {', '.join(f'{v:g}' for v in SWEEP_VALUES)}, several seeds); the default run "
    "reads the recorded sweep (recorded_sweep.py, generated from results/figure1/lr_sweep/"
    "lr_sweep.json); --lr-baseline, --lr-bn, --sweep-lr. --shared-lr adds a pair at one "
    "rate for both (paper-like small rate 0.1 in --preset full)",
    "sweep": "both arms, one network per (rate, seed), trained on the first 50k training "
    "images for --sweep-steps steps (shorter than the figure's runs) and scored on the last "
    "10k (the test set is never read); criterion: the seed-mean of the LAST validation "
    f"accuracy; a rate 'trains' when the final validation accuracy is >= {TRAINS_THRESHOLD}",
    "init_std": "weights ~ N(0, 0.1^2), biases 0: 'small random Gaussian'; both networks start "
    "from identical W (same seed). 0.1 does NOT put every layer's Wu + b near N(0, 1) (whose "
    "15-85 percentile spread is 2.07): measured at init over the 10k test images (seed 0), "
    "the median spread over units is 1.67 in the first hidden layer, 0.35 in the second and "
    "0.08 in the last (unit 0: 0.065): the sigmoids squash the signal layer by layer. See "
    "'Initialization' in the report; --init-std",
    "binarize_threshold": "pixel / 255 > 0.5 -> 1 else 0 (the paper does not say how it "
    "binarized); --binarize-threshold",
    "eps": "1e-5, torch's default (the paper gives none); --eps",
    "bn_momentum": "moving averages for the while-training evaluation: torch's momentum 0.1 "
    "(weight of the newest batch); --bn-momentum",
    "engine": "batchnorm.models.stacked: all seeds (and rate pairs) of one arm in one "
    "StackedMLP, the BN arm in another; network k of both stacks shares seed k's initial "
    "weights and batches; each network equals the same network trained alone (tested)",
    "data_order": "each seed draws a fresh permutation of the 60k training images per epoch "
    "(1000 batches of 60, none dropped) from its own seeded torch.Generator; both networks "
    "of a seed (and both rate pairs) see the same batches in the same order",
    "seeds": "seed k = --seed + k sets the initial weights (shared by both arms) and the data "
    "order; curves are the mean over seeds with a band (min to max)",
    "evaluation": "on the whole 10k test set at step 0, at --early-points log-spaced steps up "
    "to --early-until (the baseline's early drift), then every --eval-every steps; BN in eval "
    "mode with its moving averages. Final numbers are the LAST evaluation, never a maximum "
    "over test evaluations",
    "percentiles": "unit --unit (default 0) of the last hidden layer: 15/50/85th percentiles "
    "over the test images of its sigmoid input (Wu + b; gamma x-hat + beta with BN) and, for "
    "BN, of x-hat (before gamma and beta); the same for all units of the layer, summarized "
    "by the median over units (over the first --layer-images test images: 2000 in --preset "
    "default, where sorting 10k x 100 values per network was a third of the run's time)",
    "population_statistics": "at every checkpoint and at the end, a copy of each BN network "
    "gets Algorithm 2's population statistics (StackedMLP.recompute_statistics, weights "
    "frozen) over --population-batches training mini-batches of 60 drawn with a generator "
    "seeded by (seed, step), and is evaluated beside the moving averages",
    "stability": "fixed before the run (report.STABILITY): relative drift of a unit = the "
    "largest change of any of its 15/50/85th percentiles after step s, divided by its "
    "15-85 spread at step s; s = 100 (BN's moving averages have forgotten their start, "
    "0.9^100 < 1e-4; the baseline's early drift is included) and s = 10% of the run",
}
