"""The task contracts: what inner unrolls, meta-objectives and meta-training ask of a task.

Three :class:`typing.Protocol` classes, each adding to the one before; a task implements
the parts the optimizers and objectives it is used with need (``isinstance`` checks them):

* :class:`Task`: ``init_params(key)`` and ``loss(params)`` (full-batch GD, ``tbt``);
* :class:`MinibatchTask`: ``num_examples`` and ``batch_loss(params, indices)`` (SGD,
  minibatched meta-losses);
* :class:`ValidationTask`: ``num_valid``, ``valid_loss(params)`` and
  ``valid_batch_loss(params, indices)`` (train-by-validation).

A task is a pytree (its arrays are leaves), so one compiled program serves every task of
the same shapes; a distribution over tasks is a
:class:`~l2l_jax.tasks.family.TaskFamily`. Built in: :class:`~l2l_jax.tasks.Quadratic`,
:class:`~l2l_jax.tasks.NQM`, :class:`~l2l_jax.tasks.LeastSquares`,
:class:`~l2l_jax.tasks.MnistMLP`, and any Flax NNX model through
:func:`~l2l_jax.tasks.nnx_task`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import chex
import jax

Array = jax.Array


@runtime_checkable
class Task(Protocol):
    """A loss to minimize and where to start."""

    def init_params(self, key: chex.PRNGKey | None = None) -> chex.ArrayTree:
        """Initial parameters; ``key`` varies them across runs (a task with a fixed start,
        e.g. :class:`~l2l_jax.tasks.Quadratic`, ignores it)."""
        ...

    def loss(self, params: chex.ArrayTree) -> Array:
        """The full training loss (a scalar)."""
        ...


@runtime_checkable
class MinibatchTask(Task, Protocol):
    """A task whose loss is a mean over ``num_examples`` rows that can be sampled."""

    @property
    def num_examples(self) -> Any:
        """Training rows (``None`` or 0: none to sample)."""
        ...

    def batch_loss(self, params: chex.ArrayTree, indices: Array) -> Array:
        """The loss on the training rows ``indices`` (unbiased for :meth:`loss`)."""
        ...


@runtime_checkable
class ValidationTask(MinibatchTask, Protocol):
    """A task with held-out validation rows (train-by-validation, Wang et al. Eq. 4)."""

    @property
    def num_valid(self) -> int:
        """Validation rows (0: none)."""
        ...

    def valid_loss(self, params: chex.ArrayTree) -> Array:
        """The loss on all validation rows."""
        ...

    def valid_batch_loss(self, params: chex.ArrayTree, indices: Array) -> Array:
        """The loss on the validation rows ``indices`` (in ``[0, num_valid)``)."""
        ...


_NEEDS = {
    "Task": "a task (tasks.base.Task: init_params, loss)",
    "MinibatchTask": "a task with rows to sample (tasks.base.MinibatchTask: num_examples, "
    "batch_loss)",
    "ValidationTask": "a task with a validation set (tasks.base.ValidationTask: num_valid, "
    "valid_loss, valid_batch_loss; e.g. tasks.LeastSquares with n_valid >= 1 or "
    "MnistMLP.from_data(..., n_valid=N); else use the objective 'tbt')",
}
_MEMBERS = (
    "init_params",
    "loss",
    "num_examples",
    "batch_loss",
    "num_valid",
    "valid_loss",
    "valid_batch_loss",
)


def require(task: Any, protocol: type, purpose: str) -> None:
    """``TypeError`` naming what ``task`` lacks of ``protocol`` for ``purpose``."""
    if isinstance(task, protocol):
        return
    missing = [n for n in _MEMBERS if hasattr(protocol, n) and not hasattr(task, n)]
    raise TypeError(
        f"{purpose} needs {_NEEDS[protocol.__name__]}; {type(task).__name__} lacks {missing}."
    )
