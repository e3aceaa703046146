"""saturating: the verdict rule on synthetic per-seed accuracies, the presets."""

from batchnorm.experiments.claims import saturating as S
from batchnorm.experiments.claims.registry import load_claim


def test_rule_three_outcomes():
    assert S.verdict([0.95, 0.96, 0.95], [0.11, 0.3, 0.1])[0] == "supported"
    assert S.verdict([0.90, 0.91, 0.90], [0.95, 0.96, 0.95])[0] == "not supported"
    assert S.verdict([0.955, 0.96, 0.95], [0.95, 0.955, 0.95])[0] == "mixed"  # < 1 point
    outcome, interval = S.verdict([0.9, 0.5], [0.5, 0.9])
    assert outcome == "mixed" and interval.mean == 0.0


def test_presets_are_deep_sigmoid():
    spec = load_claim("saturating")
    default = spec.presets["default"]
    assert default.depth >= 10 and default.seeds >= 3
    assert spec.presets["quick"].seeds == 2
