"""Santurkar et al.'s claims (ics, noisy-bn, smoothness): verdict rules on synthetic numbers,
the measuring code against hand computations, and the quick preset end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from batchnorm.experiments.claims import santurkar as S
from batchnorm.models.stacked import StackedMLP

pytestmark = pytest.mark.usefixtures("one_thread")


# --- verdict rules --------------------------------------------------------------------------


def test_ics_verdict_three_outcomes():
    plain = [0.10, 0.12, 0.11]
    assert S.ics_verdict([0.11, 0.13, 0.12], plain)[0] == "supported"  # BN not lower
    assert S.ics_verdict([0.02, 0.03, 0.025], plain)[0] == "not supported"  # 4x lower
    verdict, interval = S.ics_verdict([0.05, 0.12, 0.09], plain)
    assert verdict == "mixed" and interval.low < math.log(0.8) < interval.high
    # log ratio, per seed: a single ratio of 2 is log 2
    assert S.ics_verdict([0.2, 0.2], [0.1, 0.1])[1].mean == pytest.approx(math.log(2))


def test_noisy_verdict_three_outcomes():
    bn, bn_shift = [0.95, 0.96, 0.955], [0.01, 0.012, 0.011]
    big = [0.1, 0.12, 0.11]
    assert S.noisy_verdict([0.952, 0.958, 0.956], bn, big, bn_shift)[0] == "supported"
    assert S.noisy_verdict([0.80, 0.82, 0.81], bn, big, bn_shift)[0] == "not supported"
    assert S.noisy_verdict([0.90, 0.97, 0.95], bn, big, bn_shift)[0] == "mixed"
    # as accurate but no larger shift: the claim's premise fails, so at most mixed
    verdict, accuracy, shift = S.noisy_verdict([0.952, 0.958, 0.956], bn, bn_shift, bn_shift)
    assert verdict == "mixed" and accuracy.low > -0.01 and shift.mean == 0.0


def test_smoothness_verdict_three_outcomes():
    plain = {key: [1.0, 1.2, 1.1] for key in S.SMOOTH_KEYS}
    lower = {key: [0.5, 0.6, 0.55] for key in S.SMOOTH_KEYS}
    higher = {key: [2.0, 2.4, 2.2] for key in S.SMOOTH_KEYS}
    assert S.smoothness_verdict(lower, plain)[0] == "supported"
    assert S.smoothness_verdict(higher, plain)[0] == "not supported"
    disagree = dict(lower, beta=[2.0, 2.4, 2.2])
    verdict, intervals = S.smoothness_verdict(disagree, plain)
    assert verdict == "mixed" and intervals["beta"].mean == pytest.approx(math.log(2))


# --- measuring code -------------------------------------------------------------------------


def test_layer_ics_matches_a_hand_computation_on_a_two_layer_net():
    torch.manual_seed(1)
    model = StackedMLP(2, (5, 4, 3), init_std=0.7, activation=torch.nn.ReLU,
                       generators=[torch.Generator().manual_seed(s) for s in (1, 2)]).double()
    with torch.no_grad():
        model.linear1_bias.normal_()
    x, y = torch.randn(2, 8, 5, dtype=torch.float64), torch.randint(3, (2, 8))
    lrs = torch.tensor([0.5, 2.0], dtype=torch.float64)
    relative, cosine = S.layer_ics(model, x, y, lrs)
    assert relative.shape == cosine.shape == (2, 1)
    for k in range(2):
        w1 = model.linear1_weight[k].detach().clone().requires_grad_()
        b1 = model.linear1_bias[k, 0].detach().clone().requires_grad_()
        w2 = model.output_weight[k].detach().clone().requires_grad_()
        b2 = model.output_bias[k, 0].detach()

        def loss(w1, b1, w2, k=k, b2=b2):
            return F.cross_entropy(torch.relu(x[k] @ w1 + b1) @ w2 + b2, y[k])

        g1, gb1, g2 = torch.autograd.grad(loss(w1, b1, w2), (w1, b1, w2))
        # the output layer's gradient by hand: h^T (softmax - onehot) / N
        h = torch.relu(x[k] @ w1 + b1).detach()
        p = torch.softmax(h @ w2.detach() + b2, 1) - F.one_hot(y[k], 3)
        assert torch.allclose(g2, h.t() @ p / 8, atol=1e-12)
        moved = torch.relu(x[k] @ (w1 - lrs[k] * g1) + (b1 - lrs[k] * gb1)).detach()
        p2 = torch.softmax(moved @ w2.detach() + b2, 1) - F.one_hot(y[k], 3)
        g2_after = moved.t() @ p2 / 8
        expected = (g2 - g2_after).norm() / g2.norm()
        assert relative[k, 0].item() == pytest.approx(expected.item(), rel=1e-9)
        cos = (g2 * g2_after).sum() / (g2.norm() * g2_after.norm())
        assert cosine[k, 0].item() == pytest.approx(cos.item(), rel=1e-9)
    # the model is left as it was
    assert S.layer_ics(model, x, y, lrs)[0].equal(relative)


def test_probe_along_gradient_on_a_quadratic():
    # L_k(x) = 1/2 sum_i a_ki x_i^2: g = a x, g(x - f lr g) = a x - f lr a^2 x, so
    # ||dg|| = f lr ||a^2 x|| (largest at the largest f), beta = ||a^2 x|| / ||a x||.
    a = torch.tensor([[1.0, 3.0], [0.5, 2.0]], dtype=torch.float64)
    x = torch.tensor([[1.0, -1.0], [2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    lrs = torch.tensor([0.1, 0.2], dtype=torch.float64)
    factors = (0.5, 1.0, 2.0, 4.0)

    def closure():
        losses = 0.5 * (a * x * x).sum(1)
        return losses.detach(), list(torch.autograd.grad(losses.sum(), [x]))

    start = x.detach().clone()
    found = S.probe_along_gradient(closure, [x], lrs, factors)
    assert x.detach().equal(start)
    for k in range(2):
        g, a2x = a[k] * start[k], a[k] ** 2 * start[k]
        losses = [0.5 * (a[k] * (start[k] - f * lrs[k] * g) ** 2).sum() for f in factors]
        assert found["loss_range"][k].item() == pytest.approx(
            (max(losses) - min(losses)).item(), rel=1e-12)
        assert found["grad_change"][k].item() == pytest.approx(
            (4.0 * lrs[k] * a2x.norm()).item(), rel=1e-12)
        assert found["beta"][k].item() == pytest.approx((a2x.norm() / g.norm()).item(),
                                                        rel=1e-12)
        assert found["beta"][k] <= a[k].max()  # never above the largest curvature


def test_noisy_relu_draws_the_stated_distribution():
    levels = torch.tensor([2.0, 0.0])
    noise = S.NoisyReLU(levels, torch.Generator().manual_seed(0))
    C = 20000
    h = torch.zeros(2, 2, C, dtype=torch.float64)
    h[:, 1] = 1.0  # rows 0 and 1: noisy values b and s + b
    noise.record = []
    noise(h)
    (mean, std), = noise.record
    s, b = 2 * std, mean - std  # mean = b + s/2, std = s/2 over the two rows
    assert bool((s[0] >= 1).all()) and bool((s[0] <= 3).all())
    assert bool((b[0] >= -2).all()) and bool((b[0] <= 2).all())
    assert s[0].mean().item() == pytest.approx(2.0, abs=0.03)  # U(1, 3)
    assert b[0].mean().item() == pytest.approx(0.0, abs=0.05)  # U(-2, 2)
    assert b[0].var().item() == pytest.approx(16 / 12, rel=0.05)
    assert torch.equal(s[1], torch.ones(C, dtype=torch.float64)) and not b[1].any()
    noise.record = []
    noise(h)  # a fresh draw at the next call (step)
    assert not torch.equal(noise.record[0][0][0], mean[0])
    noise.eval()  # evaluation: the noise's mean, scale 1 + n/2 and shift 0
    expected = torch.relu(h - 0.5) * torch.tensor([2.0, 1.0], dtype=torch.float64).view(2, 1, 1)
    assert torch.equal(noise(h - 0.5), expected)
    with pytest.raises(ValueError, match="levels"):
        S.NoisyReLU(torch.tensor([-1.0]), torch.Generator())


def test_shift_between_by_hand():
    before = [(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]]))]
    after = [(torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 3.0]]))]
    # unit 0: 0.5 + 0; unit 1: 1 + 2; mean over units 1.75
    assert S.shift_between(before, after).tolist() == [1.75]


def test_selection_uses_validation_not_test():
    networks = [{"level": 0.0, "lr": 0.1, "seed": s, "val": 0.9, "test": 0.5} for s in (0, 1)]
    networks += [{"level": 0.0, "lr": 1.0, "seed": s, "val": 0.8, "test": 0.99} for s in (0, 1)]
    lr, chosen = S.select(networks)
    assert lr == 0.1 and [n["seed"] for n in chosen] == [0, 1]


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    from batchnorm.cli import main

    code = main(["reproduce", "claims", "--preset", "quick", "--only",
                 "ics,noisy-bn,smoothness", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    found = {entry["id"]: entry for entry in summary["claims"]}
    assert set(found) == {"ics", "noisy-bn", "smoothness"}
    for entry in found.values():
        assert entry["verdict"] in ("supported", "not supported", "mixed")
        assert entry["seeds"] == 2
    report = (tmp_path / "report.md").read_text()
    for name in ("ics/ics.png", "noisy-bn/noisy_loss.png", "smoothness/beta.png"):
        assert (tmp_path / name).is_file() and name in report


# --- finding texts agree with the intervals -------------------------------------------------


def _interval(mean, low, high):
    from batchnorm.experiments.runner.evidence import Interval

    return Interval(mean, low, high, 3)


def test_ics_finding_below_zero_within_the_margin_is_not_undecided():
    # BN's ICS lower than the plain network's, but by less than 20%: the rule says supported
    interval = _interval(-0.10, -0.15, -0.05)
    assert S.decide(S.ICS_RULE, interval) == "supported"
    text = S.ics_finding(interval)
    assert "cannot tell" not in text
    assert "lower" in text and "less than the 20% margin" in text and "supported" in text
    assert "0.90x [0.86, 0.95]" in text


def test_ics_finding_follows_where_the_interval_lies():
    margin = math.log(0.8)
    cases = {  # (low, high) -> (verdict, words the text must hold, words it must not)
        (-0.263, -0.151): ("mixed", ("lower", "against"), ("cannot tell whether BN",)),
        (-0.6, -0.3): ("not supported", ("more than the 20% margin", "against"),
                       ("cannot tell",)),
        (0.05, 0.3): ("supported", ("higher",), ("cannot tell", "lower")),
        (-0.1, 0.1): ("supported", ("cannot tell it from", "at most 20% lower"), ("mixed",)),
        (-0.4, 0.1): ("mixed", ("cannot tell whether BN reduces",), ("supported",)),
    }
    for (low, high), (verdict, present, absent) in cases.items():
        interval = _interval((low + high) / 2, low, high)
        assert S.decide(S.ICS_RULE, interval) == verdict
        text = S.ics_finding(interval)
        assert text.endswith(f"{verdict}.") or f"says {verdict}" in text, text
        for word in present:
            assert word in text, (low, high, text)
        for word in absent:
            assert word not in text, (low, high, text)
    assert "no interval" in S.ics_finding(_interval(-0.1, None, None))
    assert margin < -0.2


def test_noisy_and_smoothness_texts_follow_the_intervals():
    within = S.noisy_level_text(0.5, _interval(-0.0002, -0.0058, 0.0054),
                                _interval(5.19, 5.11, 5.27))
    assert "(within 1 point of BN)" in within and "(more than 2x BN's)" in within
    undecided = S.noisy_level_text(1.0, _interval(-0.0061, -0.0197, 0.0076),
                                   _interval(0.5, 0.1, 0.9))
    assert "cannot tell whether within 1 point" in undecided
    assert "not clearly more than 2x" in undecided
    behind = S.noisy_level_text(2.0, _interval(-0.0182, -0.0213, -0.0150),
                                _interval(6.5, 6.4, 6.7))
    assert "(more than 1 point behind BN)" in behind
    names = {"loss_range": "loss range", "grad_change": "grad change", "beta": "beta"}
    text = S.smoothness_text({"loss_range": _interval(-4.26, -6.54, -1.98),
                              "grad_change": _interval(-2.32, -3.32, -1.31),
                              "beta": _interval(-0.21, -0.52, 0.10)}, names)
    smaller, rest = text.split("|")
    assert "loss range" in smaller and "grad change" in smaller and "beta" not in smaller
    assert "cannot tell: beta 0.81x [0.59, 1.11]" in rest
