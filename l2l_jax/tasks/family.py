"""Task families: a distribution over tasks that meta-training samples from.

Wang et al. (2021, Sec. 4-5) meta-train on a *set* of problems: each meta-training
problem draws its own data (and, for train-by-validation, its own train/validation
split). A family is the object that draws them (learned_optimization's ``TaskFamily``):

* ``family.sample(key)`` returns a *draw*: a small pytree of arrays with fixed shapes
  (indices, labels), so sampling works inside ``jit`` and ``vmap``;
* ``family.task(draw)`` returns the task that draw describes, with the task protocol of
  :mod:`l2l_jax.truncated.tasks` (``init_params(key)``, ``loss``, ``batch_loss``,
  ``valid_batch_loss``, ``num_examples``, ``num_valid``). It may be a view that gathers
  only the rows a minibatch needs, never a copy of the data.

A family is a pytree (its data pool are leaves, its sizes static), so a compiled
meta-step takes it as an argument. :func:`as_family` accepts a single task as a family of
one (:class:`SingleTask`, whose draw is empty): meta-training on one task is unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import chex
import jax

Array = jax.Array


@runtime_checkable
class TaskFamily(Protocol):
    """What :func:`l2l_jax.truncated.meta_train` asks of a distribution over tasks."""

    def sample(self, key: chex.PRNGKey) -> chex.ArrayTree:
        """One draw (fixed shapes, traceable: called under ``jit``/``vmap``)."""

    def task(self, draw: chex.ArrayTree) -> Any:
        """The task of ``draw`` (traceable)."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SingleTask:
    """A family of one task: every draw is empty and :meth:`task` returns the task."""

    inner: Any

    def sample(self, key: chex.PRNGKey) -> dict:
        del key
        return {}

    def task(self, draw: chex.ArrayTree) -> Any:
        del draw
        return self.inner


def is_family(obj: Any) -> bool:
    """True for a :class:`TaskFamily` (``sample`` and ``task`` methods)."""
    return callable(getattr(obj, "sample", None)) and callable(getattr(obj, "task", None))


def as_family(task_or_family: Any) -> TaskFamily:
    """A family as is; a single task as :class:`SingleTask`."""
    if is_family(task_or_family):
        return task_or_family
    if not callable(getattr(task_or_family, "init_params", None)):
        raise TypeError(
            "expected a task (with init_params and loss) or a task family (with sample(key) "
            f"and task(draw)), got {type(task_or_family).__name__}."
        )
    return SingleTask(task_or_family)


def example_task(family: TaskFamily) -> Any:
    """The task of one concrete draw (for checks outside ``jit``: its sizes are static)."""
    return family.task(family.sample(jax.random.key(0)))
