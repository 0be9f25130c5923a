"""Closed-form, log-space meta-objectives for the combinations where they exist.

``grad="stable"`` evaluates ``log f(w_t)`` without unrolling, through
:func:`~l2l_jax.closed_forms.spectral.log_gd_loss` (a ``jax.custom_vjp`` implementing the ratio
formula of Wang et al. 2021, Eq. 1-2, in log space). A rule is registered per task type; each
returns a function ``eta -> log f(w_t)`` for full-batch gradient descent.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from l2l_jax.closed_forms import spectral, spectral_ls
from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.tasks.least_squares import LeastSquares
from l2l_jax.tasks.quadratic import Quadratic

Array = jnp.ndarray
LogLossFn = Callable[[Array], Array]

_RULES: dict[type, Callable[[object, int], LogLossFn]] = {}


def register(task_type: type, rule: Callable[[object, int], LogLossFn]) -> None:
    """Register ``rule(task, steps) -> (eta -> log f(w_t))`` for GD on ``task_type``."""
    _RULES[task_type] = rule


def supported() -> str:
    names = ", ".join(f"tasks.{t.__name__}" for t in _RULES)
    return (
        f"grad='stable' supports inner.gd() on {names}, with the objectives last_loss, "
        "log_loss and tbt (or any objective with a from_log_loss(log_f, steps) method)"
    )


def log_loss_fn(task, optimizer: InnerOptimizer, objective, steps: int) -> LogLossFn:
    """``eta -> objective`` evaluated in log space, or a ``ValueError`` saying what works."""
    rule = _RULES.get(type(task))
    problems = []
    if optimizer.name != "gd" or optimizer.batch_size is not None:
        problems.append(f"optimizer {optimizer.name!r}")
    if rule is None:
        problems.append(f"task {type(task).__name__}")
    if not hasattr(objective, "from_log_loss"):
        problems.append(f"objective {getattr(objective, 'name', objective)!r}")
    if problems:
        raise ValueError(
            f"{supported()}; got {', '.join(problems)}. "
            "Use grad='autodiff' or grad='forward' for this combination."
        )
    log_f = rule(task, steps)
    t = jnp.asarray(steps, task.dtype)
    return lambda eta: objective.from_log_loss(log_f(eta), t)


def _quadratic_rule(task: Quadratic, steps: int) -> LogLossFn:
    lam = task.eigenvalues
    log_w = spectral.log_weights_from_coefficients(lam, task.coefficients)
    t = jnp.asarray(steps, task.dtype)
    return lambda eta: spectral.log_gd_loss(jnp.asarray(eta, task.dtype), log_w, lam, t)


register(Quadratic, _quadratic_rule)


def _least_squares_rule(task: LeastSquares, steps: int) -> LogLossFn:
    """``log`` of the training loss of ``w_t`` (untruncated TbT, Eq. 3 per task).

    One eigendecomposition of ``X^T X / n``, then :func:`spectral_ls.log_tbt_loss`: the
    ratio formula in log space plus the ERM residual, finite for any ``t``.
    """
    spec = spectral_ls.decompose(task.x_train, task.y_train)
    return lambda eta: spectral_ls.log_tbt_loss(spec, jnp.asarray(eta, task.dtype), steps)


register(LeastSquares, _least_squares_rule)
