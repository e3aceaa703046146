"""``batchnorm reproduce inception``: the paper's Figures 2-3 (and section 9) at small scale.

Trains the Inception variants of docs/method.md section 8 on Fashion-MNIST (or MNIST)
with the small network of :mod:`batchnorm.models.inception` (2 seeds of the main recipes,
every run annealed to lr 0), judges the paper's claims in code (:mod:`.analysis`), ensembles
the seeds of the best recipe, and writes figure2.png, report.md, summary.json, metrics.csv,
config.json.

Modes (all write into ``--out``, and the report shows whatever results exist):

* default: ``--variants`` (the five of Figure 3 and the four no-BN controls);
* ``--ablation``: bn-x5 with each of section 4.2.1's seven changes undone in turn;
* ``--sweep-lr LR,LR,...``: the base learning-rate sweep for ``inception``; the best
  value is the module constant ``BASE_LR``, which every variant is defined relative to.

Threads: one intra-op thread per training process by default: on this 2-core machine,
shared with other jobs, two threads ran a step 5-15x slower than one (oversubscription).

``--nproc N`` (or ``torchrun``) trains each run with N processes sharing every global
batch (SyncBatchNorm, averaged gradients; the same numbers up to floating point).

Modules: :mod:`.recipe` (the paper's recipe and its variants), :mod:`.config` (settings,
presets, modes), :mod:`.data` (splits, shuffling, distortions), :mod:`.train` (one run),
:mod:`.parallel` (several processes per run), :mod:`.report` (summary and report.md),
:mod:`.plots` (figure2.png), :mod:`.cli` (flags, planning and entry point).
"""

from batchnorm.experiments.inception.analysis import (
    CLAIMS,
    PLATEAU_GAIN,
    best_recipe,
    group_seeds,
    judge,
    plateau_gain,
    run_numbers,
    steps_to_reach,
)
from batchnorm.experiments.inception.cli import PROG, add_arguments, plan_runs, run
from batchnorm.experiments.inception.config import (
    PRESETS,
    TARGET_ACCURACY,
    InceptionExperimentConfig,
    InceptionOptions,
    RecipeOverrides,
    Scale,
)
from batchnorm.experiments.inception.data import (
    Splits,
    batch_order,
    distort,
    load_splits,
    synthetic_splits,
)
from batchnorm.experiments.inception.recipe import (
    ABLATIONS,
    BASE_LR,
    CONTROLS,
    DISTORTIONS,
    MAIN,
    VARIANTS,
    Recipe,
    ablation_recipes,
    variant_recipe,
)
from batchnorm.experiments.inception.report import average_probabilities, ensemble_of_best
from batchnorm.experiments.inception.train import (
    RunSpec,
    build_model,
    build_optimizer,
    evaluation_steps,
    learning_rate,
    run_fingerprint,
    train_run,
)

__all__ = [
    "ABLATIONS",
    "BASE_LR",
    "CLAIMS",
    "CONTROLS",
    "DISTORTIONS",
    "MAIN",
    "PLATEAU_GAIN",
    "PRESETS",
    "PROG",
    "TARGET_ACCURACY",
    "VARIANTS",
    "InceptionExperimentConfig",
    "InceptionOptions",
    "Recipe",
    "RecipeOverrides",
    "RunSpec",
    "Scale",
    "Splits",
    "ablation_recipes",
    "add_arguments",
    "average_probabilities",
    "batch_order",
    "best_recipe",
    "build_model",
    "build_optimizer",
    "distort",
    "ensemble_of_best",
    "evaluation_steps",
    "group_seeds",
    "judge",
    "learning_rate",
    "load_splits",
    "plan_runs",
    "plateau_gain",
    "run",
    "run_fingerprint",
    "run_numbers",
    "steps_to_reach",
    "synthetic_splits",
    "train_run",
    "variant_recipe",
]
