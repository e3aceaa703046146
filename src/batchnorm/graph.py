"""A model's dataflow, for the Algorithm 2 tools: which layer feeds which.

:func:`trace` captures a model with :mod:`torch.fx` symbolic tracing. Linear and
convolution layers (and their subclasses, such as padded convolutions), BN layers
and activation modules are kept as leaves, so the graph says which module's
output goes where, whatever the model's own ``forward`` does in between
(residual adds, ``F.relu`` calls, squeeze-excitation products). A model that
cannot be traced (Python control flow on tensor values, for example) yields the
reason instead, and the tools fall back to their ``nn.Sequential`` rule.

Imports only torch (nothing of this package).
"""

from __future__ import annotations

import operator
from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "ACTIVATION_METHODS",
    "ACTIVATION_MODULES",
    "LINEAR_MAPS",
    "calls_per_module",
    "feeds_nonlinearity",
    "set_submodule",
    "trace",
]

#: Activation modules: BN goes immediately before each (Algorithm 2, step 1).
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softplus,
    nn.Softsign, nn.LogSigmoid, nn.Tanhshrink,
)  # fmt: skip

#: The same nonlinearities called as functions.
ACTIVATION_FUNCTIONS = frozenset({
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu,
    torch.selu, F.celu, F.gelu, F.silu, F.mish, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh,
    F.hardtanh, F.hardsigmoid, F.hardswish, F.softplus, F.softsign, F.logsigmoid,
    F.tanhshrink,
})  # fmt: skip

#: ... and as tensor methods (``x.relu()``).
ACTIVATION_METHODS = frozenset({"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"})

#: Layers computing ``Wu + b`` per output channel (subclasses count too).
LINEAR_MAPS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

_ADDS = frozenset({operator.add, operator.iadd, torch.add})
_LEAVES = (*LINEAR_MAPS, nn.modules.batchnorm._BatchNorm, *ACTIVATION_MODULES)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with our layers and any Linear/Conv/BN subclass as leaves."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, _LEAVES) or super().is_leaf_module(module, qualified_name)


def trace(model: nn.Module) -> fx.Graph | str:
    """The dataflow graph of ``model`` (call_module nodes name its submodules), or,
    when it cannot be traced, the reason in one line."""
    try:
        return _Tracer().trace(model)
    except Exception as error:  # fx raises many kinds; each means "not traceable"
        first_line = (str(error).strip().splitlines() or [""])[0]
        return f"not traceable by torch.fx ({type(error).__name__}: {first_line})"


def calls_per_module(graph: fx.Graph, model: nn.Module) -> Counter[int]:
    """How many times each module object is called (by ``id``): a module called at two
    places cannot be rewritten for one of them."""
    counts: Counter[int] = Counter()
    for node in graph.nodes:
        if node.op == "call_module":
            counts[id(model.get_submodule(node.target))] += 1
    return counts


def _is_nonlinearity(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _ADDS
    return node.op == "call_method" and node.target in ("add", "add_")


def _is_identity(node: fx.Node, model: nn.Module) -> bool:
    return node.op == "call_module" and isinstance(model.get_submodule(node.target), nn.Identity)


def feeds_nonlinearity(node: fx.Node, model: nn.Module, depth: int = 4) -> bool:
    """True if ``node``'s output reaches a nonlinearity directly or through additions
    (a residual add) and ``nn.Identity`` modules, at most ``depth`` of them deep."""
    for user in node.users:
        if _is_nonlinearity(user, model):
            return True
        if (depth > 0 and (_is_add(user) or _is_identity(user, model))
                and feeds_nonlinearity(user, model, depth - 1)):
            return True
    return False


def set_submodule(root: nn.Module, qualified_name: str, module: nn.Module) -> None:
    """Replace the submodule at ``qualified_name`` (``"layer1.0.conv1"``) by ``module``."""
    parent_name, _, name = qualified_name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)
