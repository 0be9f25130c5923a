"""Figure 3 of Wang et al. (2021): with more samples the TbT-TbV gap closes."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from l2l_jax.experiments import common, generalization


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    ns = [round(r * cfg.d) for r in cfg.n_over_d]
    settings = generalization.sweep_settings(
        cfg,
        ns,
        "fig3 n",
        progress,
        lambda key, n: generalization.setting(cfg, key, sigma=cfg.sigma, n=n),
    )
    gap = [s["test_rmse_tbt"] - s["test_rmse_tbv"] for s in settings]
    checks = {
        "test_rmse_gap_per_n": gap,
        "gap_at_largest_n_below_gap_at_smallest_n": abs(gap[-1]) < abs(gap[0]),
    }
    fig = generalization.rmse_panels(common.pyplot(), settings, "n", "samples n", log_x=True)
    return generalization.finish("fig3", cfg, out, settings, "n", checks, fig)


summarize = generalization.summary
