"""What truncated meta-training asks of a task, an inner optimizer and an objective.

The task follows the protocols of :mod:`l2l_jax.tasks.base` (``init_params(key)``,
``loss``; ``num_examples`` and ``batch_loss`` for minibatches), the optimizer is an
:class:`~l2l_jax.inner.InnerOptimizer` or a learned optimizer (adapted by
:func:`l2l_jax.learned.as_inner_optimizer`), and the meta-loss of each iterate is the
objective's ``iterate_loss`` (:class:`~l2l_jax.objectives.IterateObjective`: ``"tbt"``,
``"tbv"`` or a user's), which also says what it needs of the task (``check``).
"""

from __future__ import annotations

import jax

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.tasks.base import MinibatchTask, Task, require
from l2l_jax.truncated.config import TruncatedConfig

Array = jax.Array


def batch_size(config: TruncatedConfig, optimizer: InnerOptimizer) -> int | None:
    """The inner minibatch size: ``config.batch_size``, else the optimizer's."""
    if config.batch_size is None:
        return optimizer.batch_size
    if optimizer.batch_size not in (None, config.batch_size):
        raise ValueError(
            f"config.batch_size = {config.batch_size} but the optimizer samples "
            f"batch_size = {optimizer.batch_size}; set one of them (or make them equal)."
        )
    return config.batch_size


def check_task(task, optimizer: InnerOptimizer, config: TruncatedConfig) -> None:
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


def eval_loss(task, params, key: Array, config: TruncatedConfig) -> Array:
    """The meta-loss term of one iterate: the objective's ``iterate_loss``, on a fresh
    minibatch of ``eval_batch_size`` rows drawn with ``key`` (``None``: the whole loss)."""
    objective = config.meta_objective
    size = config.eval_batch_size if objective.minibatched else None
    return objective.iterate_loss(task, params, key, size)
