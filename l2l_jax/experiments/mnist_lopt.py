"""The MNIST learned-optimizer experiments of Wang et al. (2021), Sec. 5 (Figures 4-5).

One *setting* (a sample size and a label-noise level, ``configs/fig4*.py``) is run by
:func:`run_setting`:

1. :func:`build_tasks`: ``n`` digits of the source; the TbT task trains on all of them,
   the TbV task on the same digits split into training and validation rows;
2. SGD's step size grid-searched against the TbV split's validation loss
   (:func:`l2l_jax.evaluation.tune_sgd`);
3. the learned optimizer meta-trained with each objective from the same start
   (:func:`meta_train_objective`; orbax checkpoints under ``out/checkpoints/<objective>``,
   so a killed run resumes where it stopped when the command is repeated);
4. every optimizer evaluated in ``runs`` independent runs (the same initializations and
   minibatch orders for all of them) on its setting's training rows: training accuracy
   (noisy labels included) and test accuracy (clean test labels) along the horizon.

``results.json`` holds, per optimizer, ``test_acc`` and ``train_acc`` (mean, std, min and
max over the runs, per evaluation step and ``final``), the SGD grid, the meta-training
curves, the data actually used, timings, and the checks of the paper's claims.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from l2l_jax import evaluation, inner, learned, meta
from l2l_jax.data import mnist as mnist_data
from l2l_jax.experiments import common
from l2l_jax.tasks import MnistMLP

OBJECTIVES = ("tbt", "tbv")
META_OPTIMIZERS = {"adam": optax.adam, "rmsprop": optax.rmsprop}
WARM_STARTS = ("descent", "none")
# Config fields that do not change what meta-training computes (safe to change on resume).
_EVAL_ONLY = ("runs", "eval_points", "sgd_lr_min", "sgd_lr_max", "sgd_lr_count", "compare_to")


# -- the pieces ---------------------------------------------------------------------------------


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Readable errors for settings the library would reject deep inside a run."""
    if cfg.warm_start not in WARM_STARTS:
        raise ValueError(f"warm_start must be one of {WARM_STARTS}, got {cfg.warm_start!r}.")
    if cfg.meta_optimizer not in META_OPTIMIZERS:
        raise ValueError(
            f"meta_optimizer must be one of {tuple(META_OPTIMIZERS)}, got {cfg.meta_optimizer!r}."
        )
    if not 0 < cfg.valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {cfg.valid_fraction}.")
    if cfg.n_samples < 0:
        raise ValueError(f"n_samples must be >= 0 (0: all digits), got {cfg.n_samples}.")
    for name in ("horizon", "segment", "meta_batch", "runs", "eval_points", "sgd_lr_count"):
        if int(cfg[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {cfg[name]}.")
    if cfg.meta_steps < 0:
        raise ValueError(f"meta_steps must be >= 0, got {cfg.meta_steps}.")


def build_tasks(cfg: ml_collections.ConfigDict, data, key: jax.Array) -> dict[str, MnistMLP]:
    """``{"tbt": all n digits for training, "tbv": the same digits, split}``.

    Both come from ``MnistMLP.from_data`` with the same key and ``n_train + n_valid = n``,
    hence the same digits and the same (noisy) labels; TbV holds out ``valid_fraction``.
    """
    n = int(cfg.n_samples) or data.num_train
    n_valid = round(n * cfg.valid_fraction)
    common_args = {"label_noise": cfg.label_noise, "key": key, "sizes": tuple(cfg.sizes)}
    return {
        "tbt": MnistMLP.from_data(data, n_train=n, n_valid=0, **common_args),
        "tbv": MnistMLP.from_data(data, n_train=n - n_valid, n_valid=n_valid, **common_args),
    }


def learned_optimizer(cfg: ml_collections.ConfigDict) -> learned.MLPLOpt:
    """The paper's MLP optimizer with ``hidden_sizes`` and ``first_order`` of ``cfg``."""
    config = learned.LOptConfig(hidden_sizes=tuple(cfg.hidden_sizes), first_order=cfg.first_order)
    return learned.MLPLOpt(config)


def initial_meta_params(cfg: ml_collections.ConfigDict, lopt: learned.MLPLOpt, key: jax.Array):
    """Random MLP weights, then ``learned.descent_init`` with ``warm_start="descent"``."""
    meta_params = lopt.init_meta_params(key)
    if cfg.warm_start == "descent":
        meta_params = learned.descent_init(
            lopt, meta_params, feature=cfg.descent_feature, scale=cfg.descent_scale
        )
    return meta_params


def meta_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip)`` then Adam or RMSProp at ``meta_lr``."""
    base = META_OPTIMIZERS[cfg.meta_optimizer](cfg.meta_lr)
    return optax.chain(optax.clip_by_global_norm(cfg.clip), base)


def truncated_config(cfg: ml_collections.ConfigDict, objective: str) -> meta.TruncatedConfig:
    """The :class:`~l2l_jax.meta.TruncatedConfig` of one objective."""
    return meta.TruncatedConfig(
        horizon=cfg.horizon,
        segment=cfg.segment,
        meta_batch=cfg.meta_batch,
        batch_size=cfg.batch_size,
        objective=objective,
        eval_batch_size=cfg.eval_batch_size,
        meta_lr=cfg.meta_lr,
        clip=cfg.clip,
    )


def guard_checkpoints(cfg: ml_collections.ConfigDict, directory: Path) -> None:
    """:func:`common.guard_checkpoints` on every config field that changes meta-training
    (all but the evaluation-only ones)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _EVAL_ONLY}
    common.guard_checkpoints(settings, directory)


def meta_train_objective(
    cfg: ml_collections.ConfigDict,
    task: MnistMLP,
    objective: str,
    lopt: learned.MLPLOpt,
    meta_params,
    key: jax.Array,
    directory: Path,
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """Meta-train ``lopt`` from ``meta_params`` on ``task`` with ``objective``.

    Resumes from the checkpoints in ``directory/objective`` when there are any. Returns the
    final meta-parameters and a record: steps, skipped non-finite steps, wall time of
    this call and summed over every meta-step of the run (resumes included), and the
    per-step ``meta_loss`` of the whole run (from ``metrics.jsonl``).
    """
    start = time.perf_counter()
    run = meta.meta_train(
        task,
        lopt,
        truncated_config(cfg, objective),
        cfg.meta_steps,
        key=key,
        meta_params=meta_params,
        meta_optimizer=meta_optimizer(cfg),
        checkpoint_dir=directory / objective,
        checkpoint_every=cfg.checkpoint_every,
        resume=True,
        progress=f"meta-train {objective.upper()}" if progress else False,
    )
    lines = (directory / objective / "metrics.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines if line.strip()]
    record = {
        "meta_steps": int(run.state.step),
        "nonfinite_steps": run.nonfinite_count,
        "seconds_this_call": time.perf_counter() - start,
        # wall time of every meta-step of the run, including those before a resume
        "meta_step_seconds_total": float(sum(h["step_time"] for h in history)),
        "meta_loss": [h["meta_loss"] for h in history],
        "grad_norm": [h["grad_norm"] for h in history],
    }
    return run.meta_params, record


def save_learned(path: Path, lopt: learned.MLPLOpt, meta_params) -> None:
    """``learned.save`` to ``path``, replacing what a previous run of the command left there
    (usable with ``learned.load(path)`` and ``learned.as_optax``)."""
    if path.exists():
        shutil.rmtree(path)
    learned.save(path, lopt, meta_params)


def sgd_grid(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """``sgd_lr_count`` step sizes log-spaced over ``[sgd_lr_min, sgd_lr_max]``."""
    return np.geomspace(cfg.sgd_lr_min, cfg.sgd_lr_max, int(cfg.sgd_lr_count))


# -- one setting --------------------------------------------------------------------------------

LABELS = {
    "sgd": "SGD (tuned)",
    "tbt": "TbT",
    "tbv": "TbV",
    "warm_start": "start (not meta-trained)",
}


def run_setting(
    name: str, cfg: ml_collections.ConfigDict, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Run one Figure 4 setting end to end; writes ``results.json`` and figures in ``out``."""
    check_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = {"start": time.perf_counter()}
    key = jax.random.key(cfg.seed)
    k_data, k_lopt, k_tune, k_eval, k_meta = jax.random.split(key, 5)

    data = mnist_data.load(cfg.source)
    tasks = build_tasks(cfg, data, k_data)
    steps, runs = int(cfg.horizon), int(cfg.runs)
    eval_every = max(1, steps // int(cfg.eval_points))
    test = {"test_images": data.test_images, "test_labels": data.test_labels}

    t0 = time.perf_counter()
    best_lr, tuning = evaluation.tune_sgd(
        tasks["tbv"], sgd_grid(cfg), steps, key=k_tune, batch_size=cfg.batch_size, runs=runs
    )
    clock["sgd_tuning_s"] = time.perf_counter() - t0

    lopt = learned_optimizer(cfg)
    start_params = initial_meta_params(cfg, lopt, k_lopt)
    directory = out / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    guard_checkpoints(cfg, directory)
    trained, meta_records = {}, {}
    for i, objective in enumerate(OBJECTIVES):
        trained[objective], meta_records[objective] = meta_train_objective(
            cfg,
            tasks[objective],
            objective,
            lopt,
            start_params,
            jax.random.fold_in(k_meta, i),
            directory,
            progress,
        )
    for objective, meta_params in trained.items():
        save_learned(out / f"lopt_{objective}", lopt, meta_params)

    t0 = time.perf_counter()
    lopt_inner = learned.inner_optimizer(lopt, cfg.batch_size)
    plan = {
        "sgd": (tasks["tbv"], inner.sgd(cfg.batch_size), best_lr),
        "tbt": (tasks["tbt"], lopt_inner, trained["tbt"]),
        "tbv": (tasks["tbv"], lopt_inner, trained["tbv"]),
        "warm_start": (tasks["tbt"], lopt_inner, start_params),
    }
    evals = {}
    for label, (task, optimizer, hparams) in plan.items():
        evals[label] = evaluation.evaluate(
            task, optimizer, hparams, steps, key=k_eval, runs=runs, eval_every=eval_every, **test
        )
    clock["evaluation_s"] = time.perf_counter() - t0

    results = {
        "experiment": name,
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "data": {k: t.info for k, t in tasks.items()},
        "sgd_tuning": tuning,
        "meta_training": meta_records,
        "optimizers": {
            k: {"label": LABELS[k], "trains_on": _trains_on(plan[k][0]), **r.to_json()}
            for k, r in evals.items()
        },
    }
    results["optimizers"]["sgd"]["learning_rate"] = best_lr
    results["checks"] = checks(cfg, evals)
    results["table"] = table(results)
    results["figures"] = figures(name, cfg, evals, meta_records, out)
    clock["total_s"] = time.perf_counter() - clock.pop("start")
    results["timings"] = {
        **clock,
        "meta_training_s": {k: v["seconds_this_call"] for k, v in meta_records.items()},
    }
    (out / "table.md").write_text(results["table"] + "\n")
    common.write_json(out / "results.json", results)
    return common.jsonable(results)


def _trains_on(task: MnistMLP) -> str:
    info = task.info
    text = f"{info['n_train']} digits"
    return text + (f" (+{info['n_valid']} validation)" if info["n_valid"] else "")


# -- claims, table, figures ---------------------------------------------------------------


def final_mean(result: evaluation.EvalResult, metric: str) -> float:
    """Mean over runs of ``metric`` at the last step, in percentage points."""
    return 100.0 * float(result.mean(metric)[-1])


def checks(cfg: ml_collections.ConfigDict, evals: dict) -> dict[str, Any]:
    """The paper's claims for this setting, with the numbers they rest on.

    Always: the TbV - TbT gap of final test accuracy (points). With label noise (Fig. 4b,
    Fig. 5): TbV beats TbT by at least 3 points and TbT's training accuracy is above
    TbV's. With ``compare_to`` (Fig. 4c): the gap is smaller than the one stored there.
    """
    gap = final_mean(evals["tbv"], "test_acc") - final_mean(evals["tbt"], "test_acc")
    out: dict[str, Any] = {"tbv_minus_tbt_test_points": gap}
    if cfg.label_noise > 0:
        out["tbv_beats_tbt_test_by_3_points"] = bool(gap >= 3.0)
        train_gap = final_mean(evals["tbt"], "train_acc") - final_mean(evals["tbv"], "train_acc")
        out["tbt_minus_tbv_train_points"] = train_gap
        out["tbt_train_acc_above_tbv"] = bool(train_gap > 0)
    reference = Path(cfg.compare_to) if cfg.compare_to else None
    if reference is not None:
        if reference.exists():
            ref = json.loads(reference.read_text())
            ref_gap = ref["checks"]["tbv_minus_tbt_test_points"]
            out["compared_to"] = {"path": str(reference), "experiment": ref["experiment"]}
            out["reference_gap_points"] = ref_gap
            out["gap_smaller_than_reference"] = bool(gap < ref_gap)
        else:
            out["compared_to"] = f"{reference} not found: run that experiment first"
    return out


def table(results: dict[str, Any]) -> str:
    """Markdown: final test and train accuracy per optimizer (mean and min-max, %)."""
    rows = [
        "| optimizer | trains on | final test acc. (%) | final train acc. (%) |",
        "|---|---|---|---|",
    ]
    for key, r in results["optimizers"].items():
        label = r["label"] + (f", lr = {r['learning_rate']:.3g}" if key == "sgd" else "")
        cells = [_cell(r[m]["final"]) for m in ("test_acc", "train_acc")]
        rows.append(f"| {label} | {r['trains_on']} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def _cell(final: dict[str, float]) -> str:
    return f"{100 * final['mean']:.1f} ({100 * final['min']:.1f}-{100 * final['max']:.1f})"


def figures(
    name: str, cfg: ml_collections.ConfigDict, evals: dict, meta_records: dict, out: Path
) -> list[str]:
    """``<name>.png`` (train and test accuracy), ``train_acc.png`` (Fig. 5's panel) and
    ``meta_training.png`` (meta-loss per meta-step of each objective)."""
    curves = {LABELS[k]: v for k, v in evals.items()}
    noise = f", {cfg.label_noise:.0%} label noise" if cfg.label_noise else ", clean labels"
    title = f"{name}: {cfg.n_samples or 'all'} digits{noise}"
    files = [evaluation.plot_curves(curves, out / f"{name}.png", title=title)]
    files.append(
        evaluation.plot_curves(curves, out / "train_acc.png", metrics=("train_acc",), title=title)
    )
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for objective, record in meta_records.items():
        loss = np.asarray(record["meta_loss"], np.float64)
        window = max(1, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(loss) + 1), smooth, label=objective.upper())
    ax.set_xlabel("meta-step")
    ax.set_ylabel(f"meta-loss (moving average of {window})")
    ax.grid(alpha=0.3)
    ax.legend()
    files.append(common.save_figure(fig, out / "meta_training.png"))
    return files


def summary(results: dict[str, Any]) -> str:
    """The table and the checks, one screen."""
    cfg = results["config"]
    lines = [
        f"{results['experiment']}: {cfg['n_samples'] or 'all'} digits of {cfg['source']}, "
        f"label noise {cfg['label_noise']}, horizon {cfg['horizon']}, "
        f"{cfg['meta_steps']} meta-steps per objective, {cfg['runs']} runs",
        results["table"],
        "",
    ]
    lines += [f"  {k}: {v}" for k, v in results["checks"].items()]
    meta = results["meta_training"]
    seconds = sum(m["meta_step_seconds_total"] for m in meta.values())
    lines.append(
        f"  time: {results['timings']['total_s']:.0f} s this call; meta-steps of both "
        f"objectives {seconds:.0f} s in all (resumes included)"
    )
    return "\n".join(lines)
