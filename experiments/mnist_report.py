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


def claims(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paper's claims over seeds, from the ``results.json`` of fig4a, fig4b, fig4c.

    * 4b: the 95% interval of TbV - TbT test accuracy lies above 0;
    * 4b's mean TbV - TbT advantage is larger than 4a's (the advantage grows with noise);
    * 4c's mean ``|TbV - TbT|`` is smaller than 4b's (with many samples TbT catches up);
    * Fig. 5: TbT's mean training accuracy in 4b is above TbV's.

    Each entry holds ``passed`` (``None`` where a setting is missing) and its numbers.
    """
    gap = lambda k: results[k]["summary"]["tbv_minus_tbt_test"] if k in results else None
    a, b, c = gap("fig4a"), gap("fig4b"), gap("fig4c")
    out: dict[str, Any] = {}
    out["4b: TbV - TbT test interval above 0"] = {
        "passed": None if b is None else bool(b["ci95"][0] is not None and b["ci95"][0] > 0),
        "fig4b": b,
    }
    out["4b advantage larger than 4a"] = {
        "passed": None if a is None or b is None else bool(b["mean"] > a["mean"]),
        "fig4a": a,
        "fig4b": b,
    }
    out["4c absolute gap smaller than 4b"] = {
        "passed": None if b is None or c is None else bool(abs(c["mean"]) < abs(b["mean"])),
        "fig4b": b,
        "fig4c": c,
    }
    train = results["fig4b"]["summary"]["tbt_minus_tbv_train"] if "fig4b" in results else None
    out["Fig. 5: TbT train accuracy above TbV in 4b"] = {
        "passed": None if train is None else bool(train["mean"] > 0),
        "tbt_minus_tbv_train": train,
    }
    return out


def table(results: dict[str, Any]) -> str:
    """Markdown: per optimizer, the mean over seeds and 95% interval of the final test
    accuracy (clean and noisy test labels) and training accuracy (%), then per seed."""
    summary, labels = results["summary"], results["labels"]
    n = len(results["per_seed"])
    rows = [
        "| optimizer | test acc. (%) | test acc., noisy labels (%) | train acc. (%) |",
        "|---|---|---|---|",
    ]
    for key, label in labels.items():
        cells = [_cell(summary[m][key]) for m in METRIC_KEYS]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rows.append(f"| **TbV - TbT** | {_cell(summary['tbv_minus_tbt_test'])} | | |")
    rows += [
        "",
        f"Mean over {n} meta-training seeds [95% t-interval]; each seed's number is "
        f"the mean of {results['config']['runs']} evaluation runs on fresh draws.",
        "",
    ]
    rows.append("| seed | " + " | ".join(labels[k] for k in labels) + " |")
    rows.append("|---" * (len(labels) + 1) + "|")
    for r in results["per_seed"]:
        rows.append(
            f"| {r['seed']} | " + " | ".join(f"{r['test_acc'][k]:.1f}" for k in labels) + " |"
        )
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
    return files


def summary(results: dict[str, Any]) -> str:
    """The table, one screen."""
    cfg = results["config"]
    return (
        f"{results['experiment']}: {cfg['n_samples'] or 'all'} digits per task of "
        f"{cfg['source']}, label noise {cfg['label_noise']}, horizon {cfg['horizon']}, "
        f"{cfg['meta_steps']} meta-steps per objective ({cfg['estimator']}), seeds "
        f"{list(cfg['seeds'])}, {cfg['runs']} evaluation draws per seed\n"
        + results["table"]
        + f"\n  time: {results['timings']['total_s']:.0f} s"
    )
