"""Log-space meta-objectives with stable meta-gradients, for the combinations where
they exist.

The route is chosen by what the optimizer is, never by its ``name``: the linear update it
declares (``linear_update``: ``"gd"``, ``"momentum"`` for heavy ball, ``"nesterov"``; set by
``inner.gd()``, ``inner.momentum()``, ``inner.nesterov()``, or declared with
``inner.from_optax(..., linear_update=...)``) and the diagonal preconditioner it records.
The declaration is checked on a probe (a few steps of the optimizer's own ``update`` on a
small quadratic against the declared step) before it is trusted; an optimizer that declares
none (Adam, any undeclared optax chain, a learned optimizer) or samples minibatches is
refused with a ``ValueError`` pointing to ``grad="autodiff"``.

* GD on :class:`~l2l_jax.tasks.Quadratic` and :class:`~l2l_jax.tasks.LeastSquares`
  (TbT): no unroll, through :func:`~l2l_jax.closed_forms.spectral.log_gd_loss` (a
  ``jax.custom_vjp`` implementing the ratio formula of Wang et al. 2021, Eq. 1-2, in log
  space). A rule is registered per task type; each returns ``eta -> log f(w_t)``.
* Linear inner dynamics (GD, heavy-ball momentum ``inner.momentum()``, Nesterov
  ``inner.nesterov()``) on a quadratic (:class:`~l2l_jax.tasks.Quadratic` in its
  eigenbasis, or the mean dynamics of :class:`~l2l_jax.tasks.NQM`) and on
  :class:`~l2l_jax.tasks.LeastSquares` (the distance to the ERM solution in the
  eigenbasis of ``X^T X / n``; training loss, or validation loss for ``tbv``): the
  projective forward mode of :mod:`l2l_jax.metagrad.projective`, ``hparams -> log f(w_t)``
  with the meta-gradient in every hyperparameter (learning rate and momentum). Least
  squares here is untruncated (no ``max_norm``).
* The same optimizers with a fixed diagonal preconditioner ``P > 0`` (``inner.gd(...,
  preconditioner=p)``): the change of variables ``u = P^(-1/2) w`` (and ``P^(-1/2) v``)
  turns them into the plain optimizer on ``H~ = P^(1/2) H P^(1/2)`` with the same loss
  values (least squares: the features ``X P^(1/2)``), so the routes above apply to that
  problem. ``P`` is a constant of the optimizer: no meta-gradient flows to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import input_checks
from l2l_jax.closed_forms import spectral, spectral_ls
from l2l_jax.inner.optimizers import LINEAR_UPDATES, InnerOptimizer, linear_update_of
from l2l_jax.metagrad import projective
from l2l_jax.tasks.least_squares import LeastSquares
from l2l_jax.tasks.nqm import NQM
from l2l_jax.tasks.quadratic import Quadratic

Array = jnp.ndarray
LogLossFn = Callable[[Array], Array]

_RULES: dict[type, Callable[[object, int], LogLossFn]] = {}


def register(task_type: type, rule: Callable[[object, int], LogLossFn]) -> None:
    """Register ``rule(task, steps) -> (eta -> log f(w_t))`` for GD on ``task_type``."""
    _RULES[task_type] = rule


def supported() -> str:
    names = ", ".join(f"tasks.{t.__name__}" for t in _RULES)
    linear = ", ".join(f"tasks.{t.__name__}" for t in _LINEAR_TASKS)
    kinds = ", ".join(map(repr, projective.STEPS))
    return (
        f"grad='stable' supports inner.gd() on {names}, and inner.gd(), inner.momentum() and "
        f"inner.nesterov() on {linear} (full batch, one task, optionally with a diagonal "
        "preconditioner=; or any optimizer that declares the same linear update, as "
        f"inner.from_optax(..., linear_update=) does with one of {kinds}: the name decides "
        "nothing), with the objectives last_loss, log_loss and tbt, and tbv on "
        "tasks.LeastSquares (or any objective with a from_log_loss(log_f, steps) method)"
    )


_LINEAR_TASKS = (Quadratic, NQM, LeastSquares)


def _linear_problem(task, validation: bool):
    """``(lam, w0, finish, data)`` of the task's linear dynamics in its eigenbasis for
    :func:`projective.log_loss_fn`: a quadratic's curvatures and start (NQM: already
    diagonal); for least squares the distance to the min-norm ERM solution, ``-beta``
    (``w0 = 0``), with the training loss (the ERM residual added) or, with
    ``validation``, the validation loss."""
    if isinstance(task, NQM):
        return task.curvature, task.init_params(), None, ()
    if isinstance(task, Quadratic):
        return task.eigenvalues, task.coefficients, None, ()
    valid = (task.x_valid, task.y_valid) if validation else (None, None)
    spec = spectral_ls.decompose(task.x_train, task.y_train, *valid)
    lam, start = spec.eigenvalues, -spec.coords
    if not validation:
        return lam, start, projective.quadratic_terms, (lam, spec.residual)
    residual0 = spec.y_valid - spec.valid_features @ spec.coords
    n_valid = jnp.asarray(spec.y_valid.shape[0], lam.dtype)
    return lam, start, projective.validation_terms, (spec.valid_features, residual0, n_valid)


def _preconditioned(task, optimizer: InnerOptimizer):
    """The task in ``u = P^(-1/2) w`` (module doc), on which the optimizer without ``P``
    takes the same steps with the same losses; ``task`` itself when there is no ``P``.

    Quadratic: the diagonal task of ``P^(1/2) H P^(1/2)``'s eigenvalues and ``P^(-1/2)
    w0`` in its eigenbasis, decomposed in float64 on the host when concrete (float32 tasks
    lose only the final rounding, as ``Quadratic``'s own decomposition does); NQM (mean
    dynamics): curvature ``P h``; least squares: features ``X P^(1/2)``, ``w_star / P^(1/2)``.
    """
    p = getattr(optimizer, "preconditioner", None)
    if p is None:
        return task
    w0 = task.init_params()
    if not isinstance(p, jnp.ndarray) or p.shape != w0.shape:
        shape = getattr(p, "shape", type(p).__name__)
        raise ValueError(
            f"grad='stable' needs the preconditioner as one array of the parameters' shape "
            f"{w0.shape}, got {shape}."
        )
    sqrt_p = jnp.sqrt(p.astype(task.dtype))
    if isinstance(task, LeastSquares):
        x, xv, ws = task.x_train * sqrt_p, task.x_valid * sqrt_p, task.w_star / sqrt_p
        return LeastSquares(x, task.y_train, xv, task.y_valid, ws, task.sigma)
    if isinstance(task, NQM):
        return Quadratic.from_spectrum(task.curvature * p.astype(task.dtype), w0 / sqrt_p)
    if input_checks.is_concrete(task.hessian) and input_checks.is_concrete(sqrt_p):
        s = np.asarray(sqrt_p, np.float64)
        h = s[:, None] * np.asarray(task.hessian, np.float64) * s[None, :]
        lam, vec = np.linalg.eigh(0.5 * (h + h.T))
        coef = vec.T @ (np.asarray(w0, np.float64) / s)
        return Quadratic.from_spectrum(lam.astype(task.dtype), coef.astype(task.dtype))
    hessian = sqrt_p[:, None] * task.hessian * sqrt_p[None, :]
    moved = Quadratic(hessian, w0 / sqrt_p)
    return Quadratic.from_spectrum(moved.eigenvalues, moved.coefficients)


def _gd_rule(task, kind: str | None, validation: bool):
    """The registered closed form for GD's training loss on ``task``'s type, or ``None``."""
    return _RULES.get(type(task)) if kind == "gd" and not validation else None


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

    The closed form is chosen by the linear update the optimizer declares
    (:func:`~l2l_jax.inner.optimizers.linear_update_of`), checked on a probe
    (:func:`_check_declaration`); an optimizer that declares none is refused, whatever its
    ``name``."""
    kind = linear_update_of(optimizer)
    declared = kind in projective.STEPS
    full_batch = optimizer.batch_size is None
    validation = getattr(objective, "loss_of", "train") == "valid"
    rule = _gd_rule(task, kind, validation)
    linear = isinstance(task, _LINEAR_TASKS) and not getattr(task, "batch_shape", ())
    problems = []
    if not declared:
        problems.append(
            f"optimizer {optimizer.name!r}, which declares no linear update "
            f"(linear_update={kind!r})"
        )
    elif not full_batch:
        problems.append(
            f"optimizer {optimizer.name!r}, which samples minibatches "
            f"(batch_size={optimizer.batch_size})"
        )
    if type(task) not in _RULES and not isinstance(task, _LINEAR_TASKS):
        problems.append(f"task {type(task).__name__}")
    elif not problems and rule is None and not linear:
        problems.append(
            f"optimizer {optimizer.name!r} (linear_update={kind!r}) on task {type(task).__name__}"
        )
    if not hasattr(objective, "from_log_loss"):
        problems.append(f"objective {getattr(objective, 'name', objective)!r}")
    elif validation and not isinstance(task, LeastSquares):
        problems.append(f"objective {objective.name!r} on task {type(task).__name__}")
    if problems:
        raise ValueError(
            f"{supported()}; got {', '.join(problems)}. "
            "Use grad='autodiff' or grad='forward' for this combination."
        )
    if getattr(optimizer, "preconditioner", None) is not None:
        task = _preconditioned(task, optimizer)
        rule = _gd_rule(task, kind, validation)
    _check_declaration(optimizer, kind)
    t = jnp.asarray(steps, task.dtype)
    if rule is not None:
        log_f = rule(task, steps)
        eta_of = lambda h: h["learning_rate"] if isinstance(h, Mapping) else h
        return lambda hparams: objective.from_log_loss(log_f(eta_of(hparams)), t)
    lam, w0, finish, data = _linear_problem(task, validation)
    log_f = projective.log_loss_fn(projective.STEPS[kind], lam, w0, steps, finish, data)
    dtype = task.dtype

    def fn(hparams):
        values = optimizer.as_dict(hparams)
        theta = {n: jnp.asarray(values[n], dtype) for n in values}
        return objective.from_log_loss(log_f(theta), t)

    return fn


def _quadratic_rule(task: Quadratic, steps: int) -> LogLossFn:
    lam = task.eigenvalues
    log_w = spectral.log_weights_from_coefficients(lam, task.coefficients)
    t = jnp.asarray(steps, task.dtype)
    return lambda eta: spectral.log_gd_loss(jnp.asarray(eta, task.dtype), log_w, lam, t)


register(Quadratic, _quadratic_rule)


def _least_squares_rule(task: LeastSquares, steps: int) -> LogLossFn:
    """``log`` of the training loss of ``w_t`` (untruncated TbT, Eq. 3 per task).

    One eigendecomposition of ``X^T X / n``, then :func:`spectral_ls.log_tbt_loss`: the
    ratio formula in log space plus the ERM residual, finite for any ``t``.
    """
    spec = spectral_ls.decompose(task.x_train, task.y_train)
    return lambda eta: spectral_ls.log_tbt_loss(spec, jnp.asarray(eta, task.dtype), steps)


register(LeastSquares, _least_squares_rule)
