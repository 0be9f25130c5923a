"""Timing shared by every benchmark group: AOT compile, warm-up, interleaved samples.

A timing sample lasts at least ``MIN_SAMPLE_S``: fast calls are repeated within a sample
and the sample's mean per call is recorded, so a call of tens of microseconds is not
dominated by timer and scheduler jitter. Functions compared with each other are timed in
rounds, one sample each per round in a shuffled (seeded) order, so load drift on a shared
machine hits all of them alike; ratios measured this way are what the results report.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any

import jax
import numpy as np

from l2l_jax import xla

MIN_SAMPLE_S = 1e-2
# Calls slower than this are not re-timed to choose the calls per sample (one per sample).
CALIBRATE_BELOW_S = 0.5


@dataclasses.dataclass
class Timed:
    """One compiled function with its arguments, compile times and timing samples."""

    name: str
    fn: Any
    args: tuple
    lower_s: float
    xla_compile_s: float
    warm_s: float = 0.0
    call_s: float = 0.0
    out: Any = None
    times: list[float] = dataclasses.field(default_factory=list)

    @property
    def compile_s(self) -> float:
        """Tracing/lowering plus XLA compilation, in seconds."""
        return self.lower_s + self.xla_compile_s

    @property
    def calls_per_sample(self) -> int:
        return max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(self.call_s, 1e-9))))

    def sample(self) -> float:
        """Seconds per call, averaged over ``calls_per_sample`` blocking calls."""
        n = self.calls_per_sample
        start = time.perf_counter()
        for _ in range(n):
            self.out = jax.block_until_ready(self.fn(*self.args))
        return (time.perf_counter() - start) / n

    def summary(self) -> dict[str, Any]:
        """Compile time, median and minimum run time (ms), samples, calls per sample."""
        return {
            "compile_s": self.compile_s,
            "run_ms_median": 1e3 * statistics.median(self.times),
            "run_ms_min": 1e3 * min(self.times),
            "repeats": len(self.times),
            "calls_per_sample": self.calls_per_sample,
        }


def _elapsed(fn: Any, args: tuple) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def warm_up(cell: Timed) -> Timed:
    """One call of the cell (its time is ``warm_s``, its output ``out``), then the fastest
    of three more (when calls are fast) as the estimate of one call's time, from which the
    calls per timing sample are chosen."""
    cell.warm_s, cell.out = _elapsed(cell.fn, cell.args)
    cell.call_s = cell.warm_s
    if cell.warm_s < CALIBRATE_BELOW_S:
        cell.call_s = min(_elapsed(cell.fn, cell.args)[0] for _ in range(3))
    return cell


def compile_only(name: str, fn: Any, *args: Any, jit: Any = xla.jit) -> Timed:
    """``jit(fn).lower(*args).compile()``, timed, not called (a cell too large to run can
    still report its compile time and XLA's memory estimate)."""
    start = time.perf_counter()
    lowered = jit(fn).lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return Timed(name, compiled, args, lowered_at - start, time.perf_counter() - lowered_at)


def compile_timed(name: str, fn: Any, *args: Any) -> Timed:
    """``xla.jit(fn).lower(*args).compile()`` (the library's compiler options, see
    :mod:`l2l_jax.xla`), timed, then :func:`warm_up`."""
    return warm_up(compile_only(name, fn, *args))


def repeats_within_budget(sample_s: float, repeats: int, budget_s: float) -> int:
    """``repeats``, reduced so one function's samples fit ``budget_s`` (at least one)."""
    return max(1, min(repeats, int(budget_s // max(sample_s, 1e-9))))


def time_interleaved(cells: list[Timed], repeats: int, budget_s: float, bar: Any = None) -> None:
    """Time ``cells`` in rounds of one sample each (shuffled, seeded order).

    A cell whose calls are slow takes part in fewer rounds (see
    :func:`repeats_within_budget`); no cell is dropped.
    """
    counts = [
        repeats_within_budget(c.call_s * c.calls_per_sample, repeats, budget_s) for c in cells
    ]
    rng = np.random.default_rng(0)
    if bar is not None:
        bar.reset(total=max(counts))
    for round_ in range(max(counts)):
        for i in rng.permutation(len(cells)):
            if round_ < counts[i]:
                cells[i].times.append(cells[i].sample())
        if bar is not None:
            bar.update()


def time_rounds(
    cells: list[Timed], repeats: int, budget_s: float, desc: str, progress: bool = True
) -> None:
    """:func:`time_interleaved` with a progress bar labelled ``desc`` (hidden unless
    ``progress``)."""
    from tqdm.auto import tqdm

    with tqdm(total=repeats, desc=desc, disable=not progress) as bar:
        time_interleaved(cells, repeats, budget_s, bar)


def paired_ratio(a: Timed, b: Timed) -> float:
    """Median over rounds of ``a``'s sample over ``b``'s (samples of one round are close
    in time, so this ratio is the least affected by load drift)."""
    n = min(len(a.times), len(b.times))
    return statistics.median(x / y for x, y in zip(a.times[:n], b.times[:n], strict=True))


def fmt_bytes(x: int | None) -> str:
    """``1.2 MB``-style byte count for the tables (``–`` for ``None``)."""
    if x is None:
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if x >= size:
            return f"{x / size:.1f} {unit}"
    return f"{x} B"
