"""Meta-objectives (``l2l_jax.objectives``): one definition of TbT and TbV serves
``metagrad.meta_objective`` and ``truncated.meta_train``, and so does a user's objective."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from l2l_jax import inner, learned, metagrad, objectives, tasks, truncated

LOPT = learned.MLPLOpt(
    learned.LOptConfig(hidden_sizes=(4,), decays=(0.9,), time_scales=(10.0,), step_mult=0.1)
)
CFG = truncated.TruncatedConfig(
    horizon=12, segment=4, meta_batch=2, batch_size=8, eval_batch_size=None, meta_lr=1e-2
)


def regression() -> tasks.NNXTask:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.1 * rng.normal(size=(48, 1))).astype(np.float32)
    mse = lambda out, target: jnp.mean((out - target) ** 2)
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    return tasks.nnx_task(model, mse, x[:32], y[:32], x_valid=x[32:], y_valid=y[32:])


def train(objective, steps: int = 3):
    cfg = dataclasses.replace(CFG, objective=objective)
    return truncated.meta_train(
        regression(), LOPT, cfg, steps, key=jax.random.key(1), progress=False
    )


@pytest.mark.slow  # meta-trains end to end; docs/extending.md's example runs in make test
def test_a_user_objective_reaches_meta_training():
    """The user's copy of TbV meta-trains bit for bit like the built-in one; adding a
    constant adds it to every meta-loss and leaves the meta-gradient, so the meta-
    parameters, unchanged; a parameter penalty changes what is learned."""
    builtin = train("tbv")
    copy = train(objectives.iterate_objective(lambda task, w: task.valid_loss(w), "my_tbv"))
    shifted = train(objectives.iterate_objective(lambda task, w: task.valid_loss(w) + 5.0))
    penalty = lambda task, w: (
        task.valid_loss(w) + 10.0 * sum(jnp.sum(p**2) for p in jax.tree.leaves(w))
    )
    penalized = train(objectives.iterate_objective(penalty, "tbv+l2"))
    losses = lambda run: np.array([m["meta_loss"] for m in run.metrics])
    # The copy traces to the ops of the built-in TbV (whole valid_loss, eval_batch_size
    # None): the same program, same host: bitwise.
    np.testing.assert_array_equal(losses(copy), losses(builtin))
    jax.tree.map(np.testing.assert_array_equal, copy.meta_params, builtin.meta_params)
    np.testing.assert_allclose(losses(shifted), losses(builtin) + 5.0, rtol=1e-6)
    # The + 5 makes another program (XLA may fuse the meta-gradient's reductions
    # otherwise): float32 rounding of the meta-gradient, which 3 Adam steps of lr 1e-2
    # turn into a few ulps of each leaf (rtol 1e-6, ~8 ulps) and, for leaves near 0, a few
    # ulps of the steps' size (atol 1e-8); the penalty below moves them by > 1e-5.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8),
        shifted.meta_params,
        builtin.meta_params,
    )
    assert np.all(losses(penalized) > losses(builtin) + 1.0)  # ||w||^2 is about 1 or more
    assert not np.allclose(
        jax.tree.leaves(penalized.meta_params)[0], jax.tree.leaves(builtin.meta_params)[0]
    )


def test_the_same_objective_in_meta_objective_is_its_loss_at_the_last_iterate():
    task = regression()
    objective = objectives.iterate_objective(
        lambda t, w: t.valid_loss(w) + 0.1 * jnp.sum(w["kernel"] ** 2), "tbv+l2"
    )
    gd = inner.gd()
    value = metagrad.meta_objective(task, gd, objective, steps=20, grad="autodiff")
    w = task.init_params()
    for _ in range(20):  # an independent loop
        g = jax.grad(task.loss)(w)
        w = jax.tree.map(lambda p, d: p - 0.05 * d, w, g)
    x, y = np.asarray(task.x_valid, np.float64), np.asarray(task.y_valid, np.float64)
    kernel, bias = np.asarray(w["kernel"], np.float64), np.asarray(w["bias"], np.float64)
    expected = np.mean((x @ kernel + bias - y) ** 2) + 0.1 * np.sum(kernel**2)
    np.testing.assert_allclose(float(value(jnp.float32(0.05))), expected, rtol=1e-5)


def test_objectives_truncated_training_cannot_use_are_refused():
    with pytest.raises(TypeError, match="not a loss of one iterate"):
        truncated.TruncatedConfig(objective=objectives.log_loss())
    with pytest.raises(ValueError, match="objective must be one of"):
        truncated.TruncatedConfig(objective="log_loss")
    user = objectives.iterate_objective(lambda t, w: t.loss(w), "mine")
    cfg = dataclasses.replace(CFG, objective=user, eval_batch_size=4)
    with pytest.raises(ValueError, match="set TruncatedConfig\\(eval_batch_size=None\\)"):
        truncated.init_state(jax.random.key(0), regression(), LOPT, cfg)
    quad = tasks.Quadratic(hessian=jnp.eye(2), w0=jnp.ones(2))
    cfg = dataclasses.replace(CFG, objective="tbv", batch_size=None)
    with pytest.raises(TypeError, match="needs a task with a validation set"):
        truncated.init_state(jax.random.key(0), quad, LOPT, cfg)
    assert truncated.TruncatedConfig(objective=user).to_dict()["objective"] == "mine"


def test_a_trajectory_objective_sees_the_validation_loss_of_every_iterate():
    """The mean validation loss over the unroll, as a meta-objective: its value is the mean
    of valid_loss(w_k), k = 1..t, each w_k from its own k-step unroll (float64), and
    autodiff and forward mode agree on its meta-gradient. Under truncation the records are
    those of the frozen iterate."""
    with jax.enable_x64(True):
        task = tasks.LeastSquares.sample(jax.random.key(0), 4, 6, 5, 0.5, jnp.float64)
        mean_tbv = objectives.trajectory_objective(lambda t, w: t.valid_loss(w), "mean_tbv")
        eta, steps = jnp.float64(0.2), 7
        expected = np.mean(
            [
                float(task.valid_loss(inner.unroll(task, inner.gd(), eta, k).params))
                for k in range(1, 8)
            ]
        )
        values = {
            m: jax.value_and_grad(
                metagrad.meta_objective(task, inner.gd(), mean_tbv, steps=steps, grad=m)
            )(eta)
            for m in ("autodiff", "forward")
        }
        np.testing.assert_allclose(values["autodiff"][0], expected, rtol=1e-12)
        np.testing.assert_allclose(values["forward"][1], values["autodiff"][1], rtol=1e-10)
        assert inner.unroll(task, inner.gd(), eta, steps).records is None  # nobody else pays
        run = inner.unroll(
            task, inner.gd(), jnp.float64(5.0), 6, max_norm=1.0, record=lambda t, w: w
        )
        frozen = int(run.truncated_at)
        assert frozen >= 1
        np.testing.assert_allclose(
            np.linalg.norm(np.asarray(run.records[frozen - 1 :]), axis=1), 1.0
        )
        with pytest.raises(ValueError, match="records"):
            mean_tbv(inner.unroll(task, inner.gd(), eta, steps))
