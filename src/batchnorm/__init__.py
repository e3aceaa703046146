"""Batch Normalization (Ioffe & Szegedy 2015), exactly."""

from batchnorm.algorithm2 import batchnormalize, fold, recompute_statistics
from batchnorm.functional import batch_norm
from batchnorm.fused import BatchNormAct1d, BatchNormAct2d
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "batch_norm",
    "batchnormalize",
    "fold",
    "recompute_statistics",
]
__version__ = "0.1.0"
