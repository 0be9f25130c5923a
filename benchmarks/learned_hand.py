"""A hand-written jax + optax meta-step that computes what the library's does.

Per inner step: the minibatch draw from the run's key (the library's documented key
conventions, so the two agree), the task gradient, the learned update through
:func:`~l2l_jax.learned.mlp_lopt.accumulate`, :func:`~l2l_jax.learned.tensor_features`,
:func:`~l2l_jax.learned.time_features`, the MLP written out on the meta-parameters
(:func:`lopt_mlp`) and :func:`~l2l_jax.learned.step_from_output`, the meta-loss term on a
fresh minibatch, and the re-initialization at the horizon; its own ``lax.scan`` over
``K``, ``vmap`` over the meta-batch, ``value_and_grad`` and
``optax.chain(clip_by_global_norm, adam)``. :func:`agreement` compares its outputs with
the library's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import timing
from benchmarks.learned_setup import LearnedPreset, library_cell
from l2l_jax import learned, truncated
from l2l_jax.learned.mlp_lopt import accumulate


class Run(NamedTuple):
    """One inner run as a plain pytree (a leading axis ``B`` for the meta-batch)."""

    params: dict
    momentum: dict
    second_moment: dict
    count: jax.Array
    step: jax.Array
    key: jax.Array


def as_runs(inner: truncated.InnerState) -> Run:
    """The library's runs (:class:`~l2l_jax.truncated.InnerState`) as :class:`Run`
    (the library's one tree per decay stacked on a trailing axis)."""
    stack = lambda trees: jax.tree.map(lambda *k: jnp.stack(k, axis=-1), *trees)
    return Run(
        params=inner.params,
        momentum=stack(inner.opt_state.momentum),
        second_moment=stack(inner.opt_state.second_moment),
        count=inner.opt_state.count,
        step=inner.step,
        key=inner.key,
    )


def runs_from_state(state: truncated.TruncatedState) -> Run:
    """The runs of a library state as :class:`Run` (same arrays)."""
    return as_runs(state.inner)


def mlp_loss(params: dict, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the ReLU MLP ``{"dense_i": {"w", "b"}}``."""
    h = images
    for i in range(len(params)):
        h = h @ params[f"dense_{i}"]["w"] + params[f"dense_{i}"]["b"]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    logp = jax.nn.log_softmax(h, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def init_params(key: jax.Array, sizes: tuple[int, ...]) -> dict:
    """He-normal hidden layers, LeCun-normal output layer, zero biases (float32)."""
    params = {}
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, fan_in, fan_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        gain = 2.0 if i < len(sizes) - 2 else 1.0
        w = jax.random.normal(k, (fan_in, fan_out), jnp.float32)
        params[f"dense_{i}"] = {
            "w": w * jnp.sqrt(gain / fan_in).astype(jnp.float32),
            "b": jnp.zeros((fan_out,), jnp.float32),
        }
    return params


def fresh_run(key: jax.Array, sizes: tuple[int, ...], n_decays: int) -> Run:
    """A new run with raw key data ``key``: parameters from its first split key, zeros."""
    params = init_params(jax.random.split(jax.random.wrap_key_data(key), 4)[0], sizes)
    zeros = jax.tree.map(lambda p: jnp.zeros((*p.shape, n_decays), p.dtype), params)
    zero = jnp.zeros((), jnp.int32)
    return Run(params, zeros, zeros, zero, zero, key)


def lopt_mlp(meta_params: dict, per_tensor: jax.Array, steps: jax.Array) -> jax.Array:
    """The learned optimizer's MLP on ``(..., 2 + 4K)`` tensor features and the shared
    step features, written out: the first layer splits its kernel so the step features'
    share, ``steps @ W[2+4K:] + b``, is one vector rather than a column block broadcast to
    every coordinate (the same function as ``MLPLOpt.apply`` on the concatenated inputs,
    up to summation order)."""
    first = meta_params["hidden_0"]
    n = per_tensor.shape[-1]
    x = jax.nn.relu(
        per_tensor @ first["kernel"][:n] + (steps @ first["kernel"][n:] + first["bias"])
    )
    hidden = [k for k in meta_params if k.startswith("hidden_") and k != "hidden_0"]
    for name in sorted(hidden, key=lambda k: int(k[7:])):
        x = jax.nn.relu(x @ meta_params[name]["kernel"] + meta_params[name]["bias"])
    return x @ meta_params["out"]["kernel"] + meta_params["out"]["bias"]


def lopt_tensor(
    cfg: learned.LOptConfig, meta_params: dict, g: jax.Array, p: jax.Array, m, v, count
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The learned update of one tensor: ``(p - step, m, v)``."""
    if cfg.first_order:
        g = jax.lax.stop_gradient(g)
    decays = jnp.asarray(cfg.decays, m.dtype)  # m, v: (..., K)
    m, v = accumulate(m, v, g[..., None], decays)
    per_tensor = learned.tensor_features(g, p, jnp.moveaxis(m, -1, 0), jnp.moveaxis(v, -1, 0), cfg)
    steps = learned.time_features(count, cfg.time_scales, per_tensor.dtype)
    return p - learned.step_from_output(lopt_mlp(meta_params, per_tensor, steps), cfg), m, v


def lopt_params(cfg: learned.LOptConfig, meta_params: dict, grads: dict, run: Run):
    """:func:`lopt_tensor` on every tensor: new ``(params, momentum, second_moment)``."""
    new = ({}, {}, {})
    for layer, tensors in run.params.items():
        for out in new:
            out[layer] = {}
        for name, p in tensors.items():
            m, v = run.momentum[layer][name], run.second_moment[layer][name]
            results = lopt_tensor(cfg, meta_params, grads[layer][name], p, m, v, run.count)
            for out, x in zip(new, results, strict=True):
                out[layer][name] = x
    return new


def hand_inner_step(
    meta_params: dict, run: Run, images: jax.Array, labels: jax.Array, preset: LearnedPreset
) -> tuple[Run, jax.Array]:
    """One inner step of one run: gradient, learned update, meta-loss term, reset."""
    lopt = preset.lopt()
    keys = jax.random.split(jax.random.wrap_key_data(run.key), 4)
    n = images.shape[0]
    idx = jax.random.randint(jax.random.fold_in(keys[1], run.step), (preset.batch,), 0, n)
    grads = jax.grad(mlp_loss)(run.params, images[idx], labels[idx])
    params, momentum, second_moment = lopt_params(lopt.config, meta_params, grads, run)
    eidx = jax.random.randint(jax.random.fold_in(keys[2], run.step), (preset.batch,), 0, n)
    term = mlp_loss(params, images[eidx], labels[eidx])
    step = run.step + 1
    advanced = Run(params, momentum, second_moment, run.count + 1, step, run.key)
    fresh = fresh_run(jax.random.key_data(keys[3]), preset.sizes, len(lopt.config.decays))
    done = step >= preset.horizon
    return jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, advanced), term


def hand_meta_loss(
    meta_params: dict, runs: Run, images: jax.Array, labels: jax.Array, preset: LearnedPreset
) -> tuple[jax.Array, Run]:
    """Mean over the meta-batch of each run's mean term over its ``K``-step scan."""

    def segment(run: Run) -> tuple[jax.Array, Run]:
        body = lambda r, _: hand_inner_step(meta_params, r, images, labels, preset)
        new, terms = jax.lax.scan(body, run, None, length=preset.segment)
        return jnp.mean(terms), new

    losses, new = jax.vmap(segment)(runs)
    return jnp.mean(losses), new


def hand_value_and_grad(
    meta_params: dict, runs: Run, images: jax.Array, labels: jax.Array, preset: LearnedPreset
) -> tuple[jax.Array, dict, Run]:
    """``(meta-loss, meta-gradient, new runs)`` of the hand-written segment."""
    (loss, new), grad = jax.value_and_grad(hand_meta_loss, has_aux=True)(
        meta_params, runs, images, labels, preset
    )
    return loss, grad, new


def meta_optimizer(preset: LearnedPreset) -> optax.GradientTransformation:
    """Clip the meta-gradient's global norm, then Adam (the library's default settings)."""
    cfg = preset.config()
    return optax.chain(optax.clip_by_global_norm(cfg.clip), optax.adam(cfg.meta_lr))


def make_hand_step(preset: LearnedPreset) -> Callable:
    """``step(meta_params, opt_state, runs, images, labels) -> (meta_params, opt_state,
    runs, loss, grad)``: the hand-written meta-step (to be jitted; the meta-gradient is
    returned for the equivalence check)."""
    tx = meta_optimizer(preset)

    def step(meta_params, opt_state, runs, images, labels):
        loss, grad, runs = hand_value_and_grad(meta_params, runs, images, labels, preset)
        updates, opt_state = tx.update(grad, opt_state, meta_params)
        return optax.apply_updates(meta_params, updates), opt_state, runs, loss, grad

    return step


@functools.lru_cache(maxsize=4)
def hand_cell(preset: LearnedPreset) -> timing.Timed:
    """The hand-written meta-step from the library's initial state (the arguments of
    :func:`library_cell`), compiled and warmed up. Cached like it."""
    state, task = library_cell(preset).args
    args = (
        state.meta_params,
        meta_optimizer(preset).init(state.meta_params),
        runs_from_state(state),
        task.train_images,
        task.train_labels,
    )
    return timing.compile_timed("hand-written", make_hand_step(preset), *args)


# -- agreement -------------------------------------------------------------------------------


def max_rel_diff(a: Any, b: Any) -> float:
    """Largest ``|x - y| / max(|y|, tiny)`` over the leaves (``inf`` if shapes differ)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return math.inf
        scale = np.maximum(np.abs(y), np.finfo(np.float32).tiny)
        worst = max(worst, float(np.max(np.abs(x - y) / scale, initial=0.0)))
    return worst


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest ``|x - y|`` over the leaves."""
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def agreement(library_out: Any, hand_out: Any) -> dict[str, Any]:
    """How far the hand-written meta-step's outputs are from the library's (same inputs)."""
    state, metrics = library_out
    meta_params, _, runs, loss, _ = hand_out
    lib_runs = runs_from_state(state)
    return {
        "meta_loss_rel_diff": max_rel_diff(loss, metrics["meta_loss"]),
        "meta_params_max_abs_diff": max_abs_diff(meta_params, state.meta_params),
        "runs_params_max_abs_diff": max_abs_diff(runs.params, lib_runs.params),
        "runs_steps_equal": bool(np.array_equal(runs.step, lib_runs.step)),
        "runs_keys_equal": bool(np.array_equal(runs.key, lib_runs.key)),
        "resets_in_segment": int(metrics["resets"]),
    }
