"""Meta-training of the MNIST learned optimizer for one seed and objective (Figures 4-5 of
Wang et al. 2021; settings in ``configs/mnist_lopt.py``): the meta-optimizer and its
schedule, held-out scores, the convergence criterion and the held-out selection.

:func:`meta_train_selected` meta-trains in chunks of ``select_every`` meta-steps with
``truncated.meta_train`` (resumable), scores the meta-parameters after every chunk on
``select_tasks`` fixed held-out draws (:func:`heldout_score`), goes on past ``meta_steps``
until :func:`convergence` holds (at most ``meta_steps_max``), and keeps the best-scoring
meta-parameters. The selection is made among converged scores, so it can no longer hide a
drift: the record holds the whole held-out curve, its movement over the last window, the
final score beside the chosen one, and whether the criterion held.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments import common
from l2l_jax import evaluation, inner, learned, truncated

META_OPTIMIZERS = {"adam": optax.adam, "rmsprop": optax.rmsprop}
SCHEDULES = ("cosine", "constant")


def meta_lr(cfg: ml_collections.ConfigDict, objective: str) -> float:
    """The peak meta learning rate of ``objective`` (``cfg.meta_lr[objective]``, or one
    number for both)."""
    value = cfg.meta_lr
    return float(value[objective] if isinstance(value, ml_collections.ConfigDict) else value)


def meta_optimizer(cfg: ml_collections.ConfigDict, objective: str) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip)`` then Adam or RMSProp at :func:`meta_lr`, decayed by a
    cosine to ``meta_lr_end`` times it over ``meta_steps`` and constant after (optax's
    ``cosine_decay_schedule`` with ``alpha = meta_lr_end``), or constant. One object per
    setting and objective, so the compiled meta-step is reused across chunks and seeds."""
    return _meta_optimizer(
        cfg.meta_optimizer,
        meta_lr(cfg, objective),
        float(cfg.clip),
        cfg.meta_lr_schedule,
        int(cfg.meta_steps),
        float(cfg.meta_lr_end),
    )


@functools.lru_cache(maxsize=16)
def _meta_optimizer(
    name: str, lr: float, clip: float, schedule: str, steps: int, end: float
) -> optax.GradientTransformation:
    rate = optax.cosine_decay_schedule(lr, max(1, steps), alpha=end) if schedule == "cosine" else lr
    return optax.chain(optax.clip_by_global_norm(clip), META_OPTIMIZERS[name](rate))


@functools.lru_cache(maxsize=8)
def lopt_inner(lopt: learned.MLPLOpt, batch_size: int) -> inner.InnerOptimizer:
    """``learned.inner_optimizer(lopt, batch_size)``, one object per architecture (the
    evaluation's compiled runs are cached per optimizer object)."""
    return learned.inner_optimizer(lopt, batch_size)


def heldout_score(
    cfg: ml_collections.ConfigDict, objective: str, lopt, meta_params, tasks, key: jax.Array
) -> float:
    """Mean meta-loss of ``meta_params`` on the held-out draws ``tasks`` (one per run):
    the final training loss (TbT) or validation loss (TbV) after ``horizon`` steps;
    ``inf`` if any run's loss is not finite."""
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


def heldout_scorer(
    cfg: ml_collections.ConfigDict, family, objective: str, lopt, key: jax.Array, draw
) -> Callable[[Any], float]:
    """The held-out score :func:`meta_train_selected` uses with meta-training key ``key``:
    :func:`heldout_score` on ``select_tasks`` fixed draws of ``family`` (``draw(family,
    key, count)``), the same draws and minibatch keys at every call."""
    _, k_heldout, k_score = jax.random.split(key, 3)
    heldout = draw(family, k_heldout, int(cfg.select_tasks))
    return lambda mp: heldout_score(cfg, objective, lopt, mp, heldout, k_score)


def score_resolution(
    score: Callable[[Any], float], meta_params, key: jax.Array, eps: float, copies: int
) -> dict[str, Any]:
    """How finely ``score`` resolves a change of ``meta_params``: ``score`` at ``copies``
    copies, each entry displaced by independent Gaussian noise of standard deviation
    ``eps`` (far smaller than a meta-step changes it), against the score at
    ``meta_params``.

    A smooth score barely moves (relative spread of order ``eps`` times its gradient); a
    chaotic inner run (minibatch training that memorizes noisy labels) turns any
    displacement into a new draw of the final loss, and the spread is the score's own
    noise. The convergence criterion (:func:`convergence`) cannot see movements below it.
    Returns the scores, their relative sample SD and range ``(max - min) / mean``.
    """
    if copies < 2 or not eps > 0:
        raise ValueError(f"score_resolution needs copies >= 2 and eps > 0, got {copies}, {eps}.")
    leaves, tree = jax.tree.flatten(meta_params)
    scores = []
    for k in jax.random.split(key, copies):
        ks = jax.random.split(k, len(leaves))
        noise = [
            eps * jax.random.normal(kk, jnp.shape(x), jnp.result_type(x))
            for kk, x in zip(ks, leaves, strict=True)
        ]
        moved = [x + n for x, n in zip(leaves, noise, strict=True)]
        scores.append(score(jax.tree.unflatten(tree, moved)))
    values = np.asarray(scores, np.float64)
    mean = float(np.mean(values))
    return {
        "eps": float(eps),
        "copies": int(copies),
        "at_params": float(score(meta_params)),
        "scores": values.tolist(),
        "relative_sd": float(np.std(values, ddof=1) / abs(mean)),
        "relative_range": float((np.max(values) - np.min(values)) / abs(mean)),
    }


def convergence(scores: list[dict[str, Any]], window: int, rtol: float) -> dict[str, Any]:
    """The convergence criterion: the held-out score moved by at most ``rtol`` over the
    last ``window`` meta-steps, ``(max - min) / |last|`` over the scores at steps ``>=
    last - window``.

    ``converged`` is False (with ``reason``) when the run is shorter than ``window``, or a
    score in the window is not finite (a diverged run has not converged)."""
    last = int(scores[-1]["step"])
    recent = [float(s["score"]) for s in scores if s["step"] >= last - window]
    out: dict[str, Any] = {"window": int(window), "rtol": float(rtol), "last_step": last}
    if last < window:
        return out | {"converged": False, "movement": None, "reason": "shorter than the window"}
    if not np.all(np.isfinite(recent)) or recent[-1] == 0:
        return out | {"converged": False, "movement": None, "reason": "a score is not finite"}
    movement = (max(recent) - min(recent)) / abs(recent[-1])
    return out | {"converged": bool(movement <= rtol), "movement": movement, "scores": len(recent)}


def _criterion(cfg: ml_collections.ConfigDict, scores: list[dict[str, Any]]) -> dict[str, Any]:
    return convergence(scores, int(cfg.converge_window), float(cfg.converge_rtol))


def meta_train_selected(
    cfg: ml_collections.ConfigDict,
    family,
    objective: str,
    lopt: learned.MLPLOpt,
    meta_params,
    key: jax.Array,
    directory: Path,
    progress: bool,
    draw,
) -> tuple[Any, dict[str, Any]]:
    """Meta-train ``lopt`` from ``meta_params`` on ``family`` with ``objective`` until the
    held-out score converges, and keep the meta-parameters with the lowest score.

    Every ``select_every`` meta-steps (and at the start) the meta-parameters are scored by
    :func:`heldout_score` on ``select_tasks`` draws of ``family`` (``draw(family, key,
    count)``), the same for every score. Meta-training runs at least ``meta_steps`` and
    stops at the first score where :func:`convergence` holds, or at ``meta_steps_max``.
    Resumes from the checkpoints in ``directory/objective``; the scores so far and the best
    meta-parameters are kept there too (:func:`_save_selection`), so a run killed between
    two scores resumes to the same choice. The record holds the per-step ``meta_loss`` and
    ``grad_norm``, the held-out scores, the criterion, the chosen step and timings.
    """
    start = time.perf_counter()
    k_run = jax.random.split(key, 3)[0]
    score = heldout_scorer(cfg, family, objective, lopt, key, draw)
    tx = meta_optimizer(cfg, objective)
    run_dir = directory / objective
    scores, best = _load_selection(run_dir, meta_params)
    if not scores:
        scores = [{"step": 0, "score": score(meta_params)}]
        best = (scores[0]["score"], 0, meta_params)
        _save_selection(run_dir, scores, best)
    done = scores[-1]["step"]
    at_least, at_most = int(cfg.meta_steps), int(cfg.meta_steps_max)
    while done < at_most and (done < at_least or not _criterion(cfg, scores)["converged"]):
        done = min(at_most, done + int(cfg.select_every))
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
    history = [json.loads(line) for line in lines if line.strip()][:done]
    record = {
        "meta_steps": done,
        "nonfinite_steps": int(sum(bool(h.get("nonfinite", 0)) for h in history)),
        "seconds_this_call": time.perf_counter() - start,
        "meta_step_seconds_total": float(sum(h["step_time"] for h in history)),
        "meta_loss": [h["meta_loss"] for h in history],
        "grad_norm": [h["grad_norm"] for h in history],
        "heldout": scores,
        "convergence": _criterion(cfg, scores),
        "chosen_step": best[1],
        "chosen_score": best[0],
        "final_score": scores[-1]["score"],
        "meta_lr": meta_lr(cfg, objective),
    }
    return best[2], record


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
    """The :class:`~l2l_jax.truncated.TruncatedConfig` of one objective (its ``meta_lr`` is
    the peak rate; the meta-optimizer of :func:`meta_optimizer` carries the schedule)."""
    return truncated.TruncatedConfig(
        horizon=cfg.horizon,
        segment=cfg.segment,
        meta_batch=cfg.meta_batch,
        batch_size=cfg.batch_size,
        objective=objective,
        eval_batch_size=cfg.eval_batch_size,
        meta_lr=meta_lr(cfg, objective),
        clip=cfg.clip,
        estimator=estimator(cfg),
    )


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
