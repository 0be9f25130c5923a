"""``meta_objective``: the meta-objective as a differentiable function of hyperparameters.

One argument, ``grad``, chooses how its gradient is computed; the value is the same:

* ``"autodiff"``: reverse mode through the ``lax.scan`` unroll (memory grows with t).
* ``"forward"``: forward mode (``jax.jacfwd``) through the unroll, wrapped in a
  ``jax.custom_vjp`` so ``jax.grad`` uses it; memory does not grow with t.
* ``"stable"``: no unroll; the log-space closed form and the ratio formula of
  Wang et al. (2021), Eq. 1-2 (see :mod:`l2l_jax.meta.stable`). Finite for any t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from l2l_jax import objectives as objectives_lib
from l2l_jax import validation
from l2l_jax.inner.optimizers import HParams, InnerOptimizer
from l2l_jax.inner.unroll import unroll
from l2l_jax.meta import stable

METHODS = ("autodiff", "forward", "stable")


def _twice(x):
    return x, x


def _forward_mode(fn, hparams):
    """``fn(hparams)`` with a VJP computed by forward mode (one JVP per hyperparameter).

    Only ``hparams`` receive gradients; whatever ``fn`` closes over (task data, keys) is
    a constant, as it is for ``F``'s callers.
    """
    converted, consts = jax.closure_convert(fn, hparams)

    @jax.custom_vjp
    def wrapped(h, *consts):
        return converted(h, *consts)

    def fwd(h, *consts):
        jac, value = jax.jacfwd(lambda x: _twice(converted(x, *consts)), has_aux=True)(h)
        return value, (jac, consts)

    def bwd(res, g):
        jac, consts = res
        zeros = tuple(jnp.zeros_like(c) for c in consts)
        return (jax.tree_util.tree_map(lambda j: g * j, jac), *zeros)

    wrapped.defvjp(fwd, bwd)
    return wrapped(hparams, *consts)


class MetaObjective:
    """``F(hparams)``: run the inner optimizer on the task, score it with the objective.

    Call it like a function of the optimizer's hyperparameters (a scalar step size for
    ``inner.gd()``); differentiate it with ``jax.grad``. It is jitted internally; build
    it once and call it many times.
    """

    def __init__(self, task, optimizer, objective, *, steps, grad, key):
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
        self.steps = validation.positive_int("steps", steps)
        self.grad = grad
        self.key = key
        if grad == "stable":
            self._fn = jax.jit(self._stable)
            stable.log_loss_fn(task, optimizer, self.objective, self.steps)  # fail early
        elif grad == "forward":
            self._fn = jax.jit(self._forward)
        else:
            self._fn = jax.jit(self._unrolled)

    def _unrolled(self, hparams, task, key):
        return self.objective(unroll(task, self.optimizer, hparams, self.steps, key))

    def _forward(self, hparams, task, key):
        return _forward_mode(lambda h: self._unrolled(h, task, key), hparams)

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
            f"steps={self.steps}, grad={self.grad!r})"
        )


def meta_objective(
    task,
    optimizer: InnerOptimizer,
    objective="log_loss",
    *,
    steps: int,
    grad: str = "autodiff",
    key: jax.Array | None = None,
) -> MetaObjective:
    """The meta-objective ``F(hparams) = objective(unroll(task, optimizer, hparams, steps))``.

    Args:
      task: e.g. ``tasks.Quadratic(hessian=H, w0=w0)``.
      optimizer: an inner optimizer, e.g. ``inner.gd()``.
      objective: a function of an :class:`~l2l_jax.inner.UnrollResult` or a built-in
        name (``"last_loss"``, ``"log_loss"``, ``"mean_loss"``).
      steps: the unroll length ``t >= 1``.
      grad: ``"autodiff"``, ``"forward"`` or ``"stable"`` (see the module docstring).
      key: PRNG key for stochastic inner optimizers (fixed: F is deterministic).

    Returns:
      A callable ``F``; ``jax.value_and_grad(F)(eta)`` gives value and meta-gradient.
    """
    return MetaObjective(task, optimizer, objective, steps=steps, grad=grad, key=key)
