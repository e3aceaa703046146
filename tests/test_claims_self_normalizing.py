"""The selu and elu claims: the rule on synthetic numbers, the stacked deep networks
(SELU, inits, BN placement, AlphaDropout) against hand checks, and the quick preset."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from batchnorm.experiments.claims import self_normalizing as S

pytestmark = pytest.mark.usefixtures("one_thread")


def test_margin_verdict_three_outcomes():
    bn = [0.85, 0.86, 0.855]
    assert S.margin_verdict([0.852, 0.858, 0.857], bn)[0] == "supported"
    assert S.margin_verdict([0.80, 0.81, 0.805], bn)[0] == "not supported"
    verdict, interval = S.margin_verdict([0.80, 0.88, 0.85], bn)
    assert verdict == "mixed" and interval.low < -S.MARGIN < interval.high


def test_selu_constants_and_values():
    x = torch.tensor([-50.0, -1.0, 0.0, 2.0], dtype=torch.float64)
    lam, alpha = 1.0507009873554805, 1.6732632423543772
    expected = [-lam * alpha * (1 - math.exp(-50)), lam * alpha * (math.exp(-1) - 1), 0.0,
                2 * lam]
    assert S.selu(x).tolist() == pytest.approx(expected, rel=1e-15)
    assert torch.allclose(S.selu(x), F.selu(x), rtol=1e-14, atol=0)


def _generators(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_init_scales_and_shared_draws():
    sizes = (400, 300, 10)
    lecun = S.DeepStack(S.ARMS["selu"], sizes, _generators(0, 1))
    he = S.DeepStack(S.ARMS["relu-bn"], sizes, _generators(0, 1))
    assert lecun.weights[0].std().item() == pytest.approx(1 / math.sqrt(400), rel=0.02)
    assert lecun.weights[1].std().item() == pytest.approx(1 / math.sqrt(300), rel=0.05)
    assert he.weights[0].std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    # same seed, same draw whatever the arm: he = sqrt(2) * lecun
    assert torch.allclose(he.weights[0], math.sqrt(2) * lecun.weights[0])
    assert not torch.equal(lecun.weights[0][0], lecun.weights[0][1])  # seeds differ
    # a Linear followed by BN has no bias; the others keep theirs
    assert he.biases[0].numel() == 0 and he.biases[1].shape == (2, 1, 10)
    assert lecun.biases[0].shape == (2, 1, 300)


def test_selu_keeps_deep_activations_normalized_relu_does_not():
    # Klambauer's fixed point: standardized input, LeCun init, 32 SELU layers
    x = torch.randn(2000, 64, dtype=torch.float64)
    sizes = (64, *[256] * 32, 10)
    stats = []
    S.DeepStack(S.ARMS["selu"], sizes, _generators(0)).double()(x, stats)
    mean, var = stats[-1]
    assert abs(mean.item()) < 0.1 and var.item() == pytest.approx(1.0, abs=0.15)
    relu = S.DeepStack(S.Arm("relu", "lecun"), sizes, _generators(0)).double()
    stats = []
    relu(x, stats)
    assert stats[-1][1].item() < 1e-6  # halves per layer: 2^-32


def test_bn_after_the_activation_normalizes_each_hidden_output():
    model = S.DeepStack(S.ARMS["relu-bn-after"], (20, 16, 16, 3), _generators(0, 1)).double()
    stats = []
    model(torch.randn(64, 20, dtype=torch.float64) * 5 + 3, stats)
    for mean, var in stats:
        assert torch.allclose(mean, torch.zeros(2, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(var, torch.ones(2, dtype=torch.float64), atol=1e-3)  # eps


def test_alpha_dropout_only_in_training():
    model = S.DeepStack(S.ARMS["selu-ad"], (20, 16, 3), _generators(0)).double()
    x = torch.randn(32, 20, dtype=torch.float64)
    model.eval()
    plain = S.DeepStack(S.ARMS["selu"], (20, 16, 3), _generators(0)).double().eval()
    assert torch.equal(model(x), plain(x))
    model.train()
    assert not torch.equal(model(x), plain(x))


def test_bad_arm_is_refused():
    with pytest.raises(ValueError, match="bad arm"):
        S.DeepStack(S.Arm("tanh", "he"), (4, 3, 2), _generators(0))


def test_selection_on_validation():
    rows = [{"arm": "a", "depth": 8, "lr": lr, "seed": s, "val": val, "test": test}
            for lr, val, test in ((0.1, 0.9, 0.5), (1.0, 0.8, 0.99)) for s in (0, 1)]
    rows += [{"arm": "b", "depth": 8, "lr": 0.1, "seed": s, "val": 0.85, "test": 0.99}
             for s in (0, 1)]
    lr, chosen = S._val_row(rows, "a", 8)
    assert lr == 0.1 and [r["test"] for r in chosen] == [0.5, 0.5]
    assert S.best_arm(rows, ("a", "b"), 8) == "a"


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    from batchnorm.cli import main

    code = main(["reproduce", "claims", "--preset", "quick", "--only", "selu,elu",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    found = {entry["id"]: entry for entry in summary["claims"]}
    assert set(found) == {"selu", "elu"}
    for entry in found.values():
        assert entry["verdict"] in ("supported", "not supported", "mixed")
        assert entry["seeds"] == 2
    report = (tmp_path / "report.md").read_text()
    for name in ("selu/activations_depth6.png", "elu/loss_depth6.png"):
        assert (tmp_path / name).is_file() and name in report


def test_edge_rate_extends_one_grid_factor_past_a_winning_edge():
    grid = (0.005, 0.02, 0.08, 0.32)
    assert S.edge_rate(grid, 0.005) == pytest.approx(0.00125)
    assert S.edge_rate(grid, 0.32) == pytest.approx(1.28)
    assert S.edge_rate(grid, 0.02) is None and S.edge_rate(grid, 0.08) is None
    assert S.edge_rate((0.003, 0.01, 0.03), 0.003) == pytest.approx(0.0009)  # uneven grid
    assert S.edge_rate((0.1,), 0.1) is None


class _Memo:
    """A ClaimContext stand-in: memo computes every time, and records the keys."""

    def __init__(self):
        self.keys = []

    def memo(self, key, compute):
        self.keys.append(key)
        return compute()


def test_trainings_extend_an_arm_whose_edge_rate_wins(monkeypatch):
    # validation accuracy rises with the rate for "relu" (its best is always the top edge),
    # peaks inside the grid for the others
    def fake_train(config, split, arm, depth, bar=None):
        return [{"arm": arm, "depth": depth, "lr": lr, "seed": seed, "test": 0.5,
                 "val": lr if arm == "relu" else -abs(math.log(lr / 0.02))}
                for lr in config.lrs for seed in config.seeds]

    monkeypatch.setattr(S, "train_arm", fake_train)
    monkeypatch.setattr(S.DataSpec, "load", lambda self, context, flat: None)
    context = _Memo()
    context.bar = lambda total, desc: _NullBar()
    config = S.SelfNormConfig(depths=(8,), arms=("relu", "selu"), seeds=(0, 1))
    rows, extensions = S.trainings(config, context)
    assert [(e["arm"], e["edge"], e["lr"]) for e in extensions] == [
        ("relu", 0.32, 1.28), ("relu", 1.28, 5.12)]  # config.extend = 2 times, no more
    assert sorted({r["lr"] for r in rows if r["arm"] == "relu"}) == [
        0.005, 0.02, 0.08, 0.32, 1.28, 5.12]
    assert sorted({r["lr"] for r in rows if r["arm"] == "selu"}) == [0.005, 0.02, 0.08, 0.32]
    assert [k["lrs"] for k in context.keys] == [
        [0.005, 0.02, 0.08, 0.32], [1.28], [5.12], [0.005, 0.02, 0.08, 0.32]]
    assert all("extend" not in k for k in context.keys)  # the count does not retrain
    no_extension = S.trainings(S.SelfNormConfig(depths=(8,), arms=("relu",), seeds=(0,),
                                                extend=0), context)[1]
    assert no_extension == []


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False

    def start(self):
        pass

    def advance_to(self, step):
        pass


def test_late_change_is_reported_per_arm():
    chosen = [{"val": 0.80, "val_at_80": 0.78}, {"val": 0.82, "val_at_80": 0.81},
              {"val": None, "val_at_80": 0.5}]
    interval = S._late(chosen)
    assert interval.mean == pytest.approx((0.02 + 0.01 - 0.5) / 3)
