"""Where the learned optimizer's forward step goes: its update of one tensor, in parts.

PES and ES spend their meta-step in this forward update (``learned.MLPLOpt``, one tensor,
``runs`` runs with their own meta-parameters, vmapped as the estimators run them). The
update is composed from the library's pieces (:func:`update_part`), whole and in parts,
each jitted with the library's compiler options and timed side by side in interleaved
rounds (:mod:`benchmarks.timing`):

* ``update``: accumulators, normalized feature columns, fused MLP (what ``update`` does);
* ``columns``: the accumulators and the normalized columns alone (their sum is returned, so
  no column is written out that the update would not write);
* ``mlp``: the fused MLP alone, on given columns;
* ``no_fallback``: the update whose normalization keeps only the plain sum of squares (not
  the overflow fallback's scaled sum, :func:`~l2l_jax.learned.mlp_lopt.second_moment_factors`):
  what that fallback costs;
* ``mlp_matmul``: the MLP as matrix products on the stacked columns (``common.mlp_matmul``)
  instead of the fused elementwise loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import timing
from l2l_jax.learned import common as lcommon
from l2l_jax.learned import mlp_lopt

PARTS = ("update", "columns", "mlp", "no_fallback", "mlp_matmul")


@dataclasses.dataclass(frozen=True)
class UpdateProfilePreset:
    """Runs (vmapped), the tensor's shape, the MLP's hidden units and the timing budget."""

    runs: int = 16
    shape: tuple[int, ...] = (784, 100)
    hidden: int = 32
    repeats: int = 40
    budget_s: float = 20.0


PRESETS: dict[str, UpdateProfilePreset] = {
    "cpu-small": UpdateProfilePreset(),
    "accelerator": UpdateProfilePreset(runs=64),
    "smoke": UpdateProfilePreset(runs=2, shape=(16, 16), hidden=4, repeats=2, budget_s=1.0),
}


def plain_factors(x: jax.Array, axis: tuple[int, ...], eps: float) -> tuple[jax.Array, jax.Array]:
    """``(1, 1 / sqrt(eps + mean(x^2)))``: the normalization without the overflow fallback
    (``inf`` sums give a zero column; for timing only)."""
    n = math.prod(x.shape[i] for i in axis)
    s = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return jnp.ones((), x.dtype), jax.lax.rsqrt(eps + s / n)


def normalized_columns(
    cfg: mlp_lopt.LOptConfig, g, p, ms, vs, factors: Callable = mlp_lopt.second_moment_factors
) -> tuple[list[jax.Array], tuple, tuple]:
    """The new accumulators and the normalized columns (``factors``: the normalization)."""
    mv = [mlp_lopt.accumulate(m, v, g, b) for m, v, b in zip(ms, vs, cfg.decays, strict=True)]
    m, v = tuple(x[0] for x in mv), tuple(x[1] for x in mv)
    axis = tuple(range(p.ndim))
    columns = []
    for c in mlp_lopt.raw_feature_columns(g, p, m, v, cfg):
        a, b = factors(c, axis, cfg.norm_eps)
        columns.append((c * a) * b)
    return columns, m, v


def update_part(cfg: mlp_lopt.LOptConfig, part: str) -> Callable:
    """``(meta_params, count, g, p, ms, vs) -> output`` of one part (:data:`PARTS`)."""
    head = functools.partial(mlp_lopt._step_head, cfg.exp_mult, cfg.step_mult)

    def fn(meta_params, count, g, p, ms, vs):
        if part in ("mlp", "mlp_matmul"):  # given columns: the raw inputs stand in for them
            columns = [g, p, *ms, *vs, *ms, *vs][: cfg.num_tensor_features]
            mlp = lcommon.fused_mlp if part == "mlp" else None
        else:
            factors = plain_factors if part == "no_fallback" else mlp_lopt.second_moment_factors
            columns, m, v = normalized_columns(cfg, g, p, ms, vs, factors)
            if part == "columns":
                return sum(columns), m, v
            mlp = lcommon.fused_mlp
        pairs = mlp_lopt.mlp_layers(meta_params, count, cfg, g.dtype)
        if mlp is None:
            return head(*lcommon.mlp_matmul(pairs, columns))
        step = mlp(head, pairs, columns)
        return (-step, m, v) if part != "mlp" else -step

    return fn


def inputs(preset: UpdateProfilePreset, key: jax.Array) -> tuple:
    """Per-run meta-parameters (perturbed, as PES's), count, g, p and accumulators."""
    cfg = mlp_lopt.LOptConfig(hidden_sizes=(preset.hidden,))
    lopt = mlp_lopt.MLPLOpt(cfg)
    k_meta, k_eps, *ks = jax.random.split(key, 4 + 2 * len(cfg.decays))
    theta = lopt.init_meta_params(k_meta)
    leaves, tree = jax.tree.flatten(theta)
    keys = jax.random.split(k_eps, len(leaves))
    meta = tree.unflatten(
        [
            x + 0.03 * jax.random.normal(e, (preset.runs, *x.shape))
            for x, e in zip(leaves, keys, strict=True)
        ]
    )
    shape = (preset.runs, *preset.shape)
    g, p = (jax.random.normal(k, shape) for k in ks[:2])
    k = len(cfg.decays)
    ms = tuple(0.1 * jax.random.normal(x, shape) for x in ks[2 : 2 + k])
    vs = tuple(0.1 * jax.random.uniform(x, shape) for x in ks[2 + k :])
    return cfg, (meta, jnp.asarray(10, jnp.int32), g, p, ms, vs)


def measure(preset: UpdateProfilePreset, progress: bool = True) -> dict[str, Any]:
    """Compile every part, time them interleaved, each as a fraction of the whole update."""
    cfg, args = inputs(preset, jax.random.key(0))
    axes = (0, None, 0, 0, 0, 0)
    cells = [
        timing.compile_timed(part, jax.vmap(update_part(cfg, part), in_axes=axes), *args)
        for part in PARTS
    ]
    timing.time_rounds(cells, preset.repeats, preset.budget_s, "time update parts", progress)
    whole = cells[0]
    rows = [
        {
            "part": c.name,
            **c.summary(),
            "fraction_of_update": statistics.median(c.times) / statistics.median(whole.times),
            "paired_fraction": timing.paired_ratio(c, whole),
        }
        for c in cells
    ]
    return {"settings": dataclasses.asdict(preset), "rows": rows}


def claim(section: dict[str, Any]) -> str:
    """The parts as fractions of the whole update (paired medians, same run)."""
    f = {r["part"]: r["paired_fraction"] for r in section["rows"]}
    return (
        f"of the learned update's time (same run): accumulators and normalized columns "
        f"{f['columns']:.0%}, the fused MLP {f['mlp']:.0%}; without the overflow fallback's "
        f"sums the update takes {f['no_fallback']:.0%}; the MLP as matrix products takes "
        f"{f['mlp_matmul'] / f['mlp']:.1f}× the fused loop's time."
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The section: settings, one row per part."""
    s = section["settings"]
    shape = "x".join(map(str, s["shape"]))
    lines = [
        f"{heading} the learned update in parts",
        "",
        f"`learned.MLPLOpt`'s update of one {shape} tensor ({s['hidden']} hidden units) for "
        f"{s['runs']} runs with their own meta-parameters (vmapped, as PES runs them), "
        "whole and in parts (`benchmarks/update_profile.py`), timed in interleaved rounds in "
        "one run; fractions are of the whole update's time (paired: the median over rounds "
        "of the per-round ratio).",
        "",
        claim(section),
        "",
        "| part | compile s | ms (median) | ms (fastest) | of the update | paired |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['part']} | {r['compile_s']:.2f} | {r['run_ms_median']:.3g} | "
            f"{r['run_ms_min']:.3g} | {r['fraction_of_update']:.2f} | "
            f"{r['paired_fraction']:.2f} |"
        )
    return "\n".join(lines) + "\n"
