"""Log-scaled reverse mode: finite meta-gradients through any unroll.

Reverse mode pulls the cotangent of the inner state ``z_k = (w_k, s_k)`` (the *adjoint*)
back through the steps ``z_{k+1} = Phi(z_k, theta, x_k)`` of the unroll,

    mu_t = d J / d z_t,    mu_k = (d Phi_k / d z_k)^T mu_{k+1},
    d J / d theta = sum_k (d Phi_k / d theta)^T mu_{k+1} + (d z_0 / d theta)^T mu_0,   (1)

and the adjoint grows or shrinks like the products of the step Jacobians, ``exp(lambda_1
(t - k))`` (the top Lyapunov exponent, :mod:`l2l_jax.analysis.lyapunov`). For the
log-loss ``J = (1/t) log f(w_t)`` the meta-gradient is bounded (Wang et al. 2021, Thm 4),
yet its terms are ratios of exponentially large and small numbers (Corollary 1): float32
backpropagation fails past a horizon. This module is the transpose of the projective
forward mode (:mod:`.projective`) for *any* differentiable step, learned optimizers
included:

* the adjoint is carried as ``mu_k = 2^(e_k) mu_hat_k`` with ``max |mu_hat_k|`` in ``[1/2,
  1)``: each step is one :func:`jax.vjp` of ``Phi`` at the stored state, applied to
  ``mu_hat_{k+1}`` (it is linear in the cotangent, so the scale factors out), then the
  result is divided by the power of two of its largest entry and the integer exponent
  is counted. The division is exact; the scale adds no rounding of its own;
* the sum (1) is accumulated the same way, ``G = 2^(E) G_hat``: each term
  ``2^(e_{k+1}) (d Phi_k / d theta)^T mu_hat_{k+1}`` is added to the running sum after
  both are brought to the larger of their two exponents (a log-sum-exp with exact powers
  of two), and the sum is renormalized;
* the terminal cotangent of a log objective is scale-free: ``d J / d w_t = (1/t) grad
  f(w_t) / f(w_t) = (1/t) grad log f(w_t)``. ``log f`` is the task's own log-space loss
  where it declares one (``log_loss`` / ``log_valid_loss``,
  :mod:`l2l_jax.tasks.log_space`; the pass asks the task, never its type), finite even
  where ``f(w_t)`` itself over- or underflows. Built in: :class:`~l2l_jax.tasks.Quadratic`
  and :class:`~l2l_jax.tasks.NQM` (homogeneous: ``f`` at ``w_t / 2^e``; every finite
  ``w_t`` whose largest entry is a normal float), :class:`~l2l_jax.tasks.LeastSquares`
  (``w_t`` and the residual divided by their powers of two; every finite ``w_t``) and
  :class:`~l2l_jax.tasks.MnistMLP` (cross-entropy from the logits: wherever the logits'
  differences are finite, not where the MLP itself overflows). Elsewhere ``log f =
  log(task.loss(w_t))``: ``+-inf`` where ``f(w_t)`` over- or underflows, and the pass's
  value and gradient with it. The gradient of ``log f`` is pulled back with the seed
  ``2^(floor(e / 2))`` (``2^e`` the power of two of ``max |w_t|``), whose exponent is
  taken off again (exact): ``grad log f`` scales like ``1 / |w_t|`` (exactly so for a
  homogeneous loss), so the cotangents inside ``log f`` (about ``2^(e/2)`` times their
  unseeded size) and the result (about ``2^(-e/2)``) stay in the normal range where the
  unseeded result, ``2^(-e)`` times a moderate number, would not (``|w_t|`` near ``2^127``
  or ``2^-126``, where XLA flushes subnormals to 0).

The result is the meta-gradient as a direction and a log-norm (:class:`LogScaledGrad`),
both finite whenever the forward iterates are; the float meta-gradient ``2^E G_hat`` is
exact where representable and saturates to ``+-inf`` where it is not (``0`` where it
underflows).

Memory: the forward pass stores the inner state ``z_k`` of every step, where plain
reverse mode stores every step's linearization (measured at ``t = 1000``: about half of
plain reverse mode's temporary memory for heavy ball and for ``learned.MLPLOpt``), or
with ``remat=s`` only every ``s``-th state, recomputing one segment at a time in the
backward pass. The backward pass evaluates each step's forward once more inside its
``jax.vjp``: about one extra forward pass of time, plus the per-step renormalizations.
Reverse mode only: ``jax.jvp`` of the float API is refused (a ``jax.custom_vjp``).

Supported: any task, any inner optimizer with floating-point hyperparameters (optax
optimizers through :func:`l2l_jax.inner.from_optax`, stochastic ones with a key, learned
optimizers through :func:`l2l_jax.learned.inner_optimizer`, whose custom-VJP MLP is
differentiated by its own rule), and objectives of the final iterate: those with
``from_log_loss`` (``log_loss``, ``log_tbv``, ``last_loss``, ``tbt``, ``tbv``) and
:class:`~l2l_jax.objectives.IterateObjective` ones (``objectives.iterate_objective``).
Not supported: truncation (``max_norm``) and objectives of the whole trajectory
(``mean_loss``, ``trajectory_objective``), refused by :func:`check`.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2l_jax import input_checks
from l2l_jax import objectives as objectives_lib
from l2l_jax.closed_forms.scaling import exponent as _exponent
from l2l_jax.closed_forms.scaling import ldexp as _ldexp
from l2l_jax.closed_forms.scaling import max_abs as _max_abs
from l2l_jax.inner.optimizers import HParams, InnerOptimizer
from l2l_jax.inner.unroll import Remat, remat_segment, train_step
from l2l_jax.tasks import log_space

Array = jax.Array
Tree = chex.ArrayTree

# exponent of an all-zero tree: below every float's range, far from int32 overflow
_ZERO = -(2**24)


@chex.dataclass(frozen=True)
class LogScaledGrad:
    """A meta-gradient ``g = d J / d theta`` and the objective's value ``J``.

    Attributes:
      value: ``J``, the objective (for log objectives on a task with a log-space loss,
        :mod:`l2l_jax.tasks.log_space`, finite even where ``f(w_t)`` over- or
        underflows).
      direction: ``g / ||g||_2``, a pytree like the hyperparameters (zeros when ``g = 0``).
      log_norm: ``log ||g||_2`` (``-inf`` when ``g = 0``), finite where ``g`` itself is
        not representable.
      grad: ``g`` in floating point: exact where representable, ``+-inf`` where an entry
        overflows (the sign of the direction), ``0`` where it underflows.
      saturated: True when some entry of ``grad`` overflowed.
    """

    value: Array
    direction: Tree
    log_norm: Array
    grad: Tree
    saturated: Array


# -- pytrees at a power-of-two scale (the scaling: closed_forms.scaling) ----------------------


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _partition(tree) -> tuple[list, list, tuple]:
    """``(float leaves, other leaves, structure)``; :func:`_combine` inverts it."""
    leaves, treedef = jax.tree.flatten(tree)
    mask = tuple(_is_float(x) for x in leaves)
    floats = [x for x, m in zip(leaves, mask, strict=True) if m]
    others = [x for x, m in zip(leaves, mask, strict=True) if not m]
    return floats, others, (treedef, mask)


def _combine(floats, others, structure) -> Tree:
    treedef, mask = structure
    floats, others = iter(floats), iter(others)
    return jax.tree.unflatten(treedef, [next(floats) if m else next(others) for m in mask])


def _normalized(tree) -> tuple[Tree, Array]:
    """``(tree / 2^e, e)`` with the largest entry of ``tree / 2^e`` in ``[1/2, 1)`` (``e =
    0`` for an all-zero tree)."""
    e = _exponent(_max_abs(tree))
    return _ldexp(tree, -e), e


def _accumulate(acc: Tree, e_acc: Array, term: Tree, e_term: Array) -> tuple[Tree, Array]:
    """``2^(e_acc) acc + 2^(e_term) term`` as ``(sum_hat, e)``, renormalized: both brought
    to the larger of their top exponents first, so nothing overflows; a term below the
    other's last digit underflows to 0, as it would round away in the sum. An all-zero
    ``acc`` has ``e_acc = _ZERO``."""
    biggest = _max_abs(term)
    top_term = jnp.where(biggest > 0, e_term + _exponent(biggest), _ZERO)
    common = jnp.maximum(e_acc, top_term)  # acc is normalized: its top exponent is e_acc
    total = jax.tree.map(jnp.add, _ldexp(acc, e_acc - common), _ldexp(term, e_term - common))
    total, e = _normalized(total)
    return total, jnp.where(_max_abs(total) > 0, common + e, _ZERO)


# -- the objective's cotangent at w_t ---------------------------------------------------------


def final_iterate_objective(objective) -> bool:
    """Whether ``objective`` is a function of the final iterate only (what the log-scaled
    pass differentiates): it has ``from_log_loss`` or is an ``IterateObjective``."""
    return hasattr(objective, "from_log_loss") or isinstance(
        objective, objectives_lib.IterateObjective
    )


def terminal(objective, task, w: Tree, steps: int) -> tuple[Array, Tree, Array]:
    """``(J, mu_hat, e)``: the objective at ``w = w_t`` and its cotangent ``d J / d w =
    2^e mu_hat`` (module doc).

    For a ``from_log_loss`` objective, ``J = objective.from_log_loss(log f(w), t)`` and
    ``d J / d w = (d J / d log f) grad log f(w)``, with ``log f`` the task's log-space loss
    where it has one (:func:`l2l_jax.tasks.log_space.log_loss_fn`; the training loss, or
    the validation loss when the objective says ``loss_of = "valid"``) and its gradient
    pulled back with a seed ``2^k`` (module doc); otherwise ``J =
    objective.iterate_loss(task, w)`` and its cotangent by :func:`jax.vjp`.
    """
    if not hasattr(objective, "from_log_loss"):
        value, pullback = jax.vjp(lambda x: objective.iterate_loss(task, x), w)
        (ct,) = pullback(jnp.ones_like(value))
        ct, e = _normalized(ct)
        return value, ct, e
    log_loss = log_space.log_loss_fn(task, getattr(objective, "loss_of", "train"))
    log_f, pullback = jax.vjp(log_loss, w)
    k = _exponent(_max_abs(w)) >> 1  # floor(e / 2): the seed 2^k (module doc)
    (direction,) = pullback(_ldexp(jnp.ones_like(log_f), k))  # 2^k grad log f(w)
    value, slope = jax.value_and_grad(objective.from_log_loss)(log_f, steps)
    mantissa, e_slope = jnp.frexp(slope)
    ct, e_ct = _normalized(jax.tree.map(lambda d: mantissa * d, direction))
    return value, ct, e_ct + e_slope.astype(jnp.int32) - k


# -- forward and log-scaled backward passes ---------------------------------------------------


def _inputs(optimizer: InnerOptimizer, key, steps: int):
    """The per-step inputs of :func:`l2l_jax.inner.unroll`: minibatch keys or ``None``."""
    return None if optimizer.batch_size is None else jax.random.split(key, steps)


def _start(task, optimizer: InnerOptimizer, hparams: HParams) -> Tree:
    params = task.init_params()
    return params, optimizer.init(params, hparams)


def _step_fn(task, optimizer: InnerOptimizer) -> Callable:
    """``(theta, z, x) -> z'``: :func:`l2l_jax.inner.train_step` without its loss."""
    return lambda theta, z, x: train_step(task, optimizer, theta)(z, x)[0]


def _segments(xs, length: int, segment: int):
    """``(head, tail)``: the inputs of ``length // segment`` segments stacked on a leading
    axis, and those of the last ``length % segment`` steps (as ``checkpointed_scan``)."""
    n = length // segment
    head = jax.tree.map(lambda x: x[: n * segment].reshape((n, segment, *x.shape[1:])), xs)
    tail = jax.tree.map(lambda x: x[n * segment :], xs)
    return head, tail


def _run(step, theta, z, xs, length: int) -> Tree:
    """``z`` after ``length`` steps (nothing stored)."""
    return jax.lax.scan(lambda c, x: (step(theta, c, x), None), z, xs, length=length)[0]


def _states(step, theta, z, xs, length: int) -> tuple[Tree, Tree]:
    """``(z_length, [z_0, ..., z_(length-1)])``: every step's input state, stacked."""
    return jax.lax.scan(lambda c, x: (step(theta, c, x), c), z, xs, length=length)


def _forward(step, theta, z0, xs, steps: int, segment: int | None):
    """``(z_t, stored)``: all states (``segment=None``) or the segment boundaries."""
    if segment is None:
        return _states(step, theta, z0, xs, steps)
    n = steps // segment
    head, tail = _segments(xs, steps, segment)
    z, bounds = jax.lax.scan(lambda c, x: (_run(step, theta, c, x, segment), c), z0, head, length=n)
    rest = steps - n * segment
    return (_run(step, theta, z, tail, rest) if rest else z), (bounds, z)


def adjoint_start(mu_hat: Tree, e_mu: Array, theta: Tree) -> tuple:
    """The carry ``(mu_hat, e_mu, G_hat, E)`` of :func:`adjoint_step` at the end of an
    unroll: the adjoint ``2^(e_mu) mu_hat`` there and an empty sum ``G = 0`` (shaped like
    ``theta``). A zero adjoint is ``mu_hat = 0`` with any ``e_mu``."""
    zero = jax.tree.map(jnp.zeros_like, theta)
    return mu_hat, jnp.asarray(e_mu, jnp.int32), zero, jnp.asarray(_ZERO, jnp.int32)


def adjoint_step(pullback: Callable, carry: tuple, out: tuple[Tree, Array] | None = None):
    """One step of the log-scaled adjoint recursion (module doc, Eq. 1), backwards.

    ``pullback`` is the VJP (:func:`jax.vjp`) of one step ``(theta, z_k) -> z_(k+1)``, or
    of ``(theta, z_k) -> (z_(k+1), y_k)`` when the objective also depends on a per-step
    output ``y_k`` (a meta-loss term), whose cotangent is ``2^(e_y) y_hat`` with ``out =
    (y_hat, e_y)``, ``max |y_hat| <= 1``. ``carry = (mu_hat, e_mu, G_hat, E)`` holds the
    adjoint of ``z_(k+1)`` and the sum so far (:func:`adjoint_start`); the result holds
    those of ``z_k``. Both cotangents are brought to the larger of their two exponents
    before the one VJP (it is linear in them), so neither overflows and a part below the
    other's last digit underflows as it would round away in the sum.
    """
    mu, e_mu, acc, e_acc = carry
    live = _max_abs(mu) > 0  # a zero adjoint must not set the scale of the output's part
    e_mu = jnp.where(live, e_mu, _ZERO)
    if out is None:
        common = e_mu
        ct_theta, ct_z = pullback(mu)
    else:
        y_hat, e_y = out
        common = jnp.maximum(e_mu, e_y)
        ct_theta, ct_z = pullback((_ldexp(mu, e_mu - common), _ldexp(y_hat, e_y - common)))
    acc, e_acc = _accumulate(acc, e_acc, ct_theta, common)
    mu, e = _normalized(ct_z)
    return mu, common + e, acc, e_acc


def _pull_back(step, theta, carry, states, xs, length: int):
    """The log-scaled adjoint recursion of the module doc over ``length`` stored states."""

    def body(carry, inputs):
        z, x = inputs
        floats, others, structure = _partition(z)

        def advance(th, fl):
            return _partition(step(th, _combine(fl, others, structure), x))[0]

        _, pullback = jax.vjp(advance, theta, floats)
        return adjoint_step(pullback, carry), None

    return jax.lax.scan(body, carry, (states, xs), length=length, reverse=True)[0]


def _backward(step, theta, carry, stored, xs, steps: int, segment: int | None):
    """Pull ``carry`` back from ``z_t`` to ``z_0``, recomputing segments under remat."""
    if segment is None:
        return _pull_back(step, theta, carry, stored, xs, steps)
    bounds, tail_start = stored
    n = steps // segment
    head, tail = _segments(xs, steps, segment)
    rest = steps - n * segment
    if rest:
        states = _states(step, theta, tail_start, tail, rest)[1]
        carry = _pull_back(step, theta, carry, states, tail, rest)

    def one_segment(carry, inputs):
        z, x = inputs
        states = _states(step, theta, z, x, segment)[1]
        return _pull_back(step, theta, carry, states, x, segment), None

    return jax.lax.scan(one_segment, carry, (bounds, head), length=n, reverse=True)[0]


def _meta_gradient(optimizer, steps, segment, saved):
    """``(G_hat, E)`` with ``d J / d theta = 2^E G_hat`` (Eq. 1), from what
    :func:`_forward_pass` saved: the states and the terminal cotangent ``2^(e_ct) ct``."""
    task, hparams, key, stored, ct, e_ct = saved
    step = _step_fn(task, optimizer)
    xs = _inputs(optimizer, key, steps)
    _, state = _start(task, optimizer, hparams)
    zero_state = [jnp.zeros_like(x) for x in _partition(state)[0]]
    mu = [*jax.tree.leaves(ct), *zero_state]  # float leaves of (w_t, s_t): params first
    acc = jax.tree.map(jnp.zeros_like, hparams)
    carry = (mu, e_ct, acc, jnp.asarray(_ZERO, jnp.int32))
    mu, e_mu, acc, e_acc = _backward(step, hparams, carry, stored, xs, steps, segment)

    def start(th):  # (d z_0 / d theta)^T mu_0: the state may hold the hyperparameters
        return _partition(_start(task, optimizer, th))[0]

    _, pullback = jax.vjp(start, hparams)
    (ct_theta,) = pullback(mu)
    return _accumulate(acc, e_acc, ct_theta, e_mu)


def _check_params_first(task, optimizer, hparams) -> None:
    """The adjoint is laid out as the float leaves of ``(w, s)``: ``w``'s leaves come
    first only if every leaf of ``w`` is floating point (checked at trace time)."""
    params, _ = _start(task, optimizer, hparams)
    if not all(_is_float(x) for x in jax.tree.leaves(params)):
        raise TypeError(
            "grad='logscaled' differentiates floating-point parameters; the task's "
            "init_params() has non-float leaves. Use grad='autodiff'."
        )
    if not all(_is_float(x) for x in jax.tree.leaves(hparams)):
        raise TypeError(
            "grad='logscaled' needs floating-point hyperparameters (meta-parameters); got "
            f"dtypes {[jnp.result_type(x) for x in jax.tree.leaves(hparams)]}."
        )


def _zero_cotangent(x):
    """A zero cotangent for ``x`` (``float0`` for integer and PRNG-key arrays)."""
    if _is_float(x):
        return jnp.zeros_like(x)
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def log_scaled_grad(value: Array, g_hat: Tree, e_g: Array) -> LogScaledGrad:
    """:class:`LogScaledGrad` from ``g = 2^(e_g) g_hat`` (``max |g_hat|`` in ``[1/2, 1)``)."""
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(g_hat)))
    safe = jnp.where(norm == 0, 1, norm)  # a NaN norm stays NaN
    direction = jax.tree.map(lambda x: x / safe.astype(x.dtype), g_hat)
    log_two = jnp.log(jnp.asarray(2.0, norm.dtype))
    log_norm = jnp.where(norm == 0, -jnp.inf, e_g.astype(norm.dtype) * log_two + jnp.log(safe))
    grad = _ldexp(g_hat, e_g)
    pairs = zip(jax.tree.leaves(grad), jax.tree.leaves(g_hat), strict=True)
    overflow = [jnp.any(jnp.isinf(x) & jnp.isfinite(d)) for x, d in pairs]
    return LogScaledGrad(
        value=value,
        direction=direction,
        log_norm=log_norm,
        grad=grad,
        saturated=jnp.any(jnp.stack(overflow)),
    )


# -- public API -------------------------------------------------------------------------------


def check(objective, *, max_norm=None) -> None:
    """Refuse what the log-scaled pass does not differentiate, naming the fix."""
    if max_norm is not None:
        raise ValueError(
            "grad='logscaled' does not support truncation (max_norm): the frozen iterate "
            "is not a step of the optimizer. Pass max_norm=None, or use grad='autodiff'."
        )
    if not final_iterate_objective(objective):
        name = getattr(objective, "name", objective)
        raise ValueError(
            f"grad='logscaled' differentiates objectives of the final iterate (log_loss, "
            f"log_tbv, last_loss, tbt, tbv, objectives.iterate_objective(fn)); objective "
            f"{name!r} is not one (no from_log_loss or iterate_loss). Use grad='autodiff' "
            "for objectives of the whole trajectory."
        )


def value_and_grad(
    task,
    optimizer: InnerOptimizer,
    objective,
    hparams: HParams,
    *,
    steps: int,
    key: jax.Array | None = None,
    remat: Remat = None,
) -> LogScaledGrad:
    """The objective ``J = objective(unroll(task, optimizer, hparams, steps))`` and its
    meta-gradient by log-scaled reverse mode (module doc), as a :class:`LogScaledGrad`
    (value, direction, log-norm, saturating float gradient).

    Traceable (wrap it in :func:`jax.jit` with ``optimizer``, ``objective``, ``steps``
    and ``remat`` static). ``key``: the minibatch keys of a stochastic optimizer, as in
    :func:`l2l_jax.inner.unroll`. ``remat``: ``None`` stores every step's state; ``s``
    (or ``True`` for ``ceil(sqrt(steps))``) stores every ``s``-th and recomputes.
    """
    objective = objectives_lib.resolve(objective)
    check(objective)
    steps = input_checks.positive_int("steps", steps)
    segment = remat_segment(remat, steps)
    value, saved = _forward_pass(task, optimizer, objective, hparams, key, steps, segment)
    g_hat, e_g = _meta_gradient(optimizer, steps, segment, saved)
    return log_scaled_grad(value, g_hat, e_g)


def _forward_pass(task, optimizer, objective, hparams, key, steps: int, segment: int | None):
    """The value and the arrays the backward pass needs: ``(task, hparams, key, stored
    states, terminal cotangent, its exponent)``."""
    if optimizer.batch_size is not None and key is None:
        raise ValueError(f"inner.{optimizer.name} is stochastic: pass key=jax.random.key(...).")
    _check_params_first(task, optimizer, hparams)
    z0 = _start(task, optimizer, hparams)
    xs = _inputs(optimizer, key, steps)
    z_t, stored = _forward(_step_fn(task, optimizer), hparams, z0, xs, steps, segment)
    value, ct, e_ct = terminal(objective, task, z_t[0], steps)
    return value, (task, hparams, key, stored, ct, e_ct)


def objective_fn(
    optimizer: InnerOptimizer, objective, *, steps: int, remat: Remat = None
) -> Callable[[HParams, object, jax.Array | None], Array]:
    """``(hparams, task, key) -> J`` whose :func:`jax.grad` in ``hparams`` is the
    log-scaled meta-gradient's float value (``+-inf`` where it overflows; the task and the
    key are constants). What ``metagrad.meta_objective(..., grad="logscaled")`` calls per
    task; it works under ``jax.vmap``."""
    objective = objectives_lib.resolve(objective)
    check(objective)
    steps = input_checks.positive_int("steps", steps)
    segment = remat_segment(remat, steps)

    @jax.custom_vjp
    def fn(hparams, task, key):
        xs = _inputs(optimizer, key, steps)
        z0 = _start(task, optimizer, hparams)
        z_t = _run(_step_fn(task, optimizer), hparams, z0, xs, steps)
        return terminal(objective, task, z_t[0], steps)[0]

    def fwd(hparams, task, key):
        return _forward_pass(task, optimizer, objective, hparams, key, steps, segment)

    def bwd(saved, g):
        task, hparams, key, stored, ct, e_ct = saved
        mantissa, e_g = jnp.frexp(g)  # fold the incoming cotangent into the log-scale
        ct = jax.tree.map(lambda x: x * mantissa.astype(x.dtype), ct)
        saved = (task, hparams, key, stored, ct, e_ct + e_g.astype(jnp.int32))
        g_hat, e = _meta_gradient(optimizer, steps, segment, saved)
        zeros = jax.tree.map(_zero_cotangent, (task, key))
        return (_ldexp(g_hat, e), *zeros)

    fn.defvjp(fwd, bwd)
    return fn


__all__ = [
    "LogScaledGrad",
    "adjoint_start",
    "adjoint_step",
    "check",
    "final_iterate_objective",
    "log_scaled_grad",
    "objective_fn",
    "terminal",
    "value_and_grad",
]
