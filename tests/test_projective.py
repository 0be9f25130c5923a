"""grad="stable" for heavy-ball momentum and Nesterov (projective forward mode), against
an mpmath reference that is not the implementation: each eigen-direction's 2x2 step
raised to the power t exactly, at 60 digits, and differentiated numerically.

As for GD (tests/test_stable_accuracy.py), the reference is evaluated at exactly the
working-precision inputs; the bar is 1e-4 relative in float32 and 1e-9 in float64, or
twice the problem's own rounding sensitivity (the reference's relative change when eta
or beta moves by one rounding unit) where that is larger.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from l2l_jax import inner, metagrad, tasks
from l2l_jax.closed_forms import reference

TOL = {"float32": 1e-4, "float64": 1e-9}
U = {"float32": 2.0**-24, "float64": 2.0**-53}
LAM = np.geomspace(0.05, 2.0, 12)  # L = 2, kappa = 40
COEF = np.cos(np.arange(12.0)) + 0.3


def regime_eta(kind: str, regime: str, beta: float, big_l: float = float(LAM[-1])) -> float:
    """Step sizes in the three regimes of the stiffest mode (curvature L = 2): real roots,
    complex roots (the mode rotates), and 1.2x past the stability boundary. Heavy ball's
    roots are complex for ``(1 - sqrt(b))^2 < eta L < (1 + sqrt(b))^2``, its boundary is
    ``2 (1 + b) / L``; Nesterov's for ``1 - 4 b / (1 + b)^2 < eta L < 1`` and ``2 (1 + b)
    / (L (1 + 2 b))``; GD has real roots only (``complex`` is ``1 / L``) and its boundary
    at ``2 / L``."""
    if kind == "gd":
        return {"real": 0.5, "complex": 1.0, "past_boundary": 2.4}[regime] / big_l
    if kind == "momentum":
        lo, hi = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2
        boundary = 2 * (1 + beta)
    else:
        lo, hi = 1 - 4 * beta / (1 + beta) ** 2, 1.0
        boundary = 2 * (1 + beta) / (1 + 2 * beta)
    x = {"real": 0.5 * lo, "complex": 0.5 * (lo + hi), "past_boundary": 1.2 * boundary}[regime]
    return x / big_l


def _check(got, ref, sens, dtype, what):
    """Relative error within the bar; a reference below the dtype's smallest normal
    number (a derivative of ~1e-46 once least squares has converged to its residual) is
    met by any value within that number of it: float32 cannot represent it."""
    assert np.isfinite(float(got)), (what, got)
    if abs(ref) < np.finfo(dtype).tiny:
        assert abs(mpmath.mpf(float(got)) - ref) <= np.finfo(dtype).tiny, (what, got, ref)
        return
    err = abs(mpmath.mpf(float(got)) - ref) / abs(ref)
    assert err <= max(TOL[dtype], 2 * sens), (what, dtype, float(got), float(ref), float(err))


def _check_exact(ref_at, value, grads, e, b, kind, dtype, what, ulps: int = 1):
    """Value and gradients against an exact reference ``ref_at(eta, beta) -> (value,
    (d/d eta, d/d beta))``, within the bar or twice the reference's own change when
    ``eta`` (for the value) or ``eta`` or ``beta`` (for the gradients) moves by ``ulps``
    rounding units (1 unless a documented clause says otherwise)."""
    u = U[dtype] * ulps
    points = [(e, b)] + [(e * (1 + s * u), b) for s in (-1, 1)]
    points += [] if kind == "gd" else [(e, b * (1 + s * u)) for s in (-1, 1)]
    refs = [ref_at(pe, pb) for pe, pb in points]
    rel = lambda x, y: abs(x - y) / abs(y) if y else 0
    _check(value, refs[0][0], max(rel(r[0], refs[0][0]) for r in refs[1:3]), dtype, what)
    got = [grads] if kind == "gd" else [grads["learning_rate"], grads["momentum"]]
    for i, g in enumerate(got):
        expected = refs[0][1][i]
        sens = max(rel(r[1][i], expected) for r in refs[1:])
        _check(g, expected, sens, dtype, (*what, i))


def _hparams(kind: str, eta: float, beta: float, dtype: str):
    eta = jnp.asarray(eta, dtype)
    return eta if kind == "gd" else {"learning_rate": eta, "momentum": jnp.asarray(beta, dtype)}


OPTIMIZERS = {"gd": inner.gd, "momentum": inner.momentum, "nesterov": inner.nesterov}


CASES = [
    (kind, regime, beta)
    for kind in ("momentum", "nesterov")
    for regime in ("real", "complex", "past_boundary")
    for beta in (0.5, 0.99)
]


def _stable(task, optimizer, objective: str, steps: int):
    """The meta-objective of the cases below. A test builds one per optimizer and
    objective and calls it at every case's ``eta``/``beta`` (its arguments): one set of
    compiled programs, where a new meta-objective per case would trace and compile the
    same programs again."""
    return metagrad.meta_objective(task, optimizer, objective, steps=steps, grad="stable")


def _check_case(f, task, dtype: str, steps: int, kind: str, regime: str, beta: float) -> None:
    lam, c = np.asarray(task.eigenvalues), np.asarray(task.coefficients)
    e = float(jnp.asarray(regime_eta(kind, regime, beta), dtype))
    b = float(jnp.asarray(beta, dtype))
    value, grads = jax.value_and_grad(f)(_hparams(kind, e, b, dtype))

    def ref_at(x, y):
        log_f = reference.momentum_log_f(kind, x, y, lam, c, steps)
        return log_f / steps, [
            g / steps for g in reference.momentum_log_f_grad(kind, x, y, lam, c, steps)
        ]

    _check_exact(ref_at, value, grads, e, b, kind, dtype, (kind, regime, beta, steps))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "steps",
    [80, pytest.param(1000, marks=pytest.mark.slow), pytest.param(100_000, marks=pytest.mark.slow)],
)
def test_log_loss_and_gradients_match_mpmath(dtype, steps):
    with jax.enable_x64(dtype == "float64"):
        task = tasks.Quadratic.from_spectrum(LAM, COEF, dtype=jnp.dtype(dtype))
        fs = {kind: _stable(task, OPTIMIZERS[kind](), "log_loss", steps) for kind, _, _ in CASES}
        for kind, regime, beta in CASES:
            _check_case(fs[kind], task, dtype, steps, kind, regime, beta)


def test_float32_autodiff_fails_past_the_boundary_where_stable_does_not():
    """Heavy ball at 1.2x its stability boundary, t = 80: f(w_t) ~ 1e54 overflows float32,
    so autodiff's value is inf and its meta-gradient silently 0 (meta-descent would never
    move); the stable value and meta-gradient are finite and match mpmath."""
    task = tasks.Quadratic.from_spectrum(LAM, COEF, dtype=jnp.float32)
    hp = {"learning_rate": jnp.float32(regime_eta("momentum", "past_boundary", 0.9))}
    hp["momentum"] = jnp.float32(0.9)
    grads = {}
    for method in ("autodiff", "stable"):
        f = metagrad.meta_objective(task, inner.momentum(), "log_loss", steps=80, grad=method)
        grads[method] = jax.grad(f)(hp)
    f = metagrad.meta_objective(task, inner.momentum(), "log_loss", steps=80, grad="autodiff")
    assert not np.isfinite(float(f(hp)))
    assert all(float(g) == 0.0 or not np.isfinite(float(g)) for g in grads["autodiff"].values())
    lam, c = np.asarray(task.eigenvalues), np.asarray(task.coefficients)
    ref = reference.momentum_log_f_grad("momentum", hp["learning_rate"], hp["momentum"], lam, c, 80)
    np.testing.assert_allclose(
        float(grads["stable"]["learning_rate"]), float(ref[0]) / 80, rtol=1e-4
    )
    np.testing.assert_allclose(float(grads["stable"]["momentum"]), float(ref[1]) / 80, rtol=1e-4)


def test_nqm_mean_dynamics_agree_with_autodiff_in_float64():
    with jax.enable_x64(True):
        nqm = tasks.NQM(
            curvature=jnp.asarray(LAM),
            noise_scale=0.0,
            init_scale=1.0,
            init_key=jax.random.key(0),
            noise_key=jax.random.key(1),
        )
        hp = {"learning_rate": jnp.float64(0.3), "momentum": jnp.float64(0.8)}
        out = {
            m: jax.value_and_grad(
                metagrad.meta_objective(nqm, inner.momentum(), "last_loss", steps=60, grad=m)
            )(hp)
            for m in ("autodiff", "stable")
        }
        np.testing.assert_allclose(out["stable"][0], out["autodiff"][0], rtol=1e-12)
        for name in hp:
            np.testing.assert_allclose(out["stable"][1][name], out["autodiff"][1][name], rtol=1e-10)


def _ls_task(dtype: str):
    """A least-squares task with n1 > d (a positive ERM residual) and validation rows."""
    return tasks.LeastSquares.sample(jax.random.key(0), 4, 6, 5, 0.5, jnp.dtype(dtype))


def _check_ls_cases(task, dtype, steps, kind, regimes, preconditioner=None):
    """``grad="stable"`` of ``(1/t) log`` of the training (``log_loss``) and validation
    (``log_tbv``) loss in each of ``regimes``, against the mpmath affine-step reference on
    the original data. One meta-objective per objective for all regimes
    (:func:`_stable`); the reference gives both losses and their gradients at once, so
    each point of it is computed once for the two objectives."""
    x, y = np.asarray(task.x_train, np.float64), np.asarray(task.y_train, np.float64)
    xv, yv = np.asarray(task.x_valid, np.float64), np.asarray(task.y_valid, np.float64)
    pn = None if preconditioner is None else np.asarray(preconditioner, np.float64)
    gram = x.T @ x / x.shape[0]
    lams = np.linalg.eigvals(gram if pn is None else pn[:, None] * gram).real
    big_l = float(lams.max())
    # The stable route eigendecomposes X^T X / n in the working precision: by Weyl's
    # bound each eigenvalue moves by at most ~d u lambda_max, i.e. mode i's eta lambda_i by
    # d kappa_i rounding units of eta (the dynamics depend on eta lambda_i and beta only),
    # and the CPU's instruction set decides where in that range it lands. So the bar is the
    # reference's change when eta moves by d * kappa units (42 for this task), not by one.
    ulps = int(np.ceil(x.shape[1] * big_l / lams.min()))
    beta = 0.0 if kind == "gd" else 0.9
    opt = OPTIMIZERS[kind](preconditioner=preconditioner)
    objectives = {"log_loss": "train", "log_tbv": "valid"}
    fs = {objective: _stable(task, opt, objective, steps) for objective in objectives}

    @functools.cache
    def both_at(pe, pb):  # ((log train, log valid), {"train": grads, "valid": grads})
        args = (kind, pe, pb, x, y, xv, yv, steps)
        logs = reference.least_squares_log_losses(*args, preconditioner=pn)
        return logs, reference.least_squares_log_loss_grads(*args, preconditioner=pn)

    for regime in regimes:
        e = float(jnp.asarray(regime_eta(kind, regime, beta, big_l), dtype))
        b = float(jnp.asarray(beta, dtype))
        for objective, which in objectives.items():

            def ref_at(pe, pb, which=which):
                logs, grads = both_at(pe, pb)
                return logs[("train", "valid").index(which)] / steps, [
                    g / steps for g in grads[which]
                ]

            value, grads = jax.value_and_grad(fs[objective])(_hparams(kind, e, b, dtype))
            what = (kind, objective, regime, steps)
            _check_exact(ref_at, value, grads, e, b, kind, dtype, what, ulps)


LS_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "kind, steps, dtype",
    [("momentum", 80, "float32")]
    + [
        pytest.param(kind, steps, dtype, marks=LS_SLOW)
        for kind, steps in [
            ("momentum", 80),
            ("gd", 80),
            ("nesterov", 80),
            ("momentum", 1000),
            ("nesterov", 100_000),
            ("gd", 100_000),
        ]
        for dtype in ("float32", "float64")
        if (kind, steps, dtype) != ("momentum", 80, "float32")
    ],
)
def test_least_squares_train_and_validation_match_mpmath(kind, steps, dtype):
    """Least squares (n1 > d: a positive ERM residual, so the training loss does not
    vanish), train-by-train and train-by-validation as log-losses, in every regime."""
    with jax.enable_x64(dtype == "float64"):
        _check_ls_cases(_ls_task(dtype), dtype, steps, kind, ("real", "complex", "past_boundary"))


def test_least_squares_stable_tbv_is_the_validation_loss_of_the_unroll():
    """objectives.tbv (the loss itself) with grad="stable" equals the float64 unroll's
    validation loss and its autodiff meta-gradient, for heavy ball."""
    with jax.enable_x64(True):
        task = _ls_task("float64")
        hp = {"learning_rate": jnp.float64(0.2), "momentum": jnp.float64(0.7)}
        out = {
            m: jax.value_and_grad(
                metagrad.meta_objective(task, inner.momentum(), "tbv", steps=50, grad=m)
            )(hp)
            for m in ("autodiff", "stable")
        }
        np.testing.assert_allclose(out["stable"][0], out["autodiff"][0], rtol=1e-12)
        for name in hp:
            np.testing.assert_allclose(out["stable"][1][name], out["autodiff"][1][name], rtol=1e-9)


# -- a fixed diagonal preconditioner: w <- w - eta P grad f (and momentum on P grad f) ---
RNG = np.random.default_rng(0)
DENSE_H = (lambda a: a @ a.T / 6 + 0.1 * np.eye(6))(RNG.normal(size=(6, 6)))
DENSE_W0 = RNG.normal(size=6)
DIAG_P = np.exp(0.5 * RNG.normal(size=6))  # P ranges over about 4x


def _check_preconditioned_case(dtype, steps, kind, regime, ulps=1):
    """``grad="stable"`` on a dense quadratic with ``P``, against mpmath's powering of
    the step ``w <- w - eta P H w`` in the problem's own coordinates (no change of
    variables, no eigendecomposition)."""
    task = tasks.Quadratic(jnp.asarray(DENSE_H, dtype), jnp.asarray(DENSE_W0, dtype))
    p = jnp.asarray(DIAG_P, dtype)
    h, w0, pn = (np.asarray(a, np.float64) for a in (task.hessian, task.w0, p))
    big_l = float(np.linalg.eigvals(pn[:, None] * h).real.max())
    beta = 0.0 if kind == "gd" else 0.9
    e = float(jnp.asarray(regime_eta(kind, regime, beta, big_l), dtype))
    b = float(jnp.asarray(beta, dtype))
    f = metagrad.meta_objective(
        task, OPTIMIZERS[kind](preconditioner=p), "log_loss", steps=steps, grad="stable"
    )
    value, grads = jax.value_and_grad(f)(_hparams(kind, e, b, dtype))

    def ref_at(pe, pb):
        log_f, dlog_f = reference.quadratic_log_f(kind, pe, pb, h, w0, steps, preconditioner=pn)
        return log_f / steps, [g / steps for g in dlog_f]

    _check_exact(ref_at, value, grads, e, b, kind, dtype, (kind, regime, steps, "P"), ulps)


ALL_KINDS = ("gd", "momentum", "nesterov")


@pytest.mark.parametrize(
    "dtype, steps, kinds",
    [("float32", 80, ("momentum",))]
    + [
        pytest.param(dtype, steps, kinds, marks=pytest.mark.slow)
        for dtype, steps, kinds in [
            ("float32", 80, ("gd", "nesterov")),
            ("float64", 80, ALL_KINDS),
            ("float32", 100_000, ALL_KINDS),
            ("float64", 100_000, ALL_KINDS),
        ]
    ],
)
def test_preconditioned_quadratic_matches_mpmath(dtype, steps, kinds):
    """GD, heavy ball and Nesterov with a diagonal preconditioner, every regime of the
    stiffest mode of ``P H`` (past the boundary included).

    Clause (docs/numerics.md): in float32 at ``t = 1e5`` in the complex regime the step's
    rounding accumulates a phase drift of order ``t u``; the error there is that of
    ``eta`` moved by a few units (measured: 13 for Nesterov), so the bar is twice the
    reference's change when ``eta`` or ``beta`` moves by 32 units."""
    with jax.enable_x64(dtype == "float64"):
        for kind in kinds:
            for regime in ("real", "complex", "past_boundary"):
                drift = dtype == "float32" and steps > 1000 and regime == "complex"
                _check_preconditioned_case(dtype, steps, kind, regime, 32 if drift else 1)


@pytest.mark.parametrize(
    "kind, dtype",
    [
        pytest.param(kind, dtype, marks=pytest.mark.slow)
        for kind, dtype in [("momentum", "float32"), ("gd", "float64")]
    ],
)
def test_preconditioned_least_squares_matches_mpmath(kind, dtype):
    """TbT and TbV as log-losses with ``P``: the features become ``X P^(1/2)``."""
    with jax.enable_x64(dtype == "float64"):
        task = _ls_task(dtype)
        p = jnp.asarray(DIAG_P[:4], dtype)
        _check_ls_cases(task, dtype, 80, kind, ("real", "past_boundary"), p)


def test_preconditioned_stable_equals_the_unroll_in_float64():
    """The value and meta-gradient of the change of variables equal autodiff through
    optax's own preconditioned update (NQM mean dynamics, last loss; dense quadratic,
    TbT), and without a preconditioner the closed-form GD route is unchanged."""
    with jax.enable_x64(True):
        nqm = tasks.NQM(
            curvature=jnp.asarray(LAM[:6]),
            noise_scale=0.0,
            init_scale=1.0,
            init_key=jax.random.key(0),
            noise_key=jax.random.key(1),
        )
        quad = tasks.Quadratic(jnp.asarray(DENSE_H), jnp.asarray(DENSE_W0))
        p = jnp.asarray(DIAG_P)
        hp = {"learning_rate": jnp.float64(0.3), "momentum": jnp.float64(0.8)}
        for task, objective in ((nqm, "last_loss"), (quad, "tbt")):
            opt = inner.momentum(preconditioner=p)
            out = {
                m: jax.value_and_grad(
                    metagrad.meta_objective(task, opt, objective, steps=60, grad=m)
                )(hp)
                for m in ("autodiff", "stable")
            }
            np.testing.assert_allclose(out["stable"][0], out["autodiff"][0], rtol=1e-12)
            for name in hp:
                np.testing.assert_allclose(
                    out["stable"][1][name], out["autodiff"][1][name], rtol=1e-10
                )
        ones = inner.gd(preconditioner=jnp.ones(6))
        for opt in (ones, inner.gd()):
            f = metagrad.meta_objective(quad, opt, "log_loss", steps=60, grad="stable")
            np.testing.assert_allclose(
                jax.value_and_grad(f)(jnp.float64(0.2)),
                jax.value_and_grad(
                    metagrad.meta_objective(quad, inner.gd(), "log_loss", steps=60, grad="autodiff")
                )(jnp.float64(0.2)),
                rtol=1e-12,
            )


def test_preconditioner_errors_name_the_fix():
    with pytest.raises(ValueError, match="preconditioner must be a diagonal P > 0"):
        inner.gd(preconditioner=jnp.asarray([1.0, 0.0]))
    with pytest.raises(ValueError, match="preconditioner must be a diagonal P > 0"):
        inner.momentum(preconditioner=jnp.asarray([1.0, jnp.nan]))
    quad = tasks.Quadratic(jnp.asarray(DENSE_H, jnp.float32), jnp.asarray(DENSE_W0, jnp.float32))
    with pytest.raises(ValueError, match=r"parameters' shape \(6,\), got \(5,\)"):
        metagrad.meta_objective(
            quad, inner.gd(preconditioner=jnp.ones(5)), "log_loss", steps=5, grad="stable"
        )


def test_unsupported_combinations_say_what_is_supported():
    task = tasks.Quadratic.from_spectrum(LAM, COEF)
    for opt in (
        inner.adam(),
        inner.from_optax(__import__("optax").sgd, ("learning_rate",), name="sgd", batch_size=2),
    ):
        with pytest.raises(ValueError, match=r"inner\.momentum\(\) and inner\.nesterov\(\)"):
            metagrad.meta_objective(task, opt, "log_loss", steps=5, grad="stable")
    with pytest.raises(ValueError, match="objective 'log_tbv' on task Quadratic"):
        metagrad.meta_objective(task, inner.momentum(), "log_tbv", steps=5, grad="stable")
    ls = tasks.LeastSquares.sample(jax.random.key(0), 4, 3, 2, 1.0)
    with pytest.raises(ValueError, match="max_norm"):
        metagrad.meta_objective(ls, inner.momentum(), "tbt", steps=5, grad="stable", max_norm=3.0)
