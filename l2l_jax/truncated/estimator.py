"""The one interface of the meta-gradient estimators, and their registry.

An estimator turns the ``B`` runs of the meta-batch and the meta-parameters into an
estimate of the gradient of the segment's meta-loss, and advances the runs. It is an
object holding its own settings (a frozen dataclass, so a config holding it stays
hashable): :class:`~.tbptt.TBPTT`, :class:`~.es.ES` ``(sigma, pairs)``,
:class:`~.pes.PES` ``(sigma, pairs)`` or a user's. It may keep state of its own across
meta-steps (PES keeps each pair's perturbed runs and its accumulated perturbation); that
state is the ``inner`` field of :class:`~l2l_jax.truncated.state.TruncatedState`, has the
meta-batch as the leading axis of every array, and is checkpointed, resumed and sharded
with the rest.

A new estimator is one file plus one line in :data:`ESTIMATORS` (its name for
``TruncatedConfig(estimator="name")``); an estimator that is not registered is passed as
an object, ``TruncatedConfig(estimator=MyEstimator(...))``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import chex
import jax

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.truncated.es import ES
from l2l_jax.truncated.logscaled_tbptt import LogScaledTBPTT
from l2l_jax.truncated.pes import PES
from l2l_jax.truncated.runs import InnerState
from l2l_jax.truncated.tasks import SegmentConfig
from l2l_jax.truncated.tbptt import TBPTT

Array = jax.Array
MetaParams = chex.ArrayTree


@runtime_checkable
class Estimator(Protocol):
    """A meta-gradient estimator (:mod:`.tbptt`, :mod:`.es`, :mod:`.pes`).

    ``name`` labels it in logs, metrics and checkpoints; its settings are its own
    (dataclass) fields. It must be hashable: it keys the compiled meta-step.
    """

    name: str

    def init(self, runs: InnerState, meta_params: MetaParams, config: SegmentConfig) -> Any:
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
        config: SegmentConfig,
    ) -> tuple[Array, MetaParams, Any, dict[str, Array]]:
        """``(meta_loss, grad, new_state, aux)`` for one segment of ``K`` inner steps;
        ``aux`` holds ``train_loss`` and ``resets``; ``key`` is a typed key."""
        ...


# The registry of names: name -> class, default-constructed for a bare name.
ESTIMATORS: dict[str, type] = {
    "tbptt": TBPTT,
    "es": ES,
    "pes": PES,
    "tbptt_logscaled": LogScaledTBPTT,
}


def resolve(spec: str | Mapping[str, Any] | Estimator) -> Estimator:
    """The estimator ``spec`` stands for.

    A name of :data:`ESTIMATORS` is its default-constructed estimator (``"pes"`` is
    ``PES()``); a mapping ``{"name": ..., **settings}`` (the form :func:`to_dict` writes)
    is ``ESTIMATORS[name](**settings)``; an :class:`Estimator` object is returned as it is.
    """
    if isinstance(spec, str | Mapping):
        settings = {"name": spec} if isinstance(spec, str) else dict(spec)
        name = settings.pop("name", None)
        if name not in ESTIMATORS:
            raise ValueError(
                f"estimator must be one of {tuple(ESTIMATORS)} or an object with name, init "
                f"and gradient (truncated.Estimator), got {name!r}."
            )
        return ESTIMATORS[name](**settings)
    if not isinstance(spec, Estimator):
        raise TypeError(
            "estimator must be a name of truncated.ESTIMATORS or an object with name, init "
            f"and gradient (truncated.Estimator), got {type(spec).__name__}."
        )
    try:
        hash(spec)
    except TypeError:
        raise TypeError(
            f"estimator {spec.name!r} must be hashable (it keys the compiled meta-step): "
            "make it a frozen dataclass."
        ) from None
    return spec


def to_dict(estimator: Estimator) -> dict[str, Any]:
    """``{"name": estimator.name, **settings}``, the settings being the dataclass fields
    (what checkpoints record and compare on resume; :func:`resolve` reads it back for a
    registered name)."""
    fields = dataclasses.fields(estimator) if dataclasses.is_dataclass(estimator) else ()
    return {"name": estimator.name, **{f.name: getattr(estimator, f.name) for f in fields}}
