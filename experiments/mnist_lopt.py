"""The MNIST learned-optimizer experiments of Wang et al. (2021), Sec. 5 (Figures 4-5),
by the paper's protocol.

One *setting* (a sample size and a label-noise level, ``configs/fig4*.py``) is run by
:func:`run_setting` for every meta-training seed of ``cfg.seeds`` (:func:`run_seed`):

1. :func:`build_families`: the source's training digits are split into a meta-training
   pool and a disjoint evaluation pool (4a/4b; 4c uses all digits for both, as the
   paper). A task is ``n`` digits drawn from a pool with fresh label noise
   (:class:`~l2l_jax.tasks.mnist_family.MnistFamily`); for TbV the draw is split into
   training and validation rows;
2. the baselines' step sizes (SGD and Adam) are grid-searched against the validation
   loss of a draw from the meta-training pool; Prodigy, DoG and Schedule-Free AdamW
   (``optax.contrib``) run at their defaults;
3. the learned optimizer is meta-trained with each objective from the same start on
   the meta-training family: every run of the meta-batch and every restart draws a new
   task; every ``select_every`` meta-steps the meta-parameters are scored by their mean
   meta-loss on held-out draws, and the best are kept (:func:`meta_train_selected`);
4. every optimizer trains ``runs`` fresh draws of the evaluation family, on all ``n``
   digits (the TbV split is a meta-training device), and is measured on the test set
   with clean labels and with labels noised at the training rate, and on its noisy
   training labels (Fig. 5).

``results.json`` holds ``per_seed`` final accuracies (percent), their mean and 95%
interval over seeds (Student t), the meta-training curves and held-out scores, the data
and timings. :func:`claims` checks the paper's claims across settings over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from experiments import common
from experiments import mnist_report as report
from l2l_jax import evaluation, inner, learned, truncated
from l2l_jax.data import mnist as mnist_data
from l2l_jax.tasks.mnist_family import MnistFamily, noisy_labels, split_pool

OBJECTIVES = ("tbt", "tbv")
META_OPTIMIZERS = {"adam": optax.adam, "rmsprop": optax.rmsprop}
WARM_STARTS = ("descent", "none")
BASELINES = ("sgd", "adam", "prodigy", "dog", "schedule_free_adamw")
# Config fields that do not change what meta-training computes (safe to change on resume).
_EVAL_ONLY = (
    "runs",
    "eval_points",
    "sgd_lr_min",
    "sgd_lr_max",
    "sgd_lr_count",
    "adam_lr_min",
    "adam_lr_max",
    "seeds",
)


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
    if not 0 < cfg.eval_pool_fraction < 1:
        raise ValueError(f"eval_pool_fraction must be in (0, 1), got {cfg.eval_pool_fraction}.")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct meta-training seeds, got {cfg.seeds}.")
    for name in ("select_every", "select_tasks"):
        if int(cfg[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {cfg[name]}.")


def build_families(
    cfg: ml_collections.ConfigDict, data: mnist_data.MnistData, key: jax.Array
) -> dict[str, Any]:
    """``{"tbt", "tbv", "eval": MnistFamily, "pools": {...}}`` of one seed.

    With ``disjoint_eval`` (4a/4b) a random ``eval_pool_fraction`` of the training digits
    forms the evaluation pool and the rest the meta-training pool; otherwise (4c) both
    pools are all digits. ``n_samples = 0`` draws every digit of the pool. TbT and TbV
    draw from the meta-training pool (TbV holds out ``valid_fraction`` of each draw); the
    evaluation family draws from the evaluation pool without a split.
    """
    if cfg.disjoint_eval:
        train_rows, eval_rows = split_pool(data, cfg.eval_pool_fraction, key)
    else:
        train_rows = eval_rows = np.arange(data.num_train)
    n_train_pool = int(cfg.n_samples) or len(train_rows)
    n_eval = int(cfg.n_samples) or len(eval_rows)
    if n_train_pool > len(train_rows) or n_eval > len(eval_rows):
        raise ValueError(
            f"n_samples = {cfg.n_samples} digits per task, but the meta-training pool has "
            f"{len(train_rows)} and the evaluation pool {len(eval_rows)} (of the "
            f"{data.num_train} digits of source {data.source!r}, eval_pool_fraction = "
            f"{cfg.eval_pool_fraction}): lower n_samples or eval_pool_fraction."
        )
    common_args = {"label_noise": cfg.label_noise, "sizes": tuple(cfg.sizes)}
    n_valid = round(n_train_pool * cfg.valid_fraction)
    tbt = MnistFamily.from_data(
        data, n_train_pool, rows=train_rows, name="meta-train", **common_args
    )
    return {
        "tbt": tbt,
        "tbv": tbt.replace(n_valid=n_valid),
        "eval": MnistFamily.from_data(
            data, n_eval, rows=eval_rows, name="evaluation", **common_args
        ),
        "pools": {
            "meta_train": len(train_rows),
            "evaluation": len(eval_rows),
            "disjoint": bool(cfg.disjoint_eval),
            "shared_digits": len(np.intersect1d(train_rows, eval_rows)),
        },
    }


def draws(family: MnistFamily, key: jax.Array, count: int):
    """``count`` fresh tasks of ``family`` as one :class:`~l2l_jax.tasks.MnistMLP` with a
    leading axis (for :func:`l2l_jax.evaluation.evaluate`: run ``i`` trains task ``i``).

    The family (its pool of digits) is an argument of the jitted function, not a constant
    baked into it."""
    keys = jax.random.split(key, count)
    draw = lambda f, k: f.materialize(f.sample(k), k)
    return jax.jit(jax.vmap(draw, in_axes=(None, 0)))(family, keys)


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
    """``clip_by_global_norm(clip)`` then Adam or RMSProp at ``meta_lr`` (one object per
    setting, so the compiled meta-step is reused by every seed and objective)."""
    return _meta_optimizer(cfg.meta_optimizer, float(cfg.meta_lr), float(cfg.clip))


@functools.lru_cache(maxsize=8)
def _meta_optimizer(name: str, lr: float, clip: float) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(clip), META_OPTIMIZERS[name](lr))


@functools.lru_cache(maxsize=8)
def lopt_inner(lopt: learned.MLPLOpt, batch_size: int) -> inner.InnerOptimizer:
    """``learned.inner_optimizer(lopt, batch_size)``, one object per architecture (the
    evaluation's compiled runs are cached per optimizer object)."""
    return learned.inner_optimizer(lopt, batch_size)


def estimator(cfg: ml_collections.ConfigDict) -> truncated.Estimator | str:
    """``cfg.estimator`` with the config's ``es_sigma`` and ``es_pairs`` as the settings it
    takes (``truncated.PES(sigma=cfg.es_sigma, pairs=cfg.es_pairs)`` for ``"pes"``; TBPTT
    takes none); a name the registry lacks is left for TruncatedConfig to refuse."""
    cls = truncated.ESTIMATORS.get(cfg.estimator)
    if cls is None:
        return cfg.estimator
    own = {f.name for f in dataclasses.fields(cls)}
    settings = {"sigma": cfg.es_sigma, "pairs": cfg.es_pairs}
    return cls(**{k: v for k, v in settings.items() if k in own})


def truncated_config(cfg: ml_collections.ConfigDict, objective: str) -> truncated.TruncatedConfig:
    """The :class:`~l2l_jax.truncated.TruncatedConfig` of one objective."""
    return truncated.TruncatedConfig(
        horizon=cfg.horizon,
        segment=cfg.segment,
        meta_batch=cfg.meta_batch,
        batch_size=cfg.batch_size,
        objective=objective,
        eval_batch_size=cfg.eval_batch_size,
        meta_lr=cfg.meta_lr,
        clip=cfg.clip,
        estimator=estimator(cfg),
    )


def guard_checkpoints(cfg: ml_collections.ConfigDict, directory: Path) -> None:
    """:func:`common.guard_checkpoints` on every config field that changes meta-training
    (all but the evaluation-only ones)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _EVAL_ONLY}
    common.guard_checkpoints(settings, directory)


def heldout_score(
    cfg: ml_collections.ConfigDict, objective: str, lopt, meta_params, tasks, key: jax.Array
) -> float:
    """Mean meta-loss of ``meta_params`` on the held-out draws ``tasks`` (one per run):
    the final training loss (TbT) or validation loss (TbV) after ``horizon`` steps."""
    result = evaluation.evaluate(
        tasks,
        lopt_inner(lopt, int(cfg.batch_size)),
        meta_params,
        int(cfg.horizon),
        key=key,
        runs=int(cfg.select_tasks),
        eval_every=int(cfg.horizon),
    )
    metric = "train_loss" if objective == "tbt" else "valid_loss"
    values = result.metric(metric)[:, -1]
    return float(np.mean(values)) if np.all(np.isfinite(values)) else math.inf


def meta_train_selected(
    cfg: ml_collections.ConfigDict,
    family: MnistFamily,
    objective: str,
    lopt: learned.MLPLOpt,
    meta_params,
    key: jax.Array,
    directory: Path,
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """Meta-train ``lopt`` from ``meta_params`` on ``family`` with ``objective``, and
    keep the meta-parameters with the lowest held-out meta-loss.

    Every ``select_every`` meta-steps (and at the start) the current meta-parameters are
    scored by :func:`heldout_score` on ``select_tasks`` draws of ``family`` that are the
    same for every score; the best are returned. Resumes from the checkpoints in
    ``directory/objective``; the scores so far and the best meta-parameters are kept
    there too (:func:`_save_selection`), so a run killed between two scores resumes to
    the same choice. Raising ``meta_steps`` and rerunning continues a finished run. The
    record holds the per-step ``meta_loss`` and ``grad_norm`` of the whole run, the
    held-out scores, the chosen step and timings.
    """
    start = time.perf_counter()
    k_run, k_heldout, k_score = jax.random.split(key, 3)
    heldout = draws(family, k_heldout, int(cfg.select_tasks))
    tx = meta_optimizer(cfg)  # one object: the compiled meta-step is reused across chunks
    score = lambda mp: heldout_score(cfg, objective, lopt, mp, heldout, k_score)
    run_dir = directory / objective
    scores, best = _load_selection(run_dir, meta_params)
    if not scores:
        scores = [{"step": 0, "score": score(meta_params)}]
        best = (scores[0]["score"], 0, meta_params)
    done, run = scores[-1]["step"], None
    while done < cfg.meta_steps:
        done = min(int(cfg.meta_steps), done + int(cfg.select_every))
        run = truncated.meta_train(
            family,
            lopt,
            truncated_config(cfg, objective),
            done,
            key=k_run,
            meta_params=meta_params,
            meta_optimizer=tx,
            checkpoint_dir=run_dir,
            checkpoint_every=cfg.checkpoint_every,
            resume=True,
            progress=f"meta-train {objective.upper()}" if progress else False,
        )
        scores.append({"step": done, "score": score(run.meta_params)})
        if scores[-1]["score"] < best[0]:
            best = (scores[-1]["score"], done, run.meta_params)
        _save_selection(run_dir, scores, best)
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    history = [json.loads(line) for line in lines if line.strip()][: int(cfg.meta_steps)]
    record = {
        "meta_steps": int(cfg.meta_steps),
        "nonfinite_steps": int(sum(bool(h.get("nonfinite", 0)) for h in history)),
        "seconds_this_call": time.perf_counter() - start,
        "meta_step_seconds_total": float(sum(h["step_time"] for h in history)),
        "meta_loss": [h["meta_loss"] for h in history],
        "grad_norm": [h["grad_norm"] for h in history],
        "heldout": [s for s in scores if s["step"] <= int(cfg.meta_steps)],
        "chosen_step": best[1],
    }
    return best[2], record


_SELECTION = "selection.json"
_BEST = "best_meta_params.npz"


def _save_selection(run_dir: Path, scores: list[dict[str, Any]], best) -> None:
    """Write the held-out ``scores`` and the ``best`` meta-parameters to ``run_dir``,
    each atomically (a temporary file, then ``os.replace``; ``common.write_json``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    leaves = {f"{i:05d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(best[2]))}
    tmp = run_dir / (_BEST + ".tmp.npz")
    np.savez(tmp, **leaves)
    os.replace(tmp, run_dir / _BEST)
    payload = {"scores": scores, "best_score": best[0], "best_step": best[1]}
    common.write_json(run_dir / _SELECTION, payload)


def _load_selection(run_dir: Path, template) -> tuple[list[dict[str, Any]], Any]:
    """The scores and best ``(score, step, meta_params)`` saved by :func:`_save_selection`
    (meta-parameters in ``template``'s structure), or ``([], None)`` if there are none."""
    if not (run_dir / _SELECTION).exists() or not (run_dir / _BEST).exists():
        return [], None
    payload = json.loads((run_dir / _SELECTION).read_text())
    inf = lambda v: math.inf if v is None else float(v)  # jsonable wrote inf as null
    scores = [{"step": int(s["step"]), "score": inf(s["score"])} for s in payload["scores"]]
    with np.load(run_dir / _BEST) as npz:
        leaves = [jax.numpy.asarray(npz[k]) for k in sorted(npz.files)]
    params = jax.tree.unflatten(jax.tree.structure(template), leaves)
    return scores, (inf(payload["best_score"]), int(payload["best_step"]), params)


def save_learned(path: Path, lopt: learned.MLPLOpt, meta_params) -> None:
    """``learned.save`` to ``path``, replacing what a previous run of the command left there
    (usable with ``learned.load(path)`` and ``learned.as_optax``)."""
    if path.exists():
        shutil.rmtree(path)
    learned.save(path, lopt, meta_params)


def sgd_grid(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """``sgd_lr_count`` step sizes log-spaced over ``[sgd_lr_min, sgd_lr_max]``."""
    return np.geomspace(cfg.sgd_lr_min, cfg.sgd_lr_max, int(cfg.sgd_lr_count))


def adam_grid(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """``sgd_lr_count`` step sizes log-spaced over ``[adam_lr_min, adam_lr_max]``."""
    return np.geomspace(cfg.adam_lr_min, cfg.adam_lr_max, int(cfg.sgd_lr_count))


@functools.lru_cache(maxsize=4)
def baseline_optimizers(batch_size: int) -> dict[str, inner.InnerOptimizer]:
    """The optimizers an engineer would pick instead of meta-learning, each with the one
    hyperparameter ``learning_rate``: SGD and Adam (tuned), and optax's learning-rate-free
    Prodigy, DoG and Schedule-Free AdamW (run at their default ``learning_rate``).
    Schedule-Free AdamW is measured at the iterate its gradients are taken at, not at
    its averaged iterate (``optax.contrib.schedule_free_eval_params``)."""
    contrib = optax.contrib
    factories = {
        "sgd": (optax.sgd, None),
        "adam": (optax.adam, None),
        "prodigy": (contrib.prodigy, 1.0),
        "dog": (contrib.dog, 1.0),
        "schedule_free_adamw": (contrib.schedule_free_adamw, 0.0025),
    }
    out = {}
    for name, (factory, default) in factories.items():
        defaults = {} if default is None else {"learning_rate": default}
        out[name] = inner.from_optax(
            factory, ("learning_rate",), name=name, batch_size=batch_size, defaults=defaults
        )
    return out


# -- one seed, one setting ----------------------------------------------------------------------


def run_seed(
    cfg: ml_collections.ConfigDict,
    seed: int,
    data: mnist_data.MnistData,
    out: Path,
    progress: bool = True,
) -> dict[str, Any]:
    """One meta-training seed of a setting: pools, tuning, meta-training, evaluation.

    Returns ``{"seed", "test_acc": {optimizer: %}, "test_acc_noisy_labels": {...},
    "train_acc": {...}}`` (final accuracies, mean over ``runs`` fresh evaluation draws)
    and the details (``"details"``: tuning tables, meta-training records, pools,
    evaluation curves, timings). Writes ``out/seed_<s>/`` (checkpoints, learned
    optimizers).
    """
    clock = {"start": time.perf_counter()}
    k_pool, k_lopt, k_tune, k_eval, k_meta, k_test = jax.random.split(jax.random.key(seed), 6)
    families = build_families(cfg, data, k_pool)
    steps, runs = int(cfg.horizon), int(cfg.runs)
    eval_every = max(1, steps // int(cfg.eval_points))
    test_noisy = noisy_labels(jax.numpy.asarray(data.test_labels), cfg.label_noise, k_test)
    test = {
        "test_images": data.test_images,
        "test_labels": data.test_labels,
        "noisy_test_labels": np.asarray(test_noisy),
    }

    t0 = time.perf_counter()
    tune_task = draws(families["tbv"], k_tune, 1)
    tune_task = jax.tree.map(lambda x: x[0], tune_task)
    baselines = baseline_optimizers(int(cfg.batch_size))
    hparams, tuning = {}, {}
    for name, grid in (("sgd", sgd_grid(cfg)), ("adam", adam_grid(cfg))):
        hparams[name], tuning[name] = evaluation.tune_learning_rate(
            tune_task, baselines[name], grid, steps, key=k_tune, runs=runs
        )
    for name in ("prodigy", "dog", "schedule_free_adamw"):
        hparams[name] = baselines[name].hparams()
    clock["tuning_s"] = time.perf_counter() - t0

    lopt = learned_optimizer(cfg)
    start_params = initial_meta_params(cfg, lopt, k_lopt)
    directory = out / f"seed_{seed}" / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    guard_checkpoints(cfg, directory)
    trained, meta_records = {}, {}
    for i, objective in enumerate(OBJECTIVES):
        trained[objective], meta_records[objective] = meta_train_selected(
            cfg,
            families[objective],
            objective,
            lopt,
            start_params,
            jax.random.fold_in(k_meta, i),
            directory,
            progress,
        )
        save_learned(out / f"seed_{seed}" / f"lopt_{objective}", lopt, trained[objective])

    t0 = time.perf_counter()
    tasks = draws(families["eval"], k_eval, runs)  # the same fresh draws for every optimizer
    lopt_eval = lopt_inner(lopt, int(cfg.batch_size))
    plan = {
        "tbt": (lopt_eval, trained["tbt"]),
        "tbv": (lopt_eval, trained["tbv"]),
        **{name: (baselines[name], hparams[name]) for name in BASELINES},
    }
    if cfg.warm_start != "none":
        plan["warm_start"] = (lopt_eval, start_params)
    evals = {
        label: evaluation.evaluate(
            tasks, optimizer, hp, steps, key=k_eval, runs=runs, eval_every=eval_every, **test
        )
        for label, (optimizer, hp) in plan.items()
    }
    clock["evaluation_s"] = time.perf_counter() - t0
    clock["total_s"] = time.perf_counter() - clock.pop("start")
    record: dict[str, Any] = {"seed": int(seed)}
    for key, metric in report.METRIC_KEYS.items():
        record[key] = {k: final_mean(r, metric) for k, r in evals.items()}
    record["details"] = {
        "pools": families["pools"],
        "families": {k: families[k].info() for k in ("tbt", "tbv", "eval")},
        "learning_rates": {k: float(hparams[k]) for k in ("sgd", "adam")},
        "tuning": tuning,
        "meta_training": meta_records,
        "evaluation": {k: r.to_json() for k, r in evals.items()},
        "timings": clock,
        "_evals": evals,  # EvalResults for the figures (not written to results.json)
    }
    return record


def run_setting(
    name: str, cfg: ml_collections.ConfigDict, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Run one Figure 4 setting for every seed of ``cfg.seeds``; writes ``results.json``,
    ``table.md`` and figures in ``out``."""
    check_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = mnist_data.load(cfg.source)
    per_seed = [run_seed(cfg, int(seed), data, out, progress) for seed in cfg.seeds]
    details = {r["seed"]: r.pop("details") for r in per_seed}
    curves = details[per_seed[0]["seed"]]["_evals"]
    for d in details.values():
        d.pop("_evals")
    results = {
        "experiment": name,
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "data": {"source": data.source, "info": data.info, "num_train": data.num_train},
        "per_seed": per_seed,
        "summary": report.aggregate(per_seed),
        "labels": {k: v for k, v in report.LABELS.items() if k in per_seed[0]["test_acc"]},
        "details": details,
    }
    results["table"] = report.table(results)
    results["figures"] = report.figures(name, cfg, curves, details, out)
    results["timings"] = {"total_s": time.perf_counter() - start}
    return common.save_results(out, results)


# -- helpers ------------------------------------------------------------------------------


def final_mean(result: evaluation.EvalResult, metric: str) -> float:
    """Mean over runs of ``metric`` at the last step, in percentage points."""
    return 100.0 * float(result.mean(metric)[-1])
