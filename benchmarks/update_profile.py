"""Where the learned optimizer's forward step goes: its update of one tensor, in parts.

PES and ES spend their meta-step in this forward update (``learned.MLPLOpt``, one tensor,
``runs`` runs with their own meta-parameters, vmapped as the estimators run them). The
update is composed from the library's pieces (:func:`update_part`), whole and in parts,
each run ``steps`` times in a loop that feeds its outputs back (:func:`looped`), jitted
with the library's compiler options and timed side by side in interleaved rounds
(:mod:`benchmarks.timing`):

* ``update``: accumulators, normalized feature columns, fused MLP (what ``update`` does);
* ``eager_fallback``: the same with the overflow fallback's scaled sums
  (:func:`~l2l_jax.learned.mlp_lopt.second_moment_factors`) computed at every step, where
  the library skips them unless a plain sum overflowed;
* ``no_fallback``: the same with only the plain sums, no fallback at all;
* ``unnormalized``: accumulators, the columns as they are (no reductions), fused MLP;
* ``unnormalized_matmul``: the same with the MLP as matrix products on the stacked columns
  (``common.mlp_matmul``) instead of the fused elementwise loop;
* ``accumulators``: the accumulators alone.

Differences of parts give the costs: the normalization's reductions (``update -
unnormalized``), the fallback's pass where it runs (``eager_fallback - no_fallback``) and
what skipping it still costs (``update - no_fallback``), the fused MLP with its columns
(``unnormalized - accumulators``) against the matmul form's. Every part reads the state it
changes (no input is loop-invariant: XLA would hoist the MLP's terms out of the loop).
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

PARTS = (
    "update",
    "eager_fallback",
    "no_fallback",
    "unnormalized",
    "unnormalized_matmul",
    "accumulators",
)


@dataclasses.dataclass(frozen=True)
class UpdateProfilePreset:
    """Runs (vmapped), the tensor's shape, the MLP's hidden units, the updates per timed
    call (:func:`looped`) and the timing budget."""

    runs: int = 16
    shape: tuple[int, ...] = (784, 100)
    hidden: int = 32
    steps: int = 8
    repeats: int = 20
    budget_s: float = 20.0


PRESETS: dict[str, UpdateProfilePreset] = {
    "cpu-small": UpdateProfilePreset(),
    "accelerator": UpdateProfilePreset(runs=64),
    "smoke": UpdateProfilePreset(
        runs=2, shape=(16, 16), hidden=4, steps=2, repeats=2, budget_s=1.0
    ),
}


def plain_factors(x: jax.Array, axis: tuple[int, ...], eps: float) -> tuple[jax.Array, jax.Array]:
    """``(1, 1 / sqrt(eps + mean(x^2)))``: the normalization without the overflow fallback
    (``inf`` sums give a zero column; for timing only)."""
    n = math.prod(x.shape[i] for i in axis)
    s = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return jnp.ones((), x.dtype), jax.lax.rsqrt(eps + s / n)


def eager_factors(x: jax.Array, axis: tuple[int, ...], eps: float) -> tuple[jax.Array, jax.Array]:
    """:func:`~l2l_jax.learned.mlp_lopt.second_moment_factors` with the overflow fallback's
    scaled sum computed always (as the library did before it skipped the pass)."""
    n = math.prod(x.shape[i] for i in axis)
    plain = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    scaled = jnp.sum(jnp.square(x * mlp_lopt._HUGE_SCALE), axis=axis, keepdims=True)
    return mlp_lopt._factors(plain, scaled, ~jnp.isfinite(plain), n, eps, x.dtype)


def accumulators(cfg: mlp_lopt.LOptConfig, g, ms, vs) -> tuple[tuple, tuple]:
    """The new momenta and second moments (``mlp_lopt.accumulate`` per decay)."""
    mv = [mlp_lopt.accumulate(m, v, g, b) for m, v, b in zip(ms, vs, cfg.decays, strict=True)]
    return tuple(x[0] for x in mv), tuple(x[1] for x in mv)


def columns_of(
    cfg: mlp_lopt.LOptConfig, g, p, ms, vs, factors: Callable | str | None
) -> tuple[list[jax.Array], tuple, tuple]:
    """The new accumulators and the columns: ``"library"``, the library's
    :func:`~l2l_jax.learned.mlp_lopt.feature_columns`; ``None``, as they are; else each
    normalized by ``factors``."""
    m, v = accumulators(cfg, g, ms, vs)
    if factors == "library":
        return mlp_lopt.feature_columns(g, p, m, v, cfg), m, v
    columns = mlp_lopt.raw_feature_columns(g, p, m, v, cfg)
    if factors is None:
        return columns, m, v
    axis = tuple(range(p.ndim))
    scaled = []
    for c in columns:
        a, b = factors(c, axis, cfg.norm_eps)
        scaled.append((c * a) * b)
    return scaled, m, v


FACTORS = {
    "update": "library",
    "eager_fallback": eager_factors,
    "no_fallback": plain_factors,
    "unnormalized": None,
    "unnormalized_matmul": None,
}


def update_part(cfg: mlp_lopt.LOptConfig, part: str) -> Callable:
    """``(meta_params, count, g, p, ms, vs) -> (delta, ms, vs)`` of one part
    (:data:`PARTS`): the update and the new accumulators (``accumulators``: ``delta`` is
    a scaled momentum, so the loop still reads what it writes)."""
    head = functools.partial(mlp_lopt._step_head, cfg.exp_mult, cfg.step_mult)

    def fn(meta_params, count, g, p, ms, vs):
        if part == "accumulators":
            m, v = accumulators(cfg, g, ms, vs)
            return 1e-3 * m[0], m, v
        columns, m, v = columns_of(cfg, g, p, ms, vs, FACTORS[part])
        pairs = mlp_lopt.mlp_layers(meta_params, count, cfg, g.dtype)
        if part == "unnormalized_matmul":
            return -head(*lcommon.mlp_matmul(pairs, columns)), m, v
        return -lcommon.fused_mlp(head, pairs, columns), m, v

    return fn


def looped(fn: Callable, steps: int) -> Callable:
    """``steps`` applications of a part in a ``fori_loop`` that feeds ``p + delta`` and the
    accumulators back, as an unroll does: its buffers are reused, not allocated per call."""

    def run(meta_params, count, g, p, ms, vs):
        def body(_, carry):
            p, ms, vs = carry
            delta, ms, vs = fn(meta_params, count, g, p, ms, vs)
            return p + delta, tuple(ms), tuple(vs)

        return jax.lax.fori_loop(0, steps, body, (p, tuple(ms), tuple(vs)))

    return run


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
        timing.compile_timed(
            part, jax.vmap(looped(update_part(cfg, part), preset.steps), in_axes=axes), *args
        )
        for part in PARTS
    ]
    timing.time_rounds(cells, preset.repeats, preset.budget_s, "time update parts", progress)
    whole = cells[0]
    rows = [
        {
            "part": c.name,
            **c.summary(),
            "ms_per_update_median": 1e3 * statistics.median(c.times) / preset.steps,
            "ms_per_update_min": 1e3 * min(c.times) / preset.steps,
            "fraction_of_update": statistics.median(c.times) / statistics.median(whole.times),
            "paired_fraction": timing.paired_ratio(c, whole),
        }
        for c in cells
    ]
    return {"settings": dataclasses.asdict(preset), "rows": rows}


def costs(section: dict[str, Any]) -> dict[str, float]:
    """Each cost as a fraction of the whole update's time, from differences of the parts'
    paired fractions; ``matmul_over_fused``: the MLP with its columns as matrix products
    over the fused loop."""
    f = {r["part"]: r["paired_fraction"] for r in section["rows"]}
    fused = f["unnormalized"] - f["accumulators"]
    return {
        "accumulators": f["accumulators"],
        "normalization": 1.0 - f["unnormalized"],
        "fallback_pass": f["eager_fallback"] - f["no_fallback"],
        "fallback_skipped": 1.0 - f["no_fallback"],
        "fused_mlp": fused,
        "matmul_over_fused": (f["unnormalized_matmul"] - f["accumulators"]) / fused,
    }


def claim(section: dict[str, Any]) -> str:
    """The costs of :func:`costs` in words."""
    c = costs(section)
    return (
        f"of the learned update's time (same run): the accumulators {c['accumulators']:.0%}, "
        f"the normalization's plain reductions {c['normalization']:.0%}, the columns and the "
        f"fused MLP {c['fused_mlp']:.0%}; the overflow fallback's pass would add "
        f"{c['fallback_pass']:.0%} if it ran every step, skipped it costs "
        f"{c['fallback_skipped']:+.0%}; as matrix products, the MLP would take "
        f"{c['matmul_over_fused']:.1f}× the fused loop's time."
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
        "whole and in parts (`benchmarks/update_profile.py`), each timed as "
        f"{s['steps']} updates in a `fori_loop` that feeds the parameters and accumulators "
        "back (buffers reused, as in an unroll), in interleaved rounds in one run; fractions "
        "are of the whole update's time (paired: the median over rounds of the per-round "
        "ratio).",
        "",
        claim(section),
        "",
        "| part | compile s | ms per update (median) | (fastest) | of the update | paired |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['part']} | {r['compile_s']:.2f} | {r['ms_per_update_median']:.3g} | "
            f"{r['ms_per_update_min']:.3g} | {r['fraction_of_update']:.2f} | "
            f"{r['paired_fraction']:.2f} |"
        )
    return "\n".join(lines) + "\n"
