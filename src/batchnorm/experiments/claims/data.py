"""The data every claim trains on: a fixed train / validation / test split of a real dataset.

Validation is the *last* ``val`` rows of the official training set (``Dataset.split``),
training the first ``train`` rows of the rest, test the first ``test`` rows of the official
test set. Learning rates and other choices are tuned on validation; test numbers are
reported, never used to choose. Pixels are scaled to [0, 1] and standardized with the
training rows' mean and std (one scalar each), so no information leaks from validation or
test into the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from batchnorm.experiments.claims.base import ClaimContext

__all__ = ["Split", "load_split"]


@dataclass(frozen=True)
class Split:
    """Float inputs ``(n, 784)`` (``flat``) or ``(n, 1, 28, 28)``, int64 labels, on one device."""

    name: str
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}


def load_split(context: ClaimContext, name: str, *, train: int | None = None,
               val: int = 10000, test: int | None = None, flat: bool = True) -> Split:
    """The split of dataset ``name`` (``"mnist"`` or ``"fashion-mnist"``); see the module doc.

    ``train``/``test`` None: all rows. Raises ``ValueError`` if a size exceeds the data.
    """
    dataset = context.dataset(name)
    train_x, train_y, val_x, val_y = dataset.split(val)
    test_x, test_y = dataset.test_images, dataset.test_labels
    for label, size, rows in (("train", train, len(train_y)), ("test", test, len(test_y))):
        if size is not None and not 0 < size <= rows:
            raise ValueError(f"{name}: {label} size {size} is not in [1, {rows}]")
    train_x, train_y = train_x[:train], train_y[:train]
    test_x, test_y = test_x[:test], test_y[:test]
    scaled = train_x.to(torch.float32) / 255
    mean, std = scaled.mean(), scaled.std()
    shape = (-1, 784) if flat else (-1, 1, 28, 28)

    def prepare(images: Tensor) -> Tensor:
        return ((images.to(torch.float32) / 255 - mean) / std).reshape(shape).to(context.device)

    def labels(values: Tensor) -> Tensor:
        return values.to(context.device)

    return Split(name, prepare(train_x), labels(train_y), prepare(val_x), labels(val_y),
                 prepare(test_x), labels(test_y))
