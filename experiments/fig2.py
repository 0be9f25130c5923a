"""Figure 2 of Wang et al. (2021): TbT overfits noisy few-sample tasks, TbV does not."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from experiments import common, generalization

PAGE = "experiments/fig2.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 50


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    settings = generalization.sweep_settings(
        cfg,
        cfg.sigmas,
        "fig2 sigma",
        progress,
        lambda key, sigma: generalization.setting(cfg, key, sigma=sigma, n=cfg.n),
    )
    noisy = [s for s in settings if s["sigma"] >= 1]
    gap = [s["test_rmse_tbt"] - s["test_rmse_tbv"] for s in noisy]
    checks = {
        "tbv_test_below_tbt_for_every_sigma_ge_1": all(g > 0 for g in gap),
        "gap_grows_with_sigma": bool(np.all(np.diff(gap) > 0)),
        "test_rmse_gap_for_sigma_ge_1": gap,
    }
    fig = generalization.rmse_panels(common.pyplot(), settings, "sigma", "noise level σ")
    return generalization.finish("fig2", cfg, out, settings, "sigma", checks, fig)


summarize = generalization.summary
