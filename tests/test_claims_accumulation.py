"""The accumulation claim: its rule on synthetic numbers, its presets, the shadow of the
per-micro-batch arm, and (slow) the quick preset end to end."""

import json

import pytest
import torch

from _datasets import dataset_or_skip
from batchnorm import accumulate_statistics
from batchnorm.experiments.claims import load_claim
from batchnorm.experiments.claims.accumulation import (
    ACC_MARGIN,
    CLAIM,
    PRESETS,
    AccRun,
    _bn_layers,
    _build,
    verdict,
)

DISC_HIGH = [0.30, 0.32, 0.31]
DISC_LOW = [0.10, 0.12, 0.11]


def test_supported_when_both_parts_hold():
    result, acc, stat = verdict(DISC_HIGH, DISC_LOW, [0.80, 0.81, 0.82], [0.81, 0.82, 0.83])
    assert result == "supported"
    assert acc.low > ACC_MARGIN and stat.low > 0
    assert acc.mean == pytest.approx(0.01) and stat.mean == pytest.approx(0.2)


def test_not_supported_when_both_parts_are_decided_against():
    # accum's statistics are worse and its accuracy equal: both parts against
    result, acc, stat = verdict(DISC_LOW, DISC_HIGH, [0.80, 0.81, 0.82], [0.80, 0.8101, 0.8199])
    assert result == "not supported"
    assert acc.high < ACC_MARGIN and stat.high < 0


def test_mixed_when_the_parts_disagree_or_the_interval_straddles():
    # better statistics, but a negligible accuracy gain (the likely outcome): mixed
    assert verdict(DISC_HIGH, DISC_LOW, [0.80, 0.81, 0.82], [0.80, 0.81, 0.82])[0] == "mixed"
    # noisy accuracy differences straddling the margin
    assert verdict(DISC_HIGH, DISC_LOW, [0.80, 0.81, 0.82], [0.85, 0.79, 0.80])[0] == "mixed"
    # one seed: no interval, nothing is decided
    assert verdict([0.3], [0.1], [0.8], [0.9])[0] == "mixed"


def test_spec_and_presets():
    assert load_claim("accumulation") is CLAIM
    assert set(CLAIM.presets) == {"quick", "default", "gpu"}
    default = PRESETS["default"]
    assert default.seeds >= 3 and len(default.lrs) >= 2
    assert default.micro_batches * default.micro_size == 32
    assert PRESETS["quick"].seeds >= 2
    assert AccRun(True, 0.1, 0, default).key() != AccRun(False, 0.1, 0, default).key()
    assert "version" in AccRun(True, 0.1, 0, default).key()


def test_the_shadow_layers_carry_the_per_micro_batch_statistics(one_thread):
    """One training for two arms: shadows fed each micro-batch end with exactly the running
    statistics of an ordinary (per-micro-batch) training, whose weights are the same."""
    config = PRESETS["quick"]
    shared, plain = _build(config, 0), _build(config, 0)
    shadows = {layer: type(layer)(layer.num_features, momentum=config.bn_momentum)
               for layer in _bn_layers(shared)}
    def feed(module, args):  # returns None: a pre-hook's return value would replace the input
        shadows[module](args[0].detach())

    for layer in shadows:
        layer.register_forward_pre_hook(feed)
    torch.manual_seed(1)
    micro = [torch.randn(8, 1, 28, 28) for _ in range(4)]
    with accumulate_statistics(shared):
        for x in micro:
            shared(x).sum().backward()
    for x in micro:
        plain(x).sum().backward()
    for (layer, shadow), twin in zip(shadows.items(), _bn_layers(plain), strict=True):
        torch.testing.assert_close(shadow.running_mean, twin.running_mean)
        torch.testing.assert_close(shadow.running_var, twin.running_var)
        assert int(shadow.num_batches_tracked) == 4 and int(layer.num_batches_tracked) == 1
    for p, q in zip(shared.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path, one_thread):
    from batchnorm.cli import main
    dataset_or_skip("fashion-mnist")
    code = main(["reproduce", "claims", "--preset", "quick", "--only", "accumulation",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    record = json.loads((tmp_path / "accumulation" / "result.json").read_text())
    result = record["result"]
    assert result["verdict"] in ("supported", "not supported", "mixed")
    assert result["value"]["n"] == PRESETS["quick"].seeds
    details = result["details"]
    assert set(details["test"]) == {"micro", "accum", "batch32"}
    assert all(0 <= v <= 1 for values in details["test"].values() for v in values)
    assert (tmp_path / "accumulation" / "discrepancy_per_layer.png").is_file()
    assert "accumulation" in (tmp_path / "report.md").read_text()
