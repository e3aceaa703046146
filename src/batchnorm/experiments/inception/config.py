"""The Inception experiment's settings, presets and modes, in the runner's one config style.

* :class:`InceptionExperimentConfig`: the scale of the runs and which runs (``--preset``
  sets the scale: quick for CI, default for 2 CPU cores, gpu);
* :class:`RecipeOverrides`: recipe fields forced on every run (None: each variant's own);
* :class:`InceptionOptions`: modes and how to run (not part of any run's fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchnorm.experiments.inception.recipe import BASE_LR, CONTROLS, DISTORTIONS, VARIANTS
from batchnorm.experiments.runner import (
    NONNEGATIVE,
    POSITIVE,
    Settings,
    comma_separated,
    interval,
    setting,
)

__all__ = ["PRESETS", "InceptionExperimentConfig", "InceptionOptions", "RecipeOverrides",
           "Scale"]

DATASETS = ("fashion-mnist", "mnist", "synthetic")
RUNS = (*VARIANTS, *CONTROLS)


@dataclass(frozen=True)
class Scale:
    """The size of every run: network width, steps, evaluations, how much data."""

    width: float
    steps: int
    evaluations: int  # validation evaluations per run (>= 50, as the issue asks)
    eval_size: int  # validation images per evaluation (the final one uses all)
    train_limit: int | None = None  # use only the first N training images (quick)
    final_eval_limit: int | None = None  # final val/test evaluation on the first N (quick)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class InceptionExperimentConfig(Settings):
    """Which runs, at what scale: everything but the recipe that decides the numbers."""

    dataset: str = setting("fashion-mnist", "the dataset (synthetic: a learnable stand-in)",
                           choices=DATASETS)
    variants: tuple[str, ...] = setting(RUNS, f"any of {', '.join(RUNS)}", choices=RUNS,
                                        metavar="VARIANT")
    seeds: int = setting(1, "seeds per variant", check=POSITIVE)
    base_lr: float = setting(BASE_LR, "the lr every variant is relative to (x5, x30)",
                             check=POSITIVE)
    width: float = setting(0.5, "multiplies every channel count", check=POSITIVE)
    steps: int = setting(2000, "training steps per run", check=POSITIVE)
    evaluations: int = setting(50, "validation evaluations per run", check=POSITIVE)
    eval_size: int = setting(1000, "validation images per evaluation (the final one uses "
                             "all)", check=POSITIVE)
    ensemble_members: int = setting(3, "BN-x30 ensemble size (0 skips)", check=NONNEGATIVE)
    train_limit: int | None = setting(None, "use only the first N training images",
                                      check=POSITIVE)
    final_eval_limit: int | None = setting(None, "final validation and test evaluation on "
                                           "the first N images", check=POSITIVE)

    def scale(self) -> Scale:
        return Scale(self.width, self.steps, self.evaluations, self.eval_size,
                     self.train_limit, self.final_eval_limit)


#: ``--preset``: named scales; flags given on the command line override them.
PRESETS: dict[str, dict[str, Any]] = {
    # CI smoke test: a few minutes on 2 loaded cores, the whole pipeline end to end.
    "quick": {"width": 0.25, "steps": 100, "evaluations": 50, "eval_size": 256,
              "ensemble_members": 2, "train_limit": 4096, "final_eval_limit": 1000},
    # Seven variants + three ensemble members in about 40 minutes on 2 CPU cores.
    "default": {},
    # A GPU: full width, ~13 epochs, the whole validation split at every evaluation.
    "gpu": {"width": 2.0, "steps": 20000, "evaluations": 100, "eval_size": 10000,
            "ensemble_members": 6},
}


@dataclass(frozen=True)
class RecipeOverrides(Settings):
    """Recipe fields applied to every run; None keeps each variant's own value."""

    lr: float | None = setting(None, "learning rate", check=POSITIVE)
    momentum: float | None = setting(None, "SGD momentum", check=interval(0, 1, high_open=True))
    batch_size: int | None = setting(None, "mini-batch size", check=POSITIVE)
    dropout: float | None = setting(None, "dropout before the classifier",
                                    check=interval(0, 1, high_open=True))
    weight_decay: float | None = setting(None, "L2 weight decay", check=NONNEGATIVE)
    lr_decay_speed: float | None = setting(None, "learning-rate decay speed", check=POSITIVE)
    lrn: bool | None = setting(None, "local response normalization after the stem")
    shuffle: str | None = setting(None, "shuffling", choices=("shards", "full"))
    distortion: str | None = setting(None, "photometric distortions",
                                     choices=tuple(sorted(DISTORTIONS)))

    def changes(self) -> dict[str, Any]:
        return {key: value for key, value in self.to_dict().items() if value is not None}


@dataclass(frozen=True)
class InceptionOptions(Settings):
    """What to run instead of the variants, and how (never part of a fingerprint)."""

    ablation: bool = setting(False, "run the seven-change ablation from bn-x5 instead")
    sweep_lr: tuple[float, ...] | None = setting(None, "run the base-lr sweep for `inception` "
                                                 "instead", check=POSITIVE,
                                                 parse=comma_separated(float),
                                                 metavar="LR,LR,...")
    jobs: int = setting(1, "runs trained in parallel processes", check=POSITIVE)
    channels_last: bool = setting(True, "memory format (measured faster on CPU; see report)")

    @property
    def mode(self) -> str:
        return "sweep" if self.sweep_lr else "ablation" if self.ablation else "variants"
