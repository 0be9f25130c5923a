"""The MLP learned optimizer (Metz et al. 2019; Wang et al. 2021, Sec. 5).

Features and MLP against a NumPy re-implementation, small initial steps, extreme
gradients, meta-gradients through an unroll vs finite differences, the optax example of
docs/learned_optimizer.md, and the orbax save/load roundtrip.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import inner, learned, metagrad, objectives, tasks
from l2l_jax.learned import mlp_lopt

ROOT = Path(__file__).resolve().parents[1]
SMALL = learned.LOptConfig(hidden_sizes=(6, 5), decays=(0.5, 0.99), time_scales=(1.0, 10.0))
_features = jax.jit(learned.features, static_argnums=5)


def _params(dtype, key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "w": jax.random.normal(k1, (3, 4), dtype),
        "b": jax.random.normal(k2, (5,), dtype),
        "s": jax.random.normal(k3, (), dtype),
    }


def _random_meta_params(lopt, seed, dtype, scale=1.0):
    """A fixed weight set drawn with NumPy (non-zero biases, so every term is tested)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.normal(size=s.shape), dtype), lopt.meta_params_shapes
    )


# ----------------------------------------------------------------- NumPy re-implementation


def _np_normalize(x, eps):
    axes = tuple(range(x.ndim - 1))
    return x / np.sqrt(eps + np.mean(x**2, axis=axes, keepdims=True))


def _np_mlp(meta_params, cfg, x):
    for i in range(len(cfg.hidden_sizes)):
        layer = meta_params[f"hidden_{i}"]
        x = np.maximum(x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"]), 0.0)
    return x @ np.asarray(meta_params["out"]["kernel"]) + np.asarray(meta_params["out"]["bias"])


def _np_step(meta_params, cfg, g, p, m, v, t):
    """One update of one tensor, written from the documented feature list."""
    b = np.asarray(cfg.decays)
    m = b * m + (1 - b) * g[..., None]
    v = b * v + (1 - b) * g[..., None] ** 2
    r = np.sqrt(v + cfg.rms_eps)
    x = np.concatenate([g[..., None], p[..., None], m, r, m / r, 1 / r], axis=-1)
    x = _np_normalize(x, cfg.norm_eps)
    tf = np.tanh(t / np.asarray(cfg.time_scales) - 1)
    x = np.concatenate([x, np.broadcast_to(tf, (*p.shape, tf.size))], axis=-1)
    out = _np_mlp(meta_params, cfg, x)
    step = out[..., 0] * np.exp(cfg.exp_mult * out[..., 1]) * cfg.step_mult
    return -step, m, v, x, out


def test_paper_architecture_has_31_features():
    cfg = learned.LOptConfig()
    names = learned.feature_names(cfg)
    assert cfg.num_features == len(names) == 31
    assert names[:3] == ("grad", "param", "momentum[0.5]") and names[-1] == "tanh(t/10000-1)"
    shapes = learned.MLPLOpt(cfg).meta_params_shapes
    assert shapes["hidden_0"]["kernel"].shape == (31, 32)
    assert shapes["out"]["kernel"].shape == (32, 2)


@pytest.mark.parametrize("cfg", [SMALL, learned.LOptConfig()], ids=["small", "paper"])
def test_features_and_updates_match_numpy(cfg):
    with jax.enable_x64(True):
        lopt = learned.MLPLOpt(cfg)
        meta_params = _random_meta_params(lopt, 0, jnp.float64)
        params = _params(jnp.float64)
        state = lopt.init(params)
        update = jax.jit(lopt.update)
        np_state = {k: (np.zeros((*np.shape(p), len(cfg.decays))),) * 2 for k, p in params.items()}
        for t in range(3):
            grads = _params(jnp.float64, key=10 + t)
            updates, new_state = update(meta_params, grads, state, params)
            for k in params:
                g, p = np.asarray(grads[k]), np.asarray(params[k])
                step, m, v, x, out = _np_step(meta_params, cfg, g, p, *np_state[k], t)
                feats = _features(
                    grads[k],
                    params[k],
                    [m[k] for m in new_state.momentum],
                    [v[k] for v in new_state.second_moment],
                    state.count,
                    cfg,
                )
                np.testing.assert_allclose(feats, x, rtol=1e-10, atol=1e-14)
                np.testing.assert_allclose(jax.jit(lopt.apply)(meta_params, feats), out, rtol=1e-10)
                np.testing.assert_allclose(updates[k], step, rtol=1e-10, atol=1e-16)
                for i in range(len(cfg.decays)):  # NumPy: a trailing axis of K decays
                    np.testing.assert_allclose(new_state.momentum[i][k], m[..., i], rtol=1e-12)
                    np.testing.assert_allclose(new_state.second_moment[i][k], v[..., i], rtol=1e-12)
                np_state[k] = (m, v)
            assert int(new_state.count) == t + 1
            params = optax.apply_updates(params, updates)
            state = new_state


def test_initial_steps_are_small():
    lopt = learned.MLPLOpt()
    cfg = lopt.config
    meta_params = lopt.init_meta_params(jax.random.key(0))
    params = {"w": jax.random.normal(jax.random.key(1), (40, 30)), "b": jnp.zeros(30)}
    state = lopt.init(params)
    update, apply = jax.jit(lopt.update), jax.jit(lopt.apply)
    for t in range(3):
        keys = dict(zip(params, jax.random.split(jax.random.key(t), len(params)), strict=True))
        grads = {k: jax.random.normal(keys[k], p.shape) for k, p in params.items()}
        updates, new_state = update(meta_params, grads, state, params)
        for k in params:
            feats = _features(
                grads[k],
                params[k],
                [m[k] for m in new_state.momentum],
                [v[k] for v in new_state.second_moment],
                state.count,
                cfg,
            )
            d, m = jnp.moveaxis(apply(meta_params, feats), -1, 0)
            bound = cfg.step_mult * jnp.abs(d) * jnp.exp(cfg.exp_mult * m)
            # atol: float32 rounding of the MLP's sums, taken in another order by the
            # fused update (both forms are within ~1.2e-9 of float64 here).
            np.testing.assert_allclose(jnp.abs(updates[k]), bound, rtol=1e-5, atol=5e-9)
            # d and m are O(1) at initialization: steps of order step_mult.
            assert float(jnp.max(jnp.abs(updates[k]))) < 20 * cfg.step_mult
            assert float(jnp.mean(jnp.abs(updates[k]))) < 3 * cfg.step_mult
        params, state = optax.apply_updates(params, updates), new_state


def test_normalization_of_huge_tiny_and_zero_tensors():
    x = jnp.asarray([[1.0], [-2.0], [3.0]])
    unit = learned.second_moment_normalize(x, (0,), 1e-5)
    assert float(jnp.sqrt(jnp.mean(unit**2))) == pytest.approx(1.0, rel=1e-5)
    huge = learned.second_moment_normalize(1e30 * x, (0,), 1e-5)  # float32: x^2 overflows
    np.testing.assert_allclose(huge, x / jnp.sqrt(jnp.mean(x**2)), rtol=1e-6)
    tiny = learned.second_moment_normalize(1e-30 * x, (0,), 1e-5)  # ~ x / sqrt(eps)
    assert bool(jnp.all(jnp.isfinite(tiny))) and float(jnp.max(jnp.abs(tiny))) < 1e-18
    zero = learned.second_moment_normalize(0 * x, (0,), 1e-5)
    assert bool(jnp.all(zero == 0))
    for scale in (1e30, 1e-30, 0.0):
        g = jax.grad(lambda z: jnp.sum(learned.second_moment_normalize(z, (0,), 1e-5) ** 3))(
            scale * x
        )
        assert bool(jnp.all(jnp.isfinite(g)))


def test_when_any_runs_its_work_only_for_a_batch_that_needs_it():
    """Under vmap, a batch whose flags are all false never runs the pass; one true flag
    runs it once (batched) and only that run takes its value."""
    calls = []

    def f(flag, x):
        def compute():
            jax.debug.callback(lambda: calls.append(1))
            return 2 * x

        return mlp_lopt._when_any(flag, compute, x)

    batched = jax.jit(jax.vmap(f))
    x = jnp.arange(3.0)
    np.testing.assert_array_equal(batched(jnp.zeros(3, bool), x), x)
    assert calls == []
    np.testing.assert_array_equal(batched(jnp.asarray([False, True, False]), x), [0, 2, 2])
    assert calls == [1]


def _eager_columns(g, p, m, v, cfg):
    """The normalized columns with the fallback's scaled sums always computed (the form
    before the pass became lazy): a reference for values and reverse mode."""
    out = []
    for c in mlp_lopt.raw_feature_columns(g, p, m, v, cfg):
        plain = jnp.sum(jnp.square(c))
        scaled = jnp.sum(jnp.square(c * 2.0**-80))
        huge = ~jnp.isfinite(plain)
        b = jnp.where(
            huge,
            jax.lax.rsqrt(jnp.where(huge, scaled, 1.0) / c.size),
            jax.lax.rsqrt(cfg.norm_eps + jnp.where(huge, 0.0, plain) / c.size),
        )
        out.append((c * jnp.where(huge, 2.0**-80, 1.0)) * b)
    return out


def test_feature_columns_with_the_lazy_fallback_match_float64_and_the_eager_form():
    """Two runs vmapped, one with gradients of 1e25 (their squares overflow float32, so
    that run needs the fallback), one ordinary: each column matches the float64
    normalization ``c / sqrt(eps + mean(c^2))``, and its derivatives, in reverse and in
    forward mode, match autodiff of the eager form (same float32 operations, the scaled
    sums always computed). One decay (6 columns) keeps the five programs small."""
    cfg = learned.LOptConfig(decays=(0.9,))
    keys = iter(jax.random.split(jax.random.key(5), 16))
    shape = (2, 16, 8)
    g = jax.random.normal(next(keys), shape) * jnp.asarray([1.0, 1e25])[:, None, None]
    p = jax.random.normal(next(keys), shape)
    m = tuple(1e-2 * jax.random.normal(next(keys), shape) for _ in cfg.decays)
    v = tuple(1e-3 * jax.random.uniform(next(keys), shape) for _ in cfg.decays)
    lazy = jax.jit(jax.vmap(lambda *a: mlp_lopt.feature_columns(*a, cfg)))
    got = lazy(g, p, m, v)
    raw = jax.vmap(lambda *a: mlp_lopt.raw_feature_columns(*a, cfg))(g, p, m, v)
    for c, col in zip(got, raw, strict=True):
        c64 = np.asarray(col, np.float64)
        want = c64 / np.sqrt(cfg.norm_eps + np.mean(c64**2, axis=(1, 2), keepdims=True))
        np.testing.assert_allclose(c, want, rtol=2e-6, atol=1e-30)

    def loss(columns_fn):
        return lambda *a: sum(jnp.sum(jnp.sin(c)) for c in columns_fn(*a, cfg))

    args = (g, p, m, v)
    grad_lazy = jax.jit(jax.vmap(jax.grad(loss(mlp_lopt.feature_columns), (0, 1, 2, 3))))(*args)
    grad_eager = jax.jit(jax.vmap(jax.grad(loss(_eager_columns), (0, 1, 2, 3))))(*args)
    for a, b in zip(jax.tree.leaves(grad_lazy), jax.tree.leaves(grad_eager), strict=True):
        assert bool(jnp.all(jnp.isfinite(a)))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-30)

    # forward mode too (the stability analysis takes Jacobians with jacfwd)
    def jvp(columns_fn):
        ones = functools.partial(jax.tree.map, jnp.ones_like)
        return jax.jit(jax.vmap(lambda *a: jax.jvp(loss(columns_fn), a, ones(a))[1]))

    np.testing.assert_allclose(
        jvp(mlp_lopt.feature_columns)(*args), jvp(_eager_columns)(*args), rtol=1e-5
    )


PAPER_LOPT = learned.MLPLOpt()


@jax.jit
def _extreme_step(meta_params, grads, state, params):
    """One update and the meta-gradient of its sum; the gradients are arguments, so every
    scale below runs this one program."""

    def total(mp):
        updates, new_state = PAPER_LOPT.update(mp, grads, state, params)
        return sum(jnp.sum(u) for u in jax.tree.leaves(updates)), (updates, new_state)

    (_, (updates, new_state)), meta_grad = jax.value_and_grad(total, has_aux=True)(meta_params)
    return updates, new_state, meta_grad


@pytest.mark.parametrize("scale", [1e30, 1e-30, 0.0])
def test_extreme_gradients_give_finite_steps_and_meta_gradients(scale):
    lopt = PAPER_LOPT
    meta_params = lopt.init_meta_params(jax.random.key(0))
    params = _params(jnp.float32)
    grads = jax.tree.map(lambda p: scale * jnp.sign(p + 0.1) * (1 + jnp.abs(p)), params)
    state = lopt.init(params)
    for _ in range(3):  # accumulators with history, as well as the first step
        updates, state, meta_grad = _extreme_step(meta_params, grads, state, params)
        for tree in (updates, state, meta_grad):
            assert all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))
        assert max(float(jnp.max(jnp.abs(u))) for u in jax.tree.leaves(updates)) < 0.02
    feats = _features(
        grads["w"],
        params["w"],
        [m["w"] for m in state.momentum],
        [v["w"] for v in state.second_moment],
        2,
        lopt.config,
    )
    g_feature, inv_rms = feats[..., 0], feats[..., 17:22]
    if scale == 1e30:  # normalized like any gradient
        assert float(jnp.sqrt(jnp.mean(g_feature**2))) == pytest.approx(1.0, rel=1e-4)
    else:  # below sqrt(norm_eps): reads as (numerically) zero
        assert float(jnp.max(jnp.abs(g_feature))) < 1e-18
        np.testing.assert_allclose(inv_rms, 1.0, rtol=1e-4)  # constant 1/rms -> 1


def _quadratic(dtype):
    return tasks.Quadratic.random(jax.random.key(3), dim=6, scale=0.5).astype(dtype)


def test_meta_gradient_of_unrolled_loss_matches_finite_differences():
    steps = 20
    with jax.enable_x64(True):
        task = _quadratic(jnp.float64)
        cfg = learned.LOptConfig(step_mult=0.05)  # visible progress in 20 steps
        lopt = learned.MLPLOpt(cfg)
        meta_params = _random_meta_params(lopt, 1, jnp.float64, scale=0.3)

        def loss(mp):
            def step(carry, _):
                w, s = carry
                g = jax.grad(task.loss)(w)
                updates, s = lopt.update(mp, g, s, w)
                return (optax.apply_updates(w, updates), s), None

            w0 = task.init_params()
            (w, _), _ = jax.lax.scan(step, (w0, lopt.init(w0)), None, length=steps)
            return jnp.log(task.loss(w))

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        value, grad = value_and_grad(meta_params)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grad))
        initial = float(jnp.log(task.loss(task.init_params())))
        assert abs(float(value) - initial) > 1e-2  # the meta-parameters matter
        h = 1e-6
        for path in (
            ("out", "kernel", (3, 0)),
            ("out", "bias", (1,)),
            ("hidden_0", "kernel", (0, 5)),
            ("hidden_0", "bias", (7,)),
        ):
            layer, name, idx = path

            def shifted(delta, layer=layer, name=name, idx=idx):
                new = jax.tree.map(lambda a: a, meta_params)
                new[layer] = dict(new[layer])
                new[layer][name] = meta_params[layer][name].at[idx].add(delta)
                return float(value_and_grad(new)[0])  # the same program: no forward-only compile

            fd = (shifted(h) - shifted(-h)) / (2 * h)
            analytic = float(grad[layer][name][idx])
            assert analytic == pytest.approx(fd, rel=1e-5, abs=1e-10), path

        # The inner-optimizer adapter runs the same unroll, and meta_objective accepts it.
        opt = learned.inner_optimizer(lopt)
        result = inner.unroll(task, opt, meta_params, steps)
        assert float(jnp.log(result.final_loss)) == pytest.approx(float(value), rel=1e-12)
        F = metagrad.meta_objective(task, opt, objectives.log_loss(), steps=steps)
        g2 = jax.grad(F)(meta_params)
        np.testing.assert_allclose(g2["out"]["kernel"], grad["out"]["kernel"] / steps, rtol=1e-8)


def test_inner_optimizer_rejects_wrong_hyperparameters():
    lopt = learned.MLPLOpt(SMALL)
    task = _quadratic(jnp.float32)
    F = metagrad.meta_objective(task, learned.inner_optimizer(lopt), objectives.log_loss(), steps=3)
    with pytest.raises(TypeError, match="meta-parameters"):
        F(jnp.asarray(0.1))


def test_hand_built_descent_meta_params_reduce_the_loss():
    """Sign convention: d = c * (normalized gradient) must descend (updates = -step)."""
    lopt = learned.MLPLOpt(learned.LOptConfig(step_mult=0.02))
    mp = jax.tree.map(jnp.zeros_like, lopt.init_meta_params(jax.random.key(0)))
    kernel = mp["hidden_0"]["kernel"].at[0, 0].set(1.0).at[0, 1].set(-1.0)  # relu(+-g)
    mp["hidden_0"]["kernel"] = kernel
    mp["out"]["kernel"] = mp["out"]["kernel"].at[0, 0].set(1.0).at[1, 0].set(-1.0)
    task = _quadratic(jnp.float32)
    losses = inner.unroll(task, learned.inner_optimizer(lopt), mp, 30).losses
    assert bool(jnp.all(jnp.diff(losses[:15]) < 0)) and float(losses[-1]) < 0.01 * float(losses[0])


_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def test_docs_optax_example_trains_a_flax_model():
    doc = ROOT / "docs" / "learned_optimizer.md"
    blocks = _BLOCK.findall(doc.read_text())
    assert len(blocks) == 1 and len(blocks[0].strip().splitlines()) <= 17
    namespace: dict = {"__name__": "docs_example_learned_optimizer"}
    exec(compile(blocks[0], f"{doc.name} [python block]", "exec"), namespace)
    losses = namespace["losses"]
    assert len(losses) == 20 and np.all(np.isfinite(losses))
    assert losses[-1] < losses[0]
    assert int(namespace["optimizer"].opt_state.count[...]) == 20


def test_as_optax_requires_params():
    lopt = learned.MLPLOpt(SMALL)
    tx = learned.as_optax(lopt, lopt.init_meta_params(jax.random.key(0)))
    params = _params(jnp.float32)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))


def test_save_load_roundtrip(tmp_path):
    cfg = learned.LOptConfig(hidden_sizes=(8, 4), decays=(0.9,), time_scales=(5.0,), step_mult=0.01)
    lopt = learned.MLPLOpt(cfg)
    meta_params = _random_meta_params(lopt, 2, jnp.float32)
    path = learned.save(tmp_path / "lopt", lopt, meta_params)
    loaded, loaded_params = learned.load(path)
    assert loaded == lopt and loaded.config == cfg
    chex_equal = jax.tree.map(
        lambda a, b: a.dtype == b.dtype and bool(jnp.all(a == b)), meta_params, loaded_params
    )
    assert all(jax.tree.leaves(chex_equal))
    params, grads = _params(jnp.float32), _params(jnp.float32, key=5)
    u1, s1 = jax.jit(lopt.update)(meta_params, grads, lopt.init(params), params)
    u2, s2 = jax.jit(loaded.update)(loaded_params, grads, loaded.init(params), params)
    for a, b in zip(jax.tree.leaves((u1, s1)), jax.tree.leaves((u2, s2)), strict=True):
        np.testing.assert_array_equal(a, b)
    # From the module itself; an existing or missing path is an error.
    net = lopt.net(jax.random.key(4))
    _, from_net = learned.load(learned.save(tmp_path / "net", net))
    assert all(
        jax.tree.leaves(
            jax.tree.map(
                lambda a, b: bool(jnp.all(a == b)),
                from_net,
                lopt.init_meta_params(jax.random.key(4)),
            )
        )
    )
    with pytest.raises(FileNotFoundError):
        learned.load(tmp_path / "missing")
    with pytest.raises(ValueError):
        learned.save(path, lopt, meta_params)


def test_descent_init_checks_its_arguments_and_keeps_other_units():
    lopt = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=(6, 5)))
    random = lopt.init_meta_params(jax.random.key(0))
    warm = learned.descent_init(lopt, random, feature="grad", scale=2.0)
    np.testing.assert_array_equal(
        warm["hidden_0"]["kernel"][:, 2:], random["hidden_0"]["kernel"][:, 2:]
    )
    np.testing.assert_array_equal(warm["out"]["kernel"][:, 0], [2.0, -2.0, 0, 0, 0])
    # two hidden layers pass x through as relu(x), relu(-x): the step is -step_mult * 2 * g~
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    grads = {"w": jnp.asarray([3.0, -1.0, 0.5, 0.0, 2.0, -4.0])}
    updates, _ = lopt.update(warm, grads, lopt.init(params), params)
    g = np.asarray(grads["w"], np.float64)
    expected = -lopt.config.step_mult * 2.0 * g / np.sqrt(lopt.config.norm_eps + np.mean(g**2))
    np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="feature must be one of"):
        learned.descent_init(lopt, random, feature="adam")
    narrow = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=(1,)))
    with pytest.raises(ValueError, match=">= 2 units per hidden layer"):
        learned.descent_init(narrow, narrow.init_meta_params(jax.random.key(0)))


# -------------------------------------- fused update vs the plain (matmul) reference form


def _reference_update(lopt, meta_params, grads, state, params):
    """``MLPLOpt.update`` written in the plain form: stacked features, ``lopt.apply``."""
    cfg = lopt.config
    if cfg.first_order:
        grads = jax.lax.stop_gradient(grads)

    def one(g, p, ms, vs):
        mv = [mlp_lopt.accumulate(m, v, g, b) for m, v, b in zip(ms, vs, cfg.decays, strict=True)]
        m, v = [a for a, _ in mv], [b for _, b in mv]
        x = learned.features(g, p, m, v, state.count, cfg)
        return -learned.step_from_output(lopt.apply(meta_params, x), cfg), m, v

    per_decay = lambda trees, k: [t[k] for t in trees]
    out = {
        k: one(grads[k], params[k], per_decay(state.momentum, k), per_decay(state.second_moment, k))
        for k in params
    }
    updates = {k: o[0] for k, o in out.items()}
    decays = range(len(cfg.decays))
    momentum = tuple({k: o[1][i] for k, o in out.items()} for i in decays)
    second_moment = tuple({k: o[2][i] for k, o in out.items()} for i in decays)
    return updates, learned.LOptState(
        momentum=momentum, second_moment=second_moment, count=state.count + 1
    )


def _fused_params(dtype):
    """Tensors big enough for the fused MLP (>= MIN_FUSED_SIZE), and a tiny one."""
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    return {
        "w": jax.random.normal(k1, (16, 12), dtype),
        "b": jax.random.normal(k2, (130,), dtype),
        "s": jax.random.normal(k3, (3,), dtype),
    }


def _unrolled_loss(update, meta_params, params, steps=3, *, with_steps=False):
    """A loss of the parameters after ``steps`` updates on ``sum(sin(p) * c)``; with
    ``with_steps``, also every step's ``(updates, new_state)`` stacked (an aux output)."""
    lopt_state = learned.MLPLOpt(SMALL).init(params)

    def body(carry, t):
        p, s = carry
        g = jax.grad(lambda q: sum(jnp.sum(jnp.sin(x + t) * x) for x in jax.tree.leaves(q)))(p)
        u, s = update(meta_params, g, s, p)
        return (optax.apply_updates(p, u), s), (u, s)

    (p, _), per_step = jax.lax.scan(body, (params, lopt_state), jnp.arange(steps, dtype=float))
    loss = sum(jnp.sum(jnp.cos(x) * x) for x in jax.tree.leaves(p))
    return (loss, per_step) if with_steps else loss


def _assert_trees_close(actual, desired, rtol):
    for a, d in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
        scale = float(jnp.max(jnp.abs(d)))
        assert float(jnp.max(jnp.abs(a - d))) <= rtol * scale, (a, d)


@pytest.mark.parametrize(
    "first_order, dtype",
    [
        (True, "float32"),
        pytest.param(True, "float64", marks=pytest.mark.slow),  # ~20 s of compiles each
        pytest.param(False, "float32", marks=pytest.mark.slow),  # second order: ~30 s each
        pytest.param(False, "float64", marks=pytest.mark.slow),
    ],
)
def test_fused_update_and_meta_gradients_match_the_reference_form(first_order, dtype):
    cfg = dataclasses.replace(SMALL, first_order=first_order)
    lopt = learned.MLPLOpt(cfg)
    dtype, rtol = {"float32": (jnp.float32, 1e-5), "float64": (jnp.float64, 1e-10)}[dtype]
    with jax.enable_x64(dtype == jnp.float64):
        meta_params = _random_meta_params(lopt, 2, dtype, scale=0.5)
        params = _fused_params(dtype)
        ref = functools.partial(_reference_update, lopt)
        # One program per form: the meta-gradients of the unroll, and (aux) its forward
        # pass, the updates and optimizer states of its three steps (a first step from
        # zero accumulators, then two with history).
        (grad, per_step), (grad_ref, per_step_ref) = (
            jax.jit(
                jax.grad(
                    functools.partial(_unrolled_loss, f, with_steps=True), (0, 1), has_aux=True
                )
            )(meta_params, params)
            for f in (lopt.update, ref)
        )
        for i in range(3):
            at_i = functools.partial(jax.tree.map, lambda x, i=i: x[i])
            _assert_trees_close(at_i(per_step), at_i(per_step_ref), rtol)
        _assert_trees_close(grad, grad_ref, rtol)


@pytest.mark.slow  # ~30 s of compiles
def test_fused_update_under_vmap_with_batched_meta_params():
    lopt = learned.MLPLOpt(SMALL)
    stacked = jax.tree.map(
        lambda *a: jnp.stack(a), *(_random_meta_params(lopt, s, jnp.float32) for s in (3, 4))
    )
    params = _fused_params(jnp.float32)

    def per_run(update):
        return jax.jit(
            jax.vmap(jax.value_and_grad(functools.partial(_unrolled_loss, update)), (0, None))
        )

    ref = functools.partial(_reference_update, lopt)
    (value, grad), (value_ref, grad_ref) = (per_run(f)(stacked, params) for f in (lopt.update, ref))
    _assert_trees_close(value, value_ref, 1e-5)
    _assert_trees_close(grad, grad_ref, 1e-5)


def _fused_mlp_case(dtype):
    """``(layers, columns, c)``: an MLP 5-8-3-2 on 4096 coordinates (its 3- and 2-output
    layers backpropagate elementwise, its first by a product) and the loss weights ``c``;
    float32 draws, cast to ``dtype``."""
    keys = jax.random.split(jax.random.key(11), 4)
    normal = lambda k, shape: jax.random.normal(k, shape, jnp.float32)
    sizes = (5, 8, 3, 2)
    layers = tuple(
        (
            normal(jax.random.fold_in(keys[0], i), (a, b)) / np.sqrt(a),
            0.1 * normal(jax.random.fold_in(keys[1], i), (b,)),
        )
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    )
    columns = tuple(normal(jax.random.fold_in(keys[2], i), (4096,)) for i in range(sizes[0]))
    c = normal(keys[3], (4096,))
    return jax.tree.map(lambda x: x.astype(dtype), (layers, columns, c))


def _head(a, b):
    return a * jnp.exp(0.3 * b)


def _fused_mlp_grads(residual_dtype, dtype):
    """Gradients of ``sum(c * head(MLP(columns)))`` with respect to the layers and the
    columns (flat, float64): ``fused_mlp``'s reverse pass with ``residual_dtype``, or with
    ``residual_dtype="autodiff"`` autodiff of the matmul form."""
    layers, columns, c = _fused_mlp_case(dtype)

    def loss(layers, columns):
        if residual_dtype == "autodiff":
            out = _head(*learned.common.mlp_matmul(layers, columns))
        else:
            out = learned.common.fused_mlp(_head, layers, columns, residual_dtype)
        return jnp.sum(c * out)

    grads = jax.jit(jax.grad(loss, (0, 1)))(layers, columns)
    return np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(grads)])


def _numpy_bfloat16_reverse_pass() -> np.ndarray:
    """The documented rounded pass in NumPy, float64 arithmetic: X, H, the kernels in the
    products and every stored dH rounded to bfloat16 once, each where ``fused_mlp`` keeps
    it; the top cotangent (from the head) and the elementwise backprop not rounded."""
    import ml_dtypes

    r = lambda x: np.asarray(x, np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)
    layers, columns, c = jax.tree.map(
        lambda x: np.asarray(x, np.float64), _fused_mlp_case("float32")
    )
    inputs = [r(np.stack(columns, axis=-1))]
    for w, b in layers[:-1]:
        inputs.append(r(np.maximum(inputs[-1] @ r(w) + b, 0)))
    out = inputs[-1] @ r(layers[-1][0]) + layers[-1][1]
    e = np.exp(0.3 * out[:, 1])
    delta = np.stack([c * e, c * 0.3 * out[:, 0] * e], axis=-1)
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        w, _ = layers[i]
        grads[i] = (inputs[i].T @ r(delta), delta.sum(axis=0))
        if i > 0 and w.shape[1] <= 4:
            delta = r(np.where(inputs[i] > 0, delta @ w.T, 0))
        else:
            delta = r(delta) @ r(w).T
            if i > 0:
                delta = r(np.where(inputs[i] > 0, delta, 0))
    leaves = [g for pair in grads for g in pair] + [delta[:, k] for k in range(delta.shape[1])]
    return np.concatenate([np.ravel(g) for g in leaves])


def test_fused_mlp_reduced_precision_reverse_pass_is_opt_in_and_bounded():
    """``residual_dtype="bfloat16"`` computes the documented rounded pass (NumPy, float64
    arithmetic, the same roundings: normwise within 1e-4, the odd value that float32 and
    float64 round to different bfloat16 neighbours), and its error against the exact
    gradient is bfloat16's (cosine >= 0.999; about 10 u normwise here, u = 2^-8, after
    three roundings per path and cancellation in sums over 4096 coordinates) far above the
    exact float32 pass's (<= 1e-5); ``LOptConfig`` refuses another dtype, naming the field."""
    with jax.enable_x64(True):
        exact64 = _fused_mlp_grads("autodiff", jnp.float64)
    exact32 = _fused_mlp_grads(None, jnp.float32)
    rounded = _fused_mlp_grads("bfloat16", jnp.float32)
    relative = lambda g, ref: float(np.linalg.norm(g - ref) / np.linalg.norm(ref))
    assert relative(rounded, _numpy_bfloat16_reverse_pass()) <= 1e-4
    assert relative(exact32, exact64) <= 1e-5
    assert relative(rounded, exact64) > 2.0**-8  # the option rounds: not float32's error
    cosine = float(rounded @ exact64 / (np.linalg.norm(rounded) * np.linalg.norm(exact64)))
    assert cosine >= 0.999
    with pytest.raises(ValueError, match="backward_dtype must be one of"):
        learned.LOptConfig(backward_dtype="float16")
