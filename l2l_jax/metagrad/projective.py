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


# keyed by the linear update an optimizer declares (``optimizer.linear_update``, one of
# ``l2l_jax.inner.optimizers.LINEAR_UPDATES``), never by its name
STEPS: dict[str, LinearStep] = {
    "gd": gd_step,
    "momentum": momentum_step,
    "nesterov": nesterov_step,
}


def _renormalized(step: LinearStep, theta: dict, lam: Array, w0: Array, steps: int):
    """``(s, w_hat, dw_hat)`` after ``steps`` steps: ``w_t = e^s w_hat`` and ``dw_t / d
    theta_j = e^s dw_hat[j]`` (hyperparameters in sorted order), by the renormalized
    recursion of the module doc."""
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
    return s, z[0], dz[0]


def log_polynomial(s: Array, terms) -> tuple[Array, Array]:
    """``(log f, d log f)`` for ``f = sum_k c_k e^(m_k s) > 0`` and ``df = sum_k dc_k
    e^(m_k s)``, given ``terms = [(m_k, c_k, dc_k), ...]`` (``c_k`` scalars of any sign,
    ``dc_k`` one entry per hyperparameter).

    Log space: every term is scaled by ``e^-M``, ``M`` the largest ``m_k s + log |c_k|``,
    so the largest scaled term is 1 and nothing overflows; a term whose scale would
    overflow (``c_k = 0`` while ``m_k s`` is huge) is capped, harmlessly: its ``c_k`` and
    ``dc_k`` are then tiny against the dominant term's.
    """
    dtype = s.dtype
    big = jnp.log(jnp.finfo(dtype).max) / 2
    logs = []
    for m, c, _ in terms:
        nonzero = c != 0
        logs.append(
            jnp.where(nonzero, m * s + jnp.log(jnp.where(nonzero, jnp.abs(c), 1)), -jnp.inf)
        )
    top = jnp.max(jnp.stack(logs))
    top = jnp.where(jnp.isfinite(top), top, 0)
    value, slope = 0, 0
    for m, c, dc in terms:
        scale = jnp.exp(jnp.minimum(m * s - top, big))
        value = value + c * scale
        slope = slope + dc * scale
    return top + jnp.log(value), slope / value


def quadratic_terms(s, w, dw, lam, const=0.0):
    """``f = 1/2 sum lam w^2 + const``: the quadratic's (``const = 0``) or least squares'
    training loss (``const`` = the ERM residual, ``w`` the distance to the ERM solution)."""
    q = 0.5 * jnp.sum(lam * w * w)
    return [
        (2, q, dw @ (lam * w)),
        (0, jnp.asarray(const, s.dtype), jnp.zeros(dw.shape[0], s.dtype)),
    ]


def validation_terms(s, w, dw, features, residual0, n_valid):
    """``f = ||r0 - F e||^2 / (2 n)`` with ``e = e^s w`` (least squares' validation loss:
    ``F = X_valid U``, ``r0 = y_valid - F beta`` the residual of the ERM solution)."""
    fw, fdw = features @ w, dw @ features.T  # (n,), (k, n)
    a = 0.5 * jnp.sum(fw * fw) / n_valid
    b = -jnp.sum(fw * residual0) / n_valid
    c = 0.5 * jnp.sum(residual0 * residual0) / n_valid
    zero = jnp.zeros(dw.shape[0], s.dtype)
    return [(2, a, fdw @ fw / n_valid), (1, b, -(fdw @ residual0) / n_valid), (0, c, zero)]


def _log_f_and_grad(step: LinearStep, theta: dict, lam: Array, w0: Array, steps: int, finish, data):
    """``(log f(w_t), d log f / d theta)``: the renormalized recursion, then ``finish(s,
    w_hat, dw_hat, *data)``'s terms through :func:`log_polynomial`."""
    names = sorted(theta)
    s, w, dw = _renormalized(step, theta, lam, w0, steps)
    log_f, grads = log_polynomial(s, finish(s, w, dw, *data))
    return log_f, {n: grads[i] for i, n in enumerate(names)}


def log_loss_fn(
    step: LinearStep, lam: Array, w0: Array, steps: int, finish=None, data=()
) -> Callable[[dict], Array]:
    """``theta -> log f(w_t)`` (a ``jax.custom_vjp``: its gradient in every
    hyperparameter is the scale-free one of the module doc, never a ratio of huge or tiny
    numbers). ``lam``, ``w0``: the curvatures and the start in the eigenbasis; ``finish``
    and ``data``: the loss of the final iterate as :func:`log_polynomial` terms (default
    :func:`quadratic_terms` with ``data = (lam,)``). All are constants: no gradient flows
    to them."""
    if finish is None:
        finish, data = quadratic_terms, (lam,)
    return lambda theta: _log_f(step, steps, finish, theta, lam, w0, tuple(data))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _log_f(step, steps, finish, theta, lam, w0, data):
    return _log_f_and_grad(step, theta, lam, w0, steps, finish, data)[0]


def _log_f_fwd(step, steps, finish, theta, lam, w0, data):
    value, grads = _log_f_and_grad(step, theta, lam, w0, steps, finish, data)
    return value, (grads, lam, w0, data)


def _log_f_bwd(step, steps, finish, residuals, g):
    grads, lam, w0, data = residuals
    zeros = jax.tree.map(jnp.zeros_like, (lam, w0, data))
    return ({n: g * v for n, v in grads.items()}, *zeros)


_log_f.defvjp(_log_f_fwd, _log_f_bwd)
