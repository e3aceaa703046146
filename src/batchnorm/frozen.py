"""Frozen BN: BN at inference as a fixed per-channel affine map, and model-wide (un)freezing.

torchvision's ``FrozenBatchNorm2d`` semantics (what detection and segmentation
fine-tuning uses when per-device batches are too small to estimate statistics):
``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers that never
change, in train and eval mode alike::

    scale = weight / sqrt(running_var + eps)        shift = bias - running_mean * scale
    y     = x * scale + shift                       (per channel)

which is BN in eval mode (Algorithm 2, step 11) folded into one multiply-add.
The state dict keys are torch's, without ``num_batches_tracked``: a torch (or
this package's) BN state dict loads as it is; its ``num_batches_tracked`` is
kept in a non-persistent buffer so that :func:`unfreeze_batchnorm` can give it
back. With ``trainable_affine=True`` weight and bias are ``nn.Parameter``\\ s that
train (the statistics stay frozen).

:func:`freeze_batchnorm` replaces every BN layer of a model (torch's
``BatchNorm1d/2d/3d``, this package's, and their subclasses whose evaluation is
plain BN: ghost BN, Batch Renorm) by the frozen layer of the same dimension;
:func:`unfreeze_batchnorm` turns frozen layers back into this package's
``BatchNorm1d/2d/3d``. Both walk the module tree at any depth, change it in
place and return the root (new if the root itself was converted), keeping
device, dtype and train/eval mode; a trainable affine keeps its ``nn.Parameter``
objects, so an optimizer built before the conversion keeps training them.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch
from torch import Tensor, nn

from batchnorm.functional import validate_input
from batchnorm.fused import BatchNormAct1d, BatchNormAct2d
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = [
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "freeze_batchnorm",
    "unfreeze_batchnorm",
]


class _FrozenBatchNorm(nn.Module):
    """``y = x * scale + shift`` with BN's frozen state (see the module docstring)."""

    _accepted_ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        trainable_affine: bool = False,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(f"{name}: num_features must be an int, got {num_features!r}")
        if num_features <= 0:
            raise ValueError(f"{name}: num_features must be positive, got {num_features}")
        if not eps > 0:
            raise ValueError(f"{name}: eps must be positive, got {eps}")
        super().__init__()
        self.num_features, self.eps = int(num_features), float(eps)
        self.trainable_affine = bool(trainable_affine)
        factory = {"device": device, "dtype": dtype}
        weight = torch.ones(self.num_features, **factory)
        bias = torch.zeros(self.num_features, **factory)
        if self.trainable_affine:
            self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        else:
            self.register_buffer("weight", weight)
            self.register_buffer("bias", bias)
        self.register_buffer("running_mean", torch.zeros(self.num_features, **factory))
        self.register_buffer("running_var", torch.ones(self.num_features, **factory))
        # What the frozen statistics were tracked over: not in the state dict (torchvision's
        # keys), kept for unfreeze_batchnorm.
        tracked = torch.zeros((), dtype=torch.long, device=device)
        self.register_buffer("num_batches_tracked", tracked, persistent=False)

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)`` per channel: ``y = x * scale + shift``."""
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def forward(self, input: Tensor) -> Tensor:
        name = f"{type(self).__name__}({self.num_features})"
        if input.dim() not in self._accepted_ranks:
            ranks = " or ".join(f"{rank}D" for rank in self._accepted_ranks)
            raise ValueError(f"{name}: expected {ranks} input, got {input.dim()}D input of "
                             f"shape {tuple(input.shape)}")  # fmt: skip
        validate_input(input, self.num_features, False, name)
        scale, shift = self.scale_shift()
        shape = (1, -1) + (1,) * (input.dim() - 2)
        # Computed in the promoted dtype (float32 statistics for half input), rounded once.
        return (input * scale.view(shape) + shift.view(shape)).to(input.dtype)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        tracked = state_dict.pop(prefix + "num_batches_tracked", None)  # a BN state dict's
        if tracked is not None:
            self.num_batches_tracked.copy_(tracked)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}"
        return text + (", trainable_affine=True" if self.trainable_affine else "")


class FrozenBatchNorm1d(_FrozenBatchNorm):
    """Frozen BN over (N, C) or (N, C, L): ``y = x * scale + shift`` per channel,
    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``."""

    _accepted_ranks = (2, 3)


class FrozenBatchNorm2d(_FrozenBatchNorm):
    """Frozen BN over (N, C, H, W): ``y = x * scale + shift`` per feature map,
    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``."""

    _accepted_ranks = (4,)


class FrozenBatchNorm3d(_FrozenBatchNorm):
    """Frozen BN over (N, C, D, H, W): ``y = x * scale + shift`` per feature map,
    ``scale = weight / sqrt(running_var + eps)``, ``shift = bias - running_mean * scale``."""

    _accepted_ranks = (5,)


_BY_DIM: tuple[tuple[type[nn.Module], type[_FrozenBatchNorm], type[nn.Module]], ...] = (
    (nn.BatchNorm1d, FrozenBatchNorm1d, BatchNorm1d),
    (nn.BatchNorm2d, FrozenBatchNorm2d, BatchNorm2d),
    (nn.BatchNorm3d, FrozenBatchNorm3d, BatchNorm3d),
)


def _frozen(layer: nn.Module, path: str, trainable_affine: bool) -> _FrozenBatchNorm:
    where = f"freeze_batchnorm: {path or 'the model'} ({type(layer).__name__})"
    if isinstance(layer, (BatchNormAct1d, BatchNormAct2d)):
        raise TypeError(f"{where}: a fused BN + activation layer; freezing it would drop "
                        "the activation")  # fmt: skip
    frozen_class = next((frozen for torch_class, frozen, _ in _BY_DIM
                         if isinstance(layer, torch_class)), None)  # fmt: skip
    if frozen_class is None:
        raise TypeError(f"{where}: only BatchNorm1d/2d/3d layers (torch's or batchnorm's) can "
                        "be frozen")  # fmt: skip
    if layer.running_mean is None or layer.running_var is None:
        raise ValueError(f"{where}: tracks no running statistics, so there is nothing to freeze")
    stats = layer.running_mean
    frozen = frozen_class(layer.num_features, layer.eps, trainable_affine=trainable_affine,
                          device=stats.device, dtype=stats.dtype)  # fmt: skip
    with torch.no_grad():
        for name in ("running_mean", "running_var"):
            getattr(frozen, name).copy_(getattr(layer, name))
        if layer.num_batches_tracked is not None:
            frozen.num_batches_tracked.copy_(layer.num_batches_tracked)
    if layer.affine:
        if trainable_affine:  # the same Parameter objects: the optimizer keeps them
            frozen.weight, frozen.bias = layer.weight, layer.bias
        else:
            with torch.no_grad():
                frozen.weight.copy_(layer.weight)
                frozen.bias.copy_(layer.bias)
    return frozen.train(layer.training)


def _unfrozen(frozen: _FrozenBatchNorm, layer_kwargs: dict[str, Any]) -> nn.Module:
    bn_class = next(bn for _, frozen_class, bn in _BY_DIM if isinstance(frozen, frozen_class))
    stats = frozen.running_mean
    layer = bn_class(frozen.num_features, eps=frozen.eps, device=stats.device, dtype=stats.dtype,
                     **layer_kwargs)  # fmt: skip
    state = {name: getattr(frozen, name) for name in
             ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}  # fmt: skip
    layer.load_state_dict({name: tensor.detach() for name, tensor in state.items()},
                          strict=False)  # fmt: skip
    if frozen.trainable_affine:
        layer.weight, layer.bias = frozen.weight, frozen.bias
    return layer.train(frozen.training)


def _walk(module: nn.Module, path: str, convert: Any) -> nn.Module:
    converted = convert(module, path)
    if converted is not None:
        return converted
    for name, child in module.named_children():
        new = _walk(child, f"{path}.{name}" if path else name, convert)
        if new is not child:
            setattr(module, name, new)
    return module


def freeze_batchnorm(model: nn.Module, trainable_affine: bool = False) -> nn.Module:
    """Replace every BN layer in ``model`` by the frozen layer of its dimension (module doc).

    Outputs then equal ``model.eval()``'s BN outputs (to float rounding), in train mode
    too. Raises TypeError for a BN layer it cannot keep (fused activation,
    ``SyncBatchNorm``, uninitialized lazy BN) and ValueError for one without running
    statistics, naming the layer; the model is then left partly converted.
    """

    def convert(module: nn.Module, path: str) -> nn.Module | None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return _frozen(module, path, trainable_affine)
        return None

    return _walk(model, "", convert)


def unfreeze_batchnorm(model: nn.Module, **layer_kwargs: Any) -> nn.Module:
    """Replace every frozen BN in ``model`` by :class:`batchnorm.BatchNorm1d/2d/3d`, state kept.

    ``layer_kwargs`` go to the new layers (``momentum=``, ``estimator=``, ``backend=``);
    weight and bias become parameters (the same ones if the affine was trainable);
    ``num_batches_tracked`` is the frozen layer's (from the BN it froze or the loaded
    state dict).
    """

    def convert(module: nn.Module, path: str) -> nn.Module | None:
        if isinstance(module, _FrozenBatchNorm):
            return _unfrozen(module, layer_kwargs)
        return None

    return _walk(model, "", convert)
