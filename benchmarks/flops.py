"""Achieved FLOP/s of the MNIST meta-training step against the machine's matmul peak.

The meta-step is the library's jitted TBPTT meta-step of the learned optimizer on the
MNIST MLP (:func:`benchmarks.learned_setup.library_cell`, the same compiled program the
"learned_optimizer" group times). Its FLOPs come from XLA:
``compiled.cost_analysis()["flops"]``. XLA's cost analysis counts the body of a ``while``
loop once, whatever its trip count (checked at run time on a small ``lax.scan``,
:func:`benchmarks.common.xla_counts_loop_body_once`); the meta-step's work is in two loops
of ``K`` trips (the forward scan over the segment and its transpose), and what lies outside
them (the Adam update of the meta-parameters, key splits, means) is negligible, so the
FLOPs per meta-step are taken as ``K`` times the reported count. XLA's estimate of the
bytes accessed is scaled the same way.

The peak is measured in the same run: a ``matmul_n`` x ``matmul_n`` float32 ``jnp.dot``
(``2 n^3`` FLOPs), timed in interleaved rounds with the meta-step
(:mod:`benchmarks.timing`), so load on a shared machine hits both alike. Reported:
achieved FLOP/s, matmul FLOP/s, their ratio, and the meta-step's arithmetic intensity
(FLOPs per byte accessed), which says why the ratio is what it is.
"""

from __future__ import annotations

import dataclasses
import itertools
import statistics
from typing import Any

import jax
import jax.numpy as jnp

from benchmarks import learned_setup, timing
from benchmarks.common import loop_trip_counts, reported, xla_counts_loop_body_once


@dataclasses.dataclass(frozen=True)
class FlopsPreset:
    """The meta-step (a :class:`benchmarks.learned_setup.LearnedPreset`), the matmul size, and
    the timing rounds (each function's samples capped at ``budget_s`` seconds)."""

    step: learned_setup.LearnedPreset
    matmul_n: int = 2048
    repeats: int = 3
    budget_s: float = 30.0


PRESETS: dict[str, FlopsPreset] = {
    "cpu-small": FlopsPreset(step=learned_setup.PRESETS["cpu-small"], matmul_n=2048, repeats=3),
    "accelerator": FlopsPreset(
        step=learned_setup.PRESETS["accelerator"], matmul_n=8192, repeats=10
    ),
    "smoke": FlopsPreset(
        step=learned_setup.PRESETS["smoke"], matmul_n=256, repeats=2, budget_s=1.0
    ),
}


def matmul_cell(n: int) -> timing.Timed:
    """``jnp.dot`` of two ``n`` x ``n`` float32 matrices, compiled and warmed up."""
    k_a, k_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k_a, (n, n), jnp.float32)
    b = jax.random.normal(k_b, (n, n), jnp.float32)
    return timing.compile_timed(f"matmul {n}", jnp.dot, a, b)


def lopt_mlp_flops(preset: learned_setup.LearnedPreset, task_params: int) -> float:
    """Hand count of the FLOPs of the learned optimizer's per-coordinate MLP in one inner
    step of one run, ``2 P`` times the multiply-adds of: the forward pass and the weight
    gradient over all ``F`` inputs, and the input gradient, which the first layer needs
    for the ``2 + 4 K`` tensor features only (the step features are constants)."""
    cfg = preset.lopt().config
    sizes = (cfg.num_features, *cfg.hidden_sizes, 2)
    macs = sum(a * b for a, b in itertools.pairwise(sizes))
    input_grad = macs - (cfg.num_features - cfg.num_tensor_features) * sizes[1]
    return 2.0 * task_params * (2 * macs + input_grad)


def step_counts(cell: timing.Timed, preset: learned_setup.LearnedPreset) -> dict[str, Any]:
    """FLOPs and bytes per meta-step: XLA's counts, times ``K`` if loops count once."""
    counts = reported(cell.fn)
    once = xla_counts_loop_body_once()
    scale = preset.segment if once else 1
    inner_steps = preset.meta_batch * preset.segment
    task_params = sum(int(x.size) for x in jax.tree.leaves(cell.args[1].init_params()))
    return {
        "xla_flops_reported": counts["flops"],
        "xla_bytes_reported": counts["bytes"],
        "xla_counts_loop_body_once": once,
        "loop_trip_counts": loop_trip_counts(cell.fn),
        "loop_scale": scale,
        "flops": scale * counts["flops"],
        "bytes": scale * counts["bytes"],
        "flops_per_inner_step": scale * counts["flops"] / inner_steps,
        "lopt_mlp_flops_per_inner_step": lopt_mlp_flops(preset, task_params),
    }


def measure(preset: FlopsPreset, progress: bool = True) -> dict[str, Any]:
    """Time the meta-step and the matmul side by side; FLOP/s of each and their ratio."""
    step = dataclasses.replace(learned_setup.library_cell(preset.step), name="meta-step", times=[])
    matmul = matmul_cell(preset.matmul_n)
    timing.time_rounds([step, matmul], preset.repeats, preset.budget_s, "time FLOP/s", progress)
    counts = step_counts(step, preset.step)
    matmul_flops = 2.0 * preset.matmul_n**3
    step_s, matmul_s = statistics.median(step.times), statistics.median(matmul.times)
    achieved, peak = counts["flops"] / step_s, matmul_flops / matmul_s
    return {
        "settings": dataclasses.asdict(preset),
        "meta_step": {**step.summary(), **counts},
        "matmul": {
            **matmul.summary(),
            "n": preset.matmul_n,
            "flops": matmul_flops,
            "xla_flops_reported": reported(matmul.fn)["flops"],
        },
        "achieved_flops_per_s": achieved,
        "matmul_flops_per_s": peak,
        "ratio": achieved / peak,
        "arithmetic_intensity": counts["flops"] / counts["bytes"] if counts["bytes"] else None,
    }


def _giga(x: float) -> str:
    return f"{x / 1e9:.3g} GFLOP/s"


def claim(section: dict[str, Any]) -> str:
    """One sentence: achieved FLOP/s, the matmul peak, and the ratio."""
    return (
        f"the MNIST meta-training step achieves {_giga(section['achieved_flops_per_s'])}, "
        f"{100 * section['ratio']:.1f}% of the {_giga(section['matmul_flops_per_s'])} a "
        f"{section['matmul']['n']}×{section['matmul']['n']} float32 matmul reaches in the same "
        f"run (ratio {section['ratio']:.3g})."
    )


def _loops_text(trips: dict[str, int], segment: int) -> str:
    """E.g. ``"2 of 4 trips (the segment's scan and its transpose), 12 of 5 (...)"``."""
    parts = []
    for n, count in trips.items():
        what = "the segment's scan and its transpose" if int(n) == segment else "PRNG rounds"
        parts.append(f"{count} of {n} trips ({what})")
    return ", ".join(parts) if parts else "none"


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The FLOP/s section: what was counted, the claim, one row per function."""
    step, mm = section["meta_step"], section["matmul"]
    s = section["settings"]["step"]
    intensity = section["arithmetic_intensity"]
    lines = [
        f"{heading} achieved FLOP/s of the meta-training step",
        "",
        f"The library's learned-optimizer meta-step (MLP {'-'.join(map(str, s['sizes']))}, "
        f"B = {s['meta_batch']}, K = {s['segment']}, as above). FLOPs: XLA's "
        f"`compiled.cost_analysis()` reports {step['xla_flops_reported']:.3g}; it counts a "
        f"`while` loop's body once whatever its trip count, and the compiled step's loops "
        f"are {_loops_text(step['loop_trip_counts'], s['segment'])}, so the work per "
        f"meta-step is taken as {step['loop_scale']} × that = {step['flops']:.3g} FLOPs, "
        f"{step['flops_per_inner_step']:.3g} per inner step of one run (the learned "
        f"optimizer's per-coordinate MLP alone, forward and backward, counts "
        f"{step['lopt_mlp_flops_per_inner_step']:.3g} by hand). Peak: a float32 `jnp.dot` of "
        f"two {mm['n']}×{mm['n']} matrices (2n³ FLOPs). Both timed in interleaved rounds in "
        "one run.",
        "",
        claim(section),
        "",
        "| function | FLOPs per call | run ms (median) | repeats | GFLOP/s |",
        "|---|---:|---:|---:|---:|",
        f"| meta-step | {step['flops']:.3g} | {step['run_ms_median']:.4g} | {step['repeats']} "
        f"| {section['achieved_flops_per_s'] / 1e9:.3g} |",
        f"| matmul {mm['n']} | {mm['flops']:.3g} | {mm['run_ms_median']:.4g} | {mm['repeats']} "
        f"| {section['matmul_flops_per_s'] / 1e9:.3g} |",
        "",
    ]
    if intensity is not None:
        lines += [
            f"XLA also estimates {step['bytes']:.3g} bytes accessed per meta-step (scaled "
            f"alike): {intensity:.2g} FLOPs per byte. The learned optimizer runs a small MLP "
            "on every parameter of the task (a P × F feature matrix times F × H weights, F "
            "and H a few tens) amid elementwise feature work, so the step streams large, "
            "narrow activations through memory: it is bound by memory bandwidth rather than "
            "arithmetic, far from the matmul's FLOP/s.",
            "",
        ]
    return "\n".join(lines)
