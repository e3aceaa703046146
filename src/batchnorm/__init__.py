"""Batch Normalization (Ioffe & Szegedy 2015), exactly."""

from batchnorm.accumulate import accumulate_statistics
from batchnorm.algorithm2 import Report, batchnormalize, fold, recompute_statistics
from batchnorm.convert import convert, convert_to_torch
from batchnorm.functional import batch_norm
from batchnorm.fused import BatchNormAct1d, BatchNormAct2d
from batchnorm.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "Report",
    "accumulate_statistics",
    "batch_norm",
    "batchnormalize",
    "convert",
    "convert_to_torch",
    "fold",
    "recompute_statistics",
]
__version__ = "0.1.0"
