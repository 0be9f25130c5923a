"""grad="stable" value and meta-gradient against the mpmath reference (Eq. 1-2).

The inputs of the library are working-precision floats: eta, and the task's stored
eigenvalues/coefficients. The reference is evaluated on exactly those floats. The
tolerance is the acceptance bar (1e-4 in float32, 1e-9 in float64) wherever the
reference itself moves by less than that when eta is perturbed by one rounding
(eta -> eta*(1 +- u)); elsewhere (near the crossing |1-eta*alpha| = |1-eta*L| at huge t,
or near eta*) the problem is ill-conditioned and we require the error to be within 2x
of that rounding sensitivity (two roundings of eta). Only eta is perturbed for the
sensitivity (the eigenvalues/coefficients are taken as exact inputs). Measured on 65
float32 cases (the corners and random draws): the largest error was 1.4e-5, and no case
needed the sensitivity clause.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from l2l_jax import inner, metagrad, objectives, tasks
from l2l_jax.closed_forms import reference, spectral

TOL = {"float32": 1e-4, "float64": 1e-9}
U = {"float32": 2.0**-24, "float64": 2.0**-53}


def _task(d, log_kappa, seed, dtype):
    rng = np.random.default_rng(seed)
    big_l = 10.0 ** rng.uniform(-1, 1)
    eigs = np.logspace(np.log10(big_l) - log_kappa, np.log10(big_l), d)
    coeffs = rng.standard_normal(d)
    coeffs /= np.linalg.norm(coeffs)
    return tasks.Quadratic.from_spectrum(jnp.asarray(eigs, dtype), jnp.asarray(coeffs, dtype))


def _eta(kind, frac, idx, lam):
    alpha, big_l = float(lam[0]), float(lam[-1])
    if kind == "zero":
        return 0.0
    if kind == "inv_eig":
        return 1.0 / float(lam[idx % len(lam)])
    if kind == "converging":  # eta < 2/(alpha+L): f(w_t) -> 0, small eta*lambda matters
        return frac * 2.0 / (alpha + big_l)
    if kind == "crossing":
        return 2.0 / (alpha + big_l) * (1 + (frac - 0.5) * 1e-3)
    return frac * 10.0 / big_l


def _rel(a, b):
    a, b = mpmath.mpf(float(a)), mpmath.mpf(b)
    if a == b:
        return 0.0
    return float(abs(a - b) / abs(b)) if b != 0 else float("inf")


def _check(got, ref_fn, eta, dtype, what):
    ref = ref_fn(eta)
    u = U[dtype]
    sens = 0.0
    if ref != 0:
        sens = max(float(abs(ref_fn(eta * (1 + s * u)) - ref) / abs(ref)) for s in (-1, 1))
    err = _rel(got, ref)
    bound = max(TOL[dtype], 2 * sens)
    assert np.isfinite(float(got)), (what, got, float(ref))
    assert err <= bound, (what, dtype, eta, float(got), float(ref), err, sens)


params = dict(
    d=st.sampled_from([2, 20, 200]),
    log_kappa=st.floats(0.0, 4.0),
    seed=st.integers(0, 2**16),
    log_t=st.one_of(st.just(0.0), st.just(6.0), st.floats(0.0, 6.0)),
    kind=st.sampled_from(["uniform", "converging", "converging", "zero", "inv_eig", "crossing"]),
    frac=st.floats(0.0, 1.0),
    idx=st.integers(0, 199),
)


def _run(dtype, d, log_kappa, seed, log_t, kind, frac, idx):
    t = max(1, round(10.0**log_t))
    task = _task(d, log_kappa, seed, dtype)
    lam = np.asarray(task.eigenvalues, np.float64)
    c = np.asarray(task.coefficients, np.float64)
    eta = float(np.asarray(_eta(kind, frac, idx, lam), dtype))  # working-precision eta
    f = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=t, grad="stable")
    value, grad = jax.value_and_grad(f)(jnp.asarray(eta, dtype))
    assert value.dtype == grad.dtype == jnp.dtype(dtype)
    _check(value, lambda e: reference.log_loss(e, lam, c, t), eta, dtype, "value")
    _check(grad, lambda e: reference.log_loss_grad(e, lam, c, t), eta, dtype, "grad")


# Hard corners always run: tiny eta*alpha at t = 1e6 (needs log1p), eta*L near 1 and 2.
CORNERS = [
    (2, 4.0, 1, 6.0, "uniform", 0.01, 0),
    (200, 4.0, 2, 6.0, "converging", 0.05, 0),
    (20, 3.0, 3, 6.0, "inv_eig", 0.0, 19),
    (20, 4.0, 4, 6.0, "crossing", 0.5, 0),
    (200, 2.0, 5, 3.0, "uniform", 0.2, 0),
]


def _with_corners(test):
    for case in CORNERS:
        test = example(*case)(test)
    return test


@_with_corners
@given(**params)
def test_stable_float32(d, log_kappa, seed, log_t, kind, frac, idx):
    _run("float32", d, log_kappa, seed, log_t, kind, frac, idx)


@_with_corners
@given(**params)
def test_stable_float64(d, log_kappa, seed, log_t, kind, frac, idx):
    with jax.enable_x64(True):
        _run("float64", d, log_kappa, seed, log_t, kind, frac, idx)


def test_eta_exactly_inverse_eigenvalue_every_index():
    """eta = 1/lambda_i (rounded) for every i of a d=20, kappa=1e4 task, t in {1, 1e6}."""
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            for t_exp in (0.0, 6.0):
                for i in range(0, 20, 3):
                    _run(dtype, 20, 4.0, 7, t_exp, "inv_eig", 0.0, i)


def _last_loss_case(dtype, t, eta_frac):
    task = _task(20, 2.0, 3, dtype)
    lam = np.asarray(task.eigenvalues, np.float64)
    c = np.asarray(task.coefficients, np.float64)
    eta = float(np.asarray(eta_frac / lam[-1], dtype))
    f = metagrad.meta_objective(task, inner.gd(), objectives.last_loss(), steps=t, grad="stable")
    value, grad = jax.value_and_grad(f)(jnp.asarray(eta, dtype))
    ref_v = lambda e: mpmath.exp(reference.log_f(e, lam, c, t))
    ref_g = lambda e: reference.dlog_f(e, lam, c, t) * mpmath.exp(reference.log_f(e, lam, c, t))
    _check(value, ref_v, eta, dtype, "last_loss value")
    _check(grad, ref_g, eta, dtype, "last_loss grad")


def test_last_loss_through_stable_where_representable():
    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            for t, frac in [(1, 0.5), (10, 1.0), (100, 0.3), (50, 1.9)]:
                _last_loss_case(dtype, t, frac)


def test_log_gd_loss_cotangents_eigenvalues_and_log_weights():
    """d log f / d lambda_i and d log f / d log v_i of the custom_vjp vs mpmath."""
    with jax.enable_x64(True):
        lam = np.array([0.3, 1.1, 2.5, 4.0])
        log_w = np.log(np.array([0.2, 0.05, 0.7, 0.3]))
        for eta, t in [(0.2, 3.0), (0.45, 40.0), (1 / 1.1, 7.0)]:
            g = jax.grad(spectral.log_gd_loss, argnums=(0, 1, 2))(
                jnp.asarray(eta), jnp.asarray(log_w), jnp.asarray(lam), jnp.asarray(t)
            )
            with mpmath.workdps(50):
                e = mpmath.mpf(eta)
                v = [mpmath.exp(mpmath.mpf(x)) for x in log_w]
                lm = [mpmath.mpf(x) for x in lam]
                n = int(t)
                terms = [vi * (1 - e * li) ** (2 * n) for vi, li in zip(v, lm, strict=True)]
                f = mpmath.fsum(terms)
                d_lw = [ti / f for ti in terms]
                d_lam = [
                    -2 * n * e * vi * (1 - e * li) ** (2 * n - 1) / f
                    for vi, li in zip(v, lm, strict=True)
                ]
                d_eta = (
                    mpmath.fsum(
                        -2 * n * li * vi * (1 - e * li) ** (2 * n - 1)
                        for vi, li in zip(v, lm, strict=True)
                    )
                    / f
                )
            assert _rel(g[0], d_eta) <= 1e-12
            for got, ref in zip(np.asarray(g[1]), d_lw, strict=True):
                assert abs(got - float(ref)) <= 1e-12 * max(abs(float(ref)), 1e-300) + 1e-300
            for got, ref in zip(np.asarray(g[2]), d_lam, strict=True):
                assert abs(got - float(ref)) <= 1e-12 * abs(float(ref)) + 1e-300
