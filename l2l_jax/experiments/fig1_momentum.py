"""Figure 1 for heavy-ball momentum (``configs/fig1_momentum.py``): (eta, beta) over
meta-steps with each meta-gradient method, against the minimizer of a float64 grid."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from l2l_jax import inner, meta, tasks
from l2l_jax.experiments import common


def log_loss(task64, steps: int):
    """Heavy ball's stable log-loss ``F({"learning_rate", "momentum"})`` on ``task64``."""
    return meta.meta_objective(task64, inner.momentum(), "log_loss", steps=steps, grad="stable")


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


def local_check(task64, steps: int, point: dict, n: int = 41, spread: float = 0.05) -> dict:
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
    big_l = float(common.spectrum64(task)[0][-1])
    init = {
        "learning_rate": jnp.asarray(cfg.eta0, dtype),
        "momentum": jnp.asarray(cfg.beta0, dtype),
    }
    runs = {}
    for method in cfg.methods:
        f = meta.meta_objective(task, inner.momentum(), "log_loss", steps=cfg.steps, grad=method)
        label = f"fig1_momentum {method}" if progress else False
        schedule = optax.cosine_decay_schedule(cfg.meta_lr, cfg.meta_steps)
        res = meta.train(f, init, optax.adam(schedule), cfg.meta_steps, progress=label)
        traj = {k: np.asarray(v, np.float64) for k, v in res.trajectory.items()}
        final = {k: float(v[-1]) for k, v in traj.items()}
        close = (
            abs(final["learning_rate"] - best["eta"]) <= cfg.rtol * best["eta"]
            and abs(final["momentum"] - best["beta"]) <= cfg.rtol * best["beta"]
        )
        with jax.enable_x64(True):
            local = local_check(task64, int(cfg.steps), final)
        runs[method] = {
            "endpoint": local,
            "trajectory": traj,
            "final": final,
            "nonfinite_steps": res.nonfinite_count,
            "within_rtol_of_grid_minimizer": bool(close),
        }
    results = {
        "experiment": "fig1_momentum",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "smoothness": big_l,
        "stability_boundary_eta0": 2 * (1 + cfg.beta0) / big_l,
        "grid_minimizer": {k: v for k, v in best.items() if k not in ("etas", "betas", "values")},
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
    ax.plot(best["eta"], best["beta"], "k*", ms=12, label="grid minimizer")
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
    g = results["grid_minimizer"]
    lines = [
        f"fig1_momentum: heavy ball on fig1's quadratic, t = {results['config']['steps']}, "
        f"L = {results['smoothness']:.4g}, start (eta, beta) = ({results['config']['eta0']}, "
        f"{results['config']['beta0']}) past the boundary eta = "
        f"{results['stability_boundary_eta0']:.4g}",
        f"  grid minimizer (float64): eta = {g['eta']:.5g}, beta = {g['beta']:.4g}, "
        f"log-loss {g['value']:.5g}",
        f"  {'method':<9} {'final eta':>10} {'final beta':>10} {'non-finite':>11} "
        f"{'log-loss':>9}  within 1% of the grid minimizer / a local minimum (+-5% grid)",
    ]
    for m, r in results["runs"].items():
        end = r["endpoint"]
        lines.append(
            f"  {m:<9} {r['final']['learning_rate']:>10.5g} {r['final']['momentum']:>10.4g} "
            f"{r['nonfinite_steps']:>11d} {end['value']:>9.4f}  "
            f"{r['within_rtol_of_grid_minimizer']} / {end['is_local_minimum']}"
        )
    return "\n".join(lines)
