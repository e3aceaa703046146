"""``batchnorm reproduce claims``: every claim of the paper and of its critics, tested on
real data, each with a verdict from a rule fixed in code before the run.

Writes into ``--out`` (default ``runs/claims``): ``report.md`` opening with the verdict
table, ``summary.json`` (one entry per claim: id, verdict, metric, value, interval,
seeds), and per claim ``<id>/config.json``, ``<id>/result.json`` and its plots;
``cache/`` holds the sub-runs (reused across claims and by ``--resume``).

Modules: :mod:`.base` (ClaimSpec, ClaimContext, ClaimResult), :mod:`.registry` (the
claims in report order), :mod:`.config` (the lab's flags), :mod:`.lab` (the loop),
:mod:`.report`, :mod:`.cli`; one module per claim (or family of claims).
"""

from batchnorm.experiments.claims.base import ClaimContext, ClaimResult, ClaimSpec
from batchnorm.experiments.claims.cli import PROG, add_arguments, run
from batchnorm.experiments.claims.registry import CLAIM_IDS, CLAIMS, load_claim

__all__ = ["CLAIMS", "CLAIM_IDS", "PROG", "ClaimContext", "ClaimResult", "ClaimSpec",
           "add_arguments", "load_claim", "run"]
