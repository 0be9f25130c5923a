"""The meta-gradient methods' table: time, compile time, memory and accuracy per method and t.

For each method (``stable``, ``forward``, ``autodiff``) and unroll length ``t`` of a
preset, on ``tasks.Quadratic.random(key(0), dim, scale=0.5)`` with ``inner.gd()`` and
``objectives.log_loss()``, this measures ``jax.jit(jax.value_and_grad(F))`` at one step
size ``eta``:

* compile time: ``jax.jit(fn).lower(eta)`` plus ``.compile()`` (ahead of time);
* run time: median and min over repeats (samples) of the compiled call, with
  ``jax.block_until_ready`` after every call, after one warm-up call; a sample of a fast
  call averages enough back-to-back calls to last ``timing.MIN_SAMPLE_S``; the cells of one
  (dtype, task) are timed round-robin (one sample each per round) so that load on a
  shared machine affects them alike, and ratios between them are measured side by side;
* memory: ``compiled.memory_analysis()`` (XLA's static estimate; ``peak_bytes`` is
  argument + output + temp - alias bytes) and, on GPU/TPU, the device's process-wide
  ``peak_bytes_in_use``;
* accuracy: relative error of the value and the meta-gradient against the mpmath
  reference (:mod:`l2l_jax.closed_forms.reference`), in float32 and, under a scoped
  ``jax.enable_x64(True)``, float64.

:mod:`benchmarks.run` writes these tables first, then the groups' sections.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, timing
from l2l_jax import inner, metagrad, objectives, tasks
from l2l_jax.closed_forms import reference

METHODS = ("stable", "forward", "autodiff")
# Stable's run time at the largest t over its time at the smallest t: "flat" within this
# band (timings of a call this short on a shared machine are noisy).
FLAT_BAND = (2 / 3, 1.5)


@dataclasses.dataclass(frozen=True)
class Case:
    """One task: ``Quadratic.random(key(0), dim, scale=0.5)`` at step size ``eta``.

    ``eta=None`` means ``0.8 * 2 / L`` of that task (GD converges, autodiff stays finite
    at moderate t), for dimensions whose smoothness ``L`` is not known in advance.
    """

    dim: int
    eta: float | None = None


@dataclasses.dataclass(frozen=True)
class Preset:
    """What to run: unroll lengths, tasks, dtypes, repeats and a per-cell time budget.

    ``cell_budget_s`` caps the timed repeats of one cell: a cell whose single call takes
    longer than ``cell_budget_s / repeats`` gets fewer repeats (never fewer than one).
    """

    name: str
    steps: tuple[int, ...]
    cases: tuple[Case, ...]
    dtypes: tuple[str, ...]
    repeats: int
    cell_budget_s: float = 10.0
    methods: tuple[str, ...] = METHODS


PRESETS: dict[str, Preset] = {
    "cpu-small": Preset(
        name="cpu-small",
        steps=(10, 100, 1_000, 10_000, 100_000),
        cases=(Case(dim=20, eta=0.03),),
        dtypes=("float32", "float64"),
        repeats=50,
    ),
    "accelerator": Preset(
        name="accelerator",
        steps=(10, 100, 1_000, 10_000, 100_000),
        cases=(Case(dim=20, eta=0.03), Case(dim=1_000)),
        dtypes=("float32",),
        repeats=50,
        cell_budget_s=20.0,
    ),
    "smoke": Preset(
        name="smoke",
        steps=(10, 100),
        cases=(Case(dim=20, eta=0.03),),
        dtypes=("float32", "float64"),
        repeats=1,
        cell_budget_s=1.0,
    ),
}


# -- one cell ---------------------------------------------------------------------------


def build_task(dim: int, dtype: str) -> tasks.Quadratic:
    """The benchmark task; float64 is the float32 instance cast up (call under x64)."""
    task = tasks.Quadratic.random(jax.random.key(0), dim=dim, scale=0.5, dtype=jnp.float32)
    return task if dtype == "float32" else task.astype(jnp.dtype(dtype))


def step_size(case: Case, task: tasks.Quadratic) -> float:
    """The case's ``eta``, or ``0.8 * 2 / L`` when it has none."""
    return case.eta if case.eta is not None else 1.6 / float(task.smoothness)


def reference_value_and_grad(task: tasks.Quadratic, eta: float, steps: int) -> tuple[float, float]:
    """mpmath ``F(eta)`` and ``F'(eta)`` for the task's spectrum (taken exactly)."""
    lam = np.asarray(task.eigenvalues, np.float64)
    coef = np.asarray(task.coefficients, np.float64)
    return (
        float(reference.log_loss(eta, lam, coef, steps)),
        float(reference.log_loss_grad(eta, lam, coef, steps)),
    )


def relative_error(x: float, ref: float) -> float | None:
    """``|x - ref| / |ref|``, or ``None`` when ``x`` is not finite."""
    if not math.isfinite(x):
        return None
    return abs(x - ref) / abs(ref) if ref != 0 else abs(x)


def memory_fields(compiled: Any) -> dict[str, int | None]:
    """XLA's memory estimate of a compiled function, every integer field it reports.

    ``peak_bytes`` = argument + output + temp - alias bytes. XLA's own
    ``peak_memory_in_bytes`` is kept too but, on CPU at least, it does not count the
    buffers a ``while`` loop (the scan) keeps for reverse mode, so it is not used.
    """
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {"peak_bytes": None}
    fields = {
        name: int(getattr(analysis, name))
        for name in dir(analysis)
        if not name.startswith("_") and isinstance(getattr(analysis, name, None), int)
    }
    fields["peak_bytes"] = common.xla_peak_bytes(compiled)
    return fields


def device_peak_bytes() -> int | None:
    """``peak_bytes_in_use`` of device 0 (process-wide high-water mark); None on CPU."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def compile_cell(task: tasks.Quadratic, eta: float, method: str, steps: int) -> timing.Timed:
    """``jax.jit(jax.value_and_grad(F)).lower(eta).compile()``, timed, warmed up; named
    ``"<method>/<t>"``."""
    f = metagrad.meta_objective(task, inner.gd(), objectives.log_loss(), steps=steps, grad=method)
    return timing.compile_timed(
        f"{method}/{steps}", jax.value_and_grad(f), jnp.asarray(eta, task.dtype)
    )


def cell_record(cell: timing.Timed, task: tasks.Quadratic, eta: float) -> dict[str, Any]:
    """A timed cell as a JSON-ready dict, with its memory and its error vs the reference."""
    value, grad = (float(v) for v in cell.out)
    method, steps = cell.name.split("/")
    ref_value, ref_grad = reference_value_and_grad(task, eta, int(steps))
    return {
        "method": method,
        "t": int(steps),
        "lower_s": cell.lower_s,
        "xla_compile_s": cell.xla_compile_s,
        "warmup_ms": 1e3 * cell.warm_s,
        **cell.summary(),
        "memory": memory_fields(cell.fn),
        "device_peak_bytes_in_use": device_peak_bytes(),
        "value": value if math.isfinite(value) else str(value),
        "grad": grad if math.isfinite(grad) else str(grad),
        "value_finite": math.isfinite(value),
        "grad_finite": math.isfinite(grad),
        "ref_value": ref_value,
        "ref_grad": ref_grad,
        "value_rel_err": relative_error(value, ref_value),
        "grad_rel_err": relative_error(grad, ref_grad),
    }


# -- the sweep --------------------------------------------------------------------------


def measure_group(
    preset: Preset, dtype: str, case: Case, repeats: int, progress: bool
) -> list[dict[str, Any]]:
    """All (method, t) cells of one dtype and task: compile each, then time them together."""
    from tqdm.auto import tqdm

    label = f"{preset.name} {dtype} d={case.dim}"
    with jax.enable_x64(dtype == "float64"):
        task = build_task(case.dim, dtype)
        eta = step_size(case, task)
        todo = [(m, t) for m in preset.methods for t in preset.steps]
        compiled = []
        for method, steps in tqdm(todo, desc=f"compile {label}", disable=not progress):
            compiled.append(compile_cell(task, eta, method, steps))
        timing.time_rounds(compiled, repeats, preset.cell_budget_s, f"time {label}", progress)
        records = [cell_record(c, task, eta) for c in compiled]
    return [{"dtype": dtype, "dim": case.dim, "eta": eta, **r} for r in records]


def measure_all(preset: Preset, repeats: int, progress: bool = True) -> list[dict[str, Any]]:
    """Every (dtype, dim, method, t) cell of the preset, in that order."""
    cells = []
    for dtype in preset.dtypes:
        for case in preset.cases:
            cells += measure_group(preset, dtype, case, repeats, progress)
    return cells


def _key(cell: dict[str, Any]) -> tuple[str, int]:
    return cell["dtype"], cell["dim"]


def add_ratios(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set each cell's ``ratio_to_first_t``; return the per-t method ratios.

    ``ratio_to_first_t`` is the median run time over the same method's at the smallest t;
    the method ratios are ``forward/stable`` and ``autodiff/stable`` median run times.
    """
    by = {(*_key(c), c["method"], c["t"]): c for c in cells}
    for cell in cells:
        first_t = min(c["t"] for c in cells if _key(c) == _key(cell))
        base = by[(*_key(cell), cell["method"], first_t)]["run_ms_median"]
        cell["ratio_to_first_t"] = cell["run_ms_median"] / base
        base_min = by[(*_key(cell), cell["method"], first_t)]["run_ms_min"]
        cell["min_ratio_to_first_t"] = cell["run_ms_min"] / base_min
    ratios = []
    for (dtype, dim, method, steps), cell in by.items():
        if method != "stable":
            continue
        row = {"dtype": dtype, "dim": dim, "t": steps}
        for other in ("forward", "autodiff"):
            if (dtype, dim, other, steps) in by:
                row[f"{other}/stable"] = (
                    by[(dtype, dim, other, steps)]["run_ms_median"] / cell["run_ms_median"]
                )
        ratios.append(row)
    return ratios


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (dtype, dim): each method's time and memory ratio, largest t over smallest t."""
    out = []
    for key in dict.fromkeys(_key(c) for c in cells):
        group = [c for c in cells if _key(c) == key]
        t_min, t_max = min(c["t"] for c in group), max(c["t"] for c in group)
        row: dict[str, Any] = {"dtype": key[0], "dim": key[1], "t_min": t_min, "t_max": t_max}
        for method in dict.fromkeys(c["method"] for c in group):
            lo = next(c for c in group if c["method"] == method and c["t"] == t_min)
            hi = next(c for c in group if c["method"] == method and c["t"] == t_max)
            finite = [
                c["value_finite"] and c["grad_finite"] for c in group if c["method"] == method
            ]
            row[method] = {
                "time_ratio": hi["run_ms_median"] / lo["run_ms_median"],
                "min_time_ratio": hi["run_ms_min"] / lo["run_ms_min"],
                "memory_ratio": common.ratio(
                    hi["memory"]["peak_bytes"], lo["memory"]["peak_bytes"]
                ),
                "all_finite": all(finite),
            }
        out.append(row)
    return out


# -- outputs ----------------------------------------------------------------------------


def _fmt_ratio(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x >= 10 else f"{x:.2f}"


def _finite_mark(cell: dict[str, Any]) -> str:
    if cell["value_finite"] and cell["grad_finite"]:
        return "yes"
    return f"no (value {cell['value']}, grad {cell['grad']})"


def flatness_claim(summary: dict[str, Any]) -> str:
    """One honest sentence about stable's (and the unrolls') time growth in t."""
    t_min, t_max = summary["t_min"], summary["t_max"]
    parts = []
    if "stable" in summary:
        r = summary["stable"]["time_ratio"]
        lo, hi = FLAT_BAND
        verdict = (
            f"flat in t, as expected (within the noise band {lo:.2f}-{hi:.2f})"
            if lo <= r <= hi
            else f"NOT flat on this run (outside the noise band {lo:.2f}-{hi:.2f})"
        )
        parts.append(
            f"**stable**: median run time at t = {t_max:,} is **{r:.2f}×** its median at "
            f"t = {t_min:,} (fastest sample: {summary['stable']['min_time_ratio']:.2f}×): "
            f"{verdict}; it has no unroll, so its cost does not depend on t."
        )
    for method in ("forward", "autodiff"):
        if method in summary:
            s = summary[method]
            parts.append(
                f"**{method}**: {_fmt_ratio(s['time_ratio'])}× the time (memory estimate "
                f"{_fmt_ratio(s['memory_ratio'])}×) from t = {t_min:,} to t = {t_max:,}."
            )
    return " ".join(parts)


def render_markdown(results: dict[str, Any], image: str | None, heading: str = "##") -> str:
    """The results as markdown: environment, one table per (dtype, dim), ratios, plot."""
    env, cells = results["environment"], results["cells"]
    lines = [
        f"Preset `{env['preset']}`, {env['date_utc']}: {env['backend']} "
        f"({env['device_kind']} × {env['device_count']}, {env['cpus_usable']} usable CPUs), "
        f"jax {env['jax']}, jaxlib {env['jaxlib']}, optax {env['optax']}, "
        f"Python {env['python']}, commit `{(env['git_commit'] or 'unknown')[:10]}`. "
        f"Bench wall time {results['wall_time_s']:.0f} s.",
        "",
        "Run time is the median over the repeats of `jit(value_and_grad(F))(eta)`; peak bytes "
        "is XLA's estimate (arguments + outputs + temporaries); errors are relative to the "
        "mpmath reference; `–` means not finite.",
        "",
    ]
    for summary in results["summary"]:
        key = (summary["dtype"], summary["dim"])
        group = [c for c in cells if _key(c) == key]
        lines += [
            f"{heading} {key[0]}, d = {key[1]}, eta = {group[0]['eta']:.4g}",
            "",
            flatness_claim(summary),
            "",
            "| method | t | compile s | run ms (median) | ratio to t=10 | peak bytes "
            "| value rel err | grad rel err | finite |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        if summary["t_min"] != 10:
            lines[-2] = lines[-2].replace("t=10", f"t={summary['t_min']}")
        for c in group:
            lines.append(
                f"| {c['method']} | {c['t']:,} | {c['compile_s']:.2f} | {c['run_ms_median']:.3g} "
                f"| {_fmt_ratio(c['ratio_to_first_t'])} "
                f"| {timing.fmt_bytes(c['memory']['peak_bytes'])} "
                f"| {common.fmt(c['value_rel_err'], '.1e')} "
                f"| {common.fmt(c['grad_rel_err'], '.1e')} "
                f"| {_finite_mark(c)} |"
            )
        ratios = [r for r in results["method_ratios"] if (r["dtype"], r["dim"]) == key]
        lines += ["", "| t | forward / stable time | autodiff / stable time |", "|---:|---:|---:|"]
        for r in ratios:
            fwd, auto = r.get("forward/stable"), r.get("autodiff/stable")
            lines.append(f"| {r['t']:,} | {_fmt_ratio(fwd)} | {_fmt_ratio(auto)} |")
        lines.append("")
    if image:
        lines += [f"![Run time and memory vs t per method]({image})", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    """Log-log run time vs t and memory vs t, one line per method (and dtype, dim)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"stable": "tab:green", "forward": "tab:blue", "autodiff": "tab:red"}
    styles = {"float32": "-", "float64": "--"}
    markers = "osD^v"
    dims = sorted({c["dim"] for c in results["cells"]})
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    groups = dict.fromkeys((c["dtype"], c["dim"], c["method"]) for c in results["cells"])
    marked_bad = False
    for dtype, dim, method in groups:
        group = [
            c
            for c in results["cells"]
            if (c["dtype"], c["dim"], c["method"]) == (dtype, dim, method)
        ]
        ts = [c["t"] for c in group]
        style = {
            "color": colors.get(method),
            "linestyle": styles.get(dtype, ":"),
            "marker": markers[dims.index(dim) % len(markers)],
            "label": f"{method} {dtype}" + (f" d={dim}" if len(dims) > 1 else ""),
        }
        times = [c["run_ms_median"] for c in group]
        memory = [c["memory"]["peak_bytes"] or np.nan for c in group]
        ax_t.plot(ts, times, **style)
        ax_m.plot(ts, memory, **style)
        bad = [i for i, c in enumerate(group) if not (c["value_finite"] and c["grad_finite"])]
        label = None if (not bad or marked_bad) else "value/grad not finite"
        marked_bad = marked_bad or bool(bad)
        for ax, ys in ((ax_t, times), (ax_m, memory)):
            xs_bad, ys_bad = [ts[i] for i in bad], [ys[i] for i in bad]
            ax.scatter(xs_bad, ys_bad, marker="x", color="k", s=60, zorder=3, label=label)
    for ax, ylabel in ((ax_t, "run time per value+grad (ms, median)"), (ax_m, "peak bytes (XLA)")):
        ax.set(xscale="log", yscale="log", xlabel="unroll length t", ylabel=ylabel)
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax_m.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] == "value/grad not finite")
    ax_m.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8)
    env = results["environment"]
    fig.suptitle(f"l2l_jax meta-gradient benchmark: {env['preset']} on {env['device_kind']}")
    fig.savefig(path, dpi=120)
    plt.close(fig)
