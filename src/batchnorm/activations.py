"""The nonlinearities BN is fused with, by name: defined once for the whole package.

The paper places BN immediately before the nonlinearity, ``z = g(BN(Wu))``
(docs/method.md, Algorithm 2 step 1), so the kernels, the fused layers and the
experiments' models all name ``g`` with one of :data:`ACTIVATIONS`.
Imports only torch (a leaf).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ACTIVATIONS", "activate", "activation_grad", "check_activation"]

ACTIVATIONS: tuple[str, ...] = ("identity", "relu", "sigmoid")


def check_activation(name: str, owner: str = "activation") -> str:
    """``name`` if it is one of :data:`ACTIVATIONS`, else a one-line ValueError."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}: activation must be one of {ACTIVATIONS}, got {name!r}")
    return name


def activate(z: Tensor, name: str) -> Tensor:
    """``g(z)`` for the activation called ``name``."""
    if name == "relu":
        return torch.relu(z)
    if name == "sigmoid":
        return torch.sigmoid(z)
    return z


def activation_grad(g: Tensor, z: Tensor | None, y: Tensor | None, name: str) -> Tensor:
    """dL/dz from dL/dy = ``g``, using the pre-activation ``z`` or, if None, the output ``y``."""
    if name == "relu":
        return torch.where((z if z is not None else y) > 0, g, torch.zeros_like(g))
    if name == "sigmoid":
        s = torch.sigmoid(z) if z is not None else y
        return g * s * (1 - s)
    return g
