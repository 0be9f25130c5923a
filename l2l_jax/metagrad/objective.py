"""``meta_objective``: the meta-objective as a differentiable function of hyperparameters.

One argument, ``grad``, chooses how its gradient is computed; the value is the same:

* ``"autodiff"``: reverse mode through the ``lax.scan`` unroll (memory grows with t).
* ``"forward"``: forward mode (``jax.jacfwd``) through the unroll, wrapped in a
  ``jax.custom_vjp`` so ``jax.grad`` uses it; memory does not grow with t.
* ``"stable"``: no unroll; the log-space closed form and the ratio formula of
  Wang et al. (2021), Eq. 1-2 (see :mod:`l2l_jax.metagrad.stable`). Finite for any t.
* ``"logscaled"``: reverse mode through the unroll with the adjoint and the accumulated
  meta-gradient carried with a shared power-of-two log-scale (see
  :mod:`l2l_jax.metagrad.logscaled`): any task and optimizer, objectives of the final
  iterate; finite wherever the forward iterates are and the meta-gradient is representable.

``batched=True`` takes a batch of tasks (a task pytree with a leading axis of size ``m``,
e.g. ``tasks.LeastSquares.sample_batch``) and returns the mean of the per-task objective
over the batch, computed with ``jax.vmap`` (Wang et al. 2021, Eq. 3-4). ``max_norm``
truncates diverging inner runs (footnote 3; see :func:`l2l_jax.inner.unroll`).
``remat`` bounds the memory of ``"autodiff"`` through long unrolls with
:func:`jax.checkpoint` on scan segments (see :func:`l2l_jax.inner.unroll`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import input_checks
from l2l_jax import objectives as objectives_lib
from l2l_jax.inner.optimizers import HParams, InnerOptimizer
from l2l_jax.inner.unroll import MaxNorm, Remat, remat_segment, unroll
from l2l_jax.metagrad import logscaled, stable

METHODS = ("autodiff", "forward", "stable", "logscaled")


def _twice(x):
    return x, x


def _zero_cotangent(x):
    """A zero cotangent for ``x`` (``float0`` for integer and PRNG-key arrays)."""
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def _forward_mode(fn, hparams, *args):
    """``fn(hparams, *args)`` with a VJP computed by forward mode (one JVP per hyperparameter).

    Only ``hparams`` receive gradients; ``args`` (task data, PRNG keys) and whatever ``fn``
    closes over are constants, as they are for ``F``'s callers. The arguments are passed
    explicitly rather than closed over, so integer and key arrays traced by an enclosing
    ``jit`` (SGD's key) are not captured as constants.
    """
    converted, consts = jax.closure_convert(fn, hparams, *args)

    @jax.custom_vjp
    def wrapped(h, args, consts):
        return converted(h, *args, *consts)

    def fwd(h, args, consts):
        f = lambda x: _twice(converted(x, *args, *consts))
        jac, value = jax.jacfwd(f, has_aux=True)(h)
        return value, (jac, args, consts)

    def bwd(res, g):
        jac, args, consts = res
        zeros = jax.tree_util.tree_map(_zero_cotangent, (args, consts))
        return (jax.tree_util.tree_map(lambda j: g * j, jac), *zeros)

    wrapped.defvjp(fwd, bwd)
    return wrapped(hparams, args, tuple(consts))


class MetaObjective:
    """``F(hparams)``: run the inner optimizer on the task, score it with the objective.

    Call it like a function of the optimizer's hyperparameters (a scalar step size for
    ``inner.gd()``); differentiate it with ``jax.grad``. It is jitted internally; build
    it once and call it many times.
    """

    def __init__(
        self, task, optimizer, objective, *, steps, grad, key, max_norm, batched, remat=None
    ):
        if not isinstance(optimizer, InnerOptimizer):
            raise TypeError(
                f"optimizer must be an inner optimizer such as inner.gd(), got "
                f"{type(optimizer).__name__}."
            )
        if grad not in METHODS:
            raise ValueError(f"grad must be one of {METHODS}, got {grad!r}.")
        self.task = task
        self.optimizer = optimizer
        self.objective = objectives_lib.resolve(objective)
        self.steps = input_checks.positive_int("steps", steps)
        self.grad = grad
        self.key = None if key is None else input_checks.prng_key("key", key)
        if max_norm is not None and not callable(max_norm):
            input_checks.positive("max_norm", max_norm)
        input_checks.dtypes_match_x64("task", task)
        self.max_norm = max_norm
        remat_segment(remat, self.steps)  # validates
        self.remat = remat
        self.batched = bool(batched)
        self.batch_size = _batch_size(task) if self.batched else None
        if not self.batched and getattr(task, "batch_shape", ()):
            raise ValueError(
                f"task is a batch of tasks ({task!r}); pass batched=True to meta_objective to "
                "average the objective over them (Eq. 3-4), or pick one task with task[i]."
            )
        if grad == "stable" and (self.batched or max_norm is not None):
            unsupported = ["batched=True"] * self.batched + ["max_norm"] * (max_norm is not None)
            raise ValueError(
                f"{stable.supported()}, for one task without truncation; got "
                f"{' and '.join(unsupported)}. Use grad='autodiff' or grad='forward' for this "
                "combination."
            )
        if grad == "stable":
            self._fn = jax.jit(self._stable)
            stable.log_loss_fn(task, optimizer, self.objective, self.steps)  # fail early
        elif grad == "forward":
            self._fn = jax.jit(self._forward)
        elif grad == "logscaled":
            logscaled.check(self.objective, max_norm=max_norm)
            self._log_scaled = logscaled.objective_fn(
                optimizer, self.objective, steps=self.steps, remat=remat
            )
            self._fn = jax.jit(self._unrolled)
        else:
            self._fn = jax.jit(self._unrolled)

    def _one_task(self, hparams, task, key):
        if self.grad == "logscaled":
            return self._log_scaled(hparams, task, key)
        result = unroll(
            task,
            self.optimizer,
            hparams,
            self.steps,
            key,
            max_norm=self.max_norm,
            remat=self.remat,
            record=getattr(self.objective, "record", None),
        )
        return self.objective(result)

    def _unrolled(self, hparams, task, key):
        if not self.batched:
            return self._one_task(hparams, task, key)
        keys = None if key is None else jax.random.split(key, self.batch_size)
        per_task = jax.vmap(self._one_task, in_axes=(None, 0, None if key is None else 0))
        return jnp.mean(per_task(hparams, task, keys))

    def _forward(self, hparams, task, key):
        return _forward_mode(self._unrolled, hparams, task, key)

    def _stable(self, hparams, task, key):
        del key
        return stable.log_loss_fn(task, self.optimizer, self.objective, self.steps)(hparams)

    def __call__(self, hparams: HParams) -> jnp.ndarray:
        self.optimizer.as_dict(hparams)  # validates structure and sign, names the field
        return self._fn(hparams, self.task, self.key)

    def __repr__(self) -> str:
        return (
            f"MetaObjective(task={self.task!r}, optimizer={self.optimizer.name!r}, "
            f"objective={getattr(self.objective, 'name', self.objective)!r}, "
            f"steps={self.steps}, grad={self.grad!r}, batched={self.batched}, "
            f"max_norm={self.max_norm!r}, remat={self.remat!r})"
        )


def meta_objective(
    task,
    optimizer: InnerOptimizer,
    objective="log_loss",
    *,
    steps: int,
    grad: str = "autodiff",
    key: jax.Array | None = None,
    max_norm: MaxNorm | None = None,
    batched: bool = False,
    remat: Remat = None,
) -> MetaObjective:
    """The meta-objective ``F(hparams) = objective(unroll(task, optimizer, hparams, steps))``.

    Args:
      task: e.g. ``tasks.Quadratic(hessian=H, w0=w0)``, or a batch of tasks (with
        ``batched=True``), e.g. ``tasks.LeastSquares.sample_batch(key, m, d, n1, n2, sigma)``.
      optimizer: an inner optimizer, e.g. ``inner.gd()``.
      objective: a function of an :class:`~l2l_jax.inner.UnrollResult` or a built-in
        name (``"last_loss"``, ``"log_loss"``, ``"mean_loss"``, ``"tbt"``, ``"tbv"``).
      steps: the unroll length ``t >= 1``.
      grad: ``"autodiff"``, ``"forward"``, ``"stable"`` or ``"logscaled"`` (see the module
        docstring).
      key: PRNG key for stochastic inner optimizers (fixed: F is deterministic). With
        ``batched=True``, task ``i`` uses ``jax.random.split(key, m)[i]``.
      max_norm: truncation radius ``R`` of footnote 3 (a positive scalar or a function
        ``task -> R`` such as ``lambda task: 40 * task.sigma``); ``None`` = no truncation.
        Not available with ``grad="stable"``.
      batched: ``task`` is a batch with one leading axis of ``m`` tasks; ``F`` is the mean
        over tasks of the per-task objective (Eq. 3-4), by ``jax.vmap``. Works with
        ``grad="autodiff"``, ``"forward"`` and ``"logscaled"``.
      remat: bounded memory for ``grad="autodiff"`` through long unrolls: ``None`` (off),
        a segment length ``s`` (the unroll's scan runs in segments of ``s`` steps under
        :func:`jax.checkpoint`: memory ~ ``steps / s + s`` instead of ~ ``steps``, for
        about one extra forward pass), or ``True`` for ``s = ceil(sqrt(steps))``. Values
        are unchanged and gradients agree up to float rounding. With ``"logscaled"``: the
        same segments (every ``s``-th state stored, one segment recomputed at a time). No
        effect on ``"forward"`` (whose memory is already flat) or ``"stable"`` (no unroll).

    Returns:
      A callable ``F``; ``jax.value_and_grad(F)(eta)`` gives value and meta-gradient.
    """
    return MetaObjective(
        task,
        optimizer,
        objective,
        steps=steps,
        grad=grad,
        key=key,
        max_norm=max_norm,
        batched=batched,
        remat=remat,
    )


def _batch_size(task) -> int:
    """``m`` for a batch of tasks with one leading axis, or a ``ValueError`` saying why not."""
    shape = getattr(task, "batch_shape", None)
    if shape is not None:
        if len(shape) != 1:
            what = "a single task" if not shape else f"batch_shape {tuple(shape)}"
            raise ValueError(
                f"batched=True expects a batch with one leading task axis, got {what} "
                f"({task!r}); pass batched=False for one task, or build a batch (e.g. "
                "LeastSquares.sample_batch(key, m, ...), or jax.vmap of a task builder)."
            )
        return int(shape[0])
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in jax.tree.leaves(task)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"batched=True expects every array of the task to have the same leading (task) "
            f"axis, got leading sizes {sorted(sizes, key=str)} for {type(task).__name__}; "
            "stack m tasks with jax.tree.map(lambda *a: jnp.stack(a), *tasks) or build them "
            "with jax.vmap."
        )
    return sizes.pop()
