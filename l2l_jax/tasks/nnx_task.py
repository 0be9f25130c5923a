"""A Flax NNX model, a loss and arrays as a task (:func:`nnx_task`).

The parameters the inner optimizer trains are the model's ``nnx.Param`` variables as a
plain nested dict (``nnx.to_pure_dict``); every other variable (e.g. batch statistics) is
held fixed. The model is rebuilt inside each loss with ``nnx.merge``, so the task is a
pure function of the parameters: jit-able, vmap-able and differentiable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from l2l_jax import input_checks

Array = jax.Array
LossFn = Callable[[Array, Array], Array]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NNXTask:
    """A :class:`~l2l_jax.tasks.base.ValidationTask` made of an NNX model and arrays.

    Attributes:
      graphdef: the model's structure (static).
      loss_fn: ``loss_fn(outputs, targets) -> scalar``, the mean loss of a batch (static).
      params: the model's initial ``nnx.Param`` values (a nested dict).
      rest: the model's other variables, held fixed.
      x, y: training inputs and targets (rows on the leading axis).
      x_valid, y_valid: validation rows (zero rows when there are none).
    """

    graphdef: nnx.GraphDef = dataclasses.field(metadata={"static": True})
    loss_fn: LossFn = dataclasses.field(metadata={"static": True})
    params: chex.ArrayTree
    rest: Any
    x: Array
    y: Array
    x_valid: Array
    y_valid: Array

    @property
    def num_examples(self) -> int:
        return self.x.shape[0]

    @property
    def num_valid(self) -> int:
        return self.x_valid.shape[0]

    def init_params(self, key: chex.PRNGKey | None = None) -> chex.ArrayTree:
        """The model's parameters as built (every run starts there; ``key`` is ignored)."""
        del key
        return self.params

    def apply(self, params: chex.ArrayTree, x: Array) -> Array:
        """The model's outputs on ``x`` with ``params``."""
        return nnx.merge(self.graphdef, params, self.rest)(x)

    def _loss(self, params, x: Array, y: Array) -> Array:
        return self.loss_fn(self.apply(params, x), y)

    def loss(self, params: chex.ArrayTree) -> Array:
        return self._loss(params, self.x, self.y)

    def batch_loss(self, params: chex.ArrayTree, indices: Array) -> Array:
        return self._loss(params, self.x[indices], self.y[indices])

    def valid_loss(self, params: chex.ArrayTree) -> Array:
        if self.num_valid == 0:
            raise ValueError("valid_loss needs validation rows: pass x_valid and y_valid.")
        return self._loss(params, self.x_valid, self.y_valid)

    def valid_batch_loss(self, params: chex.ArrayTree, indices: Array) -> Array:
        return self._loss(params, self.x_valid[indices], self.y_valid[indices])


def nnx_task(
    model: nnx.Module,
    loss_fn: LossFn,
    x: Array,
    y: Array,
    *,
    x_valid: Array | None = None,
    y_valid: Array | None = None,
) -> NNXTask:
    """``model`` trained on ``(x, y)`` with ``loss_fn(model(x), y)`` as a task.

    Example: ``nnx_task(nnx.Linear(4, 1, rngs=nnx.Rngs(0)), lambda p, t: jnp.mean((p -
    t) ** 2), x, y)``. Validation rows (both or neither) make it usable with ``tbv``.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}.")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (outputs, targets) -> scalar, got {loss_fn!r}.")
    x, y = jnp.asarray(x), jnp.asarray(y)
    if (x_valid is None) != (y_valid is None):
        raise ValueError("pass both x_valid and y_valid, or neither.")
    if x_valid is None:
        x_valid, y_valid = x[:0], y[:0]
    x_valid, y_valid = jnp.asarray(x_valid), jnp.asarray(y_valid)
    for name, value in {"x": x, "y": y, "x_valid": x_valid, "y_valid": y_valid}.items():
        input_checks.finite(name, value)  # a NaN would make every loss NaN, silently
    for name, (a, b) in {"x, y": (x, y), "x_valid, y_valid": (x_valid, y_valid)}.items():
        if a.shape[:1] != b.shape[:1]:
            raise ValueError(f"{name} must have the same number of rows, got {a.shape}, {b.shape}.")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return NNXTask(graphdef, loss_fn, nnx.to_pure_dict(params), rest, x, y, x_valid, y_valid)
