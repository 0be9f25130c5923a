"""Reports of the MNIST learned-optimizer experiments (Figures 4-5): intervals over
meta-training seeds, the paper's claims across settings, tables and figures.

:mod:`experiments.mnist_lopt` runs a setting; this module turns its per-seed
numbers into what ``results.json``, ``table.md`` and the docs show.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from experiments import common
from l2l_jax import evaluation

LABELS = {
    "tbt": "TbT",
    "tbv": "TbV",
    "sgd": "SGD (tuned)",
    "adam": "Adam (tuned)",
    "prodigy": "Prodigy (default)",
    "dog": "DoG (default)",
    "schedule_free_adamw": "Schedule-Free AdamW (default)",
    "warm_start": "start (not meta-trained)",
}
# per-seed results key -> EvalResult metric
METRIC_KEYS = {
    "test_acc": "test_acc",
    "test_acc_noisy_labels": "test_acc_noisy",
    "train_acc": "train_acc",
}


def interval(values) -> dict[str, Any]:
    """Mean and two-sided 95% Student-t interval of ``values`` (one per seed)."""
    from scipy import stats

    x = np.asarray(values, np.float64)
    mean = float(np.mean(x))
    if x.size < 2:
        return {"mean": mean, "ci95": [None, None], "n": int(x.size)}
    half = float(stats.t.ppf(0.975, x.size - 1) * np.std(x, ddof=1) / math.sqrt(x.size))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": int(x.size)}


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric and optimizer: the mean and 95% interval over seeds, and the same for
    the paired differences TbV - TbT (test) and TbT - TbV (training accuracy)."""
    out: dict[str, Any] = {}
    for key in METRIC_KEYS:
        names = per_seed[0][key]
        out[key] = {k: interval([r[key][k] for r in per_seed]) for k in names}
    out["tbv_minus_tbt_test"] = interval(
        [r["test_acc"]["tbv"] - r["test_acc"]["tbt"] for r in per_seed]
    )
    out["tbt_minus_tbv_train"] = interval(
        [r["train_acc"]["tbt"] - r["train_acc"]["tbv"] for r in per_seed]
    )
    return out


def convergence_table(details: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """Per objective and seed: the convergence criterion of its held-out curve
    (``experiments.mnist_meta.convergence``), the meta-steps run, the chosen step and the
    chosen and final scores; ``all_converged`` over every seed and objective."""
    rows = {}
    for seed, d in details.items():
        for objective, record in d["meta_training"].items():
            c = record["convergence"]
            rows.setdefault(objective, {})[str(seed)] = {
                "converged": c["converged"],
                "movement": c.get("movement"),
                "meta_steps": record["meta_steps"],
                "chosen_step": record["chosen_step"],
                "chosen_score": record["chosen_score"],
                "final_score": record["final_score"],
                "start_score": record["heldout"][0]["score"],
            }
    flags = [r["converged"] for per in rows.values() for r in per.values()]
    return {"per_objective": rows, "all_converged": bool(flags) and all(flags)}


def cost_per_seed(details: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    """Wall-clock seconds per seed (tuning the baselines, meta-training each objective,
    evaluation, total) and their mean, so a user can plan a partial rerun."""
    per = {str(seed): dict(d["timings"]) for seed, d in details.items()}
    keys = sorted({k for t in per.values() for k in t})
    mean = {k: float(np.mean([t[k] for t in per.values() if k in t])) for k in keys}
    return {"per_seed": per, "mean": mean}


ALPHA = 0.05  # one-sided level of every pre-registered test
POWER = 0.8  # for the number of seeds a test needs


def one_sided(differences, claim: str) -> dict[str, Any]:
    """A pre-registered one-sided paired test that the mean of ``differences`` (one per
    seed, each the claim's paired difference) is above 0: Student t over seeds.

    Returns the mean, the one-sided 95% lower bound and the two-sided 95% interval, the
    p-value of H0: mean <= 0, the verdict (``"supported"``: the lower bound is above 0;
    ``"contradicted"``: the two-sided interval lies below 0; else ``"undecided"``: never
    reported as true while its interval includes 0), and the seeds a test of this SD
    would need to detect the observed mean with power 0.8 (normal approximation,
    ``n = ((z_0.95 + z_0.8) sd / mean)^2``, None when the mean is not above 0).
    """
    from scipy import stats

    x = np.asarray(differences, np.float64)
    out: dict[str, Any] = {"claim": claim, "n": int(x.size), "differences": x.tolist()}
    out["mean"] = float(np.mean(x)) if x.size else None
    if x.size < 2:
        return out | {"lower95": None, "ci95": [None, None], "p": None, "verdict": "undecided"}
    sd = float(np.std(x, ddof=1))
    se = sd / math.sqrt(x.size)
    df = x.size - 1
    lower = out["mean"] - float(stats.t.ppf(1 - ALPHA, df)) * se
    half = float(stats.t.ppf(0.975, df)) * se
    p = float(stats.t.sf(out["mean"] / se, df)) if se > 0 else float(out["mean"] <= 0)
    verdict = (
        "supported" if lower > 0 else "contradicted" if out["mean"] + half < 0 else "undecided"
    )
    z = float(stats.norm.ppf(1 - ALPHA) + stats.norm.ppf(POWER))
    needed = max(2, math.ceil((z * sd / out["mean"]) ** 2)) if out["mean"] > 0 and sd > 0 else None
    return out | {
        "sd": sd,
        "lower95": lower,
        "ci95": [out["mean"] - half, out["mean"] + half],
        "p": p,
        "verdict": verdict,
        "seeds_for_power": needed,
    }


def _by_seed(setting: dict[str, Any], value) -> dict[int, float]:
    return {r["seed"]: value(r) for r in setting["per_seed"]}


def _gap(r: dict[str, Any]) -> float:
    return r["test_acc"]["tbv"] - r["test_acc"]["tbt"]


def claims(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paper's claims over seeds as pre-registered one-sided paired tests
    (:func:`one_sided`), computed from the ``per_seed`` entries of fig4a, fig4b, fig4c.

    * **4b**: TbV's test accuracy is above TbT's (noisy labels, few samples): the
      differences TbV - TbT per seed;
    * **4b - 4a**: the advantage grows with label noise: (TbV - TbT) in 4b minus the same
      in 4a, paired by meta-training seed;
    * **4a - 4c**: with all samples (4c) the advantage is smaller than with few (4a), the
      paper's sample-size comparison: (TbV - TbT) in 4a minus the same in 4c, by seed;
    * **Fig. 5**: TbT fits the noisy training labels more than TbV in 4b: TbT - TbV
      training accuracy per seed.

    A comparison whose settings are missing, or share no seed, is ``"not run"``.
    """
    out: dict[str, Any] = {}

    def paired(first: str, second: str, name: str):
        if first not in results or second not in results:
            return {"claim": name, "verdict": "not run", "missing": [first, second]}
        x, y = _by_seed(results[first], _gap), _by_seed(results[second], _gap)
        seeds = sorted(set(x) & set(y))
        if not seeds:
            return {"claim": name, "verdict": "not run", "missing": ["shared seeds"]}
        return one_sided([x[s] - y[s] for s in seeds], name) | {"seeds": seeds}

    if "fig4b" in results:
        b = results["fig4b"]["per_seed"]
        out["4b"] = one_sided([_gap(r) for r in b], "4b: TbV's test accuracy above TbT's")
        out["fig5"] = one_sided(
            [r["train_acc"]["tbt"] - r["train_acc"]["tbv"] for r in b],
            "Fig. 5: TbT's training accuracy above TbV's in 4b",
        )
    else:
        out["4b"] = {"claim": "4b: TbV's test accuracy above TbT's", "verdict": "not run"}
        out["fig5"] = {"claim": "Fig. 5 in 4b", "verdict": "not run"}
    out["4b-4a"] = paired("fig4b", "fig4a", "the advantage grows with noise: (4b) - (4a)")
    out["4a-4c"] = paired("fig4a", "fig4c", "it shrinks with all samples: (4a) - (4c)")
    return out


def table(results: dict[str, Any]) -> str:
    """Markdown: per optimizer, the mean over seeds and 95% interval of the final test
    accuracy (clean and noisy test labels) and training accuracy (%), then per seed."""
    summary, labels = results["summary"], results["labels"]
    later = results.get("summary_at_eval_horizon")
    cfg = results["config"]
    n = len(results["per_seed"])
    horizons = f"{cfg['horizon']} steps"
    rows = [
        f"| optimizer | test acc. (%), {horizons} | test acc., noisy labels (%) | "
        f"train acc. (%) | test acc. (%), {cfg.get('eval_horizon', '–')} steps | "
        "train acc. (%), same |",
        "|---|---|---|---|---|---|",
    ]
    for key, label in labels.items():
        cells = [_cell(summary[m][key]) for m in METRIC_KEYS]
        cells += [_cell(later[m][key]) for m in ("test_acc", "train_acc")] if later else ["", ""]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    gap_later = _cell(later["tbv_minus_tbt_test"]) if later else ""
    rows.append(f"| **TbV - TbT** | {_cell(summary['tbv_minus_tbt_test'])} | | | {gap_later} | |")
    status = (
        ""
        if results.get("complete", True)
        else (f" **Partial: {n} of {len(cfg['seeds'])} seeds** (the run has not finished).")
    )
    rows += [
        "",
        f"Mean over {n} meta-training seeds [95% t-interval]; each seed's number is "
        f"the mean of {cfg['runs']} evaluation runs on fresh draws.{status}",
        "",
    ]
    if "convergence" in results:
        rows += [convergence_markdown(results), ""]
    rows.append("| seed | " + " | ".join(labels[k] for k in labels) + " |")
    rows.append("|---" * (len(labels) + 1) + "|")
    for r in results["per_seed"]:
        rows.append(
            f"| {r['seed']} | " + " | ".join(f"{r['test_acc'][k]:.1f}" for k in labels) + " |"
        )
    return "\n".join(rows)


def convergence_markdown(results: dict[str, Any]) -> str:
    """Markdown: per objective and seed, whether the held-out curve met the criterion, its
    movement over the window, the meta-steps run and the chosen step; the cost per seed."""
    conv, cfg = results["convergence"], results["config"]
    rows = [
        f"Convergence (held-out score moves by <= {100 * cfg['converge_rtol']:g}% over the "
        f"last {cfg['converge_window']} meta-steps, {cfg['select_tasks']} held-out draws): "
        f"**{'every seed and objective' if conv['all_converged'] else 'NOT every run'}**.",
        "",
        "| objective | seed | converged | movement | meta-steps | chosen step | score: start "
        "→ chosen / final |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for objective, per in conv["per_objective"].items():
        for seed, r in per.items():
            move = "–" if r["movement"] is None else f"{100 * r['movement']:.2f}%"
            rows.append(
                f"| {LABELS[objective]} | {seed} | {'yes' if r['converged'] else 'no'} | {move} | "
                f"{r['meta_steps']} | {r['chosen_step']} | {r['start_score']:.3f} → "
                f"{r['chosen_score']:.3f} / {r['final_score']:.3f} |"
            )
    cost = results.get("cost_per_seed", {}).get("mean", {})
    if cost:
        parts = ", ".join(f"{k.removesuffix('_s')} {v / 60:.1f} min" for k, v in cost.items())
        rows += ["", f"Cost per seed (mean wall-clock on this run's host): {parts}."]
    return "\n".join(rows)


def _cell(stat: dict[str, Any]) -> str:
    lo, hi = stat["ci95"]
    if lo is None:
        return f"{stat['mean']:.1f}"
    return f"{stat['mean']:.1f} [{lo:.1f}, {hi:.1f}]"


def figures(
    name: str, cfg: ml_collections.ConfigDict, evals: dict, details: dict, out: Path
) -> list[str]:
    """``<name>.png`` (train and test accuracy curves of the first seed's evaluation runs,
    ``evals``), ``meta_training.png`` (meta-loss per meta-step and held-out score of every
    seed and objective)."""
    curves = {LABELS[k]: r for k, r in evals.items()}
    noise = f", {cfg.label_noise:.0%} label noise" if cfg.label_noise else ", clean labels"
    title = f"{name}: {cfg.n_samples or 'all'} digits{noise}"
    metrics = (
        ("train_acc", "test_acc", "test_acc_noisy")
        if cfg.label_noise
        else ("train_acc", "test_acc")
    )
    files = [evaluation.plot_curves(curves, out / f"{name}.png", metrics=metrics, title=title)]
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for seed, d in details.items():
        for objective, record in d["meta_training"].items():
            loss = np.asarray(record["meta_loss"], np.float64)
            if loss.size:
                window = max(1, len(loss) // 20)
                smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
                axes[0].plot(
                    np.arange(window, len(loss) + 1),
                    smooth,
                    label=f"{objective.upper()} seed {seed}",
                )
            steps = [h["step"] for h in record["heldout"]]
            axes[1].plot(
                steps,
                [h["score"] for h in record["heldout"]],
                marker="o",
                label=f"{objective.upper()} seed {seed}",
            )
    axes[0].set_xlabel("meta-step")
    axes[0].set_ylabel("meta-loss (moving average)")
    axes[1].set_xlabel("meta-step")
    axes[1].set_ylabel("held-out meta-loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    files.append(common.save_figure(fig, out / "meta_training.png"))
    files.append(heldout_figure(name, cfg, details, out / "heldout.png"))
    return files


def heldout_figure(name: str, cfg, details: dict, path: Path) -> str:
    """The held-out score against meta-steps, one panel per objective and one line per
    seed, the criterion's window drawn bold (``heldout.png``)."""
    plt = common.pyplot()
    objectives = sorted({o for d in details.values() for o in d["meta_training"]})
    fig, axes = plt.subplots(1, len(objectives), figsize=(4.6 * len(objectives), 3.4))
    for ax, objective in zip(np.atleast_1d(axes), objectives, strict=True):
        for seed, d in details.items():
            record = d["meta_training"][objective]
            steps = np.asarray([h["step"] for h in record["heldout"]])
            scores = np.asarray(
                [np.inf if h["score"] is None else h["score"] for h in record["heldout"]]
            )
            (line,) = ax.plot(steps, scores, marker=".", lw=1, label=f"seed {seed}")
            window = steps >= steps[-1] - int(cfg.converge_window)
            ax.plot(steps[window], scores[window], color=line.get_color(), lw=3, alpha=0.6)
            ax.plot([record["chosen_step"]], [record["chosen_score"]], "k*", ms=7)
        ax.set_title(f"{name}: {objective.upper()} (bold: last {cfg.converge_window} steps)")
        ax.set_xlabel("meta-step")
        ax.set_ylabel(f"held-out meta-loss ({cfg.select_tasks} draws)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return common.save_figure(fig, path)


def summary(results: dict[str, Any]) -> str:
    """The table, one screen."""
    cfg = results["config"]
    return (
        f"{results['experiment']}: {cfg['n_samples'] or 'all'} digits per task of "
        f"{cfg['source']}, label noise {cfg['label_noise']}, horizon {cfg['horizon']}, "
        f"{cfg['meta_steps']}-{cfg.get('meta_steps_max', cfg['meta_steps'])} meta-steps per "
        f"objective (until converged; {cfg['estimator']}), seeds "
        f"{list(cfg['seeds'])}, {cfg['runs']} evaluation draws per seed\n"
        + results["table"]
        + f"\n  time: {results['timings']['total_s']:.0f} s"
    )
