"""Measures, table, figures and summary of the out-of-distribution study
(:mod:`experiments.ood`): what a run's curves are scored by, and how they are shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import common
from l2l_jax.inner import tuning

LEARNED = ("plain", "nominal")
LABELS = {"adam": "Adam (tuned)", "plain": "MLPLOpt (plain)", "nominal": "NominalLOpt"}

# -- the measures ---------------------------------------------------------------------------------


def diverged(initial, final, factor: float) -> np.ndarray:
    """Per run: the final loss is non-finite, or larger than ``factor`` x the initial one.

    (A run that starts non-finite counts as diverged too.)
    """
    initial, final = np.asarray(initial, np.float64), np.asarray(final, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return ~np.isfinite(final) | ~np.isfinite(initial) | (final > factor * initial)


def mean_final(final) -> float:
    """Mean over runs of the final losses; ``inf`` if any of them is non-finite."""
    final = np.asarray(final, np.float64)
    return float(final.mean()) if np.all(np.isfinite(final)) else float("inf")


def relative_loss(final, adam_final) -> float:
    """Mean final loss over tuned Adam's mean final loss (same runs); ``inf`` when the
    optimizer has a non-finite run, ``nan`` when Adam's mean is not finite and positive."""
    ours, ref = mean_final(final), mean_final(adam_final)
    if not (np.isfinite(ref) and ref > 0):
        return float("nan")
    return ours / ref if np.isfinite(ours) else float("inf")


def rise_from_best(curves) -> float:
    """Mean over runs of ``final / min`` of each run's recorded losses: how far a run has
    climbed back from the best loss it reached (1: never worse than its best; ``inf`` if
    a run is non-finite). A descriptive measure of late instability, not the divergence
    rule; ``curves`` is ``(runs, n_points)``."""
    c = np.asarray(curves, np.float64)
    if not np.all(np.isfinite(c)):
        return float("inf")
    best = c.min(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = np.where(best > 0, c[:, -1] / best, np.where(c[:, -1] > best, np.inf, 1.0))
    return float(rise.mean())


def median_ratio(ratios: Sequence[float]) -> float:
    """Median over tasks of the loss ratios (``inf`` counts as the worst; ``nan`` skipped)."""
    values = np.asarray(ratios, np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def tune_adam(curves: np.ndarray, lrs: np.ndarray) -> dict[str, Any]:
    """The step size with the lowest mean final loss over the runs (non-finite: ``inf``;
    ties: the smallest step size); ``curves`` is ``(n_lrs, runs, n_points)``."""
    found = tuning.choice(lrs, [mean_final(c[:, -1]) for c in curves])
    return {k: found[k] for k in ("lrs", "score", "best_index", "best_lr")}


def task_result(curves: Mapping[str, np.ndarray], factor: float) -> dict[str, dict[str, Any]]:
    """Per optimizer on one task: divergence, final losses and the ratio to tuned Adam.

    ``curves``: ``{"adam": (runs, n_points), "plain": ..., "nominal": ...}``.
    """
    adam_final = curves["adam"][:, -1]
    out = {}
    for name, c in curves.items():
        runs_diverged = diverged(c[:, 0], c[:, -1], factor)
        out[name] = {
            "diverged": bool(runs_diverged.any()),
            "diverged_runs": int(runs_diverged.sum()),
            "initial_loss": mean_final(c[:, 0]),
            "final_loss": mean_final(c[:, -1]),
            "final_loss_runs": c[:, -1],
            "rise_from_best": rise_from_best(c),
            "ratio_to_adam": relative_loss(c[:, -1], adam_final),
        }
    return out


def summarize_optimizers(per_task: Mapping[str, Mapping], names: Sequence[str]) -> dict:
    """Per learned optimizer over the tasks ``names``: diverged count, median ratio."""
    out = {}
    for opt in LEARNED:
        ratios = [per_task[n][opt]["ratio_to_adam"] for n in names]
        out[opt] = {
            "tasks": len(names),
            "diverged": sum(per_task[n][opt]["diverged"] for n in names),
            "diverged_tasks": [n for n in names if per_task[n][opt]["diverged"]],
            "median_ratio": median_ratio(ratios),
            "better_than_adam": sum(bool(r < 1) for r in ratios),
            "median_rise_from_best": median_ratio(
                [per_task[n][opt]["rise_from_best"] for n in names]
            ),
        }
    return out


def checks(ood: Mapping[str, Mapping]) -> dict[str, Any]:
    """The study's checks on the out-of-distribution tasks, with their numbers."""
    plain, nom = ood["plain"], ood["nominal"]
    return {
        "ood_tasks": plain["tasks"],
        "diverged_plain": plain["diverged"],
        "diverged_nominal": nom["diverged"],
        "nominal_diverges_on_fewer_tasks": bool(nom["diverged"] < plain["diverged"]),
        "median_ratio_plain": plain["median_ratio"],
        "median_ratio_nominal": nom["median_ratio"],
        "nominal_median_ratio_lower": bool(nom["median_ratio"] < plain["median_ratio"]),
    }


# -- the experiment -------------------------------------------------------------------------------


# -- table, figures, summary ---------------------------------------------------------------------


def _ratio_cell(r: Mapping[str, Any]) -> str:
    ratio = r["ratio_to_adam"]
    text = "inf" if ratio is None or not np.isfinite(ratio) else f"{ratio:.3g}"
    return f"**{text} (diverged)**" if r["diverged"] else text


def table(results: Mapping[str, Any]) -> str:
    """Markdown: per task Adam's step size and loss, each learned optimizer's ratio; then
    per optimizer the diverged count and median ratio (out of distribution and on the
    training tasks)."""
    rows = [
        "| task | setting | tuned Adam lr | Adam final loss | plain / Adam | nominal / Adam |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for n, r in results["per_task"].items():
        info = results["tasks"][n]
        tag = " (train)" if info["in_distribution"] else ""
        lr = results["adam_tuning"][n]["best_lr"]
        cells = [_ratio_cell(r[o]) for o in LEARNED]
        rows.append(
            f"| `{n}`{tag} | {info['description']} | {lr:.3g} | {r['adam']['final_loss']:.3g} "
            f"| {cells[0]} | {cells[1]} |"
        )
    rows += [
        "",
        "| optimizer | tasks | diverged | median loss / Adam | better than Adam "
        "| median final / best loss |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for group, label in (("ood", "out of distribution"), ("in_distribution", "training tasks")):
        for o, s in results["aggregate"].get(group, {}).items():
            rows.append(
                f"| {LABELS[o]} | {s['tasks']} {label} | {s['diverged']} "
                f"| {s['median_ratio']:.3g} | {s['better_than_adam']} "
                f"| {s['median_rise_from_best']:.3g} |"
            )
    return "\n".join(rows)


def figures(results: Mapping[str, Any], out: Path) -> list[str]:
    """``ood_ratios.png`` (per-task loss / tuned Adam, log scale, diverged marked),
    ``loss_curves.png`` (a few tasks), ``meta_training.png`` (meta-loss per chunk)."""
    plt = common.pyplot()
    names = list(results["per_task"])
    colors = {"plain": "tab:orange", "nominal": "tab:blue", "adam": "black"}
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(names)), 3.8))
    x = np.arange(len(names))
    finite = [
        results["per_task"][n][o]["ratio_to_adam"]
        for n in names
        for o in LEARNED
        if np.isfinite(results["per_task"][n][o]["ratio_to_adam"])
    ]
    top = max([*finite, 1.0]) * 3
    for i, o in enumerate(LEARNED):
        values = np.asarray([results["per_task"][n][o]["ratio_to_adam"] for n in names])
        shown = np.where(np.isfinite(values), values, top)
        bars = ax.bar(x + (i - 0.5) * 0.4, shown, 0.4, color=colors[o], label=LABELS[o])
        for bar, n in zip(bars, names, strict=True):
            if results["per_task"][n][o]["diverged"]:
                bar.set_hatch("//")
                bar.set_edgecolor("red")
    ax.axhline(1.0, color="black", lw=0.8, ls="--", label="tuned Adam")
    ax.set_yscale("log")
    ax.set_xticks(x)
    labels = [n + (" (train)" if results["tasks"][n]["in_distribution"] else "") for n in names]
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize="small")
    ax.set_ylabel("final loss / tuned Adam's")
    factor = results["config"]["eval"]["divergence_factor"]
    ax.set_title(
        f"hatched red: diverged (final loss non-finite or > {factor:g}x initial)", fontsize=9
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    files = [common.save_figure(fig, out / "ood_ratios.png")]

    shown = list(results["config"]["curve_tasks"])
    if shown:
        fig, axes = plt.subplots(1, len(shown), figsize=(3.4 * len(shown), 3.0), squeeze=False)
        for ax, n in zip(axes[0], shown, strict=True):
            c = results["curves"][n]
            for o in ("adam", *LEARNED):
                mean = np.mean(np.asarray(c[o], np.float64), axis=0)
                ax.plot(c["steps"], mean, color=colors[o], label=LABELS[o])
            ax.set_yscale("log")
            ax.set_title(n, fontsize=9)
            ax.set_xlabel("inner step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("loss (mean over runs)")
        axes[0][0].legend(fontsize="x-small")
        files.append(common.save_figure(fig, out / "loss_curves.png"))

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for o in LEARNED:
        offset = 0
        for j, chunk in enumerate(results["meta_training"][o]["chunks"]):
            loss = np.asarray(chunk["meta_loss"], np.float64)
            steps = offset + np.arange(1, len(loss) + 1)
            style = "-" if chunk["task"] == results["config"]["train_tasks"][0] else ":"
            ax.plot(steps, loss, style, color=colors[o], label=f"{LABELS[o]}" if j == 0 else None)
            offset += len(loss)
    ax.set_yscale("log")
    ax.set_xlabel("meta-step (solid: first training task, dotted: the others)")
    ax.set_ylabel("meta-loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    files.append(common.save_figure(fig, out / "meta_training.png"))
    return files


def summarize(results: Mapping[str, Any]) -> str:
    """The table, the check and the time, one screen."""
    budget = results["meta_training"]["budget_meta_steps"]
    lines = [
        f"ood: meta-trained on {', '.join(results['config']['train_tasks'])} "
        f"({budget['plain']} meta-steps plain, {budget['nominal']} nominal); "
        f"{len(results['per_task'])} tasks evaluated",
        results["table"],
        "",
        *(f"  {k}: {v}" for k, v in results["checks"].items()),
        f"  total: {results['timings']['total_s']:.0f} s",
    ]
    return "\n".join(lines)
