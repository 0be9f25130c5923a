"""A meta-gradient health check for any unroll: the top Lyapunov exponent of the
training dynamics, and the unroll lengths at which reverse-mode meta-gradients overflow
or vanish at that rate.

Reverse mode multiplies the Jacobians ``J_k = d z_{k+1} / d z_k`` of the inner steps
(``z = (params, optimizer state)``); so do the tangents ``d z_t / d theta``. Their growth
per step tends to the top Lyapunov exponent ``lambda_1`` of the products ``J_t ... J_1``
(Wang et al. 2021, Thm 3, is this growth for GD on a quadratic: ``lambda_1 = log max_i |1
- eta lambda_i|``). It is estimated by the adjoint Benettin method, the way reverse mode
sees it: the states of the unroll are stored, a cotangent ``u`` is pulled back through
every step (``u <- J_k^T u``, one ``jax.vjp`` per step inside a reversed ``lax.scan``)
and renormalized; the mean of the logs of the renormalization factors over the first
half of the unroll (reached after the cotangent has aligned with the top direction on
the second half) is the exponent. (The products and their transposes share the top exponent.)

At that rate a meta-gradient of size ``~ exp(lambda_1 t)`` leaves the floating-point
range after ``log(max float) / lambda_1`` steps (overflow, ``lambda_1 > 0``) or ``log(min
normal) / lambda_1`` steps (vanishing, ``lambda_1 < 0``): about 88.7 / lambda_1 in float32,
709.8 / lambda_1 in float64.

What to do when ``lambda_1 > 0``: truncate the unroll below the predicted length
(``TruncatedConfig.segment``), use the log-loss ``(1/t) log f(w_t)`` whose meta-gradient
is bounded (Thm 4) with ``grad="stable"`` where it exists, or estimate the meta-gradient
without backpropagating through the product (``estimator="pes"`` or ``"es"``).
"""

from __future__ import annotations

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax.inner.unroll import gradient_fn
from l2l_jax.input_checks import positive_int
from l2l_jax.learned.adapters import as_inner_optimizer

Array = jax.Array
# log of the largest finite and of the smallest normal number
_LOG_MAX = {
    "float32": math.log(float(np.finfo(np.float32).max)),
    "float64": math.log(float(np.finfo(np.float64).max)),
}
_LOG_TINY = {
    "float32": math.log(float(np.finfo(np.float32).tiny)),
    "float64": math.log(float(np.finfo(np.float64).tiny)),
}


@dataclasses.dataclass(frozen=True)
class Health:
    """The result of :func:`meta_gradient_health`.

    Attributes:
      exponent: ``lambda_1``, the log growth per step of the tangents (mean over the
        averaging window).
      log_growth: ``(steps,)`` the log growth of each step (the renormalization factors).
      window: the steps averaged (the first ``window``).
      overflow_steps: per dtype, the unroll length at which ``exp(lambda_1 t)`` passes the
        largest finite number (``None`` when ``lambda_1 <= 0``).
      vanish_steps: per dtype, the length at which it passes below the smallest normal
        number (``None`` when ``lambda_1 >= 0``).
    """

    exponent: float
    log_growth: np.ndarray
    window: int
    overflow_steps: dict[str, float | None]
    vanish_steps: dict[str, float | None]

    def advice(self) -> str:
        """What the exponent means for meta-gradients, and what to do about it."""
        if self.exponent > 0:
            t32, t64 = self.overflow_steps["float32"], self.overflow_steps["float64"]
            return (
                f"exponent {self.exponent:.4g} > 0: reverse-mode meta-gradients grow as "
                f"exp({self.exponent:.3g} t) and overflow after about {t32:.0f} steps in "
                f"float32 ({t64:.0f} in float64). Truncate unrolls well below that "
                "(TruncatedConfig.segment), meta-train the log-loss (grad='stable' where it "
                "exists), or use estimator='pes'."
            )
        if self.exponent < 0:
            t32 = self.vanish_steps["float32"]
            return (
                f"exponent {self.exponent:.4g} < 0: meta-gradients shrink as "
                f"exp({self.exponent:.3g} t) and vanish after about {t32:.0f} steps in "
                "float32: early steps stop mattering; a log objective keeps their share."
            )
        return "exponent 0: meta-gradients neither explode nor vanish at an exponential rate."


def predicted_lengths(exponent: float) -> tuple[dict, dict]:
    """``(overflow_steps, vanish_steps)`` per dtype for growth ``exp(exponent t)``."""
    over = {k: (v / exponent if exponent > 0 else None) for k, v in _LOG_MAX.items()}
    under = {k: (v / exponent if exponent < 0 else None) for k, v in _LOG_TINY.items()}
    return over, under


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _tangent_like(tree, key: Array):
    """A random unit tangent for the float leaves of ``tree`` (``float0`` for the others,
    as :func:`jax.jvp` requires of integer inputs)."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    out = [
        jax.random.normal(k, jnp.shape(x), jnp.result_type(x))
        if _is_float(x)
        else np.zeros(jnp.shape(x), jax.dtypes.float0)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return _normalized(jax.tree.unflatten(treedef, out))[0]


def _normalized(tangent):
    """``(tangent / ||tangent||, log ||tangent||)`` over its float leaves."""
    floats = [x for x in jax.tree.leaves(tangent) if x.dtype != jax.dtypes.float0]
    norm = jnp.sqrt(
        sum(
            jnp.sum(jnp.square(x.astype(jnp.float32 if x.dtype == jnp.float16 else x.dtype)))
            for x in floats
        )
    )
    safe = jnp.where(norm > 0, norm, 1.0)
    scaled = jax.tree.map(
        lambda x: x if x.dtype == jax.dtypes.float0 else (x / safe).astype(x.dtype), tangent
    )
    return scaled, jnp.log(norm)


def log_growth(task, optimizer, hparams, steps: int, key: chex.PRNGKey) -> Array:
    """``(steps,)``: entry ``k`` is ``log ||J_k^T u||`` for the renormalized cotangent ``u``
    carried backward from step ``steps - 1`` to step ``k`` (the adjoint Benettin method:
    what reverse mode does to a meta-gradient). The states ``z_k`` of the unroll (same
    step and minibatch keys as :func:`~l2l_jax.inner.unroll`) are stored by a forward
    ``lax.scan`` and the cotangent is pulled back through each step by ``jax.vjp`` (which
    works for every optimizer, custom-VJP ones included). Jit-able; ``steps`` is static."""
    k_dir, k_data = jax.random.split(key)
    params = task.init_params()
    state = optimizer.init(params, hparams)
    grad_fn = gradient_fn(task, optimizer.batch_size, name=optimizer.name)
    keys = jax.random.split(k_data, steps)

    def step(z, k):
        w, s = z
        _, g = grad_fn(w, k)
        return optimizer.update(g, s, w, hparams)

    def forward(z, k):
        return step(z, k), z

    z0 = (params, state)
    z_last, zs = jax.lax.scan(forward, z0, keys)

    def backward(u, inputs):
        z, k = inputs
        _, pullback = jax.vjp(lambda z: step(z, k), z)
        (u,) = pullback(u)
        return _normalized(u)

    u0 = _tangent_like(z_last, k_dir)
    _, growth = jax.lax.scan(backward, u0, (zs, keys), reverse=True)
    return growth


_log_growth = jax.jit(log_growth, static_argnums=(1, 3))  # one compile per optimizer, length


def meta_gradient_health(
    task,
    optimizer,
    hparams,
    steps: int,
    *,
    key: chex.PRNGKey | None = None,
    window: int | None = None,
) -> Health:
    """The top Lyapunov exponent of ``optimizer``'s dynamics on ``task`` over ``steps``
    inner steps (module doc), and the unroll lengths at which meta-gradients overflow or
    vanish at that rate.

    ``optimizer``: any :class:`~l2l_jax.inner.InnerOptimizer` or learned optimizer (its
    hyperparameters ``hparams`` are then the meta-parameters). The cotangent runs
    backward from the last step; ``window`` (default: half of ``steps``) is how many of
    the *first* steps are averaged, after it has aligned with the top direction on the
    others. ``key`` draws the initial cotangent and, for a stochastic optimizer, the
    minibatches.
    """
    optimizer = as_inner_optimizer(optimizer)
    steps = positive_int("steps", steps)
    window = max(1, steps // 2) if window is None else positive_int("window", window)
    if window > steps:
        raise ValueError(f"window = {window} must be at most steps = {steps}.")
    key = jax.random.key(0) if key is None else key
    growth = np.asarray(_log_growth(task, optimizer, hparams, steps, key), np.float64)
    tail = growth[:window]
    exponent = float(np.mean(tail)) if np.all(np.isfinite(tail)) else float("nan")
    over, under = predicted_lengths(exponent)
    return Health(exponent, growth, window, over, under)
