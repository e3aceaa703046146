"""The layers trace as one graph: ``torch.compile(fullgraph=True)`` and ``torch.export``.

Every layer (BatchNorm1d/2d/3d, BatchNormAct1d/2d) with every estimator, in
training and in eval, compiles without a graph break and exports; the compiled
and exported programs give the eager outputs, gradients and running statistics
(including the device-side non-finite guard: ``skipped_updates``).

Most cases compile with ``backend="aot_eager"`` (Dynamo + AOTAutograd's
functionalization, the part that fails on a host synchronization, in a fraction
of Inductor's time); one slow case runs Inductor on a small convnet.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from batchnorm.fused import BatchNormAct1d, BatchNormAct2d

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = {
    "BatchNorm1d": (BatchNorm1d, (8, 3)),
    "BatchNorm1d-3d": (BatchNorm1d, (4, 3, 5)),
    "BatchNorm2d": (BatchNorm2d, (4, 3, 3, 3)),
    "BatchNorm3d": (BatchNorm3d, (2, 3, 2, 2, 2)),
    "BatchNormAct1d": (BatchNormAct1d, (8, 3)),
    "BatchNormAct2d": (BatchNormAct2d, (4, 3, 3, 3)),
}
ESTIMATORS = {"ema": dict(), "cumulative": dict(momentum=None),
              "population": dict(estimator="population")}  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # each case compiles its own layer; stay under the recompile limit
    yield
    torch._dynamo.reset()


def _trained(cls, kwargs, shape, steps=2):
    """A layer with non-trivial parameters and statistics (so eval has something to use)."""
    torch.manual_seed(0)
    layer = cls(3, **kwargs)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-0.5, 0.5)
    for _ in range(steps):
        layer(torch.randn(shape) * 2 + 1)
    return layer


def _buffers(module):
    return {name: b.clone() for name, b in module.named_buffers()}


def _step(module, x):
    """Output and input/parameter gradients of one forward + backward."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(),
                                [x, *params])  # fmt: skip
    return y.detach(), grads


def _assert_same(eager, other, x_batches):
    for x in x_batches:
        y_e, g_e = _step(eager[0], x)
        y_o, g_o = _step(other[0], x)
        torch.testing.assert_close(y_o, y_e, equal_nan=True)
        for a, b in zip(g_o, g_e, strict=True):
            torch.testing.assert_close(a, b, equal_nan=True)
        b_e, b_o = _buffers(eager[1]), _buffers(other[1])
        assert b_e.keys() == b_o.keys()
        for name in b_e:
            torch.testing.assert_close(b_o[name], b_e[name], msg=name)


def _batches(shape, nonfinite: bool):
    torch.manual_seed(1)
    batches = [torch.randn(shape) * 3 - 1 for _ in range(3)]
    if nonfinite:
        batches[1] = batches[1].clone()
        batches[1].view(-1)[0] = float("nan")
    return batches


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("layer_name", list(LAYERS))
def test_compiles_fullgraph_and_matches_eager(layer_name, estimator, mode):
    """fullgraph=True raises on any graph break; results equal eager ones step by step."""
    cls, shape = LAYERS[layer_name]
    eager = _trained(cls, ESTIMATORS[estimator], shape)
    eager.train(mode == "train")
    twin = copy.deepcopy(eager)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    # A NaN batch in training: the guard, on the device, skips the update and counts it.
    _assert_same((eager, eager), (compiled, twin), _batches(shape, nonfinite=mode == "train"))
    if mode == "train":
        assert int(twin.skipped_updates) == 1
        assert int(twin.num_batches_tracked) == 2 + 3


def test_explain_counts_no_graph_break_in_a_convnet():
    """The issue's reproduction: torch._dynamo.explain on a small convnet in training."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), BatchNormAct2d(4, momentum=None),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 2),
    )  # fmt: skip
    x = torch.randn(3, 3, 6, 6)
    for training in (True, False):
        model.train(training)
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1


def test_eval_without_statistics_compiles_without_a_sync():
    """The eval-mode 'no statistics tracked' check is eager-only: tracing neither syncs nor
    breaks the graph (and the compiled layer normalizes with the initial statistics)."""
    layer = BatchNorm2d(3).eval()
    x = torch.randn(2, 3, 2, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y, x / torch.sqrt(torch.tensor(1 + layer.eps)))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("estimator", list(ESTIMATORS))
@pytest.mark.parametrize("layer_name", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
                                        "BatchNormAct2d"])  # fmt: skip
def test_exports_and_matches_eager(layer_name, estimator, mode):
    """torch.export.export succeeds in both modes; the exported module's outputs and
    buffer updates (a NaN batch included) equal eager ones."""
    cls, shape = LAYERS[layer_name]
    eager = _trained(cls, ESTIMATORS[estimator], shape)
    eager.train(mode == "train")
    twin = copy.deepcopy(eager)
    program = torch.export.export(twin, (torch.randn(shape),))
    exported = program.module()
    for x in _batches(shape, nonfinite=mode == "train"):
        with torch.no_grad():
            torch.testing.assert_close(exported(x), eager(x), equal_nan=True)
        got, want = dict(exported.named_buffers()), _buffers(eager)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(got[name], want[name], msg=name)
    if mode == "train":
        assert int(dict(exported.named_buffers())["skipped_updates"]) == 1


@pytest.mark.slow
def test_inductor_convnet_training_matches_eager():
    """Inductor, fullgraph, a convnet with BatchNorm2d and the fused layer: outputs,
    gradients and running statistics of three training steps equal eager ones (eval
    mode compiles through the same code: the aot_eager grid covers it)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), BatchNormAct2d(4),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 2),
    )  # fmt: skip
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True)
    _assert_same((model, model), (compiled, twin), _batches((5, 3, 6, 6), nonfinite=False))


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_eager_forward_never_reads_a_tensor_on_the_host(estimator, monkeypatch):
    """No .item()/bool()/float()/int() of a tensor in an eager training or eval forward
    (the non-finite batch included): each of them raises here."""
    layers = [cls(3, **ESTIMATORS[estimator]) for cls, _ in LAYERS.values()]
    shapes = [shape for _, shape in LAYERS.values()]
    for layer, shape in zip(layers, shapes, strict=True):
        layer(torch.randn(shape))  # statistics tracked: eval's one-time check is done
        layer.eval()(torch.randn(shape))
        layer.train()

    def refuse(*_args, **_kwargs):
        raise AssertionError("host synchronization in a forward")

    for method in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist"):
        monkeypatch.setattr(torch.Tensor, method, refuse)
    for layer, shape in zip(layers, shapes, strict=True):
        bad = torch.randn(shape)
        bad.view(-1)[0] = float("inf")
        for x in (torch.randn(shape), bad):
            layer.train()(x)
            layer.eval()(x)
    monkeypatch.undo()
    assert all(int(layer.skipped_updates) == 1 for layer in layers)
