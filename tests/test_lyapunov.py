"""The meta-gradient health check (analysis.lyapunov): the top Lyapunov exponent against
the closed form on GD and heavy-ball quadratics, and its predicted overflow length
against the observed onset of non-finite float32 derivatives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, learned, metagrad, tasks
from l2l_jax.analysis import lyapunov

TASK = tasks.Quadratic.random(jax.random.key(0), dim=6)
LAM = np.asarray(TASK.eigenvalues, np.float64)


def heavy_ball_radius(eta: float, beta: float) -> float:
    """The largest |eigenvalue| of the heavy-ball step over the curvatures (closed form:
    the 2x2 block [[1 - eta l, -eta beta], [l, beta]] per eigenvalue l)."""
    blocks = [np.array([[1 - eta * lam, -eta * beta], [lam, beta]]) for lam in LAM]
    return max(np.max(np.abs(np.linalg.eigvals(b))) for b in blocks)


@pytest.mark.parametrize("eta", [0.01, 0.05, 0.08])  # converging, fast, past 2 / L
def test_gd_exponent_is_log_of_the_spectral_radius(eta):
    health = lyapunov.meta_gradient_health(TASK, inner.gd(), jnp.float32(eta), 2000)
    expected = np.log(np.max(np.abs(1 - eta * LAM)))
    assert health.exponent == pytest.approx(expected, rel=0.01)
    assert (health.overflow_steps["float32"] is None) == (expected < 0)


@pytest.mark.parametrize(
    "eta, beta",
    [(0.01, 0.5), (0.02, 0.9), (0.2, 0.9)],  # real roots, complex, diverging
)
def test_heavy_ball_exponent_is_log_of_the_spectral_radius(eta, beta):
    hp = {"learning_rate": jnp.float32(eta), "momentum": jnp.float32(beta)}
    health = lyapunov.meta_gradient_health(TASK, inner.momentum(), hp, 4000)
    assert health.exponent == pytest.approx(np.log(heavy_ball_radius(eta, beta)), rel=0.01)


def test_predicted_overflow_matches_the_observed_onset():
    """GD past its boundary: d w_t / d eta (forward mode) leaves float32 at the predicted
    length log(max float32) / lambda_1 up to the polynomial prefactor (t lambda: ~8% here);
    the meta-gradient of f(w_t) ~ |w_t|^2 at half of it."""
    eta = jnp.float32(0.08)
    health = lyapunov.meta_gradient_health(TASK, inner.gd(), eta, 1000)
    predicted = health.overflow_steps["float32"]
    assert predicted == pytest.approx(np.log(np.finfo(np.float32).max) / health.exponent)

    def tangent_finite(t):
        w_t = lambda e: inner.unroll(TASK, inner.gd(), e, t).params
        return bool(np.all(np.isfinite(jax.jvp(w_t, (eta,), (jnp.float32(1.0),))[1])))

    def grad_finite(t):
        f = metagrad.meta_objective(TASK, inner.gd(), "last_loss", steps=t)
        return bool(np.isfinite(float(jax.grad(f)(eta))))

    for finite, length in ((tangent_finite, predicted), (grad_finite, predicted / 2)):
        assert finite(int(0.85 * length)) and not finite(int(1.15 * length))
    assert "overflow after about 321 steps in float32" in health.advice()


def test_any_inner_optimizer_and_learned_ones():
    lopt = learned.MLPLOpt(
        learned.LOptConfig(hidden_sizes=(4,), decays=(0.9,), time_scales=(10.0,))
    )
    mp = lopt.init_meta_params(jax.random.key(0))
    health = lyapunov.meta_gradient_health(TASK, lopt, mp, 50)
    assert np.isfinite(health.exponent) and health.log_growth.shape == (50,)
    with pytest.raises(ValueError, match="window = 60 must be at most steps = 50"):
        lyapunov.meta_gradient_health(TASK, lopt, mp, 50, window=60)
