"""Learned optimizers: the per-parameter MLP optimizer of Metz et al. (2019), and the
nominal-term optimizer of Harrison, Metz and Sohl-Dickstein (2022) in
:mod:`l2l_jax.learned.nominal` (its ``as_optax``, ``save`` and ``load`` live there).

Both share :class:`~l2l_jax.learned.common.NetOptimizer`; :func:`inner_optimizer` adapts
either (``"mlp_lopt"``, ``"nominal_lopt"``) and :func:`load` reads either kind of
checkpoint."""

from l2l_jax.learned import nominal
from l2l_jax.learned.mlp_lopt import (
    PAPER_DECAYS,
    PAPER_TIME_SCALES,
    LearnedInnerOptimizer,
    LOptConfig,
    LOptState,
    MLPLOpt,
    MLPNet,
    as_optax,
    descent_init,
    feature_names,
    features,
    inner_optimizer,
    load,
    save,
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
