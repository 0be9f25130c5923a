"""Train-by-train vs train-by-validation on least squares (Wang et al. 2021, Section 4).

One *setting* (sigma, sample sizes, t) is evaluated the same way in every experiment:

1. sample ``m`` meta-training tasks for each objective: TbT with ``n`` training samples,
   TbV with ``n1 + n2 = n`` split into training and validation (Eq. 3-4);
2. find ``eta*`` of each objective by a grid search over the mean meta-objective, on the
   spectral fast path (:mod:`~l2l_jax.closed_forms.spectral_ls`: one eigendecomposition per task,
   then
   any (eta, t) without unrolling; the truncation of footnote 3 included), then refine it
   by meta-gradient descent (``metagrad.minimize``) from the grid's best point;
3. run GD with each ``eta*`` on ``n_test`` fresh tasks with ``n`` training samples and
   report the test RMSE ``||w_t - w*||`` and the training RMSE (mean, min, max).

Tasks are sampled in chunks inside ``jax.lax.map`` so that only spectra, not the
``n x d`` data matrices of all tasks, are held in memory.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from experiments import common
from l2l_jax import metagrad
from l2l_jax.closed_forms import spectral_ls
from l2l_jax.tasks import LeastSquares


def eta_grid(cfg: ml_collections.ConfigDict) -> np.ndarray:
    """``eta_count`` step sizes log-spaced in ``[eta_min, eta_max]``."""
    return np.geomspace(cfg.eta_min, cfg.eta_max, cfg.eta_count)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 6, 7))
def spectra(key, m: int, d: int, n_train: int, n_valid: int, sigma, dtype, chunk: int = 25):
    """Spectra and ``w*`` of ``m`` tasks, sampled and decomposed ``chunk`` at a time.

    Within a chunk the tasks are a ``vmap`` (fast); chunks run in a ``lax.map`` (memory
    bounded by ``chunk`` data matrices).
    """

    def one(k):
        task = LeastSquares.sample(k, d, n_train, n_valid, sigma, dtype)
        spec = spectral_ls.decompose(task.x_train, task.y_train, task.x_valid, task.y_valid)
        return spec, task.w_star

    chunk = min(chunk, m)
    n_chunks = -(-m // chunk)
    keys = jax.random.split(key, n_chunks * chunk).reshape(n_chunks, chunk)
    out = jax.lax.map(jax.vmap(one), keys)
    return jax.tree.map(lambda a: a.reshape((n_chunks * chunk, *a.shape[2:]))[:m], out)


def setting(
    cfg: ml_collections.ConfigDict, key, *, sigma: float, n: int, t: int | None = None
) -> dict:
    """TbT(n) and TbV(n/2, n/2): eta* by grid search, then test on fresh tasks."""
    t = cfg.t if t is None else t
    dtype = common.dtype_of(cfg.dtype)
    n1 = n // 2
    n2 = n - n1
    radius = cfg.truncation * sigma
    etas = jnp.asarray(eta_grid(cfg), dtype)
    k_tbt, k_tbv, k_test = jax.random.split(key, 3)
    result = {"sigma": sigma, "n": n, "n1": n1, "n2": n2, "t": t, "d": cfg.d}
    specs = {
        "tbt": spectra(k_tbt, cfg.m, cfg.d, n, 0, sigma, dtype)[0],
        "tbv": spectra(k_tbv, cfg.m, cfg.d, n1, n2, sigma, dtype)[0],
    }
    test_specs, w_star = spectra(k_test, cfg.n_test, cfg.d, n, 0, sigma, dtype)
    for name, spec in specs.items():
        grid_best, values = spectral_ls.grid_search(spec, etas, t, radius, objective=name)
        grid_best = float(grid_best)
        best, source, trace = grid_best, "grid", None
        if cfg.refine_steps:
            best, trace = refine(spec, grid_best, t, radius, name, cfg.refine_steps, cfg.refine_lr)
            source = "meta_gd" if best != grid_best else "grid"
        err = jax.vmap(lambda s, w, e=best: spectral_ls.test_error(s, w, e, t, radius))(
            test_specs, w_star
        )
        train = jax.vmap(lambda s, e=best: spectral_ls.tbt_loss(s, e, t, radius))(test_specs)
        test_rmse, train_rmse = np.sqrt(np.asarray(err)), np.sqrt(2 * np.asarray(train))
        at_edge = grid_best in (float(etas[0]), float(etas[-1]))
        result.update(
            {
                f"eta_star_{name}": best,
                f"eta_star_{name}_source": source,
                f"eta_grid_best_{name}": grid_best,
                f"eta_star_{name}_at_grid_edge": at_edge,
                f"meta_gd_{name}": trace,
                f"meta_objective_{name}": np.asarray(values),
                f"test_rmse_{name}": float(test_rmse.mean()),
                f"test_rmse_{name}_range": [float(test_rmse.min()), float(test_rmse.max())],
                f"test_error_{name}": float(np.mean(np.asarray(err))),
                f"train_rmse_{name}": float(train_rmse.mean()),
                f"train_rmse_{name}_range": [float(train_rmse.min()), float(train_rmse.max())],
            }
        )
    return result


_LOSSES = {"tbt": spectral_ls.tbt_loss, "tbv": spectral_ls.tbv_loss}


def refine(specs, eta0: float, t: int, radius: float, name: str, steps: int, lr: float):
    """Meta-gradient descent from the grid's best step size (``metagrad.minimize``).

    Adam on ``u = log eta`` (keeps ``eta > 0``) over the mean meta-objective of the
    batch, differentiated through the spectral closed form. The objective is only
    piecewise smooth (it jumps where the truncation step changes), so the result is the
    best iterate of the run, the start included: never worse than the grid.

    Returns ``(eta, trace)`` with ``trace`` the meta-objective and ``eta`` per meta-step.
    """
    loss = _LOSSES[name]

    def mean_objective(u):
        return jnp.mean(jax.vmap(lambda s: loss(s, jnp.exp(u), t, radius))(specs))

    u0 = jnp.log(jnp.asarray(eta0, specs.coords.dtype))
    run = metagrad.minimize(mean_objective, u0, optax.adam(lr), steps, progress=False)
    values = np.asarray(run.values, np.float64)
    etas = np.exp(np.asarray(run.trajectory[:-1], np.float64))
    k = int(np.nanargmin(values))
    return float(etas[k]), {"objective": values, "eta": etas, "nonfinite": run.nonfinite_count}


def base_results(name: str, cfg: ml_collections.ConfigDict, settings: list[dict]) -> dict:
    """The fields every least-squares results file has."""
    return {
        "experiment": name,
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "eta_grid": eta_grid(cfg),
        "settings": settings,
    }


def rmse_panels(plt, settings: list[dict], x_key: str, x_label: str, log_x: bool = False):
    """Two panels (train RMSE, test RMSE) of TbT and TbV against ``x_key``, with ranges."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = np.array([s[x_key] for s in settings], float)
    for ax, kind in zip(axes, ("train", "test"), strict=True):
        for name, label, color in (("tbt", "train-by-train", "C3"), ("tbv", "train-by-val.", "C0")):
            mean = np.array([s[f"{kind}_rmse_{name}"] for s in settings])
            lo, hi = np.array([s[f"{kind}_rmse_{name}_range"] for s in settings]).T
            ax.plot(x, mean, "o-", color=color, label=label)
            ax.fill_between(x, lo, hi, color=color, alpha=0.15)
        ax.set(
            xlabel=x_label,
            ylabel=f"{kind} RMSE",
            title=f"{kind} RMSE (band: range over test tasks)",
        )
        if log_x:
            log_ticks(ax, x)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def log_ticks(ax, values) -> None:
    """Log-scaled x axis labelled at ``values`` only (no overlapping minor labels)."""
    ax.set_xscale("log")
    ax.set_xticks(list(values), [f"{v:g}" for v in values])
    ax.tick_params(axis="x", which="minor", labelbottom=False)


def table(settings: list[dict], x_key: str) -> str:
    """Markdown: one row per setting."""
    lines = [
        f"| {x_key} | η*_TbT | η*_TbV | test RMSE TbT | test RMSE TbV | train RMSE TbT | "
        "train RMSE TbV |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in settings:
        lines.append(
            f"| {s[x_key]:g} | {s['eta_star_tbt']:.3g} | {s['eta_star_tbv']:.3g} | "
            f"{s['test_rmse_tbt']:.3f} | {s['test_rmse_tbv']:.3f} | {s['train_rmse_tbt']:.3f} | "
            f"{s['train_rmse_tbv']:.3f} |"
        )
    return "\n".join(lines)


def sweep_settings(cfg, values, label: str, progress: bool, make) -> list[dict]:
    """``make(key, value)`` for each value, with one shared key (common random numbers:
    the same ``x``, ``w*`` and standard noise in every setting, so differences come from
    the swept quantity alone) and a progress bar."""
    key = jax.random.key(cfg.seed)
    out = []
    for v in tqdm(values, desc=label, disable=not progress):
        out.append(make(key, v))
    return out


def sample_size_sweep(cfg, label: str, progress: bool) -> list[dict]:
    """Settings for ``n = r * d``, ``r`` in ``cfg.n_over_d``, at ``cfg.sigma`` (fig3, thm6)."""
    ns = [round(r * cfg.d) for r in cfg.n_over_d]
    return sweep_settings(
        cfg, ns, label, progress, lambda key, n: setting(cfg, key, sigma=cfg.sigma, n=n)
    )


def finish(name: str, cfg, out, settings: list[dict], x_key: str, checks: dict, fig) -> dict:
    """Write ``results.json``, ``table.md``, ``summary.txt``-ready fields and the figure."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = base_results(name, cfg, settings)
    results["checks"] = checks
    results["table"] = table(settings, x_key)
    results["figures"] = [common.save_figure(fig, out / f"{name}.png")]
    return common.save_results(out, results)


def summary(results: dict) -> str:
    """The table and the checks, one screen."""
    lines = [
        f"{results['experiment']}: d = {results['config']['d']}, "
        f"t = {results['config']['t']}, m = {results['config']['m']} tasks per objective",
        results["table"],
        "",
    ]
    lines += [f"  {k}: {v}" for k, v in results["checks"].items()]
    return "\n".join(lines)
