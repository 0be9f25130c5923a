"""Peak memory and compile time of meta-gradients through long unrolls, with and without
checkpointing.

The meta-objective: the final training loss of ``t`` steps of minibatch SGD (minibatch
32) on the MNIST task's MLP 784-100-20-10 (synthetic inputs of MNIST's shapes, so no
dataset is needed), as a function of the step size,

    F = metagrad.meta_objective(task, inner.sgd(batch_size=32), "last_loss", steps=t,
                            grad=method, key=key, remat=remat)
    fn = jax.jit(jax.value_and_grad(F))

for three methods: ``autodiff`` (reverse mode through the ``lax.scan`` unroll, which
stores every step's residuals), ``autodiff+remat`` (the same with ``remat=True``: the scan
in segments of ``ceil(sqrt(t))`` steps under :func:`jax.checkpoint`) and ``forward``
(forward mode, for reference: no residuals).

* **Memory** is XLA's static estimate of the compiled function (``memory_analysis()``:
  argument + output + temporary bytes), so it is known without running: the unchecked
  reverse mode at ``t = 10^4`` would need gigabytes.
* **Compile time** (``lower`` + XLA compile) is measured for every cell in
  ``compile_rounds`` rounds, each compiling fresh functions in a shuffled order; the
  median is reported (a ``lax.scan`` keeps the program the same size for every ``t``).
* **Run time** is measured where every method runs (``time_at``), the methods side by
  side in interleaved rounds (:mod:`benchmarks.timing`), and reported as ratios to the
  unchecked reverse mode.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, timing
from l2l_jax import inner, metagrad
from l2l_jax.tasks import MnistMLP

# method name -> (grad=, remat=) of metagrad.meta_objective
METHODS: dict[str, tuple[str, Any]] = {
    "autodiff": ("autodiff", None),
    "autodiff+remat": ("autodiff", True),
    "forward": ("forward", None),
}
BASELINE = "autodiff"
CHECKPOINTED = "autodiff+remat"
# The checkpointed reverse mode's targets: memory >= 10x below the unchecked one's at the
# largest t, run time < 2x its, and compile time at the largest t <= 1.5x that at the smallest.
MEMORY_TARGET, TIME_TARGET, COMPILE_TARGET = 10.0, 2.0, 1.5


@dataclasses.dataclass(frozen=True)
class MemoryPreset:
    """Sizes: the MLP's ``sizes``, ``n`` synthetic training rows, minibatch ``batch``;
    unroll lengths ``steps`` (memory and compile time), ``time_at`` (run time, every
    method), ``compile_rounds`` compiles per cell, ``repeats``/``budget_s`` timing,
    ``methods`` (a subset of :data:`METHODS` holding autodiff and autodiff+remat)."""

    sizes: tuple[int, ...] = (784, 100, 20, 10)
    n: int = 1000
    batch: int = 32
    eta: float = 0.1
    steps: tuple[int, ...] = (10, 100, 1_000, 10_000)
    time_at: tuple[int, ...] = (100, 1_000)
    compile_rounds: int = 2
    repeats: int = 7
    budget_s: float = 15.0
    methods: tuple[str, ...] = tuple(METHODS)


PRESETS: dict[str, MemoryPreset] = {
    "cpu-small": MemoryPreset(),
    "accelerator": MemoryPreset(time_at=(100, 1_000, 10_000), compile_rounds=3, repeats=10),
    "smoke": MemoryPreset(
        sizes=(784, 8, 10),
        n=64,
        steps=(10, 1_000),
        time_at=(10,),
        compile_rounds=1,
        repeats=1,
        budget_s=1.0,
        methods=(BASELINE, CHECKPOINTED),
    ),
}


def value_and_grad_fn(task: MnistMLP, preset: MemoryPreset, method: str, steps: int):
    """A fresh ``value_and_grad`` of the final-loss meta-objective for ``method``."""
    grad, remat = METHODS[method]
    f = metagrad.meta_objective(
        task,
        inner.sgd(batch_size=preset.batch),
        "last_loss",
        steps=steps,
        grad=grad,
        key=jax.random.key(2),
        remat=remat,
    )
    return jax.value_and_grad(f)


def peak_bytes(compiled: Any) -> dict[str, int | None]:
    """XLA's estimate: argument + output + temp - alias bytes, and the temp bytes."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return {"peak_bytes": None, "temp_bytes": None}
    temp = int(analysis.temp_size_in_bytes)
    return {"peak_bytes": common.xla_peak_bytes(compiled), "temp_bytes": temp}


def compile_cells(
    preset: MemoryPreset, task: MnistMLP, progress: bool
) -> dict[tuple[str, int], list[timing.Timed]]:
    """Every (method, t) compiled ``compile_rounds`` times, in a shuffled order per round."""
    from tqdm.auto import tqdm

    eta = jnp.asarray(preset.eta)
    todo = [(m, t) for m in preset.methods for t in preset.steps]
    cells: dict[tuple[str, int], list[timing.Timed]] = {key: [] for key in todo}
    rng = np.random.default_rng(0)
    total = preset.compile_rounds * len(todo)
    with tqdm(total=total, desc="compile memory", disable=not progress) as bar:
        for _ in range(preset.compile_rounds):
            for i in rng.permutation(len(todo)):
                method, steps = todo[i]
                fn = value_and_grad_fn(task, preset, method, steps)
                cells[todo[i]].append(
                    timing.compile_only(f"{method}/{steps}", fn, eta, jit=jax.jit)
                )
                bar.update()
    return cells


def time_cells(
    preset: MemoryPreset, compiled: dict[tuple[str, int], list[timing.Timed]], progress: bool
) -> dict[tuple[str, int], timing.Timed]:
    """The methods at each ``time_at`` t, timed side by side (one t at a time)."""
    timed = {}
    for steps in preset.time_at:
        group = [timing.warm_up(compiled[(m, steps)][0]) for m in preset.methods]
        desc = f"time memory t={steps}"
        timing.time_rounds(group, preset.repeats, preset.budget_s, desc, progress)
        timed.update({(m, steps): c for m, c in zip(preset.methods, group, strict=True)})
    return timed


def measure(preset: MemoryPreset, progress: bool = True) -> dict[str, Any]:
    """Compile every cell (memory, compile time), time the ``time_at`` cells, ratios."""
    task = common.mnist_like_task(preset.sizes, preset.n)
    compiled = compile_cells(preset, task, progress)
    timed = time_cells(preset, compiled, progress)
    rows = []
    for (method, steps), cells in compiled.items():
        row: dict[str, Any] = {
            "method": method,
            "t": steps,
            "segment": meta_segment(method, steps),
            "compile_s": statistics.median(c.compile_s for c in cells),
            "compile_s_all": [c.compile_s for c in cells],
            "lower_s": statistics.median(c.lower_s for c in cells),
            "xla_compile_s": statistics.median(c.xla_compile_s for c in cells),
            **peak_bytes(cells[0].fn),
        }
        if (method, steps) in timed:
            cell = timed[(method, steps)]
            value, grad = (float(x) for x in cell.out)
            row.update(cell.summary(), warmup_ms=1e3 * cell.warm_s, value=value, grad=grad)
            row["compile_s"] = statistics.median(c.compile_s for c in cells)
        rows.append(row)
    add_ratios(rows)
    return {"settings": dataclasses.asdict(preset), "rows": rows, "summary": summarize(rows)}


def meta_segment(method: str, steps: int) -> int | None:
    """The remat segment length the method uses at ``t = steps`` (None: no remat)."""
    from l2l_jax.inner.unroll import remat_segment

    return remat_segment(METHODS[method][1], steps)


def _index(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["method"], r["t"]): r for r in rows}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's memory and run time over the unchecked reverse mode's at the same t,
    and its compile time over its own at the smallest t."""
    by = _index(rows)
    t_min = min(r["t"] for r in rows)
    for row in rows:
        base = by[(BASELINE, row["t"])]
        row["memory_vs_autodiff"] = common.ratio(row["peak_bytes"], base["peak_bytes"])
        if "run_ms_median" in row and "run_ms_median" in base:
            row["time_vs_autodiff"] = row["run_ms_median"] / base["run_ms_median"]
        row["compile_vs_first_t"] = row["compile_s"] / by[(row["method"], t_min)]["compile_s"]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The acceptance numbers: memory reduction at the largest t, time cost of remat at
    each timed t, compile time at the largest t over the smallest, per method."""
    by = _index(rows)
    t_max, t_min = max(r["t"] for r in rows), min(r["t"] for r in rows)
    base, ckpt = by[(BASELINE, t_max)], by[(CHECKPOINTED, t_max)]
    reduction = common.ratio(base["peak_bytes"], ckpt["peak_bytes"])
    times = {
        r["t"]: r["time_vs_autodiff"]
        for r in rows
        if r["method"] == CHECKPOINTED and "time_vs_autodiff" in r
    }
    methods = dict.fromkeys(r["method"] for r in rows)
    compile_ratio = {m: by[(m, t_max)]["compile_vs_first_t"] for m in methods}
    return {
        "t_max": t_max,
        "t_min": t_min,
        "memory_reduction_at_t_max": reduction,
        "memory_ok": reduction is not None and reduction >= MEMORY_TARGET,
        "remat_time_ratio": times,
        "time_ok": bool(times) and all(r < TIME_TARGET for r in times.values()),
        "compile_ratio_t_max_over_t_min": compile_ratio,
        "compile_ok": all(r <= COMPILE_TARGET for r in compile_ratio.values()),
    }


# -- outputs ------------------------------------------------------------------------------


def claim(section: dict[str, Any]) -> str:
    """The acceptance sentence: memory reduction, time cost, compile-time growth."""
    s = section["summary"]
    times = ", ".join(f"{r:.2f}× at t = {t:,}" for t, r in sorted(s["remat_time_ratio"].items()))
    compile_ratio = ", ".join(
        f"{m} {r:.2f}×" for m, r in s["compile_ratio_t_max_over_t_min"].items()
    )
    verdict = lambda ok: "meets" if ok else "MISSES"
    return (
        f"checkpointed reverse mode at t = {s['t_max']:,}: peak memory "
        f"{common.fmt(s['memory_reduction_at_t_max'], '.0f')}× below the unchecked one "
        f"({verdict(s['memory_ok'])} the ≥{MEMORY_TARGET:.0f}× target); run time {times} "
        f"({verdict(s['time_ok'])} the <{TIME_TARGET:.0f}× target); compile time at "
        f"t = {s['t_max']:,} over t = {s['t_min']:,}: {compile_ratio} "
        f"({verdict(s['compile_ok'])} the ≤{COMPILE_TARGET}× target)."
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The memory/compile section: settings, claim, one row per (method, t)."""
    st = section["settings"]
    lines = [
        f"{heading} memory and compile time against t",
        "",
        f"`jit(value_and_grad(F))` of the final training loss after t SGD steps (minibatch "
        f"{st['batch']}, step size {st['eta']}) on the MLP {'-'.join(map(str, st['sizes']))} "
        f"({st['n']} synthetic rows). autodiff+remat: `remat=True` (segments of "
        "ceil(√t) steps under `jax.checkpoint`). Peak bytes: XLA's static estimate of the "
        "compiled function (arguments + outputs + temporaries), so cells are compiled, not "
        "run, where the unchecked reverse mode would not fit. Compile s: median over "
        f"{st['compile_rounds']} fresh compiles per cell (shuffled order). Run times: "
        f"interleaved rounds at t in {list(st['time_at'])}; ratios are to unchecked "
        "autodiff at the same t, measured in the same rounds.",
        "",
        claim(section),
        "",
        "| method | t | segment | peak bytes | memory vs autodiff | compile s "
        f"| compile vs t={section['summary']['t_min']} | run ms (median) | time vs autodiff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(section["rows"], key=lambda r: (list(METHODS).index(r["method"]), r["t"])):
        lines.append(
            f"| {r['method']} | {r['t']:,} | {r['segment'] or '–'} "
            f"| {timing.fmt_bytes(r['peak_bytes'])} "
            f"| {common.fmt(r['memory_vs_autodiff'], '.3g')} "
            f"| {r['compile_s']:.2f} | {r['compile_vs_first_t']:.2f} "
            f"| {common.fmt(r.get('run_ms_median'), '.4g')} "
            f"| {common.fmt(r.get('time_vs_autodiff'), '.2f')} |"
        )
    return "\n".join(lines) + "\n"
