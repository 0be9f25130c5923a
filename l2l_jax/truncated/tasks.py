"""What truncated meta-training asks of a task, an inner optimizer and an objective.

The task follows the protocols of :mod:`l2l_jax.tasks.base` (``init_params(key)``,
``loss``; ``num_examples`` and ``batch_loss`` for minibatches), the optimizer is an
:class:`~l2l_jax.inner.InnerOptimizer` or an object that adapts itself to one (a learned
optimizer's ``as_inner_optimizer()``, :func:`as_inner`), and the meta-loss of each iterate
is the objective's ``iterate_loss`` (:class:`~l2l_jax.objectives.IterateObjective`:
``"tbt"``, ``"tbv"`` or a user's), which also says what it needs of the task (``check``).
The runs and the estimators read the settings of :class:`SegmentConfig` (a
:class:`~l2l_jax.truncated.TruncatedConfig` has them).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

from l2l_jax import objectives
from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.tasks.base import MinibatchTask, Task, require

Array = jax.Array


class SegmentConfig(Protocol):
    """The settings of :class:`~l2l_jax.truncated.TruncatedConfig` that a run, a segment
    and an estimator read (their meaning: its docstring). Typed here, below the config,
    so that the config can name the estimators without an import circle."""

    horizon: int
    segment: int
    meta_batch: int
    batch_size: int | None
    eval_batch_size: int | None
    reset_nonfinite: bool
    remat: int | bool | None

    @property
    def meta_objective(self) -> objectives.IterateObjective: ...


def as_inner(optimizer: Any) -> InnerOptimizer:
    """The :class:`~l2l_jax.inner.InnerOptimizer` that ``optimizer`` stands for.

    An object with an ``as_inner_optimizer()`` method (a learned optimizer: its
    hyperparameters are its meta-parameters) supplies its own adapter; an inner optimizer
    is returned as it is. Anything else is a ``TypeError``.
    """
    adapt = getattr(optimizer, "as_inner_optimizer", None)
    inner = adapt() if callable(adapt) else optimizer
    if not isinstance(inner, InnerOptimizer):
        raise TypeError(
            "optimizer must be an inner.InnerOptimizer (see its protocol) or have an "
            "as_inner_optimizer() method returning one (learned.MLPLOpt, learned.NominalLOpt), "
            f"got {type(optimizer).__name__}."
        )
    return inner


def batch_size(config: SegmentConfig, optimizer: InnerOptimizer) -> int | None:
    """The inner minibatch size: ``config.batch_size``, else the optimizer's."""
    if config.batch_size is None:
        return optimizer.batch_size
    if optimizer.batch_size not in (None, config.batch_size):
        raise ValueError(
            f"config.batch_size = {config.batch_size} but the optimizer samples "
            f"batch_size = {optimizer.batch_size}; set one of them (or make them equal)."
        )
    return config.batch_size


def check_task(task, optimizer: InnerOptimizer, config: SegmentConfig) -> None:
    """Fail early (outside ``jit``) when ``task`` lacks what ``config`` uses."""
    require(task, Task, "truncated meta-training")
    if getattr(task, "batch_shape", ()):
        raise ValueError(
            f"truncated meta-training shares one task across the meta-batch, got a batch "
            f"{task!r}; the runs already differ in initialization and data order."
        )
    size = batch_size(config, optimizer)
    if size is not None:
        require(task, MinibatchTask, f"inner minibatches (batch_size = {size})")
        if not task.num_examples:
            raise ValueError(f"minibatches need task.num_examples > 0; {task!r} has none.")
        if size > task.num_examples:
            raise ValueError(
                f"TruncatedConfig.batch_size = {size} is larger than the task's "
                f"{task.num_examples} rows it samples from; use at most {task.num_examples} "
                "(each run draws a minibatch of this size every inner step, so an oversized "
                "one only allocates)."
            )
    config.meta_objective.check(task, config.eval_batch_size)


def eval_loss(task, params, key: Array, config: SegmentConfig) -> Array:
    """The meta-loss term of one iterate: the objective's ``iterate_loss``, on a fresh
    minibatch of ``eval_batch_size`` rows drawn with ``key`` (``None``: the whole loss)."""
    objective = config.meta_objective
    size = config.eval_batch_size if objective.minibatched else None
    return objective.iterate_loss(task, params, key, size)
