"""The lab's own settings: which preset, which claims. Each claim's numbers live in its
module's presets (one config per claim, recorded in ``<id>/config.json``)."""

from __future__ import annotations

from dataclasses import dataclass

from batchnorm.experiments.claims import registry
from batchnorm.experiments.runner import Settings, comma_separated, setting

__all__ = ["PRESETS", "PRESET_HELP", "LabConfig"]

#: quick: every claim small enough for CI (<= 4 minutes in all on 2 cores); default: the
#: recorded run (<= 45 minutes on 2 cores); gpu: larger models, data and seed counts.
PRESETS: dict[str, dict[str, object]] = {"quick": {}, "default": {}, "gpu": {}}
PRESET_HELP = ("quick: every claim small, for CI (<= 4 min on 2 cores); default: the recorded "
               "run (<= 45 min on 2 cores); gpu: larger models, data and seed counts")


def _claim_ids(value: object) -> str | None:
    return (None if value in registry.CLAIM_IDS
            else f"expected one of {', '.join(registry.CLAIM_IDS)}")


@dataclass(frozen=True)
class LabConfig(Settings):
    only: tuple[str, ...] = setting(
        (), "comma-separated claims to run (default: all)", check=_claim_ids,
        parse=comma_separated(str), metavar="NAME,...")

    def selected(self) -> tuple[str, ...]:
        """The claims to run, in report order."""
        return tuple(claim for claim in registry.CLAIM_IDS if not self.only or claim in self.only)
