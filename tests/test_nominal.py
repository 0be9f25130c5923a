"""The nominal-term learned optimizer (Harrison, Metz, Sohl-Dickstein 2022).

At initialization it is the nominal optimizer (optax or a NumPy reference), the decays
stay in (0, 1), meta-gradients through an unroll match finite differences, the two MLP
forms agree, and it plugs into optax, save/load and truncated meta-training.
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2l_jax import inner, learned, tasks
from l2l_jax.learned import common, nominal

N = nominal


def _params(dtype, key=0):
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "w": jax.random.normal(k1, (4, 3), dtype),
        "b": jax.random.normal(k2, (3,), dtype),
        "s": jax.random.normal(k3, (), dtype),
    }


def _grads(params, t):
    """Deterministic gradients that change from step to step."""
    return jax.tree.map(lambda p: jnp.sin((t + 1) * p) + 0.1 * (t - 2), params)


def _run(update, state, params, steps=6):
    """``steps`` updates with :func:`_grads`; the list of update trees."""
    out = []
    for t in range(steps):
        updates, state = update(_grads(params, t), state, params)
        out.append(updates)
        params = optax.apply_updates(params, updates)
    return out


# -- reduction to the nominal optimizer ------------------------------------------------------


def _np_nominal(cfg, grads_seq):
    """NumPy aggmo / adam_multi on one array (the documented formulas)."""
    bm, bv = np.asarray(cfg.momentum_decays), cfg.rms_decays[0]
    m = np.zeros((*grads_seq[0].shape, bm.size))
    v = np.zeros(grads_seq[0].shape)
    out = []
    for t, g in enumerate(grads_seq, start=1):
        m = bm * m + (1 - bm) * g[..., None]
        v = bv * v + (1 - bv) * g**2
        if cfg.estimator == "aggmo":
            d = np.mean(m / (1 - bm), axis=-1)
        else:
            m_hat = m / (1 - bm**t)
            d = np.mean(m_hat, axis=-1) / (np.sqrt(v / (1 - bv**t)) + cfg.eps)
        out.append(-cfg.learning_rate * d)
    return out


OPTAX_CASES = {
    "sgd": (dict(estimator="sgd", learning_rate=0.05), lambda: optax.sgd(0.05)),
    "momentum": (
        dict(estimator="momentum", learning_rate=0.02, momentum_decays=(0.8, 0.99)),
        lambda: optax.sgd(0.02, momentum=0.8),
    ),
    "adam": (
        dict(estimator="adam", learning_rate=0.01, momentum_decays=(0.8,), rms_decays=(0.99,)),
        lambda: optax.adam(0.01, b1=0.8, b2=0.99),
    ),
    "adamw": (
        dict(estimator="adam", weight_decay=1e-3),
        lambda: optax.adamw(1e-3, weight_decay=1.0),  # optax: lr * wd * w
    ),
}


@pytest.mark.parametrize("case", sorted(OPTAX_CASES))
def test_at_initialization_it_is_the_optax_optimizer_float64(case):
    kwargs, make_tx = OPTAX_CASES[case]
    with jax.enable_x64(True):
        lopt = N.NominalLOpt(N.NominalConfig(**kwargs))
        mp = lopt.init_meta_params(jax.random.key(0), jnp.float64)
        params, tx = _params(jnp.float64), make_tx()
        ours = _run(jax.jit(lambda g, s, p: lopt.update(mp, g, s, p)), lopt.init(params), params)
        ref = _run(jax.jit(tx.update), tx.init(params), params)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_at_initialization_default_is_adam_float32():
    """float32: within 3e-5 of optax.adam(1e-3), and closer than optax to the float64 truth
    (optax rounds 1 - 0.999**t in float32: 1.3e-5 relative at t = 1; we use expm1)."""
    lopt = N.NominalLOpt()
    mp = lopt.init_meta_params(jax.random.key(0))
    params, tx = _params(jnp.float32), optax.adam(1e-3)
    ours = _run(jax.jit(lambda g, s, p: lopt.update(mp, g, s, p)), lopt.init(params), params)
    ref = _run(jax.jit(tx.update), tx.init(params), params)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: x.astype(jnp.float64), params)
        truth = _run(jax.jit(tx.update), tx.init(p64), p64)
        truth = [np.asarray(c, np.float64) for c in jax.tree.leaves(truth)]
    errs = {"ours": 0.0, "optax": 0.0}
    as64 = lambda tree: [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    for a, b, c in zip(as64(ours), as64(ref), truth, strict=True):
        np.testing.assert_allclose(a, b, rtol=3e-5, atol=1e-10)
        errs["ours"] = max(errs["ours"], float(np.max(np.abs(a - c) / np.abs(c))))
        errs["optax"] = max(errs["optax"], float(np.max(np.abs(b - c) / np.abs(c))))
    assert errs["ours"] < errs["optax"]


@pytest.mark.parametrize("estimator", ["aggmo", "adam_multi"])
def test_at_initialization_it_is_the_numpy_nominal(estimator):
    with jax.enable_x64(True):
        cfg = N.NominalConfig(estimator=estimator, momentum_decays=(0.5, 0.9, 0.99))
        lopt = N.NominalLOpt(cfg)
        mp = lopt.init_meta_params(jax.random.key(0), jnp.float64)
        params = _params(jnp.float64)
        ours = _run(jax.jit(lambda g, s, p: lopt.update(mp, g, s, p)), lopt.init(params), params)
        # The gradients depend on the iterates: replay ours through NumPy per tensor.
        p, seq = params, []
        for upd in ours:
            seq.append(_grads(p, len(seq)))
            p = optax.apply_updates(p, upd)
        for k in params:
            ref = _np_nominal(cfg, [np.asarray(g[k]) for g in seq])
            for a, b in zip([u[k] for u in ours], ref, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_learned_terms_change_the_update_and_are_zero_at_init():
    lopt = N.NominalLOpt(N.NominalConfig(weight_decay=1e-2))
    mp = lopt.init_meta_params(jax.random.key(0))
    assert all(not jnp.any(x) for x in jax.tree.leaves(mp["out"]))
    params = _params(jnp.float32)
    update = jax.jit(lopt.update)
    u0, _ = update(mp, _grads(params, 0), lopt.init(params), params)
    moved = dict(mp, out={"kernel": mp["out"]["kernel"], "bias": jnp.asarray([0.0, 0.0, 1.0, 0.0])})
    u1, _ = update(moved, _grads(params, 0), lopt.init(params), params)
    # c = 1 on every coordinate: the nominal step grows by e, the decay term is unchanged.
    adam_part = jax.tree.map(lambda u, p: u + 1e-2 * p, u0, params)
    for a, b, p in zip(*(jax.tree.leaves(x) for x in (u1, adam_part, params)), strict=True):
        np.testing.assert_allclose(a, np.e * b - 1e-2 * p, rtol=1e-5, atol=1e-8)


# -- decays ------------------------------------------------------------------------------------


DECAYS = N.NominalLOpt(N.NominalConfig(momentum_decays=(0.5, 0.999), rms_decays=(0.9999,)))
_decays_update = jax.jit(DECAYS.update)


@pytest.mark.parametrize("offset", [-1e4, -40.0, -3.0, 0.0, 3.0, 40.0, 1e4])
def test_decays_stay_in_the_open_unit_interval(offset):
    mp = DECAYS.init_meta_params(jax.random.key(0))
    mp = dict(mp, momentum_logits=jnp.full(2, offset), rms_logits=jnp.full(1, offset))
    dec = DECAYS.decays(mp)
    for b, rest in ((dec.m, dec.m_rest), (dec.v, dec.v_rest)):
        assert bool(jnp.all((b > 0) & (b < 1) & (rest > 0) & (rest < 1)))
    if offset == 0.0:
        np.testing.assert_allclose(dec.m, [0.5, 0.999], rtol=1e-6)
        np.testing.assert_allclose(dec.v_rest, [1e-4], rtol=1e-5)
    params = _params(jnp.float32)
    update = lambda g, s, p: _decays_update(mp, g, s, p)
    for updates in _run(update, DECAYS.init(params), params, 3):
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_decay_gradients_flow():
    lopt = N.NominalLOpt(N.NominalConfig(estimator="adam_multi"))
    mp = lopt.init_meta_params(jax.random.key(0))
    params = {"w": _params(jnp.float32)["w"]}

    def total(mp):
        def body(carry, t):
            p, state = carry
            g = jax.tree.map(lambda x: jnp.sin((t + 1) * x), p)
            u, state = lopt.update(mp, g, state, p)
            return (optax.apply_updates(p, u), state), None

        (p, _), _ = jax.lax.scan(body, (params, lopt.init(params)), jnp.arange(3.0))
        return sum(jnp.sum(x) for x in jax.tree.leaves(p))

    g = jax.jit(jax.grad(total))(mp)
    assert float(jnp.min(jnp.abs(g["momentum_logits"]))) > 0
    assert float(jnp.abs(g["rms_logits"][0])) > 0


# -- meta-gradients ----------------------------------------------------------------------------


def test_meta_gradient_matches_central_finite_differences():
    steps = 8
    with jax.enable_x64(True):
        task = tasks.Quadratic.random(jax.random.key(3), dim=6, scale=0.5).astype(jnp.float64)
        cfg = N.NominalConfig(
            estimator="adam_multi",
            learning_rate=0.05,
            step_mult=0.02,
            weight_decay=0.01,
            hidden_sizes=(4, 3),
        )
        lopt = N.NominalLOpt(cfg)
        mp = N.random_meta_params(lopt, jax.random.key(1), scale=0.3, dtype=jnp.float64)
        params0 = {"a": task.init_params()[:4].reshape(2, 2), "b": task.init_params()[4:]}
        unflat = lambda p: jnp.concatenate([p["a"].ravel(), p["b"]])

        def loss(mp):
            def body(carry, _):
                p, s = carry
                g = jax.grad(lambda q: task.loss(unflat(q)))(p)
                u, s = lopt.update(mp, g, s, p)
                return (optax.apply_updates(p, u), s), None

            (p, _), _ = jax.lax.scan(body, (params0, lopt.init(params0)), None, length=steps)
            return jnp.log(task.loss(unflat(p)))

        value_and_grad = jax.jit(jax.value_and_grad(loss))
        value, grad = value_and_grad(mp)
        assert abs(float(value) - float(jnp.log(task.loss(task.init_params())))) > 1e-2
        h = 1e-6
        for path in (
            ("out", "kernel", (1, 0)),  # blackbox direction
            ("out", "kernel", (2, 2)),  # nominal controller
            ("out", "bias", (3,)),  # weight-decay controller
            ("hidden_0", "kernel", (0, 1)),
            ("hidden_1", "bias", (2,)),
            ("momentum_logits", None, (1,)),
            ("rms_logits", None, (0,)),
        ):
            name, leaf, idx = path
            get = lambda t, name=name, leaf=leaf: t[name] if leaf is None else t[name][leaf]

            def shifted(delta, name=name, leaf=leaf, idx=idx):
                new = {k: dict(v) if isinstance(v, dict) else v for k, v in mp.items()}
                if leaf is None:
                    new[name] = mp[name].at[idx].add(delta)
                else:
                    new[name][leaf] = mp[name][leaf].at[idx].add(delta)
                return float(value_and_grad(new)[0])

            fd = (shifted(h) - shifted(-h)) / (2 * h)
            assert float(get(grad)[idx]) == pytest.approx(fd, rel=1e-5, abs=1e-9), path


# -- the two MLP forms -------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [(4, 4), (3,), (5, 2, 3)])
def test_mlp_forms_agree_and_match_the_module(hidden):
    cfg = N.NominalConfig(hidden_sizes=hidden)
    lopt = N.NominalLOpt(cfg)
    mp = N.random_meta_params(lopt, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (7, 5, cfg.num_tensor_features))
    steps = jnp.tanh(jnp.arange(len(cfg.time_scales)) / 3.0 - 1)
    a = jnp.stack(jax.jit(N.mlp_matmul, static_argnums=3)(mp, x, steps, cfg), axis=-1)
    b = jnp.stack(jax.jit(N.mlp_elementwise, static_argnums=3)(mp, x, steps, cfg), axis=-1)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    full = jnp.concatenate([x, jnp.broadcast_to(steps, (7, 5, steps.size))], axis=-1)
    np.testing.assert_allclose(lopt.apply(mp, full), a, rtol=1e-5, atol=1e-5)


def test_mlp_forms_give_the_same_updates_and_meta_gradients():
    params = _params(jnp.float32)
    results = []
    for form in N.MLP_FORMS:
        cfg = N.NominalConfig(
            mlp_form=form, weight_decay=1e-2, hidden_sizes=(3, 2), controller="parameter"
        )
        lopt = N.NominalLOpt(cfg.replace(momentum_decays=(0.9,), time_scales=(10.0,)))
        mp = N.random_meta_params(lopt, jax.random.key(2))

        def total(mp, lopt=lopt):
            u, _ = lopt.update(mp, _grads(params, 0), lopt.init(params), params)
            return sum(
                jnp.vdot(a, p)
                for a, p in zip(jax.tree.leaves(u), jax.tree.leaves(params), strict=True)
            ), u

        results.append(jax.jit(jax.value_and_grad(total, has_aux=True))(mp))
    (_, u_a), g_a = results[0]
    (_, u_b), g_b = results[1]
    for a, b in zip(jax.tree.leaves((u_a, g_a)), jax.tree.leaves((u_b, g_b)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# -- robustness ----------------------------------------------------------------------------------


EXTREME = N.NominalLOpt(N.NominalConfig(estimator="adam_multi", weight_decay=1e-3))


@jax.jit
def _extreme_step(mp, grads, state, params):
    def total(mp):
        u, new_state = EXTREME.update(mp, grads, state, params)
        return sum(jnp.sum(x) for x in jax.tree.leaves(u)), (u, new_state)

    (_, (u, new_state)), g = jax.value_and_grad(total, has_aux=True)(mp)
    return u, new_state, g


@pytest.mark.parametrize("scale", [1e30, 1e-30, 0.0])
def test_extreme_gradients_give_finite_updates_and_meta_gradients(scale):
    mp = N.random_meta_params(EXTREME, jax.random.key(0), scale=0.3)
    params = _params(jnp.float32)
    grads = jax.tree.map(lambda p: scale * jnp.sign(p + 0.1) * (1 + jnp.abs(p)), params)
    state = EXTREME.init(params)
    for _ in range(3):  # accumulators with history, as well as the first step
        u, state, g = _extreme_step(mp, grads, state, params)
        for tree in (u, state, g):
            assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


SCALE_CFG = N.NominalConfig(estimator="adam_multi")


@jax.jit
def _scaled_terms(scale):
    dec = N.NominalLOpt(SCALE_CFG).decays(
        N.NominalLOpt(SCALE_CFG).init_meta_params(jax.random.key(0))
    )
    m, v = jnp.zeros((5, 7, 3)), jnp.zeros((5, 7, 1))
    for t in range(3):
        g = scale * jax.random.normal(jax.random.key(t), (5, 7))
        m, v = N.accumulate(m, v, g, dec)
    d = N.nominal_direction(g, m, v, 3, dec, SCALE_CFG)
    return d, N.blackbox_preconditioner(v, 3, dec, SCALE_CFG)


@pytest.mark.parametrize("c", [1e-3, 1e3])
def test_adam_direction_and_blackbox_preconditioner_ignore_the_gradient_scale(c):
    """Rescaling the loss by ``c`` leaves the nominal Adam step (up to ``eps``) and the
    blackbox preconditioner unchanged (the features are RMS-normalized too)."""
    (d1, rho1), (d2, rho2) = _scaled_terms(1.0), _scaled_terms(c)
    np.testing.assert_allclose(d2, d1, rtol=1e-3)
    np.testing.assert_allclose(rho2, rho1, rtol=1e-5)
    assert 0 < float(jnp.min(rho1)) and float(jnp.max(rho1)) <= 1 / SCALE_CFG.blackbox_eps


def test_blackbox_preconditioner_at_the_float32_limits():
    """Equal second moments give rho = 1 / (1 + blackbox_eps) even at the clipping limit
    (where 1 / v_hat is subnormal), and 1 / blackbox_eps for an all-zero tensor."""
    cfg = N.NominalConfig()
    dec = N.NominalLOpt(cfg).decays(N.NominalLOpt(cfg).init_meta_params(jax.random.key(0)))
    for g, expected in ((1e30, 1 / 1.1), (1.0, 1 / 1.1), (0.0, 10.0)):
        _, v = N.accumulate(jnp.zeros((6, 3)), jnp.zeros((6, 1)), jnp.full(6, g), dec)
        np.testing.assert_allclose(N.blackbox_preconditioner(v, 1, dec, cfg), expected, rtol=1e-6)


# -- adapters ------------------------------------------------------------------------------------


def test_as_optax_trains_in_a_plain_loop():
    task = tasks.Quadratic.random(jax.random.key(5), dim=10, scale=0.5)
    lopt = N.NominalLOpt(N.NominalConfig(learning_rate=0.05))
    tx = learned.as_optax(lopt, lopt.init_meta_params(jax.random.key(0)))
    w = task.init_params()
    state = tx.init(w)

    @jax.jit
    def step(w, state):
        loss, g = jax.value_and_grad(task.loss)(w)
        u, state = tx.update(g, state, w)
        return optax.apply_updates(w, u), state, loss

    losses = []
    for _ in range(60):
        w, state, loss = step(w, state)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.1 * losses[0]
    assert int(state.count) == 60
    with pytest.raises(ValueError, match="params"):
        tx.update(w, state)


def test_inner_optimizer_unrolls_like_the_update():
    task = tasks.Quadratic.random(jax.random.key(5), dim=5, scale=0.5)
    lopt = N.NominalLOpt(N.NominalConfig(estimator="momentum"))
    mp = lopt.init_meta_params(jax.random.key(0))
    opt = learned.inner_optimizer(lopt)
    assert opt.name == "nominal_lopt"
    result = inner.unroll(task, opt, mp, 10)
    ref_opt = inner.momentum(0.01, 0.9)
    ref = inner.unroll(task, ref_opt, ref_opt.hparams(), 10)
    np.testing.assert_allclose(result.losses, ref.losses, rtol=1e-5)


def test_save_load_roundtrip(tmp_path):
    cfg = N.NominalConfig(
        estimator="aggmo", momentum_decays=(0.5, 0.95), hidden_sizes=(3,), weight_decay=1e-3
    )
    lopt = N.NominalLOpt(cfg)
    mp = N.random_meta_params(lopt, jax.random.key(3))
    path = learned.save(tmp_path / "nom", lopt, mp)
    loaded, loaded_mp = learned.load(path)
    assert loaded == lopt and loaded.config.learning_rate == N.DEFAULT_LEARNING_RATES["aggmo"]
    for a, b in zip(jax.tree.leaves(mp), jax.tree.leaves(loaded_mp), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError):
        learned.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="already exists"):
        learned.save(path, lopt, mp)  # exists
    plain = learned.MLPLOpt(
        learned.LOptConfig(hidden_sizes=(2,), decays=(0.9,), time_scales=(1.0,))
    )
    other = learned.save(tmp_path / "mlp", plain, plain.init_meta_params(jax.random.key(0)))
    assert type(learned.load(other)[0]) is learned.MLPLOpt  # the kind picks the class


def test_learned_load_reads_either_kind_of_checkpoint(tmp_path):
    lopt = N.NominalLOpt(N.NominalConfig(estimator="momentum", hidden_sizes=(3,)))
    mp = N.random_meta_params(lopt, jax.random.key(4))
    loaded, loaded_mp = learned.load(learned.save(tmp_path / "nom", lopt, mp))
    assert type(loaded) is N.NominalLOpt and loaded == lopt
    for a, b in zip(jax.tree.leaves(mp), jax.tree.leaves(loaded_mp), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # An unknown kind is named in the error.
    common.save_checkpoint(tmp_path / "odd", mp, {"kind": "odd"}, lopt.meta_params_shapes)
    with pytest.raises(ValueError, match="unknown kind 'odd'"):
        learned.load(tmp_path / "odd")


def test_inner_optimizer_is_named_after_the_learned_optimizer():
    assert learned.as_inner_optimizer(N.NominalLOpt()).name == "nominal_lopt"
    assert learned.as_inner_optimizer(learned.MLPLOpt()).name == "mlp_lopt"
    gd = inner.gd(0.1)
    assert learned.as_inner_optimizer(gd) is gd
    with pytest.raises(TypeError, match=r"inner\.InnerOptimizer"):
        learned.as_inner_optimizer(object())


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("estimator", "adagrad"),
        ("learning_rate", -1.0),
        ("learning_rate", float("nan")),
        ("momentum_decays", (0.9, 1.0)),
        ("momentum_decays", ()),
        ("rms_decays", (0.0,)),
        ("rms_decays", 0.999),
        ("hidden_sizes", (4, 0)),
        ("time_scales", (0.0,)),
        ("controller", "layer"),
        ("mlp_form", "conv"),
        ("weight_decay", -0.1),
        ("eps", 0.0),
        ("blackbox_eps", -1.0),
        ("nominal_exp_mult", float("inf")),
    ],
)
def test_bad_config_values_name_the_field_and_the_fix(field, value):
    with pytest.raises(ValueError, match=rf"NominalConfig\.{field} .*(use|pass) "):
        N.NominalConfig(**{field: value})


def test_config_defaults_and_dict_roundtrip():
    cfg = N.NominalConfig()
    assert cfg.estimator == "adam" and cfg.learning_rate == 1e-3 and cfg.hidden_sizes == (4, 4)
    assert cfg.num_features == len(N.feature_names(cfg)) == 10 + len(cfg.time_scales)
    assert N.NominalConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(estimator="sgd").learning_rate == N.DEFAULT_LEARNING_RATES["sgd"]
    with pytest.raises(ValueError, match="unknown"):
        N.NominalConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.slow  # the page's end-to-end example: meta-training, then optax (make test-slow)
def test_docs_example_meta_trains_with_truncated_unrolls_then_runs_in_optax():
    doc = Path(__file__).resolve().parents[1] / "docs" / "nominal.md"
    blocks = re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", doc.read_text(), re.M | re.S)
    assert len(blocks) == 1
    namespace: dict = {"__name__": "docs_example_nominal"}
    exec(compile(blocks[0], f"{doc.name} [python block]", "exec"), namespace)
    task, w, run, lopt = (namespace[k] for k in ("task", "w", "run", "lopt"))
    # meta.truncated trained it: finite metrics, every part of the meta-parameters moved.
    assert len(run.metrics) == 20 and run.nonfinite_count == 0
    assert all(np.isfinite(m["meta_loss"]) and np.isfinite(m["grad_norm"]) for m in run.metrics)
    init = lopt.init_meta_params(jax.random.key(0))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), run.meta_params, init)
    assert moved["out"]["kernel"] and moved["momentum_logits"] and moved["rms_logits"]
    # and the trained optimizer works through optax.
    assert float(task.loss(w)) < 0.01 * float(task.loss(task.init_params()))


def test_stability_analysis_at_init_is_heavy_ball():
    """At initialization the training dynamics are heavy-ball momentum's: eigenvalues the
    roots of z^2 - (1 + b - lr lam) z + b per curvature lam, plus b2 for each v."""
    from l2l_jax.analysis import stability

    with jax.enable_x64(True):
        task = tasks.Quadratic.random(jax.random.key(0), dim=5, scale=0.5).astype(jnp.float64)
        cfg = N.NominalConfig(estimator="momentum", learning_rate=0.1, momentum_decays=(0.9,))
        lopt = N.NominalLOpt(cfg)
        mp = lopt.init_meta_params(jax.random.key(0), jnp.float64)
        ev = np.asarray(stability.linearize(task, learned.inner_optimizer(lopt), mp).eigenvalues)
        lam = np.linalg.eigvalsh(np.asarray(task.hessian))
    roots = [np.roots([1, -(1 + 0.9 - 0.1 * x), 0.9]) for x in lam]
    expected = np.sort_complex(np.concatenate([*roots, np.full(lam.size, 0.999)]))
    np.testing.assert_allclose(np.sort_complex(ev), expected, atol=1e-12)
