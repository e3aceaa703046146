"""Batch Normalization (Ioffe & Szegedy 2015), exactly."""

from batchnorm.functional import batch_norm
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm"]
__version__ = "0.1.0"
