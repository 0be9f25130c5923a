"""Meta-training: convergence to eta*, non-finite skipping, optax optimizers, projection."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import inner, metagrad, objectives, tasks
from l2l_jax.closed_forms import reference
from l2l_jax.metagrad.minimize import NonFiniteWarning

T = 80


def _task(dtype):
    return tasks.Quadratic.random(jax.random.key(0), 20, scale=0.5, dtype=dtype)


def _eta_star(task):
    lam = np.asarray(task.eigenvalues, np.float64)
    return reference.eta_star(lam, np.asarray(task.coefficients, np.float64), T, tol=1e-12)


def test_meta_gd_on_stable_converges_to_eta_star_float64():
    with jax.enable_x64(True):
        task = _task(jnp.float64)
        big_l = float(task.smoothness)
        f = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=T, grad="stable")
        run = metagrad.minimize(
            f, jnp.asarray(0.1), metagrad.meta_gd(0.3 / big_l**2), steps=300, progress=False
        )
        assert run.nonfinite_count == 0
        eta_star = _eta_star(task)
        assert abs(float(run.params) - eta_star) <= 0.01 * eta_star
        assert run.trajectory.shape == (301,)


def test_autodiff_float32_nonfinite_grads_are_never_applied():
    task = _task(jnp.float32)
    f = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=T, grad="autodiff")
    big_l = float(task.smoothness)
    steps = 20
    with pytest.warns(NonFiniteWarning, match=f"skipped all {steps} meta-steps"):
        run = metagrad.minimize(
            f, jnp.asarray(0.1), metagrad.meta_gd(0.3 / big_l**2), steps=steps, progress=False
        )
    assert not np.any(np.isfinite(np.asarray(run.grads)))
    assert run.nonfinite_count == steps
    assert np.all(np.asarray(run.nonfinite))
    assert np.all(np.asarray(run.trajectory) == np.float32(0.1))  # exactly eta0, every step


def test_optax_adam_accepted():
    with jax.enable_x64(True):
        task = _task(jnp.float64)
        f = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=T, grad="stable")
        run = metagrad.minimize(f, jnp.asarray(0.1), optax.adam(1e-3), steps=200, progress=False)
        eta_star = _eta_star(task)
        assert run.nonfinite_count == 0
        traj = np.asarray(run.trajectory)
        # moves towards eta* (which is far below 0.1 here) and ends closer to it
        assert abs(traj[-1] - eta_star) < 0.5 * abs(traj[0] - eta_star)


def test_projection_keeps_eta_non_negative():
    with jax.enable_x64(True):
        task = _task(jnp.float64)
        f = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=T, grad="stable")
        big_l = float(task.smoothness)
        c = 50.0 / big_l**2  # huge meta step: the first update overshoots below 0
        free = metagrad.minimize(
            f,
            jnp.asarray(0.1),
            metagrad.meta_gd(c, project_non_negative=False),
            steps=1,
            progress=False,
            domains="none",  # the bare scalar is gd's step size: free it explicitly
        )
        assert float(free.params) < 0  # without the projection eta would go negative
        run = metagrad.minimize(f, jnp.asarray(0.1), metagrad.meta_gd(c), steps=30, progress=False)
        assert np.all(np.asarray(run.trajectory) >= 0)


def test_nonfinite_value_with_finite_grad_is_skipped():
    """log(inf) backpropagates a finite 0 (autodiff, float64, eta = 4.8/L, t = 320):
    the step must count as non-finite and leave eta alone, not apply the bogus 0."""
    with jax.enable_x64(True):
        task = _task(jnp.float64)
        eta0 = 4.8 / float(task.smoothness)
        f = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=320)
        value, grad = jax.value_and_grad(f)(jnp.asarray(eta0))
        assert np.isinf(value) and np.isfinite(grad)  # the silent failure being guarded
        run = metagrad.minimize(
            f, jnp.asarray(eta0), optax.sgd(1e-3), steps=3, progress=False, on_nonfinite="ignore"
        )
        assert run.nonfinite_count == 3
        assert np.all(np.asarray(run.trajectory) == eta0)
    finite = metagrad.minimize(
        lambda p: (p - 1.0) ** 2, jnp.asarray(3.0), optax.sgd(0.1), 3, progress=False
    )
    assert finite.nonfinite_count == 0
    np.testing.assert_allclose(finite.trajectory, [3.0, 2.6, 2.28, 2.024], rtol=1e-6)


def test_hyperparameters_stay_in_their_domains():
    """Adam's hyperparameters under a TbV objective and optax.adam(1e-2)
    leave their domains without the projection (eps < 0 at step 1); with it every
    iterate stays in its domain and the projected steps are counted."""
    task = tasks.LeastSquares.sample(jax.random.key(0), 10, 20, 20, 1.0)
    f = metagrad.meta_objective(task, inner.adam(), "tbv", steps=20)
    init = inner.adam().hparams(learning_rate=0.01)
    run = metagrad.minimize(f, init, optax.adam(1e-2), steps=100, progress=False)
    free = jax.tree.map(
        lambda x, u: x + u,
        init,
        optax.adam(1e-2).update(jax.grad(f)(init), optax.adam(1e-2).init(init))[0],
    )
    assert float(free["eps"]) < 0  # what an unprojected first step does
    traj = run.trajectory
    assert np.all(np.asarray(traj["learning_rate"]) > 0) and np.all(np.asarray(traj["eps"]) > 0)
    for name in ("b1", "b2"):
        assert np.all((np.asarray(traj[name]) >= 0) & (np.asarray(traj[name]) < 1)), name
    assert run.projected_count >= 1 and bool(run.projected[0])
    assert np.all(np.isfinite(np.asarray(run.values)))


def test_initial_hyperparameters_out_of_domain_are_rejected():
    f = lambda h: h["learning_rate"] ** 2 + h["b1"]
    with np.testing.assert_raises_regex(ValueError, r"init\['b1'\] must be in \[0, 1\)"):
        metagrad.minimize(f, {"learning_rate": 0.1, "b1": 1.0}, optax.sgd(0.1), 1, progress=False)
    with np.testing.assert_raises_regex(ValueError, r"init\['learning_rate'\] must be > 0"):
        metagrad.minimize(f, {"learning_rate": -0.1, "b1": 0.5}, optax.sgd(0.1), 1, progress=False)


def _gd_objective(steps=10, objective="last_loss"):
    task = tasks.Quadratic.from_spectrum(jnp.asarray([1.0, 2.0]), jnp.asarray([1.0, 1.0]))
    return metagrad.meta_objective(task, inner.gd(), objective, steps=steps)


def test_bare_scalar_step_size_is_checked_and_projected():
    """inner.gd()'s hyperparameters are a bare scalar, the step size: a negative init is
    refused and a step that would make it negative is projected, as for named ones."""
    f = _gd_objective()
    with pytest.raises(ValueError, match=r"init must be > 0, got -0\.1.*domains='none'"):
        metagrad.minimize(f, jnp.asarray(-0.1), optax.adam(1e-2), 1, progress=False)
    # from eta = 0.9 (gradient > 0) sgd(10) on the last loss overshoots far below 0
    run = metagrad.minimize(f, jnp.asarray(0.9), optax.sgd(10.0), 1, progress=False)
    assert float(run.params) > 0 and run.projected_count == 1
    free = metagrad.minimize(
        f, jnp.asarray(0.9), optax.sgd(10.0), 1, progress=False, domains="none"
    )
    assert float(free.params) < 0 and free.projected_count == 0


def test_bare_scalar_of_a_plain_function_is_unconstrained():
    """A plain callable says nothing about its input (a log step size may be < 0)."""
    run = metagrad.minimize(
        lambda u: (u + 1.0) ** 2, jnp.asarray(-0.5), optax.sgd(0.1), 2, progress=False
    )
    assert float(run.params) < -0.5 and run.projected_count == 0
    pos = metagrad.minimize(
        lambda u: (u + 1.0) ** 2,
        jnp.asarray(0.5),
        optax.sgd(1.0),
        1,
        progress=False,
        domains="positive",
    )
    assert float(pos.params) > 0 and pos.projected_count == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"domains": "posit"}, ValueError, "domains must be among"),
        ({"domains": {"a": "none"}}, ValueError, "domains must be one of"),
        ({"on_nonfinite": "loud"}, ValueError, "on_nonfinite must be one of"),
        ({"init": jnp.asarray(jnp.nan)}, ValueError, "init must be finite"),
        ({"meta_objective": 3.0}, TypeError, "meta_objective must be a callable"),
    ],
)
def test_train_arguments_are_checked(kwargs, error, match):
    args = {"meta_objective": lambda u: u**2, "init": jnp.asarray(0.5), **kwargs}
    with pytest.raises(error, match=match):
        metagrad.minimize(
            args.pop("meta_objective"),
            args.pop("init"),
            optax.sgd(0.1),
            1,
            progress=False,
            **args,
        )


def test_all_nonfinite_run_warns_or_raises():
    """GD at eta = 1.9 on a quadratic with L = 2 diverges: the last loss at t = 2000
    overflows, every meta-step is skipped and the start comes back unchanged."""
    f = _gd_objective(steps=2000)
    eta = jnp.asarray(1.9)
    with pytest.warns(NonFiniteWarning, match="skipped all 3 meta-steps.*log_loss"):
        run = metagrad.minimize(f, eta, optax.sgd(1e-3), 3, progress=False)
    assert run.nonfinite_count == 3 and float(run.params) == np.float32(1.9)
    with pytest.raises(FloatingPointError, match="skipped all 3 meta-steps"):
        metagrad.minimize(f, eta, optax.sgd(1e-3), 3, progress=False, on_nonfinite="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metagrad.minimize(f, eta, optax.sgd(1e-3), 3, progress=False, on_nonfinite="ignore")
        metagrad.minimize(f, jnp.asarray(0.1), optax.sgd(1e-3), 3, progress=False)  # finite: silent
