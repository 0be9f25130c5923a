"""Tasks with linear dynamics: what ``grad="stable"`` asks of a task.

Under an optimizer whose step is linear in its state (GD, heavy ball, Nesterov, each with a
fixed diagonal preconditioner ``P`` or none), a task whose loss is a quadratic in the
iterate is described, in the eigenbasis of its Hessian ``H`` (Wang et al. 2021, Sec. 3.1),
by the curvatures ``lambda_i`` and the start ``e_0 = U^T (w_0 - w_min)``: the iterate stays
``w_min + U e_k`` with ``e_k`` a linear recursion per coordinate, and the loss of ``e`` is

* training: ``f(e) = residual + 1/2 sum_i lambda_i e_i^2`` (the quadratic's ``residual =
  0``; least squares: the loss of the ERM solution);
* validation (when the task has held-out rows): ``||r - F e||^2 / (2 n)`` with ``F`` the
  validation features in the eigenbasis and ``r`` the residual of ``w_min`` on them.

A task declares this with a ``linear_dynamics(preconditioner=None)`` method returning
:class:`LinearDynamics` (:class:`LinearDynamicsTask`); ``metagrad.stable`` computes the
stable meta-objective from it and never looks at the task's type. With a preconditioner
the method returns the dynamics in ``u = P^(-1/2) w``, where the preconditioned step is the
plain one on ``P^(1/2) H P^(1/2)`` with the same loss values.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, runtime_checkable

import jax

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinearDynamics:
    """A task's loss under a linear optimizer, in the eigenbasis of its Hessian.

    Attributes:
      eigenvalues: ``(r,)`` curvatures ``lambda_i >= 0`` of the quadratic the run sees.
      start: ``(r,)`` ``e_0``, the start minus the minimizer, in the same eigenbasis.
      residual: ``()`` the training loss at the minimizer, or ``None`` for 0.
      valid_features: ``(n, r)`` validation features ``X_valid U`` (``None``: no
        validation loss, ``tbv`` is refused).
      valid_residual: ``(n,)`` ``y_valid - X_valid w_min``, with ``valid_features``.
      gd_closed_form: whether GD's training loss goes through the closed form
        ``closed_forms.spectral.log_gd_loss`` (Wang et al. 2021, Eq. 1-2; needs
        ``lambda_i >= 0``); ``False`` sends GD through the projective forward mode of
        ``metagrad.projective``, as heavy ball and Nesterov always are. Static.
    """

    eigenvalues: Array
    start: Array
    residual: Array | None = None
    valid_features: Array | None = None
    valid_residual: Array | None = None
    gd_closed_form: bool = dataclasses.field(default=True, metadata={"static": True})


@runtime_checkable
class LinearDynamicsTask(Protocol):
    """A task whose loss under a linear optimizer is a quadratic in the iterate
    (``grad="stable"``); built in: ``Quadratic``, ``NQM`` (its mean dynamics),
    ``LeastSquares``."""

    def linear_dynamics(self, preconditioner: Array | None = None) -> LinearDynamics:
        """The dynamics of the run from ``init_params()``; with a diagonal
        ``preconditioner`` ``P`` (an array of the parameters' shape), those of
        ``u = P^(-1/2) w`` (curvatures of ``P^(1/2) H P^(1/2)``)."""
        ...
