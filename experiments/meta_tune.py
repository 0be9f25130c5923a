"""Meta-training settings of the MNIST learned optimizer chosen by measurement
(``configs/meta_tune.py``; Figures 4-5 of Wang et al. 2021).

For every combination of meta learning rate, PES perturbation scale ``es_sigma`` and
meta-batch in the grid, the learned optimizer is meta-trained from the setting's warm
start on its meta-training family and scored on held-out draws
(:func:`~experiments.mnist_lopt.meta_train_selected`). Curves are compared at
equal compute (inner steps run, ``meta_steps * meta_batch * 2 * es_pairs * segment``).
The best combination (lowest held-out meta-loss) is continued to ``long_steps``, and
:func:`flattened` says whether its curve has flattened by then.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import meta_tune as meta_tune_config
from experiments import common
from experiments import mnist_lopt as mnist
from l2l_jax.data import mnist as mnist_data

PAGE = "experiments/fig4.md"  # the documentation page (experiments/registry.py)
GROUP = "mnist"
ORDER = 90


def combinations(cfg: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """Every ``{"meta_lr", "es_sigma", "meta_batch"}`` of the grid."""
    grid = itertools.product(cfg.meta_lrs, cfg.es_sigmas, cfg.meta_batches)
    return [{"meta_lr": float(a), "es_sigma": float(s), "meta_batch": int(b)} for a, s, b in grid]


def _name(combo: dict[str, Any]) -> str:
    return f"lr{combo['meta_lr']:g}_sigma{combo['es_sigma']:g}_B{combo['meta_batch']}"


def inner_steps_per_meta_step(setting: ml_collections.ConfigDict, meta_batch: int) -> int:
    """Inner steps one PES meta-step runs: ``B`` runs, ``es_pairs`` antithetic pairs of
    two, ``K`` steps each."""
    return int(meta_batch) * 2 * int(setting.es_pairs) * int(setting.segment)


def flattened(scores: list[dict[str, Any]], window: int, rtol: float) -> dict[str, Any]:
    """Whether the best held-out score of the last ``window`` meta-steps improves on the
    best before them by less than ``rtol`` (relative); ``None`` if the curve is shorter
    than ``window`` plus one earlier score or any score is not finite."""
    last = scores[-1]["step"]
    before = [s["score"] for s in scores if s["step"] <= last - window]
    recent = [s["score"] for s in scores if s["step"] > last - window]
    if not before or not recent or not np.all(np.isfinite(before + recent)):
        return {"flat": None, "improvement": None, "window": window, "rtol": rtol}
    b, r = min(before), min(recent)
    improvement = (b - r) / abs(b)
    return {
        "flat": bool(improvement < rtol),
        "improvement": improvement,
        "window": window,
        "rtol": rtol,
    }


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict[str, Any]:
    """Meta-train every combination, continue the best, write ``results.json``,
    ``table.md`` and ``meta_tune.png``. Resumes from the checkpoints in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.objective not in mnist.OBJECTIVES:
        raise ValueError(f"objective must be one of {mnist.OBJECTIVES}, got {cfg.objective!r}.")
    base = meta_tune_config.setting_config(cfg)
    base.select_every, base.select_tasks = int(cfg.select_every), int(cfg.select_tasks)
    base.seeds = (int(cfg.seed),)
    mnist.check_config(base)
    start = time.perf_counter()
    data = mnist_data.load(base.source)
    k_pool, k_lopt, _, _, k_meta, _ = jax.random.split(jax.random.key(int(cfg.seed)), 6)
    family = mnist.build_families(base, data, k_pool)[cfg.objective]
    lopt = mnist.learned_optimizer(base)
    start_params = mnist.initial_meta_params(base, lopt, k_lopt)
    key = jax.random.fold_in(k_meta, mnist.OBJECTIVES.index(cfg.objective))

    def train(combo: dict[str, Any], steps: int) -> dict[str, Any]:
        setting = base.copy_and_resolve_references()
        setting.update(combo)
        setting.meta_steps = int(steps)
        t0 = time.perf_counter()
        _, record = mnist.meta_train_selected(
            setting, family, cfg.objective, lopt, start_params, key, out / _name(combo), progress
        )
        per_step = inner_steps_per_meta_step(setting, combo["meta_batch"])
        return {
            **combo,
            "meta_steps": int(steps),
            "heldout": record["heldout"],
            "best_score": min(s["score"] for s in record["heldout"]),
            "chosen_step": record["chosen_step"],
            "inner_steps": [s["step"] * per_step for s in record["heldout"]],
            "meta_loss": record["meta_loss"],
            "meta_step_seconds_total": record["meta_step_seconds_total"],
            "seconds_this_call": time.perf_counter() - t0,
        }

    grid = [train(c, cfg.meta_steps) for c in combinations(cfg)]
    best = min(range(len(grid)), key=lambda i: grid[i]["best_score"])
    chosen = {k: grid[best][k] for k in ("meta_lr", "es_sigma", "meta_batch")}
    long = None
    if int(cfg.long_steps) > int(cfg.meta_steps):
        long = train(chosen, cfg.long_steps)
        long["flattened"] = flattened(long["heldout"], int(cfg.flat_window), float(cfg.flat_rtol))
    results = {
        "experiment": "meta_tune",
        "config": cfg.to_dict(),
        "setting_config": base.to_dict(),
        "environment": common.environment(),
        "grid": grid,
        "chosen": chosen,
        "long": long,
        "start_score": grid[0]["heldout"][0]["score"],
        "timings": {"total_s": time.perf_counter() - start},
    }
    results["table"] = table(results)
    results["figures"] = [figure(results, out / "meta_tune.png")]
    return common.save_results(out, results)


def table(results: dict[str, Any]) -> str:
    """Markdown: each combination's held-out meta-loss at the end and at its best."""
    rows = [
        "| meta lr | PES sigma | meta-batch | held-out meta-loss at the end | best (step) "
        "| s/meta-step |",
        "|---|---|---|---|---|---|",
    ]
    for g in results["grid"] + ([results["long"]] if results["long"] else []):
        end = g["heldout"][-1]["score"]
        rows.append(
            f"| {g['meta_lr']:g} | {g['es_sigma']:g} | {g['meta_batch']} | {end:.3f} "
            f"(step {g['meta_steps']}) | {g['best_score']:.3f} ({g['chosen_step']}) | "
            f"{g['meta_step_seconds_total'] / max(1, g['meta_steps']):.2f} |"
        )
    rows.append("")
    rows.append(f"Held-out meta-loss of the warm start: {results['start_score']:.3f}.")
    if results["long"]:
        f = results["long"]["flattened"]
        verdict = {True: "flattened", False: "still falling", None: "undecided"}[f["flat"]]
        imp = "n/a" if f["improvement"] is None else f"{100 * f['improvement']:.1f}%"
        rows.append(
            f"Chosen combination continued to {results['long']['meta_steps']} meta-steps: "
            f"{verdict} (last {f['window']} steps improved the best score by {imp}; "
            f"threshold {100 * f['rtol']:.0f}%)."
        )
    return "\n".join(rows)


def figure(results: dict[str, Any], path: Path) -> str:
    """Held-out meta-loss against inner steps run, one line per combination."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    curves = results["grid"] + ([results["long"]] if results["long"] else [])
    for i, g in enumerate(curves):
        label = f"lr {g['meta_lr']:g}, sigma {g['es_sigma']:g}, B {g['meta_batch']}"
        style = "-" if i < len(results["grid"]) else "k--"
        ax.plot(
            g["inner_steps"],
            [s["score"] for s in g["heldout"]],
            style,
            marker=".",
            label=label + (" (continued)" if i >= len(results["grid"]) else ""),
        )
    ax.set_xlabel("inner steps run by meta-training")
    ax.set_ylabel(f"held-out meta-loss ({results['config']['objective'].upper()})")
    ax.set_title(f"{results['config']['setting']}: meta-training settings")
    ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def summarize(results: dict[str, Any]) -> str:
    return results["table"]
