"""Time and memory of ``grad="logscaled"`` against plain reverse mode, ``t = 10 ... 10^4``.

Heavy ball (``inner.momentum()``, ``eta = 0.01``, ``beta = 0.985``) on a 20-dimensional
``tasks.Quadratic.random``, objective ``log_loss``, float32. The iterates contract by about
``sqrt(beta)`` per step, so ``f(w_t)`` underflows float32 between ``t = 1000`` and
``10000`` while ``w_t`` does not: there plain reverse mode returns a non-finite value or
gradient and the log-scaled pass does not. For each ``t``, both methods, with and without
``remat`` (segments of ``ceil(sqrt(t))`` steps), are compiled, then timed side by side in
interleaved rounds (:mod:`benchmarks.timing`); the memory is the compiled program's
temporary bytes (``memory_analysis``: what the backward pass stores).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from l2l_jax import inner, metagrad, tasks

METHODS = (("autodiff", False), ("logscaled", False), ("autodiff", True), ("logscaled", True))


@dataclasses.dataclass(frozen=True)
class LogScaledPreset:
    steps: tuple[int, ...] = (10, 100, 1000, 10000)
    dim: int = 20
    repeats: int = 9
    budget_s: float = 5.0


PRESETS: dict[str, LogScaledPreset] = {
    "cpu-small": LogScaledPreset(),
    "accelerator": LogScaledPreset(),
    "smoke": LogScaledPreset(steps=(10, 40), dim=4, repeats=2, budget_s=0.5),
}


def _cell(task, hparams, steps: int, grad: str, remat: bool) -> timing.Timed:
    F = metagrad.meta_objective(
        task, inner.momentum(), "log_loss", steps=steps, grad=grad, remat=remat or None
    )
    fn = jax.value_and_grad(lambda h: F(h))
    return timing.compile_timed(f"{steps}/{grad}/{'remat' if remat else 'plain'}", fn, hparams)


def _finite(cell: timing.Timed) -> bool:
    """Whether the last timed call's value and gradient are finite."""
    value, grad = cell.out
    return bool(np.isfinite(float(value)) and all(np.isfinite(jax.tree.leaves(grad))))


def measure(preset: LogScaledPreset, progress: bool = True) -> dict[str, Any]:
    """Compile every (t, method, remat) cell, time them interleaved, report ratios to
    plain reverse mode of the same t and remat."""
    task = tasks.Quadratic.random(jax.random.key(0), dim=preset.dim)
    hparams = inner.momentum().hparams(learning_rate=jnp.float32(0.01), momentum=jnp.float32(0.985))
    cells = [_cell(task, hparams, t, grad, remat) for t in preset.steps for grad, remat in METHODS]
    timing.time_rounds(cells, preset.repeats, preset.budget_s, "time logscaled", progress)
    medians = {c.name: statistics.median(c.times) for c in cells}
    rows = []
    for c in cells:
        steps, grad, remat = c.name.split("/")
        base = f"{steps}/autodiff/{remat}"
        temp = c.fn.memory_analysis().temp_size_in_bytes
        base_temp = next(x for x in cells if x.name == base).fn.memory_analysis()
        rows.append(
            {
                "steps": int(steps),
                "grad": grad,
                "remat": remat == "remat",
                "segment": math.ceil(math.sqrt(int(steps))) if remat == "remat" else None,
                **c.summary(),
                "temp_bytes": int(temp),
                "time_ratio_to_autodiff": medians[c.name] / medians[base],
                "memory_ratio_to_autodiff": temp / max(base_temp.temp_size_in_bytes, 1),
                "finite": _finite(c),
            }
        )
    return {"settings": dataclasses.asdict(preset), "rows": rows}


def claim(section: dict[str, Any]) -> str:
    """Where plain reverse mode fails and the log-scaled pass does not, and its cost."""
    rows = [r for r in section["rows"] if r["grad"] == "logscaled" and not r["remat"]]
    failed = [
        r["steps"]
        for r in section["rows"]
        if r["grad"] == "autodiff" and not r["remat"] and not r["finite"]
    ]
    finite = all(r["finite"] for r in section["rows"] if r["grad"] == "logscaled")
    cost = ", ".join(
        f"t = {r['steps']}: {r['time_ratio_to_autodiff']:.2f}× time, "
        f"{r['memory_ratio_to_autodiff']:.2f}× memory"
        for r in rows
    )
    where = f"non-finite at t = {failed}" if failed else "finite at every t here"
    return (
        f"plain reverse mode is {where}; the log-scaled pass is "
        f"{'finite everywhere' if finite else 'NOT finite everywhere'}; its cost against "
        f"reverse mode (same run): {cost}."
    )


def render_markdown(section: dict[str, Any], heading: str = "##") -> str:
    """The log-scaled section: settings, one row per (t, method, remat)."""
    s = section["settings"]
    lines = [
        f"{heading} log-scaled reverse pass",
        "",
        f'`grad="logscaled"` against plain reverse mode: heavy ball (eta 0.01, beta 0.985) '
        f"on a {s['dim']}-dim quadratic, log-loss, float32, timed in interleaved rounds in "
        "one run; memory is the compiled program's temporary bytes; ratios are to plain "
        "reverse mode at the same t and remat.",
        "",
        claim(section),
        "",
        "| t | grad | remat | compile s | call ms (median) | temp | time ratio | memory ratio "
        "| finite |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in section["rows"]:
        lines.append(
            f"| {r['steps']} | {r['grad']} | {'segments' if r['remat'] else 'no'} | "
            f"{r['compile_s']:.2f} | {r['run_ms_median']:.3g} | "
            f"{timing.fmt_bytes(r['temp_bytes'])} | {r['time_ratio_to_autodiff']:.2f} | "
            f"{r['memory_ratio_to_autodiff']:.2f} | {'yes' if r['finite'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"
