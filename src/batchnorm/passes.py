"""A statistics pass: run a model over batches as Algorithm 2 step 3 does, watching its BN layers.

The model runs in eval mode (dropout off, every other layer at inference) except the
given BN layers, which run in training mode (they normalize with batch statistics, as
during training); ``observe(layer, input)`` sees each BN layer's input before the layer
does. Hooks are removed and every module's train/eval mode is restored however the
pass ends. What the layers do to their own buffers meanwhile is the caller's business
(:func:`batchnorm.recompute_statistics` replaces them, :func:`batchnorm.diagnose` puts
them back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import Tensor, nn

__all__ = ["first_tensor", "hook_input", "statistics_pass"]


def hook_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A layer's input as a ``with_kwargs=True`` hook sees it: ``layer(x)`` or
    ``layer(input=x)`` (None if neither)."""
    return args[0] if args else kwargs.get("input")


def first_tensor(batch: Any, who: str) -> Tensor:
    """The input of ``batch``: a Tensor, the first element of a tuple/list, or the first
    value of a dict. ``who`` names the caller in the error for anything else."""
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    if isinstance(batch, dict) and batch and isinstance(next(iter(batch.values())), Tensor):
        return next(iter(batch.values()))
    raise TypeError(f"{who}: a batch must be a Tensor or a (inputs, ...) tuple, "
                    f"got {type(batch).__name__}")


def statistics_pass(model: nn.Module, layers: Sequence[nn.Module], batches: Iterable[Any],
                    num_batches: int | None, observe: Callable[[nn.Module, Tensor], None],
                    who: str) -> int:
    """Run ``model`` on the first ``num_batches`` of ``batches`` (all if None) as the module
    docstring says; the number of batches run."""
    modes = {module: module.training for module in model.modules()}

    def hook(layer: nn.Module, inputs: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        observe(layer, hook_input(inputs, kwargs))

    hooks = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]
    seen = 0
    try:
        model.eval()
        for layer in layers:
            layer.train()
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            model(first_tensor(batch, who))
            seen += 1
    finally:
        for handle in hooks:
            handle.remove()
        for module, training in modes.items():
            module.train(training)
    return seen
