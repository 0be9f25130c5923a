"""inner.rollout against closed forms and inner.unroll (float64 GD on a quadratic)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, tasks
from l2l_jax.inner.rollout import record_points, rollout


def test_record_points():
    np.testing.assert_array_equal(record_points(20, 10), [0, 10, 20])
    np.testing.assert_array_equal(record_points(5, 10), [0, 5])
    np.testing.assert_array_equal(record_points(7, 1), np.arange(8))
    np.testing.assert_array_equal(record_points(25, 10), [0, 10, 20, 25])
    with pytest.raises(ValueError, match="every"):
        record_points(5, 0)


def test_gd_records_match_the_closed_form():
    """GD on 1/2 w'Hw: w_k = (I - eta H)^k w_0; the records are f(w_k) and ||s|| at the
    points 0, 4, 8, 10, and the final carry is w_10."""
    with jax.enable_x64(True):
        task = tasks.Quadratic.random(jax.random.key(0), 4, scale=0.2, dtype=jnp.float64)
        h, w0, eta, t = np.asarray(task.hessian), np.asarray(task.w0), 0.1, 10
        record = lambda w, s: {"loss": task.loss(w), "w": w}
        (w, _), rec = rollout(
            task,
            inner.gd(),
            jnp.asarray(eta),
            task.w0,
            t,
            key=jax.random.key(1),
            record=record,
            every=4,
        )
        m = np.eye(4) - eta * h
        ws = [np.linalg.matrix_power(m, k) @ w0 for k in (0, 4, 8, 10)]
        np.testing.assert_allclose(np.asarray(rec["w"]), ws, rtol=1e-12)
        np.testing.assert_allclose(
            np.asarray(rec["loss"]), [0.5 * x @ h @ x for x in ws], rtol=1e-12
        )
        np.testing.assert_allclose(np.asarray(w), ws[-1], rtol=1e-12)


def test_sgd_rollout_is_the_unroll_with_the_same_key():
    """Minibatches: step k of a rollout and of inner.unroll draw from split(key, t)[k]."""
    with jax.enable_x64(True):
        task = tasks.LeastSquares.sample(jax.random.key(2), 3, 12, 0, 1.0, jnp.float64)
        opt, key, t = inner.sgd(batch_size=4), jax.random.key(3), 9
        run = inner.unroll(task, opt, jnp.asarray(0.05), t, key=key)
        (w, _), losses = rollout(
            task,
            opt,
            jnp.asarray(0.05),
            task.init_params(),
            t,
            key=key,
            every=3,
            record=lambda w, _: task.loss(w),
        )
        np.testing.assert_allclose(np.asarray(w), np.asarray(run.params), rtol=1e-12)
        np.testing.assert_allclose(losses[-1], run.losses[-1], rtol=1e-12)
        # a fixed full batch size trains on other minibatches: the records differ
        (w4, _), _ = rollout(
            task,
            opt,
            jnp.asarray(0.05),
            task.init_params(),
            t,
            key=key,
            every=3,
            record=lambda w, _: task.loss(w),
            batch_size=None,
        )
        full = inner.unroll(task, inner.gd(), jnp.asarray(0.05), t)
        np.testing.assert_allclose(np.asarray(w4), np.asarray(full.params), rtol=1e-12)
