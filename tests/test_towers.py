"""The towers experiment: end to end on a tiny config, height 0 = a plain optax
SGD (and warmed-up Adam) loop written here, the vmapped lr0 sweep = individual runs, and
the sweep/warm-up/check logic of the config."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import cli, towers
from l2l_jax import hyper
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


@pytest.mark.slow
def test_end_to_end_writes_documented_results(tmp_path):
    cfg = tiny_config()
    cfg.optimizers = ("adam",)  # SGD's sweep is checked below; 4 compilations, not 6
    results = towers.run(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    for field in ("settings", "rows", "spread", "checks", "table", "figures", "config"):
        assert field in saved
    # (adam with warm-up, adam without warm-up as a reference) x heights (0, 2)
    assert len(saved["rows"]) == 2 * 2
    assert [r["variant"] for r in saved["rows"]][::2] == ["adam", "adam_no_warmup"]
    row = saved["rows"][0]
    for field in ("test_accuracy", "train_loss", "lr_trajectory", "lr_steps", "spread", "stack"):
        assert field in row
    assert np.shape(row["test_accuracy"]) == (2,)
    assert np.shape(row["test_accuracy_seeds"]) == (2, 2)
    assert np.shape(row["lr_trajectory"]) == (2, 3) and row["lr_steps"] == [5, 10, 15]
    assert set(saved["spread"]) == {"adam", "adam_no_warmup"}
    assert set(saved["spread"]["adam"]) == {"0", "2"}
    assert "adam_spread_shrinks_height0_to_height2" in saved["checks"]
    assert "adam_no_warmup_spread_shrinks_height0_to_height2" in saved["checks"]
    assert saved["checks"]["acceptance_variants"] == ["adam"]
    assert "spread_shrinks_height0_to_height2_all" in saved["checks"]
    assert saved["settings"]["warmup_factor_at_last_step"]["adam"] == pytest.approx(15 / 2000)
    # height 0 keeps its learning rate; the tower moves it
    h0 = next(r for r in saved["rows"] if r["variant"] == "adam" and r["height"] == 0)
    h2 = next(r for r in saved["rows"] if r["variant"] == "adam" and r["height"] == 2)
    np.testing.assert_allclose(np.asarray(h0["lr_trajectory"])[:, -1], h0["lr0"], rtol=1e-6)
    assert not np.allclose(np.asarray(h2["lr_trajectory"])[:, -1], h2["lr0"], rtol=1e-3)
    assert h2["stack"] == "Adam/Adam/Adam" and h2["warmup_steps"] == 2000
    for name in saved["figures"]:
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| stack | height | warm-up |")
    assert "| linear, 2000 steps |" in table and "| none (reference) |" in table
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


def test_default_config_sweeps_full_range_with_untuned_adam_warmup():
    """Every variant sweeps lr0 over [1e-6, 1]; Adam's warm-up is Ma & Yarats's
    2 / (1 - b2) for optax's b2 = 0.999, SGD has none; the no-warm-up Adam is a reference."""
    for preset in ("default", "paper"):
        cfg = cli.load_config("towers", preset)
        grid = towers.lr0_grid(cfg)
        assert grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1.0)
        assert cfg.warmup_steps.adam == hyper.untuned_warmup_steps(0.999) == 2000
        assert cfg.warmup_steps.sgd == 0
        assert towers.variants(cfg) == [
            towers.Variant("sgd", "sgd", 0),
            towers.Variant("adam", "adam", 2000),
            towers.Variant("adam_no_warmup", "adam", 0, reference=True),
        ]
    cfg.no_warmup_reference = False
    assert [v.name for v in towers.variants(cfg)] == ["sgd", "adam"]


def test_checks_exclude_references_from_the_acceptance():
    """A failing reference is reported under its own name but does not decide
    spread_shrinks_height0_to_height2_all; a failing main variant does."""

    def row(variant, height, accs, reference=False):
        accs = np.asarray(accs)
        return {
            "variant": variant,
            "reference": reference,
            "height": height,
            "lr0": [1e-3, 1.0],
            "test_accuracy": accs,
            "spread": float(accs.max() - accs.min()),
        }

    rows = [
        row("adam", 0, [0.9, 0.1]),
        row("adam", 2, [0.9, 0.85]),
        row("adam_no_warmup", 0, [0.9, 0.1], True),
        row("adam_no_warmup", 2, [0.95, 0.1], True),
    ]
    checks = towers.make_checks(rows)
    assert checks["adam_spread_shrinks_height0_to_height2"] is True
    assert checks["adam_no_warmup_spread_shrinks_height0_to_height2"] is False
    assert checks["adam_no_warmup_height2_lr0_below_50pct_accuracy"] == [1.0]
    assert checks["acceptance_variants"] == ["adam"]
    assert checks["spread_shrinks_height0_to_height2_all"] is True
    rows[1] = row("adam", 2, [0.9, 0.1])
    assert towers.make_checks(rows)["spread_shrinks_height0_to_height2_all"] is False


def test_height0_with_warmup_equals_optax_adam_with_linear_warmup(small):
    """Plain Adam in the sweep with warm-up K = optax.adam whose learning rate is
    lr0 * min(1, t / K), in a loop written here."""
    cfg, task, _, init_keys, idx = small
    lr0, steps = 0.1, 10
    tx = towers.make_optimizer("adam", 0, cfg.hyper_optimizers, cfg.hyper_lrs, warmup_steps=steps)
    params0 = task.init_params(init_keys[0])
    params_sweep, lrs, losses = jax.jit(
        lambda p: towers.train(tx, 0, task, p, jnp.asarray(lr0, task.dtype), idx[0])
    )(params0)
    np.testing.assert_allclose(lrs, lr0, rtol=1e-6)  # the injected lr; the factor is inside

    x, y = np.asarray(task.train_images), np.asarray(task.train_labels)
    grad = jax.jit(jax.value_and_grad(mnist_task.cross_entropy))
    opt = optax.adam(lambda count: lr0 * jnp.minimum(1.0, (count + 1.0) / steps))
    params, state = params0, opt.init(params0)
    for t, rows in enumerate(np.asarray(idx[0])):
        loss, g = grad(params, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
        np.testing.assert_allclose(losses[t], loss, rtol=1e-4)
        u, state = opt.update(g, state)
        params = optax.apply_updates(params, u)
    # float32 jit-vs-eager noise is ~1e-5; a missing or shifted factor would differ by
    # about lr0 / steps = 1e-2 per step
    for a, b in zip(jax.tree.leaves(params_sweep), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
