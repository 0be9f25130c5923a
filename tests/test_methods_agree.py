"""autodiff, forward and stable meta-gradients agree where all are finite (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, metagrad, objectives, tasks


def _task():
    return tasks.Quadratic.random(jax.random.key(1), 20, scale=0.5, dtype=jnp.float64)


def _rel(a, b):
    return abs(float(a) - float(b)) / abs(float(b))


@pytest.mark.parametrize("t", [1, 10, 80])
def test_gd_three_methods_agree(t):
    with jax.enable_x64(True):
        task = _task()
        big_l = float(task.smoothness)
        fs = {
            g: metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=t, grad=g)
            for g in metagrad.METHODS
        }
        for frac in (0.1, 0.7, 1.0, 1.5):
            eta = jnp.asarray(frac / big_l)
            out = {g: jax.value_and_grad(f)(eta) for g, f in fs.items()}
            v_ad, g_ad = out["autodiff"]
            assert np.isfinite(float(g_ad))
            for g in ("forward", "stable"):
                v, d = out[g]
                assert _rel(v, v_ad) <= 1e-8, (g, t, frac)
                assert _rel(d, g_ad) <= 1e-8, (g, t, frac, float(d), float(g_ad))


def _central_fd(f, hp, name, h):
    up = {**hp, name: hp[name] + h}
    down = {**hp, name: hp[name] - h}
    return (float(f(up)) - float(f(down))) / (2 * h)


@pytest.mark.parametrize(
    ("opt", "values"),
    [
        (inner.momentum(), dict(learning_rate=0.01, momentum=0.6)),
        (inner.adam(), dict(learning_rate=0.01, b1=0.8, b2=0.95, eps=1e-3)),
    ],
)
def test_momentum_adam_autodiff_forward_and_finite_differences(opt, values):
    with jax.enable_x64(True):
        task = _task()
        hp = opt.hparams(**{k: jnp.asarray(v, jnp.float64) for k, v in values.items()})
        f_ad = metagrad.meta_objective(task, opt, objectives.log_loss(), steps=15, grad="autodiff")
        f_fw = metagrad.meta_objective(task, opt, objectives.log_loss(), steps=15, grad="forward")
        v_ad, g_ad = jax.value_and_grad(f_ad)(hp)
        v_fw, g_fw = jax.value_and_grad(f_fw)(hp)
        assert _rel(v_fw, v_ad) <= 1e-12
        for name in opt.hparam_names:
            assert _rel(g_fw[name], g_ad[name]) <= 1e-8, name
            h = 1e-5 * float(hp[name])
            fd = _central_fd(f_ad, hp, name, h)
            assert abs(float(g_ad[name]) - fd) <= 1e-5 * abs(fd) + 1e-9, (name, g_ad[name], fd)


@pytest.mark.parametrize("n_train", [5, 12])  # under- (n < d = 8) and over-determined
def test_least_squares_stable_agrees_with_unroll(n_train):
    """grad="stable" on tasks.LeastSquares (untruncated TbT, log space) = the unroll."""
    with jax.enable_x64(True):
        task = tasks.LeastSquares.sample(jax.random.key(2), 8, n_train, 0, 0.5, jnp.float64)
        for objective in ("tbt", "log_loss"):
            for t in (5, 60):
                eta = jnp.asarray(0.3)
                ref = jax.value_and_grad(
                    metagrad.meta_objective(task, inner.gd(), objective, steps=t)
                )(eta)
                got = jax.value_and_grad(
                    metagrad.meta_objective(task, inner.gd(), objective, steps=t, grad="stable")
                )(eta)
                np.testing.assert_allclose(got, ref, rtol=1e-8)
