"""inner.tuning: the one step-size tuner (decision rule and jitted grid)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax.inner import tuning


def test_non_finite_scores_count_as_inf_and_ties_go_first():
    scores = np.array([1.5, np.nan, np.inf, 0.5, 0.5, -np.inf])
    np.testing.assert_array_equal(
        tuning.finite_or_inf(scores), [1.5, np.inf, np.inf, 0.5, 0.5, np.inf]
    )
    assert tuning.finite_or_inf(scores).dtype == np.float64  # NumPy stays NumPy
    assert int(tuning.best_index(scores)) == 3
    assert int(jax.jit(tuning.best_index)(jnp.asarray(scores, jnp.float32))) == 3
    picked = tuning.choice(np.array([1e-3, 1e-2, 1e-1, 1.0, 2.0, 5.0]), scores)
    assert picked["best_index"] == 3 and picked["best_lr"] == 1.0
    assert picked["diverged"].tolist() == [False, True, True, False, False, True]


def test_grid_search_matches_the_closed_form():
    """GD on f(w) = 1/2 h w^2 from w_0 = 1: f(w_k) = 1/2 h (1 - eta h)^(2k); the best eta of
    the grid is the one closest to 1/h, and a diverging eta (NaN after overflow) never wins."""
    h, k = 2.0, 5
    lrs = np.array([0.1, 0.3, 0.45, 0.5, 0.7, 1e30])

    def score(lr, h):  # k GD steps in float32, the loss of every one of 2 equal "runs"
        w = jax.lax.fori_loop(0, k, lambda _, w: w - lr * h * w, jnp.float32(1.0))
        return jnp.full(2, 0.5 * h * w**2)

    found = tuning.grid_search(score, lrs, jnp.float32(h))
    expected = 0.5 * h * (1 - lrs[:-1] * h) ** (2 * k)
    np.testing.assert_allclose(found["score"][:-1], expected, rtol=1e-5, atol=1e-30)
    assert found["values"].shape == (6, 2) and found["diverged"][-1]
    assert found["best_lr"] == 0.5 and found["best_index"] == 3
    with pytest.raises(ValueError, match="lrs"):
        tuning.grid_search(score, [], jnp.float32(h))
    with pytest.raises(ValueError, match="lrs"):
        tuning.grid_search(score, [0.1, -1.0], jnp.float32(h))
