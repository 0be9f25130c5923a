"""Least-squares experiments (fig2, fig3, thm5, thm6) on small configs.

The full configs run with ``make figures``; here d, m and n are small so that each
experiment takes seconds, and every number the experiments report is checked against an
independent computation (the ``lax.scan`` unroll of :mod:`l2l_jax.inner`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import cli, generalization
from l2l_jax import inner, objectives
from l2l_jax.tasks import LeastSquares

SMALL = ("--config.d=40", "--config.m=16", "--config.n_test=6", "--config.eta_count=60")


def _run(name, out, *overrides):
    return cli.main([name, "--out", str(out), "--no-progress", *SMALL, *overrides])


def test_setting_matches_the_unroll():
    """eta* of the grid search and the test/train RMSE agree with unrolled GD (float64)."""
    cfg = cli.load_config("fig2")
    cfg.update({"d": 12, "m": 5, "n_test": 3, "eta_count": 40, "dtype": "float64"})
    with jax.enable_x64(True):
        key = jax.random.key(3)
        res = generalization.setting(cfg, key, sigma=2.0, n=8)
        k_tbt, k_tbv, k_test = jax.random.split(key, 3)
        radius = cfg.truncation * 2.0
        etas = generalization.eta_grid(cfg)
        for name, k, n1, n2 in (("tbt", k_tbt, 8, 0), ("tbv", k_tbv, 4, 4)):
            batch = LeastSquares.sample_batch(k, cfg.m, cfg.d, n1, n2, 2.0, jnp.float64)
            objective = objectives.resolve(name)

            def mean_objective(e, batch=batch, objective=objective):
                run = lambda task: objective(
                    inner.unroll(task, inner.gd(), e, cfg.t, max_norm=radius)
                )
                return jnp.mean(jax.vmap(run)(batch))

            per_eta = np.asarray(jax.jit(jax.vmap(mean_objective))(jnp.asarray(etas)))
            np.testing.assert_allclose(res[f"meta_objective_{name}"], per_eta, rtol=1e-6)
            assert res[f"eta_grid_best_{name}"] == pytest.approx(etas[int(np.argmin(per_eta))])
            # meta-GD refinement starts at the grid's best point and never ends worse
            trace = res[f"meta_gd_{name}"]
            assert trace["objective"][0] == pytest.approx(min(per_eta), rel=1e-9)
            assert min(trace["objective"]) <= min(per_eta)
            assert res[f"eta_star_{name}"] in trace["eta"]
            test = LeastSquares.sample_batch(k_test, cfg.n_test, cfg.d, 8, 0, 2.0, jnp.float64)
            final = jax.vmap(
                lambda task, e=res[f"eta_star_{name}"]: (
                    inner.unroll(task, inner.gd(), e, cfg.t, max_norm=radius).params
                )
            )(test)
            rmse = np.asarray(jax.vmap(LeastSquares.test_rmse)(test, final))
            train = np.asarray(jax.vmap(LeastSquares.train_rmse)(test, final))
            assert res[f"test_rmse_{name}"] == pytest.approx(np.mean(rmse), rel=1e-6)
            assert res[f"train_rmse_{name}"] == pytest.approx(np.mean(train), rel=1e-6)
            assert res[f"test_rmse_{name}_range"] == pytest.approx([min(rmse), max(rmse)], rel=1e-6)


def test_spectra_chunks_equal_one_by_one():
    key = jax.random.key(1)
    spec, w = generalization.spectra(key, 5, 6, 4, 3, 1.0, jnp.float32, 2)  # 3 chunks, padded
    keys = jax.random.split(key, 6)[:5]
    for i, k in enumerate(keys):
        task = LeastSquares.sample(k, 6, 4, 3, 1.0)
        # the same draw, but w* = z / ||z|| is normalized inside vmap and lax.map there
        # and alone here: other programs, the norm's 6 squares summed in another order
        # (a few float32 ulps); another key would differ by O(1)
        np.testing.assert_allclose(w[i], task.w_star, rtol=0, atol=8 * np.finfo(np.float32).eps)
    assert spec.eigenvalues.shape[0] == 5


@pytest.mark.slow
def test_fig2_small(tmp_path):
    res = _run("fig2", tmp_path, "--config.n=20", "--config.sigmas=(1.0, 4.0)")
    assert (tmp_path / "fig2.png").exists() and (tmp_path / "table.md").exists()
    for s in res["settings"]:
        assert {"eta_star_tbt", "eta_star_tbv", "test_rmse_tbt", "test_rmse_tbv"} <= set(s)
    high = res["settings"][-1]
    # n = d/2, sigma = 4: TbT fits the noise (tiny training error), TbV generalizes
    assert high["train_rmse_tbt"] < high["train_rmse_tbv"]
    assert high["test_rmse_tbv"] < high["test_rmse_tbt"]


@pytest.mark.slow
def test_thm5_and_thm6_small(tmp_path):
    """Theorem 5: eta*_TbT does not depend on t, eta*_TbV falls as 1/t (t from 25 to 100:
    4x). Theorem 6 (n = 20 d): TbT's test error is d sigma^2 / n; the least-squares
    solution's is d sigma^2 / (n - d - 1) = 1.054 d sigma^2 / n (Gaussian design), early
    stopping lowers it, and 20 test tasks of d = 40 leave a sampling error of about
    sqrt(2 / d / 20) = 5%: the window is [0.85, 1.2]."""
    res5 = _run("thm5", tmp_path / "thm5", "--config.n=20", "--config.ts=(25, 100)")
    checks = res5["checks"]
    assert checks["eta_star_tbt_max_over_min"] < 1.05
    tbv = np.array(checks["eta_star_tbv_times_t"]) / np.array([25, 100])
    assert tbv[0] / tbv[1] == pytest.approx(4.0, rel=0.05)
    assert not checks["any_eta_star_at_grid_edge"]
    res6 = _run("thm6", tmp_path / "thm6", "--config.n_over_d=(20.0,)", "--config.n_test=20")
    (s,) = res6["settings"]
    assert s["optimal_test_error"] == pytest.approx(40 * 1.0 / 800)
    ratio = res6["checks"]["test_error_tbt_over_d_sigma2_over_n"][0]
    assert ratio == pytest.approx(s["test_error_tbt"] / s["optimal_test_error"])
    assert 0.85 < ratio < 1.2


@pytest.mark.slow
def test_fig3_small(tmp_path):
    res = _run("fig3", tmp_path, "--config.n_over_d=(0.5, 10.0)")
    assert [s["n"] for s in res["settings"]] == [20, 400]
    assert len(res["checks"]["test_rmse_gap_per_n"]) == 2
