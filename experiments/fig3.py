"""Figure 3 of Wang et al. (2021): with more samples the TbT-TbV gap closes."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from experiments import common, generalization

PAGE = "experiments/fig3.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 60


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    settings = generalization.sample_size_sweep(cfg, "fig3 n", progress)
    gap = [s["test_rmse_tbt"] - s["test_rmse_tbv"] for s in settings]
    checks = {
        "test_rmse_gap_per_n": gap,
        "gap_at_largest_n_below_gap_at_smallest_n": abs(gap[-1]) < abs(gap[0]),
    }
    fig = generalization.rmse_panels(common.pyplot(), settings, "n", "samples n", log_x=True)
    return generalization.finish("fig3", cfg, out, settings, "n", checks, fig)


summarize = generalization.summary
