"""``batchnorm reproduce inception``: the paper's Figures 2-3 (and section 9) at small scale.

Trains the Inception variants of docs/method.md section 8 on Fashion-MNIST (or MNIST)
with the small network of :mod:`batchnorm.models.inception`, then an ensemble of BN-x30
networks, and writes figure2.png, report.md, summary.json, metrics.csv, config.json.

Modes (all write into ``--out``, and the report shows whatever results exist):

* default: ``--variants`` (the five of Figure 3 and the two no-BN controls) + ensemble;
* ``--ablation``: bn-x5 with each of section 4.2.1's seven changes undone in turn;
* ``--sweep-lr LR,LR,...``: the base learning-rate sweep for ``inception``; the best
  value is the module constant ``BASE_LR``, which every variant is defined relative to.

Threads: one intra-op thread per training process by default: on this 2-core machine,
shared with other jobs, two threads ran a step 5-15x slower than one (oversubscription).

Modules: :mod:`.recipe` (the paper's recipe and its variants), :mod:`.config` (settings,
presets, modes), :mod:`.data` (splits, shuffling, distortions), :mod:`.train` (one run),
:mod:`.report` (summary and report.md), :mod:`.plots` (figure2.png), :mod:`.cli` (flags,
planning and entry point).
"""

from batchnorm.experiments.inception.cli import PROG, add_arguments, plan_runs, run
from batchnorm.experiments.inception.config import (
    PRESETS,
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
    VARIANTS,
    Recipe,
    ablation_recipes,
    ensemble_recipe,
    variant_recipe,
)
from batchnorm.experiments.inception.report import average_probabilities, steps_to_reach
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
    "CONTROLS",
    "DISTORTIONS",
    "PRESETS",
    "PROG",
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
    "build_model",
    "build_optimizer",
    "distort",
    "ensemble_recipe",
    "evaluation_steps",
    "learning_rate",
    "load_splits",
    "plan_runs",
    "run",
    "run_fingerprint",
    "steps_to_reach",
    "synthetic_splits",
    "train_run",
    "variant_recipe",
]
