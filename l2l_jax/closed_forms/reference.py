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


# -- dense problems: the step on the original coordinates (no eigendecomposition) --------
def _linear_steps(kind: str, e, b, g, d: int):
    """GD / heavy ball / Nesterov on ``(e, v)`` whose gradient is ``g e`` (``g = P H``:
    ``H`` the Hessian, ``P`` a diagonal preconditioner or the identity), as a ``2d x 2d``
    matrix, and its derivatives in ``eta`` and ``beta``."""
    eye = mpmath.eye(d)
    zero = mpmath.zeros(d, d)
    a, k, mv = {"gd": (1, 0, 0), "momentum": (1, 1, b), "nesterov": (1 + b, 1, b * b)}[kind]
    da_db, dmv_db = {"gd": (0, 0), "momentum": (0, 1), "nesterov": (1, 2 * b)}[kind]
    blocks = lambda m11, m12, m21, m22: _blocks([[m11, m12], [m21, m22]])
    step = blocks(eye - e * a * g, -e * mv * eye, k * g, b * k * eye)
    d_eta = blocks(-a * g, -mv * eye, zero, zero)
    d_beta = blocks(-e * da_db * g, -e * dmv_db * eye, zero, k * eye)
    return step, d_eta, d_beta


def _blocks(rows) -> mpmath.matrix:
    n = rows[0][0].rows
    out = mpmath.zeros(n * len(rows), n * len(rows[0]))
    for bi, row in enumerate(rows):
        for bj, block in enumerate(row):
            for i in range(n):
                for j in range(n):
                    out[bi * n + i, bj * n + j] = block[i, j]
    return out


def _powered(kind, e, b, h, preconditioner, start, steps, derivatives):
    """``(e_t, [d e_t / d eta, d e_t / d beta])`` from ``(e_0, v_0) = (start, 0)``: one
    binary powering of the step, and for the derivatives of the block matrix ``[[M, dM],
    [0, M]]`` (its top-right block is ``d(M^t)``, exact)."""
    d = h.rows
    g = h if preconditioner is None else mpmath.diag(_mp(preconditioner)) * h
    z0 = mpmath.matrix(list(start) + [0] * d)
    step, d_eta, d_beta = _linear_steps(kind, e, b, g, d)
    big = 2 * d
    z, derr = step**steps * z0, []
    for dm in (d_eta, d_beta) if derivatives else ():
        power = _blocks([[step, dm], [mpmath.zeros(big, big), step]]) ** steps
        dz = mpmath.matrix(
            [mpmath.fsum(power[i, big + j] * z0[j] for j in range(big)) for i in range(d)]
        )
        derr.append(dz)
    return mpmath.matrix([z[i] for i in range(d)]), derr


def quadratic_log_f(
    kind: str, eta, beta, hessian, w0, steps: int, preconditioner=None, dps: int = 60
) -> tuple[mpmath.mpf, tuple[mpmath.mpf, mpmath.mpf]]:
    """``(log f(w_t), (d/d eta, d/d beta) log f(w_t))`` for GD (``kind="gd"``, the
    ``beta`` entry 0), heavy ball or Nesterov from ``(w0, v0 = 0)`` on ``f = 1/2 w^T H w``
    with a dense ``H``, the gradient multiplied by the diagonal ``preconditioner`` (``None``:
    the identity) before the step. The step in the problem's own coordinates, powered
    exactly in ``dps`` digits: no eigendecomposition, no change of variables."""
    with mpmath.workdps(dps):
        e, b = mpmath.mpf(float(eta)), mpmath.mpf(float(beta))
        h = mpmath.matrix(np.asarray(hessian, np.float64))
        w, dws = _powered(kind, e, b, h, preconditioner, _mp(w0), int(steps), True)
        f = (w.T * h * w)[0] / 2
        grads = tuple((w.T * h * dw)[0] / f for dw in dws)
        return mpmath.log(f), grads


# -- least squares -----------------------------------------------------------------------
def _least_squares(
    kind, e, b, x, y, x_valid, y_valid, steps, derivatives=True, preconditioner=None
):
    """``({"train": log f, "valid": log f_v}, {"train": (d/d eta, d/d beta), ...})``.

    ``w_erm`` from the normal equations (``n1 >= d``); the iterate's distance ``e_t`` and
    its exact derivatives by :func:`_powered`; ``d log f = grad f(w_t) . dw_t / f``, with
    ``grad f`` of the training loss ``H e_t`` (no cancellation against the residual)."""
    xm, ym = mpmath.matrix(np.asarray(x, np.float64)), mpmath.matrix(_mp(y))
    xv, yv = mpmath.matrix(np.asarray(x_valid, np.float64)), mpmath.matrix(_mp(y_valid))
    n, d = xm.rows, xm.cols
    h, c = xm.T * xm / n, xm.T * ym / n
    w_erm = mpmath.lu_solve(h, c)
    start = [-w_erm[i] for i in range(d)]
    err, derr = _powered(kind, e, b, h, preconditioner, start, steps, derivatives)
    w = w_erm + err
    res_v = xv * w - yv
    f = {
        "train": (err.T * h * err)[0] / 2 + mpmath.fsum(r**2 for r in (xm * w_erm - ym)) / (2 * n),
        "valid": mpmath.fsum(r**2 for r in res_v) / (2 * xv.rows),
    }
    grad_f = {"train": h * err, "valid": xv.T * res_v / xv.rows}
    logs = {k: mpmath.log(v) for k, v in f.items()}
    grads = {k: tuple((grad_f[k].T * de)[0] / f[k] for de in derr) for k in f}
    return logs, grads


def least_squares_log_losses(
    kind: str, eta, beta, x, y, x_valid, y_valid, steps: int, dps: int = 60, preconditioner=None
) -> tuple[mpmath.mpf, mpmath.mpf]:
    """``(log training loss, log validation loss)`` of ``w_t`` for GD (``kind="gd"``),
    heavy ball or Nesterov from ``w0 = v0 = 0`` on ``1/(2n) ||X w - y||^2`` (``n1 >= d``),
    the gradient multiplied by the diagonal ``preconditioner`` (``None``: the identity):
    the step of ``(w - w_erm, v)`` in the data's own coordinates raised to the power ``t``
    by binary powering in ``dps`` digits. Independent of the library's eigenbasis and
    renormalization."""
    with mpmath.workdps(dps):
        e, b = mpmath.mpf(float(eta)), mpmath.mpf(float(beta))
        args = (kind, e, b, x, y, x_valid, y_valid, int(steps), False, preconditioner)
        logs, _ = _least_squares(*args)
        return logs["train"], logs["valid"]


def least_squares_log_loss_grads(
    kind: str, eta, beta, x, y, x_valid, y_valid, steps: int, dps: int = 60, preconditioner=None
) -> dict[str, tuple[mpmath.mpf, mpmath.mpf]]:
    """``{"train": (d/d eta, d/d beta), "valid": (...)}`` of the two log losses of
    :func:`least_squares_log_losses`, exact: the derivative of ``M^t`` is the top-right
    block of ``[[M, dM], [0, M]]^t`` (for ``kind="gd"`` the ``beta`` entry is 0). Exact
    derivatives, unlike numerical ones, keep their digits when ``log f`` has converged to
    the residual and its derivative is ``1e-70`` or smaller."""
    with mpmath.workdps(dps):
        e, b = mpmath.mpf(float(eta)), mpmath.mpf(float(beta))
        args = (kind, e, b, x, y, x_valid, y_valid, int(steps), True, preconditioner)
        return _least_squares(*args)[1]
