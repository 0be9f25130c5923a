"""Persistent evolution strategies (Vicol et al. 2021): unbiased across truncations.

The problem: heavy-ball momentum on a 4-d quadratic, meta-learning (learning rate,
momentum) with the mean loss over a horizon of 20 steps, truncated into segments of 6
steps (so a run restarts inside a segment). Full-batch and one fixed start, so the
full-horizon meta-gradient is an exact, independent computation (a hand-written unroll
under ``jax.grad``), and the estimators' only noise is their perturbations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import inner, tasks, truncated
from l2l_jax.truncated import es

H = jnp.asarray([1.0, 0.3, 0.1, 0.03])
TASK = tasks.Quadratic.from_spectrum(H, jnp.ones(4))
OPT = inner.momentum()
THETA = OPT.hparams(learning_rate=0.2, momentum=0.9)
T, K = 20, 6
CYCLE = 10  # lcm(T, K) / K segments: every step of 3 whole runs, once


def full_horizon_gradient(theta) -> np.ndarray:
    """d/d(eta, beta) of (1/T) sum_{t=1..T} f(w_t), v <- g + beta v, w <- w - eta v."""

    def mean_loss(th):
        def body(carry, _):
            w, v = carry
            v = jax.grad(TASK.loss)(w) + th["momentum"] * v
            w = w - th["learning_rate"] * v
            return (w, v), TASK.loss(w)

        w0 = TASK.init_params()
        _, losses = jax.lax.scan(body, (w0, jnp.zeros_like(w0)), None, length=T)
        return jnp.mean(losses)

    g = jax.grad(mean_loss)(theta)
    return np.asarray([g["learning_rate"], g["momentum"]], np.float64)


@functools.cache
def estimator_step(estimator: str, meta_batch: int, pairs: int):
    """``(config, jitted (state, key) -> estimate at THETA)``, one per setting: a test's
    own further steps reuse the program :func:`estimate` compiled."""
    settings = {} if estimator == "tbptt" else {"pairs": pairs}
    cfg = truncated.TruncatedConfig(
        horizon=T,
        segment=K,
        meta_batch=meta_batch,
        objective="tbt",
        eval_batch_size=None,
        estimator=truncated.ESTIMATORS[estimator](**settings),
        stagger=False,
    )
    est = cfg.estimator
    return cfg, jax.jit(lambda s, k: est.gradient(THETA, s, k, TASK, OPT, cfg))


def estimate(estimator: str, segments: int = CYCLE, meta_batch: int = 256, pairs: int = 4):
    """The mean of ``segments`` consecutive estimates at fixed ``THETA`` (no updates)."""
    cfg, step = estimator_step(estimator, meta_batch, pairs)
    state = truncated.init_state(jax.random.key(0), TASK, OPT, cfg, meta_params=THETA)
    runs, total = state.inner, np.zeros(2)
    for i in range(segments):
        _, g, runs, _ = step(runs, jax.random.fold_in(jax.random.key(1), i))
        total += np.asarray([g["learning_rate"], g["momentum"]], np.float64)
    return total / segments, runs, cfg


def cosine(a, b) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_pes_is_unbiased_where_truncated_estimators_are_not():
    """Averaged over consecutive truncations, PES agrees with the full-horizon gradient;
    TBPTT and truncated ES, on the same problem, are off by a large, systematic bias
    (they even get the sign of the learning-rate component wrong). The numbers are on
    docs/meta_training.md."""
    full = full_horizon_gradient(THETA)
    pes_g = estimate("pes")[0]
    assert cosine(pes_g, full) >= 0.95
    # its noise at 1024 pairs: 1-4% of |full| over 4 keys; the bias of the others: 65%
    assert np.linalg.norm(pes_g - full) <= 0.15 * np.linalg.norm(full)
    for name in ("tbptt", "es"):
        g = estimate(name, meta_batch=128 if name == "es" else 1)[0]
        assert np.linalg.norm(g - full) >= 0.5 * np.linalg.norm(full), name
        assert np.sign(g[0]) != np.sign(full[0]), name


def test_pes_accumulator_follows_the_runs():
    """xi sums the perturbations of the current runs: after segment 3 (steps 18-23, the
    run restarts after step 19) it is the last segment's perturbation alone; before, the
    sum of all; and both runs of a pair restart together."""
    _, state, cfg = estimate("pes", segments=3, meta_batch=2, pairs=2)

    def deltas(i):
        key = jax.random.fold_in(jax.random.key(1), i)
        keys = jax.random.split(key, cfg.meta_batch)
        eps = jax.vmap(lambda k: es.tree_normal(k, THETA, (cfg.estimator.pairs,)))(keys)
        return jax.tree.map(lambda e: cfg.estimator.sigma * e, eps)

    summed = jax.tree.map(lambda *d: sum(d), *(deltas(i) for i in range(3)))
    for a, b in zip(jax.tree.leaves(state.accumulator), jax.tree.leaves(summed), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    assert np.all(np.asarray(state.runs.step) == 18)
    step = estimator_step("pes", 2, 2)[1]  # the program estimate ran: no second compile
    _, _, after, _ = step(state, jax.random.fold_in(jax.random.key(1), 3))
    last = deltas(3)
    for a, b in zip(jax.tree.leaves(after.accumulator), jax.tree.leaves(last), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(np.asarray(after.runs.step) == 4)  # restarted, 4 steps into the new run
    plus, minus = after.runs.params[:, :, 0], after.runs.params[:, :, 1]
    assert not np.allclose(plus, minus)  # perturbed differently, same step and key
    np.testing.assert_array_equal(after.runs.key[:, :, 0], after.runs.key[:, :, 1])
