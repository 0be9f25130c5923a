"""What truncated meta-training asks of a task and an inner optimizer.

A task has ``init_params(key)`` (or ``init_params()``), ``loss(params)`` and, for
minibatches, ``num_examples`` and ``batch_loss(params, indices)``; for
``objective="tbv"`` also ``num_valid``, ``valid_loss(params)`` and
``valid_batch_loss(params, indices)`` (or :class:`~l2l_jax.tasks.MnistMLP`'s validation
arrays). The optimizer is an :class:`~l2l_jax.inner.InnerOptimizer` or a learned
optimizer (adapted by :func:`l2l_jax.learned.as_inner_optimizer`).
"""

from __future__ import annotations

import inspect

import chex
import jax

from l2l_jax.inner.optimizers import InnerOptimizer
from l2l_jax.meta.truncated.config import TruncatedConfig

Array = jax.Array


def init_task_params(task, key: Array) -> chex.ArrayTree:
    """``task.init_params(key)``, or ``task.init_params()`` for tasks without a key argument.

    (Such tasks, e.g. :class:`~l2l_jax.tasks.Quadratic`, restart from the same point; the
    runs then differ in data order only.)
    """
    try:
        takes_key = bool(inspect.signature(task.init_params).parameters)
    except (TypeError, ValueError):
        takes_key = True
    return task.init_params(key) if takes_key else task.init_params()


def valid_batch_loss(task, params: chex.ArrayTree, indices: Array) -> Array:
    """Loss on the validation rows ``indices``: ``task.valid_batch_loss`` if the task has
    one, else (for :class:`~l2l_jax.tasks.MnistMLP`) the cross-entropy on
    ``task.valid_images[indices]``."""
    if hasattr(task, "valid_batch_loss"):
        return task.valid_batch_loss(params, indices)
    if hasattr(task, "valid_images") and hasattr(task, "valid_labels"):
        from l2l_jax.tasks.mnist import cross_entropy

        return cross_entropy(params, task.valid_images[indices], task.valid_labels[indices])
    raise TypeError(
        f"objective='tbv' with eval_batch_size needs task.valid_batch_loss(params, indices) "
        f"or validation arrays; {type(task).__name__} has neither. Use eval_batch_size=None "
        "(task.valid_loss)."
    )


def num_valid(task) -> int:
    """``task.num_valid`` (``TypeError`` when the task has no validation data at all)."""
    n = getattr(task, "num_valid", None)
    if n is None:
        raise TypeError(f"objective='tbv' needs task.num_valid; {type(task).__name__} has none.")
    return int(n)


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
    if getattr(task, "batch_shape", ()):
        raise ValueError(
            f"truncated meta-training shares one task across the meta-batch, got a batch "
            f"{task!r}; the runs already differ in initialization and data order."
        )
    needs_examples = batch_size(config, optimizer) is not None or (
        config.objective == "tbt" and config.eval_batch_size is not None
    )
    if needs_examples and not getattr(task, "num_examples", None):
        raise ValueError(f"minibatches need task.num_examples > 0; {task!r} has none.")
    if config.objective == "tbv":
        if num_valid(task) == 0:
            raise ValueError(
                "objective='tbv' needs validation data, but the task has none: build it "
                "with validation rows (e.g. MnistMLP.from_data(..., n_valid=N))."
            )

    rows = {"batch_size": (batch_size(config, optimizer), getattr(task, "num_examples", None))}
    if config.eval_batch_size is not None:
        n = task.num_examples if config.objective == "tbt" else getattr(task, "num_valid", None)
        rows["eval_batch_size"] = (config.eval_batch_size, n)
    for name, (size, n) in rows.items():
        if size is not None and n is not None and size > n:
            raise ValueError(
                f"TruncatedConfig.{name} = {size} is larger than the task's {n} rows it "
                f"samples from; use at most {n} (each run draws a minibatch of this size "
                "every inner step, so an oversized one only allocates)."
            )


def eval_loss(task, params, key: Array, config: TruncatedConfig) -> Array:
    """The meta-loss term of one iterate (see :attr:`TruncatedConfig.eval_batch_size`)."""
    size = config.eval_batch_size
    if config.objective == "tbt":
        if size is None:
            return task.loss(params)
        return task.batch_loss(params, jax.random.randint(key, (size,), 0, task.num_examples))
    if size is None:
        return task.valid_loss(params)
    idx = jax.random.randint(key, (size,), 0, num_valid(task))
    return valid_batch_loss(task, params, idx)
