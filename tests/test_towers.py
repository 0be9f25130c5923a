"""The towers experiment (issue 5): end to end on a tiny config, height 0 = a plain optax
SGD loop written here, and the vmapped lr0 sweep = individual runs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import cli
from l2l_jax.experiments import towers
from l2l_jax.tasks import mnist as mnist_task


def tiny_config():
    cfg = cli.load_config("towers")
    cfg.n_train = 200
    cfg.sizes = (784, 16, 10)
    cfg.batch_size = 16
    cfg.steps = 15
    cfg.num_seeds = 2
    cfg.heights = (0, 2)
    cfg.lr0_min, cfg.lr0_max, cfg.lr0_count = 1e-3, 0.1, 2
    cfg.record_every = 5
    cfg.plot_lr0 = (1e-3,)
    return cfg


@pytest.fixture(scope="module")
def small():
    cfg = tiny_config()
    task, data = towers.load_task(cfg)
    init_keys, batch_keys = towers.seed_keys(cfg.seed, 2)
    idx = jax.vmap(lambda k: towers.batch_indices(k, task.num_examples, cfg.batch_size, 15))(
        batch_keys
    )
    return cfg, task, data, init_keys, idx


def test_end_to_end_writes_documented_results(tmp_path):
    cfg = tiny_config()
    results = towers.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    for field in ("settings", "rows", "spread", "checks", "table", "figures", "config"):
        assert field in saved
    assert len(saved["rows"]) == 2 * 2  # (sgd, adam) x heights (0, 2)
    row = saved["rows"][0]
    for field in ("test_accuracy", "train_loss", "lr_trajectory", "lr_steps", "spread", "stack"):
        assert field in row
    assert np.shape(row["test_accuracy"]) == (2,)
    assert np.shape(row["test_accuracy_seeds"]) == (2, 2)
    assert np.shape(row["lr_trajectory"]) == (2, 3) and row["lr_steps"] == [5, 10, 15]
    assert set(saved["spread"]) == {"sgd", "adam"} and set(saved["spread"]["sgd"]) == {"0", "2"}
    assert "sgd_spread_shrinks_height0_to_height2" in saved["checks"]
    assert "spread_shrinks_height0_to_height2_all" in saved["checks"]
    # height 0 keeps its learning rate; the tower moves it
    h0 = next(r for r in saved["rows"] if r["optimizer"] == "sgd" and r["height"] == 0)
    h2 = next(r for r in saved["rows"] if r["optimizer"] == "sgd" and r["height"] == 2)
    np.testing.assert_allclose(np.asarray(h0["lr_trajectory"])[:, -1], h0["lr0"], rtol=1e-6)
    assert not np.allclose(np.asarray(h2["lr_trajectory"])[:, -1], h2["lr0"], rtol=1e-3)
    assert h2["stack"] == "SGD/Adam/Adam"
    for name in saved["figures"]:
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "table.md").read_text().startswith("| stack | height |")
    assert "spread" in towers.summarize(results)


def test_height0_equals_plain_optax_sgd_loop(small):
    cfg, task, data, init_keys, idx = small
    lr0s = jnp.asarray([1e-3, 0.1], task.dtype)
    tx = towers.make_optimizer("sgd", 0, cfg.hyper_optimizers, cfg.hyper_lrs)
    test_x, test_y = jnp.asarray(data.test_images), jnp.asarray(data.test_labels)
    res = towers.sweep(tx, 0, task, test_x, test_y, lr0s, init_keys, idx)

    x, y = np.asarray(task.train_images), np.asarray(task.train_labels)
    grad = jax.jit(jax.value_and_grad(mnist_task.cross_entropy))
    for s in range(2):
        for j, lr in enumerate([1e-3, 0.1]):
            params = task.init_params(init_keys[s])
            opt = optax.sgd(lr)
            state = opt.init(params)
            for rows in np.asarray(idx[s]):
                _, g = grad(params, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
                u, state = opt.update(g, state)
                params = optax.apply_updates(params, u)
            acc = mnist_task.accuracy(params, test_x, test_y)
            np.testing.assert_allclose(res["test_accuracy"][s, j], acc, atol=1e-6)
            np.testing.assert_allclose(
                res["train_loss"][s, j], mnist_task.cross_entropy(params, x, y), rtol=1e-5
            )


@pytest.mark.parametrize(("base", "height"), [("sgd", 2), ("adam", 1)])
def test_vmapped_sweep_equals_individual_runs(small, base, height):
    cfg, task, _, init_keys, idx = small
    lr0s = [1e-3, 0.1]
    tx = towers.make_optimizer(base, height, cfg.hyper_optimizers, cfg.hyper_lrs)
    _, lrs_v, losses_v = jax.jit(
        jax.vmap(
            lambda lr: towers.train(tx, height, task, task.init_params(init_keys[0]), lr, idx[0])
        )
    )(jnp.asarray(lr0s, task.dtype))
    for j, lr in enumerate(lr0s):
        # built with lr0 as the tower's own initial value, not overwritten in the state
        tx_j = towers.make_optimizer(base, height, cfg.hyper_optimizers, cfg.hyper_lrs, lr0=lr)
        params = task.init_params(init_keys[0])
        _, lrs, losses = jax.jit(
            lambda p, tx_j=tx_j, lr=lr: towers.train(tx_j, height, task, p, lr, idx[0])
        )(params)
        np.testing.assert_allclose(lrs_v[j], lrs, rtol=1e-5)
        np.testing.assert_allclose(losses_v[j], losses, rtol=1e-4, atol=1e-6)
        assert float(lrs[-1]) != pytest.approx(lr, rel=1e-3)  # it is learned


def test_batch_indices_are_epochs_of_permutations():
    idx = np.asarray(towers.batch_indices(jax.random.key(1), 10, 3, 7))
    assert idx.shape == (7, 3)
    for e in range(2):  # 3 minibatches per epoch, no repeats within an epoch
        epoch = idx[3 * e : 3 * e + 3].ravel()
        assert len(set(epoch.tolist())) == 9
    with pytest.raises(ValueError, match="batch_size"):
        towers.batch_indices(jax.random.key(1), 2, 3, 1)


def test_make_optimizer_validates_height():
    with pytest.raises(ValueError, match="height"):
        towers.make_optimizer("sgd", 4, ("adam", "adam", "adam"), (0.1, 0.03, 0.01))
    assert towers.stack_name("adam", 3, ("adam", "sgd", "sgd")) == "Adam/Adam/SGD/SGD"
