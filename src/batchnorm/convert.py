"""Swap a model's BN layers between torch's classes and this project's, state kept.

What every user with an existing ResNet or EfficientNet does first: ::

    model = batchnorm.convert(torchvision_like_model, estimator="population")
    ...
    model = batchnorm.convert_to_torch(model)   # back to torch.nn.BatchNorm*d

Like :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`, the conversion walks
the module tree at any depth, replaces each layer in place and returns the
(possibly new) root. The new layer *shares* the old one's parameters and buffers
(the same tensors: an optimizer built before the conversion keeps working),
and keeps its train/eval mode, device, dtype and ``requires_grad``. Only the
exact classes ``torch.nn.BatchNorm1d/2d/3d`` (resp. this project's) are
converted; subclasses with their own behaviour (fused layers, lazy layers,
``SyncBatchNorm``) are left alone.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["convert", "convert_to_torch"]

_OURS: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}
_TORCHS: dict[type[nn.Module], type[nn.Module]] = {ours: torch for torch, ours in _OURS.items()}
_SHARED = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _factory_kwargs(layer: nn.Module) -> dict[str, Any]:
    for tensor in (layer.weight, layer.running_mean):
        if tensor is not None:
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


def _replace(layer: nn.Module, new_class: type[nn.Module], **layer_kwargs: Any) -> nn.Module:
    new = new_class(layer.num_features, layer.eps, layer.momentum, layer.affine,
                    layer.track_running_stats, **_factory_kwargs(layer), **layer_kwargs)
    for name in _SHARED:
        value = getattr(layer, name)
        if value is not None:
            setattr(new, name, value)
    if hasattr(layer, "qconfig"):
        new.qconfig = layer.qconfig
    return new.train(layer.training)


def _walk(module: nn.Module, table: dict[type[nn.Module], type[nn.Module]],
          layer_kwargs: dict[str, Any]) -> nn.Module:
    new_class = table.get(type(module))
    if new_class is not None:
        return _replace(module, new_class, **layer_kwargs)
    for name, child in module.named_children():
        converted = _walk(child, table, layer_kwargs)
        if converted is not child:
            setattr(module, name, converted)
    return module


def convert(module: nn.Module, **layer_kwargs: Any) -> nn.Module:
    """Replace every ``torch.nn.BatchNorm1d/2d/3d`` in ``module`` by ``batchnorm``'s.

    ``layer_kwargs`` go to the new layers (``estimator=``, ``backend=``). The
    tree is changed in place; the returned module is the root (a new layer if
    ``module`` itself was a BN layer). Outputs are bit-identical to torch's with
    ``backend="native"`` (and with ``"auto"`` wherever it picks ATen).
    """
    return _walk(module, _OURS, layer_kwargs)


def convert_to_torch(module: nn.Module) -> nn.Module:
    """The inverse of :func:`convert`: every ``batchnorm.BatchNorm1d/2d/3d`` back to torch's
    class (the estimator and backend are dropped; population counters too)."""
    return _walk(module, _TORCHS, {})
