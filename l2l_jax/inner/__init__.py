"""Inner optimizers and the loops that run them.

One step, :func:`train_step` (the gradient at ``w_t``, then the optimizer's update), and
one scan over it per purpose:

* :func:`unroll`: ``t`` steps in one ``lax.scan``, differentiable in the hyperparameters;
  returns every loss (what a meta-objective scores);
* :func:`rollout`: the same steps in chunks, recording what the caller asks for between
  them (evaluation, tuning); :func:`rollout_from_keys` is a rollout of a re-keyed task;
* truncated meta-training advances its runs a segment at a time with the same step
  (:func:`l2l_jax.truncated.segment_loss`).
"""

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
from l2l_jax.inner.rollout import rollout, rollout_from_keys
from l2l_jax.inner.unroll import UnrollResult, train_step, unroll

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
    "rollout",
    "rollout_from_keys",
    "sgd",
    "train_step",
    "unroll",
]
