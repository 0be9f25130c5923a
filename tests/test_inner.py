"""Inner unrolls against closed forms and NumPy re-implementations (float64)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import inner, tasks


def _task(dim=5, seed=0, dtype=jnp.float64):
    return tasks.Quadratic.random(jax.random.key(seed), dim, scale=0.2, dtype=dtype)


def test_gd_matches_closed_form():
    with jax.enable_x64(True):
        task = _task()
        h, w0 = np.asarray(task.hessian), np.asarray(task.w0)
        for eta, t in [(0.05, 1), (0.1, 17), (0.02, 60)]:
            res = inner.unroll(task, inner.gd(), jnp.asarray(eta), t)
            m = np.eye(len(w0)) - eta * h
            expected = np.linalg.matrix_power(m, t) @ w0
            np.testing.assert_allclose(np.asarray(res.params), expected, rtol=1e-10, atol=1e-14)
            ws = [np.linalg.matrix_power(m, k) @ w0 for k in range(t + 1)]
            losses = [0.5 * w @ h @ w for w in ws]
            np.testing.assert_allclose(np.asarray(res.losses), losses, rtol=1e-10)
            assert res.steps == t


def test_momentum_matches_heavy_ball():
    with jax.enable_x64(True):
        task = _task()
        h, w0 = np.asarray(task.hessian), np.asarray(task.w0)
        eta, beta, t = 0.05, 0.7, 30
        opt = inner.momentum()
        res = inner.unroll(task, opt, opt.hparams(learning_rate=eta, momentum=beta), t)
        prev, w = w0.copy(), w0.copy()
        for _ in range(t):
            prev, w = w, w - eta * (h @ w) + beta * (w - prev)
        np.testing.assert_allclose(np.asarray(res.params), w, rtol=1e-10, atol=1e-14)


def test_preconditioned_updates_match_numpy():
    """``preconditioner=p``: GD ``w - eta p g``, heavy ball and Nesterov on ``p g``, on a
    pytree of parameters (one update) and on a quadratic (an unroll); ``p`` keeps the
    parameters' dtype."""
    with jax.enable_x64(True):
        params = {"a": jnp.asarray([1.0, -2.0]), "b": jnp.asarray([[0.5]])}
        grads = {"a": jnp.asarray([0.3, 0.1]), "b": jnp.asarray([[-1.0]])}
        p = {"a": jnp.asarray([2.0, 0.5]), "b": jnp.asarray([[4.0]], jnp.float32)}
        for opt in (inner.gd(preconditioner=p), inner.nesterov(preconditioner=p)):
            hp = (
                opt.hparams(learning_rate=0.1)
                if opt.name == "gd"
                else opt.hparams(learning_rate=0.1, momentum=0.5)
            )
            new, _ = opt.update(grads, opt.init(params, hp), params, hp)
            scale = 1.0 if opt.name == "gd" else 1.5  # Nesterov's first step: (1 + beta) g
            for k in params:
                expected = (
                    np.asarray(params[k]) - 0.1 * scale * np.asarray(p[k], np.float64) * grads[k]
                )
                np.testing.assert_allclose(np.asarray(new[k]), expected, rtol=1e-15)
                assert new[k].dtype == jnp.float64
        task = _task()
        h, w0 = np.asarray(task.hessian), np.asarray(task.w0)
        pv = np.linspace(0.5, 2.0, len(w0))
        eta, beta, t = 0.05, 0.7, 30
        opt = inner.momentum(preconditioner=jnp.asarray(pv))
        res = inner.unroll(task, opt, opt.hparams(learning_rate=eta, momentum=beta), t)
        prev, w = w0.copy(), w0.copy()
        for _ in range(t):
            prev, w = w, w - eta * pv * (h @ w) + beta * (w - prev)
        np.testing.assert_allclose(np.asarray(res.params), w, rtol=1e-10, atol=1e-14)


def test_adam_matches_numpy():
    with jax.enable_x64(True):
        task = _task()
        h, w = np.asarray(task.hessian), np.asarray(task.w0).copy()
        lr, b1, b2, eps, t = 0.01, 0.8, 0.99, 1e-8, 25
        opt = inner.adam()
        res = inner.unroll(task, opt, opt.hparams(learning_rate=lr, b1=b1, b2=b2, eps=eps), t)
        m, v = np.zeros_like(w), np.zeros_like(w)
        for k in range(1, t + 1):
            g = h @ w
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            w = w - lr * (m / (1 - b1**k)) / (np.sqrt(v / (1 - b2**k)) + eps)
        np.testing.assert_allclose(np.asarray(res.params), w, rtol=1e-9, atol=1e-14)


def test_sgd_matches_numpy_with_same_indices():
    with jax.enable_x64(True):
        task = _task()
        x, w = np.asarray(task.factor), np.asarray(task.w0).copy()
        n, b, eta, t = x.shape[1], 3, 0.01, 12
        key = jax.random.key(42)
        res = inner.unroll(task, inner.sgd(batch_size=b), jnp.asarray(eta), t, key)
        losses = []
        for k in jax.random.split(key, t):
            idx = np.asarray(jax.random.randint(k, (b,), 0, n))
            xb = x[:, idx]
            proj = w @ xb
            losses.append(0.5 * n * np.mean(proj**2))
            w = w - eta * n * (xb @ proj) / b
        np.testing.assert_allclose(np.asarray(res.params), w, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(np.asarray(res.losses[:-1]), losses, rtol=1e-10)
        np.testing.assert_allclose(float(res.losses[-1]), 0.5 * w @ np.asarray(task.hessian) @ w)


def test_unroll_is_a_scan_jaxpr_does_not_grow_with_steps():
    task = _task(dtype=jnp.float32)

    def size(t, opt, hp):
        jaxpr = str(jax.make_jaxpr(lambda h: inner.unroll(task, opt, h, t).final_loss)(hp))
        assert "scan" in jaxpr
        return len(re.sub(r"\d+", "", jaxpr))  # ignore the printed length/shape numbers

    for opt in (inner.gd(), inner.momentum(), inner.adam()):
        hp = opt.hparams()
        assert size(10, opt, hp) == size(1000, opt, hp)
