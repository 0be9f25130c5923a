"""Meta-objectives, their gradients, and meta-training."""

from l2l_jax.meta.objective import METHODS, MetaObjective, meta_objective
from l2l_jax.meta.train import MetaGD, TrainResult, meta_gd, train
from l2l_jax.meta.truncated import (
    InnerState,
    TruncatedConfig,
    TruncatedResult,
    TruncatedState,
    default_meta_optimizer,
    es_gradient,
    init_state,
    make_meta_step,
    meta_batch_mesh,
    meta_step,
    meta_train,
    segment_loss,
    shard_state,
    state_sharding,
    tbptt_gradient,
)

__all__ = [
    "METHODS",
    "InnerState",
    "MetaGD",
    "MetaObjective",
    "TrainResult",
    "TruncatedConfig",
    "TruncatedResult",
    "TruncatedState",
    "default_meta_optimizer",
    "es_gradient",
    "init_state",
    "make_meta_step",
    "meta_batch_mesh",
    "meta_gd",
    "meta_objective",
    "meta_step",
    "meta_train",
    "segment_loss",
    "shard_state",
    "state_sharding",
    "tbptt_gradient",
    "train",
]
