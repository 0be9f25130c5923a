"""The least-squares spectral fast path against a step-by-step NumPy unroll and mpmath.

Paper 001, Section 4: GD from ``w_0 = 0`` on ``(1/(2 n1)) ||y - X w||^2``, frozen at
``R w_tau / ||w_tau||`` at the first step with ``||w_tau|| >= R`` (footnote 3); TbT is the
training loss of ``w_t`` (Eq. 3), TbV the validation loss (Eq. 4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

from l2l_jax.closed_forms import spectral_ls as sl

D, N2, T = 8, 6, 20


# -- independent NumPy float64 reference --------------------------------------------------
def reference_run(x, y, eta, t, radius):
    """Step-by-step GD with the truncation rule. Returns ``(w_t, crossing step or None, norms)``."""
    n1, d = x.shape
    w = np.zeros(d)
    norms = []
    for tau in range(1, t + 1):
        w = w - eta * x.T @ (x @ w - y) / n1
        norm = np.linalg.norm(w)
        norms.append(norm)
        if norm >= radius:
            return radius * w / norm, tau, norms
    return w, None, norms


def half_mse(x, y, w):
    return float(np.sum((y - x @ w) ** 2) / (2 * len(y)))


def make_task(seed, n1, *, rank=None, sigma=0.5):
    """A Section-4 task (``w*`` on the unit sphere, ``y = <w*, x> + noise``); ``rank`` < min
    (n1, d) builds a rank-deficient ``X`` (zero eigenvalues of ``H`` inside its size)."""
    rng = np.random.default_rng(seed)
    w_star = rng.normal(size=D)
    w_star /= np.linalg.norm(w_star)
    if rank is None:
        x = rng.normal(size=(n1, D))
    else:
        x = rng.normal(size=(n1, rank)) @ rng.normal(size=(rank, D)) / np.sqrt(rank)
    y = x @ w_star + sigma * rng.normal(size=n1)
    xv = rng.normal(size=(N2, D))
    yv = xv @ w_star + sigma * rng.normal(size=N2)
    return x, y, xv, yv, w_star


def lam_max(x):
    return float(np.max(np.linalg.eigvalsh(x.T @ x / x.shape[0])))


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def radius_for(norms, target):
    """``R`` whose first crossing is at step ``target`` (needs a strict running record)."""
    before = max(norms[: target - 1], default=0.0)
    assert norms[target - 1] > before, "no crossing possible at this step"
    return 0.5 * (before + norms[target - 1])


def records(norms):
    """Steps whose norm exceeds all earlier ones (the possible first crossings)."""
    return [k + 1 for k in range(len(norms)) if norms[k] > max(norms[:k], default=0.0)]


REGIMES = {"below_1/L": 0.6, "between_1/L_2/L": 1.7, "above_2/L": 2.3}
TASKS = {
    "n1<d": dict(n1=5),
    "n1>d": dict(n1=12),
    "n1<d_rank3": dict(n1=5, rank=3),
    "n1>d_rank5": dict(n1=12, rank=5),
}


@pytest.mark.parametrize("method", ["eigh", "svd"])
@pytest.mark.parametrize("task_name", list(TASKS))
@pytest.mark.parametrize("regime", list(REGIMES))
def test_matches_numpy_unroll(method, task_name, regime):
    x, y, xv, yv, w_star = make_task(list(TASKS).index(task_name), **TASKS[task_name])
    eta = REGIMES[regime] / lam_max(x)
    _, _, norms = reference_run(x, y, eta, T, np.inf)
    recs = [r for r in records(norms) if r >= 2]
    mid = [r for r in recs if r < T]
    cases = {"none": np.inf, "first_step": 0.5 * norms[0]}
    if mid:
        cases["mid"] = radius_for(norms, mid[len(mid) // 2])
    if T in recs:
        cases["last"] = radius_for(norms, T)
    if regime != "between_1/L_2/L":  # monotone / diverging: both always exist
        assert {"mid", "last"} <= set(cases)
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv, method=method)
        for name, radius in cases.items():
            w_ref, tau_ref, _ = reference_run(x, y, eta, T, radius)
            tau, crossed = sl.first_crossing(spec, eta, T, radius)
            assert bool(crossed) == (tau_ref is not None), name
            assert int(tau) == (T if tau_ref is None else tau_ref), name
            if name == "last":
                assert tau_ref == T
            elif name == "mid":
                assert 2 <= tau_ref < T
            w = sl.final_params(spec, eta, T, radius)
            assert rel(w, w_ref) < 1e-10, name
            got = [
                sl.tbt_loss(spec, eta, T, radius),
                sl.tbv_loss(spec, eta, T, radius),
                sl.test_error(spec, w_star, eta, T, radius),
            ]
            want = [half_mse(x, y, w_ref), half_mse(xv, yv, w_ref), np.sum((w_ref - w_star) ** 2)]
            for g, v in zip(got, want, strict=True):
                assert abs(float(g) - v) <= 1e-10 * abs(v), (name, float(g), v)


@pytest.mark.parametrize("task_name", list(TASKS))
def test_sweep_of_step_sizes_and_radii(task_name):
    """Every regime boundary region at once (vmapped), including where the norm oscillates."""
    x, y, xv, yv, _ = make_task(7 + list(TASKS).index(task_name), **TASKS[task_name])
    big = lam_max(x)
    etas = np.linspace(0.0, 3.2, 49) / big
    radii = [0.3, 1.0, 1.6, 3.0]
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv)
        fn = jax.jit(
            jax.vmap(jax.vmap(sl.final_coordinates, (None, 0, None, None)), (None, None, None, 0))
        )
        a, taus, crossed = fn(spec, jnp.asarray(etas), T, jnp.asarray(radii))
        w = np.asarray(jnp.einsum("dr,kjr->kjd", spec.eigenvectors, a))
    n_crossed = n_oscillating = 0
    for k, radius in enumerate(radii):
        for j, eta in enumerate(etas):
            w_ref, tau_ref, _ = reference_run(x, y, eta, T, radius)
            if tau_ref is not None and tau_ref > 1 and 1 < eta * big < 2:
                n_oscillating += 1  # crossing inside the oscillating regime
            assert int(taus[k, j]) == (T if tau_ref is None else tau_ref), (radius, eta * big)
            assert bool(crossed[k, j]) == (tau_ref is not None)
            n_crossed += tau_ref is not None
            if eta > 0:
                assert rel(w[k, j], w_ref) < 1e-10, (radius, eta * big)
            else:
                assert not np.any(w[k, j])
    assert 0 < n_crossed < len(radii) * len(etas)
    assert n_oscillating > 0


def test_null_space_stays_zero():
    """n1 < d: w_t lies in the row space of X (H's zero eigenvalues are never moved along)."""
    x, y, xv, yv, _ = make_task(3, n1=5, rank=3)
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv)
        lam = np.sort(np.asarray(spec.eigenvalues))
        assert np.count_nonzero(lam) == 3
        w = np.asarray(sl.final_params(spec, 1.0 / lam_max(x), 50, np.inf))
        vt = np.linalg.svd(x)[2]
        null = vt[3:]
        assert np.max(np.abs(null @ w)) < 1e-12 * np.linalg.norm(w)
        # the ERM residual is y's part outside range(X), positive here
        w_ls = np.linalg.lstsq(x, y, rcond=None)[0]
        assert float(spec.residual) == pytest.approx(half_mse(x, y, w_ls), rel=1e-10)
        assert float(spec.train_const) == pytest.approx(
            float(spec.residual + 0.5 * jnp.sum(spec.eigenvalues * spec.coords**2)), rel=1e-12
        )


@pytest.mark.parametrize("objective", ["tbt", "tbv"])
def test_grid_search_equals_loop_over_reference(objective):
    m, n1, t, radius = 4, 5, 15, 2.0
    tasks = [make_task(100 + k, n1, sigma=1.0) for k in range(m)]
    big = np.mean([lam_max(task[0]) for task in tasks])
    etas = np.linspace(0.05, 3.0, 25) / big
    values_ref = np.zeros(len(etas))
    for j, eta in enumerate(etas):
        for x, y, xv, yv, _ in tasks:
            w, _, _ = reference_run(x, y, eta, t, radius)
            values_ref[j] += (half_mse(x, y, w) if objective == "tbt" else half_mse(xv, yv, w)) / m
    with jax.enable_x64(True):
        stacked = [jnp.asarray(np.stack([task[i] for task in tasks])) for i in range(4)]
        specs = jax.vmap(sl.decompose)(*stacked)
        best, values = sl.grid_search(specs, jnp.asarray(etas), t, radius, objective=objective)
        np.testing.assert_allclose(np.asarray(values), values_ref, rtol=1e-10)
        assert float(best) == etas[np.argmin(values_ref)]


def _mp_log_tbt(lam, beta, residual, eta, t):
    total = mpmath.mpf(residual)
    for li, bi in zip(lam, beta, strict=True):
        li, bi = mpmath.mpf(float(li)), mpmath.mpf(float(bi))
        total += li * bi**2 / 2 * (1 - eta * li) ** (2 * t)
    return mpmath.log(total)


@pytest.mark.parametrize("steps", [10**4, 10**5])
@pytest.mark.parametrize("scaled_eta", [0.4, 1.3, 2.1])
def test_log_tbt_loss_vs_mpmath(steps, scaled_eta):
    x, y, xv, yv, _ = make_task(11, n1=5)  # n1 < d: residual 0, the loss -> 0 with t
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv)
        assert float(spec.residual) == 0.0
        lam, beta = np.asarray(spec.eigenvalues), np.asarray(spec.coords)
        eta = scaled_eta / float(np.max(lam))
        direct = float(sl.tbt_loss(spec, eta, steps, np.inf))
        assert direct == 0.0 or not np.isfinite(direct)  # under/overflows in float64
        value, grad = jax.value_and_grad(sl.log_tbt_loss, argnums=1)(spec, eta, steps)
    with mpmath.workdps(60):
        f = lambda e: _mp_log_tbt(lam, beta, 0, e, steps)
        want = f(mpmath.mpf(eta))
        want_grad = mpmath.diff(f, mpmath.mpf(eta))
    assert np.isfinite(float(value)) and np.isfinite(float(grad))
    assert abs(float(value) - float(want)) <= 1e-10 * abs(float(want))
    assert abs(float(grad) - float(want_grad)) <= 1e-8 * abs(float(want_grad))


def test_log_tbt_loss_with_residual_matches_direct_and_mpmath():
    x, y, xv, yv, _ = make_task(12, n1=12)  # n1 > d: residual > 0
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv)
        lam, beta = np.asarray(spec.eigenvalues), np.asarray(spec.coords)
        res = float(spec.residual)
        assert res > 0
        for scaled_eta, steps in [(0.5, 10), (1.5, 30), (2.2, 10**4)]:
            eta = scaled_eta / float(np.max(lam))
            value, grad = jax.value_and_grad(sl.log_tbt_loss, argnums=1)(spec, eta, steps)
            if steps < 100:
                direct = float(sl.tbt_loss(spec, eta, steps, np.inf))
                assert float(value) == pytest.approx(np.log(direct), rel=1e-12)
            with mpmath.workdps(60):
                f = lambda e, s=steps: _mp_log_tbt(lam, beta, res, e, s)
                want, want_grad = f(mpmath.mpf(eta)), mpmath.diff(f, mpmath.mpf(eta))
            assert float(value) == pytest.approx(float(want), rel=1e-10)
            assert float(grad) == pytest.approx(float(want_grad), rel=1e-8)


@pytest.mark.parametrize(
    "fn", ["tbt_loss", "tbv_loss", "test_error"], ids=["tbt", "tbv", "test_error"]
)
@pytest.mark.parametrize("scaled_eta,radius", [(0.7, np.inf), (1.5, np.inf), (2.5, 3.0)])
def test_grad_vs_central_differences(fn, scaled_eta, radius):
    x, y, xv, yv, w_star = make_task(21, n1=12)
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv)
        eta = scaled_eta / lam_max(x)
        h = 1e-6 * eta
        if fn == "test_error":
            f = lambda e: sl.test_error(spec, w_star, e, T, radius)
        else:
            f = lambda e: getattr(sl, fn)(spec, e, T, radius)
        taus = [int(sl.first_crossing(spec, e, T, radius)[0]) for e in (eta - h, eta, eta + h)]
        assert len(set(taus)) == 1  # the truncation does not switch inside the stencil
        if np.isfinite(radius):
            assert taus[0] < T
        g = float(jax.grad(f)(jnp.asarray(eta)))
        fd = float((f(eta + h) - f(eta - h)) / (2 * h))
    assert g == pytest.approx(fd, rel=1e-6)


def test_no_overflow_leaks():
    """Diverging coordinates: finite results at huge eta and t; the norm is exactly R."""
    x, y, xv, yv, _ = make_task(31, n1=12)
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv)
        big = lam_max(x)
        for eta in [2.5 / big, 10 / big, 1e6 / big, 1e300]:
            for t in [10, 10**5]:
                w = np.asarray(sl.final_params(spec, eta, t, 2.0))
                assert np.all(np.isfinite(w)), (eta, t)
                assert np.linalg.norm(w) == pytest.approx(2.0, rel=1e-12)
                for fn in (sl.tbt_loss, sl.tbv_loss):
                    assert np.isfinite(float(fn(spec, eta, t, 2.0)))
                g = jax.grad(sl.tbt_loss, argnums=1)(spec, jnp.asarray(eta), t, 2.0)
                assert np.isfinite(float(g))
                if eta < 1e200:
                    w_ref, _, _ = reference_run(x, y, eta, min(t, 1000), 2.0)
                    assert rel(w, w_ref) < 1e-10
        # a diverging direction with a tiny (or zero) ERM coordinate: no 0 * inf
        tiny = spec.replace(coords=spec.coords.at[-1].set(1e-300).at[0].set(0.0))
        w = np.asarray(sl.final_params(tiny, 2.5 / big, 10**5, 2.0))
        assert np.all(np.isfinite(w)) and np.linalg.norm(w) == pytest.approx(2.0)


def test_long_converging_run_and_traced_t():
    """1/L < eta < 2/L with R above the ERM norm: the scan stops early (certificate); t traced."""
    x, y, xv, yv, _ = make_task(41, n1=12)
    with jax.enable_x64(True):
        spec = sl.decompose(x, y, xv, yv)
        eta = 1.9 / lam_max(x)
        erm = float(jnp.linalg.norm(spec.coords))
        f = jax.jit(sl.tbt_loss)
        for t in [1, 2, 10**6]:
            w_ref, tau_ref, _ = reference_run(x, y, eta, min(t, 3000), 1.05 * erm)
            tau, crossed = jax.jit(sl.first_crossing)(spec, eta, t, 1.05 * erm)
            assert bool(crossed) == (tau_ref is not None)
            assert int(tau) == (t if tau_ref is None else tau_ref)
            got = float(f(spec, eta, t, 1.05 * erm))
            assert got == pytest.approx(half_mse(x, y, w_ref), rel=1e-9)
        assert float(sl.tbt_loss(spec, eta, 0, 1.0)) == pytest.approx(float(spec.train_const))


def test_float32_and_errors():
    x, y, xv, yv, _ = make_task(51, n1=12)
    specs = jax.vmap(sl.decompose)(
        *[jnp.asarray(np.stack([a, a]), jnp.float32) for a in (x, y, xv, yv)]
    )
    assert specs.coords.dtype == jnp.float32
    best, values = sl.grid_search(specs, jnp.linspace(0.01, 1.0, 7), 20, 3.0, objective="tbv")
    assert float(best) in np.asarray(jnp.linspace(0.01, 1.0, 7)).tolist()
    assert values.shape == (7,) and np.all(np.isfinite(np.asarray(values)))
    with pytest.raises(ValueError, match="objective"):
        sl.grid_search(specs, jnp.ones(2), 5, 1.0, objective="test")
    with pytest.raises(ValueError, match="method"):
        sl.decompose(x, y, method="qr")
    with pytest.raises(ValueError, match="y_train"):
        sl.decompose(x, y[:-1])
    assert np.isnan(float(sl.tbv_loss(sl.decompose(x, y), 0.1, 5, 1.0)))
