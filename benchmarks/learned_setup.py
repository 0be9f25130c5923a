"""The learned-optimizer benchmarks' task, sizes and the library's meta-step.

The paper's learned optimizer (:class:`l2l_jax.learned.MLPLOpt`) meta-trained by TBPTT
(train-by-train) on the MNIST MLP with synthetic rows of MNIST's shapes
(:func:`benchmarks.common.mnist_like_task`). :func:`library_cell` is the library's jitted
meta-step on the initial state, compiled once per preset and shared by the groups that
time it (``learned_optimizer``, ``learned_estimators``, ``flops``).
"""

from __future__ import annotations

import dataclasses
import functools

import jax

from benchmarks import common, timing
from l2l_jax import learned, truncated
from l2l_jax.tasks import MnistMLP


@dataclasses.dataclass(frozen=True)
class LearnedPreset:
    """Sizes of the throughput benchmark (the paper's learned optimizer and task).

    ``n`` synthetic training rows; minibatch and meta-loss minibatch ``batch``; ``K =
    segment`` inner steps per meta-step for each of ``meta_batch`` runs of ``horizon`` inner
    steps (staggered starts, so runs re-initialize at different meta-steps). ``repeats``
    timing rounds, each implementation's samples capped at ``budget_s`` seconds.
    ``backward_dtype``: the learned optimizer's (``LOptConfig.backward_dtype``; None: exact).
    """

    sizes: tuple[int, ...] = (784, 100, 20, 10)
    n: int = 1000
    batch: int = 32
    meta_batch: int = 8
    segment: int = 20
    horizon: int = 200
    hidden_sizes: tuple[int, ...] = (32,)
    decays: tuple[float, ...] = learned.PAPER_DECAYS
    time_scales: tuple[float, ...] = learned.PAPER_TIME_SCALES
    repeats: int = 5
    budget_s: float = 60.0
    seed: int = 0
    backward_dtype: str | None = None

    def __post_init__(self) -> None:
        if self.segment > self.horizon:
            raise ValueError("segment <= horizon: a run re-initializes at most once a segment.")

    def lopt(self) -> learned.MLPLOpt:
        """The learned optimizer (the paper's architecture unless the preset shrinks it)."""
        return learned.MLPLOpt(
            learned.LOptConfig(
                hidden_sizes=self.hidden_sizes,
                decays=self.decays,
                time_scales=self.time_scales,
                backward_dtype=self.backward_dtype,
            )
        )

    def config(self) -> truncated.TruncatedConfig:
        """TBPTT, train-by-train, minibatches of ``batch`` for steps and meta-loss terms."""
        return truncated.TruncatedConfig(
            horizon=self.horizon,
            segment=self.segment,
            meta_batch=self.meta_batch,
            batch_size=self.batch,
            eval_batch_size=self.batch,
            objective="tbt",
            estimator="tbptt",
        )


PRESETS: dict[str, LearnedPreset] = {
    # A short segment keeps the CPU run short, and throughput does not depend on K (the work
    # outside the scan is the Adam update of the small meta-parameter vector). K = 5 would
    # be confused with the PRNG's 5-trip loops in the FLOP group's loop census.
    "cpu-small": LearnedPreset(segment=4, repeats=5, budget_s=40.0),
    "accelerator": LearnedPreset(segment=20, repeats=10, budget_s=60.0),
    "smoke": LearnedPreset(
        sizes=(784, 10),
        n=64,
        batch=8,
        meta_batch=2,
        segment=4,
        horizon=6,
        hidden_sizes=(4,),
        decays=(0.9,),
        time_scales=(10.0,),
        repeats=2,
        budget_s=1.0,
    ),
}


# -- the task and the library's step ---------------------------------------------------------


def build_task(preset: LearnedPreset) -> MnistMLP:
    """MnistMLP on ``n`` synthetic rows: uniform [0, 1) images, uniform labels, the keys
    split from the preset's seed."""
    keys = tuple(jax.random.split(jax.random.key(preset.seed), 3))
    return common.mnist_like_task(preset.sizes, preset.n, keys)


def initial_state(preset: LearnedPreset, task: MnistMLP) -> truncated.TruncatedState:
    """``truncated.init_state``: the meta-parameters, Adam state and staggered runs."""
    key = jax.random.fold_in(jax.random.key(preset.seed), 1)
    return truncated.init_state(key, task, preset.lopt(), preset.config())


@functools.lru_cache(maxsize=4)
def library_cell(preset: LearnedPreset) -> timing.Timed:
    """The library's jitted meta-step on the initial state, compiled and warmed up.

    Cached: the FLOP/s group (:mod:`benchmarks.flops`) times the same compiled step.
    """
    task = build_task(preset)
    state = initial_state(preset, task)
    step = truncated.make_meta_step(preset.lopt(), preset.config())
    return timing.compile_timed("l2l_jax", step, state, task)
