"""higher-lr: the verdict rule on synthetic per-seed ratios, and the per-seed ratio of the
largest trainable rates computed by hand."""

import math

import pytest

from batchnorm.experiments.claims import higher_lr as H
from batchnorm.experiments.claims.registry import load_claim


def test_rule_supported_when_both_models_clearly_above_one_doubling():
    outcome, interval, per_model = H.verdict({"mlp": [2.0, 3.0, 2.0], "conv": [1.66] * 3})
    assert outcome == "supported"
    assert per_model["mlp"][0] == per_model["conv"][0] == "supported"
    assert interval.n == 3 and interval.mean == pytest.approx((7 / 3 + 1.66) / 2)
    # three seeds that disagree by a grid step leave the interval too wide
    assert H.verdict({"mlp": [2.0] * 3, "conv": [1.66, 1.66, 3.32]})[0] == "mixed"


def test_rule_not_supported_when_bn_trains_no_higher():
    outcome, _, per_model = H.verdict({"mlp": [0.0, 0.0, 0.0], "conv": [-1.66, -1.66, -1.66]})
    assert outcome == "not supported"
    assert {v for v, _ in per_model.values()} == {"not supported"}


def test_rule_mixed_when_models_disagree_or_seeds_straddle():
    assert H.verdict({"mlp": [3.0, 3.0, 3.0], "conv": [0.0, 0.0, 0.0]})[0] == "mixed"
    assert H.verdict({"mlp": [0.0, 3.32, 1.66], "conv": [0.0, 3.32, 1.66]})[0] == "mixed"
    # exactly at the margin is not beyond it
    assert H.verdict({"mlp": [0.5, 0.5], "conv": [0.5, 0.5]})[0] == "mixed"


def test_rule_rejects_unaligned_seeds():
    with pytest.raises(ValueError):
        H.verdict({"mlp": [1.0, 2.0], "conv": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError):
        H.verdict({})


def _rows(arm_vals):
    return [{"lr": lr, "seed": seed, "val": val, "test": val, "val_at_80": val, "finite": True}
            for (lr, seed), val in arm_vals.items()]


def test_log2_ratios_by_hand():
    base = _rows({(0.1, 0): 0.9, (1.0, 0): 0.95, (10.0, 0): 0.1,
                  (0.1, 1): 0.9, (1.0, 1): 0.5, (10.0, 1): 0.1})
    bn = _rows({(0.1, 0): 0.9, (1.0, 0): 0.95, (10.0, 0): 0.9,
                (0.1, 1): 0.9, (1.0, 1): 0.9, (10.0, 1): 0.1})
    ratios = H.log2_ratios({"base": base, "bn": bn}, seeds=2)
    # seed 0: base 1 (10 fails), bn 10 -> log2 10; seed 1: base 0.1, bn 1 -> log2 10
    assert ratios == pytest.approx([math.log2(10), math.log2(10)])
    summary = H.lr_summary({"base": base, "bn": bn}, seeds=2)
    assert summary["base"]["best_lr"] == 0.1  # mean val 0.9 vs 0.725
    assert summary["bn"]["best_lr"] == 1.0 and summary["bn"]["max_trainable"] == [10.0, 1.0]


def test_spec_and_presets():
    spec = load_claim("higher-lr")
    assert set(spec.presets) == {"quick", "default", "gpu"}
    default = spec.presets["default"]
    assert default.seeds >= 3
    # the grids are log grids wide enough to fail at the top (checked in the run)
    assert max(default.mlp_lrs) / min(default.mlp_lrs) >= 2 ** 8
    assert max(default.conv_lrs) / min(default.conv_lrs) >= 100
