"""The noisy quadratic model: spectrum, noise statistics, and the task protocol end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, learned, tasks, truncated
from l2l_jax.inner.unroll import gradient_fn


def test_power_law_spectrum_and_init():
    task = tasks.NQM.power_law(jax.random.key(0), 5, power=2.0, scale=3.0, init_scale=0.5)
    np.testing.assert_allclose(task.curvature, 3.0 / np.arange(1, 6) ** 2, rtol=1e-6)
    assert task.dim == 5 and task.batch_shape == () and task.num_examples == 2**31 - 1
    w0 = task.init_params()
    assert w0.shape == (5,) and w0.dtype == jnp.float32
    np.testing.assert_array_equal(w0, task.init_params())  # the task's own init key
    other = task.init_params(jax.random.key(7))
    assert not np.allclose(w0, other)
    np.testing.assert_array_equal(task.with_init_key(jax.random.key(7)).init_params(), other)
    np.testing.assert_allclose(task.loss(w0), 0.5 * np.sum(task.curvature * w0**2), rtol=1e-6)
    np.testing.assert_allclose(task.scaled(10.0).curvature, 10 * task.curvature, rtol=1e-6)


def test_init_scale_sets_the_spread_of_w0():
    task = tasks.NQM.power_law(jax.random.key(0), 4, init_scale=0.1)
    keys = jax.random.split(jax.random.key(1), 4000)
    w0 = jax.vmap(task.init_params)(keys)
    n = w0.shape[0]
    # sample std of a Gaussian: relative standard error 1/sqrt(2(n-1)); 5 of them
    np.testing.assert_allclose(np.std(w0, axis=0), 0.1, rtol=5 / np.sqrt(2 * (n - 1)))


def test_minibatch_gradient_noise_follows_the_curvature():
    """E g = h w, Var g_i = noise_scale h_i / B, independent coordinates (Zhang et al.)."""
    task = tasks.NQM.power_law(jax.random.key(0), 6, power=1.0, scale=2.0, noise_scale=0.5)
    w = task.init_params()
    batch, n = 4, 20000
    keys = jax.random.split(jax.random.key(1), n)
    draw = jax.jit(jax.vmap(lambda k: task.sample_gradient(w, k, batch)))
    g = np.asarray(draw(keys), np.float64)
    var = np.asarray(task.gradient_variance(batch), np.float64)
    np.testing.assert_allclose(var, 0.5 * np.asarray(task.curvature) / batch, rtol=1e-6)
    # Mean: standard error sqrt(var / n); variance: sample variance of Gaussian data has
    # standard deviation var sqrt(2 / (n - 1)). Five standard errors each.
    mean_err = np.abs(g.mean(axis=0) - np.asarray(task.gradient(w)))
    assert np.all(mean_err <= 5 * np.sqrt(var / n)), (mean_err, np.sqrt(var / n))
    var_err = np.abs(g.var(axis=0, ddof=1) - var)
    assert np.all(var_err <= 5 * var * np.sqrt(2 / (n - 1))), var_err / var
    corr = np.corrcoef(g.T)[np.triu_indices(task.dim, 1)]
    assert np.all(np.abs(corr) <= 5 / np.sqrt(n)), corr


def test_sample_gradient_is_the_draw_the_core_makes():
    task = tasks.NQM.power_law(jax.random.key(0), 5)
    w, key = task.init_params(), jax.random.key(3)
    _, core = gradient_fn(task, 8)(w, key)
    # both eager: the same draw and the same ops on it, same host: bitwise
    np.testing.assert_array_equal(core, task.sample_gradient(w, key, 8))


def test_noiseless_gd_unroll_matches_numpy():
    with jax.enable_x64(True):
        task = tasks.NQM.power_law(jax.random.key(0), 7, power=1.5, dtype=jnp.float64)
        eta, steps = 1.3, 40
        res = inner.unroll(task, inner.gd(), jnp.asarray(eta), steps)
        h = np.asarray(task.curvature)
        w = np.asarray(task.init_params())
        losses = []
        for _ in range(steps + 1):
            losses.append(0.5 * np.sum(h * w**2))
            w = w - eta * h * w
        np.testing.assert_allclose(res.losses, losses, rtol=1e-12)
        np.testing.assert_allclose(res.params, (1 - eta * h) ** steps * task.init_params())


def test_sgd_unroll_matches_the_expected_loss():
    """Mean final loss of many SGD runs through inner.unroll = Zhang et al.'s closed form."""
    task = tasks.NQM.power_law(jax.random.key(0), 5, scale=1.0, noise_scale=1.0)
    eta, steps, batch, runs = 0.5, 30, 2, 4000
    opt = inner.sgd(batch_size=batch)
    final = jax.jit(
        jax.vmap(lambda k: inner.unroll(task, opt, jnp.asarray(eta), steps, k).final_loss)
    )(jax.random.split(jax.random.key(1), runs))
    final = np.asarray(final, np.float64)
    expected = float(task.sgd_expected_loss(task.init_params(), eta, steps, batch))
    tol = 5 * final.std(ddof=1) / np.sqrt(runs)
    assert abs(final.mean() - expected) <= tol, (final.mean(), expected, tol)


def test_truncated_meta_training_runs_on_the_nqm():
    task = tasks.NQM.power_law(jax.random.key(0), 4)
    config = truncated.TruncatedConfig(
        horizon=12, segment=4, meta_batch=2, batch_size=4, eval_batch_size=None
    )
    res = truncated.meta_train(
        task, learned.MLPLOpt(), config, 3, key=jax.random.key(0), progress=False
    )
    assert len(res.metrics) == 3 and res.nonfinite_count == 0
    assert all(np.isfinite(m["meta_loss"]) for m in res.metrics)
    # each run starts from its own w_0 (init_params takes a key)
    params = np.asarray(
        truncated.init_state(jax.random.key(0), task, learned.MLPLOpt(), config).inner.params
    )
    assert not np.allclose(params[0], params[1])


def test_jit_vmap_and_astype():
    task = tasks.NQM.power_law(jax.random.key(0), 3)
    loss = jax.jit(lambda t, w: t.loss(w))(task, jnp.ones(3))
    np.testing.assert_allclose(loss, 0.5 * np.sum(task.curvature), rtol=1e-6)
    batch = jax.vmap(lambda k: tasks.NQM.power_law(k, 3))(jax.random.split(jax.random.key(1), 2))
    assert batch.batch_shape == (2,)
    with jax.enable_x64(True):
        t64 = task.astype(jnp.float64)
        assert t64.dtype == jnp.float64 and t64.init_params().dtype == jnp.float64


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda k: tasks.NQM.power_law(k, 0), "dim"),
        (lambda k: tasks.NQM.power_law(k, 3, power=float("nan")), "power"),
        (lambda k: tasks.NQM.power_law(k, 3, scale=-1.0), "scale"),
        (lambda k: tasks.NQM.power_law(k, 3, noise_scale=-0.1), "noise_scale"),
        (lambda k: tasks.NQM.power_law(k, 3, init_scale=0.0), "init_scale"),
        (lambda k: tasks.NQM.from_curvature(k, [1.0, 0.0]), "curvature"),
        (lambda k: tasks.NQM.from_curvature(k, [1.0, np.inf]), "curvature"),
        (lambda k: tasks.NQM.from_curvature(k, np.ones((0,))), "curvature"),
        (lambda k: tasks.NQM(jnp.ones(2), init_key=k, noise_key=k, num_examples=0), "num_ex"),
        (lambda k: tasks.NQM.power_law(k, 2).scaled(0.0), "factor"),
        (lambda k: tasks.NQM.power_law(k, 2).replace(sigma=1.0), "unknown"),
        (lambda k: tasks.NQM.power_law(k, 2).gradient_variance(0), "batch_size"),
    ],
)
def test_bad_input_names_the_field(build, match):
    with pytest.raises(ValueError, match=match):
        build(jax.random.key(0))


def test_keys_must_be_keys():
    with pytest.raises(TypeError, match="init_key"):
        tasks.NQM(jnp.ones(2), init_key=0, noise_key=jax.random.key(0))
