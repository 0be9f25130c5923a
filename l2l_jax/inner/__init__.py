"""Inner optimizers and the scan that unrolls them."""

from l2l_jax.inner.optimizers import (
    HParams,
    InnerOptimizer,
    OptaxInner,
    adam,
    from_optax,
    gd,
    momentum,
    nesterov,
    sgd,
)
from l2l_jax.inner.unroll import UnrollResult, unroll

__all__ = [
    "HParams",
    "InnerOptimizer",
    "OptaxInner",
    "UnrollResult",
    "adam",
    "from_optax",
    "gd",
    "momentum",
    "nesterov",
    "sgd",
    "unroll",
]
