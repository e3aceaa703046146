"""The claims of the lab, in report order, each ``id -> "module:attribute"`` of its spec.

Modules are imported only when their claim is selected, so ``--only`` of one claim
never imports (or breaks on) another.
"""

from __future__ import annotations

import importlib

from batchnorm.experiments.claims.base import ClaimSpec

__all__ = ["CLAIMS", "CLAIM_IDS", "load_claim"]

_PACKAGE = "batchnorm.experiments.claims"

CLAIMS: dict[str, str] = {
    "higher-lr": "higher_lr:CLAIM",
    "init": "init:CLAIM",
    "saturating": "saturating:CLAIM",
    "regularizer": "regularizer:CLAIM",
    "scale-invariance": "scale_invariance:CLAIM",
    "bjorck": "bjorck:CLAIM",
    "ics": "santurkar:ICS",
    "noisy-bn": "santurkar:NOISY_BN",
    "smoothness": "santurkar:SMOOTHNESS",
    "selu": "self_normalizing:SELU",
    "elu": "self_normalizing:ELU",
    "small-batch": "small_batch:CLAIM",
    "accumulation": "accumulation:CLAIM",
}

CLAIM_IDS: tuple[str, ...] = tuple(CLAIMS)


def load_claim(claim_id: str) -> ClaimSpec:
    """The :class:`ClaimSpec` of ``claim_id`` (imports its module)."""
    module_name, _, attribute = CLAIMS[claim_id].partition(":")
    spec = getattr(importlib.import_module(f"{_PACKAGE}.{module_name}"), attribute)
    if not isinstance(spec, ClaimSpec) or spec.id != claim_id:
        raise TypeError(f"{CLAIMS[claim_id]} is not the ClaimSpec of {claim_id!r}")
    return spec
