"""The tuning protocol of Figures 4-5 (``configs/meta_tune.py``): the learned optimizer's
start and meta learning rate, chosen for both objectives by one procedure on a seed and a
pool of digits held apart from every reported seed.

1. :func:`start_scales`: the warm start's training accuracy after ``horizon`` steps for
   every scale of the grid; the largest scale at most ``start_train_acc_max`` is chosen;
2. :func:`experiments.mnist_meta.meta_train_selected` for every objective and meta
   learning rate, from that start, by the setting's own protocol (until converged); per
   objective the lowest final held-out score among converged runs is chosen;
3. :func:`resolution_at`: the held-out score's own spread under tiny displacements of
   each chosen run's kept meta-parameters (what the convergence criterion can resolve).

Resumes from the checkpoints in ``out`` (one directory per objective and rate).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import meta_tune as meta_tune_config
from experiments import common
from experiments import mnist_lopt as mnist
from experiments import mnist_meta as meta
from l2l_jax import evaluation
from l2l_jax.data import mnist as mnist_data

PAGE = "experiments/fig4.md"  # the documentation page (experiments/registry.py)
GROUP = "mnist"
ORDER = 90


def start_scales(base, cfg, data, families, lopt, k_lopt, k_eval) -> list[dict[str, Any]]:
    """Training and test accuracy (%) of the warm start at every ``descent_scales`` value,
    after ``horizon`` steps on ``runs`` draws of the tuning pool's family."""
    tasks = mnist.draws(families["eval"], k_eval, int(base.runs))
    optimizer = meta.lopt_inner(lopt, int(base.batch_size))
    rows = []
    for scale in cfg.descent_scales:
        setting = base.copy_and_resolve_references()
        setting.descent_scale = float(scale)
        params = mnist.initial_meta_params(setting, lopt, k_lopt)
        result = evaluation.evaluate(
            tasks,
            optimizer,
            params,
            int(base.horizon),
            key=k_eval,
            runs=int(base.runs),
            eval_every=int(base.horizon),
            test_images=data.test_images,
            test_labels=data.test_labels,
        )
        rows.append(
            {
                "descent_scale": float(scale),
                "train_acc": 100 * float(result.mean("train_acc")[-1]),
                "test_acc": 100 * float(result.mean("test_acc")[-1]),
            }
        )
    return rows


def choose_scale(rows: list[dict[str, Any]], bound: float) -> float | None:
    """The largest scale whose training accuracy is at most ``bound`` (%), or None."""
    ok = [r["descent_scale"] for r in rows if r["train_acc"] <= bound]
    return max(ok) if ok else None


def choose_rate(grid: list[dict[str, Any]], objective: str) -> dict[str, Any]:
    """The objective's rate with the lowest final held-out score among its converged runs
    (all its runs if none converged, flagged ``converged: False``)."""
    runs = [g for g in grid if g["objective"] == objective]
    converged = [g for g in runs if g["convergence"]["converged"]]
    pool = converged or runs
    best = min(pool, key=lambda g: g["final_score"])
    return {
        "meta_lr": best["meta_lr"],
        "final_score": best["final_score"],
        "converged": bool(converged),
    }


def resolution_at(cfg, tuning, families, objective, lopt, k_meta, meta_params) -> dict[str, Any]:
    """:func:`experiments.mnist_meta.score_resolution` of the objective's held-out score
    (the draws its meta-training scored on) at ``meta_params``, its kept meta-parameters at
    the chosen rate: which movements the convergence criterion can resolve."""
    key = jax.random.fold_in(k_meta, mnist.OBJECTIVES.index(objective))
    score = meta.heldout_scorer(tuning, families[objective], objective, lopt, key, mnist.draws)
    k_noise = jax.random.fold_in(key, 7)
    eps, copies = float(cfg.resolution_eps), int(cfg.resolution_copies)
    return meta.score_resolution(score, meta_params, k_noise, eps, copies)


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict[str, Any]:
    """Choose the start's scale, then meta-train every objective at every rate; write
    ``results.json``, ``table.md`` and ``meta_tune.png``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for objective in cfg.objectives:
        if objective not in mnist.OBJECTIVES:
            raise ValueError(f"objectives must be among {mnist.OBJECTIVES}, got {objective!r}.")
    base = meta_tune_config.setting_config(cfg)
    mnist.check_config(base)
    start = time.perf_counter()
    data = mnist_data.load(base.source)
    seed = int(base.tuning_seed)
    k_pool, k_lopt, _, k_eval, k_meta, _ = jax.random.split(jax.random.key(seed), 6)
    tuning = base.copy_and_resolve_references()
    tuning.disjoint_eval = False  # the tuning pool is small: held-out draws come from it too
    rows = mnist.tuning_rows(base, data)
    families = mnist.build_families(tuning, data, k_pool, rows=rows)
    lopt = mnist.learned_optimizer(base)

    scales = start_scales(base, cfg, data, families, lopt, k_lopt, k_eval)
    scale = choose_scale(scales, float(base.start_train_acc_max))
    if scale is None:
        raise ValueError(
            f"no descent_scales value gives a start with training accuracy <= "
            f"{base.start_train_acc_max}%: {scales}; add smaller scales."
        )
    tuning.descent_scale = scale
    start_params = mnist.initial_meta_params(tuning, lopt, k_lopt)

    grid, kept = [], {}
    for objective in mnist.OBJECTIVES:
        if objective not in cfg.objectives:
            continue
        for lr in cfg.meta_lrs:
            setting = tuning.copy_and_resolve_references()
            setting.meta_lr = {o: float(lr) for o in mnist.OBJECTIVES}
            directory = out / f"{objective}_lr{float(lr):g}"
            mnist.guard_checkpoints(setting, directory)
            best, record = mnist.meta_train_objective(
                setting, families, objective, lopt, start_params, k_meta, directory, progress
            )
            grid.append({"objective": objective, "meta_lr": float(lr), **record})
            kept[objective, float(lr)] = best
    chosen = {
        "descent_scale": scale,
        "meta_lr": {o: choose_rate(grid, o) for o in cfg.objectives},
    }
    resolution = {
        o: resolution_at(cfg, tuning, families, o, lopt, k_meta, kept[o, c["meta_lr"]])
        for o, c in chosen["meta_lr"].items()
    }
    results = {
        "experiment": "meta_tune",
        "config": cfg.to_dict(),
        "setting_config": base.to_dict(),
        "tuning": {
            "seed": seed,
            "pool_rows": rows.tolist(),
            "pool_size": int(rows.size),
        },
        "environment": common.environment(),
        "start_scales": scales,
        "grid": grid,
        "chosen": chosen,
        "score_resolution": resolution,
        "timings": {"total_s": time.perf_counter() - start},
    }
    results["config_agrees"] = differences(base, chosen) == []
    results["table"] = table(results)
    results["figures"] = [figure(results, out / "meta_tune.png")]
    saved = common.save_results(out, results)
    if not results["config_agrees"]:
        raise ValueError(
            f"meta_tune chose what the setting's config does not use: "
            f"{'; '.join(differences(base, chosen))}. Set these in configs/mnist_lopt.py, "
            f"then run the settings (results in {out})."
        )
    return saved


def differences(base: ml_collections.ConfigDict, chosen: dict[str, Any]) -> list[str]:
    """Where the setting's config differs from meta_tune's choices (``[]``: it agrees)."""
    out = []
    if base.descent_scale != chosen["descent_scale"]:
        out.append(f"descent_scale = {chosen['descent_scale']:g} (config: {base.descent_scale:g})")
    for objective, choice in chosen["meta_lr"].items():
        if meta.meta_lr(base, objective) != choice["meta_lr"]:
            out.append(
                f"meta_lr.{objective} = {choice['meta_lr']:g} (config: "
                f"{meta.meta_lr(base, objective):g})"
            )
    return out


def table(results: dict[str, Any]) -> str:
    """Markdown: the start's accuracy per scale, then each run's held-out curve summary."""
    bound = results["setting_config"]["start_train_acc_max"]
    rows = [
        f"Start (warm start's accuracy after {results['setting_config']['horizon']} steps, "
        f"tuning pool, seed {results['tuning']['seed']}; chosen: the largest scale with "
        f"training accuracy <= {bound:g}%):",
        "",
        "| descent_scale | train acc. (%) | test acc. (%) |",
        "|---:|---:|---:|",
    ]
    for r in results["start_scales"]:
        mark = " **(chosen)**" if r["descent_scale"] == results["chosen"]["descent_scale"] else ""
        rows.append(
            f"| {r['descent_scale']:g}{mark} | {r['train_acc']:.1f} | {r['test_acc']:.1f} |"
        )
    rows += [
        "",
        "| objective | meta lr | held-out: start → final (best) | converged (movement) | "
        "meta-steps | s/meta-step |",
        "|---|---:|---|---|---:|---:|",
    ]
    for g in results["grid"]:
        c = g["convergence"]
        move = "–" if c["movement"] is None else f"{100 * c['movement']:.2f}%"
        chosen = results["chosen"]["meta_lr"].get(g["objective"], {}).get("meta_lr")
        mark = " **(chosen)**" if chosen == g["meta_lr"] else ""
        rows.append(
            f"| {g['objective'].upper()} | {g['meta_lr']:g}{mark} | "
            f"{g['heldout'][0]['score']:.3f} → {g['final_score']:.3f} ({g['chosen_score']:.3f}) | "
            f"{'yes' if c['converged'] else 'no'} ({move}) | {g['meta_steps']} | "
            f"{g['meta_step_seconds_total'] / max(1, g['meta_steps']):.2f} |"
        )
    resolution = results.get("score_resolution", {})
    if resolution:
        first = next(iter(resolution.values()))
        rows += [
            "",
            f"The held-out score's resolution at the chosen rate's kept meta-parameters: its "
            f"spread over {first['copies']} copies, each entry displaced by N(0, "
            f"{first['eps']:g}^2):",
            "",
            "| objective | score | relative SD | relative range |",
            "|---|---:|---:|---:|",
        ]
        rows += [
            f"| {o.upper()} | {r['at_params']:.4f} | {100 * r['relative_sd']:.3f}% | "
            f"{100 * r['relative_range']:.3f}% |"
            for o, r in resolution.items()
        ]
    return "\n".join(rows)


def figure(results: dict[str, Any], path: Path) -> str:
    """Held-out meta-loss against meta-steps, one panel per objective, a line per rate."""
    plt = common.pyplot()
    objectives = list(dict.fromkeys(g["objective"] for g in results["grid"]))
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.6 * len(objectives), 3.6))
    for ax, objective in zip(np.atleast_1d(axes), objectives, strict=True):
        for g in (g for g in results["grid"] if g["objective"] == objective):
            steps = [s["step"] for s in g["heldout"]]
            ax.plot(
                steps, [s["score"] for s in g["heldout"]], marker=".", label=f"lr {g['meta_lr']:g}"
            )
        ax.set_xlabel("meta-step")
        ax.set_ylabel(f"held-out meta-loss ({objective.upper()})")
        ax.set_title(f"meta_tune: {objective.upper()} (tuning seed and pool)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return common.save_figure(fig, path)


def summarize(results: dict[str, Any]) -> str:
    return results["table"]
