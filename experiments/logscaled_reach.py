"""Log-scaled TBPTT against TBPTT and PES at equal meta-training time, past the overflow horizon.

Usefulness: does the log-scaled reverse pass (``truncated.LogScaledTBPTT``, estimator
``"tbptt_logscaled"``) help meta-train fig4b's TbV learned optimizer with segments longer
than the float32 overflow horizon of its meta-gradient, against plain TBPTT (whose
gradients there are inf or NaN, and whose meta-steps ``meta_train`` then skips) and PES
(which does not differentiate), at equal wall time? Settings and their reasons:
``configs/logscaled_reach.py``.

Per seed (:func:`run_seed`): fig4b's pools and TbV family (:func:`mnist_lopt.build_families`),
one start and one meta-training key for every method, ``select_tasks`` fixed held-out draws
and the start's score on them, and the start's top Lyapunov exponent and predicted float32
overflow horizon (:func:`start_record`). Then the methods take turns: each runs a chunk of
meta-steps (``truncated.meta_train``, checkpointed in ``seed_<s>/<method>/``) sized by
:func:`chunk_steps` to about ``score_every_s`` seconds of its own meta-step time, and is
scored on the held-out draws, until it has spent ``budget_s``.

The clock (:func:`budget_used`) is the sum of the meta-steps' ``step_time`` as
``meta_train`` records it (the jitted step, to the metrics on the host). Compilation is
excluded for every method alike: before its first chunk in a process, each method runs one
warm-up meta-step on a throwaway state (compile + one step, outside the clock, recorded in
``sittings``); held-out scoring and checkpoints are outside it too. A method stops at the
first chunk boundary within half a meta-step of the budget, so the methods' budgets agree
to about half a meta-step (``budget_used_s`` is recorded).

Resume: ``seed_<s>/<method>/curve.json`` holds the scores so far and the sittings; the
checkpoints hold the state. A second call with the same settings loads what is done and
continues where it stopped; a larger ``budget_s`` continues every method's run.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from experiments import common
from experiments import mnist_lopt as lopt_exp
from experiments import mnist_meta as meta
from l2l_jax import truncated
from l2l_jax.analysis import lyapunov
from l2l_jax.data import mnist as mnist_data

PAGE = "experiments/logscaled.md"  # the documentation page (experiments/registry.py)
GROUP = "timed"  # a wall-clock budget: no figures-check (experiments/registry.py)
ORDER = 145

OBJECTIVE = "tbv"
# Config fields that do not change what a method's meta-training computes (a run may be
# resumed with other values): more seeds or methods, a larger budget, other chunking.
_CONTINUABLE = (
    "seeds",
    "methods",
    "budget_s",
    "score_every_s",
    "chunk_steps_max",
    "checkpoint_every",
    "overflow_check_steps",
)
_CURVE = "curve.json"
_WARMED: set = set()  # the (config, meta-optimizer, learned optimizer) compiled in this process
_START = "start.json"


# -- pure pieces ----------------------------------------------------------------------------


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """Readable errors for settings that would fail deep inside a run."""
    methods = tuple(cfg.methods)
    unknown = [m for m in methods if m not in truncated.ESTIMATORS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise ValueError(
            f"methods must be distinct names of truncated.ESTIMATORS "
            f"{tuple(truncated.ESTIMATORS)}, got {methods}."
        )
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct meta-training seeds, got {cfg.seeds}.")
    if cfg.tuning_seed in cfg.seeds:
        raise ValueError(f"tuning_seed {cfg.tuning_seed} is one of seeds {cfg.seeds}.")
    for name in ("budget_s", "score_every_s"):
        if not (math.isfinite(cfg[name]) and cfg[name] > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {cfg[name]}.")
    for name in ("chunk_steps_max", "select_tasks", "segment", "horizon", "meta_batch"):
        if int(cfg[name]) < 1:
            raise ValueError(f"{name} must be a positive integer, got {cfg[name]}.")
    for name in ("remat", "overflow_check_steps"):
        if int(cfg[name]) < 0:
            raise ValueError(f"{name} must be >= 0 (0: off), got {cfg[name]}.")
    if cfg.segment > cfg.horizon:
        raise ValueError(f"segment ({cfg.segment}) must be <= horizon ({cfg.horizon}).")


def chunk_steps(
    used_s: float, budget_s: float, every_s: float, step_s: float | None, max_steps: int
) -> int:
    """Meta-steps of a method's next chunk; 0 when its budget is spent.

    ``used_s``: its meta-step seconds so far; ``step_s``: its recent seconds per meta-step
    (``None`` before its first step: the first chunk is 1 step, which measures it). A chunk
    spans about ``min(every_s, budget_s - used_s)`` seconds (``round``, at least 1 step, at
    most ``max_steps``); the method is done when less than half a step of its budget is
    left, so equal budgets end within about half a meta-step of each other.
    """
    left = budget_s - used_s
    if left <= 0:
        return 0
    if step_s is None or not math.isfinite(step_s) or step_s <= 0:
        return 1
    if left < 0.5 * step_s:
        return 0
    return int(max(1, min(max_steps, round(min(every_s, left) / step_s))))


def budget_used(history: list[dict[str, Any]]) -> float:
    """The clock: the sum of the meta-steps' ``step_time`` (``meta_train``'s metrics)."""
    return float(sum(h["step_time"] for h in history))


def recent_step_seconds(history: list[dict[str, Any]], last: int = 5) -> float | None:
    """Median seconds per meta-step over the ``last`` recorded steps (None if none)."""
    times = [h["step_time"] for h in history[-last:]]
    return float(statistics.median(times)) if times else None


def _mean(values: list[float]) -> float:
    """Mean, ``inf`` when any value is not finite (a diverged seed is not averaged away)."""
    return float(np.mean(values)) if values and all(map(math.isfinite, values)) else math.inf


def method_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's numbers over seeds (``records``: its per-seed records).

    Final and best held-out scores: mean over seeds (``inf`` if a seed's is not finite)
    and per seed; non-finite, norm-overflow and (log-scaled) saturated meta-steps as
    fractions of all its meta-steps (pooled over seeds); meta-steps and budget seconds
    per seed and their mean; seconds per meta-step, the median of the seeds' medians."""
    final = [float(r["final_score"]) for r in records]
    best = [float(r["best_score"]) for r in records]
    steps = [int(r["meta_steps"]) for r in records]
    total = max(1, sum(steps))
    frac = lambda key: sum(int(r[key]) for r in records) / total
    step_s = [r["step_s_median"] for r in records if r["step_s_median"] is not None]
    return {
        "final_score_mean": _mean(final),
        "final_score_per_seed": final,
        "best_score_mean": _mean(best),
        "best_score_per_seed": best,
        "change_from_start_mean": _mean(
            [float(r["final_score"]) - float(r["start_score"]) for r in records]
        ),
        "nonfinite_fraction": frac("nonfinite_steps"),
        "norm_overflow_fraction": frac("norm_overflow_steps"),
        "saturated_fraction": frac("saturated_steps"),
        "meta_steps_mean": float(np.mean(steps)),
        "meta_steps_per_seed": steps,
        "budget_used_s_per_seed": [float(r["budget_used_s"]) for r in records],
        "step_s_median": float(statistics.median(step_s)) if step_s else None,
        "warmup_s_max": max((s["warmup_s"] for r in records for s in r["sittings"]), default=0),
    }


# -- one seed's setting -------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def meta_optimizer(name: str, lr: float, clip: float) -> optax.GradientTransformation:
    """``clip_by_global_norm(clip)`` then Adam or RMSProp at the constant rate ``lr``; one
    object per setting, so the compiled meta-step is reused across chunks and seeds.

    For ``tbptt_logscaled`` a gradient past its ``max_norm`` (``2^60``) arrives as its
    direction times ``2^60`` and is clipped to ``clip`` along it: past the overflow horizon
    the meta-step is a normalized-gradient step."""
    return optax.chain(optax.clip_by_global_norm(clip), meta.META_OPTIMIZERS[name](lr))


def truncated_config(cfg: ml_collections.ConfigDict, method: str) -> truncated.TruncatedConfig:
    """fig4b's :func:`experiments.mnist_meta.truncated_config` for TbV with the estimator
    ``method`` (PES with ``es_sigma``, ``es_pairs``) and ``remat`` (0: off)."""
    one = ml_collections.ConfigDict(cfg.to_dict())
    one.estimator = method
    return dataclasses.replace(meta.truncated_config(one, OBJECTIVE), remat=int(cfg.remat) or None)


def seed_setting(cfg: ml_collections.ConfigDict, data, seed: int) -> dict[str, Any]:
    """The seed's TbV family, learned optimizer, start, held-out draws and keys (the same
    for every method: the comparison is paired)."""
    k_pool, k_lopt, k_meta, k_heldout, k_score, k_check = jax.random.split(jax.random.key(seed), 6)
    family = lopt_exp.build_families(cfg, data, k_pool)[OBJECTIVE]
    lopt = lopt_exp.learned_optimizer(cfg)
    return {
        "family": family,
        "lopt": lopt,
        "start": lopt_exp.initial_meta_params(cfg, lopt, k_lopt),
        "heldout": lopt_exp.draws(family, k_heldout, int(cfg.select_tasks)),
        "k_meta": k_meta,
        "k_score": k_score,
        "k_check": k_check,
    }


def score(cfg: ml_collections.ConfigDict, setting: dict[str, Any], meta_params) -> float:
    """The held-out TbV meta-loss of ``meta_params`` (``inf`` if a run's is not finite)."""
    return meta.heldout_score(
        cfg, OBJECTIVE, setting["lopt"], meta_params, setting["heldout"], setting["k_score"]
    )


def start_record(cfg: ml_collections.ConfigDict, setting: dict[str, Any], seed_dir: Path) -> dict:
    """The start's held-out score and, with ``overflow_check_steps``, its top Lyapunov
    exponent and predicted float32 overflow horizon on one draw of the family
    (``lyapunov.meta_gradient_health``), computed once and kept in ``start.json``."""
    path = seed_dir / _START
    if path.exists():
        saved = json.loads(path.read_text())
        saved["score"] = math.inf if saved["score"] is None else saved["score"]
        return saved
    t0 = time.perf_counter()
    out: dict[str, Any] = {"score": score(cfg, setting, setting["start"])}
    out["score_s"] = time.perf_counter() - t0
    steps = int(cfg.overflow_check_steps)
    if steps:
        t0 = time.perf_counter()
        task = lopt_exp.draws(setting["family"], setting["k_check"], 1)
        task = jax.tree.map(lambda x: x[0], task)
        optimizer = meta.lopt_inner(setting["lopt"], int(cfg.batch_size))
        health = lyapunov.meta_gradient_health(
            task, optimizer, setting["start"], steps, key=setting["k_check"]
        )
        out |= {
            "exponent": health.exponent,
            "predicted_overflow_float32": health.overflow_steps["float32"],
            "check_steps": steps,
            "check_s": time.perf_counter() - t0,
        }
    common.write_json(path, out)
    return out


# -- one method's run, chunk by chunk ----------------------------------------------------------


def _read_history(directory: Path, last_step: int) -> list[dict[str, Any]]:
    """``meta_train``'s metrics of steps ``<= last_step`` (later lines are from steps the
    checkpoint does not hold: a run killed mid-chunk redoes them)."""
    path = directory / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [h for h in map(json.loads, filter(str.strip, lines)) if h["step"] <= last_step]


def _latest_checkpoint(directory: Path) -> int | None:
    """The step of the latest complete orbax checkpoint in ``directory`` (None if none)."""
    steps = [int(p.name) for p in directory.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


class MethodRun:
    """One method's meta-training on one seed: its checkpoints, clock and held-out curve."""

    def __init__(self, cfg, method: str, setting: dict, directory: Path, start: dict, progress):
        self.cfg, self.method, self.setting, self.dir = cfg, method, setting, directory
        self.config = truncated_config(cfg, method)
        self.tx = meta_optimizer(cfg.meta_optimizer, float(cfg.meta_lr), float(cfg.clip))
        self.progress = progress
        self.warm = False
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / _CURVE
        saved = json.loads(path.read_text()) if path.exists() else {}
        inf = lambda v: math.inf if v is None else float(v)  # jsonable wrote inf as null
        self.curve = [{**c, "score": inf(c["score"])} for c in saved.get("curve", [])]
        self.sittings = saved.get("sittings", [])
        self.done = _latest_checkpoint(directory) or 0
        self.history = _read_history(directory, self.done)
        if not self.curve:
            self.curve = [{"step": 0, "seconds": 0.0, "score": float(start["score"])}]
        if self.done > self.curve[-1]["step"]:  # killed after a chunk, before its score
            self._score(self._train(self.done).meta_params)
        self._save()

    def next_chunk(self) -> int:
        cfg = self.cfg
        return chunk_steps(
            budget_used(self.history),
            float(cfg.budget_s),
            float(cfg.score_every_s),
            recent_step_seconds(self.history),
            int(cfg.chunk_steps_max),
        )

    def _train(self, steps: int, progress: bool | str = False):
        return truncated.meta_train(
            self.setting["family"],
            self.setting["lopt"],
            self.config,
            steps,
            key=self.setting["k_meta"],
            meta_params=self.setting["start"],
            meta_optimizer=self.tx,
            checkpoint_dir=self.dir,
            checkpoint_every=int(self.cfg.checkpoint_every),
            resume=True,
            progress=progress,
        )

    def warm_up(self) -> None:
        """Compile this method's meta-step (and the runs' initialization) by one meta-step
        on a throwaway state, outside the clock; the later steps reuse the compiled
        program (``l2l_jax.xla.cached``, keyed by optimizer, config and meta-optimizer).
        Once per process: a later seed finds it compiled (``warmup_s`` 0)."""
        key = (self.config, self.tx, self.setting["lopt"])
        t0 = time.perf_counter()
        if key not in _WARMED:
            truncated.meta_train(
                self.setting["family"],
                self.setting["lopt"],
                self.config,
                1,
                key=self.setting["k_meta"],
                meta_params=self.setting["start"],
                meta_optimizer=self.tx,
                progress=False,
            )
            _WARMED.add(key)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.sittings.append(
            {"warmup_s": time.perf_counter() - t0, "from_step": self.done, "loadavg_1min": load}
        )
        self.warm = True

    def chunk(self, steps: int) -> None:
        """``steps`` more meta-steps (a warm-up first in a new process), then a score."""
        if not self.warm:
            self.warm_up()
        label = f"{self.method} seed {self.setting['seed']}" if self.progress else False
        run = self._train(self.done + steps, label)
        self.done = int(truncated.host_value(run.state.step))
        self.history = _read_history(self.dir, self.done)
        self.sittings[-1]["to_step"] = self.done
        self._score(run.meta_params)
        self._save()

    def _score(self, meta_params) -> None:
        t0 = time.perf_counter()
        value = score(self.cfg, self.setting, meta_params)
        seconds = budget_used(self.history)
        point = {"step": self.done, "seconds": seconds, "score": value}
        self.curve.append(point | {"score_s": time.perf_counter() - t0})

    def _save(self) -> None:
        common.write_json(self.dir / _CURVE, {"curve": self.curve, "sittings": self.sittings})

    def record(self, start: dict) -> dict[str, Any]:
        """The method's numbers on this seed (``method_summary`` reads them)."""
        h = self.history
        scores = [c["score"] for c in self.curve]
        best = int(np.argmin(scores))
        times = [x["step_time"] for x in h]
        return {
            "meta_steps": self.done,
            "budget_used_s": budget_used(h),
            "nonfinite_steps": sum(bool(x.get("nonfinite", False)) for x in h),
            # a step applied although its gradient's norm overflowed float32: the clip's
            # norm is inf and the update is lost without being counted as non-finite
            "norm_overflow_steps": sum(
                not x.get("nonfinite", False) and not math.isfinite(x["grad_norm"]) for x in h
            ),
            "saturated_steps": sum(bool(x.get("grad_saturated", False)) for x in h),
            "capped_steps": sum(bool(x.get("grad_capped", False)) for x in h),
            "step_s_median": float(statistics.median(times)) if times else None,
            "start_score": float(start["score"]),
            "final_score": scores[-1],
            "best_score": scores[best],
            "best_step": self.curve[best]["step"],
            "curve": self.curve,
            "scores_finite": [math.isfinite(s) for s in scores],
            "meta_loss": [x["meta_loss"] for x in h],
            "grad_norm": [x["grad_norm"] for x in h],
            "log_grad_norm": [x.get("log_grad_norm") for x in h],
            "sittings": self.sittings,
        }


def run_seed(cfg, seed: int, data, out: Path, progress: bool) -> dict[str, Any]:
    """Every method on one seed, chunk by chunk in turn, each until its budget is spent."""
    seed_dir = out / f"seed_{seed}"
    setting = seed_setting(cfg, data, seed) | {"seed": seed}
    start = start_record(cfg, setting, seed_dir)
    runs = {m: MethodRun(cfg, m, setting, seed_dir / m, start, progress) for m in cfg.methods}
    while True:
        todo = {m: r.next_chunk() for m, r in runs.items()}
        todo = {m: n for m, n in todo.items() if n > 0}
        if not todo:
            break
        for m, n in todo.items():
            runs[m].chunk(n)
    return {"seed": seed, "start": start, "methods": {m: r.record(start) for m, r in runs.items()}}


# -- the experiment ---------------------------------------------------------------------------


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict[str, Any]:
    check_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _CONTINUABLE}
    common.guard_checkpoints(settings, out)
    start = time.perf_counter()
    data = mnist_data.load(cfg.source)
    per_seed: list[dict[str, Any]] = []
    for seed in cfg.seeds:
        per_seed.append(run_seed(cfg, int(seed), data, out, progress))
        results = {
            "experiment": "logscaled_reach",
            "config": cfg.to_dict(),
            "complete": len(per_seed) == len(cfg.seeds),
            "seeds_done": [r["seed"] for r in per_seed],
            "environment": common.environment(),
            "conditions": conditions(cfg, per_seed),
            "per_seed": per_seed,
            "summary": {
                m: method_summary([r["methods"][m] for r in per_seed]) for m in cfg.methods
            },
            "timings": {"this_call_s": time.perf_counter() - start},
        }
        results["table"] = table(results)
        results["figures"] = [figure(results, out / "logscaled_reach.png")]
        saved = common.save_results(out, results)
    return saved


def conditions(cfg: ml_collections.ConfigDict, per_seed: list[dict[str, Any]]) -> dict:
    """What the comparison held fixed, and the start's predicted overflow per seed."""
    env = common.environment()
    return {
        "horizon": int(cfg.horizon),
        "segment": int(cfg.segment),
        "meta_batch": int(cfg.meta_batch),
        "descent_scale": float(cfg.descent_scale),
        "budget_s": float(cfg.budget_s),
        "seeds": len(per_seed),
        "predicted_overflow_float32": [
            r["start"].get("predicted_overflow_float32") for r in per_seed
        ],
        "exponent": [r["start"].get("exponent") for r in per_seed],
        "clock": "meta-step time; compilation (one warm-up meta-step per method and process), "
        "held-out scoring and checkpoints excluded for every method",
        "host": f"{env.get('cpu_model', 'unknown')}, {env.get('cpus_usable')} usable cores",
    }


def _num(x: float | None, fmt: str = ".3f") -> str:
    if x is None:
        return "-"
    return format(x, fmt) if math.isfinite(x) else "non-finite"


def table(results: dict[str, Any]) -> str:
    c = results["conditions"]
    over = [x for x in c["predicted_overflow_float32"] if x is not None]
    horizon = f"{min(over):.0f}-{max(over):.0f} steps" if over else "not checked or none"
    starts = [r["start"]["score"] for r in results["per_seed"]]
    lines = [
        f"fig4b's TbV, start `descent_scale = {c['descent_scale']:g}`; horizon T = "
        f"{c['horizon']}, segment K = {c['segment']}, meta-batch {c['meta_batch']}; predicted "
        f"float32 overflow of the start's meta-gradient: {horizon}. {c['seeds']} seed(s), "
        f"{c['budget_s']:g} s per method and seed ({c['clock']}); {c['host']}. "
        f"Held-out TbV loss at the start: {_num(_mean(starts))} (mean over seeds).",
        "",
        "| method | final held-out TbV loss (mean) | per seed | best (mean) | change from "
        "the start | meta-steps (mean) | non-finite steps | s per meta-step | compile + 1 "
        "step (s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for method, s in results["summary"].items():
        per_seed = ", ".join(_num(v) for v in s["final_score_per_seed"])
        lines.append(
            f"| {method} | {_num(s['final_score_mean'])} | {per_seed} | "
            f"{_num(s['best_score_mean'])} | {_num(s['change_from_start_mean'], '+.3f')} | "
            f"{s['meta_steps_mean']:.1f} | {100 * s['nonfinite_fraction']:.0f}% | "
            f"{_num(s['step_s_median'], '.2f')} | {_num(s['warmup_s_max'], '.1f')} |"
        )
    if not results.get("complete", True):
        lines += ["", f"Incomplete: seeds {results['seeds_done']} done."]
    return "\n".join(lines)


def figure(results: dict[str, Any], path: Path) -> str:
    """Held-out score against meta-step seconds (top) and meta-steps (bottom), one panel
    per method, one line per seed; non-finite scores are gaps."""
    plt = common.pyplot()
    methods = list(results["summary"])
    fig, axes = plt.subplots(
        2, len(methods), figsize=(4 * len(methods), 6), sharey=True, squeeze=False
    )
    finite = [
        c["score"]
        for r in results["per_seed"]
        for m in methods
        for c in r["methods"][m]["curve"]
        if c["score"] is not None and math.isfinite(c["score"])
    ]
    for j, method in enumerate(methods):
        for r in results["per_seed"]:
            curve = r["methods"][method]["curve"]
            y = [np.nan if c["score"] is None else c["score"] for c in curve]
            y = [v if math.isfinite(v) else np.nan for v in y]
            for i, key in enumerate(("seconds", "step")):
                axes[i, j].plot([c[key] for c in curve], y, "o-", ms=3, label=f"seed {r['seed']}")
        axes[0, j].set_title(method)
        axes[0, j].set_xlabel("meta-step seconds (budget clock)")
        axes[1, j].set_xlabel("meta-steps")
    for i in range(2):
        axes[i, 0].set_ylabel("held-out TbV loss")
        if finite and min(finite) > 0:
            axes[i, 0].set_yscale("log")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return common.save_figure(fig, path)


def summarize(results: dict[str, Any]) -> str:
    return results["table"]
