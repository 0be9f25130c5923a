"""Hypergradient descent and towers (l2l_jax.hyper) against closed forms and finite
differences; jit, scan and checkpointing of the state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from l2l_jax import hyper

A = np.diag([1.0, 3.0, 0.5])


def _f(w):
    return 0.5 * w @ jnp.asarray(A, w.dtype) @ w + jnp.sum(jnp.sin(w))


def _grad_np(w):
    return A @ w + np.cos(w)


W0 = np.array([1.0, -2.0, 0.5])


def _run(tx, steps, w0=W0):
    w = jnp.asarray(w0)
    state = tx.init(w)
    states = []
    for _ in range(steps):
        u, state = tx.update(jax.grad(_f)(w), state, w)
        w = optax.apply_updates(w, u)
        states.append(state)
    return w, states


@pytest.mark.parametrize("constraint", ["none", "positive"])
def test_sgd_tuned_by_sgd_is_baydin_closed_form(constraint):
    """Hypergradient = -grad f(w_t) . grad f(w_{t-1}) (Baydin et al. 2018), w.r.t. raw."""
    kappa, alpha0 = 0.01, 0.1
    with jax.enable_x64(True):
        tx = hyper.hyper(
            optax.sgd,
            {"learning_rate": alpha0},
            optax.sgd(kappa),
            constraints={"learning_rate": constraint},
        )
        w, states = _run(tx, 6)
    raw = alpha0 if constraint == "none" else np.log(alpha0)
    wn, g_prev = W0.copy(), np.zeros(3)
    for state in states:
        g = _grad_np(wn)
        alpha = raw if constraint == "none" else np.exp(raw)
        hg = -(g @ g_prev) * (1.0 if constraint == "none" else alpha)  # chain rule for exp
        np.testing.assert_allclose(
            float(state.hypergrad["learning_rate"]), hg, rtol=1e-12, atol=1e-15
        )
        raw = raw - kappa * hg
        alpha = raw if constraint == "none" else np.exp(raw)
        np.testing.assert_allclose(float(state.raw["learning_rate"]), raw, rtol=1e-12)
        wn, g_prev = wn - alpha * g, g
    np.testing.assert_allclose(np.asarray(w), wn, rtol=1e-12)


def test_warmed_sgd_tuned_by_sgd_is_scaled_baydin_closed_form():
    """With ``with_warmup``, u_t = -omega_t alpha_t g_t, omega_t = min(1, t / K), and the
    hypergradient is that of the update taken: -omega_{t-1} g_t . g_{t-1}."""
    kappa, alpha0, steps = 0.01, 0.1, 3
    with jax.enable_x64(True):
        tx = hyper.hyper(
            hyper.with_warmup(optax.sgd, steps),
            {"learning_rate": alpha0},
            optax.sgd(kappa),
            constraints={"learning_rate": "none"},
        )
        w, states = _run(tx, 6)
    alpha, wn, g_prev, omega_prev = alpha0, W0.copy(), np.zeros(3), 0.0
    for t, state in enumerate(states, start=1):
        g = _grad_np(wn)
        hg = -omega_prev * (g @ g_prev)
        np.testing.assert_allclose(
            float(state.hypergrad["learning_rate"]), hg, rtol=1e-12, atol=1e-15
        )
        alpha = alpha - kappa * hg
        omega = min(1.0, t / steps)
        wn, g_prev, omega_prev = wn - omega * alpha * g, g, omega
    np.testing.assert_allclose(np.asarray(w), wn, rtol=1e-12)


def test_with_warmup_is_optax_linear_warmup_and_off_by_default():
    """Plain (inject_hyperparams) Adam with the warm-up = optax Adam whose learning rate
    follows min(1, t / K); steps = 0 is the factory itself; Ma & Yarats's length."""
    assert hyper.with_warmup(optax.adam, 0) is optax.adam
    assert hyper.untuned_warmup_steps(0.999) == 2000
    assert hyper.untuned_warmup_steps(0.99) == 200
    lr, steps = 0.05, 4
    warmed = optax.inject_hyperparams(hyper.with_warmup(optax.adam, steps))(learning_rate=lr)
    ref = optax.adam(lambda count: lr * jnp.minimum(1.0, (count + 1.0) / steps))
    with jax.enable_x64(True):  # (init inside: the injected lr is then float64 too)
        w1 = w2 = jnp.asarray(W0)
        s1, s2 = warmed.init(w1), ref.init(w2)
        for _ in range(6):
            u1, s1 = warmed.update(jax.grad(_f)(w1), s1, w1)
            u2, s2 = ref.update(jax.grad(_f)(w2), s2, w2)
            np.testing.assert_allclose(u1, u2, rtol=1e-12)
            w1, w2 = optax.apply_updates(w1, u1), optax.apply_updates(w2, u2)
    w = jnp.asarray(W0, jnp.float32)
    assert warmed.update(jax.grad(_f)(w), warmed.init(w), w)[0].dtype == jnp.float32
    with pytest.raises(ValueError, match="warm-up steps"):
        hyper.with_warmup(optax.adam, -1)


def test_adam_hypergradients_match_finite_differences():
    """d f(w_t) / d raw_k of the previous update, by central differences of that update."""
    init = {"learning_rate": 0.05, "b1": 0.8, "b2": 0.95, "eps": 1e-3}
    with jax.enable_x64(True):
        tx = hyper.hyper(optax.adam, init, optax.sgd(0.0))  # frozen: raw stays at init
        _, states = _run(tx, 3)
        # The last call's hypergradient is that of u_1, computed by the second call from
        # states[0] at w_1 (the iterate after one step).
        prev = states[0]
        w_prev, _ = _run(tx, 1)
        g_prev = jax.grad(_f)(w_prev)
        inner_tx = optax.inject_hyperparams(optax.adam)(**init)

        def loss_after(raw):
            values = hyper.constrain(raw)
            inner = prev.inner._replace(hyperparams={**prev.inner.hyperparams, **values})
            u, _ = inner_tx.update(g_prev, inner, w_prev)
            return _f(optax.apply_updates(w_prev, u))

        got = states[-1].hypergrad
        for k in init:
            h = 1e-5
            plus = {**prev.raw, k: prev.raw[k] + h}
            minus = {**prev.raw, k: prev.raw[k] - h}
            fd = (loss_after(plus) - loss_after(minus)) / (2 * h)
            np.testing.assert_allclose(float(got[k]), float(fd), rtol=1e-6, atol=1e-10)


def test_tower_second_level_is_closed_form():
    """SGD/SGD/SGD with direct parametrization: level 2's hypergradient is
    -hg1_t . hg1_{t-1}, the same closed form one level up."""
    with jax.enable_x64(True):
        none = {"learning_rate": "none"}
        level2 = hyper.hyper(optax.sgd, {"learning_rate": 1e-3}, optax.sgd(1e-4), constraints=none)
        tx = hyper.hyper(optax.sgd, {"learning_rate": 0.1}, level2, constraints=none)
        _, states = _run(tx, 5)
    hg1 = [float(s.hypergrad["learning_rate"]) for s in states]
    hg2 = [float(s.outer.hypergrad["learning_rate"]) for s in states]
    for t in range(1, 5):
        np.testing.assert_allclose(hg2[t], -hg1[t] * hg1[t - 1], rtol=1e-12, atol=1e-300)
    assert float(states[-1].outer.raw["learning_rate"]) != 1e-3  # level 2 moved


def test_tower_expression_and_constraints():
    tx = hyper.tower(
        (optax.adam, {"learning_rate": 1e-2, "b1": 0.9, "b2": 0.999}),
        (optax.adam, {"learning_rate": 1e-2}),
        optax.sgd(1e-3),
    )
    w, states = _run(tx, 30)
    h = hyper.hyperparams(states[-1])
    assert h["learning_rate"] > 0 and 0 < h["b1"] < 1 and 0 < h["b2"] < 1
    assert isinstance(states[-1].outer, hyper.HyperState)
    assert float(_f(w)) < float(_f(jnp.asarray(W0)))


def test_scan_equals_python_loop_and_checkpoint_roundtrip(tmp_path):
    tx = hyper.tower((optax.sgd, {"learning_rate": 0.05}), optax.adam(1e-2))
    w0 = jnp.asarray(W0, jnp.float32)

    def body(carry, _):
        w, s = carry
        u, s = tx.update(jax.grad(_f)(w), s, w)
        return (optax.apply_updates(w, u), s), hyper.hyperparams(s)["learning_rate"]

    (w_scan, s_scan), lrs = jax.jit(lambda c: jax.lax.scan(body, c, None, length=20))(
        (w0, tx.init(w0))
    )
    step = jax.jit(body)
    carry = (w0, tx.init(w0))
    for _ in range(20):
        carry, _ = step(carry, None)
    np.testing.assert_allclose(w_scan, carry[0], rtol=1e-6)
    assert lrs.shape == (20,) and np.all(np.isfinite(lrs)) and float(lrs[-1]) != 0.05
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "state", s_scan)
    ckpt.wait_until_finished()
    restored = ckpt.restore(tmp_path / "state", target=s_scan)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(s_scan), strict=True):
        np.testing.assert_array_equal(a, b)
    u1, _ = tx.update(jax.grad(_f)(w_scan), s_scan, w_scan)
    u2, _ = tx.update(jax.grad(_f)(w_scan), restored, w_scan)
    np.testing.assert_array_equal(u1, u2)  # restored state, same program, same host: bitwise


@pytest.mark.parametrize("constraint", ["none", "positive"])
def test_hyperparams_reports_the_applied_learning_rate(constraint):
    """hyperparams(state) = the learning rate of Baydin's SGD-HD recursion, computed here
    independently, under every constraint, also inside an optax.chain."""
    kappa, alpha0 = 0.002, 0.05
    with jax.enable_x64(True):
        tx = optax.chain(
            optax.identity(),
            hyper.hyper(
                optax.sgd,
                {"learning_rate": alpha0},
                optax.sgd(kappa),
                constraints={"learning_rate": constraint},
            ),
        )
        w = jnp.asarray(W0)
        state = tx.init(w)
        np.testing.assert_allclose(float(hyper.hyperparams(state)["learning_rate"]), alpha0)
        wn, g_prev, raw = W0.copy(), np.zeros(3), alpha0 if constraint == "none" else np.log(alpha0)
        for _ in range(5):
            u, state = tx.update(jax.grad(_f)(w), state, w)
            w = optax.apply_updates(w, u)
            g = _grad_np(wn)
            alpha = raw if constraint == "none" else np.exp(raw)
            raw = raw + kappa * (g @ g_prev) * (1.0 if constraint == "none" else alpha)
            alpha = raw if constraint == "none" else np.exp(raw)
            wn, g_prev = wn - alpha * g, g
            got = float(hyper.hyperparams(state)["learning_rate"])
            np.testing.assert_allclose(got, alpha, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(w), wn, rtol=1e-12)
        assert abs(alpha - alpha0) > 1e-6  # the learning rate moved
    with pytest.raises(ValueError, match="exactly one"):
        hyper.hyperparams((state, state))


def test_invalid_inputs_name_the_field():
    with pytest.raises(TypeError, match=r"init\['learning_rate'\] must be a number"):
        hyper.hyper(
            optax.sgd, {"learning_rate": optax.linear_schedule(0.1, 0.0, 10)}, optax.sgd(1e-3)
        )
    with pytest.raises(TypeError, match=r"init\['learning_rate'\] must be a number"):
        hyper.hyper(optax.sgd, {"learning_rate": True}, optax.sgd(1e-3))
    with pytest.raises(ValueError, match=r"init\['learning_rate'\] must be finite"):
        hyper.hyper(
            optax.sgd,
            {"learning_rate": float("inf")},
            optax.sgd(1e-3),
            constraints={"learning_rate": "none"},
        )
    with pytest.raises(ValueError, match="learn must name"):
        hyper.hyper(optax.sgd, {"learning_rate": 0.1}, optax.sgd(1e-3), learn=("momentum",))
    with pytest.raises(ValueError, match=r"init\['b1'\] must be in \(0, 1\)"):
        hyper.hyper(optax.adam, {"learning_rate": 0.1, "b1": 1.0}, optax.sgd(1e-3))
    with pytest.raises(ValueError, match="constraint for 'learning_rate'"):
        hyper.hyper(
            optax.sgd, {"learning_rate": 0.1}, optax.sgd(1e-3), constraints={"learning_rate": "log"}
        )
    with pytest.raises(ValueError, match="tower needs"):
        hyper.tower((optax.sgd, {"learning_rate": 0.1}))
    tx = hyper.hyper(optax.sgd, {"learning_rate": 0.1}, optax.sgd(1e-3))
    w = jnp.ones(3)
    with pytest.raises(ValueError, match="need params"):
        tx.update(w, tx.init(w))
