"""High-precision reference for GD on a quadratic (mpmath), for tests and experiments.

Implements Wang et al. (2021), Section 3 directly: ``f(w_t) = sum_i v_i (1 - eta l_i)^(2t)``
with ``v_i = c_i^2 l_i / 2`` and Eq. 1 for the meta-gradient of ``(1/t) log f(w_t)``,
in ``mpmath`` arithmetic with enough digits that nothing over- or underflows. Inputs are
taken *exactly* (a float32/float64 value is converted without rounding).
"""

from __future__ import annotations

from collections.abc import Sequence

import mpmath
import numpy as np


def _mp(xs) -> list:
    return [mpmath.mpf(float(x)) for x in np.asarray(xs, np.float64).ravel()]


def log_f(
    eta, eigenvalues: Sequence[float], coefficients: Sequence[float], steps: int, dps: int = 50
):
    """``log f(w_t)`` as an ``mpmath.mpf``."""
    with mpmath.workdps(dps):
        e = mpmath.mpf(float(eta))
        lam, c = _mp(eigenvalues), _mp(coefficients)
        total = mpmath.fsum(
            ci**2 * li / 2 * (1 - e * li) ** (2 * steps) for li, ci in zip(lam, c, strict=True)
        )
        return mpmath.log(total)


def dlog_f(eta, eigenvalues, coefficients, steps: int, dps: int = 50):
    """``d/d eta log f(w_t)`` (Eq. 1 times t) as an ``mpmath.mpf``."""
    with mpmath.workdps(dps):
        e = mpmath.mpf(float(eta))
        lam, c = _mp(eigenvalues), _mp(coefficients)
        num = mpmath.fsum(
            ci**2 * li**2 * (1 - e * li) ** (2 * steps - 1) for li, ci in zip(lam, c, strict=True)
        )
        den = mpmath.fsum(
            ci**2 * li * (1 - e * li) ** (2 * steps) for li, ci in zip(lam, c, strict=True)
        )
        return -2 * steps * num / den


def log_loss(eta, eigenvalues, coefficients, steps: int, dps: int = 50):
    """The meta-objective ``(1/t) log f(w_t)``."""
    return log_f(eta, eigenvalues, coefficients, steps, dps) / steps


def log_loss_grad(eta, eigenvalues, coefficients, steps: int, dps: int = 50):
    """Eq. 1: ``F'(eta)`` for ``F = (1/t) log f(w_t)``."""
    return dlog_f(eta, eigenvalues, coefficients, steps, dps) / steps


def eta_star(eigenvalues, coefficients, steps: int, dps: int = 50, tol: float = 1e-15):
    """The unique root of Eq. 1 (Claim 1) by bisection on ``[0, 2/alpha]``."""
    lam = np.asarray(eigenvalues, np.float64)
    lo, hi = 0.0, 2.0 / float(lam.min())
    while hi - lo > tol * hi:
        mid = 0.5 * (lo + hi)
        if log_loss_grad(mid, eigenvalues, coefficients, steps, dps) < 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# -- heavy-ball momentum and Nesterov (two-dimensional linear dynamics per eigenvalue) ---


def _momentum_matrix(kind: str, e, b, li):
    """The 2x2 step of ``(w, v)`` along one eigenvector of curvature ``li`` (optax's
    conventions): heavy ball ``v' = l w + b v, w' = w - e v'``; Nesterov ``w' = w - e (l w
    + b v')``."""
    if kind == "momentum":
        return mpmath.matrix([[1 - e * li, -e * b], [li, b]])
    if kind == "nesterov":
        return mpmath.matrix([[1 - e * li * (1 + b), -e * b * b], [li, b]])
    raise ValueError(f"kind must be 'momentum' or 'nesterov', got {kind!r}.")


def momentum_log_f(
    kind: str, eta, beta, eigenvalues, coefficients, steps: int, dps: int = 60
) -> mpmath.mpf:
    """``log f(w_t)`` of heavy ball (``kind="momentum"``) or Nesterov from ``(w0, v0 = 0)``
    on ``f = 1/2 sum_i l_i w_i^2``: each eigen-direction's 2x2 step raised to the power
    ``t`` exactly (binary powering in ``dps`` digits), no unrolling and no rounding of the
    inputs."""
    with mpmath.workdps(dps):
        e, b = mpmath.mpf(float(eta)), mpmath.mpf(float(beta))
        return _momentum_log_f(kind, e, b, _mp(eigenvalues), _mp(coefficients), int(steps))


def _momentum_log_f(kind, e, b, lam, c, steps):
    total = mpmath.mpf(0)
    for li, ci in zip(lam, c, strict=True):
        w = (_momentum_matrix(kind, e, b, li) ** steps)[0, 0] * ci
        total += li * w * w / 2
    return mpmath.log(total)


def momentum_log_f_grad(
    kind: str, eta, beta, eigenvalues, coefficients, steps: int, dps: int = 60
) -> tuple[mpmath.mpf, mpmath.mpf]:
    """``(d/d eta, d/d beta) log f(w_t)`` by mpmath's numerical differentiation at
    ``dps`` digits (the error is far below float64's rounding)."""
    with mpmath.workdps(dps):
        e, b = mpmath.mpf(float(eta)), mpmath.mpf(float(beta))
        lam, c = _mp(eigenvalues), _mp(coefficients)
        f = lambda x, y: _momentum_log_f(kind, x, y, lam, c, int(steps))
        return mpmath.diff(lambda x: f(x, b), e), mpmath.diff(lambda y: f(e, y), b)


# -- least squares: the affine step on the original coordinates (no eigendecomposition) ---
def least_squares_log_losses(
    kind: str, eta, beta, x, y, x_valid, y_valid, steps: int, dps: int = 60
) -> tuple[mpmath.mpf, mpmath.mpf]:
    """``(log training loss, log validation loss)`` of ``w_t`` for GD (``kind="gd"``),
    heavy ball or Nesterov from ``w0 = v0 = 0`` on ``1/(2n) ||X w - y||^2``: the affine
    step of ``(w, v, 1)`` in the data's own coordinates (gradient ``H w - c``, ``H = X^T
    X / n``, ``c = X^T y / n``) raised to the power ``t`` by binary powering in ``dps``
    digits. Independent of the library's eigenbasis and renormalization."""
    with mpmath.workdps(dps):
        e, b = mpmath.mpf(float(eta)), mpmath.mpf(float(beta))
        return _least_squares_log_losses(kind, e, b, x, y, x_valid, y_valid, int(steps))


def _least_squares_log_losses(kind, e, b, x, y, x_valid, y_valid, steps):
    xm, ym = mpmath.matrix(np.asarray(x, np.float64)), mpmath.matrix(_mp(y))
    n, d = xm.rows, xm.cols
    h, c = xm.T * xm / n, xm.T * ym / n
    step = mpmath.zeros(2 * d + 1, 2 * d + 1)
    a, k, mv = {"gd": (1, 0, 0), "momentum": (1, 1, b), "nesterov": (1 + b, 1, b * b)}[kind]
    for i in range(d):
        for j in range(d):
            step[i, j] = (1 if i == j else 0) - e * a * h[i, j]
            step[d + i, j] = h[i, j] * k
        step[i, d + i] = -e * mv
        step[d + i, d + i] = b * k
        step[i, 2 * d] = e * a * c[i]
        step[d + i, 2 * d] = -c[i] * k
    step[2 * d, 2 * d] = 1
    state = (step**steps)[:, 2 * d]  # from (0, 0, 1)
    w = mpmath.matrix([state[i] for i in range(d)])
    xv, yv = mpmath.matrix(np.asarray(x_valid, np.float64)), mpmath.matrix(_mp(y_valid))
    half_mse = lambda xs, ys: mpmath.fsum(r**2 for r in (xs * w - ys)) / (2 * xs.rows)
    return mpmath.log(half_mse(xm, ym)), mpmath.log(half_mse(xv, yv))


def least_squares_log_loss_grads(
    kind: str, eta, beta, x, y, x_valid, y_valid, steps: int, dps: int = 60
) -> dict[str, tuple[mpmath.mpf, mpmath.mpf]]:
    """``{"train": (d/d eta, d/d beta), "valid": (...)}`` of the two log losses of
    :func:`least_squares_log_losses`, by mpmath's numerical differentiation at ``dps``
    digits (for ``kind="gd"`` the ``beta`` entry is 0: it does not enter)."""
    with mpmath.workdps(dps):
        e, b = mpmath.mpf(float(eta)), mpmath.mpf(float(beta))
        f = lambda u, v, i: _least_squares_log_losses(kind, u, v, x, y, x_valid, y_valid, steps)[i]
        out = {}
        for i, name in enumerate(("train", "valid")):
            d_eta = mpmath.diff(lambda u, i=i: f(u, b, i), e)
            d_beta = mpmath.diff(lambda v, i=i: f(e, v, i), b)
            out[name] = (d_eta, d_beta)
        return out
