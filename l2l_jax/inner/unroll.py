"""Unrolling an inner optimizer on a task with :func:`jax.lax.scan`."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from l2l_jax import validation
from l2l_jax.inner.optimizers import HParams, InnerOptimizer

Array = jnp.ndarray


@chex.dataclass(frozen=True)
class UnrollResult:
    """What a meta-objective sees: the trajectory's end point and its losses.

    Attributes:
      params: the final iterate ``w_t``.
      losses: ``(t + 1,)`` losses ``f(w_0), ..., f(w_t)`` (minibatch losses for SGD,
        except the last one, which is always the full loss ``f(w_t)``).
      task: the task that was optimized (for validation losses and the like).
    """

    params: chex.ArrayTree
    losses: Array
    task: object

    @property
    def steps(self) -> int:
        """The number of inner steps ``t``."""
        return self.losses.shape[0] - 1

    @property
    def final_loss(self) -> Array:
        return self.losses[-1]


def unroll(
    task,
    optimizer: InnerOptimizer,
    hparams: HParams,
    steps: int,
    key: chex.PRNGKey | None = None,
) -> UnrollResult:
    """Run ``steps`` iterations of ``optimizer`` on ``task`` inside one ``lax.scan``.

    The step count is static (it is the scan length); the hyperparameters are traced and
    differentiable. ``key`` seeds the minibatch sequence of stochastic optimizers.
    """
    steps = validation.positive_int("steps", steps)
    params = task.init_params()
    state = optimizer.init(params, hparams)
    if optimizer.batch_size is None:
        grad_fn = lambda w, _: jax.value_and_grad(task.loss)(w)
        xs = None
    else:
        n = task.num_examples
        if n is None:
            raise ValueError(
                f"inner.{optimizer.name} samples minibatches, but {task!r} has no examples; "
                "use inner.gd() or a task with data."
            )
        if key is None:
            raise ValueError(f"inner.{optimizer.name} is stochastic: pass key=jax.random.key(...).")
        size = optimizer.batch_size

        def grad_fn(w, k):
            idx = jax.random.randint(k, (size,), 0, n)
            return jax.value_and_grad(task.batch_loss)(w, idx)

        xs = jax.random.split(key, steps)

    def step(carry, k):
        w, s = carry
        loss, g = grad_fn(w, k)
        w, s = optimizer.update(g, s, w, hparams)
        return (w, s), loss

    (params, _), losses = jax.lax.scan(step, (params, state), xs, length=steps)
    losses = jnp.concatenate([losses, task.loss(params)[None]])
    return UnrollResult(params=params, losses=losses, task=task)
