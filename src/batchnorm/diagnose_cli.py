"""``batchnorm diagnose MODEL.pt --dataset mnist|fashion-mnist``: the BN health check
(:func:`batchnorm.diagnose`) of a saved model on real training images.

The file must hold a whole model saved with ``torch.save(model, path)``; it is read with
``torch.load(weights_only=False)``, which unpickles it and so RUNS CODE FROM THE FILE: use
it only on files you trust. (A state dict says nothing about the architecture, so it is
refused with a one-line error.) Images: the first ``--batches x --batch-size`` rows of the
training set in a fixed shuffled order, pixels scaled to [0, 1] and standardized with the
training set's mean and std (one scalar each, as the claims lab does); shape (N, 1, 28, 28),
or (N, 784) when the model's first linear-or-convolution layer is a ``Linear``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

__all__ = ["add_arguments", "run"]

PROG = "batchnorm diagnose"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("model", help="a torch.save()d whole model; WARNING: loading it runs "
                        "code from the file (torch.load weights_only=False): trusted files only")
    parser.add_argument("--dataset", required=True, choices=("mnist", "fashion-mnist"))
    parser.add_argument("--batches", type=_positive, default=20, help="batches (default 20)")
    parser.add_argument("--batch-size", type=_positive, default=128,
                        help="images per batch (default 128)")
    parser.add_argument("--data-dir", default=None, help="where the dataset files are")
    parser.add_argument("--no-download", action="store_true", help="never download the data")
    parser.add_argument("--seed", type=int, default=0, help="order of the images (default 0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fail(message: str) -> int:
    print(f"{PROG}: {' '.join(str(message).split())}", file=sys.stderr)
    return 2


def _load_model(path: Path) -> nn.Module | str:
    """The model in ``path``, or a one-line reason why not."""
    if not path.is_file():
        return f"{path}: no such file"
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # any unpickling failure: report it in one line
        return f"{path}: cannot load it ({type(error).__name__}: {error})"
    if not isinstance(loaded, nn.Module):
        return (f"{path}: holds a {type(loaded).__name__}, not a model; state dicts are not "
                "supported: save the whole model with torch.save(model, path)")
    return loaded


def _flat_input(model: nn.Module) -> bool:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return True
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return False
    return False


def run(args: argparse.Namespace) -> int:
    from batchnorm.data import DataError, load_dataset
    from batchnorm.diagnose import diagnose

    model = _load_model(Path(args.model))
    if isinstance(model, str):
        return _fail(model)
    try:
        dataset = load_dataset(args.dataset, data_dir=args.data_dir,
                               download=not args.no_download, progress=False)
    except (DataError, OSError) as error:
        return _fail(f"{args.dataset}: {error}")
    images = dataset.train_images
    scaled = images.to(torch.float32) / 255
    mean, std = scaled.mean(), scaled.std()
    count = min(args.batches * args.batch_size, len(images))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    chosen = (scaled[order[:count]] - mean) / std
    chosen = chosen.reshape(count, 784) if _flat_input(model) else chosen.reshape(count, 1, 28, 28)
    try:
        result = diagnose(model, list(torch.split(chosen, args.batch_size)))
    except Exception as error:  # the model's own forward failed on these images: one line
        return _fail(f"{args.model}: {type(error).__name__}: {error}")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.table())
    return 0
