"""Learned optimizers: the per-parameter MLP optimizer of Metz et al. (2019)
(:mod:`~l2l_jax.learned.mlp_lopt`), and the nominal-term optimizer of Harrison, Metz and
Sohl-Dickstein (2022) (:mod:`~l2l_jax.learned.nominal`).

Both share :class:`~l2l_jax.learned.common.NetOptimizer`; their adapters and checkpoints
live in one place, :mod:`~l2l_jax.learned.adapters`: :func:`inner_optimizer` adapts
either (``"mlp_lopt"``, ``"nominal_lopt"``), :func:`as_optax` makes either an optax
transformation, and :func:`save`/:func:`load` write and read either kind."""

from l2l_jax.learned import nominal
from l2l_jax.learned.adapters import (
    LearnedInnerOptimizer,
    as_inner_optimizer,
    as_optax,
    inner_optimizer,
    load,
    save,
)
from l2l_jax.learned.mlp_lopt import (
    PAPER_DECAYS,
    PAPER_TIME_SCALES,
    LOptConfig,
    LOptState,
    MLPLOpt,
    MLPNet,
    descent_init,
    feature_names,
    features,
    second_moment_normalize,
    step_from_output,
    tensor_features,
    time_features,
)
from l2l_jax.learned.nominal import NominalConfig, NominalLOpt, NominalNet, NominalState

__all__ = [
    "PAPER_DECAYS",
    "PAPER_TIME_SCALES",
    "LOptConfig",
    "LOptState",
    "LearnedInnerOptimizer",
    "MLPLOpt",
    "MLPNet",
    "NominalConfig",
    "NominalLOpt",
    "NominalNet",
    "NominalState",
    "as_inner_optimizer",
    "as_optax",
    "descent_init",
    "feature_names",
    "features",
    "inner_optimizer",
    "load",
    "nominal",
    "save",
    "second_moment_normalize",
    "step_from_output",
    "tensor_features",
    "time_features",
]
