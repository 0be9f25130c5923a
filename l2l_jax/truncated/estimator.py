"""The one interface of the meta-gradient estimators, and their registry.

An estimator turns the ``B`` runs of the meta-batch and the meta-parameters into an
estimate of the gradient of the segment's meta-loss, and advances the runs. It may keep
state of its own across meta-steps (PES keeps each pair's perturbed runs and its
accumulated perturbation); that state is the ``inner`` field of
:class:`~l2l_jax.truncated.state.TruncatedState`, has the meta-batch as the leading
axis of every array, and is checkpointed, resumed and sharded with the rest.
"""

from __future__ import annotations

from typing import Any, Protocol

import chex
import jax

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.truncated.config import ESTIMATORS, TruncatedConfig
from l2l_jax.truncated.runs import InnerState

Array = jax.Array
MetaParams = chex.ArrayTree


class Estimator(Protocol):
    """A meta-gradient estimator (:mod:`.tbptt`, :mod:`.es`, :mod:`.pes`)."""

    name: str

    def init(self, runs: InnerState, meta_params: MetaParams, config: TruncatedConfig) -> Any:
        """The estimator's state from the ``B`` fresh runs (leading axis ``B`` on every
        array)."""
        ...

    def gradient(
        self,
        meta_params: MetaParams,
        state: Any,
        key: Array,
        task,
        optimizer: InnerOptimizer,
        config: TruncatedConfig,
    ) -> tuple[Array, MetaParams, Any, dict[str, Array]]:
        """``(meta_loss, grad, new_state, aux)`` for one segment of ``K`` inner steps;
        ``aux`` holds ``train_loss`` and ``resets``; ``key`` is a typed key."""
        ...


def get(name: str) -> Estimator:
    """The estimator called ``name`` (one of :data:`ESTIMATORS`)."""
    from l2l_jax.truncated import es, pes, tbptt

    table = {"tbptt": tbptt.TBPTT(), "es": es.ES(), "pes": pes.PES()}
    if name not in table:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {name!r}.")
    return table[name]
