"""``batchnorm reproduce figure1``: the paper's Figure 1 (MNIST), end to end.

Trains the 784-100-100-100-10 sigmoid network with and without BN (docs/method.md
section 7) on the same batches from the same initial weights, evaluates both on
the 10k test images every ``--eval-every`` steps, and writes into ``--out``:

``config.json``   every setting, every choice the paper leaves open and why, the lr sweep
``metrics.csv``   one row per seed, network and evaluation: accuracy, loss, percentiles
``figure1.png``   (a) test accuracy vs steps, (b) baseline and (c) BN: 15/50/85th
                  percentiles of one last-hidden-unit's input to the sigmoid
``summary.json``  final and best accuracy per network, steps BN needs to reach the
                  baseline's final accuracy, BN with Algorithm 2 population statistics
``report.md``     all of the above for people, with the measured wall time and load
``checkpoint.pt`` the state at the last evaluation checkpoint (``--resume`` continues it)

``--sweep-lr`` runs the baseline's learning-rate sweep instead (into ``OUT/lr_sweep``).

Modules: :mod:`.config` (settings, presets, the paper's values and our choices),
:mod:`.train` (the training engine), :mod:`.experiment` (the figure run),
:mod:`.sweep` (the lr sweep), :mod:`.report` (summary and report.md),
:mod:`.plots` (figure1.png), :mod:`.cli` (flags and entry point).
"""

from batchnorm.experiments.figure1.cli import PROG, add_arguments, config_from_args, run
from batchnorm.experiments.figure1.config import (
    CHOICES,
    LR_SWEEP,
    PAPER,
    PRESETS,
    SEEDS,
    Figure1Config,
    SweepOptions,
)
from batchnorm.experiments.figure1.report import METRIC_COLUMNS, metrics_csv, summarize
from batchnorm.experiments.figure1.train import BatchStream, PlainSGD, SimulatedKillError

__all__ = [
    "CHOICES",
    "LR_SWEEP",
    "METRIC_COLUMNS",
    "PAPER",
    "PRESETS",
    "PROG",
    "SEEDS",
    "BatchStream",
    "Figure1Config",
    "PlainSGD",
    "SimulatedKillError",
    "SweepOptions",
    "add_arguments",
    "config_from_args",
    "metrics_csv",
    "run",
    "summarize",
]
