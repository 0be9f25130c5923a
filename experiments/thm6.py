"""Theorem 6 of Wang et al. (2021): for n >> d, TbT reaches test error ~ d sigma^2 / n."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np

from experiments import common, generalization

PAGE = "experiments/thm6.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 80


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    settings = generalization.sample_size_sweep(cfg, "thm6 n", progress)
    optimal = np.array([cfg.d * cfg.sigma**2 / s["n"] for s in settings])
    err = np.array([s["test_error_tbt"] for s in settings])
    for s, opt in zip(settings, optimal, strict=True):
        s["optimal_test_error"] = float(opt)
    checks = {
        "test_error_tbt_over_d_sigma2_over_n": err / optimal,
        "within_1.2x_at_largest_n": bool(err[-1] / optimal[-1] <= 1.2),
    }
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ns_arr = np.array([s["n"] for s in settings], float)
    ax.loglog(ns_arr, err, "o-", color="C3", label="TbT: E||w_t − w*||²")
    ax.loglog(ns_arr, optimal, "k:", label="d σ² / n")
    ax.set(xlabel="samples n", ylabel="test error", title=f"Theorem 6 (d = {cfg.d})")
    generalization.log_ticks(ax, ns_arr)
    ax.legend(fontsize=8)
    return generalization.finish("thm6", cfg, out, settings, "n", checks, fig)


summarize = generalization.summary
