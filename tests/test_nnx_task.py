"""A Flax NNX model, a loss and arrays as a task (``tasks.nnx_task``), against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2l_jax import inner, tasks


def model_and_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    y = rng.normal(size=(20, 2)).astype(np.float32)
    return nnx.Linear(3, 2, rngs=nnx.Rngs(0)), x, y


def numpy_mse(w, x, y):
    k, b = np.asarray(w["kernel"], np.float64), np.asarray(w["bias"], np.float64)
    return np.mean((x @ k + b - y) ** 2)


def test_losses_and_gradients_match_numpy():
    model, x, y = model_and_data()
    mse = lambda out, target: jnp.mean((out - target) ** 2)
    task = tasks.nnx_task(model, mse, x[:14], y[:14], x_valid=x[14:], y_valid=y[14:])
    assert isinstance(task, tasks.ValidationTask)
    assert (task.num_examples, task.num_valid) == (14, 6)
    w = task.init_params(jax.random.key(5))  # the model's own parameters
    np.testing.assert_array_equal(w["kernel"], model.kernel[...])
    np.testing.assert_allclose(task.loss(w), numpy_mse(w, x[:14], y[:14]), rtol=1e-6)
    np.testing.assert_allclose(task.valid_loss(w), numpy_mse(w, x[14:], y[14:]), rtol=1e-6)
    idx = jnp.asarray([0, 3, 3])
    np.testing.assert_allclose(
        task.batch_loss(w, idx), numpy_mse(w, x[[0, 3, 3]], y[[0, 3, 3]]), rtol=1e-6
    )
    # d/dK mean((xK + b - y)^2) = 2 x^T r / (n m) with m = 2 outputs
    g = jax.grad(task.loss)(w)
    k, b = np.asarray(w["kernel"], np.float64), np.asarray(w["bias"], np.float64)
    r = x[:14] @ k + b - y[:14]
    np.testing.assert_allclose(g["kernel"], 2 * x[:14].T @ r / r.size, rtol=1e-5, atol=1e-7)
    # an unroll trains it (the task is a pytree: jit and scan take it)
    result = inner.unroll(task, inner.gd(), jnp.float32(0.1), 30)
    assert float(result.final_loss) < 0.8 * float(result.losses[0])


def test_bad_input_is_named():
    model, x, y = model_and_data()
    mse = lambda out, target: jnp.mean((out - target) ** 2)
    with pytest.raises(TypeError, match=r"flax\.nnx\.Module"):
        tasks.nnx_task(lambda v: v, mse, x, y)
    with pytest.raises(ValueError, match="both x_valid and y_valid"):
        tasks.nnx_task(model, mse, x, y, x_valid=x)
    with pytest.raises(ValueError, match="same number of rows"):
        tasks.nnx_task(model, mse, x, y[:5])
    no_valid = tasks.nnx_task(model, mse, x, y)
    with pytest.raises(ValueError, match="validation rows"):
        no_valid.valid_loss(no_valid.init_params())
