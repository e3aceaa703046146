"""StackedMLP: K networks trained together equal the same K networks trained alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from batchnorm import recompute_statistics
from batchnorm.models.mlp import MLP
from batchnorm.models.stacked import (
    StackedMLP,
    StackedSGD,
    gather_batches,
    stacked_cross_entropy,
)

SIZES = (20, 16, 16, 5)
K, N, M = 3, 12, 240
LRS = (0.5, 0.05, 1.5)  # distinct, so that a wrong lr-to-network mapping shows
SEEDS = (11, 12, 13)
STD = 0.5
STEPS = 25


pytestmark = pytest.mark.usefixtures("one_thread")


def generators() -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in SEEDS]


def data(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # Shifted inputs: BN statistics far from (0, 1), so that BN over a wrong axis shows.
    x = (torch.rand(M, SIZES[0], generator=g) + torch.linspace(0, 2, SIZES[0])).to(dtype)
    y = torch.randint(0, SIZES[-1], (M,), generator=g)
    return x, y


def batch_indices(steps: int, shared: bool) -> torch.Tensor:
    """(steps, K, N): each network its own batches, or one batch for all (shared)."""
    g = torch.Generator().manual_seed(1)
    if shared:
        return torch.randint(0, M, (steps, 1, N), generator=g).expand(steps, K, N)
    return torch.randint(0, M, (steps, K, N), generator=g)


def standalone(batch_norm: bool, dtype: torch.dtype, bn_kwargs=None) -> list[MLP]:
    return [
        MLP(SIZES, batch_norm=batch_norm, init_std=STD, generator=g, bn_kwargs=bn_kwargs).to(dtype)
        for g in generators()
    ]


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {
        "rtol": 1e-4, "atol": 2e-5}


def train_both(batch_norm, momentum, shared, dtype, lrs=LRS, bn_kwargs=None, steps=STEPS):
    """Train the stack and the K standalone networks on the same batches; return both."""
    x, y = data(dtype)
    stack = StackedMLP(K, SIZES, batch_norm=batch_norm, init_std=STD, generators=generators(),
                       bn_kwargs=bn_kwargs).to(dtype)
    optimizer = StackedSGD(stack, torch.tensor(lrs, dtype=torch.float64), momentum=momentum)
    mlps = standalone(batch_norm, dtype, bn_kwargs)
    optimizers = [torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum)
                  for m, lr in zip(mlps, LRS, strict=True)]
    stacked_losses, alone_losses = [], []
    for index in batch_indices(steps, shared):
        if shared:  # (N, in) input and (N,) targets, broadcast to every network
            inputs, targets = x[index[0]], y[index[0]]
        else:
            inputs, targets = gather_batches(x, index), gather_batches(y, index)
        losses = stacked_cross_entropy(stack(inputs), targets)
        optimizer.zero_grad()
        losses.sum().backward()
        optimizer.step()
        stacked_losses.append(losses.detach())
        step_losses = []
        for k, (mlp, opt) in enumerate(zip(mlps, optimizers, strict=True)):
            loss = F.cross_entropy(mlp(x[index[k]]), y[index[k]])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_losses.append(loss.detach())
        alone_losses.append(torch.stack(step_losses))
    return stack, mlps, torch.stack(stacked_losses), torch.stack(alone_losses)


def assert_same_networks(stack: StackedMLP, mlps: list[MLP], tol: dict[str, float]) -> None:
    x, _ = data(stack.output_weight.dtype)
    stack.eval()
    eval_logits = stack(x[:50])
    for k, mlp in enumerate(mlps):
        mine = stack.to_mlp(k).state_dict()
        theirs = mlp.state_dict()
        assert mine.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(mine[key], theirs[key], **tol, msg=f"net {k}: {key}")
        mlp.eval()
        torch.testing.assert_close(eval_logits[k], mlp(x[:50]), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shared", [False, True], ids=["own_batches", "shared_input"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_each_network_equals_it_trained_alone(batch_norm, momentum, shared, dtype):
    stack, mlps, stacked_losses, alone_losses = train_both(batch_norm, momentum, shared, dtype)
    tol = tolerances(dtype)
    torch.testing.assert_close(stacked_losses, alone_losses, **tol)
    assert_same_networks(stack, mlps, tol)
    if batch_norm:  # the running statistics moved, and each network has its own
        means = stack.linear1_bn_running_mean
        assert not torch.allclose(means[0], means[1])
        assert int(stack.linear1_bn_num_batches_tracked) == STEPS


def test_cumulative_running_average_equals_standalone():
    stack, mlps, stacked_losses, alone_losses = train_both(
        True, 0.0, False, torch.float64, bn_kwargs={"momentum": None, "eps": 1e-3}, steps=8)
    torch.testing.assert_close(stacked_losses, alone_losses, rtol=1e-12, atol=1e-12)
    assert_same_networks(stack, mlps, tolerances(torch.float64))


def test_equivalence_check_catches_a_wrong_lr_mapping():
    """The comparison above is sharp: the stack with its lrs permuted does not pass it."""
    stack, mlps, stacked_losses, alone_losses = train_both(
        True, 0.0, False, torch.float64, lrs=(LRS[1], LRS[0], LRS[2]), steps=5)
    with pytest.raises(AssertionError):
        assert_same_networks(stack, mlps, tolerances(torch.float32))
    torch.testing.assert_close(stacked_losses[0], alone_losses[0])  # same start


def test_initialization_equals_mlp_exactly():
    for batch_norm in (False, True):
        stack = StackedMLP(K, SIZES, batch_norm=batch_norm, init_std=STD,
                           generators=generators())
        for k, mlp in enumerate(standalone(batch_norm, torch.float32)):
            mine, theirs = stack.to_mlp(k).state_dict(), mlp.state_dict()
            assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    default = StackedMLP(2, SIZES)  # torch's default initialization: networks differ
    assert not torch.equal(default.linear1_weight[0], default.linear1_weight[1])


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_from_mlps_and_to_mlp_round_trip_exactly(batch_norm):
    stack, mlps, _, _ = train_both(batch_norm, 0.9, False, torch.float32, steps=4)
    rebuilt = StackedMLP.from_mlps(mlps)
    for k, mlp in enumerate(mlps):
        mine, theirs = rebuilt.to_mlp(k).state_dict(), mlp.state_dict()
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
    again = StackedMLP.from_mlps([stack.to_mlp(k) for k in range(K)])
    original = stack.state_dict()
    assert again.state_dict().keys() == original.keys()
    assert all(torch.equal(again.state_dict()[key], original[key]) for key in original)
    if batch_norm:
        with pytest.raises(ValueError, match="different numbers of batches"):
            StackedMLP.from_mlps([mlps[0], MLP(SIZES, batch_norm=True)])
    double = StackedMLP.from_mlps([m.double() for m in mlps])
    assert double.output_weight.dtype == torch.float64
    with pytest.raises(ValueError, match="differs from network 0"):
        StackedMLP.from_mlps([mlps[0], MLP(SIZES, batch_norm=not batch_norm).double()])


def test_forward_with_preactivations_matches_mlp_and_returns_xhat():
    mlps = standalone(True, torch.float32)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # gamma != 1, beta != 0: x-hat differs from BN's output
        for mlp in mlps:
            for bn in (mlp.linear1_bn, mlp.linear2_bn):
                bn.weight.uniform_(0.5, 2.0, generator=g)
                bn.bias.uniform_(-1.0, 1.0, generator=g)
    stack = StackedMLP.from_mlps(mlps)
    x, _ = data()
    index = batch_indices(1, False)[0]
    outputs = stack.forward_with_preactivations(gather_batches(x, index))
    assert len(outputs.preactivations) == len(outputs.normalized) == len(SIZES) - 2
    for k, mlp in enumerate(mlps):
        logits, preactivations = mlp.forward_with_preactivations(x[index[k]])
        torch.testing.assert_close(outputs.logits[k], logits)
        for mine, theirs in zip(outputs.preactivations, preactivations, strict=True):
            torch.testing.assert_close(mine[k], theirs)
        # x-hat: standardized over network k's own batch; z = gamma * x-hat + beta.
        first = x[index[k]] @ mlp.linear1.weight.t()
        var, mean = torch.var_mean(first, dim=0, correction=0)
        torch.testing.assert_close(outputs.normalized[0][k], (first - mean) / (var + 1e-5).sqrt())
        mine = stack.to_mlp(k)  # the running statistics were updated once, like mlp's
        torch.testing.assert_close(mine.linear1_bn.running_mean, mlp.linear1_bn.running_mean)
    stack.eval()
    evaluated = stack.forward_with_preactivations(x[:7])
    torch.testing.assert_close(evaluated.logits, stack(x[:7]))
    plain = StackedMLP(K, SIZES, init_std=STD).forward_with_preactivations(x[:7])
    assert plain.normalized is None and len(plain.preactivations) == len(SIZES) - 2


@pytest.mark.parametrize("shared", [False, True], ids=["own_batches", "shared_input"])
def test_population_statistics_equal_recompute_statistics(shared):
    stack, _, _, _ = train_both(True, 0.0, False, torch.float32, steps=6)
    x, _ = data()
    indices = batch_indices(5, shared)
    batches = [x[index[0]] if shared else gather_batches(x, index) for index in indices]
    before = int(stack.linear1_bn_num_batches_tracked)
    mlps = [stack.to_mlp(k) for k in range(K)]
    result = stack.recompute_statistics(batches, num_batches=4)
    assert len(result) == len(SIZES) - 2 and result[0][0].shape == (K, SIZES[1])
    assert int(stack.linear1_bn_num_batches_tracked) == before + 4
    for k, mlp in enumerate(mlps):
        recompute_statistics(mlp, [x[index[k]] for index in indices], num_batches=4)
        mine = stack.to_mlp(k).state_dict()
        for key, value in mlp.state_dict().items():
            torch.testing.assert_close(mine[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # Algorithm 2 step 3 by hand, first layer of network 0: E[mu_B], m/(m-1) E[var_B].
    first = torch.stack([x[index[0]].double() @ mlps[0].linear1.weight.double().t()
                         for index in indices[:4]])
    var, mean = torch.var_mean(first, dim=1, correction=0)
    torch.testing.assert_close(stack.linear1_bn_running_mean[0].double(), mean.mean(0))
    torch.testing.assert_close(stack.linear1_bn_running_var[0].double(),
                               var.mean(0) * N / (N - 1))


def test_optimizer_state_dict_resumes_exactly():
    x, y = data()
    indices = batch_indices(10, False)

    def run(stack, optimizer, steps):
        for index in steps:
            losses = stacked_cross_entropy(stack(gather_batches(x, index)),
                                           gather_batches(y, index))
            optimizer.zero_grad()
            losses.sum().backward()
            optimizer.step()

    def fresh():
        stack = StackedMLP(K, SIZES, batch_norm=True, init_std=STD, generators=generators())
        return stack, StackedSGD(stack, torch.tensor(LRS), momentum=0.9)

    stack, optimizer = fresh()
    run(stack, optimizer, indices[:5])
    saved = ({k: v.clone() for k, v in stack.state_dict().items()}, optimizer.state_dict())
    run(stack, optimizer, indices[5:])
    resumed, resumed_optimizer = fresh()
    resumed.load_state_dict(saved[0])
    resumed_optimizer.load_state_dict(saved[1])
    run(resumed, resumed_optimizer, indices[5:])
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in stack.state_dict().items())
    other = StackedSGD(StackedMLP(2, SIZES), [0.1, 0.1])
    with pytest.raises(ValueError, match="learning rates"):
        other.load_state_dict(saved[1])


def test_gather_batches_is_indexing():
    x, y = data()
    index = batch_indices(1, False)[0]
    assert torch.equal(gather_batches(x, index), torch.stack([x[i] for i in index]))
    assert torch.equal(gather_batches(y, index), torch.stack([y[i] for i in index]))


def one_line_error(error: type[Exception], match: str, call) -> None:
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_arguments_give_clear_one_line_errors():
    stack = StackedMLP(K, SIZES, batch_norm=True)
    one_line_error(ValueError, r"lrs must have shape \(3,\), one per network, got \(2,\)",
                   lambda: StackedSGD(stack, torch.tensor([0.1, 0.2])))
    one_line_error(ValueError, r"lrs must have shape \(3,\)",
                   lambda: StackedSGD(stack, torch.ones(3, 1)))
    one_line_error(ValueError, "learning rates must be finite",
                   lambda: StackedSGD(stack, [0.1, -1.0, 0.1]))
    one_line_error(ValueError, "momentum must be in", lambda: StackedSGD(stack, LRS, 1.5))
    expected = r"expected input of shape \(K=3, N, 20\) or \(N, 20\), got "
    one_line_error(ValueError, expected + r"\(2, 12, 20\)", lambda: stack(torch.rand(2, 12, 20)))
    one_line_error(ValueError, expected + r"\(12, 19\)", lambda: stack(torch.rand(12, 19)))
    one_line_error(ValueError, expected + r"\(20,\)", lambda: stack(torch.rand(20)))
    one_line_error(ValueError, "more than 1 value per channel",
                   lambda: stack(torch.rand(K, 1, 20)))
    one_line_error(ValueError, "got 2 generators for 3 networks",
                   lambda: StackedMLP(K, SIZES, init_std=1.0, generators=generators()[:2]))
    one_line_error(ValueError, "num_networks must be a positive int",
                   lambda: StackedMLP(0, SIZES))
    one_line_error(ValueError, "unsupported bn_kwargs",
                   lambda: StackedMLP(K, SIZES, batch_norm=True, bn_kwargs={"affine": False}))
    one_line_error(ValueError, "estimator 'population'",
                   lambda: StackedMLP(K, SIZES, bn_kwargs={"estimator": "population"}))
    one_line_error(ValueError, r"targets of shape \(3, 12\) or \(12,\)",
                   lambda: stacked_cross_entropy(torch.rand(K, N, 5),
                                                 torch.zeros(N + 1, dtype=torch.long)))
    one_line_error(ValueError, "integer", lambda: gather_batches(torch.rand(5, 2),
                                                                 torch.zeros(3)))
    one_line_error(ValueError, "have no BN",
                   lambda: StackedMLP(K, SIZES).recompute_statistics([torch.rand(N, 20)]))
    one_line_error(IndexError, "network 3 of 3", lambda: stack.to_mlp(3))
