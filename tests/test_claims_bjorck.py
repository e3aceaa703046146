"""bjorck: the gains read from a sweep by hand, and the verdict rule's three outcomes."""

import pytest

from batchnorm.experiments.claims import bjorck as B
from batchnorm.experiments.claims import higher_lr
from batchnorm.experiments.claims.registry import load_claim


def _rows(table):
    return [{"lr": lr, "seed": seed, "val": val, "test": test, "finite": True}
            for (lr, seed), (val, test) in table.items()]


def test_gains_by_hand():
    base = _rows({(0.1, 0): (0.90, 0.80), (0.1, 1): (0.90, 0.82),
                  (1.0, 0): (0.50, 0.99), (1.0, 1): (0.50, 0.99)})
    bn = _rows({(0.1, 0): (0.91, 0.81), (0.1, 1): (0.91, 0.83),
                (1.0, 0): (0.95, 0.90), (1.0, 1): (0.95, 0.92)})
    found = B.gains({"base": base, "bn": bn})
    assert found["rates"] == {"base": 0.1, "bn": 1.0}  # validation decides, not test
    assert found["same"] == pytest.approx([0.01, 0.01])
    assert found["own"] == pytest.approx([0.10, 0.10])


def test_rule_three_outcomes():
    supported = B.verdict({"mlp": [0.00, 0.01, 0.0], "conv": [0.0, 0.0, 0.0]},
                          {"mlp": [0.05, 0.06, 0.05], "conv": [0.04, 0.05, 0.05]})
    assert supported[0] == "supported" and supported[1].mean < 0
    # BN gains as much at the baseline's rate (and it helps): against Bjorck
    against = B.verdict({"mlp": [0.05, 0.06, 0.05], "conv": [0.04, 0.05, 0.05]},
                        {"mlp": [0.05, 0.06, 0.05], "conv": [0.04, 0.05, 0.05]})
    assert against[0] == "mixed"  # part (a) holds, part (b) fails: mixed per model
    both_fail = B.verdict({"mlp": [0.0, 0.001, 0.0]}, {"mlp": [-0.02, -0.03, -0.02]})
    assert both_fail[0] == "not supported"
    models_disagree = B.verdict({"mlp": [0.0, 0.01, 0.0], "conv": [0.0, 0.001, 0.0]},
                                {"mlp": [0.05, 0.06, 0.05], "conv": [-0.02, -0.03, -0.02]})
    assert models_disagree[0] == "mixed"
    per_model = models_disagree[2]
    assert per_model["conv"]["own"][0] == "not supported"


def test_rule_rejects_mismatched_models():
    with pytest.raises(ValueError):
        B.verdict({"mlp": [0.0]}, {"conv": [0.0]})


def test_uses_the_higher_lr_presets():
    assert load_claim("bjorck").presets is higher_lr.PRESETS
