"""Data for the Inception experiment: splits, the two shuffling schemes, distortions.

Everything random here is a pure function of (seed, epoch) or (seed, step)
(:func:`batchnorm.experiments.runner.indexed_seed`), so a resumed run sees exactly the
batches and distortions an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from batchnorm.experiments.inception.recipe import Distortion
from batchnorm.experiments.runner import indexed_generator

__all__ = [
    "Splits",
    "batch_order",
    "distort",
    "load_splits",
    "synthetic_splits",
]


@dataclass
class Splits:
    """uint8 images (N, 28, 28) and int64 labels for train / validation / test."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str
    name: str = "unknown"  # the dataset's name (part of every run's fingerprint)
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        # Normalization constants from the training split only (no peeking at validation).
        pixels = self.train_x.float().div_(255)
        self.mean, self.std = float(pixels.mean()), float(pixels.std())

    def limit(self, train_limit: int | None, eval_limit: int | None = None) -> Splits:
        """The first ``train_limit`` training and ``eval_limit`` val/test images (quick runs)."""
        if train_limit is None and eval_limit is None:
            return self
        return Splits(
            self.train_x[:train_limit], self.train_y[:train_limit], self.val_x[:eval_limit],
            self.val_y[:eval_limit], self.test_x[:eval_limit], self.test_y[:eval_limit],
            self.source, self.name,
        )


def synthetic_splits(
    seed: int = 0, train: int = 50000, val: int = 10000, test: int = 10000
) -> Splits:
    """Learnable stand-in with the real shapes: a smooth prototype per class plus noise.

    Used by the tests and by ``--dataset synthetic`` where no dataset can be loaded.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(10, 1, 7, 7, generator=generator)
    prototypes = torch.nn.functional.interpolate(coarse, size=(28, 28), mode="bilinear")[:, 0]

    def make(count: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, 10, (count,), generator=generator)
        noise = torch.rand(count, 28, 28, generator=generator)
        images = (0.6 * prototypes[labels] + 0.4 * noise).mul(255).round().to(torch.uint8)
        return images, labels

    return Splits(*make(train), *make(val), *make(test), source="synthetic", name="synthetic")


def load_splits(name: str, data_dir: str | None = None, validation_size: int = 10000,
                progress: bool = True) -> Splits:
    """The dataset ``name`` split as the paper does: validation held out of train."""
    if name == "synthetic":
        return synthetic_splits()
    from batchnorm.data import load_dataset

    dataset = load_dataset(name, data_dir=data_dir, download=True, progress=progress)
    train_x, train_y, val_x, val_y = dataset.split(validation_size=validation_size)
    return Splits(
        torch.as_tensor(train_x), torch.as_tensor(train_y), torch.as_tensor(val_x),
        torch.as_tensor(val_y), torch.as_tensor(dataset.test_images),
        torch.as_tensor(dataset.test_labels), source=str(dataset.source), name=name,
    )


def batch_order(
    num_examples: int, batch_size: int, epoch: int, seed: int, shuffle: str, shard_size: int
) -> Tensor:
    """Indices of every mini-batch of ``epoch``, shape (batches, batch_size).

    ``"full"``: one permutation of the whole training set, cut into batches.
    ``"shards"``: the set is cut into fixed contiguous shards; each epoch visits the shards
    in a random order and shuffles only inside each one, so a batch never mixes shards
    (the paper's less thorough baseline shuffling). Incomplete batches are dropped.
    """
    generator = indexed_generator(seed, epoch)
    if shuffle == "full":
        order = torch.randperm(num_examples, generator=generator)
        usable = num_examples // batch_size * batch_size
        return order[:usable].view(-1, batch_size)
    if shuffle != "shards":
        raise ValueError(f"shuffle must be 'full' or 'shards', got {shuffle!r}")
    batches = []
    starts = list(range(0, num_examples, shard_size))
    for shard in torch.randperm(len(starts), generator=generator).tolist():
        start = starts[shard]
        size = min(shard_size, num_examples - start)
        inside = start + torch.randperm(size, generator=generator)
        usable = size // batch_size * batch_size
        batches.append(inside[:usable].view(-1, batch_size))
    return torch.cat(batches)


def distort(images: Tensor, distortion: Distortion, generator: torch.Generator) -> Tensor:
    """Random brightness, contrast and translation per image; input/output float in [0, 1].

    Contrast scales around each image's mean; a shift moves the image by whole pixels,
    filling with black (the background of both datasets).
    """
    n = images.shape[0]
    out = images
    if distortion.contrast > 0 or distortion.brightness > 0:
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * distortion.contrast
        brightness = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * distortion.brightness
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * contrast + mean + brightness).clamp_(0, 1)
    if distortion.shift > 0:
        s = distortion.shift
        height, width = out.shape[-2:]
        padded = torch.nn.functional.pad(out, (s, s, s, s))
        dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(height))[:, :, None]  # (n, H, 1)
        cols = (dx[:, None] + torch.arange(width))[:, None, :]  # (n, 1, W)
        batch = torch.arange(n)[:, None, None]
        out = padded[batch, 0, rows, cols].unsqueeze(1)
    return out
