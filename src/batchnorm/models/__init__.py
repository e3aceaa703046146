"""Networks of the paper's experiments."""

from batchnorm.models.convnet import SmallConvNet
from batchnorm.models.mlp import MLP, PAPER_SIZES, gaussian_init_

__all__ = ["MLP", "PAPER_SIZES", "SmallConvNet", "gaussian_init_"]
