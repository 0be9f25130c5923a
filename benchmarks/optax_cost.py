"""What a user pays to train with a learned optimizer: step time and state bytes through optax.

One jitted training step (minibatch gradient, optimizer update, ``optax.apply_updates``)
of an MLP on synthetic inputs of MNIST's shapes, with the MLP learned optimizer
(``learned.as_optax(learned.MLPLOpt(), meta_params)``: the paper's 31 features and 32
hidden units, the default ``LOptConfig``) and with ``optax.adam`` (and ``optax.sgd``, the
floor: gradient and apply alone), for each model of the preset (the paper's MNIST MLP
784-100-20-10 and one of about 10^6 parameters). All steps are compiled first, then timed
side by side in interleaved rounds (:mod:`benchmarks.timing`); times and optimizer-state
bytes (the sum of ``nbytes`` over the leaves of ``tx.init(params)``, the learned
optimizer's meta-parameters included) are reported as ratios to Adam on the same model.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks import common, timing
from l2l_jax import learned

# The target of the larger model: the learned optimizer's step at most this many Adam steps.
TARGET_RATIO = 1.5


@dataclasses.dataclass(frozen=True)
class OptaxCostPreset:
    """Models (MLP layer sizes), minibatch, synthetic rows and the timing budget."""

    models: tuple[tuple[int, ...], ...] = ((784, 100, 20, 10), (784, 1024, 256, 10))
    batch: int = 128
    n: int = 1024
    repeats: int = 15
    budget_s: float = 10.0


PRESETS: dict[str, OptaxCostPreset] = {
    "cpu-small": OptaxCostPreset(),
    "accelerator": OptaxCostPreset(batch=256, repeats=30),
    "smoke": OptaxCostPreset(
        models=((784, 8, 10), (784, 32, 10)), batch=16, n=64, repeats=2, budget_s=1.0
    ),
}


def optimizers() -> dict[str, optax.GradientTransformation]:
    """The transformations compared: the learned optimizer (random meta-parameters of the
    paper's architecture: the cost does not depend on their values), Adam and SGD."""
    lopt = learned.MLPLOpt()
    return {
        "learned": learned.as_optax(lopt, lopt.init_meta_params(jax.random.key(0))),
        "adam": optax.adam(1e-3),
        "sgd": optax.sgd(1e-2),
    }


def state_bytes(state: Any) -> int:
    """Bytes of an optimizer state: the sum of ``nbytes`` over its array leaves."""
    return int(sum(leaf.nbytes for leaf in jax.tree.leaves(state)))


def train_step(loss: Callable, tx: optax.GradientTransformation) -> Callable:
    """``(params, state, batch) -> (params, state)``: gradient, update, apply."""

    def step(params, state, batch):
        grads = jax.grad(loss)(params, batch)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def model_name(sizes: tuple[int, ...]) -> str:
    """``"784-100-20-10"``."""
    return "-".join(map(str, sizes))


def measure(preset: OptaxCostPreset, progress: bool = True) -> dict[str, Any]:
    """Compile one step per (model, optimizer), time them interleaved, ratios to Adam."""
    txs = optimizers()
    cells, info = [], {}
    for sizes in preset.models:
        task = common.mnist_like_task(sizes, preset.n)
        params = task.init_params()
        batch = jnp.arange(preset.batch)
        info[model_name(sizes)] = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
        for name, tx in txs.items():
            state = tx.init(params)
            cell = timing.compile_timed(
                f"{model_name(sizes)}/{name}", train_step(task.batch_loss, tx), params, state, batch
            )
            cell.state_bytes = state_bytes(state)
            cells.append(cell)
    timing.time_rounds(cells, preset.repeats, preset.budget_s, "time optax steps", progress)
    by_name = {c.name: c for c in cells}
    rows = []
    for c in cells:
        model, name = c.name.split("/")
        adam = by_name[f"{model}/adam"]
        rows.append(
            {
                "model": model,
                "parameters": info[model],
                "optimizer": name,
                **c.summary(),
                "state_bytes": c.state_bytes,
                "time_ratio_to_adam": statistics.median(c.times) / statistics.median(adam.times),
                "paired_ratio_to_adam": timing.paired_ratio(c, adam),
                "state_ratio_to_adam": c.state_bytes / adam.state_bytes,
            }
        )
    return {"settings": dataclasses.asdict(preset), "rows": rows}


def claim(section: dict[str, Any]) -> str:
    """The learned optimizer's step time and state against Adam's, per model, and whether
    the larger model meets :data:`TARGET_RATIO`."""
    rows = [r for r in section["rows"] if r["optimizer"] == "learned"]
    parts = [
        f"{r['model']} ({r['parameters']:,} parameters): {r['time_ratio_to_adam']:.2f}× "
        f"Adam's step time, {r['state_ratio_to_adam']:.2f}× its state bytes"
        for r in rows
    ]
    largest = max(rows, key=lambda r: r["parameters"])
    meets = "meets" if largest["time_ratio_to_adam"] <= TARGET_RATIO else "does NOT meet"
    return (
        "learned optimizer through optax (same run): "
        + "; ".join(parts)
        + f". The largest model {meets} the target of at most {TARGET_RATIO}× Adam's step."
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The section: settings, one row per (model, optimizer)."""
    s = section["settings"]
    lines = [
        f"{heading} cost of using a learned optimizer through optax",
        "",
        f"One jitted training step (gradient, update, apply) with minibatch {s['batch']} on "
        f"synthetic inputs of MNIST's shapes: `learned.as_optax(learned.MLPLOpt(), "
        "meta_params)` (31 features, 32 hidden units) against `optax.adam` and `optax.sgd`. "
        "Timed in interleaved rounds in one run; ratios are to Adam on the same model (paired: "
        "the median over rounds of the per-round ratio). State bytes: the sum of `nbytes` over "
        "the optimizer state's leaves (the learned optimizer's 1,090 meta-parameters "
        "included).",
        "",
        claim(section),
        "",
        "| model | parameters | optimizer | compile s | step ms (median) | time / Adam "
        "| paired | state bytes | state / Adam |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['optimizer']} | {r['compile_s']:.2f} | "
            f"{r['run_ms_median']:.3g} | {r['time_ratio_to_adam']:.2f} | "
            f"{r['paired_ratio_to_adam']:.2f} | {timing.fmt_bytes(r['state_bytes'])} | "
            f"{r['state_ratio_to_adam']:.2f} |"
        )
    return "\n".join(lines) + "\n"
