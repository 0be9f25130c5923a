"""Figure 1 of Wang et al. (2021): eta over meta-steps, stable vs backpropagation.

GD on a fixed quadratic for ``t`` steps; meta-GD (Theorem 4) on ``(1/t) log f(w_t)`` with
each meta-gradient method. Where a method's meta-gradient is non-finite the step is
skipped (``metagrad.minimize``), so a method that never gets a finite gradient keeps ``eta0``.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common
from l2l_jax import inner, metagrad, objectives
from l2l_jax.closed_forms import reference

PAGE = "experiments/fig1.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 10


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    """Meta-train ``eta`` with every method of ``cfg.methods``; write results and figure."""
    dtype = common.dtype_of(cfg.dtype)
    task = common.quadratic(cfg.task, dtype)
    lam, coef = common.spectrum64(task)
    L = float(lam[-1])
    c = common.meta_step_size(cfg, L)
    target = common.eta_star(task, cfg.steps)
    trajectories, nonfinite = {}, {}
    for method in cfg.methods:
        F = metagrad.meta_objective(
            task, inner.gd(), objectives.log_loss(), steps=cfg.steps, grad=method
        )
        label = f"fig1 {method}" if progress else False
        res = metagrad.minimize(
            F,
            jnp.asarray(cfg.eta0, dtype),
            metagrad.meta_gd(c),
            cfg.meta_steps,
            progress=label,
            on_nonfinite="ignore",  # autodiff and forward never get a finite step here
        )
        trajectories[method] = np.asarray(res.trajectory, np.float64)
        nonfinite[method] = res.nonfinite_count
    results = {
        "experiment": "fig1",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "eigenvalues": lam,
        "coefficients": coef,
        "smoothness": L,
        "strong_convexity": float(lam[0]),
        "c": c,
        "eta_star": target,
        "eta_star_mpmath": reference.eta_star(lam, coef, cfg.steps),
        "trajectories": trajectories,
        "nonfinite_steps": nonfinite,
        "final_eta": {m: float(t[-1]) for m, t in trajectories.items()},
        "converged_at": {
            m: common.converged_at(t, target, cfg.rtol) for m, t in trajectories.items()
        },
    }
    results["figures"] = [plot(results, Path(out) / "fig1.png")]
    common.write_json(Path(out) / "results.json", results)
    return common.jsonable(results)


def plot(results: dict, path: Path) -> str:
    """eta against meta-steps per method, and the relative distance to eta* (log scale)."""
    plt = common.pyplot()
    cfg, target = results["config"], results["eta_star"]
    fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = {"stable": "-", "autodiff": "--", "forward": ":"}
    for method, traj in results["trajectories"].items():
        traj = np.asarray(traj, np.float64)
        n_bad = results["nonfinite_steps"][method]
        label = f"{method} ({n_bad} non-finite)"
        ax.plot(traj, styles.get(method, "-"), lw=1.8, label=label)
        ax_err.semilogy(np.abs(traj - target) / target, styles.get(method, "-"), label=label)
    ax.axhline(target, color="k", lw=0.8)
    ax.axhspan(target * (1 - cfg["rtol"]), target * (1 + cfg["rtol"]), color="k", alpha=0.1)
    ax.set(
        xlabel="meta-step k",
        ylabel=r"$\eta_k$",
        title=f"t = {cfg['steps']}, $\\eta_0$ = {cfg['eta0']}, {cfg['dtype']}",
    )
    ax.annotate(r"$\eta^*$", (len(traj) - 1, target), textcoords="offset points", xytext=(-14, 4))
    ax_err.axhline(cfg["rtol"], color="k", lw=0.8, ls="--")
    ax_err.set(
        xlabel="meta-step k",
        ylabel=r"$|\eta_k - \eta^*| / \eta^*$",
        title="distance to the optimum (dashed: 1%)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, path)


def summarize(results: dict) -> str:
    """One screen: the task, eta*, and per method the outcome."""
    cfg = results["config"]
    lines = [
        f"fig1: GD on a {cfg['task']['dim']}-d quadratic, t = {cfg['steps']}, "
        f"eta0 = {cfg['eta0']}, {cfg['dtype']}, {cfg['meta_steps']} meta-steps",
        f"  L = {results['smoothness']:.4g}, alpha = {results['strong_convexity']:.4g}, "
        f"2/L = {2 / results['smoothness']:.4g}, c = {results['c']:.3g}",
        f"  eta* = {results['eta_star']:.6g} (mpmath: {results['eta_star_mpmath']:.6g})",
        f"  {'method':<9} {'final eta':>11} {'rel. err':>9} {'non-finite':>11}  within 1% from",
    ]
    for m, final in results["final_eta"].items():
        k = results["converged_at"][m]
        err = abs(final - results["eta_star"]) / results["eta_star"] if final else float("nan")
        lines.append(
            f"  {m:<9} {final if final is not None else float('nan'):>11.6g} {err:>9.2e} "
            f"{results['nonfinite_steps'][m]:>11d}  {'never' if k is None else f'step {k}'}"
        )
    return "\n".join(lines)
