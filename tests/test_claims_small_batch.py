"""The small-batch claim: its verdict rule on synthetic numbers, its arms and runs, and the
quick preset end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import batchnorm
from batchnorm.cli import main
from batchnorm.experiments.claims import registry
from batchnorm.experiments.claims.data import Split
from batchnorm.experiments.claims.small_batch import (
    CLAIM,
    MARGIN,
    Arm,
    SmallBatchConfig,
    SmallBatchRun,
    _difference,
    _grid,
    _Stack,
    _steps,
    arms,
    sign,
    train_run,
    train_stack,
    verdict,
)
from batchnorm.experiments.runner.evidence import Interval

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_with_three_presets():
    assert registry.load_claim("small-batch") is CLAIM
    assert set(CLAIM.presets) == {"quick", "default", "gpu"}
    assert CLAIM.presets["default"].seeds >= 3 and CLAIM.presets["quick"].seeds == 2
    for config in CLAIM.presets.values():
        assert 4 in config.batches  # the rule's batch


def test_verdict_supported_when_renorm_clearly_wins():
    outcome, interval = verdict([0.80, 0.82, 0.81], [0.75, 0.76, 0.755])
    assert outcome == "supported"
    assert interval.mean == pytest.approx(0.055) and interval.low > MARGIN


def test_verdict_not_supported_when_renorm_does_not_beat_bn():
    outcome, interval = verdict([0.750, 0.760, 0.755], [0.751, 0.761, 0.757])
    assert outcome == "not supported"
    assert interval.high < MARGIN


def test_verdict_small_gain_below_the_margin_is_not_supported():
    """A consistent +0.2 points: real but smaller than the margin."""
    outcome, _ = verdict([0.752, 0.762, 0.772], [0.750, 0.760, 0.770])
    assert outcome == "not supported"


def test_verdict_mixed_when_seeds_disagree():
    outcome, interval = verdict([0.80, 0.70, 0.78], [0.75, 0.76, 0.74])
    assert outcome == "mixed"
    assert interval.low < MARGIN < interval.high


def test_verdict_pairs_by_seed():
    """Seed effects shared by both arms cancel: a constant +2 points is supported even
    though the seeds differ by 10 points."""
    bn = [0.70, 0.80, 0.75]
    assert verdict([v + 0.02 for v in bn], bn)[0] == "supported"
    with pytest.raises(ValueError, match="pair"):
        verdict([0.8, 0.8], [0.7, 0.7, 0.7])


def test_one_seed_is_mixed():
    assert verdict([0.9], [0.5])[0] == "mixed"


def test_arms_of_the_default():
    names = [arm.name for arm in arms(CLAIM.presets["default"])]
    assert names == ["bn@2", "bn@4", "bn@32", "renorm@2", "renorm@4", "renorm@32", "gn@4",
                     "bn@128", "ghost@128/32"]
    assert Arm("ghost", 128, 32).label == "Ghost BN (batch 128, ghost 32)"


@pytest.mark.parametrize(("kind", "types"), [
    ("bn", (batchnorm.BatchNorm2d, batchnorm.BatchNorm1d)),
    ("renorm", (batchnorm.BatchRenorm2d, batchnorm.BatchRenorm1d)),
    ("ghost", (batchnorm.GhostBatchNorm2d, batchnorm.GhostBatchNorm1d)),
    ("gn", (nn.GroupNorm, nn.GroupNorm)),
])  # fmt: skip
def test_runs_build_their_normalization(kind, types):
    run = SmallBatchRun(kind, 8, 0.01, 0, samples=800, ghost=4)
    model = run.build()
    assert type(model.norm1) is types[0] and type(model.norm3) is types[1]
    if kind == "renorm":  # the schedule scales with the run: 100 steps
        assert (model.norm1.warmup_steps, model.norm1.ramp_steps) == (10, 30)
    if kind == "ghost":
        assert model.norm2.virtual_batch_size == 4
    same = SmallBatchRun(kind, 8, 0.01, 0, samples=800, ghost=4).build()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(),
                                                  strict=True))  # fmt: skip
    assert run.key()["version"].startswith("small-batch")


def test_equal_samples_means_more_steps_for_smaller_batches():
    assert SmallBatchRun("bn", 2, 0.1, 0, samples=64).steps == 32
    assert SmallBatchRun("bn", 32, 0.1, 0, samples=64).steps == 2


def _split(n: int = 64) -> Split:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 10
    x = torch.randn(n, 1, 28, 28, generator=generator) * 0.5 + y.view(-1, 1, 1, 1) / 5
    return Split("toy", x, y, x[:32], y[:32], x[32:], y[32:])


def test_train_run_reports_eval_accuracies():
    result = train_run(SmallBatchRun("renorm", 4, 0.05, 1, samples=200), _split())
    assert set(result) == {"lr", "seed", "val", "val_at_80", "test", "train_loss", "finite"}
    assert result["finite"] and 0 <= result["val"] <= 1 and 0 <= result["test"] <= 1
    again = train_run(SmallBatchRun("renorm", 4, 0.05, 1, samples=200), _split())
    assert again == result  # deterministic from the seed


def test_train_run_stops_on_a_non_finite_loss():
    result = train_run(SmallBatchRun("gn", 4, 1e30, 0, samples=400), _split())
    assert not result["finite"] and result["train_loss"] is None


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path: Path):
    code = main(["reproduce", "claims", "--preset", "quick", "--only", "small-batch",
                 "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 0
    record = json.loads((tmp_path / "small-batch" / "result.json").read_text())
    result = record["result"]
    assert result["verdict"] in {"supported", "not supported", "mixed"}
    assert result["value"]["n"] == 2
    assert (tmp_path / result["plots"][0]).is_file()
    assert "Batch Renorm at 4 - BN at 4" in result["section"]
    assert set(result["details"]["arms"]) == {arm.name for arm in arms(CLAIM.presets["quick"])}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [entry["id"] for entry in summary["claims"]] == ["small-batch"]
    cached = len(list((tmp_path / "cache").iterdir()))
    assert cached == len(arms(CLAIM.presets["quick"]))  # one stack per arm (1 constant)
    assert isinstance(CLAIM.presets["quick"], SmallBatchConfig)


def test_default_trains_the_large_batches():
    """The default preset's evidence: enough samples that batch 32 takes a few hundred
    steps, batch 128 a fixed minimum, and a grid of at least 3 constants."""
    config = CLAIM.presets["default"]
    assert config.samples >= 4000 and len(config.lr_constants) >= 3
    assert _steps(config, 32) >= 100 and _steps(config, config.large_batch) >= config.min_steps
    assert _steps(config, 2) == config.samples // 2
    assert SmallBatchRun("bn", 128, 0.1, 0, samples=1280, min_steps=100).steps == 100


def test_edge_extension_goes_one_grid_step_beyond_the_edge_once():
    config = SmallBatchConfig(lr_constants=(0.025, 0.05, 0.1))
    assert _grid(config, [0.025, 0.05, 0.1], 0.1) == pytest.approx(0.2)
    assert _grid(config, [0.025, 0.05, 0.1], 0.025) == pytest.approx(0.0125)
    assert _grid(config, [0.025, 0.05, 0.1], 0.05) is None
    assert _grid(config, [0.025, 0.05, 0.1, 0.2], 0.2) is None  # extended already
    assert _grid(SmallBatchConfig(lr_constants=(0.1,)), [0.1], 0.1) is None


@pytest.mark.parametrize("kind", ["bn", "renorm", "gn", "ghost"])
def test_a_stack_computes_what_its_models_compute_alone(kind):
    runs = [SmallBatchRun(kind, 8, 0.05 * (i + 1), i % 2, samples=80, ghost=4, gn_groups=4)
            for i in range(3)]  # fmt: skip
    stack = _Stack(runs).train()
    x = _split().train_x[:8]
    together = stack(x.expand(-1, 3, -1, -1))
    for i, run in enumerate(runs):
        alone = run.build().train()(x)
        assert torch.allclose(together[i], alone, atol=1e-5), (kind, i)


def test_stacked_training_equals_separate_training():
    """Equal up to float rounding (short runs: a long unstable one amplifies rounding)."""
    split = _split()
    runs = [SmallBatchRun("renorm", 4, lr, seed, samples=60) for lr, seed in
            ((0.02, 0), (0.08, 0), (0.02, 1))]  # fmt: skip
    together = train_stack(runs, split)
    for run, result in zip(runs, together, strict=True):
        alone = train_run(run, split)
        assert result["val"] == pytest.approx(alone["val"], abs=1 / 32)
        assert result["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-3)
        assert result["lr"] == run.lr and result["seed"] == run.seed


def test_a_diverging_run_leaves_its_stack_mates_alone():
    split = _split()
    good = SmallBatchRun("gn", 4, 0.05, 0, samples=400)
    results = train_stack([SmallBatchRun("gn", 4, 1e30, 0, samples=400), good], split)
    assert not results[0]["finite"] and results[0]["train_loss"] is None
    assert results[1]["finite"]
    assert results[1]["train_loss"] == pytest.approx(train_run(good, split)["train_loss"],
                                                     rel=1e-4)
    with pytest.raises(ValueError, match="differ only"):
        train_stack([good, SmallBatchRun("gn", 8, 0.05, 0, samples=400)], split)


def test_the_finding_words_follow_the_intervals():
    assert sign(Interval(0.02, 0.01, 0.03, 4)) == "above"
    assert sign(Interval(-0.02, -0.03, -0.01, 4)) == "below"
    assert sign(Interval(0.02, -0.01, 0.05, 4)) == "unclear"
    assert sign(Interval(0.02, None, None, 1)) == "unclear"
    assert "no clear difference" in _difference("x", Interval(0.02, -0.01, 0.05, 4), "B", "W")
    assert _difference("x", Interval(0.02, 0.01, 0.03, 4), "B", "W").endswith("B.")
    assert _difference("x", Interval(-0.02, -0.03, -0.01, 4), "B", "W").endswith("W.")
