"""Unrolling an inner optimizer on a task with :func:`jax.lax.scan`.

Optional truncation (Wang et al. 2021, footnote 3): once ``||w_tau|| >= R`` the run is
frozen at ``R * w_tau / ||w_tau||`` for all remaining steps, inside the scan.

Optional rematerialization (``remat``, :func:`checkpointed_scan`): reverse mode through a
scan of ``t`` steps stores every step's residuals (memory ~ ``t``); split into segments of
``s`` steps under :func:`jax.checkpoint`, it stores one carry per segment and recomputes
one segment at a time in the backward pass (memory ~ ``t / s + s``, ~ ``2 sqrt(t)`` at
``s = sqrt(t)``), for about one extra forward pass.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp

from l2l_jax import input_checks
from l2l_jax.inner.optimizers import HParams, InnerOptimizer

Array = jnp.ndarray
MaxNorm = float | Array | Callable[[object], Array]
Remat = int | bool | None
OPTIMIZER = "optimizer"  # train_step's batch_size: the optimizer's own


@chex.dataclass(frozen=True)
class UnrollResult:
    """What a meta-objective sees: the trajectory's end point and its losses.

    Attributes:
      params: the final iterate ``w_t``.
      losses: ``(t + 1,)`` losses ``f(w_0), ..., f(w_t)`` (minibatch losses for SGD,
        except the last one, which is always the full loss ``f(w_t)``).
      task: the task that was optimized (for validation losses and the like).
      truncated_at: the step ``tau >= 1`` at which ``||w_tau|| >= max_norm`` first held
        and the run was frozen (footnote 3 of the paper), or ``-1`` if it never was
        (always ``-1`` without ``max_norm``).
      records: ``record(task, w_k)`` at ``k = 1, ..., t`` stacked on a leading axis, when
        :func:`unroll` was given ``record`` (e.g. the validation loss of every iterate,
        for a meta-objective over the trajectory); ``None`` otherwise, so no other
        objective pays for it.
    """

    params: chex.ArrayTree
    losses: Array
    task: object
    truncated_at: Array = -1
    records: chex.ArrayTree = None

    @property
    def truncated(self) -> Array:
        """True when the run was frozen by ``max_norm``."""
        return jnp.asarray(self.truncated_at) >= 0

    @property
    def steps(self) -> int:
        """The number of inner steps ``t``."""
        return self.losses.shape[0] - 1

    @property
    def final_loss(self) -> Array:
        return self.losses[-1]


def gradient_fn(task, batch_size: int | None, *, name: str = "optimizer"):
    """``(params, key) -> (loss, grads)``: the gradient every inner loop steps with.

    Full batch (``task.loss``, ``key`` ignored) when ``batch_size`` is None; otherwise
    ``task.batch_loss`` on ``jax.random.randint(key, (batch_size,), 0, task.num_examples)``
    (rows drawn with replacement). One home for the draw, so :func:`unroll`, evaluation
    and truncated meta-training see the same minibatch for the same key.
    """
    if batch_size is None:
        return lambda w, _: jax.value_and_grad(task.loss)(w)
    n = task.num_examples
    if n is None:
        raise ValueError(
            f"inner.{name} samples minibatches, but {task!r} has no examples; "
            "use inner.gd() or a task with data."
        )

    def grad_fn(w, k):
        idx = jax.random.randint(k, (batch_size,), 0, n)
        return jax.value_and_grad(task.batch_loss)(w, idx)

    return grad_fn


def train_step(
    task, optimizer: InnerOptimizer, hparams: HParams, batch_size: int | str | None = OPTIMIZER
) -> Callable:
    """The inner step ``((w, s), key) -> ((w', s'), loss)`` of every loop in the library.

    ``loss`` is the (minibatch) training loss at ``w``, the one the gradient is taken of.
    ``batch_size``: the optimizer's (default), ``None`` for full-batch gradients, or a
    minibatch size whatever the optimizer says (the OOD study's tasks fix their own).
    """
    size = optimizer.batch_size if batch_size == OPTIMIZER else batch_size
    grad_fn = gradient_fn(task, size, name=optimizer.name)

    def step(carry, key):
        w, s = carry
        loss, g = grad_fn(w, key)
        return optimizer.update(g, s, w, hparams), loss

    return step


def remat_segment(remat: Remat, length: int) -> int | None:
    """The segment length :func:`checkpointed_scan` uses for ``remat`` on ``length`` steps.

    ``None``/``False``: no rematerialization (``None``). ``True``: ``ceil(sqrt(length))``,
    which balances the stored segment carries against one segment's residuals. A positive
    int ``s``: segments of ``s`` steps (capped at ``length``).
    """
    if remat is None or remat is False:
        return None
    if remat is True:
        return math.isqrt(length - 1) + 1
    if isinstance(remat, numbers.Integral) and remat >= 1:
        return min(int(remat), length)
    raise ValueError(
        f"remat must be None (off), True (segments of ceil(sqrt(t)) steps) or a positive "
        f"segment length, got {remat!r}."
    )


def checkpointed_scan(f, init, xs, length: int, segment: int | None):
    """``jax.lax.scan(f, init, xs, length=length)``, optionally in checkpointed segments.

    With ``segment = s``, the scan runs as an outer scan over ``length // s`` segments, each
    an inner scan of ``s`` steps under :func:`jax.checkpoint` (plus one checkpointed
    scan over the last ``length % s`` steps): reverse mode stores only each segment's
    input carry and recomputes the segment's steps when it reaches it. The forward values
    compute the plain scan's steps in another program, so they agree with it up to float
    rounding (bitwise on some CPUs, not all); gradients too (the cotangents of
    closed-over values are also summed per segment). The program size does not depend on
    ``length``. ``segment=None`` is exactly ``jax.lax.scan``.
    """
    if segment is None:
        return jax.lax.scan(f, init, xs, length=length)
    segment = min(segment, length)
    n, rest = divmod(length, segment)

    def run(size):
        return lambda carry, x: jax.lax.scan(f, carry, x, length=size)

    head = jax.tree.map(lambda x: x[: n * segment].reshape((n, segment, *x.shape[1:])), xs)
    body = jax.checkpoint(run(segment), prevent_cse=False)
    carry, ys = jax.lax.scan(body, init, head, length=n)
    ys = jax.tree.map(lambda y: y.reshape((n * segment, *y.shape[2:])), ys)
    if rest:
        tail = jax.tree.map(lambda x: x[n * segment :], xs)
        carry, ys_tail = jax.checkpoint(run(rest))(carry, tail)
        ys = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
    return carry, ys


def unroll(
    task,
    optimizer: InnerOptimizer,
    hparams: HParams,
    steps: int,
    key: chex.PRNGKey | None = None,
    *,
    max_norm: MaxNorm | None = None,
    remat: Remat = None,
    record: Callable[[object, chex.ArrayTree], chex.ArrayTree] | None = None,
) -> UnrollResult:
    """Run ``steps`` iterations of ``optimizer`` on ``task`` inside one ``lax.scan``.

    The step count is static (it is the scan length); the hyperparameters are traced and
    differentiable. ``key`` seeds the minibatch sequence of stochastic optimizers: step
    ``k`` uses ``jax.random.split(key, steps)[k]`` and draws
    ``jax.random.randint(k, (batch_size,), 0, task.num_examples)``.

    ``max_norm`` (``R``; ``None`` = off) truncates diverging runs as in footnote 3 of
    Wang et al. (2021): after every step, the first ``tau >= 1`` with ``||w_tau|| >= R``
    sets ``w_tau' = R * w_tau / ||w_tau||`` for all ``tau' >= tau`` (iterate and optimizer
    state are frozen; ``w_0`` is never truncated). ``R`` is a positive scalar, or a
    function of the task, e.g. ``lambda task: 40 * task.sigma`` (the paper's choice),
    evaluated per task under ``vmap``. It is a constant for meta-gradients; the frozen
    iterate stays differentiable in the hyperparameters through its direction.
    The step is recorded in ``UnrollResult.truncated_at``.

    ``remat`` bounds the memory of reverse-mode meta-gradients (``jax.grad`` through the
    unroll): ``None`` (default) is one plain scan, whose backward pass stores every
    step's residuals (memory ~ ``steps``); an int ``s`` runs the scan in segments of
    ``s`` steps under :func:`jax.checkpoint` (memory ~ ``steps / s + s``, about one extra
    forward pass of time); ``True`` picks ``s = ceil(sqrt(steps))``. Values are unchanged;
    gradients agree up to float rounding. Forward mode needs none of this.

    ``record(task, w)`` (optional) is evaluated on every new iterate ``w_1..w_t`` inside
    the scan and returned stacked in ``UnrollResult.records``.
    """
    steps = input_checks.positive_int("steps", steps)
    segment = remat_segment(remat, steps)
    if getattr(task, "batch_shape", ()):
        raise ValueError(
            f"unroll runs one task, got a batch {task!r}: use jax.vmap over the tasks, or "
            "metagrad.meta_objective(..., batched=True) for the mean objective over the batch."
        )
    radius = _radius(task, max_norm)
    params = task.init_params()
    state = optimizer.init(params, hparams)
    if optimizer.batch_size is not None and key is None:
        raise ValueError(f"inner.{optimizer.name} is stochastic: pass key=jax.random.key(...).")
    if key is not None:
        input_checks.prng_key("key", key)
    plain_step = train_step(task, optimizer, hparams)
    xs = None if optimizer.batch_size is None else jax.random.split(key, steps)

    def step(carry, k):
        carry, loss = plain_step(carry, k)
        return carry, (loss if record is None else (loss, record(task, carry[0])))

    if radius is None:
        (params, _), losses = checkpointed_scan(step, (params, state), xs, steps, segment)
        truncated_at = jnp.asarray(-1, jnp.int32)
    else:

        def truncated_step(carry, inputs):
            (w, s, at), (tau, k) = carry, inputs
            (w_new, s_new), loss = plain_step((w, s), k)
            crossed, w_new = _truncate(w_new, radius)
            frozen = at >= 0
            w_new, s_new = jax.tree_util.tree_map(
                lambda old, new: jnp.where(frozen, old, new), (w, s), (w_new, s_new)
            )
            at = jnp.where(frozen | ~crossed, at, tau)
            out = loss if record is None else (loss, record(task, w_new))
            return (w_new, s_new, at), out

        taus = jnp.arange(1, steps + 1, dtype=jnp.int32)
        init = (params, state, jnp.asarray(-1, jnp.int32))
        (params, _, truncated_at), losses = checkpointed_scan(
            truncated_step, init, (taus, xs), steps, segment
        )
    records = None
    if record is not None:
        losses, records = losses
    losses = jnp.concatenate([losses, task.loss(params)[None]])
    return UnrollResult(
        params=params, losses=losses, task=task, truncated_at=truncated_at, records=records
    )


def _radius(task, max_norm: MaxNorm | None) -> Array | None:
    """``R`` for this task (``max_norm`` or ``max_norm(task)``), checked when concrete."""
    if max_norm is None:
        return None
    radius = max_norm(task) if callable(max_norm) else max_norm
    if isinstance(radius, (str, bytes, bool)) or jnp.ndim(radius) != 0:
        raise TypeError(f"max_norm must be a positive scalar (or task -> scalar), got {radius!r}.")
    radius = jnp.asarray(radius)
    if input_checks.known_true(~(radius > 0)):
        raise ValueError(
            f"max_norm must be > 0 (the truncation radius R, e.g. 40 * sigma), got {radius}; "
            "pass max_norm=None to turn truncation off."
        )
    return radius


def _truncate(params: chex.ArrayTree, radius: Array) -> tuple[Array, chex.ArrayTree]:
    """``(||w|| >= R, w * R / ||w|| where that holds else w)``, NaN-free gradients.

    The norm is over all leaves of ``params``.
    """
    leaves = jax.tree_util.tree_leaves(params)
    sq = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
    radius = radius.astype(sq.dtype)
    crossed = jnp.sqrt(jax.lax.stop_gradient(sq)) >= radius
    # Divide by a safe norm so the branch not taken has finite gradients (R > 0).
    scale = radius / jnp.sqrt(jnp.where(crossed, sq, jnp.ones_like(sq)))
    projected = jax.tree_util.tree_map(
        lambda leaf: jnp.where(crossed, leaf * scale.astype(leaf.dtype), leaf), params
    )
    return crossed, projected
