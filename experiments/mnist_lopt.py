"""The MNIST learned-optimizer experiments of Wang et al. (2021), Sec. 5 (Figures 4-5),
by the paper's protocol.

One *setting* (a sample size and a label-noise level, ``configs/fig4*.py``) is run by
:func:`run_setting` for every meta-training seed of ``cfg.seeds`` (:func:`run_seed`):

1. :func:`build_families`: the source's training digits outside the tuning pool
   (:func:`tuning_rows`, meta_tune's alone) are split into a meta-training pool and a
   disjoint evaluation pool (4a/4b; 4c uses all of them for both, as the paper). A task is
   ``n`` digits drawn from a pool with fresh label noise
   (:class:`~l2l_jax.tasks.mnist_family.MnistFamily`); for TbV the draw is split into
   training and validation rows;
2. the baselines' step sizes (SGD and Adam) are grid-searched against the validation
   loss of a draw from the meta-training pool; Prodigy, DoG and Schedule-Free AdamW
   (``optax.contrib``) run at their defaults;
3. the learned optimizer is meta-trained with each objective from the same start on
   the meta-training family until its held-out score converges, and the best-scoring
   meta-parameters are kept (:func:`experiments.mnist_meta.meta_train_selected`);
4. every optimizer trains ``runs`` fresh draws of the evaluation family for
   ``eval_horizon`` steps, on all ``n`` digits (the TbV split is a meta-training device),
   and is measured on the test set with clean labels and with labels noised at the
   training rate, and on its noisy training labels (Fig. 5), at ``horizon`` (the
   meta-training horizon, the pre-registered tests) and at ``eval_horizon`` (the paper's).

Each seed's numbers are saved in ``seed_<s>/record.json`` as soon as it is done, and
``results.json`` is rewritten after every seed, marked ``"complete": false`` until every
seed of ``cfg.seeds`` is in: an interrupted run resumes per seed (and within a seed from
the meta-training checkpoints). ``results.json`` holds ``per_seed`` final accuracies
(percent), their mean and 95% interval over seeds (Student t), the meta-training curves,
held-out scores and convergence, the data and timings per seed.
:func:`experiments.mnist_report.claims` decides the paper's claims over seeds.
"""

from __future__ import annotations

import functools
import json
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
from experiments import mnist_meta as meta
from experiments import mnist_report as report
from l2l_jax import evaluation, inner, learned
from l2l_jax.data import mnist as mnist_data
from l2l_jax.tasks.mnist_family import MnistFamily, noisy_labels, split_pool

OBJECTIVES = ("tbt", "tbv")
WARM_STARTS = ("descent", "none")
BASELINES = ("sgd", "adam", "prodigy", "dog", "schedule_free_adamw")
# Config fields that do not change what meta-training computes (safe to change on resume).
_EVAL_ONLY = (
    "runs",
    "eval_horizon",
    "meta_steps_max",  # raising it continues a run that has not converged
    "converge_window",
    "converge_rtol",
    "start_train_acc_max",
    "tuning_seed",
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
    if cfg.meta_optimizer not in meta.META_OPTIMIZERS:
        raise ValueError(
            f"meta_optimizer must be one of {tuple(meta.META_OPTIMIZERS)}, got "
            f"{cfg.meta_optimizer!r}."
        )
    if cfg.meta_lr_schedule not in meta.SCHEDULES:
        raise ValueError(
            f"meta_lr_schedule must be one of {meta.SCHEDULES}, got {cfg.meta_lr_schedule!r}."
        )
    for objective in OBJECTIVES:
        if isinstance(cfg.meta_lr, ml_collections.ConfigDict) and objective not in cfg.meta_lr:
            raise ValueError(f"meta_lr needs a rate per objective {OBJECTIVES}, got {cfg.meta_lr}.")
        if not meta.meta_lr(cfg, objective) > 0:
            raise ValueError(
                f"meta_lr.{objective} must be > 0, got {meta.meta_lr(cfg, objective)}."
            )
    if not 0 <= cfg.meta_lr_end <= 1:
        raise ValueError(
            f"meta_lr_end (relative to meta_lr) must be in [0, 1], got {cfg.meta_lr_end}."
        )
    for name in ("valid_fraction", "eval_pool_fraction", "tuning_pool_fraction"):
        if not 0 < cfg[name] < 1:
            raise ValueError(f"{name} must be in (0, 1), got {cfg[name]}.")
    if cfg.n_samples < 0:
        raise ValueError(f"n_samples must be >= 0 (0: all digits), got {cfg.n_samples}.")
    positive = ("horizon", "segment", "meta_batch", "runs", "eval_points", "sgd_lr_count")
    for name in (*positive, "select_every", "select_tasks", "converge_window", "eval_horizon"):
        if int(cfg[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {cfg[name]}.")
    if cfg.meta_steps < 0 or cfg.meta_steps_max < cfg.meta_steps:
        raise ValueError(
            f"need 0 <= meta_steps <= meta_steps_max, got {cfg.meta_steps} and "
            f"{cfg.meta_steps_max}."
        )
    if not cfg.converge_rtol > 0:
        raise ValueError(f"converge_rtol must be > 0, got {cfg.converge_rtol}.")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct meta-training seeds, got {cfg.seeds}.")
    if cfg.tuning_seed in cfg.seeds:
        raise ValueError(
            f"tuning_seed {cfg.tuning_seed} is one of the reported seeds {cfg.seeds}: the "
            "tuning seed must be held apart; choose another."
        )
    if cfg.eval_horizon < cfg.horizon or int(cfg.horizon) % eval_every(cfg):
        raise ValueError(
            f"eval_horizon ({cfg.eval_horizon}) must be >= horizon ({cfg.horizon}) and "
            f"eval_horizon // eval_points ({eval_every(cfg)}) must divide horizon, so the "
            "evaluation records the meta-training horizon; change eval_points."
        )


def eval_every(cfg: ml_collections.ConfigDict) -> int:
    """Steps between evaluation points: ``eval_horizon // eval_points`` (at least 1)."""
    return max(1, int(cfg.eval_horizon) // int(cfg.eval_points))


# -- pools and families ---------------------------------------------------------------------


def tuning_rows(cfg: ml_collections.ConfigDict, data: mnist_data.MnistData) -> np.ndarray:
    """The training digits held apart for tuning (meta_tune): a fixed
    ``tuning_pool_fraction`` of them, split off by ``tuning_pool_seed`` (the same for every
    seed and setting)."""
    key = jax.random.key(int(cfg.tuning_pool_seed))
    return split_pool(data, cfg.tuning_pool_fraction, key)[1]


def reported_rows(cfg: ml_collections.ConfigDict, data: mnist_data.MnistData) -> np.ndarray:
    """The training digits the reported seeds draw from: all but :func:`tuning_rows`."""
    return np.setdiff1d(np.arange(data.num_train), tuning_rows(cfg, data))


def build_families(
    cfg: ml_collections.ConfigDict,
    data: mnist_data.MnistData,
    key: jax.Array,
    rows: np.ndarray | None = None,
) -> dict[str, Any]:
    """``{"tbt", "tbv", "eval": MnistFamily, "pools": {...}}`` of one seed.

    ``rows``: the training digits the seed may use (default :func:`reported_rows`; meta_tune
    passes :func:`tuning_rows`). With ``disjoint_eval`` (4a/4b) a random
    ``eval_pool_fraction`` of them forms the evaluation pool and the rest the meta-training
    pool; otherwise (4c) both pools are all of them. ``n_samples = 0`` draws every digit of
    the pool. TbT and TbV draw from the meta-training pool (TbV holds out ``valid_fraction``
    of each draw); the evaluation family draws from the evaluation pool without a split.
    ``pools`` records the sizes and the digits shared with the tuning pool (0 for the
    reported seeds).
    """
    held = tuning_rows(cfg, data)
    rows = reported_rows(cfg, data) if rows is None else np.sort(np.asarray(rows))
    if cfg.disjoint_eval:
        train_rows, eval_rows = split_pool(data, cfg.eval_pool_fraction, key, rows=rows)
    else:
        train_rows = eval_rows = rows
    n_train_pool = int(cfg.n_samples) or len(train_rows)
    n_eval = int(cfg.n_samples) or len(eval_rows)
    if n_train_pool > len(train_rows) or n_eval > len(eval_rows):
        raise ValueError(
            f"n_samples = {cfg.n_samples} digits per task, but the meta-training pool has "
            f"{len(train_rows)} and the evaluation pool {len(eval_rows)} (of the {len(rows)} "
            f"digits of source {data.source!r} outside the tuning pool, eval_pool_fraction = "
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
            "tuning_pool": len(held),
            "shared_with_tuning_pool": len(np.intersect1d(np.union1d(train_rows, eval_rows), held)),
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


def guard_checkpoints(cfg: ml_collections.ConfigDict, directory: Path) -> None:
    """:func:`common.guard_checkpoints` on every config field that changes meta-training
    (all but the evaluation-only ones)."""
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _EVAL_ONLY}
    common.guard_checkpoints(settings, directory)


def save_learned(path: Path, lopt: learned.MLPLOpt, meta_params) -> None:
    """``learned.save`` to ``path``, replacing what a previous run of the command left there
    (usable with ``learned.load(path)`` and ``learned.as_optax``)."""
    if path.exists():
        shutil.rmtree(path)
    learned.save(path, lopt, meta_params)


def meta_train_objective(
    cfg, families, objective: str, lopt, start_params, k_meta: jax.Array, directory: Path, progress
):
    """:func:`experiments.mnist_meta.meta_train_selected` of ``objective`` on its family, with
    the objective's meta-training key ``fold_in(k_meta, OBJECTIVES.index(objective))``: the
    settings' seeds and meta_tune train by this one call."""
    key = jax.random.fold_in(k_meta, OBJECTIVES.index(objective))
    return meta.meta_train_selected(
        cfg, families[objective], objective, lopt, start_params, key, directory, progress, draws
    )


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
    Schedule-Free AdamW is evaluated at its averaged iterate
    (``eval_params=optax.contrib.schedule_free_eval_params``), as Defazio et al. (2024)
    prescribe, not at the iterate its gradients are taken at."""
    contrib = optax.contrib
    factories = {
        "sgd": (optax.sgd, None, None),
        "adam": (optax.adam, None, None),
        "prodigy": (contrib.prodigy, 1.0, None),
        "dog": (contrib.dog, 1.0, None),
        "schedule_free_adamw": (
            contrib.schedule_free_adamw,
            0.0025,
            contrib.schedule_free_eval_params,
        ),
    }
    out = {}
    for name, (factory, default, eval_params) in factories.items():
        defaults = {} if default is None else {"learning_rate": default}
        out[name] = inner.from_optax(
            factory,
            ("learning_rate",),
            name=name,
            batch_size=batch_size,
            defaults=defaults,
            eval_params=eval_params,
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
    "train_acc": {...}}`` (accuracies at the meta-training ``horizon``, mean over ``runs``
    fresh evaluation draws), ``"at_eval_horizon"`` (the same at ``eval_horizon``) and the
    details (``"details"``: tuning tables, meta-training records, pools, evaluation curves,
    timings). Writes ``out/seed_<s>/`` (checkpoints, learned optimizers, ``record.json``
    and ``evaluation.npz``); a seed whose ``record.json`` was written with the same settings
    is loaded, not rerun.
    """
    seed_dir = out / f"seed_{seed}"
    settings = {k: v for k, v in cfg.to_dict().items() if k != "seeds"}
    done = _load_seed(seed_dir, settings)
    if done is not None:
        return done
    clock = {"start": time.perf_counter()}
    k_pool, k_lopt, k_tune, k_eval, k_meta, k_test = jax.random.split(jax.random.key(seed), 6)
    families = build_families(cfg, data, k_pool)
    steps, runs = int(cfg.horizon), int(cfg.runs)
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
    directory = seed_dir / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    guard_checkpoints(cfg, directory)
    trained, meta_records = {}, {}
    for objective in OBJECTIVES:
        t0 = time.perf_counter()
        trained[objective], meta_records[objective] = meta_train_objective(
            cfg, families, objective, lopt, start_params, k_meta, directory, progress
        )
        clock[f"meta_training_{objective}_s"] = time.perf_counter() - t0
        save_learned(seed_dir / f"lopt_{objective}", lopt, trained[objective])

    t0 = time.perf_counter()
    tasks = draws(families["eval"], k_eval, runs)  # the same fresh draws for every optimizer
    lopt_eval = meta.lopt_inner(lopt, int(cfg.batch_size))
    plan = {
        "tbt": (lopt_eval, trained["tbt"]),
        "tbv": (lopt_eval, trained["tbv"]),
        **{name: (baselines[name], hparams[name]) for name in BASELINES},
    }
    if cfg.warm_start != "none":
        plan["warm_start"] = (lopt_eval, start_params)
    every = eval_every(cfg)
    evals = {
        label: evaluation.evaluate(
            tasks,
            optimizer,
            hp,
            int(cfg.eval_horizon),
            key=k_eval,
            runs=runs,
            eval_every=every,
            **test,
        )
        for label, (optimizer, hp) in plan.items()
    }
    clock["evaluation_s"] = time.perf_counter() - t0
    clock["total_s"] = time.perf_counter() - clock.pop("start")
    record: dict[str, Any] = {"seed": int(seed)}
    at = {"horizon": steps, "eval_horizon": int(cfg.eval_horizon)}
    for key, metric in report.METRIC_KEYS.items():
        record[key] = {k: mean_at(r, metric, steps) for k, r in evals.items()}
    record["at_eval_horizon"] = {
        key: {k: mean_at(r, metric, at["eval_horizon"]) for k, r in evals.items()}
        for key, metric in report.METRIC_KEYS.items()
    }
    record["details"] = {
        "pools": families["pools"],
        "families": {k: families[k].info() for k in ("tbt", "tbv", "eval")},
        "learning_rates": {k: float(hparams[k]) for k in ("sgd", "adam")},
        "tuning": tuning,
        "meta_training": meta_records,
        "evaluation": {k: r.to_json() for k, r in evals.items()},
        "evaluated_at": at,
        "timings": clock,
        # the host this seed ran on: a setting's seeds may be run in several sittings, on
        # other CPUs, and float rounding differs between them (the rerun bounds read it)
        "environment": common.environment(),
    }
    _save_seed(seed_dir, settings, record, evals)
    record["details"]["_evals"] = evals  # EvalResults for the figures (not in results.json)
    return record


def run_setting(
    name: str, cfg: ml_collections.ConfigDict, out: Path, progress: bool = True
) -> dict[str, Any]:
    """Run one Figure 4 setting for every seed of ``cfg.seeds``; writes ``results.json``
    (after every seed, ``"complete": false`` until all are done), ``table.md`` and
    figures in ``out``."""
    check_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = mnist_data.load(cfg.source)
    per_seed: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        per_seed.append(run_seed(cfg, int(seed), data, out, progress))
        results = _setting_results(name, cfg, data, per_seed, out)
        results["timings"] = {
            # the setting's cost over every sitting: the sum of its seeds' own times
            "total_s": sum(d["timings"]["total_s"] for d in results["details"].values()),
            "this_call_s": time.perf_counter() - start,
        }
        saved = common.save_results(out, results)
    return saved


def _setting_results(name, cfg, data, per_seed, out: Path) -> dict[str, Any]:
    """``results.json`` of the seeds done so far (``complete`` when all of ``cfg.seeds``)."""
    per_seed = [dict(r) for r in per_seed]
    details = {r["seed"]: r.pop("details") for r in per_seed}
    curves = details[per_seed[0]["seed"]]["_evals"]
    details = {s: {k: v for k, v in d.items() if k != "_evals"} for s, d in details.items()}
    results = {
        "experiment": name,
        "config": cfg.to_dict(),
        "complete": len(per_seed) == len(cfg.seeds),
        "seeds_done": [r["seed"] for r in per_seed],
        "environment": common.environment(),
        "data": {"source": data.source, "info": data.info, "num_train": data.num_train},
        "per_seed": per_seed,
        "summary": report.aggregate(per_seed),
        "summary_at_eval_horizon": report.aggregate(
            [{"seed": r["seed"], **r["at_eval_horizon"]} for r in per_seed]
        ),
        "convergence": report.convergence_table(details),
        "cost_per_seed": report.cost_per_seed(details),
        "labels": {k: v for k, v in report.LABELS.items() if k in per_seed[0]["test_acc"]},
        "details": details,
    }
    results["table"] = report.table(results)
    results["figures"] = report.figures(name, cfg, curves, details, out)
    return results


def _save_seed(seed_dir: Path, settings: dict, record: dict, evals: dict) -> None:
    """``record.json`` (the seed's numbers and the settings they were made with) and
    ``evaluation.npz`` (every run's metric curves, for the figures), each atomically."""
    arrays = {"__steps": np.asarray(next(iter(evals.values())).steps)}
    for label, result in evals.items():
        for metric in evaluation.METRICS:
            if getattr(result, metric) is not None:
                arrays[f"{label}/{metric}"] = np.asarray(getattr(result, metric))
    tmp = seed_dir / "evaluation.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, seed_dir / "evaluation.npz")
    common.write_json(seed_dir / "record.json", {"settings": settings, "record": record})


def _load_seed(seed_dir: Path, settings: dict) -> dict[str, Any] | None:
    """The record :func:`_save_seed` wrote with these ``settings``, its evaluation curves
    restored as ``EvalResult`` (``params=None``); ``None`` if there is none or it was
    written with other settings."""
    path, npz_path = seed_dir / "record.json", seed_dir / "evaluation.npz"
    if not path.exists() or not npz_path.exists():
        return None
    saved = json.loads(path.read_text())
    if saved["settings"] != json.loads(json.dumps(common.jsonable(settings))):
        return None
    record = saved["record"]
    evals: dict[str, dict[str, Any]] = {}
    with np.load(npz_path) as npz:
        steps = npz["__steps"]
        for name in npz.files:
            if name != "__steps":
                label, metric = name.split("/")
                evals.setdefault(label, {})[metric] = jax.numpy.asarray(npz[name])
    record["details"]["_evals"] = {
        label: evaluation.EvalResult(steps=jax.numpy.asarray(steps), params=None, **metrics)
        for label, metrics in evals.items()
    }
    return record


# -- helpers ------------------------------------------------------------------------------


def mean_at(result: evaluation.EvalResult, metric: str, step: int) -> float:
    """Mean over runs of ``metric`` at inner step ``step`` (an evaluation point), in
    percentage points."""
    (index,) = np.flatnonzero(np.asarray(result.steps) == step)
    return 100.0 * float(result.mean(metric)[index])
