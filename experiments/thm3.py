"""|F'(eta)| against t: exponential for the last loss (Theorem 3), bounded for the log-loss.

Exact values are mpmath evaluations of Eq. 1 (log-loss) and of ``f(w_t) d/deta log f``
(last loss). Beside them, the library's ``autodiff`` and ``stable`` meta-gradients in
float32 and float64; a non-finite result, or 0 where the exact value is not, is recorded
as a failure (``None`` in ``results.json``).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import mpmath
import numpy as np
from tqdm.auto import tqdm

from experiments import common
from l2l_jax import inner, metagrad
from l2l_jax.closed_forms import reference

PAGE = "experiments/thm3.md"  # the documentation page (experiments/registry.py)
GROUP = "quick"
ORDER = 30


def exact_log10_grad(objective: str, eta: float, lam, coef, t: int) -> float:
    """``log10 |F'(eta)|`` in 50-digit arithmetic."""
    with mpmath.workdps(50):
        dlog = reference.dlog_f(eta, lam, coef, t)
        if objective == "log_loss":
            g = dlog / t
        else:
            g = mpmath.exp(reference.log_f(eta, lam, coef, t)) * dlog
        return float(mpmath.log10(abs(g)))


def theorem3_bound(eta: float, lam, coef, t: int) -> float:
    """``log10`` of Theorem 3's bound: the upper one below 2/L, the lower one above."""
    alpha, L = float(lam[0]), float(lam[-1])
    with mpmath.workdps(50):
        e = mpmath.mpf(eta)
        if eta < 2 / L:
            rate = max(abs(1 - e * alpha), abs(1 - e * L))
            return float(mpmath.log10(t * L**2 * rate ** (2 * t - 1)))
        c1 = mpmath.mpf(float(coef[-1]))
        lower = c1**2 * L**2 * t * (e * L - 1) ** (2 * t - 1) - L**2 * t
        return float(mpmath.log10(lower)) if lower > 0 else float("nan")


def claim2_bound(lam, coef) -> float:
    """``4 L^3 / (c_min^2 alpha (L - alpha))``, Claim 2's bound on the log-loss |F'|."""
    alpha, L = float(lam[0]), float(lam[-1])
    c_min = float(np.min(np.abs(coef)))
    return 4 * L**3 / (c_min**2 * alpha * (L - alpha))


def library_grad(task, objective: str, method: str, eta: float, t: int) -> float | None:
    """The library's F'(eta), or None where it is non-finite."""
    F = metagrad.meta_objective(task, inner.gd(), objective, steps=t, grad=method)
    g = float(jax.grad(F)(jnp.asarray(eta, task.dtype)))
    return g if np.isfinite(g) else None


def run(cfg: ml_collections.ConfigDict, out: Path, progress: bool = True) -> dict:
    """Evaluate every (objective, eta, t) exactly and with every (method, dtype)."""
    task32 = common.quadratic(cfg.task, jnp.float32)
    lam, coef = common.spectrum64(task32)
    L = float(lam[-1])
    etas = {f"{2 * f:g}/L": f * 2 / L for f in cfg.eta_factors}
    curves = []
    combos = list(itertools.product(cfg.objectives, etas.items()))
    bar = tqdm(total=len(combos) * len(cfg.steps), desc="thm3", disable=not progress)
    for objective, (label, eta) in combos:
        curve = {"objective": objective, "eta": eta, "eta_label": label, "t": list(cfg.steps)}
        curve["exact_log10"] = [exact_log10_grad(objective, eta, lam, coef, t) for t in cfg.steps]
        if objective == "last_loss":
            curve["bound_log10"] = [theorem3_bound(eta, lam, coef, t) for t in cfg.steps]
        for method, dtype_name in itertools.product(cfg.methods, cfg.dtypes):
            with jax.enable_x64(dtype_name == "float64"):
                task = task32.astype(common.dtype_of(dtype_name))
                curve[f"{method}_{dtype_name}"] = [
                    library_grad(task, objective, method, eta, t) for t in cfg.steps
                ]
        bar.update(len(cfg.steps))
        curves.append(curve)
    bar.close()
    results = {
        "experiment": "thm3",
        "config": cfg.to_dict(),
        "environment": common.environment(),
        "eigenvalues": lam,
        "coefficients": coef,
        "smoothness": L,
        "claim2_bound": claim2_bound(lam, coef),
        "curves": curves,
    }
    results["checks"] = checks(results)
    results["figures"] = [plot(results, Path(out) / "thm3.png")]
    common.write_json(Path(out) / "results.json", results)
    return common.jsonable(results)


def fails_from(curve: dict, key: str) -> int | None:
    """Smallest t where ``curve[key]`` is non-finite or 0 (while the exact value is not)."""
    for t, g, exact in zip(curve["t"], curve[key], curve["exact_log10"], strict=True):
        if g is None or (g == 0 and np.isfinite(exact)):
            return t
    return None


def checks(results: dict) -> dict:
    """The theorem's statements, checked on the exact values, and where methods fail."""
    out = {"failures_from_t": {}}
    for c in results["curves"]:
        name = f"{c['objective']} eta={c['eta_label']}"
        exact = np.asarray(c["exact_log10"])
        if c["objective"] == "last_loss":
            bound = np.array([np.nan if b is None else b for b in c["bound_log10"]])
            below = c["eta"] < 2 / results["smoothness"]
            has = np.isfinite(bound)  # the lower bound is vacuous (negative) for small t
            out[f"{name}: exact obeys Theorem 3 bound"] = bool(
                np.all(exact[has] <= bound[has] + 1e-9)
                if below
                else np.all(exact[has] >= bound[has] - 1e-9)
            )
            out[f"{name}: log10|F'| change from first to last t"] = float(exact[-1] - exact[0])
        else:
            out[f"{name}: max |F'| <= Claim 2 bound"] = bool(
                np.max(10.0**exact) <= results["claim2_bound"]
            )
        keys = [k for k in c if k.startswith(("autodiff_", "stable_"))]
        out["failures_from_t"][name] = {k: fails_from(c, k) for k in keys}
    return out


def plot(results: dict, path: Path) -> str:
    """Two panels (last loss, log-loss): exact log10|F'| against t, bounds, float32 methods."""
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    titles = {
        "last_loss": r"last loss $f(w_t)$: Theorem 3",
        "log_loss": r"log-loss $\frac{1}{t}\log f(w_t)$: Claim 2",
    }
    colors, labelled = {}, set()
    for c in results["curves"]:
        ax = axes[0 if c["objective"] == "last_loss" else 1]
        t = np.asarray(c["t"])
        color = colors.setdefault(c["eta_label"], f"C{len(colors)}")
        ax.plot(t, c["exact_log10"], "-", color=color, label=f"exact, η = {c['eta_label']}")
        if "bound_log10" in c:
            ax.plot(t, c["bound_log10"], ":", color=color, lw=1)
        for key, marker, fail in (("autodiff_float32", "o", "x"), ("stable_float32", "s", "+")):
            if key not in c:
                continue
            g = np.array([np.nan if v is None or v == 0 else abs(v) for v in c[key]])
            ok = np.isfinite(g)
            name = key.replace("_", " ")
            ax.plot(
                t[ok],
                np.log10(g[ok]),
                marker,
                mfc="none",
                color=color,
                ms=6 if marker == "o" else 9,
                label=f"{name}, η = {c['eta_label']}",
            )
            fail_label = f"{name} non-finite or 0"
            first = np.any(~ok) and (id(ax), fail_label) not in labelled
            labelled.add((id(ax), fail_label))
            ax.plot(
                t[~ok],
                np.asarray(c["exact_log10"])[~ok],
                fail,
                color="r",
                ms=9,
                mew=2,
                label=fail_label if first else None,
            )
    axes[1].axhline(np.log10(results["claim2_bound"]), color="k", ls=":", lw=1)
    for objective, ax in zip(("last_loss", "log_loss"), axes, strict=True):
        ax.set_xscale("linear" if objective == "last_loss" else "log")
        ax.set(xlabel="unroll length t", ylabel=r"$\log_{10} |F'(\eta)|$", title=titles[objective])
        ax.legend(fontsize=7)
    fig.suptitle(
        "solid: exact (mpmath); dotted: the theorems' bounds; markers: the library in "
        "float32; red: that method's F' is non-finite or 0 there",
        fontsize=9,
    )
    fig.tight_layout()
    return common.save_figure(fig, path)


def summarize(results: dict) -> str:
    lines = ["thm3: log10 |F'(eta)| (exact, mpmath) at the smallest and largest t"]
    for c in results["curves"]:
        lines.append(
            f"  {c['objective']:<9} eta = {c['eta_label']:<6} t={c['t'][0]}: "
            f"{c['exact_log10'][0]:8.2f}   t={c['t'][-1]}: {c['exact_log10'][-1]:8.2f}"
        )
    lines.append(
        f"  Claim 2 bound on the log-loss: log10 = {np.log10(results['claim2_bound']):.2f}"
    )
    lines.append("  smallest t where a method's F' is non-finite or 0 (None: never):")
    for name, fails in results["checks"]["failures_from_t"].items():
        lines.append(f"    {name}: " + ", ".join(f"{k}={v}" for k, v in fails.items()))
    return "\n".join(lines)
