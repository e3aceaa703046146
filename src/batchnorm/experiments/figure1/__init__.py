"""``batchnorm reproduce figure1``: the paper's Figure 1 (MNIST), end to end, with seeds,
per-arm learning rates and verdicts.

Trains the 784-100-100-100-10 sigmoid network without and with BN (docs/method.md
section 7) with the multi-network engine (:mod:`batchnorm.models.stacked`): one stack
per arm, network k of both sharing seed k's initial weights and batches; each arm at
its own learning rate (the best on a validation split in the sweep), optionally a second
pair at one shared rate. Writes into ``--out``:

``config.json``    every setting, every choice the paper leaves open and why, the sweep,
                   the measured distribution at init
``metrics.csv``    one row per network, arm, statistics kind and evaluation
``figure1_<pair>.png``  accuracy, percentile panels (unit and layer, x-hat), lr panel
``summary.json``   final numbers (LAST evaluation) with 95% intervals over seeds,
                   seed-paired differences, drift statistics, verdicts
``report.md``      all of it for people, with "Against the paper" and the wall time
``checkpoint.pt``  the state at the last checkpoint (``--resume`` continues it)
``lr_sweep/``      with ``--sweep-lr`` (and ``--preset full``): the sweep

Modules: :mod:`.config` (settings, presets, choices), :mod:`.recorded_sweep` (generated:
the recorded sweep the default run reads), :mod:`.train` (the engine), :mod:`.sweep`,
:mod:`.experiment` (the figure run), :mod:`.report` (summary, verdict rules, report.md),
:mod:`.plots`, :mod:`.cli`.
"""

from batchnorm.experiments.figure1.cli import PROG, add_arguments, config_from_args, run
from batchnorm.experiments.figure1.config import (
    CHOICES,
    PAPER,
    PRESETS,
    SEEDS,
    SWEEP_VALUES,
    Figure1Config,
    SweepOptions,
    eval_schedule,
)
from batchnorm.experiments.figure1.recorded_sweep import RECORDED_SWEEP
from batchnorm.experiments.figure1.report import METRIC_COLUMNS, metrics_csv, summarize
from batchnorm.experiments.figure1.train import BatchStream, SimulatedKillError

__all__ = [
    "CHOICES",
    "METRIC_COLUMNS",
    "PAPER",
    "PRESETS",
    "PROG",
    "RECORDED_SWEEP",
    "SEEDS",
    "SWEEP_VALUES",
    "BatchStream",
    "Figure1Config",
    "SimulatedKillError",
    "SweepOptions",
    "add_arguments",
    "config_from_args",
    "eval_schedule",
    "metrics_csv",
    "run",
    "summarize",
]
