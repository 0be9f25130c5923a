"""TBPTT with the learned optimizer's reverse pass in reduced precision (opt-in), beside
the exact one: its speed and its meta-gradient's error.

``LOptConfig(backward_dtype="bfloat16")`` keeps the fused MLP's reverse-pass matrices
(``X``, ``H``, ``dH``) in bfloat16 and accumulates in float32
(:func:`l2l_jax.learned.common.fused_mlp`), the first of the two routes to a cheaper TBPTT
step the performance page names. The estimators group (:mod:`benchmarks.estimators`) times
its meta-step in the same rounds as the exact TBPTT and PES, costs one inner step the same
way, and measures here, on the group's initial state, the TBPTT meta-gradient of one
segment with and without it: cosine and normwise relative error against the exact float32
one, and the meta-losses (equal: the forward pass is unchanged).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from benchmarks import learned_setup, timing
from benchmarks.learned_setup import LearnedPreset
from l2l_jax import truncated

NAME = "tbptt-{dtype}"  # the row's estimator name in the group's results


def reduced_step(step: LearnedPreset, dtype: str) -> LearnedPreset:
    """The group's TBPTT setting with the learned optimizer's reverse pass in ``dtype``."""
    return dataclasses.replace(step, backward_dtype=dtype)


def reduced_cell(step: LearnedPreset, dtype: str) -> timing.Timed:
    """The TBPTT meta-step with ``backward_dtype=dtype`` on the group's initial state (the
    same meta-parameters and runs as the exact one), compiled and warmed up."""
    reduced = reduced_step(step, dtype)
    task = learned_setup.build_task(reduced)
    state = learned_setup.initial_state(reduced, task)
    meta_step = truncated.make_meta_step(reduced.lopt(), reduced.config())
    return timing.compile_timed(NAME.format(dtype=dtype), meta_step, state, task)


def segment_gradient(step: LearnedPreset) -> tuple[float, np.ndarray]:
    """The meta-loss and flat meta-gradient of one TBPTT segment on the initial state, as
    the meta-step computes them (:func:`l2l_jax.truncated.make_meta_step`)."""
    task = learned_setup.build_task(step)
    state = learned_setup.initial_state(step, task)
    cfg, lopt = step.config(), step.lopt()

    def loss_and_grad(meta_params, runs):
        _, (loss, grad, _, _) = truncated.estimate(meta_params, runs, None, task, lopt, cfg)
        return loss, grad

    loss, grad = jax.jit(loss_and_grad)(state.meta_params, state.inner)
    flat = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(grad)])
    return float(loss), flat


def accuracy(step: LearnedPreset, dtype: str) -> dict[str, Any]:
    """Cosine and normwise relative error of the reduced-precision TBPTT meta-gradient
    against the exact float32 one, and both meta-losses."""
    loss, exact = segment_gradient(step)
    reduced_loss, reduced = segment_gradient(reduced_step(step, dtype))
    norm = float(np.linalg.norm(exact))
    return {
        "dtype": dtype,
        "cosine": float(reduced @ exact / (np.linalg.norm(reduced) * norm)),
        "relative_error": float(np.linalg.norm(reduced - exact) / norm),
        "meta_loss": loss,
        "meta_loss_reduced": reduced_loss,
        "grad_norm": norm,
    }


def summary(
    row: dict[str, Any], exact: timing.Timed, reduced: timing.Timed, acc: dict, per_run: float
) -> dict[str, Any]:
    """The section's ``reduced_precision`` entry: the row, the accuracy, the paired speed
    ratio to the exact TBPTT meta-step and TBPTT/forward per run with this path."""
    return {
        "row": row,
        "accuracy": acc,
        "paired_time_vs_exact": timing.paired_ratio(reduced, exact),
        "tbptt_over_forward_per_run": per_run,
    }


def render(section: dict[str, Any]) -> list[str]:
    """Markdown lines on the reduced-precision path (empty when it was not measured)."""
    reduced = section.get("reduced_precision")
    if not reduced:
        return []
    acc, row = reduced["accuracy"], reduced["row"]
    exact = next(r for r in section["rows"] if r["estimator"] == "tbptt")
    return [
        f"**Reduced-precision reverse pass (opt-in, `LOptConfig(backward_dtype="
        f'"{acc["dtype"]}")`).** The learned optimizer\'s reverse-pass matrices (X, H, dH) '
        f"stored in {acc['dtype']}, products accumulated in float32: "
        f"{timing.fmt_bytes(int(row['bytes_per_inner_step']))} per inner step against "
        f"{timing.fmt_bytes(int(exact['bytes_per_inner_step']))} (XLA's cost analysis; "
        f"{row['bytes_per_inner_step'] / exact['bytes_per_inner_step']:.3f}×), "
        f"meta-step {row['run_ms_median']:.4g} ms against {exact['run_ms_median']:.4g} ms "
        f"(paired per round: {reduced['paired_time_vs_exact']:.2f}× the exact one's time); "
        f"TBPTT / forward per run with it: **{reduced['tbptt_over_forward_per_run']:.2f}×**. "
        f"Its meta-gradient of one segment on the initial state against the exact float32 "
        f"one: cosine {acc['cosine']:.6f}, relative error {acc['relative_error']:.2e} "
        f"(meta-loss {acc['meta_loss_reduced']:.6g} vs {acc['meta_loss']:.6g}: the forward "
        f"pass is unchanged).",
        "",
    ]
