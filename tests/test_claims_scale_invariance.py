"""The scale-invariance claim: its rule on synthetic numbers, the identity checks against
hand-made cases, and the quick preset end to end."""

from __future__ import annotations

import json

import pytest
import torch

from batchnorm.experiments.claims import scale_invariance as S
from batchnorm.models import MLP

pytestmark = pytest.mark.usefixtures("one_thread")


def test_verdict_three_outcomes():
    assert S.verdict([1e-15, 2e-15, 1.5e-15])[0] == "supported"
    assert S.verdict([1e-3, 2e-3, 1.5e-3])[0] == "not supported"
    verdict, interval = S.verdict([1e-15, 1e-3, 1e-15])
    assert verdict == "mixed" and interval.low < S.TOLERANCE < interval.high
    assert S.verdict([float("inf"), 1.0, 1.0])[0] == "not supported"


def test_relative_error_by_hand():
    a, b = torch.tensor([1.0, 2.0, 4.5]), torch.tensor([1.0, 2.5, 4.0])
    assert S.relative_error(a, b) == pytest.approx(0.5 / 4.0)
    assert S.relative_error(torch.zeros(2), torch.zeros(2)) == 0.0


def _mlp(batch_norm: bool = True) -> MLP:
    torch.manual_seed(3)
    return MLP((12, 7, 5, 3), batch_norm=batch_norm, activation=torch.nn.ReLU)


def test_identities_hold_without_eps_and_break_with_a_large_one():
    x, y = torch.randn(16, 12), torch.randint(3, (16,))
    exact = S.identity_errors(_mlp(), x, y, (0.01, 0.1, 10.0, 100.0), S.EXACT_EPS)
    assert set(exact) == {"output", "weight_grad", "input_grad"}
    assert max(exact.values()) < 1e-12
    # eps comparable to the scaled variance breaks the invariance (docs/method.md 6.6)
    broken = S.identity_errors(_mlp(), x, y, (0.01,), 1.0)
    assert min(broken.values()) > 1e-3


def test_identity_check_leaves_the_network_alone():
    mlp = _mlp()
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    S.identity_errors(mlp, torch.randn(8, 12), torch.randint(3, (8,)), (10.0,), 1e-5)
    after = mlp.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_gradient_of_a_bn_layer_is_orthogonal_to_its_weight():
    # the fact behind the effective rate: L(aW) = L(W) implies <W, dL/dW> = 0
    mlp = _mlp().double()
    for module in mlp.modules():
        if hasattr(module, "running_mean"):
            module.eps = S.EXACT_EPS
    x, y = torch.randn(16, 12, dtype=torch.float64), torch.randint(3, (16,))
    torch.nn.functional.cross_entropy(mlp(x), y).backward()
    for name in ("linear1", "linear2"):
        w = mlp.get_submodule(name).weight
        cos = (w * w.grad).sum() / (w.norm() * w.grad.norm())
        assert abs(cos.item()) < 1e-12
    # without BN the gradient has a component along W
    plain = _mlp(batch_norm=False).double()
    torch.nn.functional.cross_entropy(plain(x), y).backward()
    w = plain.linear1.weight
    assert abs(((w * w.grad).sum() / (w.norm() * w.grad.norm())).item()) > 1e-6


@pytest.mark.slow
def test_quick_preset_end_to_end(tmp_path):
    from batchnorm.cli import main

    code = main(["reproduce", "claims", "--preset", "quick", "--only", "scale-invariance",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    (entry,) = summary["claims"]
    assert entry["id"] == "scale-invariance" and entry["verdict"] == "supported"
    assert entry["value"] < S.TOLERANCE and entry["seeds"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "scale-invariance/effective_lr.png" in report
    assert (tmp_path / "scale-invariance" / "effective_lr.png").is_file()
