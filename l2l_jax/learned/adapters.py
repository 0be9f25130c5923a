"""The learned optimizers' adapters and checkpoint I/O, for every kind of learned
optimizer (:class:`~l2l_jax.learned.MLPLOpt`, :class:`~l2l_jax.learned.NominalLOpt`):

* :func:`inner_optimizer`: an :class:`~l2l_jax.inner.InnerOptimizer` whose
  hyperparameters are the meta-parameters (for ``inner.unroll``, ``metagrad.meta_objective``
  and ``truncated.meta_train``; every learned optimizer also supplies it itself,
  ``lopt.as_inner_optimizer()``, which is how ``truncated`` takes one without importing this
  package); :func:`as_inner_optimizer` passes inner optimizers through;
* :func:`as_optax`: fixed meta-parameters as an ``optax.GradientTransformation``;
* :func:`save` / :func:`load`: orbax checkpoints of (architecture, meta-parameters),
  the kind read back from the stored config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import optax
from flax import nnx

from l2l_jax import input_checks
from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.learned import common
from l2l_jax.learned.common import LearnedInnerOptimizer
from l2l_jax.learned.mlp_lopt import LOptConfig, MLPLOpt, MLPNet
from l2l_jax.learned.nominal import NominalLOpt
from l2l_jax.learned.nominal_config import NominalConfig

MetaParams = common.MetaParams
# kind (the config's "kind"; none for an MLPLOpt) -> (optimizer class, config class)
KINDS = {
    MLPLOpt.kind: (MLPLOpt, LOptConfig),
    NominalLOpt.kind: (NominalLOpt, NominalConfig),
}


def inner_optimizer(
    lopt: common.NetOptimizer, batch_size: int | None = None
) -> LearnedInnerOptimizer:
    """``lopt`` as an inner optimizer of :func:`l2l_jax.inner.unroll` (hparams = meta-params),
    named after its ``kind``: ``"mlp_lopt"``, ``"nominal_lopt"``."""
    if not isinstance(lopt, common.NetOptimizer):
        raise TypeError(
            f"inner_optimizer takes a learned optimizer (learned.MLPLOpt, "
            f"learned.NominalLOpt), got {type(lopt).__name__}."
        )
    return lopt.as_inner_optimizer(batch_size)


def as_inner_optimizer(optimizer) -> InnerOptimizer:
    """A learned optimizer adapted by :func:`inner_optimizer`, or an
    :class:`~l2l_jax.inner.InnerOptimizer` as is (any other inner optimizer meta-learns
    its hyperparameters, e.g. a step size, with the same machinery)."""
    if isinstance(optimizer, common.NetOptimizer):
        return inner_optimizer(optimizer)
    if isinstance(optimizer, InnerOptimizer):
        return optimizer
    raise TypeError(
        "optimizer must be a learned optimizer (learned.MLPLOpt, learned.NominalLOpt) or an "
        f"inner.InnerOptimizer (see its protocol), got {type(optimizer).__name__}."
    )


class OptaxState(NamedTuple):
    """The state of :func:`as_optax`: the meta-parameters and the learned optimizer's own
    state (:class:`~l2l_jax.learned.LOptState` or :class:`~l2l_jax.learned.NominalState`).

    The meta-parameters travel in the state so that ``jax.jit(tx.update)`` receives them
    as arguments: closed over, they would be baked into every compiled update as
    constants, and XLA's CPU compiler can take many gigabytes to fold the learned
    optimizer's fused MLP over them.
    """

    meta_params: MetaParams
    lopt_state: Any

    @property
    def count(self) -> Any:
        """Updates taken so far (``lopt_state.count``)."""
        return self.lopt_state.count


def as_optax(lopt: common.NetOptimizer, meta_params: MetaParams) -> optax.GradientTransformation:
    """The learned optimizer with fixed ``meta_params`` as an optax transformation.

    ``tx.init(params)`` is an :class:`OptaxState` holding ``meta_params`` (an argument, not
    a constant, of a jitted ``tx.update``) and ``lopt.init(params)``;
    ``tx.update(grads, state, params)`` requires ``params`` (a feature of the MLP) and is
    ``lopt.update(state.meta_params, grads, state.lopt_state, params)``.
    """
    input_checks.meta_params("meta_params", meta_params, lopt)

    def init_fn(params):
        return OptaxState(meta_params=meta_params, lopt_state=lopt.init(params))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError(
                "the learned optimizer needs the parameters: call tx.update(grads, state, params)."
            )
        if not isinstance(state, OptaxState):
            raise TypeError(
                f"as_optax's update takes the state made by its init (an OptaxState), got "
                f"{type(state).__name__}: call state = tx.init(params)."
            )
        updates, lopt_state = lopt.update(state.meta_params, updates, state.lopt_state, params)
        return updates, OptaxState(meta_params=state.meta_params, lopt_state=lopt_state)

    return optax.GradientTransformation(init_fn, update_fn)


def save(
    path: str | Path, lopt: common.NetOptimizer | MLPNet, meta_params: MetaParams | None = None
) -> Path:
    """Save meta-parameters and the architecture with orbax (atomic; the directory is new).

    ``save(path, lopt, meta_params)`` for either kind, or ``save(path, net)`` for an
    :class:`~l2l_jax.learned.MLPNet`. The checkpoint holds two items: ``meta_params`` (a
    pytree) and ``config`` (JSON, with the ``kind`` of a non-MLP optimizer), written by
    :func:`l2l_jax.learned.common.save_checkpoint`.
    """
    if isinstance(lopt, MLPNet):
        if meta_params is not None:
            raise ValueError("save(path, net) takes the weights from the module.")
        lopt, meta_params = MLPLOpt(lopt.config), nnx.to_pure_dict(nnx.split(lopt)[1])
    if not isinstance(lopt, common.NetOptimizer) or meta_params is None:
        raise TypeError(
            "call save(path, lopt, meta_params) with a learned optimizer (MLPLOpt, "
            f"NominalLOpt), or save(path, net); got {type(lopt).__name__}."
        )
    return common.save_checkpoint(path, meta_params, lopt.config.to_dict(), lopt.meta_params_shapes)


def load(path: str | Path) -> tuple[common.NetOptimizer, MetaParams]:
    """``(lopt, meta_params)`` from a checkpoint of either kind of learned optimizer.

    The stored config's ``"kind"`` picks the class (:data:`KINDS`): none or ``"mlp"`` is
    an :class:`~l2l_jax.learned.MLPLOpt`, ``"nominal"`` a
    :class:`~l2l_jax.learned.NominalLOpt`; any other kind is a ``ValueError``.
    """
    values = common.load_config(path)
    kind = values.pop("kind", MLPLOpt.kind)
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(
            f"{path} holds a learned optimizer of unknown kind {kind!r} (the config's "
            f"'kind'); learned.load reads the kinds {sorted(KINDS)}."
        )
    lopt_class, config_class = KINDS[kind]
    lopt = lopt_class(config_class.from_dict(values))
    return lopt, common.load_meta_params(path, lopt.meta_params_shapes)
