"""Networks of the paper's experiments."""

from batchnorm.models.mlp import MLP, PAPER_SIZES, gaussian_init_

__all__ = ["MLP", "PAPER_SIZES", "gaussian_init_"]
