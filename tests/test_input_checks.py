"""Invalid input raises a clear error that names the offending field."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import inner, learned, metagrad, objectives, tasks

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
        metagrad.meta_objective(_task(), inner.gd(), steps=steps)


def test_non_integer_steps():
    with pytest.raises(TypeError, match="steps must be a positive integer"):
        metagrad.meta_objective(_task(), inner.gd(), steps=2.5)


@pytest.mark.parametrize("grad", ["autodiff", "forward", "stable"])
def test_negative_eta(grad):
    f = metagrad.meta_objective(_task(), inner.gd(), steps=3, grad=grad)
    with pytest.raises(ValueError, match=r"learning_rate.*must be >= 0"):
        f(-0.1)


def test_unknown_grad_method():
    with pytest.raises(ValueError, match="grad must be one of"):
        metagrad.meta_objective(_task(), inner.gd(), steps=3, grad="backprop")


def test_unknown_objective():
    with pytest.raises(ValueError, match="unknown objective 'final'"):
        metagrad.meta_objective(_task(), inner.gd(), "final", steps=3)


@pytest.mark.parametrize(
    ("optimizer", "objective", "culprit"),
    [
        (inner.adam(), objectives.log_loss(), "optimizer 'adam'"),
        (inner.sgd(batch_size=2), objectives.log_loss(), "optimizer 'sgd'"),
        (inner.gd(), objectives.mean_loss(), "objective 'mean_loss'"),
    ],
)
def test_stable_unsupported_combinations(optimizer, objective, culprit):
    with pytest.raises(ValueError) as info:
        metagrad.meta_objective(_task(), optimizer, objective, steps=3, grad="stable")
    msg = str(info.value)
    assert culprit in msg
    assert "inner.gd() on tasks.Quadratic" in msg  # lists what is supported
    assert "last_loss" in msg and "log_loss" in msg
    assert "grad='autodiff'" in msg


def test_wrong_hparams_structure_for_momentum():
    f = metagrad.meta_objective(_task(), inner.momentum(), steps=3)
    with pytest.raises(TypeError, match=r"momentum takes hyperparameters \['learning_rate', 'mom"):
        f(0.1)
    with pytest.raises(TypeError, match=r"\['learning_rate'\]"):
        f({"learning_rate": 0.1})
    with pytest.raises(TypeError, match="'momentum' must be a scalar"):
        f({"learning_rate": 0.1, "momentum": jnp.ones(2)})
    # and the right structure works
    assert np.isfinite(float(f(inner.momentum().hparams(learning_rate=0.1, momentum=0.5))))


# -- bad input: every case a clear error naming the field -------------------------------


def _objective(optimizer=None, **kwargs):
    return metagrad.meta_objective(_task(), optimizer or inner.gd(), steps=3, **kwargs)


@pytest.mark.parametrize(
    ("make", "error", "pattern"),
    [
        (lambda: _objective(max_norm=-1.0), ValueError, r"max_norm must be a positive number"),
        (lambda: _objective(max_norm=0.0), ValueError, r"max_norm must be a positive number"),
        (lambda: _objective()(jnp.inf), ValueError, r"'learning_rate' must be finite, got inf"),
        (lambda: _objective()(jnp.nan), ValueError, r"'learning_rate' must be finite"),
        (lambda: _objective()(True), TypeError, r"'learning_rate' must be a number, got the bool"),
        (
            lambda: _objective(inner.adam())(inner.adam().hparams(learning_rate=0.1, b1=1.5)),
            ValueError,
            r"'b1' is a decay and must be in \[0, 1\), got 1.5",
        ),
        (
            lambda: _objective(inner.adam())(inner.adam().hparams(learning_rate=0.1, b2=-0.1)),
            ValueError,
            r"'b2' must be >= 0",
        ),
        (
            lambda: _objective(inner.momentum())(
                inner.momentum().hparams(learning_rate=0.1, momentum=1.0)
            ),
            ValueError,
            r"'momentum' is a decay and must be in \[0, 1\), got 1.0",
        ),
        (
            lambda: tasks.Quadratic(hessian=jnp.eye(2, dtype=jnp.int32), w0=W0),
            TypeError,
            r"hessian must be an array of floats, got dtype int32",
        ),
        (
            lambda: tasks.Quadratic(hessian=jnp.eye(2, dtype=jnp.complex64), w0=W0),
            TypeError,
            r"hessian must be an array of floats, got dtype complex64",
        ),
        (
            lambda: _objective(batched=True),
            ValueError,
            r"batched=True expects a batch with one leading task axis, got a single task",
        ),
        (
            lambda: _objective(inner.sgd(batch_size=4), key=jax.random.key(0))(0.1),
            ValueError,
            r"inner.sgd samples minibatches, but .* has no examples",
        ),
    ],
)
def test_bad_input_names_the_field(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_float64_task_outside_x64_is_refused():
    with jax.enable_x64(True):
        task = tasks.Quadratic(hessian=jnp.eye(2, dtype=jnp.float64), w0=jnp.ones(2, jnp.float64))
    with pytest.raises(TypeError, match="task holds float64 arrays but jax_enable_x64 is off"):
        metagrad.meta_objective(task, inner.gd(), steps=3)


def test_learned_checkpoint_errors_name_the_path(tmp_path):
    lopt = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=(4,)))
    meta_params = lopt.init_meta_params(jax.random.key(0))
    learned.save(tmp_path / "ok", lopt, meta_params)
    with pytest.raises(ValueError, match=r"ok already exists.*delete it or pick another"):
        learned.save(tmp_path / "ok", lopt, meta_params)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config").write_text("{not json")
    for name in ("empty", "junk"):
        with pytest.raises(ValueError, match=rf"{name} is not a readable learned-optimizer"):
            learned.load(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no learned-optimizer checkpoint at"):
        learned.load(tmp_path / "missing")
    lopt2, loaded = learned.load(tmp_path / "ok")  # the intact one still loads
    assert lopt2 == lopt
    jax.tree.map(np.testing.assert_array_equal, loaded, meta_params)
