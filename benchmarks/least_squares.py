"""Least-squares grid search: the spectral fast path against the vmapped ``lax.scan`` unroll.

On the Figure 2 grid search of Wang et al. (2021) (d = 1000, t = 40, truncation
``R = 40 sigma`` with sigma = 1, TbT with n = 500, TbV with n1 = n2 = 250, float32), find
the mean meta-objective at every step size of a grid in two ways, for ``m`` tasks per
objective:

* **spectral**: ``jax.vmap(spectral_ls.decompose)`` over the tasks (timed on its own: it
  is paid once per task, not per step size), then ``spectral_ls.grid_search(specs, etas,
  t, R, objective)`` (per grid);
* **unroll**: one jitted function computing, for every ``eta`` (``vmap``), the mean over
  the tasks (``vmap``) of ``objectives.tbt()`` / ``tbv()`` applied to
  ``inner.unroll(task, inner.gd(), eta, t, max_norm=R)``.

Each function is compiled once ahead of time (``.lower(...).compile()``), warmed up, and
then timed in rounds that take one sample of every function, so load on a shared machine
hits both sides alike; the medians give ``speedup = unroll / spectral`` for (a) the grid
alone and (b) the grid plus the decomposition. Agreement: the largest relative
difference between the two sides' per-eta mean objectives, and whether their argmins
agree (float32 here; float64 agreement to 1e-6 is asserted by ``tests/test_spectral_ls.py``
and ``tests/test_generalization.py``).

If one unroll sample would be slow, ``LSPreset.m_unroll`` runs the unroll on the first
``m_unroll`` tasks only; its time is then scaled by ``m / m_unroll`` (its cost is linear in
the tasks), and the agreement is checked against the spectral values of the same tasks.
Per-task-per-eta costs are reported for both sides.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from configs import fig2
from experiments.generalization import eta_grid
from l2l_jax import inner, objectives
from l2l_jax.closed_forms import spectral_ls
from l2l_jax.tasks import LeastSquares

OBJECTIVES = ("tbt", "tbv")


@dataclasses.dataclass(frozen=True)
class LSPreset:
    """Sizes of the least-squares grid search benchmark (fig2's settings by default).

    ``n`` is TbT's training set; TbV splits it ``n1 = n // 2``, ``n2 = n - n1``.
    ``m_unroll`` (``None`` = ``m``) is the number of tasks the unroll side runs on.
    ``budget_s`` caps one function's timed samples (never fewer than one).
    """

    d: int = 1000
    n: int = 500
    t: int = 40
    sigma: float = 1.0
    truncation: float = 40.0
    m: int = 20
    m_unroll: int | None = None
    repeats: int = 7
    budget_s: float = 30.0
    seed: int = 0


PRESETS: dict[str, LSPreset] = {
    "cpu-small": LSPreset(m=20, repeats=7),
    "accelerator": LSPreset(m=300, repeats=7),
    "smoke": LSPreset(d=50, n=24, m=4, repeats=2, budget_s=2.0),
}


def grids() -> dict[str, np.ndarray]:
    """The fig2 grid (170 values in [1e-6, 10]) and the paper's (25 values in [1e-6, 1])."""
    return {
        "fig2": eta_grid(fig2.get_config()),
        "paper": eta_grid(fig2.get_config("paper")),
    }


def blas_threads() -> str | None:
    """``OPENBLAS_NUM_THREADS`` of this process (``benchmarks/__init__.py`` sets 1)."""
    return os.environ.get("OPENBLAS_NUM_THREADS")


# -- the two sides ----------------------------------------------------------------------


def unroll_grid(objective: str, t: int):
    """``(batch, etas, R) -> (n_etas,)`` mean over tasks of the objective after GD."""
    score = objectives.resolve(objective)

    def per_eta(batch, eta, radius):
        run = lambda task: score(inner.unroll(task, inner.gd(), eta, t, max_norm=radius))
        return jnp.mean(jax.vmap(run)(batch))

    return lambda batch, etas, radius: jax.vmap(per_eta, in_axes=(None, 0, None))(
        batch, etas, radius
    )


def spectral_grid(objective: str, t: int):
    """``(specs, etas, R) -> (best_eta, values)`` of :func:`spectral_ls.grid_search`."""
    return lambda specs, etas, radius: spectral_ls.grid_search(specs, etas, t, radius, objective)


def _decompose(batch: LeastSquares) -> spectral_ls.LSSpectrum:
    return jax.vmap(spectral_ls.decompose)(
        batch.x_train, batch.y_train, batch.x_valid, batch.y_valid
    )


def _subset(tree: Any, k: int) -> Any:
    return jax.tree.map(lambda a: a[:k], tree)


def measure(preset: LSPreset, progress: bool = True) -> dict[str, Any]:
    """Compile and time both sides for both objectives and both grids; JSON-ready dict."""
    from tqdm.auto import tqdm

    dtype = jnp.float32
    m_unroll = preset.m if preset.m_unroll is None else min(preset.m_unroll, preset.m)
    radius = jnp.asarray(preset.truncation * preset.sigma, dtype)
    eta_grids = {k: jnp.asarray(v, dtype) for k, v in grids().items()}
    n1 = preset.n // 2
    sizes = {"tbt": (preset.n, 0), "tbv": (n1, preset.n - n1)}
    keys = dict(zip(OBJECTIVES, jax.random.split(jax.random.key(preset.seed)), strict=True))

    cells: list[timing.Timed] = []
    plan = []  # (objective, grid, decompose cell, spectral cell, unroll cell, subset values)
    bar = tqdm(desc="least-squares grid search", disable=not progress, leave=False)
    for objective in OBJECTIVES:
        n_train, n_valid = sizes[objective]
        batch = LeastSquares.sample_batch(
            keys[objective], preset.m, preset.d, n_train, n_valid, preset.sigma, dtype
        )
        dec = timing.compile_timed(f"{objective}/decompose", _decompose, batch)
        cells.append(dec)
        specs = dec.out
        batch_u = _subset(batch, m_unroll)
        for grid, etas in eta_grids.items():
            spectral_fn = spectral_grid(objective, preset.t)
            spec = timing.compile_timed(
                f"{objective}/{grid}/spectral", spectral_fn, specs, etas, radius
            )
            unroll_fn = unroll_grid(objective, preset.t)
            unr = timing.compile_timed(
                f"{objective}/{grid}/unroll", unroll_fn, batch_u, etas, radius
            )
            cells += [spec, unr]
            # Spectral values on the unroll's tasks (the same as spec's when m_unroll == m).
            same = spectral_ls.grid_search(
                _subset(specs, m_unroll), etas, preset.t, radius, objective
            )[1]
            plan.append((objective, grid, dec, spec, unr, np.asarray(same)))
        del batch
    timing.time_interleaved(cells, preset.repeats, preset.budget_s, bar)
    bar.close()

    rows = []
    for objective, grid, dec, spec, unr, spectral_values in plan:
        n_etas = int(eta_grids[grid].shape[0])
        unroll_values = np.asarray(unr.out, np.float64)
        spectral_values = spectral_values.astype(np.float64)
        rel = np.abs(spectral_values - unroll_values) / np.abs(unroll_values)
        dec_ms = 1e3 * statistics.median(dec.times)
        spec_ms = 1e3 * statistics.median(spec.times)
        unroll_ms = 1e3 * statistics.median(unr.times)
        unroll_ms_all = unroll_ms * preset.m / m_unroll  # linear in the tasks
        argmin_s, argmin_u = int(np.argmin(spectral_values)), int(np.argmin(unroll_values))
        rows.append(
            {
                "objective": objective,
                "grid": grid,
                "n_etas": n_etas,
                "m": preset.m,
                "m_unroll": m_unroll,
                "decompose": dec.summary(),
                "spectral": spec.summary(),
                "unroll": unr.summary(),
                "unroll_ms_for_m_tasks": unroll_ms_all,
                "speedup_grid": unroll_ms_all / spec_ms,
                "speedup_grid_plus_decompose": unroll_ms_all / (spec_ms + dec_ms),
                "us_per_task_eta": {
                    "spectral": 1e3 * spec_ms / (preset.m * n_etas),
                    "unroll": 1e3 * unroll_ms / (m_unroll * n_etas),
                    "decompose_per_task": 1e3 * dec_ms / preset.m,
                },
                "max_rel_diff": float(np.max(rel)),
                "argmin_spectral": argmin_s,
                "argmin_unroll": argmin_u,
                "argmin_agrees": argmin_s == argmin_u,
                "eta_star": float(eta_grids[grid][argmin_s]),
                "all_finite": bool(
                    np.all(np.isfinite(unroll_values)) and np.all(np.isfinite(spectral_values))
                ),
            }
        )
    return {
        "settings": dataclasses.asdict(preset)
        | {
            "m_unroll": m_unroll,
            "n1_tbv": n1,
            "n2_tbv": preset.n - n1,
            "dtype": "float32",
            "radius": float(radius),
            "grids": {k: [float(v[0]), float(v[-1]), int(v.shape[0])] for k, v in grids().items()},
        },
        "openblas_num_threads": blas_threads(),
        "spectral": "jax.vmap(spectral_ls.decompose) once per task; "
        "spectral_ls.grid_search(specs, etas, t, R, objective) per grid",
        "unroll": "vmap over eta of the mean over tasks (vmap) of objectives.<objective>()("
        "inner.unroll(task, inner.gd(), eta, t, max_norm=R))",
        "rows": rows,
    }


# -- markdown ---------------------------------------------------------------------------


def _x(r: float) -> str:
    return f"{r:,.0f}×" if r >= 100 else f"{r:.3g}×"


def claim(section: dict[str, Any], target: float = 20.0) -> str:
    """One sentence on the fig2 grid's speedup against the ``target`` (the spectral path
    is worth its code if it makes the grid search at least that much faster)."""
    rows = [r for r in section["rows"] if r["grid"] == "fig2"]
    if not rows:
        return ""
    worst = min(r["speedup_grid"] for r in rows)
    worst_all = min(r["speedup_grid_plus_decompose"] for r in rows)
    verdict = "meets" if worst >= target else "does NOT meet"
    if section["settings"]["d"] != 1000:
        verdict = f"(d = {section['settings']['d']}, not fig2's d = 1000) says nothing about"
    agree = all(r["argmin_agrees"] for r in section["rows"])
    return (
        f"On the fig2 grid the spectral grid search is at least **{_x(worst)}** faster than the "
        f"vmapped unroll (both objectives), which {verdict} the {target:.0f}× target; "
        f"counting the one-off decomposition of the {section['settings']['m']} tasks too, at "
        f"least {_x(worst_all)}. The argmin "
        + ("agrees on every grid." if agree else "does NOT agree on every grid.")
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The least-squares section: settings, one table row per (objective, grid)."""
    s = section["settings"]
    lines = [
        f"{heading} least-squares grid search",
        "",
        f"Fig. 2 setting: d = {s['d']:,}, t = {s['t']}, R = {s['radius']:g} "
        f"(= {s['truncation']:g} σ, σ = {s['sigma']:g}), TbT n = {s['n']}, TbV n1 = "
        f"{s['n1_tbv']}, n2 = {s['n2_tbv']}, {s['dtype']}, m = {s['m']} tasks per objective"
        + (f" (unroll on {s['m_unroll']} of them, time scaled)" if s["m_unroll"] != s["m"] else "")
        + f"; grids fig2 = {s['grids']['fig2'][2]} η in [{s['grids']['fig2'][0]:g}, "
        f"{s['grids']['fig2'][1]:g}], paper = {s['grids']['paper'][2]} η in "
        f"[{s['grids']['paper'][0]:g}, {s['grids']['paper'][1]:g}]. "
        f"OPENBLAS_NUM_THREADS = {section['openblas_num_threads']}.",
        "",
        claim(section),
        "",
        "Run times are medians of interleaved samples (one per function per round). Speedup "
        "= unroll / spectral; `+ dec` adds the decomposition (paid once per task) to the "
        "spectral side. µs/(task·η) is the cost of one task at one step size. Rel diff is "
        "the largest relative difference of the per-η mean objectives (float32; float64 "
        "agreement to 1e-6 is asserted by `tests/test_spectral_ls.py` and "
        "`tests/test_generalization.py`).",
        "",
        "| objective | grid | η | decompose ms | spectral ms | unroll ms | speedup "
        "| speedup + dec | µs/(task·η) spectral | µs/(task·η) unroll | rel diff | argmin "
        "| η* |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in section["rows"]:
        us = r["us_per_task_eta"]
        lines.append(
            f"| {r['objective']} | {r['grid']} | {r['n_etas']} "
            f"| {r['decompose']['run_ms_median']:.3g} | {r['spectral']['run_ms_median']:.3g} "
            f"| {r['unroll_ms_for_m_tasks']:.4g} | {_x(r['speedup_grid'])} "
            f"| {_x(r['speedup_grid_plus_decompose'])} | {us['spectral']:.3g} "
            f"| {us['unroll']:.3g} | {r['max_rel_diff']:.1e} "
            f"| {'agrees' if r['argmin_agrees'] else 'DIFFERS'} | {r['eta_star']:.3g} |"
        )
    lines.append("")
    return "\n".join(lines)
