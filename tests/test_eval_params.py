"""Evaluation parameters: Schedule-Free AdamW is scored at its averaged iterate ``x``
(``optax.contrib.schedule_free_eval_params``), not at the iterate ``y`` its gradients are
taken at; every other optimizer at its iterate."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest

from l2l_jax import evaluation, inner, learned
from l2l_jax.inner.optimizers import evaluation_params_of
from l2l_jax.tasks.mnist import MnistMLP

SIZES = (8, 6, 3)  # a tiny MLP on synthetic rows: one small compile
STEPS, EVERY, RUNS, BATCH, LR = 10, 5, 2, 4, 0.2
# Two float32 programs (a vmapped, scanned rollout; a Python loop of jitted steps) round
# differently. Measured on this CPU: losses (~1.1) agree to 8e-7, parameters (|w| <= 1.6)
# to 6e-6; the bounds leave ~10x. The x-y gaps they must resolve: 6e-3 in the loss, 6e-2
# in the parameters.
LOSS_RTOL, PARAM_ATOL = 1e-5, 5e-5
SF = inner.from_optax(
    optax.contrib.schedule_free_adamw,
    ("learning_rate",),
    batch_size=BATCH,
    defaults={"learning_rate": LR},
    eval_params=optax.contrib.schedule_free_eval_params,
)


@pytest.fixture(scope="module")
def task() -> MnistMLP:
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(24, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], size=24).astype(np.int32)
    return MnistMLP(x, y, init_key=jax.random.key(0), sizes=SIZES)


TX = optax.contrib.schedule_free_adamw(learning_rate=LR)  # optax itself, no wrapper


@jax.jit
def _step(run, w, state, k):
    """One Schedule-Free AdamW step on the minibatch ``inner.unroll`` draws with ``k``."""
    idx = jax.random.randint(k, (BATCH,), 0, run.num_examples)
    updates, state = TX.update(jax.grad(run.batch_loss)(w, idx), state, w)
    return optax.apply_updates(w, updates), state


def _by_hand(task, keys):
    """Run ``i`` of ``evaluate`` with optax directly, in a Python loop over the same
    minibatches (module docstring of ``l2l_jax.evaluation``): ``(task_i, y_T, x_T)``."""
    run = task.with_init_key(keys[0])
    w = run.init_params()
    state = TX.init(w)
    for k in jax.random.split(keys[1], STEPS):
        w, state = _step(run, w, state, k)
    return run, w, optax.contrib.schedule_free_eval_params(state, w)


def test_schedule_free_is_scored_at_its_averaged_iterate(task):
    key = jax.random.key(1)
    res = evaluation.evaluate(task, SF, SF.hparams(), STEPS, key=key, runs=RUNS, eval_every=EVERY)
    keys = evaluation.run_keys(key, RUNS)
    for i in range(RUNS):
        run, y, x = _by_hand(task, keys[i])
        loss_x, loss_y = float(run.loss(x)), float(run.loss(y))
        # (a) the recorded final loss and parameters are the averaged iterate's
        np.testing.assert_allclose(res.train_loss[i, -1], loss_x, rtol=LOSS_RTOL)
        got = [leaf[i] for leaf in jax.tree.leaves(res.params)]
        for a, b in zip(got, jax.tree.leaves(x), strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=PARAM_ATOL)
        # (b) ... which the gradient iterate's is not: the checks above can fail
        assert abs(loss_x - loss_y) > 100 * LOSS_RTOL * loss_x, (loss_x, loss_y)
        gap = max(
            float(np.max(np.abs(a - b))) for a, b in zip(got, jax.tree.leaves(y), strict=True)
        )
        assert gap > 100 * PARAM_ATOL, gap
    # step 0: x_0 = y_0 (z_0 = w_0), the initialization's loss
    w0 = task.with_init_key(keys[0, 0]).init_params()
    np.testing.assert_allclose(res.train_loss[0, 0], task.loss(w0), rtol=LOSS_RTOL)


def test_without_eval_params_the_evaluation_params_are_the_params():
    w = {"a": np.ones(3, np.float32)}
    plain = inner.from_optax(optax.contrib.schedule_free_adamw, ("learning_rate",))
    lopt = learned.inner_optimizer(learned.MLPLOpt())
    for opt in (inner.sgd(), inner.adam(), lopt):
        state = opt.init(w, opt.hparams() if opt is not lopt else None)
        assert evaluation_params_of(opt, w, state) is w, opt.name
    state = plain.init(w, plain.hparams(learning_rate=0.1))
    assert plain.evaluation_params(w, state) is evaluation_params_of(plain, w, state) is w
    state = SF.init(w, SF.hparams())
    x = evaluation_params_of(SF, w, state)
    np.testing.assert_array_equal(
        x["a"], optax.contrib.schedule_free_eval_params(state.inner_state, w)["a"]
    )


def test_eval_params_is_hashed_and_compared():
    again = inner.from_optax(optax.contrib.schedule_free_adamw, ("learning_rate",))
    with_ = dataclasses.replace(again, eval_params=optax.contrib.schedule_free_eval_params)
    twin = dataclasses.replace(again, eval_params=optax.contrib.schedule_free_eval_params)
    assert with_ == twin and hash(with_) == hash(twin)
    assert with_ != again


def test_bad_eval_params_is_a_type_error():
    with pytest.raises(TypeError, match="eval_params must be None or a function"):
        inner.from_optax(
            optax.contrib.schedule_free_adamw, ("learning_rate",), eval_params="averaged"
        )
