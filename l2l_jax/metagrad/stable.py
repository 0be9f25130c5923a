"""Log-space meta-objectives with stable meta-gradients, for the combinations where
they exist.

The route is chosen by what the optimizer and the task declare, never by a name or a type:

* the optimizer: the linear update it declares (``linear_update``: ``"gd"``,
  ``"momentum"`` for heavy ball, ``"nesterov"``; set by ``inner.gd()``,
  ``inner.momentum()``, ``inner.nesterov()``, or declared with ``inner.from_optax(...,
  linear_update=...)``) and the diagonal preconditioner it records. The declaration is
  checked on a probe (a few steps of the optimizer's own ``update`` on a small quadratic
  against the declared step) before it is trusted; an optimizer that declares none (Adam,
  any undeclared optax chain, a learned optimizer) or samples minibatches is refused with
  a ``ValueError`` pointing to ``grad="autodiff"``.
* the task: its linear dynamics (:class:`~l2l_jax.tasks.linear.LinearDynamicsTask`, a
  ``linear_dynamics(preconditioner)`` method returning the curvatures, the start's
  eigen-coordinates relative to the minimizer and the losses' constants; built in:
  ``tasks.Quadratic``, the mean dynamics of ``tasks.NQM``, ``tasks.LeastSquares``). A task
  without the method, or a batch of tasks, is refused the same way.

Then:

* GD on the training loss, where the dynamics allow it (``gd_closed_form``): no unroll,
  :func:`~l2l_jax.closed_forms.spectral.log_gd_loss` (a ``jax.custom_vjp`` implementing
  the ratio formula of Wang et al. 2021, Eq. 1-2, in log space) with weights
  ``lambda_i e_i^2 / 2``, the residual added in log space.
* Otherwise (heavy ball, Nesterov, GD on a validation loss or where the task asks for it):
  the projective forward mode of :mod:`l2l_jax.metagrad.projective`, ``hparams -> log
  f(w_t)`` with the meta-gradient in every hyperparameter (learning rate and momentum), on
  the training loss (``residual + 1/2 sum lambda e^2``) or, for ``tbv``, the validation
  loss of the dynamics. Untruncated (no ``max_norm``).
* A fixed diagonal preconditioner ``P > 0`` (``inner.gd(..., preconditioner=p)``): the
  change of variables ``u = P^(-1/2) w`` (and ``P^(-1/2) v``) turns the step into the plain
  optimizer's on ``P^(1/2) H P^(1/2)`` with the same loss values; the task returns those
  dynamics (``linear_dynamics(preconditioner=p)``) and the routes above apply. ``P`` is a
  constant of the optimizer: no meta-gradient flows to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax.closed_forms import spectral
from l2l_jax.inner.optimizers import LINEAR_UPDATES, InnerOptimizer, linear_update_of
from l2l_jax.metagrad import projective
from l2l_jax.tasks.linear import LinearDynamics, LinearDynamicsTask

Array = jnp.ndarray
LogLossFn = Callable[[Array], Array]


def supported() -> str:
    """What ``grad="stable"`` accepts, for its error messages."""
    kinds = ", ".join(map(repr, projective.STEPS))
    return (
        "grad='stable' supports inner.gd() on tasks.Quadratic, tasks.NQM, tasks.LeastSquares "
        "and any task that declares its linear dynamics (a linear_dynamics(preconditioner) "
        "method returning tasks.LinearDynamics: tasks.LinearDynamicsTask), and inner.momentum() "
        "and inner.nesterov() on the same tasks (full batch, one task, optionally with a "
        "diagonal preconditioner=; or any optimizer that declares the same linear update, as "
        f"inner.from_optax(..., linear_update=) does with one of {kinds}: the name decides "
        "nothing), with the objectives last_loss, log_loss and tbt, and tbv on a task with "
        "validation rows (tasks.LeastSquares) (or any objective with a "
        "from_log_loss(log_f, steps) method)"
    )


def _refuse(problems: list[str]) -> None:
    """The ``ValueError`` listing ``problems`` against :func:`supported`."""
    raise ValueError(
        f"{supported()}; got {', '.join(problems)}. "
        "Use grad='autodiff' or grad='forward' for this combination."
    )


def _checked_preconditioner(task, optimizer: InnerOptimizer):
    """The optimizer's diagonal ``P`` (``None`` for none), or a ``ValueError`` unless it
    is one array of the parameters' shape."""
    p = getattr(optimizer, "preconditioner", None)
    if p is None:
        return None
    w0 = task.init_params()
    if not isinstance(p, jnp.ndarray) or p.shape != jnp.shape(w0):
        shape = getattr(p, "shape", type(p).__name__)
        raise ValueError(
            f"grad='stable' needs the preconditioner as one array of the parameters' shape "
            f"{jnp.shape(w0)}, got {shape}."
        )
    return p


def _checked_dynamics(task, dyn) -> LinearDynamics:
    """``dyn`` if it is a :class:`LinearDynamics` of one task (``(r,)`` eigenvalues and
    start of one shape), else a ``TypeError``/``ValueError`` naming the task's method."""
    name = f"{type(task).__name__}.linear_dynamics()"
    if not isinstance(dyn, LinearDynamics):
        raise TypeError(f"{name} must return tasks.LinearDynamics, got {type(dyn).__name__}.")
    lam_shape, start_shape = jnp.shape(dyn.eigenvalues), jnp.shape(dyn.start)
    if len(lam_shape) != 1 or start_shape != lam_shape:
        raise ValueError(
            f"{name} must return eigenvalues and start as (r,) arrays of one shape, got "
            f"{lam_shape} and {start_shape}."
        )
    if (dyn.valid_features is None) != (dyn.valid_residual is None):
        raise ValueError(
            f"{name} must return valid_features and valid_residual together (the validation "
            "loss ||valid_residual - valid_features e||^2 / (2 n)), or neither."
        )
    return dyn


def _gd_closed_form(dyn: LinearDynamics, steps: int) -> LogLossFn:
    """``eta -> log f(w_t)`` of GD's training loss, ``log(residual + sum_i v_i (1 - eta
    lambda_i)^(2t))`` with ``v_i = lambda_i e_i^2 / 2`` (Wang et al. 2021, Eq. 1-2 in log
    space, :func:`spectral.log_gd_loss`; the residual added by ``logaddexp``)."""
    lam = dyn.eigenvalues
    dtype = lam.dtype
    log_w = spectral.log_weights_from_coefficients(lam, dyn.start)
    t = jnp.asarray(steps, dtype)
    res = dyn.residual

    def log_f(eta):
        log_sum = spectral.log_gd_loss(jnp.asarray(eta, dtype), log_w, lam, t)
        if res is None:
            return log_sum
        log_res = jnp.where(res > 0, jnp.log(jnp.where(res > 0, res, 1)), -jnp.inf)
        return jnp.logaddexp(log_sum, log_res)

    return log_f


def _projective_problem(dyn: LinearDynamics, validation: bool):
    """``(finish, data)`` of :func:`projective.log_loss_fn` for the dynamics' training loss
    (``residual + 1/2 sum lambda e^2``; ``None``: the plain quadratic) or, with
    ``validation``, their validation loss."""
    lam = dyn.eigenvalues
    if validation:
        n_valid = jnp.asarray(dyn.valid_residual.shape[0], lam.dtype)
        return projective.validation_terms, (dyn.valid_features, dyn.valid_residual, n_valid)
    if dyn.residual is None:
        return None, ()
    return projective.quadratic_terms, (lam, dyn.residual)


# The probe of :func:`_check_declaration`: hyperparameters, curvatures, steps, tolerance.
_PROBE_THETA = {"learning_rate": 0.3, "momentum": 0.6}
_PROBE_STEPS = 3
_PROBE_RTOL = 1e-10


def _check_declaration(optimizer: InnerOptimizer, kind: str) -> None:
    """A ``ValueError`` unless the optimizer's own ``update`` takes the declared linear step
    (``projective.STEPS[kind]`` on the gradient times its ``preconditioner``).

    The probe: :data:`_PROBE_STEPS` steps from ``w0 = 1 + cos(i) / 2``, ``v0 = 0`` on ``f(w)
    = 1/2 sum_i lambda_i w_i^2`` (``lambda`` from 0.1 to 3) at ``eta = 0.3``, ``beta = 0.6``,
    in float64, compared step by step to :data:`_PROBE_RTOL` relative. It tells apart every
    update that differs from the declared one on a quadratic (another momentum, Adam, weight
    decay, a rescaled or preconditioned gradient), not an update that agrees on the probe and
    departs from it elsewhere (a clip whose threshold the probe's gradients stay below).
    """
    p = getattr(optimizer, "preconditioner", None)
    step = projective.STEPS[kind]
    with jax.ensure_compile_time_eval(), jax.enable_x64(True):
        shape = (5,) if p is None else jnp.shape(p)
        size = int(np.prod(shape))
        lam = jnp.asarray(np.geomspace(0.1, 3.0, size).reshape(shape))
        w = jnp.asarray(1 + 0.5 * np.cos(np.arange(size)).reshape(shape))
        lam_p = lam if p is None else lam * jnp.asarray(p, jnp.float64)
        theta = {n: jnp.float64(_PROBE_THETA[n]) for n in LINEAR_UPDATES[kind]}
        hparams = optimizer.hparams(**theta)
        state = optimizer.init(w, hparams)
        ref = (w, jnp.zeros_like(w))
        for k in range(1, _PROBE_STEPS + 1):
            w, state = optimizer.update(lam * w, state, w, hparams)
            ref = step(theta, *ref, lam_p)
            got, want = np.asarray(w, np.float64), np.asarray(ref[0], np.float64)
            err = float(np.max(np.abs(got - want)) / np.max(np.abs(want)))
            if not err <= _PROBE_RTOL:
                raise ValueError(
                    f"optimizer {optimizer.name!r} declares linear_update={kind!r}, but its own "
                    f"update is not that step: on a probe quadratic at "
                    f"{ {n: float(x) for n, x in theta.items()} } its iterate after {k} step(s) "
                    f"differs by {err:.1e} relative. grad='stable' would compute another "
                    "optimizer's meta-gradient: use grad='autodiff' or grad='forward', and "
                    "declare linear_update=None; for a stable one build the optimizer with "
                    "inner.gd(), inner.momentum() or inner.nesterov()."
                )


def log_loss_fn(task, optimizer: InnerOptimizer, objective, steps: int) -> LogLossFn:
    """``hparams -> objective`` evaluated in log space (``eta`` or ``{"learning_rate":
    eta}`` for GD, the optimizer's dict otherwise), or a ``ValueError`` saying what works.

    The route is chosen by the linear update the optimizer declares
    (:func:`~l2l_jax.inner.optimizers.linear_update_of`, checked on a probe by
    :func:`_check_declaration`) and by the task's linear dynamics
    (:class:`~l2l_jax.tasks.linear.LinearDynamicsTask`); an optimizer that declares none,
    or a task without dynamics, is refused whatever its name or type."""
    kind = linear_update_of(optimizer)
    validation = getattr(objective, "loss_of", "train") == "valid"
    problems = []
    if kind not in projective.STEPS:
        problems.append(
            f"optimizer {optimizer.name!r}, which declares no linear update "
            f"(linear_update={kind!r})"
        )
    elif optimizer.batch_size is not None:
        problems.append(
            f"optimizer {optimizer.name!r}, which samples minibatches "
            f"(batch_size={optimizer.batch_size})"
        )
    if not isinstance(task, LinearDynamicsTask):
        problems.append(
            f"task {type(task).__name__}, which declares no linear dynamics (no "
            "linear_dynamics method)"
        )
    elif getattr(task, "batch_shape", ()):
        problems.append(f"task {task!r}, a batch of tasks (batch_shape={task.batch_shape})")
    if not hasattr(objective, "from_log_loss"):
        problems.append(f"objective {getattr(objective, 'name', objective)!r}")
    if problems:
        _refuse(problems)
    p = _checked_preconditioner(task, optimizer)
    dyn = _checked_dynamics(task, task.linear_dynamics(preconditioner=p))
    if validation and dyn.valid_features is None:
        task_name = type(task).__name__
        _refuse([f"objective {objective.name!r} on task {task_name} (no validation rows)"])
    _check_declaration(optimizer, kind)
    dtype = dyn.eigenvalues.dtype
    t = jnp.asarray(steps, dtype)
    if kind == "gd" and not validation and dyn.gd_closed_form:
        log_f = _gd_closed_form(dyn, steps)
        eta_of = lambda h: h["learning_rate"] if isinstance(h, Mapping) else h
        return lambda hparams: objective.from_log_loss(log_f(eta_of(hparams)), t)
    finish, data = _projective_problem(dyn, validation)
    step = projective.STEPS[kind]
    log_f = projective.log_loss_fn(step, dyn.eigenvalues, dyn.start, steps, finish, data)

    def fn(hparams):
        values = optimizer.as_dict(hparams)
        theta = {n: jnp.asarray(values[n], dtype) for n in values}
        return objective.from_log_loss(log_f(theta), t)

    return fn
