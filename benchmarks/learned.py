"""Meta-training throughput of the learned optimizer: l2l_jax against hand-written code.

Issue 4's benchmark item (issue 6, group 5). One meta-step of truncated meta-training
(:mod:`l2l_jax.truncated`) of the per-parameter MLP optimizer
(:class:`l2l_jax.learned.MLPLOpt`, the paper's 31 features and 32 hidden units) on the MNIST
MLP 784-100-20-10 (minibatch 32; synthetic inputs of the real shapes, so no dataset is
needed): ``B`` runs (meta-batch 8) each advance ``K`` inner steps (the segment) in a
``lax.scan``, the train-by-train meta-loss of the segment is differentiated by truncated
backpropagation (TBPTT), and one clipped-Adam meta-update is applied. Throughput is inner
steps per second, ``B K / (meta-step time)``. Three implementations of the same
computation, timed side by side (interleaved rounds, :mod:`benchmarks.timing`):

* **l2l_jax**: ``truncated.make_meta_step(lopt, config)``, the library's jitted meta-step,
  at the library's defaults (which also re-initialize runs whose parameters turn
  non-finite, skip non-finite meta-steps and return five metrics).
* **hand-written**: :func:`make_hand_step`, written here with plain jax and optax: per
  inner step, the minibatch draw from the run's key (the library's documented key
  conventions, so the two agree), the task gradient, the learned update through
  :func:`~l2l_jax.learned.mlp_lopt.accumulate`, :func:`~l2l_jax.learned.tensor_features`,
  :func:`~l2l_jax.learned.time_features`, the MLP written out on the meta-parameters
  (:func:`lopt_mlp`: the step features' share of the first layer is one vector per tensor,
  not a column block broadcast to every coordinate) and
  :func:`~l2l_jax.learned.step_from_output`, the meta-loss term on a fresh minibatch, and
  the re-initialization at the horizon (``jnp.where`` over the run, as every vmapped run
  needs); its own ``lax.scan`` over ``K``, ``vmap`` over the meta-batch,
  ``value_and_grad`` and ``optax.chain(clip_by_global_norm, adam)``. It has no non-finite
  handling and no metrics beyond the meta-loss.
* **torch.func** (when torch is importable): the same unroll in PyTorch,
  ``functional_call`` + ``torch.func.grad`` for the inner gradient, the learned
  optimizer's MLP split like :func:`lopt_mlp`, ``torch.func.vmap`` over the meta-batch,
  ``torch.func.grad`` for the meta-gradient, clip + Adam by hand. Its minibatch indices and
  re-initialized parameters are drawn in JAX beforehand (same keys), so it computes the
  same numbers; otherwise the section says it was skipped.

The outputs of the timed calls are compared (meta-loss, updated meta-parameters, new runs),
so the ratio is between implementations that computed the same thing in the same run.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import math
import statistics
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import timing
from l2l_jax import learned, truncated
from l2l_jax.learned.mlp_lopt import accumulate
from l2l_jax.tasks import MnistMLP

TORCH_PIN = "torch==2.13.0"
TORCH_SKIP = f"skipped: torch not installed (pip install {TORCH_PIN})"
# Issue 4: the library's meta-step may cost at most 10% more than the hand-written one.
OVERHEAD_TARGET = 0.10


@dataclasses.dataclass(frozen=True)
class LearnedPreset:
    """Sizes of the throughput benchmark (the paper's learned optimizer and task).

    ``n`` synthetic training rows; minibatch and meta-loss minibatch ``batch``; ``K =
    segment`` inner steps per meta-step for each of ``meta_batch`` runs of ``horizon`` inner
    steps (staggered starts, so runs re-initialize at different meta-steps). ``repeats``
    timing rounds, each implementation's samples capped at ``budget_s`` seconds.
    """

    sizes: tuple[int, ...] = (784, 100, 20, 10)
    n: int = 1000
    batch: int = 32
    meta_batch: int = 8
    segment: int = 20
    horizon: int = 200
    hidden_sizes: tuple[int, ...] = (32,)
    decays: tuple[float, ...] = learned.PAPER_DECAYS
    time_scales: tuple[float, ...] = learned.PAPER_TIME_SCALES
    repeats: int = 5
    budget_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.segment > self.horizon:
            raise ValueError("segment <= horizon: a run re-initializes at most once a segment.")

    def lopt(self) -> learned.MLPLOpt:
        """The learned optimizer (the paper's architecture unless the preset shrinks it)."""
        return learned.MLPLOpt(
            learned.LOptConfig(
                hidden_sizes=self.hidden_sizes, decays=self.decays, time_scales=self.time_scales
            )
        )

    def config(self) -> truncated.TruncatedConfig:
        """TBPTT, train-by-train, minibatches of ``batch`` for steps and meta-loss terms."""
        return truncated.TruncatedConfig(
            horizon=self.horizon,
            segment=self.segment,
            meta_batch=self.meta_batch,
            batch_size=self.batch,
            eval_batch_size=self.batch,
            objective="tbt",
            estimator="tbptt",
        )


PRESETS: dict[str, LearnedPreset] = {
    # A few seconds per meta-step at K = 4 on 2 cores (throughput does not depend on K: the
    # work outside the scan is a ~1k-parameter Adam update). K = 5 would be confused with
    # the PRNG's 5-trip loops in the FLOP group's loop census.
    "cpu-small": LearnedPreset(segment=4, repeats=5, budget_s=40.0),
    "accelerator": LearnedPreset(segment=20, repeats=10, budget_s=60.0),
    "smoke": LearnedPreset(
        sizes=(784, 10),
        n=64,
        batch=8,
        meta_batch=2,
        segment=4,
        horizon=6,
        hidden_sizes=(4,),
        decays=(0.9,),
        time_scales=(10.0,),
        repeats=2,
        budget_s=1.0,
    ),
}


# -- the task and the library's step ---------------------------------------------------------


def build_task(preset: LearnedPreset) -> MnistMLP:
    """MnistMLP on ``n`` synthetic rows: uniform [0, 1) images, uniform labels."""
    k_x, k_y, k_init = jax.random.split(jax.random.key(preset.seed), 3)
    images = jax.random.uniform(k_x, (preset.n, preset.sizes[0]))
    labels = jax.random.randint(k_y, (preset.n,), 0, preset.sizes[-1])
    return MnistMLP(images, labels, init_key=k_init, sizes=preset.sizes)


def initial_state(preset: LearnedPreset, task: MnistMLP) -> truncated.TruncatedState:
    """``truncated.init_state``: the meta-parameters, Adam state and staggered runs."""
    key = jax.random.fold_in(jax.random.key(preset.seed), 1)
    return truncated.init_state(key, task, preset.lopt(), preset.config())


@functools.lru_cache(maxsize=4)
def library_cell(preset: LearnedPreset) -> timing.Timed:
    """The library's jitted meta-step on the initial state, compiled and warmed up.

    Cached: the FLOP/s group (:mod:`benchmarks.flops`) times the same compiled step.
    """
    task = build_task(preset)
    state = initial_state(preset, task)
    step = truncated.make_meta_step(preset.lopt(), preset.config())
    return timing.compile_timed("l2l_jax", step, state, task)


# -- the hand-written jax + optax meta-step ---------------------------------------------------


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


# -- torch.func ------------------------------------------------------------------------------


def torch_available() -> bool:
    """Whether ``import torch`` would find a package (without importing it)."""
    return importlib.util.find_spec("torch") is not None


def segment_schedule(preset: LearnedPreset, runs: Run) -> dict[str, np.ndarray]:
    """What the segment draws from the runs' keys, drawn beforehand for torch.

    Per run ``b`` and inner step ``j``: the minibatch rows ``idx[b, j]`` and meta-loss rows
    ``eidx[b, j]`` (the library's key conventions), whether the run re-initializes after
    that step (``done[b, j]``), and the parameters ``fresh`` it then starts from (one reset
    at most per segment, since ``K <= T``).
    """

    def one(key: jax.Array, step: jax.Array):
        def body(carry, _):
            key, step = carry
            keys = jax.random.split(jax.random.wrap_key_data(key), 4)
            draw = lambda k: jax.random.randint(
                jax.random.fold_in(k, step), (preset.batch,), 0, preset.n
            )
            idx, eidx = draw(keys[1]), draw(keys[2])
            step = step + 1
            done = step >= preset.horizon
            key = jnp.where(done, jax.random.key_data(keys[3]), key)
            return (key, jnp.where(done, 0, step)), (idx, eidx, done)

        _, (idx, eidx, done) = jax.lax.scan(body, (key, step), None, length=preset.segment)
        next_key = jax.random.key_data(jax.random.split(jax.random.wrap_key_data(key), 4)[3])
        fresh = fresh_run(next_key, preset.sizes, len(preset.decays)).params
        return {"idx": idx, "eidx": eidx, "done": done, "fresh": fresh}

    return jax.tree.map(np.asarray, jax.jit(jax.vmap(one))(runs.key, runs.step))


def _torch_layer_names(n_layers: int) -> list[str]:
    """``nn.Sequential`` indices of the Linear layers (ReLUs in between)."""
    return [str(2 * i) for i in range(n_layers)]


def task_params_to_torch(params: dict, torch_mod: Any, batched: bool) -> dict:
    """``{"dense_i": {"w": (in, out), "b"}}`` -> ``{"2i.weight": (out, in), "2i.bias"}``
    (a leading batch axis kept when ``batched``; trailing axes after ``(in, out)`` too)."""
    out = {}
    lead = 1 if batched else 0
    for name, i in zip(_torch_layer_names(len(params)), range(len(params)), strict=True):
        w = np.asarray(params[f"dense_{i}"]["w"])
        out[f"{name}.weight"] = torch_mod.from_numpy(np.swapaxes(w, lead, lead + 1).copy())
        out[f"{name}.bias"] = torch_mod.from_numpy(np.array(params[f"dense_{i}"]["b"]))
    return out


def task_params_from_torch(params: dict, n_layers: int, batched: bool) -> dict:
    """Inverse of :func:`task_params_to_torch` (numpy arrays)."""
    lead = 1 if batched else 0
    out = {}
    for i, name in enumerate(_torch_layer_names(n_layers)):
        w = params[f"{name}.weight"].detach().numpy()
        out[f"dense_{i}"] = {
            "w": np.swapaxes(w, lead, lead + 1),
            "b": params[f"{name}.bias"].detach().numpy(),
        }
    return out


def _lopt_layers(meta_params: dict) -> list[str]:
    """The learned optimizer's layers in order: ``hidden_0, hidden_1, ..., out``."""
    hidden = sorted((k for k in meta_params if k.startswith("hidden_")), key=lambda k: int(k[7:]))
    return [*hidden, "out"]


def meta_params_to_torch(meta_params: dict, torch_mod: Any) -> dict:
    """nnx ``{"hidden_i"/"out": {"kernel": (in, out), "bias"}}`` -> ``nn.Sequential`` names."""
    layers = _lopt_layers(meta_params)
    out = {}
    for name, layer in zip(_torch_layer_names(len(layers)), layers, strict=True):
        kernel = np.asarray(meta_params[layer]["kernel"]).T.copy()
        out[f"{name}.weight"] = torch_mod.from_numpy(kernel)
        out[f"{name}.bias"] = torch_mod.from_numpy(np.array(meta_params[layer]["bias"]))
    return out


def meta_params_from_torch(params: dict, like: dict) -> dict:
    """Inverse of :func:`meta_params_to_torch`, into the structure of ``like``."""
    layers = _lopt_layers(like)
    return {
        layer: {
            "kernel": params[f"{name}.weight"].detach().numpy().T,
            "bias": params[f"{name}.bias"].detach().numpy(),
        }
        for name, layer in zip(_torch_layer_names(len(layers)), layers, strict=True)
    }


def make_torch_step(preset: LearnedPreset, images: np.ndarray, labels: np.ndarray) -> Callable:
    """The meta-step in PyTorch with ``torch.func``: ``step(meta, adam, runs, schedule) ->
    (meta, adam, runs, loss, grad)``.

    ``runs`` = ``(params, momentum, second_moment, count)`` dicts of batched tensors (torch
    layout), ``adam`` = ``(mu, nu, count)``. The inner MLP is an ``nn.Sequential`` called
    through ``functional_call``; the learned optimizer's MLP is written out with its first
    layer split like :func:`lopt_mlp`'s.
    """
    import torch
    from torch import nn
    from torch.func import functional_call, grad, vmap

    cfg, tcfg = preset.lopt().config, preset.config()
    x_all, y_all = torch.from_numpy(np.array(images)), torch.from_numpy(np.array(labels))
    y_all = y_all.long()
    task_net = _torch_mlp(nn, preset.sizes)
    n_tensor = cfg.num_tensor_features
    lopt_layers = _torch_layer_names(len(cfg.hidden_sizes) + 1)
    decays = torch.tensor(cfg.decays, dtype=torch.float32)
    time_scales = torch.tensor(cfg.time_scales, dtype=torch.float32)
    limit = math.sqrt(float(np.finfo(np.float32).max)) / 2
    big = float(np.finfo(np.float32).max) / 4

    def task_loss(params, rows):
        logits = functional_call(task_net, params, (x_all[rows],))
        return nn.functional.cross_entropy(logits, y_all[rows])

    def normalize(x):
        dims = tuple(range(x.ndim - 1))
        s = x.abs().amax(dim=dims, keepdim=True).detach()
        s = torch.where(s > 0, s, torch.ones_like(s))
        xs = x / s
        ratio = torch.clamp(cfg.norm_eps / s.square(), max=big)
        return xs * torch.rsqrt(ratio + xs.square().mean(dim=dims, keepdim=True))

    def lopt_mlp(meta, per_tensor, steps):
        w, b = meta[f"{lopt_layers[0]}.weight"], meta[f"{lopt_layers[0]}.bias"]
        x = torch.relu(per_tensor @ w[:, :n_tensor].T + (steps @ w[:, n_tensor:].T + b))
        for i, name in enumerate(lopt_layers[1:]):
            x = x @ meta[f"{name}.weight"].T + meta[f"{name}.bias"]
            x = torch.relu(x) if i < len(lopt_layers) - 2 else x
        return x

    def lopt_tensor(meta, g, p, m, v, count):
        gx = g[..., None]
        m = decays * m + (1 - decays) * gx
        v = decays * v + (1 - decays) * gx.clamp(-limit, limit).square()
        rms = torch.sqrt(v + cfg.rms_eps)
        stacked = torch.cat([gx, p[..., None], m, rms, m / rms, 1 / rms], dim=-1)
        steps = torch.tanh(count.to(torch.float32) / time_scales - 1)
        out = lopt_mlp(meta, normalize(stacked), steps)
        step = out[..., 0] * torch.exp(cfg.exp_mult * out[..., 1]) * cfg.step_mult
        return p - step, m, v

    def segment(meta, params, momentum, second_moment, count, idx, eidx, done, fresh):
        terms = []
        for j in range(preset.segment):
            grads = grad(task_loss)(params, idx[j])
            new = {
                k: lopt_tensor(meta, grads[k], params[k], momentum[k], second_moment[k], count)
                for k in params
            }
            params = {k: new[k][0] for k in params}
            terms.append(task_loss(params, eidx[j]))
            d = done[j]
            params = {k: torch.where(d, fresh[k], params[k]) for k in params}
            momentum = {k: torch.where(d, 0.0, new[k][1]) for k in params}
            second_moment = {k: torch.where(d, 0.0, new[k][2]) for k in params}
            count = torch.where(d, 0, count + 1)
        return torch.stack(terms).mean(), (params, momentum, second_moment, count)

    batched = vmap(segment, in_dims=(None, 0, 0, 0, 0, 0, 0, 0, 0))

    def meta_loss(meta, runs, schedule):
        losses, new = batched(meta, *runs, *schedule)
        return losses.mean(), (losses.mean().detach(), new)

    def step(meta, adam, runs, schedule):
        g, (loss, new) = grad(meta_loss, has_aux=True)(meta, runs, schedule)
        meta, adam = _torch_clip_adam(torch, meta, g, adam, tcfg.clip, tcfg.meta_lr)
        return meta, adam, new, loss, g

    return step


def _torch_mlp(nn: Any, sizes: tuple[int, ...]) -> Any:
    """``Linear, ReLU, ..., Linear`` through ``sizes``."""
    layers: list[Any] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _torch_clip_adam(torch: Any, meta: dict, g: dict, adam: tuple, clip: float, lr: float):
    """optax's ``chain(clip_by_global_norm(clip), adam(lr))``, one step, by hand."""
    mu, nu, count = adam
    norm = torch.sqrt(sum(x.square().sum() for x in g.values()))
    g = {k: torch.where(norm < clip, x, x / norm * clip) for k, x in g.items()}
    b1, b2, eps = 0.9, 0.999, 1e-8
    mu = {k: b1 * mu[k] + (1 - b1) * g[k] for k in g}
    nu = {k: b2 * nu[k] + (1 - b2) * g[k].square() for k in g}
    count = count + 1
    c1, c2 = 1 - b1**count, 1 - b2**count
    meta = {k: meta[k] - lr * (mu[k] / c1) / (torch.sqrt(nu[k] / c2) + eps) for k in g}
    return meta, (mu, nu, count)


def torch_args(preset: LearnedPreset, state: truncated.TruncatedState) -> tuple:
    """``(meta, adam, runs, schedule)`` of :func:`make_torch_step` from the library's state."""
    import torch

    runs = runs_from_state(state)
    sched = segment_schedule(preset, runs)

    def accum(tree):  # (B, in, out, K) -> (B, out, in, K); biases unchanged
        return task_params_to_torch(tree, torch, batched=True)

    meta = meta_params_to_torch(state.meta_params, torch)
    adam = (
        {k: torch.zeros_like(v) for k, v in meta.items()},
        {k: torch.zeros_like(v) for k, v in meta.items()},
        0,
    )
    torch_runs = (
        task_params_to_torch(runs.params, torch, batched=True),
        accum(runs.momentum),
        accum(runs.second_moment),
        torch.from_numpy(np.array(runs.count)),
    )
    schedule = (
        torch.from_numpy(np.array(sched["idx"], np.int64)),
        torch.from_numpy(np.array(sched["eidx"], np.int64)),
        torch.from_numpy(np.array(sched["done"])),
        task_params_to_torch(sched["fresh"], torch, batched=True),
    )
    return meta, adam, torch_runs, schedule


def eager_timed(name: str, fn: Callable, *args: Any) -> timing.Timed:
    """A :class:`~benchmarks.timing.Timed` for an eager (not compiled) function: the
    warm-up call, then the fastest of three more when calls are fast."""
    cell = timing.Timed(name, fn, args, lower_s=0.0, xla_compile_s=0.0)
    start = time.perf_counter()
    cell.out = fn(*args)
    cell.warm_s = cell.call_s = time.perf_counter() - start
    if cell.warm_s < timing.CALIBRATE_BELOW_S:
        cell.call_s = min(cell.sample() for _ in range(3))
    return cell


def torch_agreement(torch_out: Any, library_out: Any, preset: LearnedPreset) -> dict[str, Any]:
    """torch.func's meta-loss, updated meta-parameters and runs against the library's."""
    meta_t, _, runs_t, loss_t, grad_t = torch_out
    state, metrics = library_out
    lib_runs = runs_from_state(state)
    grad_norm = math.sqrt(sum(float(x.square().sum()) for x in grad_t.values()))
    params_t = task_params_from_torch(runs_t[0], len(preset.sizes) - 1, batched=True)
    return {
        "meta_loss_rel_diff": max_rel_diff(float(loss_t), metrics["meta_loss"]),
        "grad_norm_rel_diff": max_rel_diff(grad_norm, metrics["grad_norm"]),
        "meta_params_max_abs_diff": max_abs_diff(
            meta_params_from_torch(meta_t, state.meta_params), state.meta_params
        ),
        "runs_params_max_abs_diff": max_abs_diff(params_t, lib_runs.params),
    }


def torch_section(preset: LearnedPreset, state, task, library_out: Any) -> tuple[dict, Any]:
    """``(section, Timed or None)``: the torch.func side, or the skip message."""
    if not torch_available():
        return {"status": TORCH_SKIP}, None
    import torch

    step = make_torch_step(preset, task.train_images, task.train_labels)
    cell = eager_timed("torch.func", step, *torch_args(preset, state))
    info = {
        "status": "ok",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "agreement": torch_agreement(cell.out, library_out, preset),
    }
    return info, cell


# -- the group -------------------------------------------------------------------------------


def _row(cell: timing.Timed, preset: LearnedPreset, hand_median: float) -> dict[str, Any]:
    median = statistics.median(cell.times)
    return {
        "impl": cell.name,
        **cell.summary(),
        "inner_steps_per_s": preset.meta_batch * preset.segment / median,
        "ratio_to_hand": median / hand_median,
    }


def paired_ratio(a: timing.Timed, b: timing.Timed) -> float:
    """Median over rounds of ``a``'s sample over ``b``'s (samples of one round are close
    in time, so this ratio is the least affected by load drift)."""
    n = min(len(a.times), len(b.times))
    return statistics.median(x / y for x, y in zip(a.times[:n], b.times[:n], strict=True))


def measure(preset: LearnedPreset, progress: bool = True) -> dict[str, Any]:
    """Compile and time the library's and the hand-written meta-step (and torch's)."""
    from tqdm.auto import tqdm

    lib = dataclasses.replace(library_cell(preset), times=[])
    task, state = lib.args[1], lib.args[0]
    hand = dataclasses.replace(hand_cell(preset), times=[])
    torch_info, torch_cell = torch_section(preset, state, task, lib.out)
    cells = [lib, hand] + ([torch_cell] if torch_cell is not None else [])
    with tqdm(total=preset.repeats, desc="time learned optimizer", disable=not progress) as bar:
        timing.time_interleaved(cells, preset.repeats, preset.budget_s, bar)
    hand_median = statistics.median(hand.times)
    ratio = statistics.median(lib.times) / hand_median
    params = task.init_params()
    return {
        "settings": dataclasses.asdict(preset)
        | {
            "task_parameters": sum(int(np.size(x)) for x in jax.tree.leaves(params)),
            "meta_parameters": sum(int(np.size(x)) for x in jax.tree.leaves(state.meta_params)),
            "lopt_features": preset.lopt().config.num_features,
        },
        "rows": [_row(c, preset, hand_median) for c in cells],
        "ratio_library_to_hand": ratio,
        "paired_ratio_library_to_hand": paired_ratio(lib, hand),
        "overhead": ratio - 1,
        "meets_target": ratio <= 1 + OVERHEAD_TARGET,
        "agreement": agreement(lib.out, hand.out),
        "torch": torch_info,
    }


def claim(section: dict[str, Any]) -> str:
    """One sentence: throughput of each implementation, the library's overhead, torch."""
    rows = {r["impl"]: r for r in section["rows"]}
    verdict = "meets" if section["meets_target"] else "misses"
    text = (
        f"l2l_jax's meta-step runs {rows['l2l_jax']['inner_steps_per_s']:.3g} inner steps/s, "
        f"the hand-written jax + optax one {rows['hand-written']['inner_steps_per_s']:.3g}: "
        f"time ratio **{section['ratio_library_to_hand']:.3f}×** (paired per round: "
        f"{section['paired_ratio_library_to_hand']:.3f}×), overhead "
        f"{100 * section['overhead']:+.1f}%, which {verdict} issue 4's target of at most "
        f"{100 * OVERHEAD_TARGET:.0f}%."
    )
    if "torch.func" in rows:
        text += (
            f" torch.func: {rows['torch.func']['inner_steps_per_s']:.3g} inner steps/s "
            f"({rows['torch.func']['ratio_to_hand']:.2f}× the hand-written time)."
        )
    else:
        text += f" torch.func: {section['torch']['status']}."
    return text


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The throughput section: settings, claim, one row per implementation, agreement."""
    s, agree = section["settings"], section["agreement"]
    lines = [
        f"{heading} learned-optimizer meta-training throughput (issue 4)",
        "",
        f"One TBPTT meta-step (train-by-train) of the MLP learned optimizer "
        f"({s['lopt_features']} features, hidden {tuple(s['hidden_sizes'])}, "
        f"{s['meta_parameters']:,} meta-parameters) on the MLP "
        f"{'-'.join(map(str, s['sizes']))} ({s['task_parameters']:,} parameters, minibatch "
        f"{s['batch']}, {s['n']} synthetic rows): meta-batch B = {s['meta_batch']}, segment "
        f"K = {s['segment']}, horizon {s['horizon']}; inner steps/s = B K / meta-step time. "
        "Timed in interleaved rounds in one run; the ratio is to the hand-written jax + optax "
        "meta-step.",
        "",
        claim(section),
        "",
        "| implementation | compile s | meta-step ms (median) | repeats | inner steps/s "
        "| time ratio to hand-written |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['impl']} | {r['compile_s']:.2f} | {r['run_ms_median']:.4g} | {r['repeats']} "
            f"| {r['inner_steps_per_s']:.3g} | {r['ratio_to_hand']:.3f} |"
        )
    lines += [
        "",
        f"Same computation: from the same state the hand-written meta-step's meta-loss is "
        f"within {agree['meta_loss_rel_diff']:.1e} (relative) of the library's, its updated "
        f"meta-parameters within {agree['meta_params_max_abs_diff']:.1e} and the runs' "
        f"parameters within {agree['runs_params_max_abs_diff']:.1e} (absolute); "
        f"{agree['resets_in_segment']} run(s) re-initialized in the timed segment.",
    ]
    torch_agree = section["torch"].get("agreement")
    if torch_agree:
        lines[-1] += (
            f" torch.func: meta-loss within {torch_agree['meta_loss_rel_diff']:.1e}, "
            f"meta-parameters within {torch_agree['meta_params_max_abs_diff']:.1e}."
        )
    return "\n".join(lines) + "\n"
