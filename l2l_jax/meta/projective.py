"""Stable meta-gradients of linear inner dynamics by projective forward mode.

For an optimizer whose step is linear and homogeneous in its state ``z = (w, v)`` on a
quadratic ``f(w) = 1/2 sum_i lambda_i w_i^2`` (GD, heavy-ball momentum and Nesterov on
:class:`~l2l_jax.tasks.Quadratic` in its eigenbasis, or on the mean dynamics of
:class:`~l2l_jax.tasks.NQM`), the iterate ``z_t`` and its tangents ``dz_t / d theta`` (one
per hyperparameter) obey one linear recursion::

    z_{k+1} = A(theta) z_k,        dz_{k+1} = A(theta) dz_k + (dA / d theta) z_k.

Both sides are homogeneous of degree one in ``(z, dz)`` jointly, so they can be carried
with one shared log-scale ``s``: after each step all of them are divided by the power of
two ``2^e`` nearest their largest magnitude and ``s += e log 2``. The division is exact
and ``e`` an integer, so the scale adds no rounding of its own (a float log-scale would:
at ``t = 1e5`` in float32 its running sum loses the small per-step increments). Then,
with ``w = e^s w_hat`` and ``dw = e^s dw_hat``::

    log f(w_t) = 2 s + log f(w_hat),    d log f / d theta = <grad f(w_hat), dw_hat> / f(w_hat),

both scale-free: nothing overflows or underflows for any ``t``, whatever the step's
eigenvalues (real, or complex where ``(1 - sqrt(beta))^2 < eta lambda < (1 +
sqrt(beta))^2``, past the stability boundary ``2 (1 + beta) / lambda`` or not). No
eigendecomposition of the 2x2 steps is needed; the cost is ``O(t d)`` per meta-gradient.

Rounding: only the step's own arithmetic rounds, a few units ``u`` per step, so
``log f(w_t)`` carries an absolute error of order ``t u`` at worst, the order of the
change of ``log f(w_t)`` itself when ``eta`` moves by one rounding unit; the log-loss
``(1/t) log f`` and its gradient keep a relative error of order ``u / |log rho|`` (``rho``
the step's spectral radius), independent of ``t``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

Array = jax.Array
# step(theta, w, v, lam) -> (w', v'): one step of the optimizer on f = 1/2 sum lam w^2,
# linear in (w, v); theta maps hyperparameter names to scalars.
LinearStep = Callable[[Mapping[str, Array], Array, Array, Array], tuple[Array, Array]]


def momentum_step(theta, w, v, lam):
    """optax's heavy ball (``inner.momentum``): ``v <- g + beta v``, ``w <- w - eta v``."""
    v = lam * w + theta["momentum"] * v
    return w - theta["learning_rate"] * v, v


def nesterov_step(theta, w, v, lam):
    """optax's Nesterov momentum: ``v <- g + beta v``, ``w <- w - eta (g + beta v)``."""
    g = lam * w
    v = g + theta["momentum"] * v
    return w - theta["learning_rate"] * (g + theta["momentum"] * v), v


def gd_step(theta, w, v, lam):
    """Gradient descent (``v`` unused): ``w <- w - eta lambda w``."""
    return w - theta["learning_rate"] * lam * w, v


STEPS: dict[str, LinearStep] = {
    "gd": gd_step,
    "momentum": momentum_step,
    "nesterov": nesterov_step,
}


def _log_f_and_grad(step: LinearStep, theta: dict, lam: Array, w0: Array, steps: int):
    """``(log f(w_t), d log f / d theta)`` by the renormalized recursion (module doc)."""
    names = sorted(theta)
    dtype = w0.dtype
    z0 = (w0, jnp.zeros_like(w0))
    dz0 = jax.tree.map(lambda x: jnp.zeros((len(names), *x.shape), dtype), z0)

    def advance(z, direction):
        # (A z, A dz + dA/dtheta z) for one tangent direction, by one jvp of the step
        tangent_theta, dz = direction
        return jax.jvp(lambda th, w, v: step(th, w, v, lam), (theta, *z), (tangent_theta, *dz))

    basis = {n: jnp.eye(len(names), dtype=dtype)[i] for i, n in enumerate(names)}

    def body(carry, _):
        z, dz, exponent = carry
        z_new = step(theta, *z, lam)
        dz_new = jax.vmap(lambda b, dw, dv: advance(z, (b, (dw, dv)))[1])(basis, *dz)
        biggest = jnp.max(
            jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves((z_new, dz_new))])
        )
        # divide by a power of two: exact, and the log-scale is an exact integer count
        e = jnp.where(biggest > 0, jnp.frexp(biggest)[1], 0)
        div = lambda x: jnp.ldexp(x, -e)
        return (jax.tree.map(div, z_new), jax.tree.map(div, dz_new), exponent + e), None

    init = (z0, dz0, jnp.zeros((), jnp.int32))
    (z, dz, exponent), _ = jax.lax.scan(body, init, None, length=steps)
    s = exponent.astype(dtype) * jnp.log(jnp.asarray(2.0, dtype))
    w, dw = z[0], dz[0]
    f_hat = 0.5 * jnp.sum(lam * w * w)
    log_f = 2.0 * s + jnp.log(f_hat)
    grads = (dw @ (lam * w)) / f_hat  # (len(names),): <grad f(w_hat), dw_hat_j> / f(w_hat)
    return log_f, {n: grads[i] for i, n in enumerate(names)}


def log_loss_fn(step: LinearStep, lam: Array, w0: Array, steps: int) -> Callable[[dict], Array]:
    """``theta -> log f(w_t)`` (a ``jax.custom_vjp``: its gradient in every
    hyperparameter is the scale-free one of the module doc, never a ratio of huge or tiny
    numbers). ``lam``, ``w0``: the curvatures and the start in the eigenbasis (constants:
    no gradient flows to them)."""
    return lambda theta: _log_f(step, steps, theta, lam, w0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _log_f(step, steps, theta, lam, w0):
    return _log_f_and_grad(step, theta, lam, w0, steps)[0]


def _log_f_fwd(step, steps, theta, lam, w0):
    value, grads = _log_f_and_grad(step, theta, lam, w0, steps)
    return value, (grads, lam, w0)


def _log_f_bwd(step, steps, residuals, g):
    grads, lam, w0 = residuals
    return {n: g * v for n, v in grads.items()}, jnp.zeros_like(lam), jnp.zeros_like(w0)


_log_f.defvjp(_log_f_fwd, _log_f_bwd)
