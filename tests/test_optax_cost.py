"""The learned optimizer as users run it through optax, and the optax_cost bench's pieces.

The float32 update of ``learned.as_optax(learned.MLPLOpt(), meta_params)`` (the paper's
architecture) on a multi-leaf model, for three steps, against a float64 NumPy
re-implementation of the per-parameter MLP; the bench's state bytes against the sizes of
the arrays a state holds; its training step against a hand-written SGD step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import optax_cost
from l2l_jax import learned

# Float32 against float64, relative to the largest step of the tensor: a few float32
# roundings (eps 1.2e-7) of the O(1) normalized features and MLP sums (2e-7 when written);
# the bound is about 16 of them.
RTOL_FLOAT32 = 2e-6


def _model(key: int = 0) -> dict[str, jax.Array]:
    """A multi-leaf model: a tensor above the fused MLP's threshold (``MIN_FUSED_SIZE``
    coordinates), a vector and a scalar below it."""
    keys = jax.random.split(jax.random.key(key), 3)
    return {
        "w": jax.random.normal(keys[0], (40, 16)),
        "b": jax.random.normal(keys[1], (16,)),
        "s": jax.random.normal(keys[2], ()),
    }


def _np_update(meta_params, cfg, g, p, m, v, t):
    """One step of one tensor in float64, written from the documented feature list:
    ``(update, m, v)`` with ``m``, ``v`` stacked over the decays on the last axis; the
    decays as float32 holds them (``1 - 0.9999`` in float32 is off by 6e-5 relative)."""
    b = np.asarray(cfg.decays, np.float32).astype(np.float64)
    m = b * m + (1 - b) * g[..., None]
    v = b * v + (1 - b) * g[..., None] ** 2
    r = np.sqrt(v + cfg.rms_eps)
    x = np.concatenate([g[..., None], p[..., None], m, r, m / r, 1 / r], axis=-1)
    axes = tuple(range(p.ndim))
    x = x / np.sqrt(cfg.norm_eps + np.mean(x**2, axis=axes, keepdims=True))
    steps = np.tanh(t / np.asarray(cfg.time_scales) - 1)
    x = np.concatenate([x, np.broadcast_to(steps, (*p.shape, steps.size))], axis=-1)
    w = {k: {n: np.asarray(a, np.float64) for n, a in d.items()} for k, d in meta_params.items()}
    for i in range(len(cfg.hidden_sizes)):
        x = np.maximum(x @ w[f"hidden_{i}"]["kernel"] + w[f"hidden_{i}"]["bias"], 0.0)
    out = x @ w["out"]["kernel"] + w["out"]["bias"]
    return -out[..., 0] * np.exp(cfg.exp_mult * out[..., 1]) * cfg.step_mult, m, v


def test_float32_optax_updates_match_numpy_float64_on_a_multi_leaf_model():
    lopt = learned.MLPLOpt()
    cfg = lopt.config
    meta_params = lopt.init_meta_params(jax.random.key(3))
    # Non-zero biases, so every term of the first and last layers is exercised.
    meta_params = jax.tree.map(
        lambda a: a + 0.1 * jnp.sin(jnp.arange(a.size)).reshape(a.shape), meta_params
    )
    tx = learned.as_optax(lopt, meta_params)
    params = _model()
    state = tx.init(params)
    update = jax.jit(tx.update)
    k = len(cfg.decays)
    ref = {n: (np.zeros((*p.shape, k)), np.zeros((*p.shape, k))) for n, p in params.items()}
    for t in range(3):
        grads = _model(key=10 + t)
        updates, state = update(grads, state, params)
        for name, p in params.items():
            g = np.asarray(grads[name], np.float64)
            u, m, v = _np_update(meta_params, cfg, g, np.asarray(p, np.float64), *ref[name], t)
            ref[name] = (m, v)
            err = float(np.max(np.abs(np.asarray(updates[name], np.float64) - u)))
            assert err <= RTOL_FLOAT32 * float(np.max(np.abs(u))), (name, t, err)
            for i in range(k):
                np.testing.assert_allclose(
                    state.lopt_state.momentum[i][name], m[..., i], rtol=1e-5, atol=1e-6
                )
                np.testing.assert_allclose(
                    state.lopt_state.second_moment[i][name], v[..., i], rtol=1e-5, atol=1e-7
                )
        params = optax.apply_updates(params, updates)
    assert int(state.count) == 3


def test_state_bytes_count_every_array_of_the_state():
    params = _model()
    param_bytes = sum(np.asarray(p).nbytes for p in params.values())
    lopt = learned.MLPLOpt()
    meta_params = lopt.init_meta_params(jax.random.key(0))
    meta_bytes = sum(np.asarray(a).nbytes for a in jax.tree.leaves(meta_params))
    k = len(lopt.config.decays)
    txs = optax_cost.optimizers()
    count_bytes = np.dtype(np.int32).itemsize
    # Adam: first and second moments and a step count; SGD: nothing.
    assert optax_cost.state_bytes(txs["adam"].init(params)) == 2 * param_bytes + count_bytes
    assert optax_cost.state_bytes(txs["sgd"].init(params)) == 0
    # The learned optimizer: its meta-parameters, K momenta and K second moments, a count.
    expected = meta_bytes + 2 * k * param_bytes + count_bytes
    assert optax_cost.state_bytes(txs["learned"].init(params)) == expected


def test_train_step_is_gradient_update_apply():
    target = {"a": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(4)}

    def loss(params, scale):
        return scale * sum(jnp.sum((params[k] - target[k]) ** 2) for k in params)

    params = {"a": jnp.zeros((2, 3)), "b": jnp.full(4, 3.0)}
    tx = optax.sgd(0.1)
    new, _ = jax.jit(optax_cost.train_step(loss, tx))(params, tx.init(params), 2.0)
    for k in params:  # d/dp of s (p - c)^2 is 2 s (p - c)
        expected = params[k] - 0.1 * 2 * 2.0 * (params[k] - target[k])
        np.testing.assert_allclose(new[k], expected, rtol=1e-6)
