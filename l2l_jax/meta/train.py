"""Meta-training: gradient descent on a meta-objective, with non-finite detection.

Any optax optimizer can drive the hyperparameters. :func:`meta_gd` is the one of
Wang et al. (2021), Theorem 4: meta step size ``mu_k = c / sqrt(k)`` and projection onto
``eta >= 0``. Every meta-step is checked: one whose meta-gradient or meta-objective
value is non-finite is *not* applied (the hyperparameters stay where they are, via
:func:`optax.apply_if_finite`), and it is counted and reported in :class:`TrainResult`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from l2l_jax import validation

Projection = Callable[[chex.ArrayTree], chex.ArrayTree]

# apply_if_finite gives up after this many consecutive bad steps; we never want it to.
_NEVER = np.iinfo(np.int32).max


@chex.dataclass(frozen=True)
class MetaGD:
    """An optax meta-optimizer together with the projection applied after each update."""

    optimizer: optax.GradientTransformation
    projection: Projection | None = None


def meta_gd(c: float, project_non_negative: bool = True) -> MetaGD:
    """Projected meta-GD with ``mu_k = c / sqrt(k)``, ``k = 1, 2, ...`` (Theorem 4)."""
    validation.positive("c", c)
    schedule = lambda count: c / jnp.sqrt(count + 1.0)
    projection = optax.projections.projection_non_negative if project_non_negative else None
    return MetaGD(optimizer=optax.sgd(schedule), projection=projection)


@chex.dataclass(frozen=True)
class TrainResult:
    """A meta-training run.

    Attributes:
      params: final meta-parameters.
      trajectory: meta-parameters before each step and after the last, stacked ``(K+1,...)``.
      values: ``(K,)`` meta-objective at each step.
      grads: meta-gradients at each step, stacked ``(K, ...)``.
      nonfinite: ``(K,)`` True where the meta-gradient or the meta-objective was NaN/inf
        (the step was skipped).
    """

    params: chex.ArrayTree
    trajectory: chex.ArrayTree
    values: jax.Array
    grads: chex.ArrayTree
    nonfinite: jax.Array

    @property
    def nonfinite_count(self) -> int:
        return int(np.sum(np.asarray(self.nonfinite)))


def train(
    meta_objective: Callable[[chex.ArrayTree], jax.Array],
    init: chex.ArrayTree,
    optimizer: MetaGD | optax.GradientTransformation,
    steps: int,
    *,
    chunk: int = 100,
    progress: bool | str = True,
) -> TrainResult:
    """Run ``steps`` meta-steps of ``optimizer`` on ``meta_objective`` from ``init``.

    The meta-steps run in jitted ``lax.scan`` chunks of ``chunk`` steps; a progress bar
    advances per chunk (pass a string to label it, ``False`` to hide it).
    """
    steps = validation.positive_int("steps", steps)
    chunk = validation.positive_int("chunk", chunk)
    if isinstance(optimizer, optax.GradientTransformation):
        optimizer = MetaGD(optimizer=optimizer)
    if not isinstance(optimizer, MetaGD):
        raise TypeError(
            "optimizer must be meta.meta_gd(c) or an optax.GradientTransformation, got "
            f"{type(optimizer).__name__}."
        )
    if optimizer.projection is not None:
        validation.non_negative_values("init", init)
    tx = optax.apply_if_finite(optimizer.optimizer, max_consecutive_errors=_NEVER)
    project = optimizer.projection or (lambda p: p)
    value_and_grad = jax.value_and_grad(meta_objective)

    def one_step(carry, _):
        params, state = carry
        value, grad = value_and_grad(params)
        # A non-finite value poisons the step too: log(inf) backpropagates a finite 0,
        # which would otherwise freeze the parameters silently.
        checked = jax.tree.map(lambda g: jnp.where(jnp.isfinite(value), g, jnp.nan), grad)
        updates, state = tx.update(checked, state, params)
        new_params = project(optax.apply_updates(params, updates))
        return (new_params, state), (params, value, grad, ~state.last_finite)

    @functools.partial(jax.jit, static_argnums=1)
    def run_chunk(carry, length):
        return jax.lax.scan(one_step, carry, None, length=length)

    carry = (init, tx.init(init))
    outputs = []
    label = progress if isinstance(progress, str) else "meta-training"
    with tqdm(total=steps, desc=label, disable=not progress, leave=False) as bar:
        for start in range(0, steps, chunk):
            length = min(chunk, steps - start)
            carry, out = run_chunk(carry, length)
            outputs.append(out)
            bar.update(length)
    trajectory, values, grads, nonfinite = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outputs)
    final = carry[0]
    trajectory = jax.tree.map(lambda t, f: jnp.concatenate([t, f[None]]), trajectory, final)
    return TrainResult(
        params=final, trajectory=trajectory, values=values, grads=grads, nonfinite=nonfinite
    )
