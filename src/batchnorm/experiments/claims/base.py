"""What one claim of the lab is: its spec, the context it runs in, and its result.

A claim module defines one :class:`ClaimSpec` (``CLAIM``) whose ``presets`` map each
preset name (``quick``, ``default``, ``gpu``) to a frozen settings dataclass (a
:class:`~batchnorm.experiments.runner.Settings`: the claim's own config, recorded in
``<id>/config.json``) and whose ``run(config, context)`` trains what it must and returns a
:class:`ClaimResult`. The verdict rule is code in the claim module, fixed before the run,
applied to the per-seed numbers by a pure function the tests call on synthetic numbers.

:class:`ClaimContext` gives a claim what every claim needs: the datasets (loaded once
per lab run), its folder for plots and extra files, the device, a progress bar, and
:meth:`ClaimContext.memo`: a JSON cache of sub-runs keyed by everything that decides
their numbers, shared across claims (one claim reuses another's learning-rate sweep) and
kept across ``--resume`` (a killed lab loses at most the sub-run in flight).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from batchnorm.experiments.runner import Progress, Settings, write_json
from batchnorm.experiments.runner.evidence import Interval, Verdict

__all__ = ["ClaimContext", "ClaimResult", "ClaimSpec"]

T = TypeVar("T")
CACHE_FOLDER = "cache"


@dataclass(frozen=True)
class ClaimResult:
    """What a claim found.

    ``verdict`` comes from the claim's rule; ``metric`` names the number behind it (with
    its unit and sign convention) and ``value`` is that number over seeds with its 95%
    interval; ``finding`` says in a sentence or two what came out, plainly, and says so
    when it goes against the claim's source; ``section`` is the claim's markdown body in
    ``report.md`` (tables, plot links relative to the run folder); ``details`` are the
    numbers behind it (JSON), ``plots`` the files it wrote (relative to the run folder).
    """

    verdict: Verdict
    metric: str
    value: Interval
    finding: str
    section: str
    details: dict[str, Any] = field(default_factory=dict)
    plots: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "metric": self.metric, "value": self.value.to_dict(),
                "finding": self.finding, "section": self.section, "details": self.details,
                "plots": list(self.plots)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClaimResult:
        return cls(data["verdict"], data["metric"], Interval.from_dict(data["value"]),
                   data["finding"], data["section"], dict(data.get("details", {})),
                   tuple(data.get("plots", ())))


@dataclass(frozen=True)
class ClaimSpec:
    """A claim: who makes it, what we measure, the rule, per-preset settings, the run."""

    id: str
    title: str
    source: str
    statement: str
    measured: str
    rule: str
    presets: Mapping[str, Settings]
    run: Callable[[Any, ClaimContext], ClaimResult]


@dataclass
class ClaimContext:
    """Everything a claim's ``run`` may use besides its config (see the module doc)."""

    claim_id: str
    out: Path
    device: torch.device
    data_dir: str | None = None
    progress: bool = True
    datasets: dict[str, Any] = field(default_factory=dict)
    salt: Mapping[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """This claim's folder inside the run folder (created on first use)."""
        path = self.out / self.claim_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def relative(self, path: Path) -> str:
        """``path`` relative to the run folder (how report.md links files)."""
        return str(Path(path).relative_to(self.out))

    def dataset(self, name: str) -> Any:
        """The :class:`batchnorm.data.Dataset` ``name``, loaded once per lab run."""
        if name not in self.datasets:
            from batchnorm.data import load_dataset

            self.datasets[name] = load_dataset(name, data_dir=self.data_dir,
                                               progress=self.progress)
        return self.datasets[name]

    def bar(self, total: int, desc: str) -> Progress:
        """A progress bar of ``total`` units (use as a context manager, then ``start()``)."""
        return Progress(total, f"{self.claim_id}: {desc}", enabled=self.progress)

    def warn(self, message: str) -> None:
        print(f"batchnorm reproduce claims: {self.claim_id}: {message}", file=sys.stderr)

    def memo(self, key: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """``compute()``'s JSON-able value, cached in ``cache/`` under ``key``.

        ``key`` must hold everything that decides the value (model, data sizes, seed,
        learning rate, steps, ...); the lab adds the package and torch versions and the
        device. A cached value is reused only when its stored key is equal, so a changed
        setting recomputes; an unreadable cache file is recomputed and replaced.
        """
        full = {"key": dict(key), "salt": dict(self.salt)}
        text = json.dumps(full, sort_keys=True, default=str)
        digest = hashlib.sha256(text.encode()).hexdigest()[:24]
        path = self.out / CACHE_FOLDER / f"{digest}.json"
        if path.is_file():
            try:
                stored = json.loads(path.read_text())
                if json.dumps(stored["input"], sort_keys=True, default=str) == text:
                    return stored["value"]
            except (OSError, ValueError, KeyError):
                self.warn(f"{path.name}: unreadable cache entry, recomputing it")
        value = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"input": json.loads(text), "value": value})
        return value
