"""Numbers that can confirm or refute a claim: intervals over seeds and verdict rules.

Every experiment states its verdict rules in code, before the run, with these
pieces:

* :func:`mean_interval`: the mean of per-seed values with a two-sided Student-t
  confidence interval (``scipy.stats``); with one seed the interval is unknown
  (``low``/``high`` are None) and no rule can call it decided;
* :func:`paired_interval`: the interval of the per-seed differences ``a - b``
  (seed-paired: both arms saw the same batches and initial weights);
* :class:`Rule` / :func:`decide`: a claim is *supported* when the whole interval
  lies beyond ``margin`` in the claimed direction, *not supported* when the whole
  interval lies on the other side of ``margin``, and *mixed* when the interval
  straddles it (the data cannot tell at this number of seeds);
* :func:`combine`: several verdicts about one claim (e.g. two learning rates):
  all agree -> that verdict, otherwise *mixed*.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scipy import stats

__all__ = [
    "MIXED",
    "NOT_SUPPORTED",
    "SUPPORTED",
    "Interval",
    "Rule",
    "Verdict",
    "combine",
    "decide",
    "mean_interval",
    "paired_interval",
]

Verdict = Literal["supported", "not supported", "mixed"]
SUPPORTED: Verdict = "supported"
NOT_SUPPORTED: Verdict = "not supported"
MIXED: Verdict = "mixed"


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and its confidence interval (None when ``n`` < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        """The inverse of :meth:`to_dict` (e.g. an interval read back from summary.json)."""
        return cls(data["mean"], data["low"], data["high"], data["n"],
                   data.get("confidence", 0.95))

    def side(self, at: float = 0.0) -> str:
        """Where the interval lies relative to ``at``: ``"above"`` (low > at), ``"below"``
        (high < at), ``"straddles"`` (contains it), or ``"unknown"`` (no interval, or a
        bound that is not finite)."""
        low, high = self.low, self.high
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return "unknown"
        return "above" if low > at else "below" if high < at else "straddles"

    def format(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """``"+0.24 [+0.10, +0.38]"`` (times ``scale``), or the mean alone without an interval."""
        def number(value: float) -> str:
            return f"{value * scale:+.{digits}f}{unit}"

        if self.low is None or self.high is None:
            return f"{number(self.mean)} (n={self.n}, no interval)"
        return f"{number(self.mean)} [{number(self.low)}, {number(self.high)}]"


def mean_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """Mean and two-sided Student-t interval of independent per-seed values."""
    data = [float(value) for value in values]
    if not data:
        raise ValueError("mean_interval: no values")
    if any(math.isnan(value) for value in data):
        raise ValueError(f"mean_interval: NaN among the values {data}")
    n = len(data)
    mean = sum(data) / n
    if n < 2:
        return Interval(mean, None, None, n, confidence)
    sd = math.sqrt(sum((value - mean) ** 2 for value in data) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence)


def paired_interval(a: Sequence[float], b: Sequence[float],
                    confidence: float = 0.95) -> Interval:
    """Interval of the seed-paired differences ``a[i] - b[i]``."""
    if len(a) != len(b):
        raise ValueError(f"paired_interval: {len(a)} values against {len(b)}; pair them by seed")
    return mean_interval((x - y for x, y in zip(a, b, strict=True)), confidence)


@dataclass(frozen=True)
class Rule:
    """A verdict rule, fixed before the run: the claim holds if the quantity is beyond
    ``margin`` in the direction ``"greater"`` or ``"less"``."""

    claim: str
    quantity: str
    direction: Literal["greater", "less"] = "greater"
    margin: float = 0.0

    def describe(self) -> str:
        sign = ">" if self.direction == "greater" else "<"
        return (f"supported if the 95% interval of {self.quantity} lies entirely {sign} "
                f"{self.margin:g}; not supported if it lies entirely on the other side; "
                "mixed if it straddles it")


def decide(rule: Rule, interval: Interval) -> Verdict:
    """Apply ``rule`` to ``interval`` (see the module docstring)."""
    if interval.low is None or interval.high is None:
        return MIXED
    low, high = interval.low, interval.high
    if rule.direction == "less":
        low, high = -high, -low
        margin = -rule.margin
    else:
        margin = rule.margin
    if low > margin:
        return SUPPORTED
    if high < margin:
        return NOT_SUPPORTED
    return MIXED


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """One verdict from several about the same claim: unanimous, or mixed."""
    found = set(verdicts)
    if not found:
        raise ValueError("combine: no verdicts")
    return found.pop() if len(found) == 1 else MIXED
