"""Per-step cost of hypergradient towers (:mod:`l2l_jax.hyper`) against plain optax.

One training step of the MNIST MLP task (784-100-20-10, minibatch 32; synthetic inputs of
the same shapes, so no dataset is needed): gradient, optimizer update, parameter update,
jitted. For SGD and Adam, towers of height 0 (plain optax), 1, 2 and 3 are timed side by
side (interleaved rounds, :mod:`benchmarks.timing`) and reported as ratios to height 0.
The upper levels are SGD on the learning rate only, so each level adds one
forward-mode JVP of the level below's update.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks import common, timing
from l2l_jax import hyper

OPTIMIZERS = {
    "sgd": (optax.sgd, {"learning_rate": 0.1}),
    "adam": (optax.adam, {"learning_rate": 1e-3}),
}


@dataclasses.dataclass(frozen=True)
class TowerPreset:
    """Sizes: the MLP's layer ``sizes``, ``n`` synthetic examples, minibatch ``batch``."""

    sizes: tuple[int, ...] = (784, 100, 20, 10)
    n: int = 1000
    batch: int = 32
    heights: tuple[int, ...] = (0, 1, 2, 3)
    repeats: int = 15
    budget_s: float = 10.0


PRESETS: dict[str, TowerPreset] = {
    "cpu-small": TowerPreset(),
    "accelerator": TowerPreset(batch=128),
    "smoke": TowerPreset(sizes=(784, 8, 10), n=64, heights=(0, 1), repeats=2, budget_s=1.0),
}


def build_tower(optimizer: str, height: int) -> optax.GradientTransformation:
    """``optimizer`` tuned by ``height`` levels of SGD on the learning rate."""
    factory, init = OPTIMIZERS[optimizer]
    if height == 0:
        return factory(**init)
    levels = [(factory, init)] + [(optax.sgd, {"learning_rate": 1e-3})] * (height - 1)
    return hyper.tower(*levels, optax.sgd(1e-4))


def measure(preset: TowerPreset, progress: bool = True) -> dict[str, Any]:
    """Compile and time one step per (optimizer, height); ratios to height 0."""
    task = common.mnist_like_task(preset.sizes, preset.n)
    params = task.init_params()
    idx = jnp.arange(preset.batch)
    cells = []
    for name in OPTIMIZERS:
        for height in preset.heights:
            tx = build_tower(name, height)

            def step(params, state, idx, tx=tx):
                grads = jax.grad(task.batch_loss)(params, idx)
                updates, state = tx.update(grads, state, params)
                return optax.apply_updates(params, updates), state

            cells.append(
                timing.compile_timed(f"{name}/{height}", step, params, tx.init(params), idx)
            )
    timing.time_rounds(cells, preset.repeats, preset.budget_s, "time towers", progress)
    base = {
        c.name.split("/")[0]: statistics.median(c.times) for c in cells if c.name.endswith("/0")
    }
    rows = []
    for c in cells:
        name, height = c.name.split("/")
        rows.append(
            {
                "optimizer": name,
                "height": int(height),
                **c.summary(),
                "ratio_to_plain": statistics.median(c.times) / base[name],
            }
        )
    return {"settings": dataclasses.asdict(preset), "rows": rows}


def claim(section: dict[str, Any]) -> str:
    """One sentence: the per-step cost of each height relative to plain optax."""
    parts = [
        f"{r['optimizer']} height {r['height']}: {r['ratio_to_plain']:.2f}×"
        for r in section["rows"]
        if r["height"] > 0
    ]
    return "per-step time relative to plain optax (same run): " + ", ".join(parts) + "."


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The towers section: settings, one row per (optimizer, height)."""
    s = section["settings"]
    lines = [
        f"{heading} hypergradient towers",
        "",
        f"One jitted training step of the MLP {'-'.join(map(str, s['sizes']))} (minibatch "
        f"{s['batch']}): height 0 is plain optax; each level above tunes the learning rate of "
        "the level below with SGD (one extra forward-mode JVP per level). Timed in "
        "interleaved rounds in one run; the ratio is to height 0 of the same optimizer.",
        "",
        claim(section),
        "",
        "| optimizer | height | compile s | step ms (median) | ratio to plain |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['optimizer']} | {r['height']} | {r['compile_s']:.2f} | "
            f"{r['run_ms_median']:.3g} | {r['ratio_to_plain']:.2f} |"
        )
    return "\n".join(lines) + "\n"
