"""Truncated backpropagation through time (Metz et al. 2019, Sec. 3)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import chex
import jax

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.truncated.runs import InnerState, batched_segment
from l2l_jax.truncated.tasks import SegmentConfig

Array = jax.Array
MetaParams = chex.ArrayTree


def tbptt_gradient(
    meta_params: MetaParams,
    runs: InnerState,
    task,
    optimizer: InnerOptimizer,
    config: SegmentConfig,
) -> tuple[Array, MetaParams, InnerState, dict[str, Array]]:
    """Truncated backpropagation: ``(loss, grad, new_runs, aux)``.

    ``grad`` is ``jax.grad`` of the meta-batch mean of
    :func:`~l2l_jax.truncated.runs.segment_loss` with respect to the
    meta-parameters; the runs' states at the segment start are constants (that is the
    truncation), so the gradient ignores the effect of the meta-parameters on earlier
    segments: it is biased towards short-horizon behaviour.
    """
    (loss, (new, aux)), grad = jax.value_and_grad(batched_segment, has_aux=True)(
        meta_params, runs, task, optimizer, config
    )
    return loss, grad, new, aux


@dataclasses.dataclass(frozen=True)
class TBPTT:
    """:func:`tbptt_gradient` as an :class:`~.estimator.Estimator` (no settings); its state
    is the runs."""

    name: ClassVar[str] = "tbptt"

    def init(self, runs: InnerState, meta_params: MetaParams, config: SegmentConfig):
        return runs

    def gradient(self, meta_params, state, key, task, optimizer, config):
        return tbptt_gradient(meta_params, state, task, optimizer, config)
