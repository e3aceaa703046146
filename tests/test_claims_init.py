"""init: the verdict rule on synthetic spreads, the spread by hand, the presets."""

import pytest

from batchnorm.experiments.claims import higher_lr
from batchnorm.experiments.claims import init as I
from batchnorm.experiments.claims.registry import load_claim


def test_spreads_by_hand():
    table = {0.1: [0.5, 0.9], 1.0: [0.95, 0.92], 10.0: [0.1, 0.91]}
    assert I.spreads(table) == pytest.approx([0.85, 0.02])


def test_rule_three_outcomes():
    supported = I.verdict([0.01, 0.02, 0.015], [0.5, 0.6, 0.55])
    assert supported[0] == "supported" and supported[1].mean == pytest.approx(0.535)
    assert I.verdict([0.5, 0.6, 0.55], [0.01, 0.02, 0.015])[0] == "not supported"
    assert I.verdict([0.1, 0.1, 0.1], [0.1, 0.12, 0.14])[0] == "mixed"  # under 2 points
    assert I.verdict([0.1, 0.1], [0.0, 0.9])[0] == "mixed"  # straddles


def test_presets_share_the_sweep():
    spec = load_claim("init")
    for name in ("quick", "default", "gpu"):
        config = spec.presets[name]
        assert higher_lr.fields_of(config) == higher_lr.fields_of(higher_lr.PRESETS[name])
        assert 1.0 in config.scales
