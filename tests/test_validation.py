"""Invalid input raises a clear error that names the offending field."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, meta, objectives, tasks

W0 = jnp.ones(2)


def _task():
    return tasks.Quadratic(hessian=jnp.diag(jnp.array([1.0, 2.0])), w0=W0)


@pytest.mark.parametrize(
    ("hessian", "w0", "pattern"),
    [
        (jnp.diag(jnp.array([1.0, -1.0])), W0, r"hessian must be positive definite"),
        (jnp.array([[1.0, 0.5], [0.0, 1.0]]), W0, r"hessian must be symmetric"),
        (jnp.ones((2, 3)), W0, r"hessian must be a square"),
        (jnp.eye(2), jnp.ones(3), r"w0 must have shape \(2,\)"),
        (jnp.array([[1.0, np.nan], [np.nan, 1.0]]), W0, r"hessian must be finite"),
    ],
)
def test_bad_task(hessian, w0, pattern):
    with pytest.raises(ValueError, match=pattern):
        tasks.Quadratic(hessian=hessian, w0=w0)


@pytest.mark.parametrize("steps", [0, -3])
def test_non_positive_steps(steps):
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        meta.meta_objective(_task(), inner.gd(), steps=steps)


def test_non_integer_steps():
    with pytest.raises(TypeError, match="steps must be a positive integer"):
        meta.meta_objective(_task(), inner.gd(), steps=2.5)


@pytest.mark.parametrize("grad", ["autodiff", "forward", "stable"])
def test_negative_eta(grad):
    f = meta.meta_objective(_task(), inner.gd(), steps=3, grad=grad)
    with pytest.raises(ValueError, match=r"learning_rate.*must be >= 0"):
        f(-0.1)


def test_unknown_grad_method():
    with pytest.raises(ValueError, match="grad must be one of"):
        meta.meta_objective(_task(), inner.gd(), steps=3, grad="backprop")


def test_unknown_objective():
    with pytest.raises(ValueError, match="unknown objective 'final'"):
        meta.meta_objective(_task(), inner.gd(), "final", steps=3)


@pytest.mark.parametrize(
    ("optimizer", "objective", "culprit"),
    [
        (inner.adam(), objectives.log_loss(), "optimizer 'adam'"),
        (inner.momentum(), objectives.log_loss(), "optimizer 'momentum'"),
        (inner.gd(), objectives.mean_loss(), "objective 'mean_loss'"),
    ],
)
def test_stable_unsupported_combinations(optimizer, objective, culprit):
    with pytest.raises(ValueError) as info:
        meta.meta_objective(_task(), optimizer, objective, steps=3, grad="stable")
    msg = str(info.value)
    assert culprit in msg
    assert "inner.gd() on tasks.Quadratic" in msg  # lists what is supported
    assert "last_loss" in msg and "log_loss" in msg
    assert "grad='autodiff'" in msg


def test_wrong_hparams_structure_for_momentum():
    f = meta.meta_objective(_task(), inner.momentum(), steps=3)
    with pytest.raises(TypeError, match=r"momentum takes hyperparameters \['learning_rate', 'mom"):
        f(0.1)
    with pytest.raises(TypeError, match=r"\['learning_rate'\]"):
        f({"learning_rate": 0.1})
    with pytest.raises(TypeError, match="'momentum' must be a scalar"):
        f({"learning_rate": 0.1, "momentum": jnp.ones(2)})
    # and the right structure works
    assert np.isfinite(float(f(inner.momentum().hparams(learning_rate=0.1, momentum=0.5))))
