"""Heavy-ball momentum: stable (projective forward mode) vs forward vs autodiff
meta-gradients of the log-loss, against t: time, memory and accuracy against the mpmath
reference (``reference.momentum_log_f``), float32.

Task: ``Quadratic.random(key(0), dim=20, scale=0.5)`` (as the GD table), ``inner.momentum``
at ``beta = 0.9`` and ``eta = 1.2 * 2 (1 + beta) / L``: past the stability boundary, where
unrolled meta-gradients leave float range after a few dozen steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, timing
from l2l_jax import inner, metagrad, tasks
from l2l_jax.closed_forms import reference

METHODS = ("stable", "forward", "autodiff")


@dataclasses.dataclass(frozen=True)
class MomentumPreset:
    name: str
    steps: tuple[int, ...]
    repeats: int
    dim: int = 20
    beta: float = 0.9
    boundary_factor: float = 1.2
    cell_budget_s: float = 10.0


PRESETS: dict[str, MomentumPreset] = {
    "cpu-small": MomentumPreset("cpu-small", (10, 100, 1_000, 10_000, 100_000), repeats=20),
    "accelerator": MomentumPreset("accelerator", (10, 100, 1_000, 10_000, 100_000), repeats=20),
    "smoke": MomentumPreset("smoke", (10, 100), repeats=1, cell_budget_s=1.0),
}


def measure(preset: MomentumPreset, progress: bool = True) -> dict[str, Any]:
    task = tasks.Quadratic.random(jax.random.key(0), dim=preset.dim, scale=0.5)
    lam = np.asarray(task.eigenvalues, np.float64)
    coef = np.asarray(task.coefficients, np.float64)
    eta = float(np.float32(preset.boundary_factor * 2 * (1 + preset.beta) / lam.max()))
    beta = float(np.float32(preset.beta))
    hp = {"learning_rate": jnp.float32(eta), "momentum": jnp.float32(beta)}
    cells = []
    for method in METHODS:
        for t in preset.steps:
            f = metagrad.meta_objective(task, inner.momentum(), "log_loss", steps=t, grad=method)
            cells.append(timing.compile_timed(f"{method}/{t}", jax.value_and_grad(f), hp))
    timing.time_interleaved(cells, preset.repeats, preset.cell_budget_s)
    rows = []
    for cell in cells:
        method, t = cell.name.split("/")
        t = int(t)
        value, grads = cell.out
        ref_value = float(reference.momentum_log_f("momentum", eta, beta, lam, coef, t)) / t
        ref_grads = [
            float(g) / t for g in reference.momentum_log_f_grad("momentum", eta, beta, lam, coef, t)
        ]
        got = [float(grads["learning_rate"]), float(grads["momentum"])]
        err = lambda x, r: abs(x - r) / abs(r) if np.isfinite(x) else None
        grad_errs = [err(x, r) for x, r in zip(got, ref_grads, strict=True)]
        rows.append(
            {
                "method": method,
                "t": t,
                **cell.summary(),
                "peak_bytes": common.xla_peak_bytes(cell.fn),
                "value_rel_err": err(float(value), ref_value),
                "grad_rel_err": None if None in grad_errs else max(grad_errs),
                "value_finite": bool(np.isfinite(float(value))),
                "grad_finite": bool(all(np.isfinite(got))),
            }
        )
    return {
        "settings": {**dataclasses.asdict(preset), "eta": eta, "L": float(lam.max())},
        "rows": rows,
    }


def claim(section: dict[str, Any]) -> str:
    rows = section["rows"]
    stable = [r for r in rows if r["method"] == "stable"]
    worst = max((r["grad_rel_err"] or np.inf) for r in stable)
    broken = sorted(
        {
            r["t"]
            for r in rows
            if r["method"] != "stable" and (r["grad_rel_err"] is None or r["grad_rel_err"] > 0.01)
        }
    )
    return (
        f"Past heavy ball's stability boundary (eta = {section['settings']['eta']:.4g}, beta = "
        f"{section['settings']['beta']}), stable's meta-gradient is finite at every t with a "
        f"largest relative error of {worst:.1e} against mpmath; forward or autodiff is non-finite "
        f"or off by more than 1% (autodiff: a zero meta-gradient under an infinite value) at "
        f"t = {', '.join(f'{t:,}' for t in broken) or 'none'}."
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    lines = [
        f"{heading} heavy-ball momentum: stable vs forward vs autodiff",
        "",
        claim(section),
        "",
        "| method | t | median ms | peak bytes (XLA) | value rel. err | grad rel. err |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda x: "non-finite" if x is None else f"{x:.1e}"
    for r in section["rows"]:
        lines.append(
            f"| {r['method']} | {r['t']:,} | {r['run_ms_median']:.3g} | "
            f"{timing.fmt_bytes(r['peak_bytes'])} | {fmt(r['value_rel_err'])} | "
            f"{fmt(r['grad_rel_err'])} |"
        )
    return "\n".join(lines)
