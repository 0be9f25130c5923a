"""Stability analysis: linearized training dynamics against their closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, learned, tasks
from l2l_jax.analysis import stability

STEP_SIZES = (0.01, 0.05, 0.2)  # below and above 2/L of the task (L ~ 10)


@pytest.fixture(scope="module")
def quadratic():
    with jax.enable_x64(True):
        task = tasks.Quadratic.random(jax.random.key(0), 6, scale=0.5, dtype=jnp.float64)
    return task, np.linalg.eigvalsh(np.asarray(task.hessian, np.float64))


def assert_same_spectrum(computed, expected, atol=1e-6):
    a, b = stability.sort_complex(computed), stability.sort_complex(expected)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


@pytest.mark.parametrize("eta", STEP_SIZES)
def test_gd_eigenvalues_are_one_minus_eta_lambda(quadratic, eta):
    task, lam = quadratic
    with jax.enable_x64(True):
        lin = stability.linearize(task, inner.gd(), jnp.asarray(eta, jnp.float64))
    assert lin.jacobian.shape == (6, 6) and lin.num_params == 6
    assert_same_spectrum(lin.eigenvalues, stability.gd_eigenvalues(eta, lam))
    assert lin.stable() == (eta * lam[-1] <= 2)


@pytest.mark.parametrize("eta", STEP_SIZES)
@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_momentum_eigenvalues_are_the_characteristic_roots(quadratic, eta, beta):
    task, lam = quadratic
    opt = inner.momentum()
    with jax.enable_x64(True):
        hp = {"learning_rate": jnp.asarray(eta), "momentum": jnp.asarray(beta)}
        lin = stability.linearize(task, opt, hp)
    assert lin.jacobian.shape == (12, 12)  # (w, v); the stored hyperparameters are not state
    assert_same_spectrum(lin.eigenvalues, stability.momentum_eigenvalues(eta, lam, beta))
    assert lin.stable() == (eta * lam[-1] <= 2 * (1 + beta))


def test_coordinate_blocks_are_the_closed_form_matrices():
    lam, eta, beta = np.array([0.1, 1.0, 30.0]), 0.07, 0.8
    jac = stability.coordinate_jacobians(inner.gd(), eta, lam)
    np.testing.assert_allclose(jac[:, 0, 0], 1 - eta * lam, rtol=0, atol=1e-12)
    hp = {"learning_rate": eta, "momentum": beta}
    jac = stability.coordinate_jacobians(inner.momentum(), hp, lam)
    expected = np.stack(
        [
            np.stack([1 - eta * lam, -eta * beta * np.ones(3)], -1),
            np.stack([lam, beta * np.ones(3)], -1),
        ],
        axis=1,
    )
    np.testing.assert_allclose(jac, expected, rtol=0, atol=1e-12)


def test_diagonal_task_decouples_into_coordinate_blocks():
    """On the NQM the full Jacobian's spectrum is the union of the per-coordinate ones."""
    opt = inner.adam()
    with jax.enable_x64(True):
        task = tasks.NQM.power_law(jax.random.key(0), 5, scale=4.0, dtype=jnp.float64)
        hp = opt.hparams(learning_rate=0.1)
        w = task.init_params()
        lin = stability.linearize(task, opt, hp)
        # Adam's block depends on the point: one block per coordinate at its own w_i.
        blocks = [
            stability.coordinate_jacobians(opt, hp, task.curvature[i : i + 1], float(w[i]))[0]
            for i in range(task.dim)
        ]
    assert lin.jacobian.shape == (15, 15)  # (w, mu, nu); Adam's step count is held fixed
    assert_same_spectrum(lin.eigenvalues, np.concatenate([np.linalg.eigvals(b) for b in blocks]))


def test_additive_noise_leaves_the_linear_dynamics_unchanged():
    opt = inner.momentum()
    with jax.enable_x64(True):
        task = tasks.NQM.power_law(jax.random.key(0), 4, dtype=jnp.float64)
        hp = {"learning_rate": jnp.asarray(0.3), "momentum": jnp.asarray(0.5)}
        clean = stability.linearize(task, opt, hp)
        noisy = stability.linearize(task, opt, hp, batch_size=4, key=jax.random.key(1))
    np.testing.assert_allclose(noisy.jacobian, clean.jacobian, rtol=0, atol=1e-12)


def _near_boundary(etas, lams, bound):
    """Cells within one grid step (in log space, along either axis) of eta lambda = bound."""
    d_eta, d_lam = np.diff(np.log(etas)).max(), np.diff(np.log(lams)).max()
    dist = np.abs(np.log(np.outer(etas, lams) / bound))
    return dist <= d_eta + d_lam


@pytest.mark.parametrize("beta", [None, 0.5, 0.9])
def test_stability_grid_matches_the_analytic_boundary(beta):
    etas, lams = np.logspace(-3, 1, 41), np.logspace(-2, 3, 51)
    if beta is None:
        grid = stability.stability_grid(inner.gd(), lambda e: e, etas, lams)
        bound = 2.0
    else:
        hp = lambda e: {"learning_rate": e, "momentum": jnp.asarray(beta, e.dtype)}
        grid = stability.stability_grid(inner.momentum(), hp, etas, lams)
        bound = 2.0 * (1 + beta)
        np.testing.assert_allclose(bound / lams, stability.momentum_max_step(lams, beta))
    analytic = np.outer(etas, lams) <= bound
    away = ~_near_boundary(etas, lams, bound)
    assert away.sum() > 0.9 * away.size
    np.testing.assert_array_equal(grid.stable[away], analytic[away])
    assert grid.radius.shape == (41, 51) and grid.stable.any() and not grid.stable.all()


def test_learned_optimizer_linearizes_on_the_nqm():
    lopt = learned.MLPLOpt()
    task = tasks.NQM.power_law(jax.random.key(0), 4)
    meta_params = lopt.init_meta_params(jax.random.key(1))
    lin = stability.linearize(task, lopt, meta_params)
    k = len(lopt.config.decays)
    assert lin.jacobian.shape == (4 * (1 + 2 * k),) * 2 and lin.num_params == 4
    assert np.all(np.isfinite(lin.eigenvalues))
    # The accumulators' own decay is part of the spectrum's structure: d m'/d m = b_k I
    # (the state holds one array per decay: the 4 coordinates of m_1, then of m_2, ...).
    m_block = lin.jacobian[4 : 4 + 4 * k, 4 : 4 + 4 * k]
    np.testing.assert_allclose(np.diag(m_block), np.repeat(lopt.config.decays, 4), atol=1e-12)
    with pytest.raises(ValueError, match="element-wise"):
        stability.coordinate_jacobians(learned.inner_optimizer(lopt), meta_params, [1.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: stability.stability_grid(inner.gd(), lambda e: e, [-1.0], [1.0]), "step_sizes"),
        (lambda: stability.stability_grid(inner.gd(), lambda e: e, [1.0], []), "curvatures"),
        (lambda: stability.momentum_max_step([1.0], 1.0), "beta"),
        (lambda: stability.eigenvalues(np.ones((2, 3))), "square"),
        (
            lambda: stability.linearize(
                tasks.NQM.power_law(jax.random.key(0), 2), inner.gd(), 0.1, batch_size=2
            ),
            "key",
        ),
    ],
)
def test_bad_input_names_the_field(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_default_point_is_the_tasks_own_initialization():
    """A float32 task linearizes at its float32 w_0 (a float64 draw would be another point)."""
    lopt = learned.MLPLOpt()
    task = tasks.NQM.power_law(jax.random.key(0), 3)
    meta_params = lopt.init_meta_params(jax.random.key(1))
    default = stability.linearize(task, lopt, meta_params)
    explicit = stability.linearize(task, lopt, meta_params, task.init_params(), None)
    # the default is task.init_params() handed to the same jitted linearization: bitwise
    np.testing.assert_array_equal(default.jacobian, explicit.jacobian)


def test_scaled_step_multiplies_the_step_size():
    lam = np.array([0.5, 3.0])
    task = tasks.NQM.from_curvature(jax.random.key(0), lam)
    with jax.enable_x64(True):
        hp = {"step_scale": jnp.asarray(4.0), "base": jnp.asarray(0.1)}
        lin = stability.linearize(task, stability.scaled_step(inner.gd()), hp)
    assert_same_spectrum(lin.eigenvalues, stability.gd_eigenvalues(0.4, lam))


def test_max_stable_step_is_the_measured_boundary():
    grid = stability.StabilityGrid(
        np.array([0.1, 1.0, 10.0]),
        np.array([1.0, 2.0]),
        np.array([[0.5, 0.9], [0.9, 1.5], [2.0, 3.0]]),
    )
    np.testing.assert_array_equal(grid.max_stable_step(), [1.0, 0.1])
    grid = stability.StabilityGrid(np.array([0.1]), np.array([1.0]), np.array([[2.0]]))
    assert np.isnan(grid.max_stable_step()[0])


TINY = (
    "--config.nqm.dim=3",
    "--config.batch_size=4",
    "--config.train.meta_steps=3",
    "--config.train.horizon=8",
    "--config.train.segment=4",
    "--config.train.meta_batch=2",
    "--config.analysis.steps=6",
    "--config.analysis.points=(0,5)",
    "--config.analysis.curvature_scales=(0.1,10.0,2)",
    "--config.analysis.step_scales=(0.1,10.0,2)",
    "--config.analysis.grid_curvature_scales=(0.1,10.0,2)",
    "--config.analysis.sgd_lrs=(0.1,1.0,2)",
    "--config.analysis.baselines=('sgd',)",
    "--config.sweep.step_sizes=(1e-3,10.0,31)",
    "--config.sweep.curvatures=(1e-2,1e3,31)",
    "--config.sweep.betas=(0.9,)",
)


@pytest.mark.slow
def test_experiment_end_to_end_tiny(tmp_path):
    import json

    from experiments import cli

    results = cli.main(["stability", "--out", str(tmp_path), "--no-progress", *TINY])
    for name in ("results.json", "summary.txt", *results["figures"]):
        assert (tmp_path / name).is_file(), name
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (
        saved["meta_training"]["nonfinite"] == 0 and len(saved["meta_training"]["meta_loss"]) == 3
    )
    for check in saved["classic"].values():
        assert check["cells_off_boundary_disagreeing"] == 0
        assert 1 / check["grid_ratio"] <= check["max_stable_over_analytic_min"]
        assert check["max_stable_over_analytic_max"] <= 1 + 1e-9
    size = 3 * (1 + 2 * len(learned.PAPER_DECAYS))
    assert saved["trajectory"]["size"] == size
    assert np.shape(saved["trajectory"]["eigenvalues_real"]) == (2, size)
    assert np.shape(saved["step_scale_grid"]["radius"]) == (2, 2)
    assert len(saved["curvature_sweep"]["radius_initial"]) == 2
    assert "learned optimizer" in (tmp_path / "summary.txt").read_text()
