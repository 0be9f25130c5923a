"""Figure 1 for heavy-ball momentum (``configs/fig1_momentum.py``): (eta, beta) over
meta-steps with each meta-gradient method, against the minimizer of a float64 grid."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import common
from l2l_jax import inner, metagrad, tasks

PAGE = "experiments/health.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 20


def log_loss(task64, steps: int):
    """Heavy ball's stable log-loss ``F({"learning_rate", "momentum"})`` on ``task64``."""
    return metagrad.meta_objective(task64, inner.momentum(), "log_loss", steps=steps, grad="stable")


def grid_values(f, task64, etas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """``(len(betas), len(etas))``: ``f`` at every ``(eta, beta)`` of the grid, in one jitted
    double ``vmap``."""
    value = lambda e, b: f._fn({"learning_rate": e, "momentum": b}, task64, None)
    grid = jax.jit(jax.vmap(jax.vmap(value, (0, None)), (None, 0)))
    return np.asarray(grid(jnp.asarray(etas), jnp.asarray(betas)), np.float64)


def grid_minimizer(task64, steps: int, n: int, eta_max: float) -> dict:
    """The log-loss on an ``n x n`` grid of ``(eta, beta)`` (float64, stable) and its
    minimizer: ``eta`` in ``(0, eta_max]``, ``beta`` in ``[0, 0.999]``."""
    etas = np.linspace(eta_max / n, eta_max, n)
    betas = np.linspace(0.0, 0.999, n)
    values = grid_values(log_loss(task64, steps), task64, etas, betas)  # (beta, eta)
    i, j = np.unravel_index(np.nanargmin(values), values.shape)
    return {
        "etas": etas,
        "betas": betas,
        "values": values,
        "eta": float(etas[j]),
        "beta": float(betas[i]),
        "value": float(values[i, j]),
        "eta_step": float(etas[1] - etas[0]),
        "beta_step": float(betas[1] - betas[0]),
    }


def local_minima_2d(values: np.ndarray, within: float = 0.1) -> dict:
    """Strict local minima of a grid (each interior point below its 8 neighbours), and
    how many lie within ``within`` of the grid's best value."""
    c = values[1:-1, 1:-1]
    is_min = np.isfinite(c)
    rows, cols = values.shape
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            if di or dj:
                is_min &= c < values[1 + di : rows - 1 + di, 1 + dj : cols - 1 + dj]
    found = c[is_min]
    best = float(np.nanmin(values))
    return {
        "local_minima_2d": int(found.size),
        f"within_{within}_of_best": int(np.sum(found <= best + within)),
        "grid": list(values.shape),
    }


def refine(task64, steps: int, coarse: dict, n: int = 121, cells: int = 3) -> dict:
    """The minimizer on a fine ``n x n`` grid over ``+-cells`` coarse cells around the
    coarse grid's minimizer (the log-loss ripples on a finer scale than the coarse grid)."""
    e, b = coarse["eta"], coarse["beta"]
    de, db = cells * coarse["eta_step"], cells * coarse["beta_step"]
    etas = np.linspace(e - de, e + de, n)
    betas = np.clip(np.linspace(b - db, b + db, n), 0.0, 0.999)
    values = grid_values(log_loss(task64, steps), task64, etas, betas)
    i, j = np.unravel_index(np.nanargmin(values), values.shape)
    return {"eta": float(etas[j]), "beta": float(betas[i]), "value": float(values[i, j])}


def ripples(task64, steps: int, beta: float, etas: np.ndarray) -> dict:
    """Local minima of the log-loss along ``eta`` at fixed ``beta`` (float64): in the
    complex regime ``f(w_t)`` oscillates with ``t`` times the phase of the step's
    eigenvalues, so the landscape holds many of them."""
    f = log_loss(task64, steps)
    y = grid_values(f, task64, etas, np.asarray([beta]))[0]
    inner_min = (y[1:-1] < y[:-2]) & (y[1:-1] < y[2:])
    return {"beta": beta, "points": int(etas.size), "local_minima": int(inner_min.sum())}


def local_check(task64, steps: int, point: dict, n: int = 41, spread: float = 0.01) -> dict:
    """Whether ``point`` is a minimizer of the float64 log-loss on an ``n x n`` grid within
    ``+-spread`` (relative) of each coordinate, and the float64 gradient there."""
    f = log_loss(task64, steps)
    e0, b0 = point["learning_rate"], point["momentum"]
    etas = e0 * np.linspace(1 - spread, 1 + spread, n)
    betas = b0 * np.linspace(1 - spread, 1 + spread, n)
    values = grid_values(f, task64, etas, betas)
    hp = {"learning_rate": jnp.float64(e0), "momentum": jnp.float64(b0)}
    at = float(f(hp))
    grad = {k: float(v) for k, v in jax.grad(f)(hp).items()}
    return {
        "value": at,
        "local_grid_min": float(np.nanmin(values)),
        "is_local_minimum": bool(at <= np.nanmin(values) + 1e-9),
        "gradient_float64": grad,
        "spread": spread,
        "points": n,
    }


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    out = Path(out)
    dtype = common.dtype_of(cfg.dtype)
    task = common.quadratic(cfg.task, dtype)
    with jax.enable_x64(True):  # the same task, its float32 entries read exactly in float64
        task64 = tasks.Quadratic(
            np.asarray(task.hessian, np.float64), np.asarray(task.w0, np.float64)
        )
        eta_max = max(4 / float(task64.smoothness), 1.1 * cfg.eta0)
        best = grid_minimizer(task64, int(cfg.steps), int(cfg.grid), eta_max)
        fine = refine(task64, int(cfg.steps), best)
        fine["endpoint"] = local_check(
            task64, int(cfg.steps), {"learning_rate": fine["eta"], "momentum": fine["beta"]}
        )
        ripple = ripples(task64, int(cfg.steps), fine["beta"], np.linspace(0, eta_max, 2001)[1:])
    big_l = float(common.spectrum64(task)[0][-1])
    init = {
        "learning_rate": jnp.asarray(cfg.eta0, dtype),
        "momentum": jnp.asarray(cfg.beta0, dtype),
    }
    runs = {}
    for method in cfg.methods:
        f = metagrad.meta_objective(
            task, inner.momentum(), "log_loss", steps=cfg.steps, grad=method
        )
        label = f"fig1_momentum {method}" if progress else False
        schedule = optax.cosine_decay_schedule(cfg.meta_lr, cfg.meta_steps)
        res = metagrad.minimize(f, init, optax.adam(schedule), cfg.meta_steps, progress=label)
        traj = {k: np.asarray(v, np.float64) for k, v in res.trajectory.items()}
        final = {k: float(v[-1]) for k, v in traj.items()}
        close = (
            abs(final["learning_rate"] - fine["eta"]) <= cfg.rtol * fine["eta"]
            and abs(final["momentum"] - fine["beta"]) <= cfg.rtol * fine["beta"]
        )
        with jax.enable_x64(True):
            local = local_check(task64, int(cfg.steps), final)
        runs[method] = {
            "endpoint": local,
            "trajectory": traj,
            "final": final,
            "nonfinite_steps": res.nonfinite_count,
            "within_rtol_of_fine_minimizer": bool(close),
            "gap_to_fine_minimum": local["value"] - fine["value"],
        }
    results = {
        "experiment": "fig1_momentum",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "smoothness": big_l,
        "stability_boundary_eta0": 2 * (1 + cfg.beta0) / big_l,
        "grid_minimizer": {k: v for k, v in best.items() if k not in ("etas", "betas", "values")},
        "fine_minimizer": fine,
        "ripples": {**ripple, **local_minima_2d(best["values"])},
        "runs": runs,
    }
    results["figures"] = [plot(results, best, out / "fig1_momentum.png")]
    common.write_json(out / "results.json", results)
    return common.jsonable(results)


def plot(results: dict, best: dict, path: Path) -> str:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.4))
    e, b, v = best["etas"], best["betas"], best["values"]
    levels = np.quantile(v[np.isfinite(v)], np.linspace(0.0, 0.7, 24))
    cs = ax.contourf(e, b, np.clip(v, None, levels[-1]), levels=levels, cmap="viridis")
    fig.colorbar(cs, label=r"$(1/t)\,\log f(w_t)$ (float64 grid)")
    styles = {"stable": "w-", "autodiff": "r--", "forward": "m:"}
    for method, r in results["runs"].items():
        t = r["trajectory"]
        ax.plot(
            t["learning_rate"],
            t["momentum"],
            styles.get(method, "w-"),
            lw=1.6,
            label=f"{method} ({r['nonfinite_steps']} non-finite)",
        )
    fine = results["fine_minimizer"]
    ax.plot(fine["eta"], fine["beta"], "k*", ms=12, label="minimizer (fine grid)")
    cfg = results["config"]
    ax.plot(cfg["eta0"], cfg["beta0"], "ro", ms=6, label="start")
    big_l = results["smoothness"]
    bb = np.linspace(0, 0.999, 50)
    ax.plot(2 * (1 + bb) / big_l, bb, "k-", lw=0.8, label=r"boundary $2(1+\beta)/L$")
    ax.set(
        xlabel=r"$\eta$",
        ylabel=r"$\beta$",
        xlim=(e[0], e[-1]),
        ylim=(0, 1),
        title=f"heavy ball, t = {results['config']['steps']}, {results['config']['dtype']}",
    )
    ax.legend(fontsize=7, loc="lower right")
    return common.save_figure(fig, path)


def summarize(results: dict) -> str:
    g, fine, rip = results["grid_minimizer"], results["fine_minimizer"], results["ripples"]
    lines = [
        f"fig1_momentum: heavy ball on fig1's quadratic, t = {results['config']['steps']}, "
        f"L = {results['smoothness']:.4g}, start (eta, beta) = ({results['config']['eta0']}, "
        f"{results['config']['beta0']}) past the boundary eta = "
        f"{results['stability_boundary_eta0']:.4g}",
        f"  coarse grid minimizer (float64): eta = {g['eta']:.5g}, beta = {g['beta']:.4g}, "
        f"log-loss {g['value']:.5g}",
        f"  fine grid minimizer: eta = {fine['eta']:.5g}, beta = {fine['beta']:.4g}, log-loss "
        f"{fine['value']:.5g} (a local minimum at +-1%: {fine['endpoint']['is_local_minimum']})",
        f"  the landscape ripples: {rip['local_minima']} local minima along eta at beta = "
        f"{rip['beta']:.4g} ({rip['points']} points); on the coarse grid "
        f"{rip['local_minima_2d']} local minima in (eta, beta), {rip['within_0.1_of_best']} "
        "of them within 0.1 of its best value",
        f"  {'method':<9} {'final eta':>10} {'final beta':>10} {'non-finite':>11} "
        f"{'log-loss':>9} {'gap':>7}  within 1% of the minimizer / a local minimum (+-1% grid)",
    ]
    for m, r in results["runs"].items():
        end = r["endpoint"]
        lines.append(
            f"  {m:<9} {r['final']['learning_rate']:>10.5g} {r['final']['momentum']:>10.4g} "
            f"{r['nonfinite_steps']:>11d} {end['value']:>9.4f} {r['gap_to_fine_minimum']:>7.3f}  "
            f"{r['within_rtol_of_fine_minimizer']} / {end['is_local_minimum']}"
        )
    return "\n".join(lines)
