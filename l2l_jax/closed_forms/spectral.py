"""Gradient descent on a quadratic, in the eigenbasis, in log space.

For ``f(w) = 1/2 w^T H w`` with ``H = sum_i lambda_i u_i u_i^T`` and ``c_i = <w0, u_i>``,
``t`` steps of GD with step size ``eta`` give (Wang et al. 2021, Sec. 3.1)

    f(w_t) = sum_i  v_i |1 - eta*lambda_i|^(2t),      v_i = c_i^2 lambda_i / 2.

More generally we accept any non-negative weights ``v_i`` (a constant term is a weight
with ``lambda_i = 0``), which covers the training loss of least squares as well.

:func:`log_gd_loss` returns ``log f(w_t)`` and is a :func:`jax.custom_vjp` whose backward
pass is the ratio formula of Eq. 1, rewritten as in Eq. 2: every term is divided by the
dominant one *in log space*, so neither the exponentially large/small numerator nor the
denominator is ever formed. Value and gradients are finite for any ``t`` as long as
``f(w_t) > 0``; if the iterate lands exactly on the minimizer (``f(w_t) == 0``, e.g. a
one-dimensional task at ``eta = 1/lambda``) the value is ``-inf`` and the gradient NaN,
which the meta-training loop detects and counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from l2l_jax.closed_forms.numerics import log_abs_one_minus

Array = jnp.ndarray


def _terms(eta, log_weights, eigenvalues, steps):
    """Log-space pieces shared by the value and the gradient, relative to the top term.

    Returns ``(log f(w_t), log-softmax weights D - logZ, D2 - logZ, ell, sign)`` where
    ``D_i = log(v_i/v_m) + 2t (ell_i - ell_m)`` is the log of term i over the dominant
    term m and ``D2_i = log(v_i/v_m) + (2t-1)(ell_i - ell_m) - ell_m`` is the log of
    ``v_i |1-x_i|^(2t-1) / (v_m |1-x_m|^(2t))``. Differences are formed *before* the
    multiplication by ``t`` so that no large number is ever subtracted from another.
    """
    ell, sign = log_abs_one_minus(eta, eigenvalues)
    two_t = 2 * steps
    m = jnp.argmax(log_weights + two_t * ell)
    dw = log_weights - log_weights[m]
    dl = ell - ell[m]
    d = dw + two_t * dl
    d2 = dw + (two_t - 1) * dl - ell[m]
    log_z = jnp.log(jnp.sum(jnp.exp(d)))
    log_f = log_weights[m] + two_t * ell[m] + log_z
    all_zero = jnp.isneginf(log_weights[m] + two_t * ell[m])
    log_f = jnp.where(all_zero, -jnp.inf, log_f)
    return log_f, d - log_z, d2 - log_z, ell, sign


@jax.custom_vjp
def log_gd_loss(eta: Array, log_weights: Array, eigenvalues: Array, steps: Array) -> Array:
    """``log sum_i exp(log_weights_i) |1 - eta*eigenvalues_i|^(2*steps)``, stably.

    Args:
      eta: scalar step size.
      log_weights: ``(d,)`` log of the non-negative weights ``v_i`` (``-inf`` for zero).
      eigenvalues: ``(d,)`` non-negative eigenvalues.
      steps: scalar number of GD steps ``t`` (a float, so it can be traced).

    Returns:
      ``log f(w_t)``, finite for any ``t`` whenever ``f(w_t) > 0``.
    """
    return _terms(eta, log_weights, eigenvalues, steps)[0]


def _log_gd_loss_fwd(eta, log_weights, eigenvalues, steps):
    log_f, log_p, log_q, ell, sign = _terms(eta, log_weights, eigenvalues, steps)
    return log_f, (eta, eigenvalues, steps, log_p, log_q, ell, sign)


def _log_gd_loss_bwd(res, g):
    eta, eigenvalues, steps, log_p, log_q, ell, sign = res
    two_t = 2 * steps
    p = jnp.exp(log_p)  # softmax weights: share of term i in f(w_t)
    # d log f / d eta = -2t sum_i sign_i lambda_i v_i |1-x_i|^(2t-1) / f   (Eq. 1 / Eq. 2)
    log_num, num_sign = jax.nn.logsumexp(log_q + jnp.log(eigenvalues), b=sign, return_sign=True)
    d_eta = -two_t * num_sign * jnp.exp(log_num)
    # d log f / d lambda_i = -2t eta sign_i v_i |1-x_i|^(2t-1) / f
    d_lam = -two_t * eta * sign * jnp.exp(log_q)
    # d log f / d log v_i = p_i ;  d log f / d t = 2 sum_i p_i ell_i  (p_i = 0 where ell_i = -inf)
    d_steps = 2 * jnp.sum(jnp.where(p > 0, p * ell, 0.0))
    return g * d_eta, g * p, g * d_lam, g * d_steps


log_gd_loss.defvjp(_log_gd_loss_fwd, _log_gd_loss_bwd)


def log_weights_from_coefficients(eigenvalues: Array, coefficients: Array) -> Array:
    """``log(c_i^2 lambda_i / 2)``, the weights of ``f(w_t)`` for ``f = 1/2 w^T H w``."""
    return 2 * jnp.log(jnp.abs(coefficients)) + jnp.log(eigenvalues) - jnp.log(2.0)
