"""Figures and summary of the stability experiment (:mod:`experiments.stability`):
stability regions, eigenvalues along the learned optimizer's trajectory, meta-training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments import common
from l2l_jax.analysis import stability

LABELS = {"sgd": "SGD", "adam": "Adam"}  # tuned baselines


# -- figures -------------------------------------------------------------------------------
def _region(ax, grid: stability.StabilityGrid, xlabel: str, ylabel: str, bound=None, title=""):
    """``log10 rho`` over the grid (red: unstable), the ``rho = 1`` contour, a boundary."""
    log_rho = np.log10(np.maximum(grid.radius, 1e-12))
    mesh = ax.pcolormesh(
        grid.curvatures,
        grid.step_sizes,
        np.clip(log_rho, -1, 1),
        cmap="RdBu_r",
        vmin=-1,
        vmax=1,
        shading="nearest",
    )
    ax.contour(
        grid.curvatures,
        grid.step_sizes,
        grid.stable.astype(float),
        levels=[0.5],
        colors="k",
        linewidths=1.2,
    )
    if bound is not None:
        ax.plot(
            grid.curvatures,
            bound / grid.curvatures,
            "y--",
            lw=2,
            label=f"analytic: $\\eta\\lambda = {bound:g}$",
        )
        ax.legend(loc="lower left", fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_ylim(grid.step_sizes[0], grid.step_sizes[-1])
    return mesh


def plot_classic(classic: dict, path: Path) -> str:
    """GD and heavy-ball stability regions with their analytic boundaries."""
    plt = common.pyplot()
    fig, axes = plt.subplots(
        1, len(classic), figsize=(4.2 * len(classic), 3.8), squeeze=False, sharey=True
    )
    for i, (ax, (name, (grid, bound))) in enumerate(zip(axes[0], classic.items(), strict=True)):
        title = "GD" if name == "gd" else f"heavy ball, $\\beta$ = {name.split('_')[1]}"
        ylabel = r"step size $\eta$" if i == 0 else ""
        mesh = _region(ax, grid, r"curvature $\lambda$", ylabel, bound, title)
    fig.colorbar(mesh, ax=axes[0].tolist(), label=r"$\log_{10}\rho(J)$ (black: $\rho = 1$)")
    return common.save_figure(fig, path)


def plot_trajectory(results: dict, path: Path) -> str:
    """Eigenvalues in the complex plane at the analysis points; rho and loss over the run."""
    plt = common.pyplot()
    tr = results["trajectory"]
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(10, 4.2))
    theta = np.linspace(0, 2 * np.pi, 400)
    ax.plot(np.cos(theta), np.sin(theta), "k-", lw=0.8, label="unit circle")
    colors = plt.cm.viridis(np.linspace(0, 1, len(tr["points"])))
    for i, t in enumerate(tr["points"]):
        ax.scatter(
            tr["eigenvalues_real"][i],
            tr["eigenvalues_imag"][i],
            s=9,
            color=colors[i],
            label=f"t = {t} ($\\rho$ = {tr['radius'][i]:.3g})",
        )
    ax.set(xlabel="Re", ylabel="Im", title="eigenvalues of the linearized learned optimizer")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7, loc="upper left")
    ax_r.plot(tr["points"], tr["radius"], "o-", label=r"spectral radius $\rho(J_t)$")
    ax_r.axhline(1, color="k", lw=0.8)
    ax_r.set(xlabel="inner step t", ylabel=r"$\rho$", xscale="symlog")
    ax_l = ax_r.twinx()
    ax_l.semilogy(np.arange(len(tr["losses"])), tr["losses"], color="C1", lw=1, label="loss")
    ax_l.set_ylabel("NQM loss f(w_t)", color="C1")
    ax_r.legend(loc="upper right", fontsize=8)
    ax_r.set_title("along a run on the meta-training NQM")
    fig.tight_layout()
    return common.save_figure(fig, path)


def plot_where_stable(results: dict, grid: stability.StabilityGrid, path: Path) -> str:
    """rho against the curvature scale (with the run's loss ratio) and the s x c grid."""
    plt = common.pyplot()
    sw = results["curvature_sweep"]
    fig, (ax, ax_g) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    ax.loglog(sw["scales"], sw["radius_initial"], "o-", label=r"$\rho$ at $t = 0$")
    ax.loglog(sw["scales"], sw["radius_max"], "s--", label=r"max $\rho$ over the run's points")
    ax.axhline(1, color="k", lw=0.8)
    ax.set(xlabel="curvature scale c (NQM with c h)", ylabel=r"$\rho(J)$")
    ax2 = ax.twinx()
    ax2.loglog(sw["scales"], sw["loss_ratio"], "^:", color="C2", label="final / initial loss")
    ax2.set_ylabel("final / initial loss", color="C2")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="center left")
    ax.set_title("trained learned optimizer on scaled NQMs")
    mesh = _region(
        ax_g,
        grid,
        "curvature scale c",
        "step multiplier s",
        title=r"$\rho$ at $t = 0$ (black: $\rho = 1$; trained: s = 1)",
    )
    ax_g.axhline(1, color="y", lw=1.5, ls="--")
    fig.colorbar(mesh, ax=ax_g, label=r"$\log_{10}\rho(J)$")
    fig.tight_layout()
    return common.save_figure(fig, path)


def plot_meta_training(results: dict, path: Path) -> str:
    """Meta-loss over meta-steps (running mean) against tuned SGD's mean horizon loss."""
    plt = common.pyplot()
    loss = np.asarray(results["meta_training"]["meta_loss"], np.float64)
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.semilogy(np.arange(len(loss)) + 1, loss, color="C0", alpha=0.25, lw=0.6)
    ax.semilogy(
        np.arange(len(smooth)) + window, smooth, color="C0", label="meta-loss (running mean)"
    )
    b = results["baseline"]
    for i, name in enumerate(n for n in LABELS if n in b):
        label = f"{LABELS[name]}, best step size {b[name]['best_lr']:.3g}"
        ax.axhline(b[name]["best"], color=f"C{i + 1}", ls="--", label=label)
    ax.axhline(b["lopt"], color="C0", ls=":", label="learned optimizer (trained)")
    ax.set(xlabel="meta-step", ylabel="mean NQM loss over a segment / horizon")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return common.save_figure(fig, path)


# -- summary -------------------------------------------------------------------------------
def summarize(results: dict) -> str:
    """The key numbers on one screen."""
    cfg = results["config"]
    n, t = cfg["nqm"], cfg["train"]
    mt, b = results["meta_training"], results["baseline"]
    loss = np.asarray(mt["meta_loss"], np.float64)
    k = max(1, len(loss) // 10)
    lines = [
        f"stability: NQM d = {n['dim']}, h_i = {n['scale']:g} i^-{n['power']:g}, noise Var = "
        f"{n['noise_scale']:g} h / {cfg['batch_size']}; MLPLOpt meta-trained {t['meta_steps']} "
        f"steps ({t['estimator']}, horizon {t['horizon']}, segment {t['segment']}) in "
        f"{mt['time_s']:.0f} s, {mt['nonfinite']} non-finite",
        f"  meta-loss: first {k} steps {np.mean(loss[:k]):.4g} -> last {k} "
        f"{np.mean(loss[-k:]):.4g}",
        f"  mean loss over the horizon: learned {b['lopt']:.4g} (untrained {b['untrained']:.4g}); "
        "at the best step size: "
        + ", ".join(
            f"{LABELS[n]} ({b[n]['best_lr']:.3g}) {b[n]['best']:.4g}" for n in LABELS if n in b
        ),
        "classic regions (largest stable grid step / analytic boundary; off-boundary cells "
        "disagreeing):",
    ]
    for name, c in results["classic"].items():
        lines.append(
            f"  {name:<13} eta lambda <= {c['bound']:g}: ratio in "
            f"[{c['max_stable_over_analytic_min']:.4f}, {c['max_stable_over_analytic_max']:.4f}] "
            f"(grid step x{c['grid_ratio']:.3f}); {c['cells_off_boundary_disagreeing']} of "
            f"{c['cells_off_boundary']}"
        )
    r0, al = results["radius_initial"], results["first_step_alignment"]
    tr = results["trajectory"]
    lines += [
        f"learned optimizer, J of size {tr['size']} (params + accumulators):",
        f"  rho at the initial point: trained {r0['trained']:.4g}, untrained {r0['untrained']:.4g}",
        f"  first step, mean cosine with -w_0: {al['minus_w']:.3f}, with -grad f(w_0): "
        f"{al['minus_grad']:.3f}",
        "  along a run, t: top eigenvalue (share of its eigenvector on the parameters)",
        "    "
        + ", ".join(
            f"{p}: {_complex(re, im)} ({sh:.0%})"
            for p, re, im, sh in zip(
                tr["points"],
                tr["top"]["real"],
                tr["top"]["imag"],
                tr["top"]["param_share"],
                strict=True,
            )
        ),
        "  curvature scale c:   rho(t=0)  max rho  stable pts  final/initial loss",
    ]
    sw = results["curvature_sweep"]
    for i, c in enumerate(sw["scales"]):
        lines.append(
            f"  {c:>10.3g}      {sw['radius_initial'][i]:>8.4g} {sw['radius_max'][i]:>8.4g}"
            f" {sw['stable_points'][i]:>6d}/{len(sw['points'])}   {_fmt(sw['loss_ratio'][i])}"
        )
    g = results["step_scale_grid"]
    lines.append("  largest stable step multiplier s at t = 0 (all smaller s stable), per c:")
    lines.append(
        "    "
        + ", ".join(
            f"c={c:.3g}: {_fmt(s)}"
            for c, s in zip(g["curvature_scales"], g["max_stable_step_scale"], strict=True)
        )
    )
    return "\n".join(lines)


def _complex(re: float, im: float) -> str:
    return f"{re:.3g}" if abs(im) < 1e-12 else f"{re:.3g}{im:+.3g}i"


def _fmt(x) -> str:
    return "none" if x is None or not np.isfinite(x) else f"{x:.3g}"
