"""Where does meta-training of the step size succeed, per gradient method and dtype?

For every ``t`` and ``eta0`` (both sides of ``2/L``), meta-GD runs with each method in
float32 and float64, and once with exact (mpmath) meta-gradients. A cell succeeds when
its last ``window`` iterates are within ``rtol`` of ``eta*(t)``. The claim checked:
in float32, ``stable`` succeeds wherever the exact-gradient meta-GD does.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from experiments import common
from l2l_jax import inner, metagrad, objectives
from l2l_jax.closed_forms import reference

PAGE = "experiments/sweep.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 40


def _cell(task, steps, eta0, method, c, cfg) -> np.ndarray:
    F = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=steps, grad=method)
    res = metagrad.minimize(
        F,
        jnp.asarray(eta0, task.dtype),
        metagrad.meta_gd(c),
        cfg.meta_steps,
        progress=False,
        on_nonfinite="ignore",  # a cell where no step is finite is what the sweep maps
    )
    return np.asarray(res.trajectory, np.float64), res.nonfinite_count


def _record(traj, target, cfg, **fields) -> dict:
    return {
        **fields,
        "final_eta": float(traj[-1]),
        "converged_at": common.converged_at(traj, target, cfg.rtol),
        "success": common.succeeded(traj, target, cfg.rtol, cfg.window),
    }


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    """Run every cell; write ``results.json``, ``table.md`` and ``sweep.png``."""
    task32 = common.quadratic(cfg.task, jnp.float32)
    lam, coef = common.spectrum64(task32)
    L = float(lam[-1])
    c = common.meta_step_size(cfg, L)
    eta0s = [f * 2.0 / L for f in cfg.eta0_factors]
    targets = {t: common.eta_star(task32, t) for t in cfg.steps}
    cells = []
    n_cells = len(cfg.steps) * len(eta0s) * (len(cfg.dtypes) * len(cfg.methods) + cfg.exact)
    bar = tqdm(total=n_cells, desc="sweep", disable=not progress)
    for t, (f, eta0) in itertools.product(cfg.steps, zip(cfg.eta0_factors, eta0s, strict=True)):
        base = {"t": t, "eta0": eta0, "eta0_factor": f, "eta_star": targets[t]}
        if cfg.exact:
            traj = common.exact_meta_gd(lam, coef, t, eta0, c, cfg.meta_steps)
            cells.append(
                _record(
                    traj, targets[t], cfg, **base, method="exact", dtype="mpmath", nonfinite_steps=0
                )
            )
            bar.update()
        for dtype_name, method in itertools.product(cfg.dtypes, cfg.methods):
            with jax.enable_x64(dtype_name == "float64"):
                task = task32.astype(common.dtype_of(dtype_name))
                traj, n_bad = _cell(task, t, eta0, method, c, cfg)
            cells.append(
                _record(
                    traj,
                    targets[t],
                    cfg,
                    **base,
                    method=method,
                    dtype=dtype_name,
                    nonfinite_steps=n_bad,
                )
            )
            bar.set_postfix_str(f"t={t} {method} {dtype_name}")
            bar.update()
    bar.close()
    results = {
        "experiment": "sweep",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "eigenvalues": lam,
        "coefficients": coef,
        "smoothness": L,
        "c": c,
        "eta_star": {str(t): v for t, v in targets.items()},
        "eta_star_mpmath": {str(t): reference.eta_star(lam, coef, t) for t in cfg.steps},
        "cells": cells,
        "stable_float32_matches_exact": stable_matches_exact(cells),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results["table"] = table(results)
    (out / "table.md").write_text(results["table"] + "\n")
    results["figures"] = [plot(results, out / "sweep.png")]
    common.write_json(out / "results.json", results)
    return common.jsonable(results)


def stable_matches_exact(cells: list[dict]) -> bool | None:
    """True iff float32 stable succeeds in every cell where exact meta-GD succeeds."""
    exact = {(c["t"], c["eta0_factor"]): c["success"] for c in cells if c["method"] == "exact"}
    stable = {
        (c["t"], c["eta0_factor"]): c["success"]
        for c in cells
        if c["method"] == "stable" and c["dtype"] == "float32"
    }
    if not exact or not stable:
        return None
    return all(stable[k] for k, ok in exact.items() if ok)


def _rows(results: dict):
    cells = results["cells"]
    cols = sorted({(c["eta0_factor"], c["t"]) for c in cells})
    rows = list(dict.fromkeys((c["method"], c["dtype"]) for c in cells))
    index = {(c["method"], c["dtype"], c["eta0_factor"], c["t"]): c for c in cells}
    return cols, rows, index


def _mark(cell: dict) -> str:
    mark = "✓" if cell["success"] else "✗"
    if cell["nonfinite_steps"]:
        mark += f" ({cell['nonfinite_steps']} non-finite)"
    return mark


def table(results: dict) -> str:
    """Markdown: one row per (method, dtype), one column per (eta0, t)."""
    cols, rows, index = _rows(results)
    L = results["smoothness"]
    head = [f"η0={f * 2:.1f}/L, t={t}" for f, t in cols]
    lines = [
        "| method | dtype | " + " | ".join(head) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for method, dtype in rows:
        marks = [_mark(index[(method, dtype, f, t)]) for f, t in cols]
        lines.append(f"| {method} | {dtype} | " + " | ".join(marks) + " |")
    lines.append("")
    lines.append(
        f"✓: within {results['config']['rtol']:.0%} of η*(t) for the last "
        f"{results['config']['window']} of {results['config']['meta_steps']} meta-steps; "
        f"(n non-finite): meta-steps skipped because the meta-gradient or the value was "
        f"NaN/inf. L = {L:.4g}."
    )
    return "\n".join(lines)


def plot(results: dict, path: Path) -> str:
    """The table as a grid of green (success) and red (failure) cells."""
    plt = common.pyplot()
    cols, rows, index = _rows(results)
    ok = np.array([[index[(m, d, f, t)]["success"] for f, t in cols] for m, d in rows], float)
    fig, ax = plt.subplots(figsize=(1.0 * len(cols) + 2.5, 0.45 * len(rows) + 1.4))
    ax.imshow(ok, cmap="RdYlGn", vmin=-0.3, vmax=1.3, aspect="auto")
    for i, (m, d) in enumerate(rows):
        for j, (f, t) in enumerate(cols):
            cell = index[(m, d, f, t)]
            text = "ok" if cell["success"] else "fail"
            if cell["nonfinite_steps"]:
                text += f"\n{cell['nonfinite_steps']} n.f."
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(cols)), [f"{2 * f:.1f}/L\nt={t}" for f, t in cols], fontsize=7)
    ax.set_yticks(range(len(rows)), [f"{m} {d}" for m, d in rows], fontsize=8)
    ax.set_title("meta-GD reaches η* within 1%? (columns: η0, t; n.f.: non-finite meta-steps)")
    return common.save_figure(fig, path)


def summarize(results: dict) -> str:
    ok = results["stable_float32_matches_exact"]
    return "\n".join(
        [
            results["table"],
            "",
            f"float32 stable succeeds wherever exact-gradient meta-GD does: {ok}",
        ]
    )
