"""regularizer: both parts of the verdict rule on synthetic per-seed numbers."""

from batchnorm.experiments.claims import higher_lr
from batchnorm.experiments.claims import regularizer as R
from batchnorm.experiments.claims.registry import load_claim


def test_rule_supported_needs_both_parts():
    outcome, gap, parts = R.verdict([0.10, 0.12, 0.11], [0.05, 0.06, 0.05],
                                    [0.880, 0.881, 0.879], [0.880, 0.882, 0.879])
    assert outcome == "supported"
    assert parts["gap"][0] == parts["dropout"][0] == "supported"
    assert gap.mean > 0


def test_rule_not_supported_when_both_parts_fail():
    outcome, _, parts = R.verdict([0.05, 0.06, 0.05], [0.10, 0.12, 0.11],
                                  [0.90, 0.91, 0.90], [0.86, 0.87, 0.86])
    assert outcome == "not supported"
    assert parts["gap"][0] == parts["dropout"][0] == "not supported"


def test_rule_mixed_when_parts_disagree():
    # BN reduces the gap, but Dropout still adds 4 points on top of BN
    outcome, _, parts = R.verdict([0.10, 0.12, 0.11], [0.05, 0.06, 0.05],
                                  [0.90, 0.91, 0.90], [0.86, 0.87, 0.86])
    assert outcome == "mixed"
    assert parts["gap"][0] == "supported" and parts["dropout"][0] == "not supported"


def test_presets_share_the_sweep():
    spec = load_claim("regularizer")
    for name in ("quick", "default", "gpu"):
        config = spec.presets[name]
        assert higher_lr.fields_of(config) == higher_lr.fields_of(higher_lr.PRESETS[name])
    assert spec.presets["default"].reg_train <= 10000
