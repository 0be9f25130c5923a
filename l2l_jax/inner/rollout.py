"""One inner run with records along the way: the rollout every loop of the library shares.

:func:`~l2l_jax.inner.unroll.train_step` is the scan body (the gradient of
:func:`~l2l_jax.inner.unroll.gradient_fn` at ``w_t``, then the optimizer's update) that
:func:`~l2l_jax.inner.unroll`, truncated meta-training (:mod:`l2l_jax.truncated.runs`)
and :func:`rollout` step with.
:func:`rollout` runs it in chunks of ``every`` steps and records what the caller asks
for (``record(params, opt_state)``) at the points of :func:`record_points`, so an
evaluation pays for the metrics it records and nothing else. Evaluation
(:func:`l2l_jax.evaluation.evaluate`), step-size tuning, the OOD study and the stability
experiment are rollouts with different records.

Keys: step ``k`` of a run uses ``jax.random.split(key, steps)[k]``, as in
:func:`~l2l_jax.inner.unroll`, so a rollout and an unroll with the same key see the same
minibatches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import input_checks
from l2l_jax.inner.optimizers import HParams, InnerOptimizer
from l2l_jax.inner.unroll import OPTIMIZER, train_step

Record = Callable[[chex.ArrayTree, chex.ArrayTree], Any]


def record_points(steps: int, every: int) -> np.ndarray:
    """The steps a :func:`rollout` records at: ``0, e, 2e, ..., steps`` (``steps`` once)."""
    steps = input_checks.positive_int("steps", steps)
    every = input_checks.positive_int("every", every)
    points = list(range(0, steps + 1, every))
    if points[-1] != steps:
        points.append(steps)
    return np.asarray(points, np.int32)


def rollout(
    task,
    optimizer: InnerOptimizer,
    hparams: HParams,
    params: chex.ArrayTree,
    steps: int,
    *,
    key: chex.PRNGKey,
    record: Record,
    every: int = 1,
    batch_size: int | str | None = OPTIMIZER,
) -> tuple[tuple[chex.ArrayTree, chex.ArrayTree], Any]:
    """Train ``task`` from ``params`` for ``steps`` steps, recording along the way.

    Returns ``((w_steps, s_steps), records)``: ``records`` stacks ``record(w, s)`` at
    every point of :func:`record_points` ``(steps, every)`` on a leading axis (the point
    ``0`` is the start). The run is a ``lax.scan`` over chunks of ``every`` steps (plus
    one shorter last chunk), each chunk an inner ``lax.scan`` of :func:`train_step`; the
    records are computed between chunks only. ``steps`` and ``every`` are static.
    """
    steps = input_checks.positive_int("steps", steps)
    every = input_checks.positive_int("every", every)
    input_checks.prng_key("key", key)
    step = train_step(task, optimizer, hparams, batch_size)
    carry = (params, optimizer.init(params, hparams))
    step_keys = jax.random.split(key, steps)
    full = steps // every

    def chunk(carry, keys):
        carry, _ = jax.lax.scan(step, carry, keys)
        return carry, record(*carry)

    first = record(*carry)
    chunks = step_keys[: full * every].reshape(full, every, *step_keys.shape[1:])
    carry, during = jax.lax.scan(chunk, carry, chunks)
    pieces = [jax.tree.map(lambda x: x[None], first), during]
    if steps - full * every:
        carry, last = chunk(carry, step_keys[full * every :])
        pieces.append(jax.tree.map(lambda x: x[None], last))
    return carry, jax.tree.map(lambda *xs: jnp.concatenate(xs), *pieces)


def rollout_from_keys(
    task,
    optimizer: InnerOptimizer,
    hparams: HParams,
    steps: int,
    keys: chex.Array,
    *,
    record: Callable[[Any, chex.ArrayTree, chex.ArrayTree], Any],
    every: int = 1,
    batch_size: int | str | None = OPTIMIZER,
) -> tuple[tuple[chex.ArrayTree, chex.ArrayTree], Any]:
    """One run of an evaluation from its pair of keys: :func:`rollout` of
    ``task.with_init_key(keys[0])`` from its ``init_params()``, minibatches from
    ``keys[1]``, recording ``record(task, w, s)`` (the re-keyed task)."""
    task = task.with_init_key(keys[0])
    return rollout(
        task,
        optimizer,
        hparams,
        task.init_params(),
        steps,
        key=keys[1],
        record=lambda w, s: record(task, w, s),
        every=every,
        batch_size=batch_size,
    )
