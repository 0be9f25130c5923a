"""Meta-objectives: scalar functions of an unroll's result.

A meta-objective is any callable ``objective(result: UnrollResult) -> scalar``; a plain
function works. The built-in ones below also know how to be computed from
``log f(w_t)`` (:meth:`from_log_loss`), which is what lets ``grad="stable"`` evaluate
them in log space without ever unrolling.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

from l2l_jax.inner.unroll import UnrollResult

Array = jnp.ndarray
Objective = Callable[[UnrollResult], Array]


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
    batched=True)`` averages it over the tasks, giving ``F_TbT(eta)`` of Eq. 3.
    """

    name: str = "tbt"

    def __call__(self, result: UnrollResult) -> Array:
        return result.task.loss(result.params)

    def from_log_loss(self, log_f: Array, steps: Array) -> Array:
        """``exp(log f(w_t))``: the training loss itself."""
        return jnp.exp(log_f)


@dataclasses.dataclass(frozen=True)
class TrainByValidation:
    """Train-by-validation: the validation loss of ``w_t`` (Wang et al. 2021, Eq. 4 per task).

    ``Delta_TbV = (1/(2 n2)) sum_i (y'_i - <w_t, x'_i>)^2`` on the task's validation set
    (``task.valid_loss``); averaged over tasks with ``batched=True`` it is ``F_TbV(eta)``.
    """

    name: str = "tbv"

    def __call__(self, result: UnrollResult) -> Array:
        valid_loss = getattr(result.task, "valid_loss", None)
        if valid_loss is None:
            raise TypeError(
                f"objective 'tbv' needs a task with a validation set (a valid_loss method), "
                f"got {type(result.task).__name__}; use tasks.LeastSquares with n_valid >= 1 "
                "or the objective 'tbt'."
            )
        return valid_loss(result.params)


def last_loss() -> LastLoss:
    """The last-iterate loss ``f(w_t)``."""
    return LastLoss()


def log_loss() -> LogLoss:
    """The log-loss ``(1/t) log f(w_t)`` of Wang et al. (2021), Theorem 4."""
    return LogLoss()


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
    "mean_loss": mean_loss,
    "tbt": tbt,
    "tbv": tbv,
}


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
