"""The learned-optimizer meta-step in PyTorch with ``torch.func``, for comparison.

The same unroll as the library's: ``functional_call`` + ``torch.func.grad`` for the inner
gradient, the learned optimizer's MLP split like :func:`benchmarks.learned_hand.lopt_mlp`,
``torch.func.vmap`` over the meta-batch, ``torch.func.grad`` for the meta-gradient, clip +
Adam by hand. Its minibatch indices and re-initialized parameters are drawn in JAX
beforehand (same keys), so it computes the same numbers. Without torch the section says it
was skipped.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.learned_hand import Run, fresh_run, max_abs_diff, max_rel_diff, runs_from_state
from benchmarks.learned_setup import LearnedPreset
from l2l_jax import truncated

TORCH_PIN = "torch==2.13.0"
TORCH_SKIP = f"skipped: torch not installed (pip install {TORCH_PIN})"


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
    """A :class:`~benchmarks.timing.Timed` for an eager (not compiled) function, warmed up
    (:func:`benchmarks.timing.warm_up`)."""
    return timing.warm_up(timing.Timed(name, fn, args, lower_s=0.0, xla_compile_s=0.0))


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
