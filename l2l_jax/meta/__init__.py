"""Meta-objectives, their gradients, and meta-training."""

from l2l_jax.meta.objective import METHODS, MetaObjective, meta_objective
from l2l_jax.meta.train import MetaGD, TrainResult, meta_gd, train

__all__ = [
    "METHODS",
    "MetaGD",
    "MetaObjective",
    "TrainResult",
    "meta_gd",
    "meta_objective",
    "train",
]
