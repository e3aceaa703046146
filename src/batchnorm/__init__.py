"""Batch Normalization (Ioffe & Szegedy 2015), exactly."""

from batchnorm.accumulate import accumulate_statistics
from batchnorm.algorithm2 import Report, batchnormalize, fold, recompute_statistics
from batchnorm.convert import convert, convert_to_torch
from batchnorm.diagnose import diagnose
from batchnorm.frozen import (
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    freeze_batchnorm,
    unfreeze_batchnorm,
)
from batchnorm.functional import batch_norm
from batchnorm.fused import BatchNormAct1d, BatchNormAct2d
from batchnorm.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from batchnorm.layers import BatchNorm1d, BatchNorm2d, BatchNorm3d
from batchnorm.percentiles import track_percentiles
from batchnorm.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from batchnorm.sync import SyncBatchNorm, revert_sync_batchnorm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "Report",
    "SyncBatchNorm",
    "accumulate_statistics",
    "batch_norm",
    "batchnormalize",
    "convert",
    "convert_to_torch",
    "diagnose",
    "fold",
    "freeze_batchnorm",
    "recompute_statistics",
    "revert_sync_batchnorm",
    "track_percentiles",
    "unfreeze_batchnorm",
]
__version__ = "0.1.0"
