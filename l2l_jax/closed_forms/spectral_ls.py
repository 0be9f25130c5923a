"""Spectral fast path for gradient descent on least squares (Wang et al. 2021, Section 4).

The least-squares tasks of Section 4 train ``w`` from ``w_0 = 0`` by GD with step size
``eta`` on the training loss

    L_train(w) = 1/(2 n1) sum_j (y_j - <w, x_j>)^2 = residual + 1/2 (w - w_erm)^T H (w - w_erm),

with ``H = X^T X / n1``, ``b = X^T y / n1`` and ``w_erm = H^+ b`` the minimum-norm ERM
solution. Writing ``H = sum_i lambda_i u_i u_i^T`` (``lambda_i > 0``, ``i = 1..r``) and
``beta_i = u_i^T b / lambda_i`` (the coordinates of ``w_erm``), GD stays in the span of the
``u_i`` (``b`` lies in the range of ``H``, so the null-space components of ``w`` stay 0)
and has the closed form

    w_tau = sum_i a_i(tau) u_i,      a_i(tau) = (1 - (1 - eta lambda_i)^tau) beta_i .

The paper truncates diverging runs (footnote 3): if ``||w_tau|| >= R`` at some step
``tau`` (the first such ``tau`` in ``1..t``), the run is frozen at ``R w_tau / ||w_tau||``
for all remaining steps (the paper uses ``R = 40 sigma``). The meta-objectives are the
training loss of ``w_t`` (train-by-train, Eq. 3) and the validation loss of ``w_t``
(train-by-validation, Eq. 4), averaged over tasks.

Everything below is computed from one eigendecomposition per task (:func:`decompose`),
without unrolling: after it, any ``(eta, t, R)`` costs ``O(r)`` for the iterate's
coordinates and TbT, ``O(n2 r)`` for TbV, ``O(d r)`` for ``w_t`` itself, plus the search
for the first crossing (see :func:`first_crossing`). All functions are pure and work
under ``jit``/``vmap``; the step size is differentiable wherever the truncation does not
switch (the crossing step ``tau`` is piecewise constant in ``eta``).

Non-finite numbers. Powers ``(1 - eta lambda)^tau`` of diverging coordinates are never
formed on their own: ``beta_i (1 - eta lambda_i)^tau`` is computed in log space (or by
repeated multiplication of that product, frozen once the run is truncated), so it only
overflows when the coordinate itself exceeds the largest float, which, for a finite ``R``,
is past the first crossing. With a finite ``max_norm`` the returned iterate and losses are
therefore finite for every finite ``eta >= 0`` and ``t`` (even if the iterate at the
crossing step overflowed, its direction is taken from its infinite coordinates). With
``max_norm = inf`` (no truncation) a diverging run returns what the true iterate is in
floating point: ``inf`` coordinates and losses (``tbv_loss`` may be NaN, as ``inf - inf``
can occur in ``X_valid w``).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from jax import lax

from l2l_jax.closed_forms.spectral import log_gd_loss
from l2l_jax.inner import tuning

Array = jnp.ndarray

__all__ = [
    "LSSpectrum",
    "decompose",
    "final_coordinates",
    "final_params",
    "first_crossing",
    "gd_coordinates",
    "grid_search",
    "log_tbt_loss",
    "tbt_loss",
    "tbv_loss",
    "test_error",
]


@chex.dataclass(frozen=True)
class LSSpectrum:
    """Spectral summary of one least-squares task (a pytree; batch it with ``vmap``).

    ``r = min(n1, d)`` slots; directions whose eigenvalue is numerically zero (rank
    deficiency) have ``eigenvalues = coords = 0`` and zero columns in ``eigenvectors`` and
    ``valid_features``, so GD never moves along them.

    Attributes:
      eigenvalues: ``(r,)`` ``lambda_i`` of ``H = X^T X / n1`` (>= 0, in no particular order).
      coords: ``(r,)`` ``beta_i = u_i^T b / lambda_i``: the min-norm ERM solution
        ``w_erm = sum_i beta_i u_i``, the limit of GD for ``eta < 2 / lambda_max``.
      eigenvectors: ``(d, r)`` orthonormal ``u_i`` (columns).
      valid_features: ``(n2, r)`` ``X_valid U``, so the validation loss of ``w = U a`` is
        ``||y_valid - X_valid U a||^2 / (2 n2)`` in ``O(n2 r)``.
      y_valid: ``(n2,)`` validation targets.
      residual: ``()`` training loss of ``w_erm``, ``||y - X w_erm||^2 / (2 n1) >= 0``,
        computed without cancellation (exactly 0 when ``n1 <= d`` and ``X`` has full row
        rank: the ERM interpolates).
      train_const: ``()`` ``||y||^2 / (2 n1)``, the training loss of ``w_0 = 0``; equals
        ``residual + 1/2 sum_i lambda_i beta_i^2``.
    """

    eigenvalues: Array
    coords: Array
    eigenvectors: Array
    valid_features: Array
    y_valid: Array
    residual: Array
    train_const: Array


def _safe_div(num: Array, den: Array, keep: Array) -> Array:
    """``num / den`` where ``keep``, else 0, without NaN gradients from the discarded side."""
    return jnp.where(keep, num / jnp.where(keep, den, 1), 0)


def decompose(
    x_train: Array,
    y_train: Array,
    x_valid: Array | None = None,
    y_valid: Array | None = None,
    *,
    method: str = "eigh",
) -> LSSpectrum:
    """One eigendecomposition of ``H = X^T X / n1`` per task, and what the objectives need.

    Cost ``O(n1 d min(n1, d))``: the decomposition acts on the smaller Gram matrix
    (``X X^T / n1``, ``n1 x n1``, when ``n1 <= d``; ``H`` itself otherwise).

    Args:
      x_train: ``(n1, d)`` training inputs.
      y_train: ``(n1,)`` training targets.
      x_valid: ``(n2, d)`` validation inputs (Eq. 4); ``None`` for TbT-only tasks, in
        which case ``tbv_loss`` returns NaN.
      y_valid: ``(n2,)`` validation targets.
      method: ``"eigh"`` (default; eigendecomposition of the smaller Gram matrix, about 3x
        faster on CPU) or ``"svd"`` (thin SVD of ``X``: eigenvalues accurate relative to
        ``eps * sqrt(kappa)`` instead of ``eps * kappa``, for ill-conditioned ``H``, e.g.
        ``n1`` close to ``d``). Static (a Python string).

    Returns:
      The task's :class:`LSSpectrum`. Eigenvalues below the numerical rank tolerance
      (``max(n1, d) * eps * lambda_max`` for ``"eigh"``, the same on the singular values
      for ``"svd"``) are treated as exact zeros.
    """
    if method not in ("eigh", "svd"):
        raise ValueError(f"method must be 'eigh' or 'svd', got {method!r}.")
    return _decompose(x_train, y_train, x_valid, y_valid, method)


@functools.partial(jax.jit, static_argnums=4)
def _decompose(x_train, y_train, x_valid, y_valid, method):
    x = jnp.asarray(x_train)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    dtype = x.dtype
    y = jnp.asarray(y_train, dtype)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"x_train must be (n1, d) and y_train (n1,); got {x.shape} and {y.shape}.")
    n1, d = x.shape
    if x_valid is None:
        xv = jnp.zeros((0, d), dtype)
        yv = jnp.zeros((0,), dtype)
    else:
        xv = jnp.asarray(x_valid, dtype)
        yv = jnp.asarray(y_valid, dtype)
        if xv.ndim != 2 or xv.shape[1] != d or yv.shape != (xv.shape[0],):
            raise ValueError(
                f"x_valid must be (n2, {d}) and y_valid (n2,); got {xv.shape} and {yv.shape}."
            )
    eps = jnp.finfo(dtype).eps
    size = max(n1, d)

    if method == "svd":
        # X = V S U^T (thin): lambda = s^2 / n1, X U = V S, beta_i = v_i^T y / s_i.
        v, s, ut = jnp.linalg.svd(x, full_matrices=False)
        keep = s > size * eps * jnp.max(s)
        u = jnp.where(keep, ut.T, 0)
        s = jnp.where(keep, s, 0)
        vty = v.T @ y
    elif n1 <= d:
        # G = X X^T / n1 = V diag(lambda) V^T; u_i = X^T v_i / s_i with s_i = ||X^T v_i||
        # (so X u_i = s_i v_i), beta_i = v_i^T y / s_i.
        lam_g, v = jnp.linalg.eigh(x @ x.T / n1)
        keep = lam_g > size * eps * jnp.max(lam_g)
        xtv = x.T @ v
        s = jnp.where(keep, jnp.sqrt(jnp.sum(xtv**2, axis=0)), 0)
        u = _safe_div(xtv, s, keep)
        vty = v.T @ y
    else:
        # H = X^T X / n1 = U diag(lambda) U^T; X u_i has norm s_i = sqrt(n1 lambda_i).
        lam_h, u = jnp.linalg.eigh(x.T @ x / n1)
        keep = lam_h > size * eps * jnp.max(lam_h)
        u = jnp.where(keep, u, 0)
        xu = x @ u
        s = jnp.sqrt(jnp.sum(xu**2, axis=0))
        v = _safe_div(xu, s, keep)  # orthonormal columns spanning range(X) (kept part)
        vty = v.T @ y

    lam = s**2 / n1
    beta = _safe_div(vty, s, keep)
    if n1 <= d:
        # V is a full orthonormal basis of R^n1: the ERM residual is the part of y along the
        # dropped (zero-eigenvalue) directions, a sum of squares with no cancellation.
        residual = jnp.sum(jnp.where(keep, 0, vty**2)) / (2 * n1)
    else:
        r = y - v @ jnp.where(keep, vty, 0)
        residual = jnp.sum(r**2) / (2 * n1)
    return LSSpectrum(
        eigenvalues=lam,
        coords=beta,
        eigenvectors=u,
        valid_features=xv @ u,
        y_valid=yv,
        residual=residual,
        train_const=jnp.sum(y**2) / (2 * n1),
    )


# --------------------------------------------------------------------------------------
# closed form of the iterates
# --------------------------------------------------------------------------------------


_EXP_SAFE = 50.0  # |q|^tau <= e^50: form 1 -+ |q|^tau directly; beyond, in log space


def _coordinates(eta: Array, lam: Array, beta: Array, tau: Array) -> Array:
    """``a_i = beta_i (1 - q_i^tau)``, ``q_i = 1 - eta*lam_i``, integer ``tau >= 1``.

    Accurate and overflow-safe in every regime of ``x = eta*lam``:

    * ``x < 0.5``: ``1 - q^tau = -expm1(tau log1p(-x))``, no cancellation for tiny steps;
    * ``0.5 <= x <= 1.5``: ``|q| <= 0.5``, ``1 -+ |q| |q|^(tau-1)`` (the factor ``|q|`` is
      kept outside so the eta-derivative is exact at ``q = 0``: ``-lam beta`` for
      ``tau = 1``, 0 after);
    * ``x > 1.5``: ``|q| = 1 + (x - 2)``, ``log|q| = log1p(x - 2)``; while ``|q|^tau <= e^50``
      the factor is ``1 + |q|^tau`` (odd ``tau``) or ``-expm1(tau log|q|)`` (even ``tau``,
      exact near ``x = 2``); beyond, ``beta q^tau`` is formed as
      ``exp(log|beta| + tau log|q|)`` so it overflows only if the coordinate itself does,
      and a zero ``beta`` never meets an infinite power (no ``0 * inf`` = NaN).

    Every branch is fed safe inputs where it is not selected, so no NaN/inf reaches the
    gradient through an unselected ``where`` branch.
    """
    dtype = beta.dtype
    x = eta * lam
    q = 1 - x
    tau_f = tau.astype(dtype)
    small, large = x < 0.5, x > 1.5
    mid = ~small & ~large
    odd_neg = ((tau % 2) == 1) & (q < 0)

    # small: 0.5 < q <= 1
    f_small = -jnp.expm1(tau_f * jnp.log1p(-jnp.where(small, x, 0)))

    # mid: |q| <= 0.5
    q_mid = jnp.where(mid & (q != 0), q, 1)
    rest = jnp.exp((tau_f - 1) * jnp.log(jnp.abs(q_mid)))
    rest = jnp.where(q == 0, jnp.where(tau == 1, 1, 0), rest).astype(dtype)
    p_mid = jnp.abs(jnp.where(mid, q, 0)) * rest  # |q|^tau
    f_mid = jnp.where(odd_neg, 1 + p_mid, 1 - p_mid)

    # large: q < -0.5, |q| = x - 1
    e = tau_f * jnp.log1p(jnp.where(large, x, 2) - 2)  # log |q|^tau
    moderate = e <= _EXP_SAFE
    e_mod = jnp.where(moderate, e, 0)
    f_large = jnp.where(odd_neg, 1 + jnp.exp(e_mod), -jnp.expm1(e_mod))
    a_mod = beta * jnp.where(small, f_small, jnp.where(mid, f_mid, f_large))

    nz = beta != 0
    huge = large & ~moderate & nz
    log_b = jnp.log(jnp.abs(jnp.where(nz, beta, 1)))
    bq = jnp.exp(jnp.where(huge, log_b + e, 0))  # |beta q^tau|
    sign = jnp.sign(beta) * jnp.where(odd_neg, -1, 1).astype(dtype)
    a_huge = beta - sign * bq
    return jnp.where(huge, a_huge, a_mod)


def gd_coordinates(spec: LSSpectrum, eta: Array, tau: Array) -> Array:
    """Untruncated GD iterate from ``w_0 = 0`` in eigen-coordinates: ``a_i(tau)``.

    ``a_i(tau) = (1 - (1 - eta lambda_i)^tau) beta_i`` (Section 4 of the paper; ``w_tau =
    U a(tau)``), for an integer ``tau >= 0``. ``O(r)``. Overflows only where the true
    coordinate exceeds the largest float (then ``+-inf``, never NaN).
    """
    eta = jnp.asarray(eta, spec.coords.dtype)
    tau = jnp.asarray(tau)
    a = _coordinates(eta, spec.eigenvalues, spec.coords, jnp.maximum(tau, 1))
    return jnp.where(tau >= 1, a, jnp.zeros_like(a))


def _norm_at(eta: Array, lam: Array, beta: Array, tau: Array) -> Array:
    return jnp.sqrt(jnp.sum(_coordinates(eta, lam, beta, tau) ** 2))


@jax.jit
def first_crossing(
    spec: LSSpectrum, eta: Array, t: int | Array, max_norm: Array
) -> tuple[Array, Array]:
    """First step ``tau in 1..t`` with ``||w_tau|| >= max_norm`` (paper, footnote 3).

    Returns ``(tau_star, crossed)``: ``tau_star`` is that step if ``crossed``, else ``t``.
    Not differentiable (piecewise constant in ``eta``); ``eta`` is ``stop_gradient``-ed.

    How: three cases, all evaluated without branching so ``vmap`` over ``eta`` stays cheap.

    * Certificate: for ``eta lambda_i <= 2`` on every direction with ``beta_i != 0``,
      ``|1 - q_i^tau| <= 1`` if ``q_i >= 0`` and ``<= 1 + |q_i|^tau0`` for ``q_i < 0`` and
      ``tau >= tau0``; if that bound on ``||w_tau||`` is already below ``R``, no later step
      crosses. At ``tau0 = 0`` this is an ``O(r)`` test that settles most step sizes.
    * Monotone (``eta lambda_max <= 1``): every ``(1 - q_i^tau)^2`` is non-decreasing in
      ``tau``, so the first crossing is found by bisection on ``[1, t]``: ``O(r log t)``.
    * Otherwise (oscillating, ``1 < eta lambda_max <= 2``, or diverging, ``> 2``): a step-
      by-step scan of ``beta_i q_i^tau`` (repeated multiplication, ``O(r)`` per step, no
      matrix products), which stops at the crossing or as soon as the certificate above
      holds (a converging oscillation), so at most ``O(r t)``.
    """
    dtype = spec.coords.dtype
    eta = lax.stop_gradient(jnp.asarray(eta, dtype))
    radius = lax.stop_gradient(jnp.asarray(max_norm, dtype))
    t = jnp.asarray(t, jnp.int32)
    lam, beta = lax.stop_gradient(spec.eigenvalues), lax.stop_gradient(spec.coords)
    active = beta != 0
    x = eta * lam
    q = 1 - x
    b2 = beta**2
    slack = 1 + 4 * (lam.shape[-1] + 2) * jnp.finfo(dtype).eps

    def bound(abs_power):  # >= ||w_tau||^2 for every tau >= tau0, given |q|^tau0
        return jnp.sum(jnp.where(active, b2 * jnp.where(q < 0, (1 + abs_power) ** 2, 1), 0))

    bounded = ~jnp.any(active & (x > 2))
    never = bounded & (bound(jnp.ones_like(q)) * slack < radius**2)
    monotone = ~jnp.any(active & (x > 1))

    # -- monotone: bisection on [0, t] with norm(0) = 0 < R ------------------------------
    crossed_mono = _norm_at(eta, lam, beta, jnp.maximum(t, 1)) >= radius

    def bis_cond(state):
        lo, hi = state
        return hi - lo > 1

    def bis_body(state):
        lo, hi = state
        mid = (lo + hi) // 2
        up = _norm_at(eta, lam, beta, mid) >= radius
        return jnp.where(up, lo, mid), jnp.where(up, mid, hi)

    skip_bis = never | ~monotone | ~crossed_mono
    lo0 = jnp.where(skip_bis, t, 0)  # hi - lo <= 1 -> loop does nothing
    _, tau_mono = lax.while_loop(bis_cond, bis_body, (lo0, t))

    # -- general: scan with early exit ---------------------------------------------------
    def scan_cond(state):
        tau, _, _, done, _ = state
        return (~done) & (tau < t)

    def scan_body(state):
        tau, power, scaled, _, _ = state
        tau = tau + 1
        power = power * q  # q^tau; only used for the certificate, where |q| <= 1
        scaled = scaled * q  # beta q^tau; overflows only past the crossing
        crossed = jnp.sqrt(jnp.sum((beta - scaled) ** 2)) >= radius
        certified = bounded & (bound(jnp.abs(power)) * slack < radius**2)
        return tau, power, scaled, crossed | certified, crossed

    init = (jnp.zeros((), jnp.int32), jnp.ones_like(q), beta, never | monotone, jnp.array(False))
    tau_scan, _, _, _, crossed_scan = lax.while_loop(scan_cond, scan_body, init)

    crossed = jnp.where(never, False, jnp.where(monotone, crossed_mono, crossed_scan))
    crossed = crossed & (t >= 1)
    tau_star = jnp.where(monotone, tau_mono, tau_scan)
    tau_star = jnp.where(crossed, tau_star, t)
    return tau_star, crossed


def _direction(a: Array) -> Array:
    """``a / ||a||`` without overflow; if ``a`` has infinite entries, the limit direction."""
    big = jnp.max(jnp.abs(a))
    has_inf = jnp.isinf(big)
    ok = (big > 0) & ~has_inf
    scaled = jnp.where(
        has_inf,
        jnp.where(jnp.isinf(a), jnp.sign(a), 0),
        a / jnp.where(ok, lax.stop_gradient(big), 1),
    )
    nrm = jnp.sqrt(jnp.sum(scaled**2))
    return _safe_div(scaled, nrm, nrm > 0)


@jax.jit
def final_coordinates(
    spec: LSSpectrum, eta: Array, t: int | Array, max_norm: Array
) -> tuple[Array, Array, Array]:
    """Eigen-coordinates of the (truncated) GD iterate ``w_t``, with the truncation info.

    Returns ``(a, tau_star, crossed)`` with ``w_t = U a``: ``a = a(t)`` if no step reached
    ``||w_tau|| >= max_norm``, else ``a = max_norm * a(tau*) / ||a(tau*)||`` for the first
    such ``tau*`` (paper, footnote 3, with ``u = w_tau* / ||w_tau*||``). Differentiable in
    ``eta`` (``tau*`` held fixed).
    """
    dtype = spec.coords.dtype
    eta = jnp.asarray(eta, dtype)
    radius = jnp.asarray(max_norm, dtype)
    tau_star, crossed = first_crossing(spec, eta, t, radius)
    a = gd_coordinates(spec, eta, tau_star)
    scale = jnp.where(crossed, radius, 1)  # no inf * 0 in the gradient when R = inf
    a = jnp.where(crossed, scale * _direction(a), a)
    return a, tau_star, crossed


def final_params(spec: LSSpectrum, eta: Array, t: int | Array, max_norm: Array) -> Array:
    """``w_t`` in ``R^d`` after ``t`` truncated GD steps from 0 (``O(r)`` + ``O(d r)``)."""
    a, _, _ = final_coordinates(spec, eta, t, max_norm)
    return spec.eigenvectors @ a


def _train_loss(spec: LSSpectrum, a: Array) -> Array:
    return spec.residual + 0.5 * jnp.sum(spec.eigenvalues * (a - spec.coords) ** 2)


def _valid_loss(spec: LSSpectrum, a: Array) -> Array:
    r = spec.y_valid - spec.valid_features @ a
    return jnp.sum(r**2) / (2 * spec.y_valid.shape[-1])


def tbt_loss(spec: LSSpectrum, eta: Array, t: int | Array, max_norm: Array) -> Array:
    """Train-by-train meta-loss of one task (Eq. 3): training loss of the truncated ``w_t``.

    ``residual + 1/2 sum_i lambda_i (a_i - beta_i)^2``, ``O(r)`` after the crossing search.
    """
    a, _, _ = final_coordinates(spec, eta, t, max_norm)
    return _train_loss(spec, a)


def tbv_loss(spec: LSSpectrum, eta: Array, t: int | Array, max_norm: Array) -> Array:
    """Train-by-validation meta-loss of one task (Eq. 4): validation loss of ``w_t``.

    ``||y_valid - X_valid U a||^2 / (2 n2)``, ``O(n2 r)``. NaN if the task has no
    validation set.
    """
    a, _, _ = final_coordinates(spec, eta, t, max_norm)
    return _valid_loss(spec, a)


def test_error(
    spec: LSSpectrum, w_star: Array, eta: Array, t: int | Array, max_norm: Array
) -> Array:
    """``||w_t - w*||^2``, the squared test error of Theorems 5-6 (``O(d r)``)."""
    w = final_params(spec, eta, t, max_norm)
    return jnp.sum((w - jnp.asarray(w_star, w.dtype)) ** 2)


test_error.__test__ = False  # not a pytest test function


# --------------------------------------------------------------------------------------
# grid search and the stable log of TbT
# --------------------------------------------------------------------------------------

_OBJECTIVES = {"tbt": _train_loss, "tbv": _valid_loss}


@functools.partial(jax.jit, static_argnames=("objective",))
def _grid_search(specs, etas, t, max_norm, objective):
    loss = _OBJECTIVES[objective]

    def one(spec, eta):
        a, _, _ = final_coordinates(spec, eta, t, max_norm)
        return loss(spec, a)

    # Tasks are a vmap, step sizes a lax.map: the truncation test of a diverging eta
    # loops step by step (first_crossing), and under a vmap over etas every converging
    # eta would wait for it; one eta at a time, only that eta's tasks wait (~10x faster
    # on the fig2 grid, which extends far past 2/L).
    per_eta = jax.lax.map(lambda eta: jax.vmap(one, in_axes=(0, None))(specs, eta), etas)
    values = jnp.mean(per_eta, axis=1)
    best = tuning.best_index(values)  # non-finite values count as +inf
    return etas[best], values


def grid_search(
    specs: LSSpectrum,
    etas: Array,
    t: int | Array,
    max_norm: Array,
    objective: str = "tbt",
) -> tuple[Array, Array]:
    """Minimize the empirical meta-objective (Eq. 3 or Eq. 4) over a grid of step sizes.

    Args:
      specs: a batch of task spectra with leading axis ``m`` (e.g. ``jax.vmap(decompose)``).
      etas: ``(n_etas,)`` candidate step sizes.
      t: unroll length.
      max_norm: truncation radius ``R`` (``40 sigma`` in the paper; ``inf`` for none).
      objective: ``"tbt"`` (training loss, Eq. 3) or ``"tbv"`` (validation loss, Eq. 4).

    Returns:
      ``(best_eta, values)``: ``values[j]`` is the mean over the ``m`` tasks of the
      meta-loss at ``etas[j]`` (tasks vmapped, step sizes in a ``lax.map``, jitted), and
      ``best_eta`` the grid point with the smallest value, chosen by the library's tuner
      (:func:`l2l_jax.inner.tuning.best_index`: non-finite values never win, ties go first).
    """
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be 'tbt' or 'tbv', got {objective!r}.")
    dtype = specs.coords.dtype
    return _grid_search(specs, jnp.asarray(etas, dtype), t, jnp.asarray(max_norm, dtype), objective)


def log_tbt_loss(spec: LSSpectrum, eta: Array, t: int | Array) -> Array:
    """``log`` of the *untruncated* TbT loss, stable for any ``t`` (value and eta-gradient).

    Without truncation the training loss of ``w_t`` is

        L_train(w_t) = 1/2 sum_i lambda_i beta_i^2 (1 - eta lambda_i)^(2t) + residual,

    a quadratic-type sum (Sec. 3.1 of the paper) plus the ERM residual. The sum goes
    through :func:`~l2l_jax.closed_forms.spectral.log_gd_loss` (weights ``lambda_i beta_i^2 / 2``,
    Eq. 2 in log space) and the residual is added with ``logaddexp``, so neither term is formed
    outside log space: value and gradient stay finite for huge ``t`` where the loss itself
    underflows (``residual = 0``, ``n1 <= d``) or overflows (``eta > 2 / lambda_max``).
    No truncation is applied here: use :func:`tbt_loss` for the paper's truncated
    objective. ``-inf`` (NaN gradient) only if the loss is exactly 0.
    """
    dtype = spec.coords.dtype
    eta = jnp.asarray(eta, dtype)
    lam, beta = spec.eigenvalues, spec.coords
    w = 0.5 * lam * beta**2
    pos = w > 0
    log_w = jnp.where(pos, jnp.log(jnp.where(pos, w, 1)), -jnp.inf)
    log_sum = log_gd_loss(eta, log_w, lam, jnp.asarray(t, dtype))
    res = spec.residual
    log_res = jnp.where(res > 0, jnp.log(jnp.where(res > 0, res, 1)), -jnp.inf)
    return jnp.logaddexp(log_sum, log_res)
