"""tasks.LeastSquares, truncation (footnote 3), TbT/TbV (Eq. 3-4), task batches, SGD.

Float64 comparisons run inside ``jax.enable_x64(True)`` against NumPy re-implementations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, metagrad, objectives, tasks

D, N1, N2 = 8, 6, 5


def _task(seed=0, sigma=0.5, dtype=jnp.float64, n_valid=N2):
    return tasks.LeastSquares.sample(jax.random.key(seed), D, N1, n_valid, sigma, dtype)


def _batch(m=4, seed=1, sigma=0.5, dtype=jnp.float64):
    return tasks.LeastSquares.sample_batch(jax.random.key(seed), m, D, N1, N2, sigma, dtype)


def _np(task):
    return [np.asarray(getattr(task, f), np.float64) for f in ("x_train", "y_train")]


def _half_mse(x, y, w):
    return 0.5 * np.mean((y - x @ w) ** 2)


def _np_unroll(x, y, eta, t, max_norm=None, rows=None):
    """GD (``rows=None``) or SGD on the rows ``rows[k]`` at step k, with footnote 3."""
    w, losses, at = np.zeros(x.shape[1]), [], -1
    for tau in range(1, t + 1):
        xb, yb = (x, y) if rows is None else (x[rows[tau - 1]], y[rows[tau - 1]])
        losses.append(_half_mse(xb, yb, w))
        if at >= 0:
            continue  # frozen at R * w_at / ||w_at||
        w = w - eta * xb.T @ (xb @ w - yb) / len(yb)
        if max_norm is not None and np.linalg.norm(w) >= max_norm:
            w, at = max_norm * w / np.linalg.norm(w), tau
    losses.append(_half_mse(x, y, w))
    return w, np.asarray(losses), at


@functools.partial(jax.jit, static_argnums=2)
def _gd(task, eta, t, max_norm=None):
    """``inner.unroll`` of GD, jitted once per (shapes, t) for the tests."""
    return inner.unroll(task, inner.gd(), eta, t, max_norm=max_norm)


def _lipschitz(task) -> float:
    x, _ = _np(task)
    return float(np.linalg.eigvalsh(x.T @ x / len(x))[-1])


# -- sampling -----------------------------------------------------------------------------


def test_sample_shapes_unit_w_star_and_dtype():
    task = _task(dtype=jnp.float32)
    assert task.x_train.shape == (N1, D) and task.y_train.shape == (N1,)
    assert task.x_valid.shape == (N2, D) and task.y_valid.shape == (N2,)
    assert task.w_star.shape == (D,) and task.sigma.shape == ()
    assert task.dtype == jnp.float32 and task.dim == D and task.num_examples == N1
    assert task.batch_shape == ()
    np.testing.assert_allclose(np.linalg.norm(np.asarray(task.w_star)), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(task.init_params(), np.zeros(D))
    assert tasks.LeastSquares.sample(jax.random.key(0), D, N1, 0, 1.0).x_valid.shape == (0, D)


def test_sample_batch_is_vmap_of_per_key_samples():
    key, m = jax.random.key(3), 5
    batch = tasks.LeastSquares.sample_batch(key, m, D, N1, N2, 0.7)
    assert batch.batch_shape == (m,) and batch.x_train.shape == (m, N1, D)
    jitted = jax.jit(lambda k: tasks.LeastSquares.sample(k, D, N1, N2, 0.7))
    for i, k in enumerate(jax.random.split(key, m)):
        one = tasks.LeastSquares.sample(k, D, N1, N2, 0.7)
        for a, b, c in zip(
            jax.tree.leaves(batch[i]), jax.tree.leaves(one), jax.tree.leaves(jitted(k)), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=1e-6, atol=1e-6)
    norms = np.linalg.norm(np.asarray(batch.w_star), axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    assert len({float(v) for v in np.asarray(batch.w_star)[:, 0]}) == m  # distinct tasks


def test_noise_and_inputs_have_the_stated_distribution():
    with jax.enable_x64(True):
        sigma, n = 2.0, 40_000
        task = tasks.LeastSquares.sample(jax.random.key(7), 4, n, 10, sigma, jnp.float64)
        x, y = _np(task)
        noise = y - x @ np.asarray(task.w_star)
        assert abs(noise.mean()) < 0.05
        assert abs(noise.var() / sigma**2 - 1) < 0.03
        np.testing.assert_allclose(np.cov(x.T), np.eye(4), atol=0.03)
        noiseless = tasks.LeastSquares.sample(jax.random.key(7), 4, 50, 10, 0.0, jnp.float64)
        x0, y0 = _np(noiseless)
        np.testing.assert_allclose(y0, x0 @ np.asarray(noiseless.w_star), rtol=1e-12)


def test_losses_and_errors_against_numpy():
    with jax.enable_x64(True):
        task = _task()
        x, y = _np(task)
        xv, yv = np.asarray(task.x_valid), np.asarray(task.y_valid)
        w = np.linspace(-1, 1, D)
        np.testing.assert_allclose(float(task.loss(w)), _half_mse(x, y, w), rtol=1e-13)
        np.testing.assert_allclose(float(task.valid_loss(w)), _half_mse(xv, yv, w), rtol=1e-13)
        err = np.sum((w - np.asarray(task.w_star)) ** 2)
        np.testing.assert_allclose(float(task.test_error(w)), err, rtol=1e-13)
        np.testing.assert_allclose(float(task.test_rmse(w)), np.sqrt(err), rtol=1e-13)
        rmse = np.sqrt(np.mean((y - x @ w) ** 2))
        np.testing.assert_allclose(float(task.train_rmse(w)), rmse, rtol=1e-13)
        idx = np.array([0, 3, 3])
        np.testing.assert_allclose(
            float(task.batch_loss(w, idx)), _half_mse(x[idx], y[idx], w), rtol=1e-13
        )
        # unbiased: the mean over all single rows is the full loss
        singles = [float(task.batch_loss(w, np.array([i]))) for i in range(N1)]
        np.testing.assert_allclose(np.mean(singles), float(task.loss(w)), rtol=1e-12)


# -- GD unroll with truncation ------------------------------------------------------------


def test_gd_unroll_matches_numpy_without_truncation():
    with jax.enable_x64(True):
        task = _task()
        x, y = _np(task)
        eta, t = 0.5 / _lipschitz(task), 37
        expected_w, expected_losses, at = _np_unroll(x, y, eta, t)
        assert at == -1
        for max_norm in (None, 1e6):
            res = inner.unroll(task, inner.gd(), jnp.asarray(eta), t, max_norm=max_norm)
            np.testing.assert_allclose(np.asarray(res.params), expected_w, rtol=1e-10)
            np.testing.assert_allclose(np.asarray(res.losses), expected_losses, rtol=1e-10)
            assert int(res.truncated_at) == -1 and not bool(res.truncated)


def test_gd_unroll_truncates_mid_run_at_norm_r():
    with jax.enable_x64(True):
        task = _task(sigma=0.1)
        x, y = _np(task)
        radius = 40 * 0.1
        eta, t = 2.6 / _lipschitz(task), 40  # |1 - eta L| = 1.6: diverges
        expected_w, expected_losses, at = _np_unroll(x, y, eta, t, max_norm=radius)
        assert 2 <= at <= t - 10, at  # crosses mid-run
        for max_norm in (radius, lambda tk: 40 * tk.sigma):
            res = inner.unroll(task, inner.gd(), jnp.asarray(eta), t, max_norm=max_norm)
            assert int(res.truncated_at) == at and bool(res.truncated)
            np.testing.assert_allclose(np.asarray(res.params), expected_w, rtol=1e-10)
            np.testing.assert_allclose(np.asarray(res.losses), expected_losses, rtol=1e-10)
            np.testing.assert_allclose(np.linalg.norm(np.asarray(res.params)), radius, rtol=1e-14)
            # frozen: the loss is constant from step `at` on. The losses of w_at, ..., w_t
            # are of one w but computed by different code (the scan's body and, for the
            # last, task.loss after the scan): a few float64 ulps, not bitwise. Before the
            # truncation every step moves the loss by far more than that bound.
            losses = np.asarray(res.losses)
            bound = 4 * np.finfo(np.float64).eps * abs(losses[at])
            np.testing.assert_allclose(losses[at:], losses[at], rtol=0, atol=bound)
            assert np.all(np.abs(np.diff(losses[: at + 1])) > 1e6 * bound)
        # without truncation the same run blows up
        free = inner.unroll(task, inner.gd(), jnp.asarray(eta), t)
        assert np.linalg.norm(np.asarray(free.params)) > 1e6 * radius


def test_truncation_direction_is_that_of_the_first_crossing():
    with jax.enable_x64(True):
        task = _task(sigma=0.1)
        eta, t, radius = 2.6 / _lipschitz(task), 30, 4.0
        res = _gd(task, jnp.asarray(eta), t, jnp.asarray(radius))
        at = int(res.truncated_at)
        before = _gd(task, jnp.asarray(eta), at).params
        expected = radius * np.asarray(before) / np.linalg.norm(np.asarray(before))
        np.testing.assert_allclose(np.asarray(res.params), expected, rtol=1e-12)
        prev = _gd(task, jnp.asarray(eta), at - 1).params
        assert np.linalg.norm(np.asarray(prev)) < radius <= np.linalg.norm(np.asarray(before))


def test_truncation_vmaps_over_tasks():
    with jax.enable_x64(True):
        batch = _batch(m=6, sigma=0.1)
        eta = 2.6 / min(_lipschitz(batch[i]) for i in range(6))
        eta, radius = jnp.asarray(eta), jnp.asarray(4.0)
        res = jax.jit(jax.vmap(lambda tk: _gd(tk, eta, 25, radius)))(batch)
        assert res.truncated_at.shape == (6,)
        for i in range(6):
            one = _gd(batch[i], eta, 25, radius)
            assert int(res.truncated_at[i]) == int(one.truncated_at) >= 1
            np.testing.assert_allclose(np.asarray(res.params[i]), np.asarray(one.params))


# -- objectives and batches ---------------------------------------------------------------


@pytest.mark.parametrize("max_norm", [None, 4.0])
def test_tbt_tbv_against_numpy(max_norm):
    with jax.enable_x64(True):
        task = _task(sigma=0.1)
        x, y = _np(task)
        xv, yv = np.asarray(task.x_valid), np.asarray(task.y_valid)
        eta, t = (0.8 if max_norm is None else 2.6) / _lipschitz(task), 20
        w, _, at = _np_unroll(x, y, eta, t, max_norm=max_norm)
        assert (at >= 1) == (max_norm is not None)
        res = inner.unroll(task, inner.gd(), jnp.asarray(eta), t, max_norm=max_norm)
        np.testing.assert_allclose(float(objectives.tbt()(res)), _half_mse(x, y, w), rtol=1e-10)
        np.testing.assert_allclose(float(objectives.tbv()(res)), _half_mse(xv, yv, w), rtol=1e-10)
        for name, expected in (("tbt", _half_mse(x, y, w)), ("tbv", _half_mse(xv, yv, w))):
            F = metagrad.meta_objective(task, inner.gd(), name, steps=t, max_norm=max_norm)
            np.testing.assert_allclose(float(F(jnp.asarray(eta))), expected, rtol=1e-10)


def test_batched_meta_objective_is_the_mean_over_tasks():
    """Eq. 3-4: F = (1/m) sum_k Delta(eta, P_k); forward mode is checked in the next test."""
    with jax.enable_x64(True):
        batch, t, radius = _batch(m=5, sigma=0.1), 15, 4.0
        eta = jnp.asarray(1.9 / np.mean([_lipschitz(batch[i]) for i in range(5)]))
        for name in ("tbt", "tbv"):
            F = metagrad.meta_objective(
                batch, inner.gd(), name, steps=t, max_norm=radius, batched=True
            )
            objective = objectives.resolve(name)
            one = lambda e, tk: objective(  # noqa: B023
                inner.unroll(tk, inner.gd(), e, t, max_norm=radius)
            )
            one = jax.jit(jax.value_and_grad(one))
            values, grads = zip(*[one(eta, batch[i]) for i in range(5)], strict=True)
            value, meta_grad = jax.value_and_grad(F)(eta)
            np.testing.assert_allclose(float(value), np.mean(values), rtol=1e-12)
            np.testing.assert_allclose(float(meta_grad), np.mean(grads), rtol=1e-9)


@functools.partial(jax.jit, static_argnums=2)
def _truncated_at(batch, eta, t, radius):
    run = lambda tk: inner.unroll(tk, inner.gd(), eta, t, max_norm=radius).truncated_at
    return jax.vmap(run)(batch)


def _truncation_steps(batch, eta, t, radius):
    return np.asarray(_truncated_at(batch, jnp.asarray(eta), t, jnp.asarray(radius)))


@pytest.mark.parametrize("scale", [0.6, 2.4])  # no truncation / truncated on some tasks
def test_meta_gradients_autodiff_forward_and_central_differences(scale):
    with jax.enable_x64(True):
        batch, t, radius, h = _batch(m=4, sigma=0.1), 25, 4.0, 1e-6
        eta = scale / np.mean([_lipschitz(batch[i]) for i in range(4)])
        at = _truncation_steps(batch, eta, t, radius)
        assert (at >= 1).any() == (scale > 1)
        # away from the kink: every task truncates at the same step at eta +- h
        for e in (eta - h, eta + h):
            np.testing.assert_array_equal(_truncation_steps(batch, e, t, radius), at)
        for name in ("tbt", "tbv"):
            fs = {
                g: metagrad.meta_objective(
                    batch, inner.gd(), name, steps=t, grad=g, max_norm=radius, batched=True
                )
                for g in ("autodiff", "forward")
            }
            auto = float(jax.grad(fs["autodiff"])(jnp.asarray(eta)))
            fwd = float(jax.grad(fs["forward"])(jnp.asarray(eta)))
            F = fs["autodiff"]
            fd = (float(F(jnp.asarray(eta + h))) - float(F(jnp.asarray(eta - h)))) / (2 * h)
            np.testing.assert_allclose(fwd, auto, rtol=1e-10)
            np.testing.assert_allclose(auto, fd, rtol=1e-5, atol=1e-9)
            assert abs(auto) > 1e-6  # a non-trivial check


# -- single-sample SGD (Appendix D) ---------------------------------------------------------


def _sgd_rows(key, t, n, batch_size=1):
    """The index draws of ``inner.unroll``: ``split(key, t)``, then ``randint`` per step."""
    return [
        np.asarray(jax.random.randint(k, (batch_size,), 0, n)) for k in jax.random.split(key, t)
    ]


@pytest.mark.parametrize("max_norm", [None, 4.0])
def test_single_sample_sgd_matches_numpy_same_sample_sequence(max_norm):
    with jax.enable_x64(True):
        task = _task(sigma=0.1)
        x, y = _np(task)
        xv, yv = np.asarray(task.x_valid), np.asarray(task.y_valid)
        key, t = jax.random.key(11), 50
        eta = 0.3 if max_norm is None else 3.0
        rows = _sgd_rows(key, t, N1)
        w, losses, at = _np_unroll(x, y, eta, t, max_norm=max_norm, rows=rows)
        assert (at >= 1) == (max_norm is not None)
        opt = inner.sgd(batch_size=1)
        res = inner.unroll(task, opt, jnp.asarray(eta), t, key, max_norm=max_norm)
        assert int(res.truncated_at) == at
        np.testing.assert_allclose(np.asarray(res.params), w, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(np.asarray(res.losses), losses, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(float(objectives.tbt()(res)), _half_mse(x, y, w), rtol=1e-10)
        np.testing.assert_allclose(float(objectives.tbv()(res)), _half_mse(xv, yv, w), rtol=1e-10)
        F = metagrad.meta_objective(task, opt, "tbv", steps=t, key=key, max_norm=max_norm)
        np.testing.assert_allclose(float(F(jnp.asarray(eta))), _half_mse(xv, yv, w), rtol=1e-10)


def test_single_sample_sgd_on_a_batch_both_objectives():
    with jax.enable_x64(True):
        batch, key, t, eta = _batch(m=3), jax.random.key(5), 20, jnp.asarray(0.2)
        keys = jax.random.split(key, 3)
        for name in ("tbt", "tbv"):
            fs = [
                metagrad.meta_objective(
                    batch, inner.sgd(), name, steps=t, grad=g, key=key, batched=True
                )
                for g in ("autodiff", "forward")
            ]
            per_task = []
            for i in range(3):  # NumPy, on the index draws of key i = split(key, m)[i]
                x, y = _np(batch[i])
                w, _, _ = _np_unroll(x, y, float(eta), t, rows=_sgd_rows(keys[i], t, N1))
                if name == "tbv":
                    x, y = np.asarray(batch[i].x_valid), np.asarray(batch[i].y_valid)
                per_task.append(_half_mse(x, y, w))
            (v_auto, g_auto), (v_fwd, g_fwd) = (jax.value_and_grad(f)(eta) for f in fs)
            np.testing.assert_allclose(float(v_auto), np.mean(per_task), rtol=1e-12)
            np.testing.assert_allclose(float(v_fwd), np.mean(per_task), rtol=1e-12)
            assert np.isfinite(float(g_auto)) and abs(float(g_auto)) > 0
            np.testing.assert_allclose(float(g_fwd), float(g_auto), rtol=1e-10)


# -- invalid input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"d": 0}, ValueError, "d must be a positive integer"),
        ({"d": 2.5}, TypeError, "d must be a positive integer"),
        ({"n_train": 0}, ValueError, "n_train must be a positive integer"),
        ({"n_valid": -1}, ValueError, "n_valid must be a non-negative integer"),
        ({"n_valid": 1.0}, TypeError, "n_valid must be a non-negative integer"),
        ({"sigma": -0.1}, ValueError, "sigma must be a finite scalar >= 0"),
        ({"sigma": float("nan")}, ValueError, "sigma must be a finite scalar >= 0"),
        ({"sigma": "1"}, TypeError, "sigma must be a number"),
    ],
)
def test_bad_sample_arguments(kwargs, error, pattern):
    args = {"d": D, "n_train": N1, "n_valid": N2, "sigma": 1.0, **kwargs}
    with pytest.raises(error, match=pattern):
        tasks.LeastSquares.sample(jax.random.key(0), **args)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="m must be a positive integer"):
        tasks.LeastSquares.sample_batch(jax.random.key(0), 0, D, N1, N2, 1.0)


_GOOD = {
    "x_train": np.ones((3, 2)),
    "y_train": np.ones(3),
    "x_valid": np.ones((4, 2)),
    "y_valid": np.ones(4),
    "w_star": np.ones(2),
    "sigma": 1.0,
}


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("x_train", np.ones((3, 5)), r"x_train must have shape"),
        ("x_train", np.ones(3), r"x_train must have shape"),
        ("x_train", np.ones((0, 2)), r"x_train must have at least 1 row"),
        ("y_train", np.ones(4), r"y_train must have shape \(3,\)"),
        ("x_valid", np.ones((4, 3)), r"x_valid must have shape"),
        ("y_valid", np.ones((4, 1)), r"y_valid must have shape \(4,\)"),
        ("w_star", np.ones(()), r"w_star must have shape \(d,\)"),
        ("sigma", np.ones(2), r"sigma must be a scalar per task"),
        ("sigma", -1.0, r"sigma must be >= 0"),
        ("x_train", np.full((3, 2), np.nan), r"x_train must be finite"),
        ("y_valid", np.full(4, np.inf), r"y_valid must be finite"),
    ],
)
def test_bad_direct_construction(field, value, pattern):
    with pytest.raises(ValueError, match=pattern):
        tasks.LeastSquares(**{**_GOOD, field: value})


def test_direct_construction_of_a_batch_and_string_input():
    stacked = {k: np.stack([np.asarray(v)] * 2) for k, v in _GOOD.items()}
    assert tasks.LeastSquares(**stacked).batch_shape == (2,)
    with pytest.raises(TypeError, match="w_star must be an array of floats"):
        tasks.LeastSquares(**{**_GOOD, "w_star": "abc"})


def test_batch_needs_batched_true_and_unroll_needs_one_task():
    batch = _batch(dtype=jnp.float32)
    with pytest.raises(ValueError, match="pass batched=True"):
        metagrad.meta_objective(batch, inner.gd(), "tbt", steps=3)
    with pytest.raises(ValueError, match="unroll runs one task"):
        inner.unroll(batch, inner.gd(), jnp.asarray(0.1), 3)
    nested = tasks.LeastSquares(**{k: np.ones((3, 2, *np.shape(v))) for k, v in _GOOD.items()})
    with pytest.raises(ValueError, match="one leading task axis"):
        metagrad.meta_objective(nested, inner.gd(), "tbt", steps=3, batched=True)
    with pytest.raises(ValueError, match="one leading task axis, got a single task"):
        metagrad.meta_objective(_task(dtype=jnp.float32), inner.gd(), "tbt", steps=3, batched=True)
    ragged = {"a": jnp.ones((2, 3)), "b": jnp.ones(3)}  # any pytree: leading axes checked
    with pytest.raises(ValueError, match="same leading"):
        metagrad.meta_objective(ragged, inner.gd(), "log_loss", steps=3, batched=True)
    with pytest.raises(IndexError, match="single task"):
        _task(dtype=jnp.float32)[0]


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [({"batched": True}, "got batched=True"), ({"max_norm": 4.0}, "got max_norm")],
)
def test_stable_rejects_batches_and_truncation(kwargs, pattern):
    task = _batch(dtype=jnp.float32) if kwargs.get("batched") else _task(dtype=jnp.float32)
    with pytest.raises(ValueError, match=f"{pattern}.*grad='autodiff' or grad='forward'"):
        metagrad.meta_objective(task, inner.gd(), "tbt", steps=3, grad="stable", **kwargs)


@pytest.mark.parametrize(
    ("max_norm", "error", "pattern"),
    [
        (0.0, ValueError, "max_norm must be > 0"),
        (-2.0, ValueError, "max_norm must be > 0"),
        (float("nan"), ValueError, "max_norm must be > 0"),
        (np.ones(2), TypeError, "max_norm must be a positive scalar"),
        (lambda tk: -tk.sigma, ValueError, "max_norm must be > 0"),
    ],
)
def test_bad_max_norm(max_norm, error, pattern):
    with pytest.raises(error, match=pattern):
        inner.unroll(_task(dtype=jnp.float32), inner.gd(), jnp.asarray(0.1), 3, max_norm=max_norm)


def test_tbv_needs_validation_data():
    res = inner.unroll(_task(dtype=jnp.float32, n_valid=0), inner.gd(), jnp.asarray(0.1), 3)
    with pytest.raises(ValueError, match="n_valid = 0"):
        objectives.tbv()(res)
    quad = tasks.Quadratic(hessian=jnp.eye(2), w0=jnp.ones(2))
    with pytest.raises(TypeError, match="objective 'tbv' needs a task with a validation set"):
        objectives.tbv()(inner.unroll(quad, inner.gd(), jnp.asarray(0.1), 3))
    assert isinstance(objectives.resolve("tbt"), objectives.TrainByTrain)
    assert isinstance(objectives.resolve("tbv"), objectives.TrainByValidation)
