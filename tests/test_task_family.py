"""Task families: per-run draws in meta-training, disjoint evaluation pools."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2l_jax import learned, truncated
from l2l_jax.data import mnist as mnist_data
from l2l_jax.tasks import MnistMLP
from l2l_jax.tasks.family import SingleTask, as_family
from l2l_jax.tasks.mnist_family import MnistFamily, noisy_labels, split_pool

SIZES = (784, 4, 10)
LOPT = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=(4,), time_scales=(10.0,)))


def _data(n=60, seed=0) -> mnist_data.MnistData:
    rng = np.random.default_rng(seed)
    return mnist_data.MnistData(
        train_images=rng.uniform(size=(n, 784)).astype(np.float32),
        train_labels=rng.integers(0, 10, n).astype(np.int32),
        test_images=rng.uniform(size=(8, 784)).astype(np.float32),
        test_labels=rng.integers(0, 10, 8).astype(np.int32),
        source="synthetic",
    )


def _cfg(**kw):
    base = dict(horizon=6, segment=3, meta_batch=4, batch_size=4, eval_batch_size=4)
    return truncated.TruncatedConfig(**{**base, **kw})


def test_noisy_labels_redraws_exactly_round_pn_positions():
    labels = jnp.arange(50, dtype=jnp.int32) % 10
    out = jax.jit(lambda k: noisy_labels(labels, 0.2, k))(jax.random.key(3))
    # the redrawn digit may equal the old one: at most round(0.2 * 50) = 10 changes
    changed = int(jnp.sum(out != labels))
    assert 0 < changed <= 10
    assert bool(jnp.all((out >= 0) & (out < 10)))
    assert bool(jnp.all(noisy_labels(labels, 0.0, jax.random.key(3)) == labels))


# end to end (a meta-batch of MNIST runs through their restarts): make test-slow
@pytest.mark.parametrize("objective", ["tbt", "tbv"])
@pytest.mark.slow
def test_meta_batch_runs_train_on_different_digits_and_restarts_redraw(objective):
    data = _data()
    family = MnistFamily.from_data(
        data, 20, n_valid=8 if objective == "tbv" else 0, label_noise=0.2, sizes=SIZES
    )
    cfg = _cfg(objective=objective)
    run = truncated.meta_train(family, LOPT, cfg, 3, key=jax.random.key(0), progress=False)
    draws = run.state.inner.task
    digits = np.asarray(jax.vmap(family.digits)(draws))
    assert digits.shape == (4, 20)
    # every run holds 20 distinct digits of the pool, and the runs' sets differ
    assert all(len(set(row)) == 20 for row in digits)
    assert len({tuple(sorted(row)) for row in digits}) == 4
    # 3 meta-steps of 3 steps with horizon 6: every run restarted at least once; its
    # task now is the draw of its current key, not the first one
    first = truncated.init_state(jax.random.key(0), family, LOPT, cfg)
    start_digits = np.asarray(jax.vmap(family.digits)(first.inner.task))
    assert not np.array_equal(np.sort(start_digits, 1), np.sort(digits, 1))
    assert all(np.isfinite(m["meta_loss"]) for m in run.metrics)


def test_split_pool_of_given_rows_stays_inside_them():
    data = _data(80)
    rows = np.arange(10, 70, 2)  # 30 of the 80 digits
    train_rows, eval_rows = split_pool(data, 1 / 3, jax.random.key(1), rows=rows)
    assert len(eval_rows) == 10 and len(train_rows) == 20
    assert set(train_rows) | set(eval_rows) == set(rows) and not set(train_rows) & set(eval_rows)
    # without rows: every training digit, as before
    whole = split_pool(data, 0.25, jax.random.key(1), rows=np.arange(80))
    np.testing.assert_array_equal(whole[1], split_pool(data, 0.25, jax.random.key(1))[1])
    with pytest.raises(ValueError, match="rows must be"):
        split_pool(data, 0.25, jax.random.key(1), rows=np.asarray([3, 80]))


def test_evaluation_pool_shares_no_digit_with_the_meta_training_pool():
    data = _data(80)
    train_rows, eval_rows = split_pool(data, 0.25, jax.random.key(1))
    assert len(eval_rows) == 20 and len(train_rows) == 60
    assert not set(train_rows) & set(eval_rows)
    meta_family = MnistFamily.from_data(data, 30, n_valid=6, rows=train_rows, sizes=SIZES)
    eval_family = MnistFamily.from_data(data, 20, rows=eval_rows, sizes=SIZES)
    keys = jax.random.split(jax.random.key(2), 16)
    seen = np.asarray(jax.vmap(lambda k: meta_family.digits(meta_family.sample(k)))(keys))
    evaluated = np.asarray(jax.vmap(lambda k: eval_family.digits(eval_family.sample(k)))(keys))
    assert set(seen.ravel()) <= set(train_rows)
    assert set(evaluated.ravel()) == set(eval_rows)  # n = pool: every eval digit
    assert not set(seen.ravel()) & set(evaluated.ravel())
    # the digits are the source's: pool row r of a draw is source row pool_index[r]
    draw = eval_family.sample(keys[0])
    np.testing.assert_array_equal(
        np.asarray(eval_family.images[draw.rows]),
        data.train_images[np.asarray(eval_family.digits(draw))],
    )


def test_view_losses_match_the_materialized_task():
    data = _data()
    family = MnistFamily.from_data(data, 24, n_valid=8, label_noise=0.5, sizes=SIZES)
    draw = family.sample(jax.random.key(4))
    view = family.task(draw)
    task = family.materialize(draw, jax.random.key(5))
    assert isinstance(task, MnistMLP) and task.num_examples == view.num_examples == 16
    params = view.init_params(jax.random.key(6))
    idx = jnp.asarray([0, 3, 15])
    np.testing.assert_allclose(
        view.batch_loss(params, idx), task.batch_loss(params, idx), rtol=1e-6
    )
    np.testing.assert_allclose(view.loss(params), task.loss(params), rtol=1e-6)
    np.testing.assert_allclose(view.valid_loss(params), task.valid_loss(params), rtol=1e-6)
    np.testing.assert_allclose(
        view.valid_batch_loss(params, jnp.asarray([1, 7])),
        task.valid_loss(params) * 0 + _ce(task, params, [1, 7]),
        rtol=1e-6,
    )


def _ce(task, params, rows):
    from l2l_jax.tasks.mnist import cross_entropy

    rows = jnp.asarray(rows)
    return cross_entropy(params, task.valid_images[rows], task.valid_labels[rows])


def test_a_single_task_is_a_family_of_one():
    data = _data()
    task = MnistMLP.from_data(data, 20, key=jax.random.key(0), sizes=SIZES)
    family = as_family(task)
    assert isinstance(family, SingleTask) and family.task(family.sample(jax.random.key(1))) is task
    assert as_family(family) is family
    with pytest.raises(TypeError, match="task family"):
        as_family(3.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n": 100}, "pool has 60"),
        ({"n": 10, "n_valid": 10}, "no training rows"),
        ({"n": 10, "label_noise": 1.5}, "label_noise"),
        ({"n": 0}, "MnistFamily.n"),
    ],
)
def test_bad_family_settings_name_the_field(kw, match):
    data = _data()
    with pytest.raises(ValueError, match=match):
        MnistFamily.from_data(data, kw.pop("n"), sizes=SIZES, **kw)
