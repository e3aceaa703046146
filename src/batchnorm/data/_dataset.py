"""The :class:`Dataset` that ``load_dataset`` returns: four tensors and a fixed validation split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._specs import DatasetSpec


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset in memory: ``uint8`` images ``(n, 28, 28)`` and ``int64`` labels ``(n,)``.

    ``source`` says, for people, where the data came from. The tensors are not copied by
    :meth:`split`; clone them before modifying them in place.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            images = getattr(self, f"{part}_images")
            labels = getattr(self, f"{part}_labels")
            if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
                raise ValueError(
                    f"{part}: images {tuple(images.shape)} and labels {tuple(labels.shape)} "
                    "must be (n, rows, cols) and (n,)"
                )

    def split(
        self, validation_size: int = 10000
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(train_x, train_y, val_x, val_y)``: a fixed split of the training set.

        The *last* ``validation_size`` training rows are the validation set, the rest the
        training set; nothing is shuffled. For MNIST with the default 10000 this is exactly the
        classic 50k/10k split of ``mnist.pkl.gz``. The results are views, not copies.
        """
        total = self.train_images.shape[0]
        if isinstance(validation_size, bool) or not isinstance(validation_size, int):
            raise TypeError(f"validation_size must be an int, got {validation_size!r}")
        if not 0 <= validation_size < total:
            raise ValueError(f"validation_size must be in [0, {total}), got {validation_size}")
        cut = total - validation_size
        return (
            self.train_images[:cut],
            self.train_labels[:cut],
            self.train_images[cut:],
            self.train_labels[cut:],
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.train_images.shape)}, "
            f"test={tuple(self.test_images.shape)}, source={self.source!r})"
        )


def dataset_from_arrays(spec: DatasetSpec, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    """The :class:`Dataset` of four verified ``uint8`` arrays (labels become ``int64``)."""

    def images(key: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(arrays[key], dtype=np.uint8))

    def labels(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    return Dataset(
        name=spec.name,
        train_images=images("train_images"),
        train_labels=labels("train_labels"),
        test_images=images("test_images"),
        test_labels=labels("test_labels"),
        classes=spec.classes,
        source=source,
    )
