"""Meta-objectives: scalar functions of an unroll's result.

A meta-objective is any callable ``objective(result: UnrollResult) -> scalar``; a plain
function works with :func:`l2l_jax.metagrad.meta_objective`. Two optional methods widen
where an objective can be used:

* ``from_log_loss(log_f, t)``: the objective from ``log f(w_t)``, which lets
  ``grad="stable"`` evaluate it in log space without ever unrolling;
* ``iterate_loss(task, params, key, batch_size)``: the loss of one iterate, which makes
  it an :class:`IterateObjective`: the objective of an unroll is the iterate loss of
  ``w_t``, and truncated meta-training (``truncated.TruncatedConfig(objective=...)``) averages
  it over the iterates of each segment. :func:`tbt` and :func:`tbv` are such objectives,
  and :func:`iterate_objective` makes one from a user's ``fn(task, params)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from l2l_jax.inner.unroll import UnrollResult
from l2l_jax.tasks.base import MinibatchTask, ValidationTask, require

Array = jnp.ndarray
Objective = Callable[[UnrollResult], Array]


@runtime_checkable
class IterateObjective(Protocol):
    """A meta-objective that is a loss of one iterate ``w``: at the end of an unroll it is
    the loss of ``w_t``; truncated meta-training averages it over each segment's iterates.

    ``minibatched``: whether :meth:`iterate_loss` can estimate the loss on ``batch_size``
    rows drawn with ``key`` (``TruncatedConfig.eval_batch_size``); if not, it is always
    called with ``batch_size=None`` and computes the whole loss.
    """

    name: str
    minibatched: bool

    def __call__(self, result: UnrollResult) -> Array: ...

    def iterate_loss(
        self, task: Any, params: Any, key: jax.Array | None = None, batch_size: int | None = None
    ) -> Array: ...

    def check(self, task: Any, batch_size: int | None) -> None:
        """Fail early (outside ``jit``, with a message) when ``task`` cannot provide it."""
        ...


def _rows(key: jax.Array, batch_size: int, n: int) -> Array:
    """``batch_size`` row indices drawn uniformly (with replacement) from ``[0, n)``."""
    return jax.random.randint(key, (batch_size,), 0, n)


def _check_rows(name: str, batch_size: int | None, n: int | None) -> None:
    if batch_size is not None and n is not None and batch_size > n:
        raise ValueError(
            f"TruncatedConfig.eval_batch_size = {batch_size} is larger than the task's {n} "
            f"{name} rows it samples from; use at most {n}."
        )


@dataclasses.dataclass(frozen=True)
class LastLoss:
    """``f(w_t)``, the last-iterate loss (its meta-gradient explodes/vanishes: Thm 3)."""

    name: str = "last_loss"

    def __call__(self, result: UnrollResult) -> Array:
        return result.final_loss

    def from_log_loss(self, log_f: Array, steps: Array) -> Array:
        """``exp(log f)``: overflows only where ``f(w_t)`` itself does."""
        return jnp.exp(log_f)


@dataclasses.dataclass(frozen=True)
class LogLoss:
    """``(1/t) log f(w_t)``, whose meta-gradient is polynomially bounded (Thm 4)."""

    name: str = "log_loss"

    def __call__(self, result: UnrollResult) -> Array:
        return jnp.log(result.final_loss) / result.steps

    def from_log_loss(self, log_f: Array, steps: Array) -> Array:
        return log_f / steps


@dataclasses.dataclass(frozen=True)
class LogValidationLoss:
    """``(1/t) log Delta_TbV(w_t)``: the log-loss of Theorem 4 on the validation loss, so
    that train-by-validation keeps a bounded meta-gradient where the loss itself
    over- or underflows (``grad="stable"`` on :class:`~l2l_jax.tasks.LeastSquares`)."""

    name: str = "log_tbv"
    loss_of: str = "valid"

    def __call__(self, result: UnrollResult) -> Array:
        require(result.task, ValidationTask, "objective 'log_tbv'")
        return jnp.log(result.task.valid_loss(result.params)) / result.steps

    def from_log_loss(self, log_f: Array, steps: Array) -> Array:
        return log_f / steps


@dataclasses.dataclass(frozen=True)
class MeanLoss:
    """``(1/t) sum_{tau=1..t} f(w_tau)``, the mean loss over the trajectory."""

    name: str = "mean_loss"

    def __call__(self, result: UnrollResult) -> Array:
        return jnp.mean(result.losses[1:])


@dataclasses.dataclass(frozen=True)
class TrainByTrain:
    """Train-by-train: the full training loss of ``w_t`` (Wang et al. 2021, Eq. 3 per task).

    For ``tasks.LeastSquares`` this is ``Delta_TbT = (1/(2 n)) sum_i (y_i - <w_t, x_i>)^2``
    (also for SGD: it is ``task.loss``, not a minibatch loss). ``meta_objective(...,
    batched=True)`` averages it over the tasks, giving ``F_TbT(eta)`` of Eq. 3. In
    truncated meta-training the training loss of every iterate (or its minibatch
    estimate, ``eval_batch_size``) is averaged over the segment.
    """

    name: str = "tbt"
    minibatched: bool = True

    def __call__(self, result: UnrollResult) -> Array:
        return self.iterate_loss(result.task, result.params)

    def iterate_loss(self, task, params, key=None, batch_size=None) -> Array:
        """``task.loss(params)``, or ``task.batch_loss`` on ``batch_size`` rows from ``key``."""
        if batch_size is None:
            return task.loss(params)
        return task.batch_loss(params, _rows(key, batch_size, task.num_examples))

    def check(self, task, batch_size: int | None) -> None:
        if batch_size is not None:
            require(task, MinibatchTask, "objective 'tbt' with eval_batch_size")
            if not task.num_examples:
                raise ValueError(f"eval_batch_size needs task.num_examples > 0; {task!r} has none.")
            _check_rows("training", batch_size, task.num_examples)

    def from_log_loss(self, log_f: Array, steps: Array) -> Array:
        """``exp(log f(w_t))``: the training loss itself."""
        return jnp.exp(log_f)


@dataclasses.dataclass(frozen=True)
class TrainByValidation:
    """Train-by-validation: the validation loss of ``w_t`` (Wang et al. 2021, Eq. 4 per task).

    ``Delta_TbV = (1/(2 n2)) sum_i (y'_i - <w_t, x'_i>)^2`` on the task's validation set
    (``task.valid_loss``); averaged over tasks with ``batched=True`` it is ``F_TbV(eta)``.
    In truncated meta-training the validation loss of every iterate (or its minibatch
    estimate) is averaged over the segment.
    """

    name: str = "tbv"
    minibatched: bool = True
    loss_of: str = "valid"  # grad="stable": from_log_loss takes log of the validation loss

    def __call__(self, result: UnrollResult) -> Array:
        require(result.task, ValidationTask, "objective 'tbv'")
        return self.iterate_loss(result.task, result.params)

    def iterate_loss(self, task, params, key=None, batch_size=None) -> Array:
        """``task.valid_loss(params)``, or ``task.valid_batch_loss`` on ``batch_size``
        validation rows from ``key``."""
        if batch_size is None:
            return task.valid_loss(params)
        return task.valid_batch_loss(params, _rows(key, batch_size, task.num_valid))

    def check(self, task, batch_size: int | None) -> None:
        require(task, ValidationTask, "objective 'tbv'")
        if int(task.num_valid) == 0:
            raise ValueError(
                "objective 'tbv' needs validation data, but the task has none: build it "
                "with validation rows (e.g. MnistMLP.from_data(..., n_valid=N))."
            )
        _check_rows("validation", batch_size, int(task.num_valid))

    def from_log_loss(self, log_f: Array, steps: Array) -> Array:
        """``exp(log f)`` with ``f`` the validation loss of ``w_t`` (``loss_of``)."""
        return jnp.exp(log_f)


@dataclasses.dataclass(frozen=True)
class IterateLoss:
    """A user's ``fn(task, params) -> scalar`` as an :class:`IterateObjective`
    (:func:`iterate_objective`); it always computes the whole loss (not minibatched)."""

    fn: Callable[[Any, Any], Array]
    name: str
    minibatched: bool = False

    def __call__(self, result: UnrollResult) -> Array:
        return self.fn(result.task, result.params)

    def iterate_loss(self, task, params, key=None, batch_size=None) -> Array:
        del key, batch_size
        return self.fn(task, params)

    def check(self, task, batch_size: int | None) -> None:
        if batch_size is not None:
            raise ValueError(
                f"objective {self.name!r} computes whole losses (fn(task, params)); set "
                "TruncatedConfig(eval_batch_size=None)."
            )


@dataclasses.dataclass(frozen=True)
class TrajectoryLoss:
    """``reduce([fn(task, w_1), ..., fn(task, w_t)])``: a meta-objective over the whole
    trajectory (:func:`trajectory_objective`). ``metagrad.meta_objective`` hands ``record`` to
    :func:`~l2l_jax.inner.unroll`, which evaluates it on every iterate inside the scan."""

    fn: Callable[[Any, Any], Array]
    name: str
    reduce: Callable[[Array], Array] = jnp.mean

    @property
    def record(self) -> Callable[[Any, Any], Array]:
        return self.fn

    def __call__(self, result: UnrollResult) -> Array:
        if result.records is None:
            raise ValueError(
                f"objective {self.name!r} needs the unroll's records: unroll with "
                "record=objective.record (metagrad.meta_objective does)."
            )
        return self.reduce(result.records)


def trajectory_objective(
    fn: Callable[[Any, Any], Array], name: str | None = None, reduce=jnp.mean
) -> TrajectoryLoss:
    """A meta-objective from the loss ``fn(task, params)`` of every iterate of the unroll,
    reduced over the steps (default: the mean). Example, the mean validation loss over the
    unroll: ``trajectory_objective(lambda task, w: task.valid_loss(w), name="mean_tbv")``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (task, params) -> scalar, got {type(fn).__name__}.")
    return TrajectoryLoss(fn=fn, name=name or getattr(fn, "__name__", "objective"), reduce=reduce)


def iterate_objective(fn: Callable[[Any, Any], Array], name: str | None = None) -> IterateLoss:
    """A meta-objective from the loss ``fn(task, params)`` of one iterate: usable in
    ``metagrad.meta_objective`` (the loss of ``w_t``) and in ``truncated.meta_train`` (its mean
    over each segment's iterates, with ``eval_batch_size=None``).

    Example: ``iterate_objective(lambda task, w: task.valid_loss(w) + 1e-3 *
    optax.tree.norm(w, squared=True), name="tbv+l2")``. ``name`` (default: the function's
    name) identifies it in checkpoints: a resume with another name is refused.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable (task, params) -> scalar, got {type(fn).__name__}.")
    return IterateLoss(fn=fn, name=name or getattr(fn, "__name__", "objective"))


def last_loss() -> LastLoss:
    """The last-iterate loss ``f(w_t)``."""
    return LastLoss()


def log_loss() -> LogLoss:
    """The log-loss ``(1/t) log f(w_t)`` of Wang et al. (2021), Theorem 4."""
    return LogLoss()


def log_tbv() -> LogValidationLoss:
    """The log-loss of the validation loss, ``(1/t) log Delta_TbV(w_t)``."""
    return LogValidationLoss()


def mean_loss() -> MeanLoss:
    """The mean loss over the trajectory."""
    return MeanLoss()


def tbt() -> TrainByTrain:
    """Train-by-train ``Delta_TbT``: training loss of ``w_t`` (Eq. 3 per task)."""
    return TrainByTrain()


def tbv() -> TrainByValidation:
    """Train-by-validation ``Delta_TbV``: validation loss of ``w_t`` (Eq. 4 per task)."""
    return TrainByValidation()


BUILTIN = {
    "last_loss": last_loss,
    "log_loss": log_loss,
    "log_tbv": log_tbv,
    "mean_loss": mean_loss,
    "tbt": tbt,
    "tbv": tbv,
}


def resolve_iterate(objective: IterateObjective | str) -> IterateObjective:
    """An :class:`IterateObjective` from a built-in name (``"tbt"``, ``"tbv"``) or an
    object with ``iterate_loss``, or a clear error (what truncated meta-training takes)."""
    resolved = resolve(objective)
    if not isinstance(resolved, IterateObjective):
        name = getattr(resolved, "name", objective)
        raise TypeError(
            f"objective {name!r} is not a loss of one iterate (no iterate_loss method), so "
            "truncated meta-training cannot average it over a segment; use 'tbt', 'tbv', "
            "objectives.iterate_objective(fn), or an object with name, minibatched, "
            "iterate_loss and check (objectives.IterateObjective)."
        )
    return resolved


def resolve(objective: Objective | str) -> Objective:
    """An objective from a callable or a built-in name, or a clear error."""
    if isinstance(objective, str):
        if objective not in BUILTIN:
            raise ValueError(
                f"unknown objective {objective!r}; built-in objectives are {sorted(BUILTIN)}, "
                "or pass any function of an UnrollResult."
            )
        return BUILTIN[objective]()
    if not callable(objective):
        raise TypeError(
            f"objective must be callable (a function of an UnrollResult), got "
            f"{type(objective).__name__}."
        )
    return objective
