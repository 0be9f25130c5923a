"""Theorem 5 of Wang et al. (2021): eta*_TbT = Theta(1) while eta*_TbV = Theta(1/t)."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from experiments import common, generalization

PAGE = "experiments/thm5.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 70


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    settings = generalization.sweep_settings(
        cfg,
        cfg.ts,
        "thm5 t",
        progress,
        lambda key, t: generalization.setting(cfg, key, sigma=cfg.sigma, n=cfg.n, t=t),
    )
    tbt = np.array([s["eta_star_tbt"] for s in settings])
    tbv_t = np.array([s["eta_star_tbv"] * s["t"] for s in settings])
    checks = {
        "eta_star_tbt": tbt,
        "eta_star_tbv_times_t": tbv_t,
        "eta_star_tbt_max_over_min": float(tbt.max() / tbt.min()),
        "eta_star_tbv_times_t_max_over_min": float(tbv_t.max() / tbv_t.min()),
        "eta_star_tbv_times_t_varies_less_than_2x": bool(tbv_t.max() / tbv_t.min() < 2),
        "any_eta_star_at_grid_edge": any(
            s[f"eta_star_{k}_at_grid_edge"] for s in settings for k in ("tbt", "tbv")
        ),
    }
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ts = np.array(cfg.ts, float)
    ax.loglog(ts, tbt, "o-", color="C3", label="η*_TbT")
    ax.loglog(ts, tbv_t / ts, "o-", color="C0", label="η*_TbV")
    ax.loglog(ts, tbv_t[0] / ts, ":", color="C0", label="∝ 1/t")
    ax.set(xlabel="unroll length t", ylabel="η*", title=f"Theorem 5 (σ = {cfg.sigma:g})")
    generalization.log_ticks(ax, ts)
    ax.legend(fontsize=8)
    return generalization.finish("thm5", cfg, out, settings, "t", checks, fig)


summarize = generalization.summary
