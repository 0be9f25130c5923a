"""Stability of a meta-trained learned optimizer on the noisy quadratic model.

Harrison, Metz and Sohl-Dickstein (2022), Sec. 3: an optimizer is a dynamical system on
``z = (parameters, optimizer state)``; linearized at a point, the eigenvalues of its
Jacobian say whether small perturbations shrink (spectral radius ``rho <= 1``) or grow.

1. Meta-train the plain ``learned.MLPLOpt`` on an NQM (``tasks.NQM``) with
   ``truncated.meta_train``; compare its mean loss over the horizon with SGD and
   Adam at their best step sizes.
2. Linearize its dynamics (:func:`l2l_jax.analysis.stability.jacobian`, float64) at the initial
   point and along a run; eigenvalues and ``rho`` per point.
3. Where it is stable: ``rho`` on NQMs with scaled curvature ``c h`` (the run's empirical
   loss beside it), and over a grid of global step-size multipliers ``s``
   (:func:`l2l_jax.analysis.stability.scaled_step`) x curvature scales at the initial point.
4. The GD and heavy-ball stability regions over step size x curvature, with the analytic
   boundaries ``eta lambda = 2`` and ``eta lambda = 2 (1 + beta)``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common
from experiments.stability_report import (
    plot_classic,
    plot_meta_training,
    plot_trajectory,
    plot_where_stable,
    summarize,  # noqa: F401 (the experiment's summary: cli calls stability.summarize)
)
from l2l_jax import inner, learned, tasks, truncated
from l2l_jax.analysis import stability
from l2l_jax.inner import tuning
from l2l_jax.inner.rollout import rollout

PAGE = "experiments/stability.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 150


# -- configuration -> objects --------------------------------------------------------------
def log_range(name: str, spec) -> np.ndarray:
    """``(min, max, count)`` -> ``np.logspace``; a ``ValueError`` naming the field."""
    try:
        lo, hi, count = spec
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (min, max, count), got {spec!r}.") from None
    if not (0 < lo < hi and int(count) == count and count >= 2):
        raise ValueError(
            f"{name} must be (min, max, count) with 0 < min < max, count >= 2; got {spec!r}."
        )
    return np.logspace(np.log10(lo), np.log10(hi), int(count))


def _check_points(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """``analysis.points``: distinct steps in ``[0, analysis.steps)``."""
    points = np.asarray(cfg.analysis.points)
    if (
        points.ndim != 1
        or points.size == 0
        or points.min() < 0
        or points.max() >= cfg.analysis.steps
        or np.unique(points).size != points.size
    ):
        raise ValueError(
            f"analysis.points must be distinct steps in [0, analysis.steps = "
            f"{cfg.analysis.steps}), got {tuple(cfg.analysis.points)}."
        )
    return points


def make_task(cfg: ml_collections.ConfigDict) -> tasks.NQM:
    """The NQM of ``cfg.nqm`` (keys from ``cfg.seed``)."""
    n = cfg.nqm
    return tasks.NQM.power_law(
        jax.random.key(cfg.seed),
        n.dim,
        power=n.power,
        scale=n.scale,
        noise_scale=n.noise_scale,
        init_scale=n.init_scale,
    )


def make_lopt(cfg: ml_collections.ConfigDict) -> learned.MLPLOpt:
    """The plain learned optimizer with ``cfg.lopt``'s architecture."""
    return learned.MLPLOpt(
        learned.LOptConfig(
            hidden_sizes=tuple(cfg.lopt.hidden_sizes),
            step_mult=cfg.lopt.step_mult,
            exp_mult=cfg.lopt.exp_mult,
        )
    )


def truncated_config(cfg: ml_collections.ConfigDict) -> truncated.TruncatedConfig:
    """Truncated meta-training settings; the meta-loss is the noiseless NQM loss."""
    t = cfg.train
    return truncated.TruncatedConfig(
        horizon=t.horizon,
        segment=t.segment,
        meta_batch=t.meta_batch,
        batch_size=cfg.batch_size,
        objective="tbt",
        eval_batch_size=None,
        estimator=t.estimator,
        meta_lr=t.meta_lr,
        clip=t.clip,
    )


# -- runs ----------------------------------------------------------------------------------
def run_fn(optimizer: inner.InnerOptimizer, steps: int, batch_size: int):
    """Jitted ``(task, hparams, w0, key) -> (losses (steps+1,), params, states)``.

    ``steps`` noisy inner steps (minibatch ``batch_size``); ``params``/``states`` are the
    points ``z_t = (w_t, s_t)`` before step ``t = 0..steps-1``, losses the noiseless
    ``f(w_0..w_steps)``: a :func:`~l2l_jax.inner.rollout.rollout` recording every step.
    """

    def run(task, hparams, w0, key):
        record = lambda w, s: (w, s, task.loss(w))
        _, (ws, ss, losses) = rollout(
            task, optimizer, hparams, w0, steps, key=key, record=record, batch_size=batch_size
        )
        return losses, *jax.tree.map(lambda x: x[:-1], (ws, ss))

    return jax.jit(run)


def horizon_loss_fn(optimizer: inner.InnerOptimizer, horizon: int, batch_size: int):
    """Jitted ``(task, hparams, w0s, keys) ->`` the mean over runs of the mean of
    ``f(w_1..w_T)`` (the meta-loss over one horizon ``T``)."""
    run = run_fn(optimizer, horizon, batch_size)

    def mean_loss(task, hparams, w0s, keys):
        losses = jax.vmap(lambda w0, k: run(task, hparams, w0, k)[0])(w0s, keys)
        return jnp.mean(losses[:, 1:])

    return jax.jit(mean_loss)


def tuned_baseline(
    optimizer: inner.InnerOptimizer, task, lrs, w0s, keys, horizon: int, batch_size: int
) -> dict:
    """Mean horizon loss of ``optimizer`` at each step size, its best: the library's tuner
    (:func:`l2l_jax.inner.tuning.grid_search`, one jitted ``vmap`` over ``lrs``).

    Every other hyperparameter keeps its default (Adam: ``b1 = 0.9, b2 = 0.999``).
    """
    run = run_fn(optimizer, horizon, batch_size)

    def score(lr, w0s, keys):
        hp = optimizer.hparams(learning_rate=1.0)
        hp = lr if optimizer.hparam_names == ("learning_rate",) else {**hp, "learning_rate": lr}
        losses = jax.vmap(lambda w0, k: run(task, hp, w0, k)[0][1:])(w0s, keys)
        return jnp.mean(losses)

    found = tuning.grid_search(score, lrs, w0s, keys, dtype=task.dtype)
    return {
        "lrs": lrs,
        "mean_loss": found["score"],
        "best_lr": found["best_lr"],
        "best": float(found["score"][found["best_index"]]),
    }


# -- linearizations ------------------------------------------------------------------------
def jacobians_fn(optimizer):
    """Jitted float64 ``(task, hparams, params (n, d), states (n, ...)) -> (n, N, N)``."""

    def many(task, hparams, params, states):
        one = lambda w, s: stability.jacobian(task, optimizer, hparams, w, s)
        return jax.vmap(one)(params, states)

    jitted = jax.jit(many)

    def call(task, hparams, params, states):
        with jax.enable_x64(True):
            args = stability.to_float64((task, hparams, params, states))
            return np.asarray(jitted(*args), np.float64)

    return call


def spectra(jacobians: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (decreasing modulus) and spectral radius of each Jacobian."""
    eig = stability.eigenvalues(jacobians)
    return eig, np.abs(eig[..., 0])


def top_modes(jacobians: np.ndarray, num_params: int) -> dict:
    """Per Jacobian: the eigenvalue of largest modulus and the share of its eigenvector's
    squared norm on the parameters (the rest is on the optimizer's accumulators)."""
    eig, vec = np.linalg.eig(np.asarray(jacobians, np.float64))
    top = np.argmax(np.abs(eig), axis=-1)
    value = np.take_along_axis(eig, top[:, None], axis=-1)[:, 0]
    v = np.take_along_axis(vec, top[:, None, None], axis=-1)[..., 0]
    share = np.sum(np.abs(v[:, :num_params]) ** 2, axis=-1) / np.sum(np.abs(v) ** 2, axis=-1)
    return {"real": value.real, "imag": value.imag, "param_share": share}


def first_step_alignment(task, optimizer, hparams, w0s) -> dict[str, float]:
    """Mean cosine of the first step ``w_1 - w_0`` with ``-w_0`` and with ``-grad f(w_0)``.

    On the NQM the minimizer is ``w = 0`` for every curvature, so a learned optimizer that
    sees the parameters (the ``param`` feature) can step along ``-w`` without the gradient.
    """

    def one(task, hparams, w):  # task and hparams: arguments, not compiled-in constants
        g = task.gradient(w)
        new, _ = optimizer.update(g, optimizer.init(w, hparams), w, hparams)
        step = new - w
        cos = lambda a, b: jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
        return cos(step, -w), cos(step, -g)

    to_w, to_g = jax.jit(jax.vmap(one, in_axes=(None, None, 0)))(task, hparams, w0s)
    return {"minus_w": float(jnp.mean(to_w)), "minus_grad": float(jnp.mean(to_g))}


def take(tree, index):
    return jax.tree.map(lambda x: x[np.asarray(index)], tree)


def trajectory_analysis(task, meta_params, run, jacs, cfg, key) -> dict:
    """Eigenvalues at the analysis points of one noisy run of the learned optimizer.

    ``run = run_fn(opt, steps, batch_size)``, ``jacs = jacobians_fn(opt)`` (compiled once,
    shared with :func:`curvature_sweep`).
    """
    points = np.asarray(cfg.analysis.points)
    losses, ws, ss = run(task, meta_params, task.init_params(), key)
    jac = jacs(task, meta_params, take(ws, points), take(ss, points))
    eig, radius = spectra(jac)
    return {
        "points": points,
        "losses": np.asarray(losses, np.float64),
        "radius": radius,
        "top": top_modes(jac, task.dim),
        "eigenvalues_real": eig.real,
        "eigenvalues_imag": eig.imag,
        "size": jac.shape[-1],
    }


def initial_radius(task, meta_params, opt, jacs, count: int) -> float:
    """``rho`` at ``(w_0, fresh state)``; the point repeated ``count`` times so that the
    compiled ``jacs`` of the analysis points is reused."""
    w0 = task.init_params()
    tile = lambda x: jnp.broadcast_to(x, (count, *jnp.shape(x)))
    state = jax.tree.map(tile, opt.init(w0, meta_params))
    return float(spectra(jacs(task, meta_params, tile(w0), state))[1][0])


def curvature_sweep(task, meta_params, run, jacs, cfg, key) -> dict:
    """Per curvature scale ``c``: a run on the NQM with ``c h``; ``rho`` at the points."""
    scales = log_range("analysis.curvature_scales", cfg.analysis.curvature_scales)
    points = np.asarray(cfg.analysis.points)
    w0 = task.init_params()
    radius, losses = [], []
    for c in scales:
        scaled = task.scaled(float(c))
        loss, ws, ss = run(scaled, meta_params, w0, key)
        radius.append(spectra(jacs(scaled, meta_params, take(ws, points), take(ss, points)))[1])
        losses.append(np.asarray(loss, np.float64))
    radius, losses = np.asarray(radius), np.asarray(losses)
    final = losses[:, -1]
    return {
        "scales": scales,
        "points": points,
        "radius": radius,
        "radius_initial": radius[:, 0],
        "radius_max": radius.max(axis=1),
        "stable_points": (radius <= 1 + cfg.tol).sum(axis=1),
        "loss_initial": losses[:, 0],
        "loss_final": final,
        "loss_ratio": final / losses[:, 0],
        "diverged": ~np.isfinite(final) | (final > losses[:, 0]),
    }


def step_scale_grid(task, lopt, meta_params, cfg) -> stability.StabilityGrid:
    """``rho`` at the initial point for step multipliers ``s`` (rows) x curvature scales."""
    opt = stability.scaled_step(learned.inner_optimizer(lopt))
    step_scales = log_range("analysis.step_scales", cfg.analysis.step_scales)
    curv = log_range("analysis.grid_curvature_scales", cfg.analysis.grid_curvature_scales)
    w0 = task.init_params()
    state = opt.init(w0, {"step_scale": 1.0, "base": meta_params})

    # task, meta-parameters and point are arguments, not constants of the compiled row
    def row(s, task, meta_params, w0, state, curv):
        def one(c):
            hp = {"step_scale": s, "base": meta_params}
            return stability.jacobian(task.scaled(c), opt, hp, w0, state)

        return jax.vmap(one)(curv)

    with jax.enable_x64(True):
        args = stability.to_float64((task, meta_params, w0, state))
        fn, curv64 = jax.jit(row), jnp.asarray(curv)
        radius = np.stack(
            [spectra(np.asarray(fn(jnp.asarray(s), *args, curv64)))[1] for s in step_scales]
        )
    return stability.StabilityGrid(step_scales, curv, radius, cfg.tol)


# -- GD and heavy ball ---------------------------------------------------------------------
def classic_regions(cfg) -> dict[str, tuple[stability.StabilityGrid, float]]:
    """GD and heavy-ball grids with their analytic boundary constants ``eta lambda = b``."""
    etas = log_range("sweep.step_sizes", cfg.sweep.step_sizes)
    lams = log_range("sweep.curvatures", cfg.sweep.curvatures)
    out = {"gd": (stability.stability_grid(inner.gd(), lambda e: e, etas, lams, tol=cfg.tol), 2.0)}
    for beta in cfg.sweep.betas:
        hp = lambda e, b=beta: {"learning_rate": e, "momentum": jnp.asarray(b, e.dtype)}
        grid = stability.stability_grid(inner.momentum(), hp, etas, lams, tol=cfg.tol)
        out[f"momentum_{beta:g}"] = (grid, 2.0 * (1 + beta))
    return out


def boundary_check(grid: stability.StabilityGrid, bound: float) -> dict:
    """Measured boundary (largest stable step per curvature) against ``bound / lambda``."""
    measured = grid.max_stable_step()
    analytic = bound / grid.curvatures
    inside = (analytic > grid.step_sizes[0]) & (analytic < grid.step_sizes[-1])
    ratio = measured[inside] / analytic[inside]
    step = float(np.exp(np.diff(np.log(grid.step_sizes)).max()))
    away = np.abs(np.log(np.outer(grid.step_sizes, grid.curvatures) / bound)) > np.log(step)
    analytic_stable = np.outer(grid.step_sizes, grid.curvatures) <= bound
    return {
        "bound": bound,
        "grid_ratio": step,
        "max_stable_over_analytic_min": float(np.min(ratio)),
        "max_stable_over_analytic_max": float(np.max(ratio)),
        "cells_off_boundary": int(away.sum()),
        "cells_off_boundary_disagreeing": int((grid.stable != analytic_stable)[away].sum()),
    }


# -- the experiment ------------------------------------------------------------------------
def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    """Meta-train, analyse, plot; write ``results.json`` and the figures to ``out``."""
    out = Path(out)
    task, lopt, tcfg = make_task(cfg), make_lopt(cfg), truncated_config(cfg)
    key = jax.random.key(cfg.seed)
    k_train, k_init, k_meta, k_eval, k_traj = jax.random.split(key, 5)
    untrained = lopt.init_meta_params(k_init)
    t0 = time.perf_counter()
    label = "stability meta-training" if progress else False
    res = truncated.meta_train(
        task,
        lopt,
        tcfg,
        cfg.train.meta_steps,
        key=k_train,
        meta_params=untrained,
        progress=label,
    )
    train_time = time.perf_counter() - t0
    meta_params = res.meta_params
    meta_loss = np.asarray([m["meta_loss"] for m in res.metrics], np.float64)

    runs = 16
    w0s = jax.vmap(task.init_params)(jax.random.split(k_meta, runs))
    keys = jax.random.split(k_eval, runs)
    opt = learned.inner_optimizer(lopt)
    horizon = cfg.train.horizon
    base = (w0s, keys, horizon, cfg.batch_size)
    lopt_loss = horizon_loss_fn(opt, horizon, cfg.batch_size)
    tuned = {"sgd": inner.sgd(cfg.batch_size), "adam": inner.adam()}
    unknown = set(cfg.analysis.baselines) - set(tuned)
    if unknown:
        raise ValueError(
            f"analysis.baselines must be a subset of {tuple(tuned)}, got unknown {sorted(unknown)}."
        )
    baseline = {
        name: tuned_baseline(
            tuned[name], task, log_range(f"analysis.{name}_lrs", cfg.analysis[f"{name}_lrs"]), *base
        )
        for name in cfg.analysis.baselines
    }
    baseline.update(
        {
            "lopt": float(lopt_loss(task, meta_params, w0s, keys)),
            "untrained": float(lopt_loss(task, untrained, w0s, keys)),
        }
    )
    alignment = first_step_alignment(task, opt, meta_params, w0s)
    points = _check_points(cfg)
    run_lopt, jacs = run_fn(opt, cfg.analysis.steps, cfg.batch_size), jacobians_fn(opt)
    initial = {
        name: initial_radius(task, mp, opt, jacs, len(points))
        for name, mp in (("trained", meta_params), ("untrained", untrained))
    }
    trajectory = trajectory_analysis(task, meta_params, run_lopt, jacs, cfg, k_traj)
    sweep = curvature_sweep(task, meta_params, run_lopt, jacs, cfg, k_traj)
    grid = step_scale_grid(task, lopt, meta_params, cfg)
    classic = classic_regions(cfg)
    results = {
        "experiment": "stability",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "curvature": np.asarray(task.curvature, np.float64),
        "meta_training": {
            "meta_loss": meta_loss,
            "nonfinite": res.nonfinite_count,
            "time_s": train_time,
        },
        "baseline": baseline,
        "first_step_alignment": alignment,
        "radius_initial": initial,
        "trajectory": trajectory,
        "curvature_sweep": sweep,
        "step_scale_grid": {
            "step_scales": grid.step_sizes,
            "curvature_scales": grid.curvatures,
            "radius": grid.radius,
            "stable": grid.stable,
            "max_stable_step_scale": grid.max_stable_step(),
        },
        "classic": {
            name: {**boundary_check(g, b), "max_stable_step": g.max_stable_step()}
            for name, (g, b) in classic.items()
        },
    }
    results["figures"] = [
        plot_classic(classic, out / "classic_regions.png"),
        plot_trajectory(results, out / "lopt_eigenvalues.png"),
        plot_where_stable(results, grid, out / "lopt_stability.png"),
        plot_meta_training(results, out / "meta_training.png"),
    ]
    common.write_json(out / "results.json", results)
    return common.jsonable(results)
